"""CAI: context-aware attention intervention (Lei et al., ECCV 2026, arXiv 2606.29847; code Iris1946/CAI).

"See only when needed": tilt the predicting query's attention towards the image patches that match
the current text, only in deep layers and only when the model is unsure there, and contrast the
result with a text-only stream. Equations as the released code computes them (``utils/llava_utils.py``:
``model_forward``, ``attn_forward``, ``CFGLogits``); the paper's abstract describes the same three
parts ("token-specific visual relevance from early-layer representations", "an entropy- and
depth-gated attention tilt only for uncertainty-spiking tokens in deeper layers", contrastive
decoding as an optional auxiliary module). Numbered here, not by the paper (whose method section
was not available to us, only its abstract):

(1) relevance, once per forward, from the residual entering layer 0 (the input embeddings, image
    features included): s_j = cos(v_j, t), v_j the image tokens' embeddings (taken in the prefill),
    t = the mean embedding of the prompt tokens after the image (prefill) or the current token's
    embedding (decode); w_j = σ(κ·(s_j − min_k s_k)), κ = 100. So w ∈ [0.5, 1): the least
    related patch gets 0.5, and κ = 100 pushes most others close to 1.
(2) gate, per layer: after layer l, for l = ℓ_s … L−2, the logit lens of the predicting position
    (final norm, language head, float32, no logits processor) has entropy
    H_l = −Σ p·ln(p + 1e-9) / ln 10 (in bans, as the code computes it); the gate of layer l+1
    opens when H_l > τ.
(3) tilt, in an open layer, the predicting query's attention logits (mask added) to the image
    tokens, every head: a_j ← a_j + |a_j|·w_j (never lowers a logit; softmax as usual).
(4) contrast, γ ≠ 1: ℓ = γ·(log p − log q) + log q over the tokens with p ≥ 0.1·max p (others
    −inf), p = the tilted main row's distribution, q = a text-only stream's (the prompt without
    the image, fed the column's tokens). This equals (1+α)·log p − α·log q with α = γ − 1.

Defaults: τ = 0.10 ban, ℓ_s = 27 of 32, γ = 3 are the released script's LLaVA-1.5 settings for
POPE-COCO popular/adversarial (``scripts/pope_eval.sh``; random uses ℓ_s = 30, γ = 5; Qwen-VL
τ = 0.9). Their use for captions (CHAIR, the toy probe) is our guess: the repository ships POPE
only. κ = 100 is a constant of the code, exposed as a knob.

Decisions and divergences from the released code:
- Depth: ℓ_s = −1 (auto) = round_half_up(27·L/32), at most L−2 so that one layer can be gated
  (32 → 27: layers 28..31 gated; the toy's 6 → 4: layer 5).
- Greedy decoding: the released POPE script samples (temperature 1, top-p 1); halviz decodes
  greedily, like every other method here.
- The text-only stream is never tilted. In the code the gate flags set by the main row stay set
  while the contrast's text-only forward runs, but that forward only tilts once its length passes
  the image's end (the ``size(-1) > query_token_start`` guard), which a POPE answer never reaches;
  and the text-only pass's own gates can overwrite the stored weights with NaN (its prompt has no
  tokens after ``query_token_start``). We tilt the main row only, with weights from the main row.
- Rows of other stacked methods (VCD's noised image, VASparse's masked branch) are not tilted:
  the gate and the weights are the main row's. Stacked with VHR, CAI's text-only row is a row of
  its own (``cai_text``, beside VHR's ``text``) and VHR reinforces it like every row of its column.
- A logit already −inf (a stacked method's mask, e.g. PruneHal) stays −inf (the code's −inf + ∞·w
  would be NaN; with its float16 mask of finfo.min it stayed near the minimum).
- The text-only prompt is the model family's (``Family.text_only_ids``, the same as VHR's); the
  code builds BOS + text before ``<image>`` + text after it, which is the same for LLaVA-1.5.
- One forward per step for both streams (a row of the batch); the code runs the text-only prompt
  as a second model call per step.
- The gate's entropies are computed for every gated layer on the device, without a host sync:
  an open gate is a boolean tensor applied with ``torch.where``.

Trace (``method/cai/…``): ``layers`` (gated layers), ``entropy`` (T, L) float32 = H_{l−1} stored
at the gated layer l (NaN elsewhere), ``gate`` (T, L) bool, ``weights`` (T, n_image) float16 = w of
each step, and with the contrast ``theta_top_*``/``text_top_*`` (the two streams' top-5 logits).
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

TEXT_STREAM = "cai_text"  # its own name: VHR's text-only row is "text"
LN10 = math.log(10.0)
ENTROPY_EPS = 1e-9  # the code's p + 1e-9 inside the log
PLAUSIBILITY = 0.1  # the code's cutoff log(0.1) + max log p


def cai_start_layer(num_layers: int, start_layer: int = -1) -> int:
    """ℓ_s: the code's 27 of 32 scaled to depth L (round half up), at most L−2; an explicit value as given."""
    if start_layer < 0:
        start_layer = min(math.floor(27 * num_layers / 32 + 0.5), num_layers - 2)
    return max(start_layer, 0)


def gated_layers(num_layers: int, start_layer: int = -1) -> tuple[int, ...]:
    """Layers whose tilt a gate can open: ℓ_s+1 … L−1 (the code checks after layers ℓ_s … L−2)."""
    return tuple(range(cai_start_layer(num_layers, start_layer) + 1, num_layers))


def relevance(visual: torch.Tensor, text: torch.Tensor, sharpness: float) -> torch.Tensor:
    """(1): visual (n, D), text (D,) → w (n,) = σ(κ·(cos − min cos)), in float32 or wider."""
    acc = torch.promote_types(visual.dtype, torch.float32)
    v = torch.nn.functional.normalize(visual.to(acc), dim=-1)
    t = torch.nn.functional.normalize(text.to(acc), dim=-1)
    sim = v @ t
    return torch.sigmoid(sharpness * (sim - sim.min()))


def lens_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(2): the entropy in bans of softmax(logits) over the last dim, with the code's 1e-9 in the log."""
    p = torch.softmax(logits, dim=-1)
    return -(p * (p + ENTROPY_EPS).log()).sum(-1) / LN10


def tilt(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(3): a + |a|·w on the last dim (the image columns); −inf stays −inf."""
    w = weights.to(scores.dtype)
    return torch.where(torch.isfinite(scores), scores + scores.abs() * w, scores)


def cai_contrast(main: torch.Tensor, text: torch.Tensor, gamma: float) -> torch.Tensor:
    """(4): γ·(log p − log q) + log q on the tokens with p ≥ 0.1·max p, others −inf."""
    log_p, log_q = torch.log_softmax(main, dim=-1), torch.log_softmax(text, dim=-1)
    return contrast_logits(log_p, log_q, gamma - 1.0, PLAUSIBILITY)


class CAI(Method):
    name = "cai"
    title = "CAI"
    summary = ("Where unsure in deep layers (logit-lens entropy), tilts attention to the patches that match the "
               "current text; contrasts with a text-only stream.")
    reference = ("Lei et al., See Only When Needed: Context-Aware Attention Intervention for Mitigating "
                 "Hallucinations in LVLMs, ECCV 2026, arXiv 2606.29847")
    knobs = (
        Knob("threshold", "τ entropy gate (bans)", 0.1, 0.0, 6.0, 0.01,
             help="A layer's tilt opens when the previous layer's logit-lens entropy (log base 10) exceeds τ."),
        Knob("start_layer", "ℓ_s first checked layer (−1 = auto)", -1, -1, 255, 1,
             help="Entropy is checked after layers ℓ_s … L−2, so layers ℓ_s+1 … L−1 can be tilted; "
                  "auto = round(27·L/32), at most L−2."),
        Knob("gamma", "γ contrast with text-only", 3.0, 1.0, 10.0, 0.1,
             help="γ·(log p − log q) + log q after the cut p ≥ 0.1·max p; 1 = no contrast and no text-only row."),
        Knob("sharpness", "κ relevance sharpness", 100.0, 0.0, 1000.0, 1.0,
             help="w = σ(κ·(cos − min cos)) per image token; the released code's 100."),
    )
    hook_points = frozenset({"residual", "scores", "logits"})
    edits_prefill = True  # the prompt's last query is tilted when its gate opens

    def __init__(self, **values: Any):
        super().__init__(**values)
        p = self.params
        self.threshold = float(p["threshold"])
        self.gamma = float(p["gamma"])
        self.sharpness = float(p["sharpness"])
        self.layers: tuple[int, ...] = ()
        self._top = TopLogits("theta", "text")
        self._steps = 0

    @property
    def contrast(self) -> bool:
        return self.gamma != 1.0

    def streams(self) -> tuple[Stream, ...]:
        return (Stream(TEXT_STREAM, text_only=True),) if self.contrast else ()

    def setup(self, column: Column) -> None:
        self.layers = gated_layers(column.num_layers, int(self.params["start_layer"]))
        if column.num_layers < 2:
            raise ValueError(f"CAI needs at least 2 decoder layers (it reads one layer's logit lens and tilts the "
                             f"next); this model has {column.num_layers}")
        if not self.layers:
            raise ValueError(f"CAI's start layer {int(self.params['start_layer'])} leaves no layer to tilt: this "
                             f"model has layers 0–{column.num_layers - 1}, so it must be at most "
                             f"{column.num_layers - 2}")
        self._layer_set = frozenset(self.layers)
        self.num_layers, self.prompt_len = column.num_layers, column.prompt_len
        self.image_index = column.image_index
        self.after_image = int(column.image_index.max()) + 1
        decoder = column.model.get_decoder()
        self._norm = getattr(decoder, "norm", None)
        if self._norm is None:
            raise ValueError("CAI's entropy gate needs the decoder's final norm, which this model lacks")
        self._head = column.model.get_output_embeddings()
        self._visual: torch.Tensor | None = None  # (n_image, D), the prefill's image embeddings
        self._weights: torch.Tensor | None = None  # this forward's w
        self._gate: dict[int, torch.Tensor] = {}  # this forward: layer → 0-dim bool on the device
        self._entropy_rows: list[torch.Tensor] = []
        self._gate_rows: list[torch.Tensor] = []
        self._weight_rows: list[torch.Tensor] = []
        self._fresh_step(column.device)

    def _fresh_step(self, device) -> None:
        self._entropy_now = torch.full((self.num_layers,), float("nan"), device=device)
        self._gate_now = torch.zeros(self.num_layers, dtype=torch.bool, device=device)

    def after_step(self, column: Column, token_id: int) -> None:
        self._entropy_rows.append(self._entropy_now)
        self._gate_rows.append(self._gate_now)
        if self._weights is not None:
            self._weight_rows.append(self._weights)
        self._steps = column.step + 1
        self._gate = {}
        self._fresh_step(column.device)

    # ---- hook points -----------------------------------------------------------------------
    def _last(self, p: Pass) -> int:
        """Index (in the hook's sequence dim) of the main row's predicting position."""
        return self.prompt_len - 1 if p.prefill else -1

    def see_residual(self, p: Pass, layer: int, hidden: torch.Tensor) -> None:
        main = p.main
        if main is None:
            return
        if layer == 0:
            if p.prefill:
                self._visual = hidden[main, self.image_index]
                text = hidden[main, self.after_image:self.prompt_len].mean(0)
            else:
                text = hidden[main, -1]
            self._weights = relevance(self._visual, text, self.sharpness)
        if layer in self._layer_set:  # the residual entering l = what layer l−1 wrote
            h = hidden[main, self._last(p)]
            acc = torch.promote_types(h.dtype, torch.float32)  # the code's .float(); float64 stays float64
            logits = self._head(self._norm(h[None]))[0].to(acc)
            entropy = lens_entropy(logits)
            opened = entropy > self.threshold
            self._gate[layer] = opened
            self._entropy_now[layer] = entropy.to(self._entropy_now.dtype)
            self._gate_now[layer] = opened

    def wants_scores(self, p: Pass, layer: int) -> bool:
        return layer in self._layer_set and p.main is not None

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        opened = self._gate.get(layer)
        if opened is None or self._weights is None:
            return scores
        scores = scores.clone()
        row = scores[p.main, :, self._last(p)]  # (H, kv), a view of the clone
        image = row[:, self.image_index]
        row[:, self.image_index] = torch.where(opened, tilt(image, self._weights), image)
        return scores

    def edit_logits(self, p: Pass, logits: torch.Tensor) -> torch.Tensor:
        text = p.row(TEXT_STREAM)
        if not self.contrast or text is None:
            return logits
        main = p.main
        theta, prior = logits[main:main + 1], logits[text:text + 1]
        self._top.keep("theta", theta)
        self._top.keep("text", prior)
        logits = logits.clone()
        logits[main:main + 1] = cai_contrast(theta, prior, self.gamma)
        return logits

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "_entropy_rows"):  # never set up
            return {}
        steps = self._steps  # the steps whose token was chosen (a forward under way is left out)
        out: dict[str, np.ndarray] = {
            "layers": np.array(self.layers, np.int32),
            "entropy": (torch.stack(self._entropy_rows[:steps]).float().cpu().numpy() if steps
                        else np.zeros((0, self.num_layers), np.float32)),
            "gate": (torch.stack(self._gate_rows[:steps]).cpu().numpy() if steps
                     else np.zeros((0, self.num_layers), bool)),
            "weights": (torch.stack(self._weight_rows[:steps]).half().cpu().numpy() if steps
                        else np.zeros((0, len(self.image_index)), np.float16)),
        }
        if self.contrast:
            top = self._top.arrays()
            out.update({k: v[:steps] for k, v in top.items()})
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers)}
