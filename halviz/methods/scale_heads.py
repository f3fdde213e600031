"""Scale or silence attention heads: what the caption becomes without (or with more of) a head.

An intervention for teaching. The chosen heads' outputs (before ``o_proj``) are multiplied by
``scale`` (0 = silenced) in the chosen layers, at every position, prompt included, in every row
of the column. ``head`` = −1 means every head of those layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halviz.methods.base import Knob, Method
from halviz.methods.layer_range import chosen_layers, layer_knobs

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass


class ScaleHeads(Method):
    name = "scale_heads"
    title = "Scale heads"
    summary = "Intervention: multiply chosen heads' outputs by a factor (0 silences them)."
    reference = "intervention"
    knobs = (Knob("head", "Head (−1 = all)", 0, -1, 1023, 1, help="head index within each chosen layer"),
             Knob("scale", "Scale", 0.0, 0.0, 10.0, 0.1, help="0 silences the head; 1 changes nothing"),
             *layer_knobs("is scaled"))
    hook_points = frozenset({"heads"})
    edits_prefill = True

    def setup(self, column: Column) -> None:
        self.layers = chosen_layers(column.num_layers, int(self.params["first_layer"]), int(self.params["last_layer"]))
        head = int(self.params["head"])
        if head >= column.num_heads:
            raise ValueError(f"this model has heads 0..{column.num_heads - 1}, not {head}")
        factor = torch.ones(column.num_heads, dtype=torch.float64)
        factor[slice(None) if head < 0 else head] = float(self.params["scale"])
        self.factor = factor.to(column.device)

    def edit_heads(self, p: Pass, layer: int, out: torch.Tensor) -> torch.Tensor:
        if layer not in self.layers:
            return out
        return out * self.factor.to(out.dtype)[None, :, None, None]
