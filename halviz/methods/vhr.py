"""VHR: vision-aware head reinforcement (He et al., ACL 2025, arXiv 2412.13949).

Some heads' outputs change a lot when the image is removed; amplifying them makes generation lean
on vision rather than on language priors.

- VHD_{l,i} = ‖A_{l,i}(with image) − A_{l,i}(text only)‖₂, A_{l,i} the head_dim slice of head i
  before o_proj, at each stream's last prompt position (the one predicting the first token).
  "Text only" = the same prompt with the image tokens removed from the sequence.
- Outlier filter: VHD_{l,i} := 0 where VHD_{l,i} > μ_l + σ_l and TA_{l,i} = ‖A_{l,i}(text only)‖² >
  μ_l + σ_l. Decision: each threshold uses its own quantity's statistics (mean and population std
  of VHD, resp. of TA, over the heads of layer l).
- Selection: H_l = {i : VHD_{l,i} > median_l(VHD)} on the filtered VHD; the median is the usual
  one (mean of the two middle values for an even head count), so about half the heads.
- Reinforcement: A_{l,i} ← α·A_{l,i} for i ∈ H_l, at every position, prefill and decode, α = 2.

Decisions:
- Layers: {1} ∪ the last 14 of 32 (1, 18..31); for depth L: {1} ∪ the last round_half_up(14·L/32)
  (24 → 1, 13..23; 2 → 1; 3 → 1, 2). The ``last_layers`` knob overrides the count (InstructBLIP: 18).
- Selection costs no extra prefill: the text-only sequence is a ``text`` stream of VHR's column,
  a row of the same prefill forward as the with-image main row (its positions come from the model
  family). The engine runs it packed after a longer row (engine/packing.py), so it costs its own
  tokens, not a padded row; hooks still see it as a right-padded row. Without ``per_step_tvhd`` it
  is not decoded: the cache keeps only the main row after the prefill.
  When layer l is reached both rows carry the reinforcement already chosen for layers < l; H_l
  is chosen from the unreinforced outputs of layer l and applied at once, to every row of the
  column, so the main row's cache is the reinforced prompt without recomputing it. The column
  therefore never shares its prefill with others (``edits_prefill``).
- Every row of the column is reinforced (main, a stacked method's contrast branch, our text stream).
- Stacking: ``heads`` hook, after PruneHal and VASparse in the registry; composes with them and
  with KVSmooth, whose hooks act on scores, logits and K/V. PruneHal masks only the rows laid out
  like the main prompt, so the text stream is untouched by it.
- Trace: ``vhd`` and ``text_norm`` (TA) are (L, H) for **every** layer (the selection pass
  measures them all; layers that are not VHR layers are only measured); ``outlier`` and
  ``selected`` are (L, H), False off the VHR layers (``layers`` lists those). With
  ``per_step_tvhd`` a text-only stream with its own cache follows the generated tokens; per
  generated token we store ``step_vhd`` (T, L, H) float16 (raw, unfiltered VHD of the
  unreinforced layer outputs, every layer) and ``tvhd`` (T,) = :func:`t_vhd`, the sum over **all**
  layers (as the paper and the spec define it, not only the reinforced ones) of each layer's top-k
  VHD, k = 8 (or H if fewer heads).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from halviz.methods.base import Knob, Method, Stream

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

TEXT_STREAM = "text"


def vhr_layers(num_layers: int, last_layers: int = -1) -> tuple[int, ...]:
    """{1} ∪ the last round_half_up(14·L/32) layers (the paper's 1, 18..31 for 32 layers)."""
    if last_layers < 0:
        last_layers = math.floor(14 * num_layers / 32 + 0.5)
    last_layers = min(last_layers, num_layers)
    layers = set(range(num_layers - last_layers, num_layers))
    if num_layers > 1:
        layers.add(1)
    return tuple(sorted(layers))


def head_distances(with_image: torch.Tensor, text_only: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(VHD, TA) per head from (..., H, D) outputs: ‖A_img − A_txt‖₂ and ‖A_txt‖²."""
    return (with_image - text_only).norm(dim=-1), text_only.square().sum(-1)


def outlier_heads(vhd: torch.Tensor, text_norm: torch.Tensor) -> torch.Tensor:
    """Heads (last dim) with VHD > μ+σ and TA > μ+σ, each against its own mean and population std."""
    def above(x: torch.Tensor) -> torch.Tensor:
        return x > x.mean(-1, keepdim=True) + x.std(-1, correction=0, keepdim=True)
    return above(vhd) & above(text_norm)


def select_heads(vhd: torch.Tensor, outliers: torch.Tensor) -> torch.Tensor:
    """H_l = {i : filtered VHD_i > median}, outliers' VHD set to 0 first (last dim = heads)."""
    filtered = vhd.masked_fill(outliers, 0.0)
    median = torch.quantile(filtered.double(), 0.5, dim=-1, keepdim=True)
    return filtered.double() > median


def t_vhd(vhd: torch.Tensor, k: int) -> torch.Tensor:
    """T-VHD = Σ over all layers of the top-k heads' VHD; vhd (..., L, H) → (...)."""
    return vhd.topk(min(k, vhd.shape[-1]), dim=-1).values.sum((-2, -1))


def head_scale(heads: torch.Tensor, alpha: float, like: torch.Tensor) -> torch.Tensor:
    """(1, H, 1, 1) factors: α on the chosen heads, 1 elsewhere, in ``like``'s dtype and device."""
    return torch.where(heads, alpha, 1.0).to(device=like.device, dtype=like.dtype)[None, :, None, None]


def reinforce(out: torch.Tensor, heads: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scale the chosen heads of out (B, H, q, D) by α (others × 1, bit-exact)."""
    return out * head_scale(heads, alpha, out)


class VHR(Method):
    name = "vhr"
    title = "VHR"
    summary = "Finds the heads whose output changes most without the image and amplifies them."
    reference = ("He et al., Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence, "
                 "ACL 2025, arXiv 2412.13949")
    knobs = (
        Knob("alpha", "α head scale", 2.0, 0.0, 5.0, 0.1,
             help="Selected heads' outputs are multiplied by α (1 = off)."),
        Knob("last_layers", "Last layers (−1 = auto)", -1, -1, 255, 1,
             help="How many final layers (plus layer 1) are reinforced; auto = round(14·L/32)."),
        Knob("outlier_filter", "Outlier filter", True,
             help="Zero the VHD of heads that are outliers in both VHD and text norm."),
        Knob("per_step_tvhd", "Per-step T-VHD (costly)", False,
             help="Run a text-only stream alongside and record VHD and T-VHD for every generated token."),
        Knob("tvhd_top_k", "T-VHD top-k", 8, 1, 256, 1, help="Heads per layer summed in T-VHD."),
    )
    hook_points = frozenset({"heads"})
    edits_prefill = True

    def __init__(self, **values: Any):
        super().__init__(**values)
        self.alpha: float = float(self.params["alpha"])
        self.layers: tuple[int, ...] = ()
        self.vhd = self.text_norm = self.outlier = self.selected = None
        self._scales: list[torch.Tensor | None] = []  # per layer, (1, H, 1, 1) head factors once chosen
        self._rows: dict[str, torch.Tensor] = {}
        self._step_vhd: list[torch.Tensor] = []

    # ---- lifecycle -------------------------------------------------------------------------
    def streams(self) -> tuple[Stream, ...]:
        return (Stream(TEXT_STREAM, text_only=True, prefill=True, decode=bool(self.params["per_step_tvhd"])),)

    def setup(self, column: Column) -> None:
        self.layers = vhr_layers(column.num_layers, int(self.params["last_layers"]))
        self._layer_set = frozenset(self.layers)
        shape = (column.num_layers, column.num_heads)
        self.vhd = torch.zeros(shape, dtype=torch.float64)
        self.text_norm = torch.zeros(shape, dtype=torch.float64)
        self.outlier = torch.zeros(shape, dtype=torch.bool)
        self.selected = torch.zeros(shape, dtype=torch.bool)
        self._scales = [None] * column.num_layers
        # the last prompt position of each stream: the query that predicts the first token
        self._last = (column.prompt_len - 1, column.text_len - 1)
        if self.params["per_step_tvhd"]:
            rows = (column.num_layers, column.num_heads, column.head_dim)
            self._rows = {k: torch.zeros(rows, dtype=torch.float64, device=column.device) for k in ("image", "text")}

    def after_step(self, column: Column, token_id: int) -> None:
        if self._rows:
            vhd, _ = head_distances(self._rows["image"], self._rows["text"])
            self._step_vhd.append(vhd.cpu())

    # ---- hook point ------------------------------------------------------------------------
    def edit_heads(self, p: Pass, layer: int, out: torch.Tensor) -> torch.Tensor:
        main, text = p.main, p.row(TEXT_STREAM)
        if p.prefill:
            with_image, text_only = out[main, :, self._last[0]], out[text, :, self._last[1]]
            self._choose(layer, with_image, text_only)
        else:
            with_image, text_only = out[main, :, -1], None if text is None else out[text, :, -1]
        if self._rows and text_only is not None:
            self._rows["image"][layer], self._rows["text"][layer] = with_image, text_only
        scale = self._scales[layer]  # made once per layer: a decode step only multiplies
        return out if scale is None else out * scale

    def _choose(self, layer: int, with_image: torch.Tensor, text_only: torch.Tensor) -> None:
        """Measure VHD and TA of this layer; in a VHR layer also filter outliers and choose H_l."""
        vhd, ta = head_distances(with_image.double(), text_only.double())
        self.vhd[layer], self.text_norm[layer] = vhd.cpu(), ta.cpu()
        if layer not in self._layer_set:
            return
        if self.params["outlier_filter"]:
            outliers = outlier_heads(vhd, ta)
        else:
            outliers = torch.zeros_like(vhd, dtype=torch.bool)
        chosen = select_heads(vhd, outliers)
        self.outlier[layer], self.selected[layer] = outliers.cpu(), chosen.cpu()
        self._scales[layer] = head_scale(chosen, self.alpha, with_image)

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        if self.vhd is None:
            return {}
        out = {
            "layers": np.array(self.layers, np.int32),
            "vhd": self.vhd.float().numpy(),
            "text_norm": self.text_norm.float().numpy(),
            "outlier": self.outlier.numpy(),
            "selected": self.selected.numpy(),
        }
        if self._step_vhd:
            steps = torch.stack(self._step_vhd)  # (T, L, H)
            out["step_vhd"] = steps.half().numpy()
            out["tvhd"] = t_vhd(steps, int(self.params["tvhd_top_k"])).float().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers)}
