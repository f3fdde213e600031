"""Mask image patches: what the caption becomes when the text cannot read part of the image.

An intervention for teaching. The patches of a box on the image grid (rows r0..r1, columns c0..c1,
inclusive; −1 = the last) get −inf as keys for every query after the image (prompt text and
generated tokens) in the chosen layers; the image tokens' own attention is left alone, so the
visual features are unchanged and only their reading by the text is removed. The default box is
the whole grid: the caption of a model that cannot see. ``patches`` ("row:col,row:col", 0-indexed)
names single patches instead: when it is not empty, exactly those patches are hidden and the box
knobs are not used (the debugger's picker toggles patches one by one). Only rows laid out like the
main prompt are edited (a text-only stream has no image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halviz.methods.base import Knob, Method
from halviz.methods.index_pairs import pairs_parser, parse_pairs
from halviz.methods.layer_range import chosen_layers, layer_knobs

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

PATCHES_EXAMPLE = "0:3,2:5"


def box_positions(image_positions: torch.Tensor, rows: int, cols: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """Sequence positions of the grid patches in rows r0..r1 and columns c0..c1 (−1 = last), row-major grid."""
    r1 = rows - 1 if r1 < 0 else min(r1, rows - 1)
    c1 = cols - 1 if c1 < 0 else min(c1, cols - 1)
    grid = image_positions.reshape(rows, cols)
    return grid[min(r0, rows - 1): r1 + 1, min(c0, cols - 1): c1 + 1].flatten()


def patch_positions(image_positions: torch.Tensor, rows: int, cols: int, patches: str) -> torch.Tensor:
    """Sequence positions of the listed patches ("row:col,…", row-major grid), in the list's order."""
    pairs = parse_pairs(patches, "patches", PATCHES_EXAMPLE)
    outside = [f"{r}:{c}" for r, c in pairs if r >= rows or c >= cols]
    if outside:
        raise ValueError(f"patches {', '.join(outside[:5])} lie outside the {rows}×{cols} grid "
                         f"(rows 0–{rows - 1}, columns 0–{cols - 1})")
    grid = image_positions.reshape(rows, cols)
    return torch.stack([grid[r, c] for r, c in pairs]) if pairs else grid.new_zeros(0)


class MaskPatches(Method):
    name = "mask_patches"
    title = "Mask patches"
    summary = "Intervention: the text may not attend to the patches of a box on the image grid."
    reference = "intervention"
    knobs = (Knob("first_row", "First grid row", 0, 0, 1023, 1),
             Knob("last_row", "Last grid row (−1 = last)", -1, -1, 1023, 1),
             Knob("first_col", "First grid column", 0, 0, 1023, 1),
             Knob("last_col", "Last grid column (−1 = last)", -1, -1, 1023, 1),
             Knob("patches", "Patches (row:col list; empty = the box)", "",
                  help=f"single patches to hide, e.g. {PATCHES_EXAMPLE}; when given, the box is not used",
                  parse=pairs_parser("patches", PATCHES_EXAMPLE)),
             *layer_knobs("hides the patches"))
    hook_points = frozenset({"scores"})
    edits_prefill = True

    def setup(self, column: Column) -> None:
        p, layout = self.params, column.layout
        self.layers = chosen_layers(column.num_layers, int(p["first_layer"]), int(p["last_layer"]))
        grid = layout.primary  # the box is drawn on the primary grid (multi-grid layouts: the first view)
        grid_positions = column.image_index[torch.tensor(grid.index, device=column.device)]
        if p["patches"]:
            self.positions = patch_positions(grid_positions, grid.rows, grid.cols, p["patches"])
        else:
            self.positions = box_positions(grid_positions, grid.rows, grid.cols, int(p["first_row"]),
                                           int(p["last_row"]), int(p["first_col"]), int(p["last_col"]))
        self.after_image = int(column.image_index.max()) + 1

    def wants_scores(self, p: Pass, layer: int) -> bool:
        return layer in self.layers and bool(p.main_layout)

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q, kv = scores.shape[-2:]
        queries = torch.arange(kv - q, kv, device=scores.device)
        reading = (queries >= self.after_image)[:, None]  # (q, 1): text after the image
        hidden = torch.zeros(q, kv, dtype=torch.bool, device=scores.device)
        hidden[:, self.positions] = True
        hidden &= reading
        scores = scores.clone()
        rows = p.main_layout
        scores[rows] = scores[rows].masked_fill(hidden, float("-inf"))
        return scores

    def trace_arrays(self):
        import numpy as np

        if not hasattr(self, "positions"):
            return {}
        return {"positions": self.positions.cpu().numpy().astype(np.int32)}
