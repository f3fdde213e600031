"""Stock transformers models edited by hand, for checking methods that edit attention."""

import torch
from transformers import AttentionInterface, LlavaForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from halviz.engine.decode import Decoder
from halviz.methods.scale_heads import ScaleHeads
from spies import LogitSpy


def decode_logits(tokens, loaded, photo, method):
    """halviz's greedy decode of ``tokens`` tokens with ``method`` (no EOS stop) and the logits it chose from."""
    spy = LogitSpy()
    dec = Decoder(loaded, photo, "Describe.", [method, spy], max_new_tokens=tokens, stop_at_eos=False)
    dec.run_to_end()
    return dec, torch.cat(spy.logits)


def teacher_forced_logits(model, dec):
    """A stock model's logits over ``dec``'s prompt and tokens, at the positions that predicted each token."""
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"]).logits[0]
    return out[dec.run.prompt_len - 1:]


def assert_edit_acts(tokens, loaded, photo, logits):
    """The edit changes the logits (so a comparison with an edited stock model had power)."""
    _, vanilla = decode_logits(tokens, loaded, photo, ScaleHeads(head=-1, scale=1.0))
    assert (logits - vanilla).abs().max().item() > 1e-4


def eager_scores(query, key, value, attention_mask, scaling=None):
    """Eager attention's logits (batch, heads, q, kv), mask added, and the values, the key/value heads
    repeated for grouped-query attention: what a hand-edited attention function starts from."""
    rep = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = torch.matmul(query, k.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : k.shape[2]]
    return scores, v


def edited_attention(hide=None, edit=None):
    """Eager attention, edited by hand: ``hide(layer, query_positions, kv_len)`` → bool (q, kv) or None
    says which logits are −inf; ``edit(layer, query_positions, weights)`` → weights rewrites the softmax
    output (batch, heads, q, kv) before it multiplies the values."""
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scores, v = eager_scores(query, key, value, attention_mask, scaling)
        q, kv = scores.shape[-2:]
        queries = torch.arange(kv - q, kv)
        mask = hide(module.layer_idx, queries, kv) if hide is not None else None
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = torch.softmax(scores, -1)
        if edit is not None:
            weights = edit(module.layer_idx, queries, weights)
        return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
    return attention


def _stock(folder, name, attention):
    """A float64 stock model whose language model uses ``attention``, registered as ``name``."""
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, eager_mask)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float64).eval()
    model.set_attn_implementation({"text_config": name})
    return model


def stock_with_attention(folder, name, hide):
    """A stock model whose attention logits ``hide`` masks (see ``edited_attention``)."""
    return _stock(folder, name, edited_attention(hide=hide))


def stock_with_weights(folder, name, edit):
    """A stock model whose attention weights ``edit`` rewrites after the softmax (see ``edited_attention``)."""
    return _stock(folder, name, edited_attention(edit=edit))
