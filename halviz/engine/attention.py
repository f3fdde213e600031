"""halviz's attention function, registered with transformers' AttentionInterface.

With no active forward it is plain SDPA. Inside one it computes attention explicitly wherever a
method or a recorder needs the weights, and calls each column's hooks, in stacking order, on that
column's rows only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

from halviz.engine.run import active_forward

ATTENTION_NAME = "halviz"


def halviz_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    plan = active_forward()
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return attend(plan, module.layer_idx, query, key, value, attention_mask, scaling)


def attend(plan, layer: int, query, key, value, mask, scaling) -> tuple[torch.Tensor, None]:
    """query (B, H, q, D); key/value (B, KVH, kv, D) = the layer's cache after this step's update.

    In a ragged prefill (``plan.packing``) the tensors come in the physical rows; everything below
    works on the logical rows (hooks, recording), the plain attention itself on the physical ones."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    n_rep = query.shape[1] // key.shape[1]
    packing = plan.packing
    if packing is not None:
        physical = (query, key, value)
        query, key, value = packing.unpack(query), packing.unpack(key), packing.unpack(value)
        mask = packing.logical_mask(query.dtype)
    k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)  # grouped-query heads, as transformers does
    kv_len, q_len = k.shape[2], query.shape[2]
    if mask is not None:
        mask = mask[..., -q_len:, :kv_len]
    elif q_len > 1:  # no mask function ran: build the causal mask ourselves
        mask = torch.full((q_len, kv_len), float("-inf"), device=query.device).triu(kv_len - q_len + 1)
    edits = [(rows, m) for rows, m in plan.running("scores")
             if rows.edit is not None and plan.call(rows, m.wants_scores, rows.edit_pass, layer)]
    wanted = any(plan.call(rows, m.needs_weights, rows.observe_pass, layer) for rows, m in plan.running("attention"))
    record = plan.recording and q_len == 1
    weights = None
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax in float32 at least (bf16 on GPU)
    if edits or wanted or record:
        scores = torch.matmul(query.to(acc), k.to(acc).transpose(2, 3)) * scaling
        if mask is not None:
            scores = scores + mask.to(acc)
        for rows, method in edits:
            if rows.column.running:
                edited = plan.call(rows, method.edit_scores, rows.edit_pass, layer, scores[rows.edit], key[rows.edit])
                if edited is not None:
                    scores[rows.edit] = edited
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights.to(v.dtype), v)
    elif packing is not None:  # the segments side by side, kept apart by the block mask
        q, pk, pv = physical
        out = F.scaled_dot_product_attention(q, repeat_kv(pk, n_rep), repeat_kv(pv, n_rep),
                                             attn_mask=packing.physical_mask(q.dtype), scale=scaling)
        out = packing.unpack(out)
    else:
        out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scaling)
    for rows, method in plan.running("heads"):
        if rows.edit is not None:
            edited = plan.call(rows, method.edit_heads, rows.edit_pass, layer, out[rows.edit])
            if edited is not None:
                out[rows.edit] = edited
    if plan.recording:
        _record(plan, layer, query, k, mask, weights, scaling, acc)
    for rows, method in plan.running("attention"):
        w = None if weights is None else weights[rows.observe]
        plan.call(rows, method.after_attention, rows.observe_pass, layer, query[rows.observe],
                  key[rows.observe], value[rows.observe], w)
    out = out.transpose(1, 2).contiguous()
    return (out if packing is None else packing.pack(out)), None


def _record(plan, layer, query, k, mask, weights, scaling, acc) -> None:
    """Each recording column's main-row attention of the last query (prefill: from SDPA's inputs)."""
    columns = [c for c in plan.columns if c.column.recorder is not None and c.column.running]
    if not columns:
        return
    if weights is not None:
        last = weights[:, :, -1, :]
    else:  # prefill through SDPA: only the last query's row is recorded
        mains = torch.tensor([c.main for c in columns], device=query.device)
        s = torch.matmul(query[mains, :, -1:].to(acc), k[mains].to(acc).transpose(2, 3)) * scaling
        if mask is not None:
            last_mask = mask[..., -1:, :]
            if last_mask.dim() == 4 and last_mask.shape[0] > 1:
                last_mask = last_mask[mains]
            s = s + last_mask.to(acc)
        rows = torch.softmax(s, dim=-1)[:, :, 0, :]
        for i, c in enumerate(columns):
            c.column.recorder.record(layer, rows[i])
        return
    for c in columns:
        c.column.recorder.record(layer, last[c.main])


def register_attention() -> None:
    """Make ``attn_implementation="halviz"`` available (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, halviz_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
