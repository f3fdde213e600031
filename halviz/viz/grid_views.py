"""The views of the upload a trace's image tokens form (one grid, or tiles plus a global view), where
each grid's patches lie in the upload, and which views a figure can draw.

A view choice is ``PRIMARY`` (the primary grid, ``meta["grid"]``: what single-grid traces offer),
one grid's name from ``meta["grids"]``, or ``TILES_IN_PLACE``: every grid whose name starts with
"tile" drawn at its own boxes as one mosaic, the other views (global, thumbnail, base) beside it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from halviz.trace import Trace
from halviz.viz.common import escape

PRIMARY = "primary"
TILES_IN_PLACE = "tiles in place"
NO_GRID = "no grid"  # the image tokens that belong to no grid (row newlines)
CROPPED_NOTE = "dotted box: the part the model saw (the processor cropped the rest)"
# The most cells one patch figure draws: a single grid (at most 128×128, the trace format's limit) always
# fits, cell for cell; many tile grids in place are drawn in blocks of patches instead (a crafted trace of
# 64 grids of 128×128 would otherwise make every redraw an answer of many megabytes).
MAX_DRAWN_CELLS = 128 * 128


@dataclass(frozen=True)
class PatchGrid:
    """Where the image tokens' patches lie in the uploaded picture (pixels)."""

    rows: int
    cols: int
    x_edges: np.ndarray  # (kept cols + 1,)
    y_edges: np.ndarray  # (kept rows + 1,)
    col_index: np.ndarray  # grid columns that cover some of the picture (padding-only ones dropped)
    row_index: np.ndarray
    width: int
    height: int
    note: str = ""
    cropped: bool = False  # the patches cover only part of the picture


def grid_geometry(rows: int, cols: int, patch_boxes, width: int, height: int) -> PatchGrid:
    """A grid's cell edges from its ``patch_boxes`` (rows · cols lists of x0, y0, x1, y1)."""
    boxes = np.asarray(patch_boxes or [], dtype=np.float64)
    note = ""
    if boxes.shape == (rows * cols, 4):
        boxes = boxes.reshape(rows, cols, 4)
        regular = (np.allclose(boxes[..., 0], boxes[:1, :, 0]) and np.allclose(boxes[..., 2], boxes[:1, :, 2])
                   and np.allclose(boxes[..., 1], boxes[:, :1, 1]) and np.allclose(boxes[..., 3], boxes[:, :1, 3]))
    else:
        regular = False
    if regular:
        x0, x1 = boxes[0, :, 0], boxes[0, :, 2]
        y0, y1 = boxes[:, 0, 1], boxes[:, 0, 3]
    else:  # never expected from the engine; drawn honestly as an even grid instead of guessing
        x0, x1 = np.arange(cols) * width / cols, np.arange(1, cols + 1) * width / cols
        y0, y1 = np.arange(rows) * height / rows, np.arange(1, rows + 1) * height / rows
        note = "patch boxes missing or irregular: drawn as an even grid"
    col_index, row_index = np.flatnonzero(x1 > x0), np.flatnonzero(y1 > y0)
    dropped = rows * cols - len(col_index) * len(row_index)
    if dropped and not note:
        note = f"{dropped} patches cover only padding and are not drawn"
    covered = (x0[col_index].min(), y0[row_index].min(), x1[col_index].max(), y1[row_index].max()) \
        if len(col_index) and len(row_index) else (0, 0, width, height)
    cropped = covered[0] > 0.5 or covered[1] > 0.5 or covered[2] < width - 0.5 or covered[3] < height - 0.5
    if cropped and not note:
        note = CROPPED_NOTE
    x_edges = np.append(x0[col_index], x1[col_index[-1]]) if len(col_index) else np.array([0.0, width])
    y_edges = np.append(y0[row_index], y1[row_index[-1]]) if len(row_index) else np.array([0.0, height])
    return PatchGrid(rows, cols, x_edges, y_edges, col_index, row_index, width, height, note, cropped)


def image_size(trace: Trace) -> tuple[int, int]:
    rows, cols = (int(v) for v in trace.meta["grid"])
    width, height = (int(v) for v in trace.meta.get("image_size") or (cols, rows))
    return width, height


def patch_grid(trace: Trace) -> PatchGrid:
    """The primary grid's geometry."""
    rows, cols = (int(v) for v in trace.meta["grid"])
    return grid_geometry(rows, cols, trace.meta.get("patch_boxes"), *image_size(trace))


@dataclass(frozen=True)
class GridView:
    """One grid of a trace: its name, its tokens among the image tokens (row-major) and where it lies."""

    name: str
    index: np.ndarray
    geometry: PatchGrid

    @property
    def is_tile(self) -> bool:
        return self.name.strip().lower().startswith("tile")

    @property
    def shape_text(self) -> str:
        return f"{self.geometry.rows}×{self.geometry.cols}"

    @property
    def label(self) -> str:
        """The name as plotly may show it (escaped, and no ``%{`` a hover template would read)."""
        return escape(self.name).replace("%{", "% {") or "unnamed grid"


def has_several_grids(trace: Trace) -> bool:
    """True where the image tokens are not simply the primary grid (tiles, views, tokens in no grid)."""
    return "grid_index" in trace.meta


def trace_grids(trace: Trace) -> list[GridView]:
    """Every grid of the trace, the primary first (its geometry from ``meta["grid"]``/``patch_boxes``)."""
    primary_index = trace.grid_index()
    listed = [g for g in trace.meta.get("grids") or [] if isinstance(g, dict)]
    primary_name = next((str(g.get("name", "")) for g in listed if list(g.get("index", [])) == primary_index.tolist()),
                        "image" if not has_several_grids(trace) else "primary")
    views = [GridView(primary_name, primary_index, patch_grid(trace))]
    width, height = image_size(trace)
    for g in listed:
        index = np.asarray(g.get("index", []), dtype=np.int64)
        if np.array_equal(index, primary_index):
            continue
        rows, cols = (int(v) for v in g["grid"])
        views.append(GridView(str(g.get("name", "")), index, grid_geometry(rows, cols, g.get("patch_boxes"),
                                                                           width, height)))
    return views


def view_choices(trace: Trace) -> list[tuple[str, str]]:
    """(label, value) for a picker: the primary, every other grid by name, and the tiles in place."""
    grids = trace_grids(trace)
    primary = grids[0]
    choices = [(f"primary grid ({primary.name}, {primary.shape_text} patches)" if len(grids) > 1 else "primary grid",
                PRIMARY)]
    seen = {PRIMARY, TILES_IN_PLACE}
    for grid in grids[1:]:
        if grid.name not in seen:  # a repeated name (never written by the engine) is offered once
            seen.add(grid.name)
            choices.append((f"{grid.name} ({grid.shape_text} patches)", grid.name))
    if len(grids) > 1 and any(g.is_tile for g in grids):
        choices.append(("tiles in place, other views beside", TILES_IN_PLACE))
    return choices


def view_panels(trace: Trace, view: str | None) -> list[list[GridView]]:
    """The grids ``view`` draws, one list per subplot: the tiles together, then each other view alone.
    ValueError (a sentence for the figure) for a view this trace does not have."""
    grids = trace_grids(trace)
    view = PRIMARY if view in (None, "") else str(view)
    if view == PRIMARY:
        return [[grids[0]]]
    if view == TILES_IN_PLACE:
        tiles = [g for g in grids if g.is_tile]
        if len(grids) < 2 or not tiles:
            raise ValueError("this trace has no tile grids to draw in place")
        return [tiles] + [[g] for g in grids if not g.is_tile]
    named = next((g for g in grids[1:] if g.name == view), None)
    if named is None:
        offered = ", ".join(escape(value) for _, value in view_choices(trace))
        raise ValueError(f"this trace has no view {escape(view[:40])!r}; its views: {offered}")
    return [[named]]


def is_mosaic(panels: list[list[GridView]]) -> bool:
    """Whether ``panels`` (from :func:`view_panels`) are the tiles in place rather than one grid."""
    return len(panels) > 1 or len(panels[0]) > 1


def attention_shares(trace: Trace, every: np.ndarray) -> list[tuple[str, float, bool]]:
    """How much of the step's attention fell on each grid and on image tokens in none (named
    "no grid", listed only if there are any), from ``every`` (one value per image token): (label,
    share, whether the grid is a tile)."""
    grids = trace_grids(trace)
    covered = np.zeros(every.shape[0], dtype=bool)
    shares = []
    for grid in grids:
        covered[grid.index] = True
        shares.append((grid.label, float(np.nansum(every[grid.index])), grid.is_tile))
    if not covered.all():
        shares.append((NO_GRID, float(np.nansum(every[~covered])), False))
    return shares


def shares_text(shares: list[tuple[str, float, bool]], most: int = 6) -> str:
    """"global 3.0% · tiles 2×2 20.0% · no grid 1.0%"; past ``most`` entries the tiles are summed."""
    if len(shares) > most:
        tiles = [s for s in shares if s[2]]
        rest = [s for s in shares if not s[2] and s[0] != NO_GRID]
        together = [(f"{len(tiles)} tiles together", sum(s[1] for s in tiles), True)] if tiles else []
        shares = rest + together + [s for s in shares if s[0] == NO_GRID]
    return "share of the attention: " + " · ".join(f"{name} {share:.1%}" for name, share, _ in shares)


def pooling_factor(grids: list[GridView], most: int | None = None) -> int:
    """1 where ``grids`` together have at most ``most`` (MAX_DRAWN_CELLS) drawn cells, else the side of the
    square blocks of patches each drawn cell stands for, so that the figure draws at most about ``most``."""
    most = MAX_DRAWN_CELLS if most is None else most
    total = sum(len(g.geometry.row_index) * len(g.geometry.col_index) for g in grids)
    return 1 if total <= most else math.ceil(math.sqrt(total / most))


def pooled(geometry: PatchGrid, values: np.ndarray, factor: int) -> tuple[PatchGrid, np.ndarray, np.ndarray]:
    """The drawn cells of ``geometry`` in blocks of ``factor`` × ``factor`` patches: a grid of the blocks
    (at the same places in the upload), each block's mean of ``values`` (one per patch, row-major) and
    (first row, first col, last row, last col) of the patches it stands for, one row per block."""
    z = np.asarray(values, dtype=np.float64).reshape(geometry.rows, geometry.cols)
    z = z[np.ix_(geometry.row_index, geometry.col_index)]
    rows, cols = z.shape
    out_rows, out_cols = -(-rows // factor), -(-cols // factor)
    padded = np.full((out_rows * factor, out_cols * factor), np.nan)
    padded[:rows, :cols] = z
    with warnings.catch_warnings():  # a block of NaN (values never written) stays NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(padded.reshape(out_rows, factor, out_cols, factor), axis=(1, 3))
    starts_r, starts_c = np.arange(out_rows) * factor, np.arange(out_cols) * factor
    first_r, first_c = geometry.row_index[starts_r], geometry.col_index[starts_c]
    last_r = geometry.row_index[np.minimum(starts_r + factor, rows) - 1]
    last_c = geometry.col_index[np.minimum(starts_c + factor, cols) - 1]
    blocks = PatchGrid(out_rows, out_cols, np.append(geometry.x_edges[:-1][::factor], geometry.x_edges[-1]),
                       np.append(geometry.y_edges[:-1][::factor], geometry.y_edges[-1]), np.arange(out_cols),
                       np.arange(out_rows), geometry.width, geometry.height, geometry.note, geometry.cropped)
    ids = np.stack(np.broadcast_arrays(first_r[:, None], first_c[None, :], last_r[:, None], last_c[None, :]), -1)
    return blocks, means.reshape(-1), ids.reshape(-1, 4).astype(np.float64)
