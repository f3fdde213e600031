"""Patch → token: which generated tokens attended to one image patch, and how much, from the trace alone.

The trace records, at every step, the attention row of the query that predicts the step's token over
the image tokens: head-mean for every layer (``image_attn``, (steps, layers, N)) and per head for the
layers in ``meta["head_layers"]`` (``head_image_attn``, (steps, slots, heads, N)). These figures read
one patch's column of those arrays. The values are attention weights: the share (0–1) of the query's
softmax over the whole sequence that went to this patch.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import base_layout, clamp_step, message_figure, readable, step_token, subtitle

MAX_TICKS = 40  # token labels on the x axis; longer captions label every n-th step


def patch_index(trace: Trace, row: int, col: int) -> int:
    """Index among the image tokens of patch (row, col) of the primary grid (row-major for a
    single-grid layout, ``meta["grid_index"]`` for a layout of several grids); ValueError off the grid."""
    rows, cols = (int(v) for v in trace.meta["grid"])
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"patch (row {row}, col {col}) is outside the {rows}×{cols} grid")
    return int(trace.grid_index()[int(row) * cols + int(col)])


def patch_layer_attention(trace: Trace, row: int, col: int) -> np.ndarray:
    """(layers, steps): head-mean attention of step i's query on patch (row, col) in each layer."""
    return trace.arrays["image_attn"][:, :, patch_index(trace, row, col)].astype(np.float64).T


def patch_head_attention(trace: Trace, row: int, col: int, layer: int) -> np.ndarray | None:
    """(heads, steps) for one layer, or None when single heads were not recorded for it."""
    recorded = [int(l) for l in trace.meta.get("head_layers") or []]
    if "head_image_attn" not in trace.arrays or int(layer) not in recorded:
        return None
    slot = recorded.index(int(layer))
    return trace.arrays["head_image_attn"][:, slot, :, patch_index(trace, row, col)].astype(np.float64).T


def _token_axis(trace: Trace, fig: go.Figure, steps: int) -> None:
    every = max(1, -(-steps // MAX_TICKS))
    ticks = list(range(0, steps, every))
    fig.update_xaxes(title="step i → the token it predicted", tickmode="array", tickvals=ticks,
                     ticktext=[f"{i} {readable(trace.texts[i])}" for i in ticks], tickangle=-60)


def _matrix_figure(trace: Trace, z: np.ndarray, y_name: str, row: int, col: int, title: str,
                   details: list[str], step: int | None) -> go.Figure:
    steps = z.shape[1]
    tokens = np.array([[step_token(trace, i) for i in range(steps)]] * z.shape[0])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(steps)), y=list(range(z.shape[0])), customdata=tokens, colorscale="Viridis", zmin=0.0,
        zmax=float(z.max()) if z.size and z.max() > 0 else 1.0,
        colorbar=dict(title=dict(text="attention weight (0–1)", side="right"), thickness=12),
        hovertemplate=f"step %{{x}} → %{{customdata}}<br>{y_name} %{{y}}<br>attention on patch r{row} c{col}: "
                      "%{z:.4f}<extra></extra>",
    ))
    if step is not None:
        fig.add_vline(x=clamp_step(trace, step), line=dict(color="#f43f5e", width=2, dash="dot"))
    _token_axis(trace, fig, steps)
    fig.update_yaxes(title=y_name, autorange="reversed", dtick=max(1, z.shape[0] // 16))
    if z.size:
        y, x = np.unravel_index(int(np.argmax(z)), z.shape)
        details = [*details, f"most: {z[y, x]:.3g} at step {x} → {step_token(trace, int(x))}, {y_name} {y}"]
    return base_layout(fig, title + subtitle(details, 88), int(min(max(260 + 18 * z.shape[0], 320), 820)),
                       margin=dict(b=90))


def patch_token_figure(trace: Trace, row: int, col: int, step: int | None = None) -> go.Figure:
    """Heatmap, layers × steps: how much the query of each step attended to patch (row, col), head-mean."""
    if not trace.has_attention or not trace.num_steps:
        return message_figure("This trace has no recorded attention.")
    try:
        z = patch_layer_attention(trace, row, col)
    except ValueError as exc:
        return message_figure(str(exc))
    rows, cols = trace.meta["grid"]
    heads = int(trace.meta.get("num_heads", 0))
    return _matrix_figure(
        trace, z, "layer", row, col, f"Patch r{row} c{col} → tokens: attention it got at every step, per layer",
        [f"mean of {heads} heads", f"grid {rows}×{cols}, uniform over the image would be {1 / (rows * cols):.3g}",
         "step i = the query that predicts token i"], step)


def patch_token_heads_figure(trace: Trace, row: int, col: int, layer: int, step: int | None = None) -> go.Figure:
    """Heatmap, heads × steps for one layer (recorded layers only)."""
    recorded = [int(l) for l in trace.meta.get("head_layers") or []]
    try:
        z = patch_head_attention(trace, row, col, layer) if trace.num_steps else None
    except ValueError as exc:
        return message_figure(str(exc))
    if z is None:
        listed = ", ".join(map(str, recorded)) or "none"
        return message_figure(f"Single heads were not recorded for layer {layer} (recorded: {listed}).")
    return _matrix_figure(
        trace, z, "head", row, col, f"Patch r{row} c{col} → tokens, layer {layer}: every head",
        [f"layer {layer}, single heads", "step i = the query that predicts token i"], step)
