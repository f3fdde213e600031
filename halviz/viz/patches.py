"""Figures drawn over the uploaded picture, one cell per image token, placed with ``patch_boxes``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image

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

PRUNED_SCALE = [[0.0, "rgba(15,23,42,0.82)"], [0.999, "rgba(15,23,42,0.05)"], [1.0, "rgba(0,0,0,0)"]]


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


def patch_grid(trace: Trace) -> PatchGrid:
    rows, cols = (int(v) for v in trace.meta["grid"])
    width, height = (int(v) for v in trace.meta.get("image_size") or (cols, rows))
    boxes = np.asarray(trace.meta.get("patch_boxes") or [], dtype=np.float64)
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
        note = "dotted box: the part the model saw (the processor cropped the rest)"
    x_edges = np.append(x0[col_index], x1[col_index[-1]]) if len(col_index) else np.array([0.0, width])
    y_edges = np.append(y0[row_index], y1[row_index[-1]]) if len(row_index) else np.array([0.0, height])
    return PatchGrid(rows, cols, x_edges, y_edges, col_index, row_index, width, height, note, cropped)


def patch_values(trace: Trace, step: int, layer: Choice = "mean", head: Choice = "mean") -> np.ndarray:
    """Attention of the query predicting token ``step`` on each patch of the primary grid, shape
    (rows · cols,) row-major (for a single-grid layout: every image token, in order).

    Head "mean" uses the recorded head-mean rows (any layer, or their mean over layers); a single
    head is only recorded for ``meta["head_layers"]``.
    """
    step = clamp_step(trace, step)
    index = trace.grid_index()
    if head == "mean":
        rows = trace.arrays["image_attn"][step].astype(np.float32)  # (L, N)
        return (rows.mean(0) if layer == "mean" else rows[int(layer)])[index]
    head_layers = [int(l) for l in trace.meta.get("head_layers") or []]
    if layer == "mean" or int(layer) not in head_layers:
        raise ValueError(f"per-head attention was recorded for layers {head_layers} only")
    slot = head_layers.index(int(layer))
    return trace.arrays["head_image_attn"][step, slot, int(head)].astype(np.float32)[index]


def _patch_figure(trace: Trace, grid: PatchGrid, values: np.ndarray, image: Image.Image | None,
                  colourscale, zmax: float, hover: str, customdata: np.ndarray, title: str,
                  colourbar_title: str, height: int) -> go.Figure:
    z = values.reshape(grid.rows, grid.cols)[np.ix_(grid.row_index, grid.col_index)]
    custom = customdata.reshape(grid.rows, grid.cols, -1)[np.ix_(grid.row_index, grid.col_index)]
    fig = go.Figure()
    if image is not None:
        uri, picture_width, picture_height = image_data_uri(image)
        dx, dy = grid.width / picture_width, grid.height / picture_height  # picture pixels → original pixels
        fig.add_trace(go.Image(source=uri, x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(
        z=z, x=grid.x_edges, y=grid.y_edges, customdata=custom, colorscale=colourscale,
        zmin=0.0, zmax=zmax if zmax > 0 else 1.0, hovertemplate=hover + "<extra></extra>",
        colorbar=dict(title=dict(text=colourbar_title, side="right"), thickness=12, len=0.8),
        xgap=0, ygap=0,
    ))
    if grid.cropped:  # outline what the model saw
        fig.add_shape(type="rect", x0=grid.x_edges[0], y0=grid.y_edges[0], x1=grid.x_edges[-1],
                      y1=grid.y_edges[-1], line=dict(color="#1e3a8a", width=1.5, dash="dot"))
    fig.update_xaxes(range=[0, grid.width], visible=False, constrain="domain")
    fig.update_yaxes(range=[grid.height, 0], visible=False, scaleanchor="x", constrain="domain")
    if image is None:
        fig.add_annotation(text="the picture is not part of the trace: upload it to see it underneath",
                           x=0.5, y=-0.02, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=11, color="#6b7280"))
    return base_layout(fig, title, height, plot_bgcolor="#f1f5f9", margin=dict(b=22))


def _cell_ids(grid: PatchGrid) -> np.ndarray:
    rows, cols = np.divmod(np.arange(grid.rows * grid.cols), grid.cols)
    return np.stack([rows, cols], axis=-1).astype(np.float64)


def attention_overlay(trace: Trace, step: int, layer: Choice = "mean", head: Choice = "mean",
                      image: Image.Image | None = None, height: int = 520) -> go.Figure:
    """Heatmap of where the query predicting token ``step`` attended among the image tokens."""
    if not trace.has_attention:
        return message_figure("This trace has no recorded attention.")
    step = clamp_step(trace, step)
    try:
        values = patch_values(trace, step, layer, head)
    except ValueError as exc:
        return message_figure(str(exc))
    grid = patch_grid(trace)
    image_share = float(np.nansum(values))
    zmax = finite_max(values)
    of_image = values / image_share if image_share > 0 else np.zeros_like(values)
    custom = np.concatenate([_cell_ids(grid), of_image[:, None]], axis=-1)
    hover = ("patch row %{customdata[0]}, col %{customdata[1]}<br>attention %{z:.4f}"
             "<br>%{customdata[2]:.1%} of the attention on the image")
    title = (f"Step {step} → {step_token(trace, step)}: attention on the {grid.rows}×{grid.cols} image patches"
             + subtitle([layer_text(trace, layer), head_text(trace, head),
                         f"image tokens got {image_share:.0%} of the attention",
                         f"colour from 0 to this map's max, {zmax:.3g}", grid.note]))
    return _patch_figure(trace, grid, values, image, ATTENTION_SCALE, zmax, hover, custom, title,
                         "attention", height)


def kept_mask_figure(trace: Trace, kept: np.ndarray, title: str, image: Image.Image | None = None,
                     details: tuple[str, ...] = (), height: int = 460) -> go.Figure:
    """Image tokens a method kept (clear) or removed (dark); ``kept`` is (N,) in [0, 1] (a share for
    methods that decide per head)."""
    grid = patch_grid(trace)
    kept = np.clip(np.asarray(kept, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if kept.size == trace.image_tokens != grid.rows * grid.cols:  # every image token given: the primary grid's
        kept = kept[trace.grid_index()]
    if kept.size != grid.rows * grid.cols:
        return message_figure(f"mask has {kept.size} entries for a {grid.rows}×{grid.cols} grid")
    custom = np.concatenate([_cell_ids(grid), kept[:, None]], axis=-1)
    hover = "patch row %{customdata[0]}, col %{customdata[1]}<br>kept: %{customdata[2]:.0%}"
    full_title = title + subtitle([*details, f"grid {grid.rows}×{grid.cols}",
                                   "dark = removed from attention, clear = kept", grid.note])
    return _patch_figure(trace, grid, kept, image, PRUNED_SCALE, 1.0, hover, custom, full_title, "kept", height)
