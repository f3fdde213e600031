"""VASparse: visual-aware sparsification (Zhuang et al., CVPR 2025, arXiv 2501.06553).

halviz implements **the paper**, not its released code (which merges old generated-token KV rows,
uses a bigram-like contrast and has no sink penalty). Three parts, each behind a switch:

1. Visual-aware token selection (decode steps, layers ``vasparse_layers``). Per head and row,
   δ_i = norm((q·K_i)²) + λ·P_i over the cached tokens; the top S share is kept, the rest masked.
   norm = min-max over the row's unmasked columns, to [0, 1]. P_i = softmax_i(m_i) over the
   previously processed tokens, where m_i = Σ_{k ∈ image} a_{i,k} is token i's own last-layer,
   head-mean attention to the image tokens as recorded when i was processed (prefill rows
   included, image tokens too), so P costs no extra pass.
2. Sparse visual contrastive decoding. ℓ_φ comes from a second decode-step forward on the same
   cache (cropped back afterwards) in which a fixed, seeded random share φ of the image columns is
   masked in the same layers. Then, keeping only tokens with p_θ ≥ β_cut · max p_θ,
   logits = (1+α)·ℓ_θ − α·ℓ_φ (the others −inf).
3. Sink penalty on text columns. W_j = softmax_j(Σ_{i≥j} a_{i,j}) over the text columns j
   (BOS, system, prompt and generated tokens), from the column-accumulated head-mean attention of
   that layer over every row processed so far; attention logits S_j → (1+β)·S_j − β·W_j·S_j.

Decisions (beyond the spec's):
- Layers: "from layer 2 on" of 32 layers scales with depth: first = max(1, round_half_up(2·L/32)),
  capped at L−1, and layers first..L−1 (0-indexed) carry all three parts (32 → 2..31, 24 → 2..23,
  3 → 1..2, 2 → 1). The ``first_layer`` knob overrides it.
- Nothing acts during the prefill: step 0 (the first generated token) is plain greedy, with no
  selection, no sink penalty and no contrast (there is no cache to run ℓ_φ's decode step on, and
  the spec forbids an extra prefill). The prefill's attention still feeds P and W.
- Kept per row = ceil(S · n) with n the row's unmasked columns (current token included); columns
  another method masked are never kept. The current token's own column is always kept (its P is
  not known before its last layer has run); exact ties in δ are broken by torch.topk.
- δ is computed from the scores as they arrive (before this method's sink penalty).
- W uses the attention as actually applied in the main pass (after selection and penalty); the
  current token's own column has no accumulated mass yet (0). Written as S·(1 + β − β·W), which
  equals (1+β)S − β(W⊙S) and keeps masked (−inf) columns masked. Since W is a softmax over sums
  that grow with the number of rows, the dominant sink gets W ≈ 1 (its logit unchanged) and the
  other text columns are scaled by ≈ (1+β).
- The ℓ_φ pass applies the sink penalty too but not the visual-aware selection, so the contrast
  isolates visual-aware vs vision-agnostic sparsification. The random columns are drawn once per
  run: round_half_up(φ · N_image) of them, from ``torch.Generator().manual_seed(seed)``.
- Switch values are honoured literally (S = 1, α = 0, β = 0 still run their machinery, which is
  then exactly the identity on the chosen tokens); the switches turn a part off entirely.
- Other passes (e.g. VHR's streams) are left alone. With PruneHal (masking implementation) both
  stack: its masked columns stay masked in both passes and count as not kept. A method that drops
  cache rows physically would break the position bookkeeping; this is checked and refused at run
  time. Stacking ``order`` 20: after PruneHal (10) at the scores hook, before VHR (30, heads).
- Cost: the ℓ_φ pass is one more decode forward per step; selection and penalty are vectorised
  (one topk per layer, no loops over heads); the prefill runs explicit attention in the layers
  whose weights feed P and W. Measured on CPU, 6-layer 2048-wide random LLaVA, 576 image tokens:
  1.96–2.01× vanilla per token (contrast alone 1.85–2.02×; selection + penalty alone ≈ 1.1× at
  width 1024, less as width grows).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from halviz.engine.run import SEGMENTS
from halviz.methods.base import Knob, Method

if TYPE_CHECKING:
    from halviz.engine.run import Run

PHI_VARIANT = "vasparse-phi"
TOP_K = 5
# A column whose score is below this was masked (by −inf or by the float16/bfloat16/float32
# minimum the mask functions use); real attention logits never come near it.
MASKED_BELOW = -3.0e4


def vasparse_layers(num_layers: int, first_layer: int = -1) -> tuple[int, ...]:
    """Layers carrying selection, φ mask and sink penalty: the paper's 2..31 of 32, scaled by depth."""
    if first_layer < 0:
        first_layer = max(1, math.floor(2 * num_layers / 32 + 0.5))
    first_layer = min(first_layer, num_layers - 1)
    return tuple(range(first_layer, num_layers))


def unmasked(scores: torch.Tensor) -> torch.Tensor:
    return scores > MASKED_BELOW


def selection_scores(scores: torch.Tensor, saliency: torch.Tensor, lam: float) -> torch.Tensor:
    """δ = minmax_row((q·K)²) + λ·P; masked columns −inf; the newest column +inf (always kept).

    scores (B, H, q, kv) scaled logits (scale cancels in the min-max); saliency (B, kv).
    """
    valid = unmasked(scores)
    sq = torch.where(valid, scores.square(), 0.0)
    lo = torch.where(valid, sq, torch.inf).amin(-1, keepdim=True)
    hi = torch.where(valid, sq, -torch.inf).amax(-1, keepdim=True)
    norm = (sq - lo) / (hi - lo).clamp_min(1e-12)
    delta = norm + lam * saliency[:, None, None, :]
    delta = torch.where(valid, delta, -torch.inf)
    delta[..., -1] = torch.inf
    return delta


def keep_count(keep_ratio: float, n: int | torch.Tensor) -> int | torch.Tensor:
    """ceil(S · n), robust to S·n landing a rounding error above a whole number."""
    if isinstance(n, torch.Tensor):
        return torch.ceil(n.double() * keep_ratio - 1e-9).long()
    return math.ceil(n * keep_ratio - 1e-9)


def keep_top(delta: torch.Tensor, keep_ratio: float, valid: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the ceil(S · n_valid) largest δ of each row (exact ties: torch.topk's pick).

    One topk of the largest possible count (host-known, no device sync), then each row keeps its
    own count of those; about twice as fast as a full sort on CPU.
    """
    most = keep_count(keep_ratio, delta.shape[-1])
    count = keep_count(keep_ratio, valid.sum(-1, keepdim=True))
    ranked = delta.topk(most, dim=-1).indices  # sorted, largest first
    by_rank = torch.arange(most, device=delta.device) < count
    return torch.zeros_like(valid).scatter(-1, ranked, by_rank) & valid


def saliency_from_mass(mass: torch.Tensor) -> torch.Tensor:
    """P over the kv columns: softmax of the image mass over the previous tokens, 0 for the newest.

    mass (B, kv−1) = each processed token's own last-layer head-mean attention to the image.
    """
    p = torch.softmax(mass, dim=-1)
    return torch.cat([p, p.new_zeros(p.shape[0], 1)], dim=-1)


def sink_weights(column_mass: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """W_j = softmax_j over the text columns of Σ_{i≥j} a_{i,j}; 0 on other columns.

    column_mass (B, kv) head-mean attention accumulated per column; text (kv,) bool.
    """
    logits = column_mass.masked_fill(~text, -torch.inf)
    return torch.softmax(logits, dim=-1).masked_fill(~text, 0.0)


def sink_penalty(scores: torch.Tensor, weights: torch.Tensor, text: torch.Tensor, beta: float) -> torch.Tensor:
    """(1+β)·S − β·(W⊙S) = S·(1 + β − β·W) on the text columns (kv,) bool; other columns unchanged."""
    factor = torch.where(text, 1.0 + beta - beta * weights, 1.0)
    return scores * factor[:, None, None, :].to(scores.dtype)


def contrast_logits(theta: torch.Tensor, phi: torch.Tensor, alpha: float, cut: float) -> torch.Tensor:
    """Plausibility cut (keep p_θ ≥ cut · max p_θ), then (1+α)·ℓ_θ − α·ℓ_φ; cut tokens −inf."""
    p = torch.softmax(theta, dim=-1)
    plausible = p >= cut * p.amax(-1, keepdim=True)
    return torch.where(plausible, (1 + alpha) * theta - alpha * phi, -torch.inf)


class VASparse(Method):
    name = "vasparse"
    title = "VASparse"
    summary = ("Keeps the top share of cached tokens per head by query match plus visual saliency, "
               "contrasts with a pass that drops random image tokens, and damps text attention sinks.")
    reference = "Zhuang et al., VASparse, CVPR 2025, arXiv 2501.06553 (the paper, not its released code)"
    knobs = (
        Knob("keep_ratio", "Keep ratio S", 0.5, 0.05, 1.0, 0.05,
             help="Share of cached tokens each head keeps per decode step."),
        Knob("saliency_weight", "λ visual saliency", 1.0, 0.0, 10.0, 0.1,
             help="Weight of P against the normalised (q·K)²."),
        Knob("alpha", "α contrast", 0.1, 0.0, 2.0, 0.05, help="logits = (1+α)ℓ_θ − αℓ_φ."),
        Knob("mask_rate", "φ image mask rate", 0.5, 0.0, 1.0, 0.05,
             help="Share of image tokens masked at random in the ℓ_φ pass."),
        Knob("plausibility", "β_cut plausibility", 0.1, 0.0, 1.0, 0.01,
             help="Keep tokens with p_θ ≥ β_cut·max p_θ before contrasting."),
        Knob("sink_beta", "β sink penalty", 0.1, 0.0, 1.0, 0.01, help="Text-column logits S → (1+β)S − β(W⊙S)."),
        Knob("seed", "Mask seed", 0, 0, 2**31 - 1, 1,
             help="Seed of the fixed random image mask of the ℓ_φ pass."),
        Knob("first_layer", "First layer (−1 = auto)", -1, -1, 255, 1,
             help="First decoder layer (0-indexed) of all three parts; auto = round(2·L/32), at least 1."),
        Knob("selection", "Visual-aware selection", True),
        Knob("contrast", "Sparse visual contrast", True),
        Knob("sink", "Sink penalty", True),
    )
    hook_points = frozenset({"scores", "logits"})
    order = 20

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
        self._phi_logits: torch.Tensor | None = None
        self._kept_now: torch.Tensor | None = None
        self._processed = 0
        self._kept_rows: list[torch.Tensor] = []
        self._top: dict[str, list[np.ndarray]] = {k: [] for k in ("theta_ids", "theta_logits", "phi_ids", "phi_logits")}

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self, run: Run) -> None:
        self.layers = vasparse_layers(run.num_layers, int(self.params["first_layer"]))
        self._layer_set = frozenset(self.layers)
        self._last_layer = run.num_layers - 1
        batch, total = run.prompt_ids.shape[0], run.prompt_len + run.max_new_tokens + 1
        self._text = run.segment_ids != SEGMENTS.index("image")
        # Per position: its own last-layer head-mean attention to the image (m_i), and per layer the
        # head-mean attention it has received so far (Σ_{i≥j} a_{i,j}).
        dtype = torch.promote_types(run.model.dtype, torch.float32)
        self._image_mass = torch.zeros(batch, total, device=run.device, dtype=dtype)
        self._column_mass = torch.zeros(run.num_layers, batch, total, device=run.device, dtype=dtype)
        self._processed = 0
        n_image = len(run.image_index)
        generator = torch.Generator().manual_seed(int(self.params["seed"]))
        n_masked = math.floor(float(self.params["mask_rate"]) * n_image + 0.5)
        drawn = torch.randperm(n_image, generator=generator)[:n_masked]
        self.phi_columns = run.image_index[drawn.to(run.device)].sort().values

    def before_forward(self, run: Run, input_ids: torch.Tensor) -> None:
        if self.params["contrast"]:
            self._phi_logits = run.forward(variant=PHI_VARIANT, restore_cache=True, input_ids=input_ids)

    # ---- hook points -----------------------------------------------------------------------
    def needs_weights(self, run: Run, layer: int) -> bool:
        return ((self.params["selection"] and layer == self._last_layer)
                or (self.params["sink"] and layer in self._layer_set))

    def uses_scores(self, run: Run, layer: int) -> bool:
        if run.phase != "decode" or layer not in self._layer_set:
            return False
        if run.variant is None:
            return bool(self.params["selection"] or self.params["sink"])
        return run.variant == PHI_VARIANT

    def edit_scores(self, run: Run, layer: int, scores: torch.Tensor) -> torch.Tensor:
        kv = scores.shape[-1]
        if kv != run.prompt_len + run.step:
            raise RuntimeError(f"VASparse expects one cache column per position ({run.prompt_len + run.step}), "
                               f"got {kv}; a method that drops cache rows cannot run with it")
        keep = None
        if run.variant is None and self.params["selection"]:
            saliency = saliency_from_mass(self._image_mass[:, : kv - 1])
            keep = keep_top(selection_scores(scores, saliency, self.lam), self.keep_ratio, unmasked(scores))
        if self.params["sink"]:
            text = self._text[:kv]
            scores = sink_penalty(scores, sink_weights(self._column_mass[layer, :, :kv], text), text, self.beta)
        if keep is not None:
            scores = scores.masked_fill(~keep, -torch.inf)
            kept = keep[0, :, -1, run.image_index].sum(0)  # heads keeping each image token
            self._kept_now = kept if self._kept_now is None else self._kept_now + kept
        if run.variant == PHI_VARIANT:
            scores = scores.index_fill(-1, self.phi_columns, -torch.inf)
        return scores

    def after_attention(self, run: Run, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        if layer == self._last_layer:
            self._processed = key.shape[-2]
        if weights is None:
            return
        kv, q_len = weights.shape[-1], weights.shape[-2]
        mean = weights.to(self._column_mass.dtype).mean(1)  # (B, q, kv)
        if self.params["sink"] and layer in self._layer_set:
            self._column_mass[layer, :, :kv] += mean.sum(1)
        if self.params["selection"] and layer == self._last_layer:
            self._image_mass[:, kv - q_len: kv] = mean[..., run.image_index].sum(-1)

    def edit_logits(self, run: Run, logits: torch.Tensor) -> torch.Tensor:
        self._keep_top("theta", logits)
        if self.params["selection"]:
            self._kept_rows.append(self._kept_fraction(run))
        phi, self._phi_logits = self._phi_logits, None
        if phi is None:  # step 0: no ℓ_φ (no decode step to run it on), first token uncontrasted
            self._top["phi_ids"].append(np.full(TOP_K, -1, np.int32))
            self._top["phi_logits"].append(np.full(TOP_K, np.nan, np.float32))
            return logits
        self._keep_top("phi", phi)
        return contrast_logits(logits, phi, self.alpha, self.cut)

    def _keep_top(self, which: str, logits: torch.Tensor) -> None:
        values, ids = logits[0].topk(TOP_K)
        self._top[f"{which}_ids"].append(ids.int().cpu().numpy())
        self._top[f"{which}_logits"].append(values.float().cpu().numpy())

    def _kept_fraction(self, run: Run) -> torch.Tensor:
        kept, self._kept_now = self._kept_now, None
        if kept is None:  # prefill: nothing masked
            return torch.ones(len(run.image_index), device=run.device)
        return kept.float() / (run.num_heads * len(self.layers))

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        """layers (n,) int32; theta/phi_top_ids (T, 5) int32 and _logits (T, 5) float32 (φ: −1/NaN at
        step 0); kept_image (T, N_img) float16 = share of heads × layers keeping each image token
        (1 at step 0); image_mass (P,) = m_i of every processed position; sink_w (n, n_text) float32
        = W over the text positions ``sink_positions`` from all processed rows, per layer of ``layers``."""
        out: dict[str, np.ndarray] = {"layers": np.array(self.layers, np.int32)}
        for key, rows in self._top.items():
            name = key.replace("_", "_top_", 1)
            empty = np.zeros((0, TOP_K), np.int32 if key.endswith("ids") else np.float32)
            out[name] = np.stack(rows) if rows else empty
        if self.params["selection"] and self._kept_rows:
            out["kept_image"] = torch.stack(self._kept_rows).half().cpu().numpy()
            out["image_mass"] = self._image_mass[0, : self._processed].float().cpu().numpy()
        if self.params["sink"] and self.layers and self._processed:
            n = self._processed
            text = self._text[:n]
            weights = sink_weights(self._column_mass[list(self.layers), 0, :n], text)
            out["sink_w"] = weights[:, text].float().cpu().numpy()
            out["sink_positions"] = torch.nonzero(text).flatten().int().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers)}
