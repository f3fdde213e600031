"""Clickable pictures for choosing an intervention: the attention heatmap as an image (click a patch)
and a head map (click a cell). Gradio's ``gr.Plot`` reports no clicks, but ``gr.Image.select`` gives
the pixel clicked, in the image's own pixels; these functions draw the pictures and map a pixel back
to a patch or a head with the same geometry, so what is drawn is what a click picks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from halviz.trace import Trace
from halviz.viz.patches import PatchGrid, patch_grid

# Both pictures are drawn larger than the page shows them: Gradio's click position is exact for a picture
# shown at or below its own size (object-fit: contain), and off by the margin for one scaled up.
PICKER_SIDE = 800  # the longer side of the patch picker, in pixels
PICKER_MIN_SIDE = 200  # the shorter side is stretched to at least this (a 40000×1 upload is not 800×1 px)
HEAD_MAP_SIDE = 640  # the head map's cells fill about this many pixels
HEAD_FONT = 22
# The heatmap's colours (halviz.viz.common.ATTENTION_SCALE) as RGBA stops: transparent at zero.
_HEAT_STOPS = np.array([[0.0, 255, 237, 160, 0.0], [0.3, 254, 178, 76, 0.25], [0.65, 240, 59, 32, 0.5],
                        [1.0, 128, 0, 38, 0.8]])
BOX_COLOUR = (37, 99, 235)  # the box to mask
INSPECT_COLOUR = (16, 185, 129)  # the patch shown in the patch → token view
HEAD_SELECTED = (37, 99, 235)
# The head map's ramp, low to high: warm, so the blue outline of a chosen head stands out on any cell
# (a blue ramp hid it on the darkest cells).
HEAD_LOW, HEAD_HIGH = (255, 247, 237), (154, 52, 18)
NOT_RECORDED = (226, 232, 240)


def heat_rgba(value: float) -> tuple[float, float, float, float]:
    """Colour (0–255) and opacity (0–1) of a normalised attention value in [0, 1]."""
    v = float(np.clip(value, 0.0, 1.0)) if np.isfinite(value) else 0.0
    return tuple(float(np.interp(v, _HEAT_STOPS[:, 0], _HEAT_STOPS[:, i])) for i in range(1, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class PatchPicker:
    """The patch picker's geometry: the picture's original pixels scaled by ``scale`` onto the canvas
    (across; down by ``y_scale`` where a very flat or tall picture's short side is stretched)."""

    grid: PatchGrid
    scale: float
    width: int
    height: int
    y_scale: float | None = None  # None: the same as ``scale``

    @property
    def scale_down(self) -> float:
        return self.scale if self.y_scale is None else self.y_scale

    def patch_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The (row, col) of the grid patch under canvas pixel (x, y); None off the patches."""
        ox, oy = (float(x) + 0.5) / self.scale, (float(y) + 0.5) / self.scale_down  # the pixel's centre
        i = int(np.searchsorted(self.grid.x_edges, ox, side="right")) - 1
        j = int(np.searchsorted(self.grid.y_edges, oy, side="right")) - 1
        if not (0 <= i < len(self.grid.col_index) and 0 <= j < len(self.grid.row_index)):
            return None
        return int(self.grid.row_index[j]), int(self.grid.col_index[i])

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float] | None:
        """Canvas box (x0, y0, x1, y1) of grid patch (row, col); None for a patch drawn nowhere."""
        i = np.flatnonzero(self.grid.col_index == col)
        j = np.flatnonzero(self.grid.row_index == row)
        if not len(i) or not len(j):
            return None
        i, j = int(i[0]), int(j[0])
        s, t = self.scale, self.scale_down
        return (self.grid.x_edges[i] * s, self.grid.y_edges[j] * t, self.grid.x_edges[i + 1] * s,
                self.grid.y_edges[j + 1] * t)


def patch_picker(trace: Trace, side: int = PICKER_SIDE, min_side: int = PICKER_MIN_SIDE) -> PatchPicker:
    """The longer side drawn at ``side`` pixels, aspect kept, unless the shorter one would fall below
    ``min_side``: then that side alone is stretched to ``min_side`` (cells stay clickable)."""
    grid = patch_grid(trace)
    width, height = max(grid.width, 1), max(grid.height, 1)
    scale = side / max(width, height)
    least = min(min_side, side)
    x_scale = max(scale, least / width)
    y_scale = max(scale, least / height)
    return PatchPicker(grid, x_scale, max(1, round(width * x_scale)), max(1, round(height * y_scale)),
                       None if y_scale == x_scale else y_scale)


def _outline(draw: ImageDraw.ImageDraw, picker: PatchPicker, patches: Iterable[tuple[int, int]], width: int) -> None:
    """The outer edges of a set of patches (a side is drawn where the neighbour is not in the set), each
    ``width`` pixels inside its cell: one outline around a box, one around each island of a scattered set."""
    chosen = {(int(r), int(c)) for r, c in patches}
    for r, c in chosen:
        cell = picker.cell_box(r, c)
        if cell is None:
            continue
        x0, y0, x1, y1 = cell
        if (r - 1, c) not in chosen:
            draw.rectangle([x0, y0, x1, y0 + width - 1], fill=BOX_COLOUR)
        if (r + 1, c) not in chosen:
            draw.rectangle([x0, y1 - width + 1, x1, y1], fill=BOX_COLOUR)
        if (r, c - 1) not in chosen:
            draw.rectangle([x0, y0, x0 + width - 1, y1], fill=BOX_COLOUR)
        if (r, c + 1) not in chosen:
            draw.rectangle([x1 - width + 1, y0, x1, y1], fill=BOX_COLOUR)


def patch_picker_image(trace: Trace, values: np.ndarray | None, image: Image.Image | None = None,
                       patches: Iterable[tuple[int, int]] = (), inspected: tuple[int, int] | None = None,
                       side: int = PICKER_SIDE) -> Image.Image:
    """The picture with one cell per image token, coloured by ``values`` (N,) scaled to their max (as
    the attention heatmap), the patches to mask outlined in blue ((row, col) pairs) and the inspected
    patch in green. Click it where :meth:`PatchPicker.patch_at` says."""
    picker = patch_picker(trace, side)
    grid = picker.grid
    if image is not None:
        canvas = image.convert("RGB").resize((picker.width, picker.height), Image.Resampling.BILINEAR)
    else:
        canvas = Image.new("RGB", (picker.width, picker.height), (241, 245, 249))
    canvas = canvas.convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    flat = None if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
    peak = float(np.nanmax(flat)) if flat is not None and flat.size and np.isfinite(flat).any() else 0.0
    for row in grid.row_index:
        for col in grid.col_index:
            x0, y0, x1, y1 = picker.cell_box(int(row), int(col))  # type: ignore[misc]
            if flat is not None and flat.size == grid.rows * grid.cols and peak > 0:
                r, g, b, a = heat_rgba(flat[int(row) * grid.cols + int(col)] / peak)
                draw.rectangle([x0, y0, x1, y1], fill=(int(r), int(g), int(b), int(round(a * 255))))
            draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255, 70))
    canvas = Image.alpha_composite(canvas, layer)
    draw = ImageDraw.Draw(canvas)
    _outline(draw, picker, patches, max(3, side // 130))
    if inspected is not None:
        cell = picker.cell_box(*inspected)
        if cell is not None:
            draw.rectangle(cell, outline=INSPECT_COLOUR, width=max(2, side // 200))
    return canvas.convert("RGB")


# ---- heads --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadPicker:
    """The head map's geometry: one ``cell``-pixel square per (layer, head), layer down, head across."""

    layers: int
    heads: int
    cell: int
    left: int = 3 * HEAD_FONT  # room for the layer numbers
    top: int = int(1.5 * HEAD_FONT)  # room for the head numbers

    @property
    def size(self) -> tuple[int, int]:
        return self.left + self.heads * self.cell, self.top + self.layers * self.cell

    def cell_box(self, layer: int, head: int) -> tuple[int, int, int, int]:
        x, y = self.left + head * self.cell, self.top + layer * self.cell
        return x, y, x + self.cell - 1, y + self.cell - 1

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(layer, head) of the cell under pixel (x, y); None outside the cells."""
        dx, dy = float(x) - self.left, float(y) - self.top
        if dx < 0 or dy < 0:
            return None
        head, layer = int(dx // self.cell), int(dy // self.cell)
        if not (0 <= layer < self.layers and 0 <= head < self.heads):
            return None
        return layer, head


def head_picker(layers: int, heads: int) -> HeadPicker:
    cell = max(6, HEAD_MAP_SIDE // max(layers, heads, 1))
    return HeadPicker(max(layers, 0), max(heads, 0), cell)


def head_scores(trace: Trace, step: int) -> tuple[np.ndarray, str]:
    """What the head map colours, (layers, heads) with NaN where nothing was recorded, and its name:
    VHR's VHD when the trace has it, else each recorded head's attention share on the image at ``step``."""
    from halviz.viz.common import clamp_step
    from halviz.viz.method_data import vhr_maps

    layers, heads = int(trace.meta.get("num_layers", 0)), int(trace.meta.get("num_heads", 0))
    scores = np.full((layers, heads), np.nan)
    maps = vhr_maps(trace)
    if maps is not None and maps.vhd.shape == scores.shape:
        return maps.vhd.astype(np.float64), "VHD (VHR's vision sensitivity)"
    recorded = [int(l) for l in trace.meta.get("head_layers") or []]
    if "head_image_attn" in trace.arrays and recorded and trace.num_steps:
        rows = trace.arrays["head_image_attn"][clamp_step(trace, step)].astype(np.float64)  # (slots, H, N)
        for slot, layer in enumerate(recorded):
            if layer < layers and rows.shape[1] == heads:
                scores[layer] = rows[slot].sum(-1)
        return scores, f"share of each head's attention on the image at step {clamp_step(trace, step)}"
    return scores, "no per-head data recorded (every head can still be chosen)"


def head_picker_image(scores: np.ndarray, selected: Iterable[tuple[int, int]] = ()) -> Image.Image:
    """A cell per head coloured by ``scores`` (dark = high, scaled to the map's max; grey = not recorded),
    the chosen heads ((layer, head) pairs) outlined in blue."""
    layers, heads = scores.shape
    picker = head_picker(layers, heads)
    canvas = Image.new("RGB", (max(picker.size[0], 1), max(picker.size[1], 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    finite = scores[np.isfinite(scores)]
    peak = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    font = ImageFont.load_default(size=HEAD_FONT)
    every = max(1, -(-2 * HEAD_FONT // picker.cell))  # label every n-th row/column so numbers do not overlap
    for layer in range(layers):
        if layer % every == 0:
            draw.text((2, picker.cell_box(layer, 0)[1] + max(0, picker.cell // 2 - HEAD_FONT // 2)), f"L{layer}",
                      fill=(71, 85, 105), font=font)
        for head in range(heads):
            if layer == 0 and head % every == 0:
                draw.text((picker.cell_box(0, head)[0] + 2, 2), str(head), fill=(71, 85, 105), font=font)
            value = scores[layer, head]
            if np.isfinite(value):
                t = float(np.clip(value / peak, 0.0, 1.0))
                colour = tuple(int(round(a + (b - a) * t)) for a, b in zip(HEAD_LOW, HEAD_HIGH))
            else:
                colour = NOT_RECORDED
            draw.rectangle(picker.cell_box(layer, head), fill=colour, outline=(255, 255, 255))
    for layer, head in selected:
        if 0 <= layer < layers and 0 <= head < heads:
            draw.rectangle(picker.cell_box(layer, head), outline=HEAD_SELECTED, width=max(2, picker.cell // 10))
    return canvas
