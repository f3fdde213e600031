"""halviz's attention function, registered with transformers' AttentionInterface.

With no active run it is plain SDPA. Inside a run it computes attention explicitly wherever a
method or the recorder needs the weights, and calls the methods' hooks in stacking order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from halviz.engine.run import active_run

ATTENTION_NAME = "halviz"


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def halviz_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    run = active_run()
    if run is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return attend(run, module.layer_idx, query, key, value, attention_mask, scaling)


def attend(run, layer: int, query, key, value, mask, scaling) -> tuple[torch.Tensor, None]:
    """query (B, H, q, D); key/value (B, KVH, kv, D) = the layer's cache after this step's update."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    n_rep = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    kv_len, q_len = k.shape[2], query.shape[2]
    if mask is not None:
        mask = mask[..., -q_len:, :kv_len]
    elif q_len > 1:  # no mask function ran: build the causal mask ourselves
        mask = torch.full((q_len, kv_len), float("-inf"), device=query.device).triu(kv_len - q_len + 1)
    methods = run.methods
    main = run.variant is None
    edits = [m for m in methods if m.uses_scores(run, layer)]
    wanted = main and any(m.needs_weights(run, layer) for m in methods)
    weights = None
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax in float32 at least (bf16 on GPU)
    if edits or wanted or (main and run.recording and q_len == 1):
        scores = torch.matmul(query.to(acc), k.to(acc).transpose(2, 3)) * scaling
        if mask is not None:
            scores = scores + mask.to(acc)
        for method in edits:
            scores = method.edit_scores(run, layer, scores)
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights.to(v.dtype), v)
    else:
        out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scaling)
    for method in methods:
        out = method.edit_heads(run, layer, out)
    if main:
        if run.recording:
            if weights is not None:
                last = weights[:, :, -1, :]
            else:  # prefill through SDPA: only the last query's row is recorded
                s = torch.matmul(query[:, :, -1:].to(acc), k.to(acc).transpose(2, 3)) * scaling
                if mask is not None:
                    s = s + mask[..., -1:, :].to(acc)
                last = torch.softmax(s, dim=-1)[:, :, 0, :]
            run.recorder.record(layer, last[0])
        for method in methods:
            method.after_attention(run, layer, query, key, value, weights)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make ``attn_implementation="halviz"`` available (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, halviz_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
