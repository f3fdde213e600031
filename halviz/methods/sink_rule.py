"""Which tokens are attention sinks, from their activations (VAR's rule, Kang et al., ICLR 2025; see
:mod:`halviz.methods.var` for the sources and the decisions): a token is a sink in a layer when its
layer input, RMS-normalised without the learned gain, exceeds τ in a dimension where the first token
(BOS) does. VAR edits attention with it; the engine records it for every traced column, so the
debugger can tell visual sinks (image tokens) from BOS and other text sinks."""

from __future__ import annotations

import math

import torch

REFERENCE_WIDTH = 4096  # LLaMA-2-7B's hidden size, where the paper set τ = 20
RMS_EPS = 1e-6
PAPER_TAU = 20.0


def scaled_tau(tau: float, hidden_size: int) -> float:
    """τ at ``hidden_size`` for the same share of a token's energy as τ at 4096: τ·√(D/4096)."""
    return tau * math.sqrt(hidden_size / REFERENCE_WIDTH)


def rms_normalised(hidden: torch.Tensor) -> torch.Tensor:
    """h / rms(h) over the last dimension, without a learned gain (float32 or wider)."""
    h = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_EPS)


def sink_tokens(hidden: torch.Tensor, tau: float) -> torch.Tensor:
    """hidden (n, D), one row's layer input → (n,) bool: tokens above τ in a sink dimension, the
    dimensions where the first token is above τ (none: no sinks)."""
    x = rms_normalised(hidden).abs()
    dims = x[0] > tau
    if not bool(dims.any()):
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return x[:, dims].amax(-1) > tau
