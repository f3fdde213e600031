"""Stock transformers models edited by hand, for checking methods that edit attention."""

import torch
from transformers import AttentionInterface, LlavaForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, eager_mask


def edited_attention(hide):
    """Eager attention where ``hide(layer, query_positions, kv_len)`` → bool (q, kv) or None says which logits are −inf."""
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        rep = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        scores = torch.matmul(query, k.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
        if attention_mask is not None:
            scores = scores + attention_mask[..., : k.shape[2]]
        q, kv = scores.shape[-2:]
        mask = hide(module.layer_idx, torch.arange(kv - q, kv), kv)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = torch.softmax(scores, -1)
        return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
    return attention


def stock_with_attention(folder, name, hide):
    """A float64 stock model whose language model uses ``edited_attention(hide)``, registered as ``name``."""
    AttentionInterface.register(name, edited_attention(hide))
    AttentionMaskInterface.register(name, eager_mask)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float64).eval()
    model.set_attn_implementation({"text_config": name})
    return model


def weights_edited_attention(edit):
    """Eager attention where ``edit(layer, query_positions, weights)`` → weights rewrites the softmax
    output (batch, heads, q, kv) before it multiplies the values."""
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        rep = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        scores = torch.matmul(query, k.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
        if attention_mask is not None:
            scores = scores + attention_mask[..., : k.shape[2]]
        q, kv = scores.shape[-2:]
        weights = edit(module.layer_idx, torch.arange(kv - q, kv), torch.softmax(scores, -1))
        return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
    return attention


def stock_with_weights(folder, name, edit):
    """A float64 stock model whose language model uses ``weights_edited_attention(edit)``."""
    AttentionInterface.register(name, weights_edited_attention(edit))
    AttentionMaskInterface.register(name, eager_mask)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float64).eval()
    model.set_attn_implementation({"text_config": name})
    return model
