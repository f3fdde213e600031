"""Attention sinks: how a step's attention splits over prompt segments, and the single tokens that take most."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import (
    SEGMENT_COLOURS,
    SEGMENT_NAMES,
    Choice,
    base_layout,
    clamp_step,
    key_label,
    message_figure,
    num_layers,
    step_token,
    subtitle,
    visible_length,
)


def _layer_rows(layers: int, layer: Choice) -> list[str]:
    """Row labels, deepest layer at the bottom; the picked layer marked with ▶."""
    return [("▶ " if layer != "mean" and int(layer) == l else "") + f"layer {l}" for l in range(layers)]


def segment_share_figure(trace: Trace, step: int, layer: Choice = "mean") -> go.Figure:
    """Stacked bars: per layer, the share of the step's attention on BOS, system, image, prompt, generated."""
    if not trace.has_attention:
        return message_figure("This trace has no recorded attention.")
    step = clamp_step(trace, step)
    shares = trace.arrays["segment_share"][step].astype(np.float64)  # (L, S)
    segments = list(trace.meta.get("segments") or SEGMENT_NAMES)
    layers = num_layers(trace)
    labels = ["mean of layers"] + _layer_rows(layers, layer)
    values = np.vstack([shares.mean(0, keepdims=True), shares])
    fig = go.Figure()
    for s, segment in enumerate(segments):
        fig.add_trace(go.Bar(
            y=labels, x=values[:, s], orientation="h", name=SEGMENT_NAMES.get(segment, segment),
            marker=dict(color=SEGMENT_COLOURS.get(segment, "#64748b"), line=dict(width=0)),
            hovertemplate="%{y}: %{x:.1%} on " + SEGMENT_NAMES.get(segment, segment) + "<extra></extra>",
        ))
    fig.update_layout(barmode="stack", bargap=0.15,
                      legend=dict(orientation="h", y=-0.08, yanchor="top", x=0, font=dict(size=11), traceorder="normal"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    title = f"Step {step} → {step_token(trace, step)}: where each layer's attention went" + subtitle(
        ["mean over heads", "a sink: a segment taking far more than its share", "typically the BOS token"])
    return base_layout(fig, title, _rows_height(layers + 1) + 40, margin=dict(b=70))


def top_keys_figure(trace: Trace, step: int, layer: Choice = "mean") -> go.Figure:
    """Per layer, the K single tokens with the most (head-mean) attention at this step, named."""
    if not trace.has_attention or "top_key_pos" not in trace.arrays:
        return message_figure("This trace has no recorded attention.")
    step = clamp_step(trace, step)
    positions = trace.arrays["top_key_pos"][step].astype(int)  # (L, K)
    attention = trace.arrays["top_key_attn"][step].astype(np.float64)
    layers, k = positions.shape
    names = [[key_label(trace, int(p)) for p in row] for row in positions]
    # Cell labels stay inside their cell: at most CELL_CHARS characters (the full name is on hover), and
    # one line when the rows are too low for two (set below, once the title's height is known).
    # Plotly's heatmap reads customdata per cell as a scalar (a cell's list index such as customdata[1]
    # draws "-"), so the short label is the text and the full name with its position the customdata.
    fig = go.Figure(go.Heatmap(
        z=attention, x=[f"#{i + 1}" for i in range(k)], y=_layer_rows(layers, layer),
        text=[[cell_label(n) for n in row] for row in names], texttemplate="%{text}", textfont=dict(size=10),
        colorscale="Blues", zmin=0, zmax=1,
        customdata=[[f"{n} (position {p})" for n, p in zip(row, pos)] for row, pos in zip(names, positions.tolist())],
        colorbar=dict(title="attention", thickness=12, tickformat=".0%"),
        hovertemplate="%{y}, rank %{x}: %{customdata}<br>attention %{z:.3f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(title="rank")
    title = f"Step {step}: the {k} tokens taking most attention in each layer" + subtitle(
        ["mean over heads", "gN: generated token N, @N: prompt position N", "hover for the full name",
         "one token at rank 1 in every layer, with a large share: a sink"])
    base_layout(fig, title, _rows_height(layers, per_row=30) + 40, margin=dict(b=10))
    row_px = (fig.layout.height - fig.layout.margin.t - fig.layout.margin.b - 30) / max(layers, 1)  # less the axis
    if row_px >= TWO_LINES_PX:
        fig.update_traces(texttemplate="%{text}<br>%{z:.0%}")
    return fig


TWO_LINES_PX = 26  # two lines of 10 px text
CELL_CHARS = 10  # a 1024 px page gives each of the 5 rank cells about 70 px: ten 10 px characters


def cell_label(name: str, limit: int = CELL_CHARS) -> str:
    """A :func:`key_label` (a plotly label, entities escaped) in at most ``limit`` visible characters: "image r3
    c4" reads "img r3 c4", "␣cat (gen 5)" "␣cat g5"; a token still too long is cut with an ellipsis, its
    position kept."""
    if name.startswith("image r"):
        name = "img r" + name[len("image r"):]
    generated = re.fullmatch(r"(.*) \(gen (\d+)\)", name)
    prompt = re.fullmatch(r"(.*) (@\d+)", name)
    token, suffix = ((generated[1], f" g{generated[2]}") if generated else (prompt[1], f" {prompt[2]}") if prompt
                     else (name, ""))
    if visible_length(token) + len(suffix) <= limit:
        return token + suffix
    out, seen, i = "", 0, 0
    while i < len(token) and seen < max(limit - len(suffix) - 1, 1):
        entity = re.match(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);", token[i:])
        piece = entity.group(0) if entity else token[i]
        out, seen, i = out + piece, seen + 1, i + len(piece)
    return out + "…" + suffix


def _rows_height(rows: int, per_row: int = 18) -> int:
    return int(min(max(140 + per_row * rows, 260), 900))
