"""KVSmooth: entropy-guided EMA of keys and values (Jiang et al., arXiv 2602.04268).

Tokens whose attention is spread out (high entropy, sink-like) carry drifting semantics; KVSmooth
pulls each new token's cached K and V towards the previous cached entry, more strongly the more
sink-like the token is. There is no public code; this follows docs/methods.md (KVSmooth).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from halviz.methods.base import Knob, Method

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass


def smoothed_layers(num_layers: int) -> range:
    """Layers 3..L−2 for L = 32, scaled to other depths.

    Skip the first round(3L/32) layers (layer 0 always) and the last round(L/32), halves rounded
    up: L = 32 → 3..30, 40 → 4..38, 28 → 3..26, 24 → 2..22, 16 → 2..14, 3 → 1..2, 2 → 1..1.
    Every depth L ≥ 2 smooths at least one layer; L = 1 smooths none (layer 0 is never smoothed).
    """
    first = max(1, math.floor(3 * num_layers / 32 + 0.5))
    last = num_layers - 1 - math.floor(num_layers / 32 + 0.5)
    return range(first, last + 1)


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """z = −Σ a·log a of the last query's attention row, averaged over heads: (B, H, q, kv) → (B,)."""
    row = weights[:, :, -1, :]
    return -(row * torch.log(row.clamp_min(1e-30))).sum(-1).mean(-1)


class EntropyQueue:
    """FIFO of the last M row entropies of one layer, per sample.

    Empty slots hold +inf so that they never count as "below"; the denominator is always M, so
    while the queue fills up λ̂ is small and the clip holds λ at λ_ref − radius.
    """

    def __init__(self, size: int, batch: int, device: torch.device, dtype: torch.dtype):
        self.size = size
        self.values = torch.full((batch, size), float("inf"), device=device, dtype=dtype)
        self.pushes = 0

    def push(self, z: torch.Tensor) -> None:
        """Add z (B,), dropping the oldest entry once M are held."""
        self.values[:, self.pushes % self.size] = z
        self.pushes += 1

    def fraction_below(self, z: torch.Tensor) -> torch.Tensor:
        """λ̂ = (number of queue entries with value < z) / M, per sample."""
        return (self.values < z[:, None]).sum(-1).to(z.dtype) / self.size


def clipped_lambda(lam_hat: torch.Tensor, lambda_ref: float, radius: float) -> torch.Tensor:
    """λ = clip(λ̂, λ_ref − radius, λ_ref + radius), then kept in [0, 1]."""
    return lam_hat.clamp(lambda_ref - radius, lambda_ref + radius).clamp(0.0, 1.0)


class KVSmooth(Method):
    """KVSmooth (Jiang et al., arXiv 2602.04268): entropy-ranked EMA of each new token's K and V.

    Per decode step t (``column.step`` ≥ 1) and smoothed layer (:func:`smoothed_layers`):

        z_t = mean over heads of −Σ a log a,   a = this step's attention row of the new token
        push z_t into the layer's FIFO of the last M;   λ̂ = #(queue < z_t) / M
        λ   = clip(λ̂, λ_ref − radius, λ_ref + radius) ∩ [0, 1]
        k̂_t = (1 − λ)·k_t + λ·K_{t−1},   v̂_t = (1 − λ)·v_t + λ·V_{t−1}

    K_{t−1}, V_{t−1} are the previous position's cached, already smoothed, entries (the last
    prompt token at step 1). k̂_t, v̂_t overwrite the cache's last row after the attention.

    Decisions:
    - Keys are smoothed post-RoPE, as cached; prefill entries are never touched.
    - The current step's own attention uses the raw k_t, v_t (z must exist before λ); the smoothed
      entries act from the next step on.
    - z is computed from the attention actually used, after every method's logit edits (so with
      PruneHal stacked, pruned image columns carry zero weight). That is the right order: the K/V
      row being blended is the one this attention produced, so its sink-likeness is the entropy of
      that distribution; the logits before another method's mask describe an attention that never
      ran (tested in ``test_entropy_is_read_after_the_other_methods_edits``).
    - The blend is computed in float32 at least and cast back to the cache's dtype.
    - Ablations: ``mode`` "k" or "v" smooths only keys or only values; ``fixed_lambda`` uses
      λ = λ_ref at every step (radius and the queue are then unused; z is still traced).
    - Switching it off needs λ_ref = 0 *and* radius = 0: with λ_ref = 0 alone the clip still lets
      λ reach ``radius`` (0.2 by default).
    - Only the column's main row is smoothed and measured (one queue per smoothed layer); a text-only
      stream stacked beside it keeps its raw K/V, and a mirrored branch gets the smoothed row.

    Stacking: last in the registry; acts at the ``attention`` hook, after PruneHal (scores),
    VASparse (scores, logits) and VHR (heads) have shaped this step's attention.

    Trace (per step axis of the trace; step 0 is the prefill): ``lambda`` and ``entropy`` (S, L),
    NaN for unsmoothed layers and for step 0.
    """

    name = "kvsmooth"
    title = "KVSmooth"
    summary = "Smooths each new token's keys and values towards the previous ones, more for sink-like tokens."
    reference = "Jiang et al., KVSmooth, arXiv 2602.04268"
    knobs = (
        Knob("lambda_ref", "λ_ref", 0.9, 0.0, 1.0, 0.05, help="centre of the allowed λ range (LLaVA-1.5: 0.9)"),
        Knob("queue", "Queue length M", 15, 1, 256, 1, help="entropies of the last M tokens rank the current one"),
        Knob("radius", "Radius", 0.2, 0.0, 1.0, 0.05, help="λ is clipped to λ_ref ± radius"),
        Knob("mode", "Smooth", "kv", choices=("kv", "k", "v"), help="keys and values, keys only, or values only"),
        Knob("fixed_lambda", "Fixed λ = λ_ref", False, help="ablation: skip the entropy rank"),
    )
    hook_points = frozenset({"attention"})

    def setup(self, column: Column) -> None:
        self.num_layers = column.num_layers
        self.layers = frozenset(smoothed_layers(column.num_layers))
        self.device = column.device
        self._queues: dict[int, EntropyQueue] = {}
        self._step_entropy = self._nan_row()
        self._step_lambda = self._nan_row()
        self._entropy: list[torch.Tensor] = []
        self._lambda: list[torch.Tensor] = []

    def _nan_row(self) -> torch.Tensor:
        return torch.full((self.num_layers,), float("nan"), device=self.device, dtype=torch.float32)

    def needs_weights(self, p: Pass, layer: int) -> bool:
        return p.decode and p.step >= 1 and layer in self.layers

    def after_attention(self, p: Pass, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        if weights is None or not self.needs_weights(p, layer):
            return
        main = slice(p.main, p.main + 1)  # views into the cache: the blend below writes through
        z = row_entropy(weights[main])  # (1,)
        queue = self._queues.get(layer)
        if queue is None:
            queue = self._queues[layer] = EntropyQueue(self.params["queue"], z.shape[0], z.device, z.dtype)
        queue.push(z)
        if self.params["fixed_lambda"]:
            lam = torch.full_like(z, min(max(self.params["lambda_ref"], 0.0), 1.0))
        else:
            lam = clipped_lambda(queue.fraction_below(z), self.params["lambda_ref"], self.params["radius"])
        mode = self.params["mode"]
        if "k" in mode:
            _blend_last_row(key[main], lam)
        if "v" in mode:
            _blend_last_row(value[main], lam)
        self._step_entropy[layer] = z[0]
        self._step_lambda[layer] = lam[0]

    def after_step(self, column: Column, token_id: int) -> None:
        self._entropy.append(self._step_entropy)
        self._lambda.append(self._step_lambda)
        self._step_entropy, self._step_lambda = self._nan_row(), self._nan_row()

    def trace_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "layers"):  # never set up: nothing ran
            return {}
        def stacked(rows: list[torch.Tensor]) -> np.ndarray:
            if not rows:
                return np.zeros((0, self.num_layers), dtype=np.float32)
            return torch.stack(rows).float().cpu().numpy()
        return {"lambda": stacked(self._lambda), "entropy": stacked(self._entropy)}


def _blend_last_row(cached: torch.Tensor, lam: torch.Tensor) -> None:
    """cached (B, KVH, seq, D): row −1 ← (1 − λ)·row −1 + λ·row −2, in place, λ per sample (B,)."""
    acc = torch.promote_types(cached.dtype, torch.float32)
    w = lam.to(acc)[:, None, None]
    new, previous = cached[:, :, -1].to(acc), cached[:, :, -2].to(acc)
    cached[:, :, -1] = ((1 - w) * new + w * previous).to(cached.dtype)
