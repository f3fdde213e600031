"""VASparse: visual-aware sparsification (Zhuang et al., CVPR 2025, arXiv 2501.06553).

halviz implements **the paper** (docs/methods.md, VASparse, second edition). Three parts,
each behind a switch, all in layers ``vasparse_layers`` (the paper's 2..31 of 32, scaled):

1. Visual-aware selection of the **generated** tokens (Eq. 4: ℓ_θ(· | v, x, S^τ(y<t))). The image
   and the prompt are never touched. Per head, every previous generated token i is scored
   δ_i = minmax((q·K_i)²) + λ·minmax(P_i), P_i = softmax_i(m_i) over the previous generated tokens,
   m_i = token i's own last-layer head-mean attention to the image tokens, recorded when i was
   processed (Eq. 3, no extra pass). Of the n generated columns (current token included) each head
   keeps ceil(S·n), S = ``keep_ratio`` (0.9, the released code's ``sparse_kv_cache_rate``); the
   current token is always one of them (its m is not known before its last layer has run).
2. Aggregation of the discarded tokens T by DPC-KNN (``aggregate = dpc-knn``): per head the
   discarded keys are clustered (:func:`dpc_knn`, k = 5, ⌈|T|/4⌉ clusters) and each cluster is
   attended as one merged token with the members' mean key and mean value and a +ln|cluster| logit
   bias. That merged column is implemented exactly, with no new column: softmax and the output are
   unchanged if instead every member gets the merged logit s̄ = q·k̄·scale = mean of the members'
   logits (|c| equal columns of weight e^s̄/Z carry the mass e^(s̄+ln|c|)/Z and the output
   e^s̄/Z · Σ v_j = e^(s̄+ln|c|)/Z · v̄). ``aggregate = none`` masks the discarded tokens instead.
   Merged columns exist for the current step only; the cache is never rewritten.
3. Sparse visual contrastive decoding at **every** step, the first included: keep tokens with
   p_θ ≥ β_cut · max p_θ, then (1+α)·ℓ_θ − α·ℓ_φ. ℓ_φ bypasses the decoder (``phi``):
   ``embedding`` (default) ℓ_φ = lm_head(norm(embed(current input token))), the model's final norm
   included; ``embedding-raw`` the same without the norm (the released code's reading);
   ``masked-pass`` a ``phi`` stream: a row of the same batched forward that mirrors the main
   row's cache and in which a seeded random share (``mask_rate``) of the image columns is masked
   for the current query (the first edition's reading; at step 0 that is the last prompt query of
   the prefill, whose earlier queries equal the main row's). Its sink penalty uses, like the main
   row's, the column mass of the queries before the current one.
4. Sink penalty (Eq. 5) on **all** columns: W_j = softmax over all columns j of the accumulated
   head-mean attention Σ_{i≥j} a_{i,j} of that layer (every row processed so far, prefill
   included; the current token's own column has no mass yet), S → (1+β)·S − β·(W⊙S), written as
   S·(1 + β − β·W) so masked (−inf) columns stay masked.

Decisions (beyond the spec's):
- Both δ terms are min-max normalised per row over the candidate columns (previous generated
  tokens not masked by another method), so λ = 1 weighs them equally; a constant row gives 0.
- δ is computed from the scores as they arrive (before this method's sink penalty); the merged
  logit is the mean of the members' logits after the penalty (with β = 0 exactly q·k̄·scale).
- DPC-KNN (:func:`dpc_knn`): distances ‖k_i − k_j‖/√d; density ρ_i = exp(−mean of the squared
  distances to the k nearest *other* keys); δ_i = distance to the nearest key of higher density
  (ties broken by lower index) or the largest distance for the densest; the ⌈|T|/4⌉ largest ρ·δ
  (ties: lower index) are the centres; every key joins its nearest centre (ties: the centre
  ranked first). A cluster of one is its own token, so with |T| = 1 nothing changes.
- W uses the attention as actually applied in the main pass (after selection, merging and the
  penalty); the ℓ_φ masked pass applies the penalty too but not the selection.
- Layers: first = max(1, round_half_up(2·L/32)), capped at L−1, then first..L−1 (32 → 2..31,
  3 → 1..2, 2 → 1); the ``first_layer`` knob overrides it.
- Switch values are honoured literally (S = 1, α = 0, β = 0 run their machinery, which is then
  exactly the identity); the switches turn a part off entirely.
- Other rows (e.g. VHR's text stream) are left alone. With PruneHal (masking) both stack. A method
  that drops cache rows physically breaks the position bookkeeping; this is refused at run time.
  Stacking: after PruneHal at the scores hook (registry order), before VHR (heads).

Divergences from the released code (mengchuang123/VASparse-github, which does not run as
published), each deliberate:
- The code sparsifies by rewriting the KV cache after the prompt (``process_kv_cache`` with a
  random policy, ``cluster_and_merge``); we mask or merge per step through the logits and never
  rewrite the cache (same attention, and stacking methods keep their positions).
- The code's ``cluster_and_merge`` uses k = number of clusters neighbours (self included), random
  1e-6 tie noise and an undefined ``norm_weight``; we use k = 5 other keys, deterministic ties and
  the mean (the spec's choice).
- The code takes ℓ_φ from ``lm_head(hidden_states[0])`` of a full (early-exit) forward, so the
  decoder still runs, and without the final norm; we compute it from the embedding with no pass,
  norm included by default (``embedding-raw`` is the code's reading).
- The code contrasts as ℓ_θ − α·ℓ_φ, and only at words a GroundingDINO detector flags; we use the
  paper's (1+α)·ℓ_θ − α·ℓ_φ with the plausibility cut, at every step.
- The code's saliency comes from detector crops of the image; we use Eq. 3's attention reading.
- We found no application of Eq. 5's sink penalty in the code's decode loop; we apply Eq. 5.
- The code draws the random image mask anew each time; ``masked-pass`` draws it once per run from
  ``seed``.

Cost: with ``phi = embedding`` one extra lm_head product per step; selection, DPC-KNN (on the few
discarded generated keys) and the penalty are vectorised; the prefill runs explicit attention in
the layers whose weights feed W. ``masked-pass`` adds one row to every forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from halviz.methods.base import Knob, Method, Stream
from halviz.methods.contrast import TopLogits, contrast_logits

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

PHI_STREAM = "phi"
PHI_CHOICES = ("embedding", "embedding-raw", "masked-pass")
AGGREGATE_CHOICES = ("dpc-knn", "none")
# A column whose score is below this was masked (by −inf or by the float16/bfloat16/float32
# minimum the mask functions use); real attention logits never come near it.
MASKED_BELOW = -3.0e4


def vasparse_layers(num_layers: int, first_layer: int = -1) -> tuple[int, ...]:
    """Layers carrying selection, aggregation, φ mask and sink penalty: 2..31 of 32, scaled by depth."""
    if first_layer < 0:
        first_layer = max(1, math.floor(2 * num_layers / 32 + 0.5))
    first_layer = min(first_layer, num_layers - 1)
    return tuple(range(first_layer, num_layers))


def unmasked(scores: torch.Tensor) -> torch.Tensor:
    return scores > MASKED_BELOW


def minmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Min-max over the valid entries of the last dim, to [0, 1] (0 where a row is constant).

    Entries outside ``valid`` come out meaningless; callers mask them (few ops: this runs per layer).
    """
    invalid = ~valid
    lo = x.masked_fill(invalid, torch.inf).amin(-1, keepdim=True)
    hi = x.masked_fill(invalid, -torch.inf).amax(-1, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-30)


def selection_scores(scores: torch.Tensor, saliency: torch.Tensor, lam: float, valid: torch.Tensor) -> torch.Tensor:
    """δ = minmax((q·K)²) + λ·minmax(P) over the candidate columns; invalid ones −inf.

    scores (B, H, q, n) scaled logits of the previous generated tokens (the scale cancels in the
    min-max); saliency (B, n) = P; valid (B, H, q, n).
    """
    sq = minmax(scores.square(), valid)
    p = minmax(saliency[:, None, None, :].expand_as(scores), valid)
    return torch.where(valid, sq + lam * p, -torch.inf)


def keep_count(keep_ratio: float, n: int | torch.Tensor) -> int | torch.Tensor:
    """ceil(S · n), robust to S·n landing a rounding error above a whole number."""
    if isinstance(n, torch.Tensor):
        return torch.ceil(n.double() * keep_ratio - 1e-9).long()
    return math.ceil(n * keep_ratio - 1e-9)


def keep_top(delta: torch.Tensor, count: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the ``count`` (per row, keepdim) largest δ of each row (ties: torch.topk's pick)."""
    n = delta.shape[-1]
    ranked = delta.topk(n, dim=-1).indices  # sorted, largest first
    by_rank = torch.arange(n, device=delta.device) < count
    return torch.zeros_like(valid).scatter(-1, ranked, by_rank) & valid


def dpc_knn(points: torch.Tensor, clusters: int, k: int = 5) -> torch.Tensor:
    """Cluster labels (R, n) in [0, clusters) of R point sets (R, n, d) by density-peak clustering.

    ρ_i = exp(−mean_{j ∈ kNN(i)} d_ij²) over the k nearest other points, d = ‖x_i − x_j‖/√dim;
    δ_i = min d_ij over points of higher ρ (ties: lower index counts as higher), max_j d_ij for
    the densest; centres = the ``clusters`` largest ρ·δ (ties: lower index); each point joins its
    nearest centre (ties: the centre ranked first); centre c gets label c's rank.
    """
    r, n, dim = points.shape
    clusters = max(1, min(clusters, n))
    x = points.to(torch.promote_types(points.dtype, torch.float32))
    dist = torch.cdist(x, x) / math.sqrt(dim)
    if n == 1:
        return torch.zeros(r, 1, dtype=torch.long, device=points.device)
    eye = torch.eye(n, dtype=torch.bool, device=points.device)
    nearest = dist.masked_fill(eye, torch.inf).topk(min(k, n - 1), dim=-1, largest=False).values
    density = torch.exp(-nearest.square().mean(-1))  # (R, n)
    index = torch.arange(n, device=points.device)
    higher = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None])[None])
    parent = dist.masked_fill(~higher, torch.inf).amin(-1)
    delta = torch.where(higher.any(-1), parent, dist.amax(-1))
    centres = torch.argsort(-(density * delta), dim=-1, stable=True)[:, :clusters]  # (R, m)
    to_centre = dist.gather(2, centres[:, None, :].expand(r, n, clusters))  # (R, n, m)
    labels = to_centre.argmin(-1)
    return labels.scatter(1, centres, torch.arange(clusters, device=points.device).expand(r, clusters))


def merge_logits(logits: torch.Tensor, labels: torch.Tensor, clusters: int) -> torch.Tensor:
    """Each entry of logits (R, n) replaced by the mean over its cluster (labels (R, n))."""
    sums = logits.new_zeros(logits.shape[0], clusters).scatter_add(1, labels, logits)
    counts = logits.new_zeros(logits.shape[0], clusters).scatter_add(1, labels, torch.ones_like(logits))
    return (sums / counts.clamp_min(1)).gather(1, labels)


def sink_weights(column_mass: torch.Tensor) -> torch.Tensor:
    """W_j = softmax over all columns j of Σ_{i≥j} a_{i,j}; column_mass (..., kv)."""
    return torch.softmax(column_mass, dim=-1)


def sink_penalty(scores: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
    """(1+β)·S − β·(W⊙S) = S·(1 + β − β·W) on every column; scores (B, H, q, kv), weights (B, kv)."""
    factor = 1.0 + beta - beta * weights
    return scores * factor[:, None, None, :].to(scores.dtype)


def embedding_logits(embed, norm, head, input_ids: torch.Tensor) -> torch.Tensor:
    """ℓ_φ without a decoder pass: head(norm(embed(ids))) at the last position, (B, vocab); norm may be None."""
    hidden = embed(input_ids[:, -1:])
    if norm is not None:
        hidden = norm(hidden)
    logits = head(hidden)[:, -1]
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class VASparse(Method):
    name = "vasparse"
    title = "VASparse"
    summary = ("Keeps the generated tokens each head matches best and that looked at the image, merges the "
               "rest by clustering, damps attention sinks, and contrasts with a language-prior ℓ_φ.")
    reference = "Zhuang et al., VASparse, CVPR 2025, arXiv 2501.06553 (the paper, not its released code)"
    knobs = (
        Knob("keep_ratio", "Keep ratio S", 0.9, 0.05, 1.0, 0.05,
             help="Share of the generated tokens each head keeps per decode step (image and prompt always kept)."),
        Knob("saliency_weight", "λ visual saliency", 1.0, 0.0, 10.0, 0.1,
             help="Weight of the normalised P against the normalised (q·K)²."),
        Knob("aggregate", "Discarded tokens", "dpc-knn", choices=AGGREGATE_CHOICES,
             help="dpc-knn: merge them per cluster (DPC-KNN); none: mask them."),
        Knob("knn", "DPC-KNN k", 5, 1, 64, 1, help="Neighbours in the DPC-KNN density."),
        Knob("cluster_size", "Tokens per cluster", 4, 1, 64, 1, help="Clusters = ⌈discarded / this⌉."),
        Knob("alpha", "α contrast", 0.1, 0.0, 2.0, 0.05, help="logits = (1+α)ℓ_θ − αℓ_φ."),
        Knob("phi", "ℓ_φ from", "embedding", choices=PHI_CHOICES,
             help="embedding: lm_head(norm(embed)), no pass (paper); embedding-raw: without the norm "
                  "(released code); masked-pass: a second pass with random image tokens masked (~2× cost)."),
        Knob("mask_rate", "φ image mask rate", 0.5, 0.0, 1.0, 0.05,
             help="masked-pass only: share of image tokens masked at random in the ℓ_φ pass."),
        Knob("plausibility", "β_cut plausibility", 0.1, 0.0, 1.0, 0.01,
             help="Keep tokens with p_θ ≥ β_cut·max p_θ before contrasting."),
        Knob("sink_beta", "β sink penalty", 0.1, 0.0, 1.0, 0.01, help="Every column's logit S → (1+β)S − β(W⊙S)."),
        Knob("seed", "Mask seed", 0, 0, 2**31 - 1, 1, help="masked-pass only: seed of the fixed random image mask."),
        Knob("first_layer", "First layer (−1 = auto)", -1, -1, 255, 1,
             help="First decoder layer (0-indexed) of selection and penalty; auto = round(2·L/32), at least 1."),
        Knob("selection", "Visual-aware selection", True),
        Knob("contrast", "Sparse visual contrast", True),
        Knob("sink", "Sink penalty", True),
    )
    hook_points = frozenset({"scores", "attention", "logits"})

    def __init__(self, **values: Any):
        super().__init__(**values)
        p = self.params
        self.keep_ratio: float = float(p["keep_ratio"])
        self.lam: float = float(p["saliency_weight"])
        self.alpha: float = float(p["alpha"])
        self.cut: float = float(p["plausibility"])
        self.beta: float = float(p["sink_beta"])
        self.layers: tuple[int, ...] = ()
        self.phi_columns: torch.Tensor | None = None
        self._kept_now: torch.Tensor | None = None
        self._merged_now = 0
        self._processed = 0
        # Per step, kept on the device and converted only for the trace (no host sync per step).
        self._kept_rows: list[tuple[int, torch.Tensor | None]] = []
        self._merged_rows: list[float] = []
        self._top = TopLogits("theta", "phi")

    @property
    def _masked_pass(self) -> bool:
        return bool(self.params["contrast"]) and self.params["phi"] == "masked-pass"

    # ---- lifecycle -------------------------------------------------------------------------
    def streams(self) -> tuple[Stream, ...]:
        return (Stream(PHI_STREAM, mirrors_main=True),) if self._masked_pass else ()

    def setup(self, column: Column) -> None:
        self.layers = vasparse_layers(column.num_layers, int(self.params["first_layer"]))
        self._layer_set = frozenset(self.layers)
        self._last_layer = column.num_layers - 1
        total = column.prompt_len + column.max_new_tokens + 1
        # Per position: its own last-layer head-mean attention to the image (m_i), and per layer the
        # head-mean attention it has received so far (Σ_{i≥j} a_{i,j}); main row only.
        dtype = torch.promote_types(column.model.dtype, torch.float32)
        self._image_mass = torch.zeros(1, total, device=column.device, dtype=dtype)
        self._column_mass = torch.zeros(column.num_layers, 1, total, device=column.device, dtype=dtype)
        self._processed = 0
        if self.params["contrast"] and not self._masked_pass:
            model = column.model
            norm = getattr(model.get_decoder(), "norm", None)
            if norm is None and self.params["phi"] == "embedding":
                raise ValueError("VASparse's ℓ_φ = embedding needs the decoder's final norm, which this model lacks; "
                                 "choose phi = embedding-raw or masked-pass")
            self._phi_modules = (model.get_input_embeddings(), norm if self.params["phi"] == "embedding" else None,
                                 model.get_output_embeddings())
        n_image = len(column.image_index)
        generator = torch.Generator().manual_seed(int(self.params["seed"]))
        n_masked = math.floor(float(self.params["mask_rate"]) * n_image + 0.5)
        drawn = torch.randperm(n_image, generator=generator)[:n_masked]
        self.phi_columns = column.image_index[drawn.to(column.device)].sort().values

    # ---- hook points -----------------------------------------------------------------------
    def needs_weights(self, p: Pass, layer: int) -> bool:
        return ((self.params["selection"] and layer == self._last_layer and p.decode)
                or (self.params["sink"] and layer in self._layer_set))

    def wants_scores(self, p: Pass, layer: int) -> bool:
        if layer not in self._layer_set:
            return False
        if p.prefill:  # only the φ branch's last query (the main row's prompt is never touched)
            return p.row(PHI_STREAM) is not None
        return bool(self.params["selection"] or self.params["sink"]) or p.row(PHI_STREAM) is not None

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        phi = p.row(PHI_STREAM)
        if p.prefill:
            scores[phi, :, -1:] = self._phi_first_query(layer, scores[phi])
            return scores
        main = p.main
        scores[main:main + 1] = self._main_scores(p, layer, scores[main:main + 1], keys[main:main + 1])
        if phi is not None:
            kv = scores.shape[-1]
            row = scores[phi:phi + 1]
            if self.params["sink"]:
                row = sink_penalty(row, sink_weights(self._column_mass[layer, :, :kv]), self.beta)
            scores[phi:phi + 1] = row.index_fill(-1, self.phi_columns, -torch.inf)
        return scores

    def _phi_first_query(self, layer: int, row: torch.Tensor) -> torch.Tensor:
        """The φ branch's last prompt query (step 0): sink-penalised, image columns masked.

        row (H, n, n): the branch's prompt scores. Its queries before the last equal the main row's
        (same tokens, causal attention), so their softmax summed over queries is the main row's
        column mass before the current query, as at every decode step (the current query's own row
        never counts towards the W it is penalised with).
        """
        last = row[None, :, -1:]
        if self.params["sink"]:
            mass = torch.softmax(row[:, :-1], dim=-1).to(self._column_mass.dtype).mean(0).sum(0)  # (n,)
            last = sink_penalty(last, sink_weights(mass[None]), self.beta)
        return last.index_fill(-1, self.phi_columns, -torch.inf)[0]

    def _main_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Selection, sink penalty and merging for the main row: scores (1, H, 1, kv), keys (1, KVH, kv, D)."""
        column = p.column
        kv = scores.shape[-1]
        if kv != column.prompt_len + p.step:
            raise RuntimeError(f"VASparse expects one cache column per position ({column.prompt_len + p.step}), "
                               f"got {kv}; a method that drops cache rows cannot run with it")
        start, n_prev = column.prompt_len, kv - 1 - column.prompt_len  # previous generated tokens: start..kv−2
        dropped = None
        # (host-side: while ceil(S·(n+1)) − 1 ≥ n every generated token is kept, nothing to select)
        if self.params["selection"] and keep_count(self.keep_ratio, n_prev + 1) - 1 < n_prev:
            prev = scores[..., start:kv - 1]
            valid = unmasked(prev)
            saliency = torch.softmax(self._image_mass[:, start:kv - 1], dim=-1)
            count = keep_count(self.keep_ratio, valid.sum(-1, keepdim=True) + 1) - 1  # the current token is kept
            keep = keep_top(selection_scores(prev, saliency, self.lam, valid), count, valid)
            dropped = valid & ~keep
            kept = keep[0, :, -1].sum(0)  # heads keeping each previous generated token
            self._kept_now = kept if self._kept_now is None else self._kept_now + kept
        if self.params["sink"]:
            scores = sink_penalty(scores, sink_weights(self._column_mass[layer, :, :kv]), self.beta)
        if dropped is not None:
            scores = self._discard(column, scores, dropped, keys)
        return scores

    def _discard(self, column: Column, scores: torch.Tensor, dropped: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Mask the dropped generated columns, or give each DPC-KNN cluster of them its merged logit."""
        start, kv = column.prompt_len, scores.shape[-1]
        if not bool(dropped.any()):
            return scores
        prev = scores[..., start:kv - 1]
        if self.params["aggregate"] == "none":
            return torch.cat([scores[..., :start], prev.masked_fill(dropped, -torch.inf), scores[..., kv - 1:]], -1)
        b, h, q, n = prev.shape
        cached = keys[:, :, start:kv - 1]  # (1, KVH, n, D), post-RoPE as cached
        rep = h // cached.shape[1]
        rows, flags = prev.reshape(b * h * q, n).clone(), dropped.reshape(b * h * q, n)
        counts = flags.sum(-1)
        for size in counts.unique().tolist():
            if size == 0:
                continue
            which = torch.nonzero(counts == size).flatten()
            clusters = math.ceil(size / int(self.params["cluster_size"]))
            self._merged_now += clusters * len(which)
            if size == 1:  # a cluster of one token is that token: nothing changes
                continue
            # dropped columns first, in increasing order (stable sort of "not dropped")
            cols = torch.argsort((~flags[which]).to(torch.int8), dim=-1, stable=True)[:, :size]
            if clusters == 1:  # one cluster: no clustering needed
                labels = torch.zeros_like(cols)
            else:
                keys = cached[which // (h * q), (which // q) % h // rep]  # (rows, n, D): row = (batch, head, query)
                labels = dpc_knn(keys.gather(1, cols[..., None].expand(-1, -1, keys.shape[-1])),
                                 clusters, int(self.params["knn"]))
            merged = merge_logits(rows[which].gather(1, cols), labels, clusters)
            rows[which] = rows[which].scatter(1, cols, merged)
        return torch.cat([scores[..., :start], rows.reshape(b, h, q, n), scores[..., kv - 1:]], -1)

    def after_attention(self, p: Pass, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        if layer == self._last_layer:
            self._processed = key.shape[-2]
        if weights is None:
            return
        main = p.main
        kv, q_len = weights.shape[-1], weights.shape[-2]
        mean = weights[main:main + 1].to(self._column_mass.dtype).mean(1)  # (1, q, kv)
        if self.params["sink"] and layer in self._layer_set:
            self._column_mass[layer, :, :kv] += mean.sum(1)
        if self.params["selection"] and layer == self._last_layer:
            self._image_mass[:, kv - q_len: kv] = mean[..., p.column.image_index].sum(-1)

    def edit_logits(self, p: Pass, logits: torch.Tensor) -> torch.Tensor:
        column, main = p.column, p.main
        theta = logits[main:main + 1]
        self._top.keep("theta", theta)
        if self.params["selection"]:
            self._record_kept(column)
        if not self.params["contrast"]:
            return logits
        if self._masked_pass:
            phi_row = p.row(PHI_STREAM)
            phi = logits[phi_row:phi_row + 1]
        else:
            current = column.prompt_ids[:, -1:] if p.step == 0 else torch.tensor([[column.generated[-1]]],
                                                                                 device=column.device)
            phi = embedding_logits(*self._phi_modules, current)
        self._top.keep("phi", phi)
        logits = logits.clone()
        logits[main:main + 1] = contrast_logits(theta, phi, self.alpha, self.cut)
        return logits

    def _record_kept(self, column: Column) -> None:
        """Heads × layers keeping each previous generated token during this step (None: all of them)."""
        kept, self._kept_now = self._kept_now, None
        share = None if kept is None else kept.float() / (column.num_heads * len(self.layers))
        self._kept_rows.append((column.step, share))
        self._merged_rows.append(self._merged_now / (column.num_heads * max(len(self.layers), 1)))
        self._merged_now = 0

    def _kept_table(self) -> np.ndarray:
        """(T, T): share keeping generated token j during step t; 1 for the current token, NaN for j ≥ t."""
        table = np.full((len(self._kept_rows),) * 2, np.nan, np.float32)
        for row, (step, share) in enumerate(self._kept_rows):
            table[row, :step] = 1.0
            if share is not None:
                table[row, : step - 1] = share.cpu().numpy()
        return table

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        """layers (n,) int32; theta/phi_top_ids (T, 5) int32 and _logits (T, 5) float32; kept_generated
        (T, T) float16 = share of heads × layers keeping generated token j during step t
        (NaN where j ≥ t); merged_columns (T,) float32 = merged columns per head and layer; image_mass
        (P,) = m_i of the processed positions (0 where not recorded); sink_w (n, P) float32 = W over
        all processed positions ``sink_positions`` (0..P−1), per layer of ``layers``."""
        out: dict[str, np.ndarray] = {"layers": np.array(self.layers, np.int32), **self._top.arrays()}
        if self.params["selection"] and self._kept_rows:
            out["kept_generated"] = self._kept_table().astype(np.float16)  # step t reads tokens < t: T columns
            out["merged_columns"] = np.array(self._merged_rows, np.float32)
            out["image_mass"] = self._image_mass[0, : self._processed].float().cpu().numpy()
        if self.params["sink"] and self.layers and self._processed:
            n = self._processed
            out["sink_w"] = sink_weights(self._column_mass[list(self.layers), 0, :n]).float().cpu().numpy()
            out["sink_positions"] = np.arange(n, dtype=np.int32)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers)}
