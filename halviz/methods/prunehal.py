"""PruneHal: adaptive pruning of visual KV entries (Sun et al., arXiv 2510.19183).

Hallucination grows when the current token's attention to the image collapses; PruneHal then
drops the least-attended visual tokens so that the remaining attention concentrates on the
informative ones. There is no public code; this follows docs/methods.md (PruneHal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from halviz.methods.base import Knob, Method

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass


def kept_count(r: float, n: int) -> int:
    """round(r·n) with halves rounded up (not Python's banker's rounding), at least one token."""
    return min(n, max(1, math.floor(r * n + 0.5)))


@dataclass(frozen=True)
class Verdict:
    """What :meth:`PruneSchedule.observe` decided at one decode step."""

    votes: np.ndarray  # (L,) bool
    reference: np.ndarray  # (L,) float64, Ā_l before this step (NaN when there is no past yet)
    trigger: bool


class PruneSchedule:
    """The vote-and-trigger rule of PruneHal for one sample, on plain numbers.

    Each decode step i ≥ 1 gives the visual attention mass A_l(i) of every layer. The reference
    Ā_l is the mean of A_l over the steps since the last prune (since step 1 before the first
    one), *excluding* step i: a reference is the past. With no past yet, nobody votes.

        vote_l  = A_l(i) < sqrt(r) · Ā_l
        trigger = c < t and (more than half of the layers vote or i == forced_step)

    A trigger increments c and empties the reference; A(i) is then *not* added, because it was
    measured on the visual set the prune just replaced.
    """

    def __init__(self, num_layers: int, r: float, max_prunes: int, forced_step: int = 2):
        self.num_layers = num_layers
        self.threshold = math.sqrt(r)
        self.max_prunes = max_prunes
        self.forced_step = forced_step  # 0: no forced prune
        self.prunes = 0
        self._sum = np.zeros(num_layers)
        self._count = 0

    def reference(self) -> np.ndarray:
        if self._count == 0:
            return np.full(self.num_layers, np.nan)
        return self._sum / self._count

    def observe(self, step: int, mass: np.ndarray) -> Verdict:
        mass = np.asarray(mass, dtype=np.float64)
        reference = self.reference()
        with np.errstate(invalid="ignore"):
            votes = mass < self.threshold * reference  # NaN reference compares False
        majority = 2 * int(votes.sum()) > self.num_layers
        forced = self.forced_step > 0 and step == self.forced_step
        trigger = self.prunes < self.max_prunes and (majority or forced)
        if trigger:
            self.prunes += 1
            self._sum[:] = 0.0
            self._count = 0
        else:
            self._sum += mass
            self._count += 1
        return Verdict(votes, reference, trigger)


class PruneHal(Method):
    """PruneHal (Sun et al., arXiv 2510.19183): drop the least-attended visual KV entries when the
    attention to the image collapses.

    Signal: at decode step i (``column.step`` ≥ 1), per layer l, A_l(i) = Σ over the *retained* visual
    keys of the current query's attention, averaged over heads. The vote/trigger rule is
    :class:`PruneSchedule`. On a trigger each layer keeps its top ``kept_count(r, N_current)``
    retained visual tokens ranked by this step's head-averaged attention in that layer
    (LLaVA-1.5 with r = 0.4: 576 → 230 → 92 → 37).

    Decisions:
    - Removal is masking: the pruned visual columns get −inf in the attention logits, in every
      row of the column laid out like the main prompt (the main row and a contrast branch; a
      text-only stream has no image and is left alone). That equals removing the cache rows and
      stays right in batches; RoPE positions are never touched.
    - The decision at step i needs every layer's vote, so it is taken after the step's forward
      and the prune acts from step i + 1 on. Steps 0 (the prefill) and 1 are never changed, so the
      first generated token is always vanilla's. r = 1 keeps every token: vanilla output.
    - Ā excludes step i (see :class:`PruneSchedule`); after a prune the reference restarts with
      the first step that sees the new visual set.
    - The forced early prune (``forced_step``, default 2; 0 turns it off) counts towards t.
    - Votes and state come from the main row only. The attention read is the one actually used
      (after every method's logit edits).

    Stacking: first in the registry, so first at the ``scores`` hook, before VASparse; VHR acts on
    heads and KVSmooth on the new K/V, neither of which touches the visual columns.

    Trace (per step axis of the trace; step 0 is the prefill, NaN/False there):
    ``mass`` and ``reference`` (S, L) = A and Ā; ``votes`` (S, L); ``retained_count`` (S, L) visual
    tokens in effect during the step; ``trigger_steps`` (P,) and ``retained`` (P, L, N_img), the
    retained set per layer after each of the P prunes.
    """

    name = "prunehal"
    title = "PruneHal"
    summary = "Prunes the least-attended image tokens whenever attention to the image collapses."
    reference = "Sun et al., PruneHal, arXiv 2510.19183"
    knobs = (
        Knob("r", "Keep ratio r", 0.4, 0.01, 1.0, 0.01,
             help="each prune keeps round(r·N) visual tokens per layer; votes use sqrt(r)·Ā"),
        Knob("t", "Max prunes t", 3, 0, 10, 1, help="at most t prunes per caption, the forced one included"),
        Knob("forced_step", "Forced prune at step", 2, 0, 32, 1,
             help="decode step with an unconditional prune (0 = none)"),
    )
    hook_points = frozenset({"scores", "attention"})

    def setup(self, column: Column) -> None:
        self.num_layers = column.num_layers
        self.image_index = column.image_index
        n_img = int(column.image_index.numel())
        self.schedule = PruneSchedule(column.num_layers, self.params["r"], self.params["t"], self.params["forced_step"])
        self.retained = torch.ones(column.num_layers, n_img, dtype=torch.bool, device=column.device)
        self.n_retained = n_img  # the same in every layer: each prune keeps round(r·N) per layer
        self._pruned_positions: list[torch.Tensor | None] = [None] * column.num_layers
        self._rows: list[torch.Tensor | None] = [None] * column.num_layers  # this step's head-mean image rows
        self._mass: list[np.ndarray] = []
        self._reference: list[np.ndarray] = []
        self._votes: list[np.ndarray] = []
        self._retained_count: list[np.ndarray] = []
        self._trigger_steps: list[int] = []
        self._retained_after: list[np.ndarray] = []

    # ---- attention ---------------------------------------------------------------------------
    def wants_scores(self, p: Pass, layer: int) -> bool:
        return self._pruned_positions[layer] is not None

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        rows = p.main_layout
        if len(rows) == len(p.streams):
            return scores.index_fill(-1, self._pruned_positions[layer], float("-inf"))
        scores = scores.clone()
        scores[rows] = scores[rows].index_fill(-1, self._pruned_positions[layer], float("-inf"))
        return scores

    def needs_weights(self, p: Pass, layer: int) -> bool:
        return p.decode and p.step >= 1

    def after_attention(self, p: Pass, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        if weights is None or not self.needs_weights(p, layer):
            return
        self._rows[layer] = weights[p.main, :, -1, self.image_index].mean(0)

    # ---- the decision, once all layers have been seen ------------------------------------------
    def after_step(self, column: Column, token_id: int) -> None:
        self._retained_count.append(np.full(self.num_layers, self.n_retained, dtype=np.int32))
        if column.step == 0 or any(row is None for row in self._rows):
            nan = np.full(self.num_layers, np.nan)
            self._mass.append(nan)
            self._reference.append(nan)
            self._votes.append(np.zeros(self.num_layers, dtype=bool))
            return
        rows = torch.stack(self._rows)  # (L, N_img), float32 or wider
        self._rows = [None] * self.num_layers
        mass = (rows * self.retained).sum(-1).cpu().numpy().astype(np.float64)  # one sync per step
        verdict = self.schedule.observe(column.step, mass)
        self._mass.append(mass)
        self._reference.append(verdict.reference)
        self._votes.append(verdict.votes)
        if verdict.trigger:
            self._prune(rows)
            self._trigger_steps.append(column.step)

    def _prune(self, rows: torch.Tensor) -> None:
        """Keep each layer's top round(r·N_current) retained visual tokens by this step's attention."""
        keep = self.n_retained = kept_count(self.params["r"], self.n_retained)
        ranked = rows.masked_fill(~self.retained, float("-inf")).topk(keep, dim=-1).indices
        self.retained = torch.zeros_like(self.retained).scatter_(-1, ranked, True)
        for layer in range(self.num_layers):
            pruned = self.image_index[~self.retained[layer]]
            self._pruned_positions[layer] = pruned if pruned.numel() else None
        self._retained_after.append(self.retained.cpu().numpy())

    # ---- trace -------------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "retained"):  # never set up: nothing ran
            return {}
        layers, n_img = self.retained.shape
        return {
            "mass": np.array(self._mass, dtype=np.float32).reshape(-1, layers),
            "reference": np.array(self._reference, dtype=np.float32).reshape(-1, layers),
            "votes": np.array(self._votes, dtype=bool).reshape(-1, layers),
            "retained_count": np.array(self._retained_count, dtype=np.int32).reshape(-1, layers),
            "trigger_steps": np.array(self._trigger_steps, dtype=np.int32),
            "retained": np.array(self._retained_after, dtype=bool).reshape(-1, layers, n_img),
        }
