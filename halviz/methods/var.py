"""VAR: visual attention redistribution (Kang et al., ICLR 2025, "See What You Are Told: Visual
Attention Sink in Large Multimodal Models"; code github.com/seilk/VisAttnSink, ``src/logic/logic.py``).

Some tokens draw attention because of a massive activation in a few hidden dimensions, not
because of what they show (attention sinks: BOS in the text, a few "visual sink" patches in the
image). In heads that look at the image anyway ("image-centric"), VAR takes part of the attention
the sink tokens receive and gives it to the other image tokens, in proportion to their weights.

1. **Sink tokens** (prefill only, per layer, from the layer's input hidden state h, i.e. the
   residual stream before the input norm): x = h / rms(h) (RMSNorm *without* its learned gain,
   eps 1e-6, as the code's ``DimProspector.rmsnorm``); a token is a sink when max_{d ∈ D_sink} |x_d| > τ.
   Generated tokens are never sinks (the code detects them only in the prefill).
2. **Image-centric heads**, per head and query row, where the layer has at least one visual sink:
   image mass Σ_{j∈I} a_j ≥ 0.2 and non-sink share Σ_{j∈I∖S} a_j / Σ_{j∈I} a_j ≥ ρ.
3. **Redistribution** in those rows: every sink column (visual and text, BOS included) keeps
   (1−p) of its weight; the budget Ω = p·Σ_{j∈S} a_j goes to the non-sink image tokens,
   a_j += Ω·a_j / Σ_{k∈I∖S} a_k. The row still sums to 1 (no renormalisation needed).
   Applied to the attention weights after softmax, in layers 2..L−2 (0-indexed), to every query
   after the image in the prefill and to every decode query.

Paper values and sources: τ = 20, ρ = 0.5, image-mass floor 0.2, p = 0.6 (the released config
``A_exps/lv1.5_7b.yml``: ``tau: 20, rho: 0.5, summ: 0.2, p: 0.6, except_last_layer: 1``; also the
defaults of ``LogicEngine.activate``). Layers: the code detects sinks in layers ``range(L)[2:]``
(``set_sink_select_layers``) and selects no head where it found none, so layers 0 and 1 are never
edited; ``except_last_layer`` is set in the config. Sink dimensions for LLaMA-2-7B (LLaVA-1.5-7B):
1415 and 2533 (``src/logic/constants.py``; the massive-activation dimensions of Sun et al., 2024).

Decisions (where code and paper differ, or neither covers our models):

- **ρ and p in the paper's sense.** The code tests sink share ≤ ρ and multiplies sink weights by p
  (so p is the share *kept*); the paper tests non-sink share ≥ ρ and moves p. The authors confirm
  the code's parameters are the paper's complements (seilk/VisAttnSink issue #5). halviz follows the
  paper: ``p`` is the share moved, p = 0 is vanilla. At ρ = 0.5 both readings select the same heads;
  the released config's ``p: 0.6`` in the code's sense moves 40 % (``p = 0.4`` here).
- **τ rescaled to the hidden size D.** After the un-gained RMSNorm a token's squared entries average 1,
  so |x_d| ≤ √D and |x_d|²/D is dimension d's share of the token's energy. τ = 20 at D = 4096 means a
  share of 400/4096 ≈ 9.8 %; halviz keeps that share at every width: τ_D = τ·√(D/4096)
  (toy, D = 192: 4.33; LLaVA-interleave-0.5B, D = 896: 9.35). An unscaled τ = 20 exceeds √D for
  D < 400 and could never fire.
- **Sink dimensions found on the first token** (BOS where the model has one), per layer: the dimensions
  where its |x_d| > τ_D. The code hard-codes them per LLM; for LLaMA-2-7B those are the dimensions
  its BOS is massive in. A model whose first token has no massive activation has no sink dimension
  and VAR leaves it alone (it has no sink for VAR to recycle).
- **The last layer is left alone** (``last_layer = −2``), as the config's ``except_last_layer: 1``
  asks. In the released code that flag is set on ``LogicEngine`` but read from ``VARProcessor``,
  whose own class attribute (False) shadows it, so the published code edits the last layer too;
  ``last_layer = −1`` gives that reading.
- The code's share divides by Σ(a + 1e-6) over the image tokens; halviz uses the plain ratio.
- Written as a ``scores`` edit: the chosen rows' logits become log(redistributed weights) (masked
  entries stay −inf), so the engine's softmax returns exactly the redistributed weights; the other
  rows are untouched. Sinks are detected on every row laid out like the main prompt (a text-only
  stream has no image and is left alone); a branch mirroring the main row uses the main row's sinks.

Trace: ``sinks`` (L, prompt) the main row's sink tokens per layer; ``heads`` (T, L, H) the
image-centric heads at the query predicting each step; ``moved`` (T, L, H) the attention mass they
moved from the sinks to the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from halviz.methods.base import Knob, Method
from halviz.methods.layer_range import chosen_layers
from halviz.methods.sink_rule import scaled_tau, sink_tokens

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

MAIN = "main"  # the main row's stream name (halviz.engine.rows.MAIN; importing it here would be circular)


def image_centric(weights: torch.Tensor, image: torch.Tensor, sinks: torch.Tensor, rho: float,
                  min_image: float) -> torch.Tensor:
    """weights (..., kv) attention rows; image, sinks (kv,) bool → (...) bool: rows whose image mass
    is ≥ ``min_image`` and whose non-sink share of it is ≥ ρ (none when no image token is a sink)."""
    if not bool((image & sinks).any()):
        return torch.zeros(weights.shape[:-1], dtype=torch.bool, device=weights.device)
    image_mass = (weights * image.to(weights.dtype)).sum(-1)
    clean = (weights * (image & ~sinks).to(weights.dtype)).sum(-1)
    share = torch.where(image_mass > 0, clean / image_mass.clamp_min(torch.finfo(weights.dtype).tiny), 0.0)
    return (image_mass >= min_image) & (share >= rho)


def redistribute(weights: torch.Tensor, sinks: torch.Tensor, image: torch.Tensor, p: float) -> torch.Tensor:
    """Move a share ``p`` of every row's sink weight to its non-sink image tokens, in proportion to
    their weights (a row whose non-sink image tokens have no weight is left as it is)."""
    sinks, targets = sinks.to(weights.dtype), (image & ~sinks).to(weights.dtype)  # (a bool·float product is float32)
    sink_mass = (weights * sinks).sum(-1, keepdim=True)
    target_mass = (weights * targets).sum(-1, keepdim=True)
    safe = target_mass.clamp_min(torch.finfo(weights.dtype).tiny)
    moved = weights - p * weights * sinks + p * sink_mass * weights * targets / safe
    return torch.where(target_mass > 0, moved, weights)


class VAR(Method):
    name = "var"
    title = "VAR"
    summary = "Gives part of the attention that sink tokens take to the other image tokens, in image-centric heads."
    reference = ("Kang et al., See What You Are Told: Visual Attention Sink in Large Multimodal Models, "
                 "ICLR 2025 (code seilk/VisAttnSink)")
    knobs = (
        Knob("tau", "τ sink threshold (at width 4096)", 20.0, 0.0, 64.0, 0.5,
             help="sink: |RMSNorm(h)| > τ·√(D/4096) in a dimension where the first token is that large"),
        Knob("rho", "ρ non-sink share", 0.5, 0.0, 1.0, 0.05,
             help="image-centric head: the non-sink image tokens hold ≥ ρ of its image attention"),
        Knob("min_image", "Minimum image attention", 0.2, 0.0, 1.0, 0.05,
             help="image-centric head: its image attention is at least this"),
        Knob("p", "p share moved", 0.6, 0.0, 1.0, 0.05,
             help="share of the sink tokens' attention moved to the non-sink image tokens (0 = off)"),
        Knob("first_layer", "First layer", 2, 0, 255, 1, help="first decoder layer (0-indexed) VAR edits"),
        Knob("last_layer", "Last layer (−1 = last)", -2, -255, 255, 1,
             help="last decoder layer VAR edits (−2 = all but the last, the paper's setting)"),
    )
    hook_points = frozenset({"residual", "scores"})
    edits_prefill = True

    def setup(self, column: Column) -> None:
        params = self.params
        self.layers = chosen_layers(column.num_layers, int(params["first_layer"]), int(params["last_layer"]))
        self.rho, self.min_image, self.p = float(params["rho"]), float(params["min_image"]), float(params["p"])
        self.num_layers, self.num_heads, self.prompt_len = column.num_layers, column.num_heads, column.prompt_len
        self.image_index = column.image_index
        self.after_image = int(column.image_index.max()) + 1
        self.sinks: dict[str, dict[int, torch.Tensor]] = {}  # stream → layer → (prompt,) bool
        self._visual_sink_layers: set[int] = set()
        self._heads: dict[int, dict[int, torch.Tensor]] = {}  # step → layer → (H,) bool, main row, last query
        self._moved: dict[int, dict[int, torch.Tensor]] = {}
        self._steps = 0

    def after_step(self, column: Column, token_id: int) -> None:
        self._steps = column.step + 1

    def see_residual(self, p: Pass, layer: int, hidden: torch.Tensor) -> None:
        if not p.prefill or layer not in self.layers:
            return
        tau = scaled_tau(float(self.params["tau"]), hidden.shape[-1])
        for r in p.main_layout:
            found = sink_tokens(hidden[r, :self.prompt_len], tau)
            self.sinks.setdefault(p.streams[r], {})[layer] = found
            if bool(found[self.image_index].any()):
                self._visual_sink_layers.add(layer)

    def wants_scores(self, p: Pass, layer: int) -> bool:
        # no visual sink in the layer: no head is image-centric, and the engine may keep its fast path
        return layer in self._visual_sink_layers and self.p > 0 and bool(p.main_layout)

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q, kv = scores.shape[-2:]
        image = torch.zeros(kv, dtype=torch.bool, device=scores.device)
        image[self.image_index] = True
        reading = torch.arange(kv - q, kv, device=scores.device) >= self.after_image  # (q,) text after the image
        out = scores
        for r in p.main_layout:
            found = self.sinks.get(p.streams[r], self.sinks.get(MAIN, {})).get(layer)
            if found is None or not bool(found[self.image_index].any()):
                continue
            sinks = torch.zeros(kv, dtype=torch.bool, device=scores.device)
            sinks[:found.shape[0]] = found
            weights = torch.softmax(scores[r], dim=-1)  # (H, q, kv)
            chosen = image_centric(weights, image, sinks, self.rho, self.min_image) & reading
            if not bool(chosen.any()):
                continue
            new = redistribute(weights, sinks, image, self.p)
            if out is scores:
                out = scores.clone()
            out[r] = torch.where(chosen[..., None], new.log(), scores[r])
            if p.streams[r] == MAIN:
                moved = self.p * (weights[:, -1] * sinks).sum(-1) * chosen[:, -1]
                self._heads.setdefault(p.step, {})[layer] = chosen[:, -1].cpu()
                self._moved.setdefault(p.step, {})[layer] = moved.float().cpu()
        return out

    def trace_arrays(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "sinks"):
            return {}
        sinks = np.zeros((self.num_layers, self.prompt_len), dtype=np.uint8)
        for layer, found in self.sinks.get(MAIN, {}).items():
            sinks[layer] = found.cpu().numpy()
        steps = self._steps  # the steps whose token was chosen (a forward under way is left out)
        heads = np.zeros((steps, self.num_layers, self.num_heads), dtype=np.uint8)
        moved = np.zeros((steps, self.num_layers, self.num_heads), dtype=np.float16)
        for step, layers in self._heads.items():
            if step >= steps:
                continue
            for layer, chosen in layers.items():
                heads[step, layer] = chosen.numpy()
                moved[step, layer] = self._moved[step][layer].numpy()
        return {"sinks": sinks, "heads": heads, "moved": moved}
