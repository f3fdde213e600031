"""Figures drawn over the uploaded picture, one cell per image token, placed with ``patch_boxes``: the
primary grid by default, or another view of a multi-grid trace (see :mod:`halviz.viz.grid_views`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from halviz.trace import Trace
from halviz.viz.common import (
    ATTENTION_SCALE,
    Choice,
    base_layout,
    clamp_step,
    finite_max,
    head_text,
    image_data_uri,
    layer_text,
    message_figure,
    step_token,
    subtitle,
)
from halviz.viz.grid_views import (CROPPED_NOTE, PRIMARY, GridView, PatchGrid, attention_shares, has_several_grids,
                                   is_mosaic, patch_grid, pooled, pooling_factor, shares_text, view_panels)

PRUNED_SCALE = [[0.0, "rgba(15,23,42,0.82)"], [0.999, "rgba(15,23,42,0.05)"], [1.0, "rgba(0,0,0,0)"]]


def image_token_values(trace: Trace, step: int, layer: Choice = "mean", head: Choice = "mean") -> np.ndarray:
    """Attention of the query predicting token ``step`` on every image token (every grid's, and any in
    none), shape (N,).

    Head "mean" uses the recorded head-mean rows (any layer, or their mean over layers); a single
    head is only recorded for ``meta["head_layers"]``.
    """
    step = clamp_step(trace, step)
    if head == "mean":
        rows = trace.arrays["image_attn"][step].astype(np.float32)  # (L, N)
        return rows.mean(0) if layer == "mean" else rows[int(layer)]
    head_layers = [int(l) for l in trace.meta.get("head_layers") or []]
    if layer == "mean" or int(layer) not in head_layers:
        raise ValueError(f"per-head attention was recorded for layers {head_layers} only")
    slot = head_layers.index(int(layer))
    return trace.arrays["head_image_attn"][step, slot, int(head)].astype(np.float32)


def patch_values(trace: Trace, step: int, layer: Choice = "mean", head: Choice = "mean") -> np.ndarray:
    """Attention on each patch of the primary grid, shape (rows · cols,) row-major (for a single-grid
    layout: every image token, in order); see :func:`image_token_values`."""
    return image_token_values(trace, step, layer, head)[trace.grid_index()]


@dataclass(frozen=True)
class Cells:
    """One grid's cells in a figure: a value and hover data per patch (row-major, rows · cols)."""

    grid: PatchGrid
    values: np.ndarray
    custom: np.ndarray  # (rows · cols, k)
    hover: str
    outlined: bool = False  # a tile of a mosaic: its edge drawn, so each tile shows where it was cut


def _patch_figure(panels: list[tuple[str, list[Cells]]], image: Image.Image | None, colourscale, zmax: float,
                  title: str, colourbar_title: str, height: int) -> go.Figure:
    """Each panel (a subplot when there are several) is the upload with its grids' cells drawn at
    their boxes; one colour scale (0 to ``zmax``) and one colour bar for every cell."""
    several = len(panels) > 1
    fig = (make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels],
                         column_widths=[1.6] + [1.0] * (len(panels) - 1), horizontal_spacing=0.03)
           if several else go.Figure())
    picture = image_data_uri(image) if image is not None else None
    first = panels[0][1][0].grid
    width, height_px = first.width, first.height
    shapes = []  # added at once: plotly's add_shape copies every earlier shape (quadratic in many tiles)
    for number, (_, cells_list) in enumerate(panels, 1):
        where = dict(row=1, col=number) if several else {}
        if picture is not None:
            uri, picture_width, picture_height = picture
            dx, dy = width / picture_width, height_px / picture_height  # picture pixels → original pixels
            fig.add_trace(go.Image(source=uri, x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip"), **where)
        for cells in cells_list:
            grid = cells.grid
            z = cells.values.reshape(grid.rows, grid.cols)[np.ix_(grid.row_index, grid.col_index)]
            custom = cells.custom.reshape(grid.rows, grid.cols, -1)[np.ix_(grid.row_index, grid.col_index)]
            scale = {} if cells is panels[0][1][0] else dict(showscale=False)  # one colour bar for all
            fig.add_trace(go.Heatmap(
                z=z, x=grid.x_edges, y=grid.y_edges, customdata=custom, colorscale=colourscale,
                zmin=0.0, zmax=zmax if zmax > 0 else 1.0, hovertemplate=cells.hover + "<extra></extra>",
                colorbar=dict(title=dict(text=colourbar_title, side="right"), thickness=12, len=0.8),
                xgap=0, ygap=0, **scale,
            ), **where)
            if cells.outlined or grid.cropped:  # a tile's edge, or what the model saw
                axis = "" if number == 1 else str(number)
                shapes.append(dict(type="rect", x0=grid.x_edges[0], y0=grid.y_edges[0], x1=grid.x_edges[-1],
                                   y1=grid.y_edges[-1], xref=f"x{axis}", yref=f"y{axis}",
                                   line=dict(color="#1e3a8a", width=1 if cells.outlined else 1.5,
                                             dash="solid" if cells.outlined else "dot")))
        fig.update_xaxes(range=[0, width], visible=False, constrain="domain", **where)
        fig.update_yaxes(range=[height_px, 0], visible=False, scaleanchor="x" if number == 1 else f"x{number}",
                         constrain="domain", **where)
    if shapes:
        fig.update_layout(shapes=shapes)
    if image is None:
        fig.add_annotation(text="the picture is not part of the trace: upload it to see it underneath",
                           x=0.5, y=-0.02, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=11, color="#6b7280"))
    margin = dict(b=22, t=42 + 15 * (title.count("<br>") + 1)) if several else dict(b=22)  # room for panel names
    # The patch maps fill the debugger's wide column; their first line names the view and stays whole.
    return base_layout(fig, title, height, panel="column", fit_main=False, plot_bgcolor="#f1f5f9", margin=margin)


def _cell_ids(grid: PatchGrid) -> np.ndarray:
    rows, cols = np.divmod(np.arange(grid.rows * grid.cols), grid.cols)
    return np.stack([rows, cols], axis=-1).astype(np.float64)


def _view_cells(trace: Trace, panels: list[list[GridView]], values: np.ndarray, extra: np.ndarray,
                hover_body: str) -> list[tuple[str, list[Cells]]]:
    """Every grid of ``panels`` as cells: ``values`` and ``extra`` hold one entry per image token. The
    hover names the grid where the trace has several."""
    several, mosaic = has_several_grids(trace), is_mosaic(panels)
    factor = pooling_factor([g for grids in panels for g in grids])
    out = []
    for grids in panels:
        cells = []
        for g in grids:
            if factor > 1:  # too many cells for one answer: blocks of patches, their mean (see pooling_factor)
                blocks, means, ids = pooled(g.geometry, values[g.index], factor)
                hover = (f"{g.label}: patches rows %{{customdata[0]}}–%{{customdata[2]}}, cols %{{customdata[1]}}–"
                         f"%{{customdata[3]}}<br>their mean %{{z:.4f}}")
                cells.append(Cells(blocks, means, ids, hover, mosaic and g.is_tile))
                continue
            custom = np.concatenate([_cell_ids(g.geometry), extra[g.index][:, None]], axis=-1)
            prefix = f"{g.label}: patch row" if several else "patch row"
            cells.append(Cells(g.geometry, values[g.index], custom, prefix + hover_body, mosaic and g.is_tile))
        name = "tiles in place" if mosaic and grids[0].is_tile else f"{grids[0].label} {grids[0].shape_text}"
        out.append((name, cells))
    return out


def _view_text(trace: Trace, panels: list[list[GridView]]) -> tuple[str, list[str]]:
    """What the view shows (for the title) and its grids' notes."""
    grids = [g for p in panels for g in p]
    if not has_several_grids(trace):
        return f"{grids[0].shape_text} image patches", [grids[0].geometry.note]
    mosaic = is_mosaic(panels)
    notes = []
    for g in grids:
        note = g.geometry.note
        if note and not (mosaic and g.is_tile and note == CROPPED_NOTE):  # a tile covers a part: outlined instead
            notes.append(f"{g.label}: {note}" if len(grids) > 1 else note)
    if not mosaic:
        return f"{grids[0].label} view's {grids[0].shape_text} patches", notes
    tiles = [g for p in panels if p[0].is_tile for g in p]
    named = ("; ".join(f"{g.label}: {g.shape_text} patches" for g in tiles) if len(tiles) <= 3
             else f"{len(tiles)} tile grids")
    beside = "".join(f", {p[0].label} {p[0].shape_text}" for p in panels[1:]) + (" beside" if len(panels) > 1 else "")
    factor = pooling_factor(grids)
    if factor > 1:
        notes.append(f"{len(grids)} grids are too many cells for one figure: each cell drawn is the mean of "
                     f"{factor}×{factor} patches")
    return f"tiles in place ({named}){beside}", ["solid boxes: each tile grid's place in the upload", *notes]


def attention_overlay(trace: Trace, step: int, layer: Choice = "mean", head: Choice = "mean",
                      image: Image.Image | None = None, height: int = 520, view: str | None = PRIMARY) -> go.Figure:
    """Heatmap of where the query predicting token ``step`` attended among the image tokens of ``view``
    (see :func:`~halviz.viz.grid_views.view_panels`)."""
    if not trace.has_attention:
        return message_figure("This trace has no recorded attention.")
    step = clamp_step(trace, step)
    try:
        every = image_token_values(trace, step, layer, head)
        panels = view_panels(trace, view)
    except ValueError as exc:
        return message_figure(str(exc))
    shown = np.concatenate([every[g.index] for grids in panels for g in grids])
    image_share = float(np.nansum(every))
    zmax = finite_max(shown)
    of_image = every / image_share if image_share > 0 else np.zeros_like(every)
    several = has_several_grids(trace)
    hover = (" %{customdata[0]}, col %{customdata[1]}<br>attention %{z:.4f}<br>%{customdata[2]:.1%} of the "
             + ("attention on all image tokens" if several else "attention on the image"))
    cells = _view_cells(trace, panels, every, of_image, hover)
    what, notes = _view_text(trace, panels)
    scale = (f"colour from 0 to this map's max, {zmax:.3g}" if not is_mosaic(panels)
             else f"one colour scale for every view shown: 0 to their max, {zmax:.3g}")
    title = (f"Step {step} → {step_token(trace, step)}: attention on the {what}"
             + subtitle([layer_text(trace, layer), head_text(trace, head),
                         f"image tokens got {image_share:.0%} of the attention",
                         shares_text(attention_shares(trace, every)) if several else "", scale, *notes]))
    return _patch_figure(cells, image, ATTENTION_SCALE, zmax, title, "attention", height)


def kept_mask_figure(trace: Trace, kept: np.ndarray, title: str, image: Image.Image | None = None,
                     details: tuple[str, ...] = (), height: int = 460, view: str | None = PRIMARY) -> go.Figure:
    """Image tokens a method kept (clear) or removed (dark); ``kept`` is (N,) in [0, 1] (a share for
    methods that decide per head), over every image token or the primary grid's alone."""
    try:
        panels = view_panels(trace, view)
    except ValueError as exc:
        return message_figure(str(exc))
    grid = patch_grid(trace)
    kept = np.clip(np.asarray(kept, dtype=np.float64).reshape(-1), 0.0, 1.0)
    primary_size, primary_index = grid.rows * grid.cols, trace.grid_index()
    primary_view = not is_mosaic(panels) and np.array_equal(panels[0][0].index, primary_index)
    if kept.size == trace.image_tokens:
        every = kept
    elif kept.size == primary_size and primary_view:  # a mask of the primary grid alone, put on its tokens
        every = np.zeros(trace.image_tokens)
        every[primary_index] = kept
    elif kept.size == primary_size:
        return message_figure(f"this mask covers only the primary {grid.rows}×{grid.cols} grid: "
                              "choose the primary view to see it")
    else:
        return message_figure(f"mask has {kept.size} entries for a {grid.rows}×{grid.cols} grid")
    hover = " %{customdata[0]}, col %{customdata[1]}<br>kept: %{customdata[2]:.0%}"
    cells = _view_cells(trace, panels, every, every, hover)
    what, notes = _view_text(trace, panels)
    shape = f"grid {grid.rows}×{grid.cols}" if not has_several_grids(trace) else f"view: {what}"
    full_title = title + subtitle([*details, shape, "dark = removed from attention, clear = kept", *notes])
    return _patch_figure(cells, image, PRUNED_SCALE, 1.0, full_title, "kept", height)
