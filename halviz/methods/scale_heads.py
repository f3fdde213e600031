"""Scale or silence attention heads: what the caption becomes without (or with more of) a head.

An intervention for teaching. The chosen heads' outputs (before ``o_proj``) are multiplied by
``scale`` (0 = silenced) in the chosen layers, at every position, prompt included, in every row
of the column. ``head`` = −1 means every head of those layers. ``heads`` ("layer:head,layer:head")
names single heads in any layers instead: when it is not empty, exactly those heads are scaled and
``head``, ``first_layer`` and ``last_layer`` are not used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halviz.methods.base import Knob, Method
from halviz.methods.index_pairs import pairs_parser, parse_pairs
from halviz.methods.layer_range import chosen_layers, layer_knobs

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

HEADS_EXAMPLE = "2:5,3:0"


class ScaleHeads(Method):
    name = "scale_heads"
    title = "Scale heads"
    summary = "Intervention: multiply chosen heads' outputs by a factor (0 silences them)."
    reference = "intervention"
    knobs = (Knob("head", "Head (−1 = all)", 0, -1, 1023, 1, help="head index within each chosen layer"),
             Knob("scale", "Scale", 0.0, 0.0, 10.0, 0.1, help="0 silences the head; 1 changes nothing"),
             Knob("heads", "Heads (layer:head list; empty = head and layers)", "",
                  help=f"single heads to scale, e.g. {HEADS_EXAMPLE}; when given, head and the layers are not used",
                  parse=pairs_parser("heads", HEADS_EXAMPLE)),
             *layer_knobs("is scaled"))
    hook_points = frozenset({"heads"})
    edits_prefill = True

    def setup(self, column: Column) -> None:
        scale = float(self.params["scale"])
        if self.params["heads"]:
            self.factors = listed_factors(self.params["heads"], column.num_layers, column.num_heads, scale)
        else:
            layers = chosen_layers(column.num_layers, int(self.params["first_layer"]), int(self.params["last_layer"]))
            head = int(self.params["head"])
            if head >= column.num_heads:
                raise ValueError(f"this model has heads 0..{column.num_heads - 1}, not {head}")
            factor = torch.ones(column.num_heads, dtype=torch.float64)
            factor[slice(None) if head < 0 else head] = scale
            self.factors = {layer: factor for layer in layers}
        self.factors = {layer: f.to(column.device) for layer, f in self.factors.items()}

    def edit_heads(self, p: Pass, layer: int, out: torch.Tensor) -> torch.Tensor:
        factor = self.factors.get(layer)
        if factor is None:
            return out
        return out * factor.to(out.dtype)[None, :, None, None]


def listed_factors(heads: str, num_layers: int, num_heads: int, scale: float) -> dict[int, torch.Tensor]:
    """Per layer, the (H,) factor of a "layer:head,…" list: ``scale`` on the listed heads, 1 elsewhere."""
    pairs = parse_pairs(heads, "heads", HEADS_EXAMPLE)
    outside = [f"{l}:{h}" for l, h in pairs if l >= num_layers or h >= num_heads]
    if outside:
        raise ValueError(f"heads {', '.join(outside[:5])} are not in this model (layers 0..{num_layers - 1}, "
                         f"heads 0..{num_heads - 1})")
    factors: dict[int, torch.Tensor] = {}
    for layer, head in pairs:
        factors.setdefault(layer, torch.ones(num_heads, dtype=torch.float64))[head] = scale
    return factors
