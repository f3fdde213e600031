"""The in-loop sink probe used to steer training: Gu et al.'s Sink^ε on the first token.

A head counts as a sink head when its mean attention to position 0 (BOS), averaged over the
chosen query positions of a fixed batch, exceeds ε. Figures per layer are the share of heads
that do. The probe helper's ``halviz.toy.recipe.probe`` measures the shipped model on its own sets;
this one only tells a running stage whether the sink is forming.
"""

from __future__ import annotations

import torch


def bos_attention(model, batch: dict, query_mask: torch.Tensor) -> torch.Tensor:
    """(layers, heads) mean attention to position 0 over the queries where `query_mask` is true.

    Uses eager attention so the weights are the softmax itself, then restores the previous kernel.
    """
    previous = model.config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
    q = query_mask.to(torch.float32)  # (batch, seq)
    per_layer = []
    for att in out.attentions:  # (batch, heads, q, k)
        to_bos = att[..., 0].float()  # (batch, heads, q)
        per_layer.append((to_bos * q[:, None, :]).sum((0, 2)) / q.sum())
    return torch.stack(per_layer)


def sink_shares(bos: torch.Tensor, eps: float = 0.3) -> list[float]:
    """Per layer, the share of heads whose mean BOS attention exceeds `eps`."""
    return [round(float(x), 4) for x in (bos > eps).float().mean(1)]


def summarise(bos: torch.Tensor, eps: float = 0.3, early: int = 2) -> dict:
    """S1's two figures (share of sink heads in layers ≥ `early` and below) plus the raw means."""
    hit = (bos > eps).float()
    return {"sink_late": round(float(hit[early:].mean()), 4), "sink_early": round(float(hit[:early].mean()), 4),
            "bos_mean_per_layer": [round(float(x), 4) for x in bos.mean(1)],
            "bos_max_per_layer": [round(float(x), 4) for x in bos.max(1).values]}
