"""Contrastive decoding's shared step (VASparse, VCD): a plausibility cut, then the contrast."""

from __future__ import annotations

import torch


def contrast_logits(theta: torch.Tensor, phi: torch.Tensor, alpha: float, cut: float) -> torch.Tensor:
    """Plausibility cut (keep p_θ ≥ cut · max p_θ), then (1+α)·ℓ_θ − α·ℓ_φ; cut tokens −inf."""
    p = torch.softmax(theta, dim=-1)
    plausible = p >= cut * p.amax(-1, keepdim=True)
    return torch.where(plausible, (1 + alpha) * theta - alpha * phi, -torch.inf)
