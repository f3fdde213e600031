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
    index_ranges,
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


TOY_MODELS = ("toy", "toy-llava")
VISUAL_SINK_COLOUR, TEXT_SINK_COLOUR = "#ea580c", "#c084fc"  # orange; light purple (BOS is purple)


def sink_kinds(trace: Trace) -> np.ndarray | None:
    """(L, prompt) int8 from the recorded ``sink_tokens``: 0 not a sink, 1 a text sink (BOS or another
    text token), 2 a visual sink (an image token); None for a trace recorded without them."""
    sinks = trace.arrays.get("sink_tokens")
    if sinks is None:
        return None
    kinds = sinks.astype(bool).astype(np.int8)
    image = [p for p in trace.meta.get("image_positions") or [] if p < kinds.shape[1]]
    kinds[:, image] *= 2
    return kinds


def sink_summary(trace: Trace) -> str:
    """One subtitle part: in which layers image tokens are sinks (or that none is, and why on the toy)."""
    kinds = sink_kinds(trace)
    if kinds is None:
        return "this trace did not record which tokens are sinks"
    visual = [l for l in range(kinds.shape[0]) if (kinds[l] == 2).any()]
    if visual:
        return f"visual sinks (image tokens with the massive activation) in layers {index_ranges(visual)}"
    if str(trace.meta.get("model", "")).lower() in TOY_MODELS:
        return "no visual sink in any layer: the toy has none by design (its only sink is BOS)"
    return "no image token is a sink in any layer (no visual sink)"


def segment_share_figure(trace: Trace, step: int, layer: Choice = "mean") -> go.Figure:
    """Stacked bars: per layer, the share of the step's attention on BOS, system, image, prompt, generated."""
    if not trace.has_attention:
        return message_figure("This trace has no recorded attention.")
    step = clamp_step(trace, step)
    shares = trace.arrays["segment_share"][step].astype(np.float64)  # (L, S)
    segments = list(trace.meta.get("segments") or SEGMENT_NAMES)
    names = {segment: SEGMENT_NAMES.get(segment, segment) for segment in segments}
    colours = {segment: SEGMENT_COLOURS.get(segment, "#64748b") for segment in segments}
    layers = num_layers(trace)
    visual = _visual_sink_share(trace, step)  # (L,) the image share that went to visual sinks, or None
    if visual is not None and "image" in segments and visual.any():
        at = segments.index("image")
        shares = np.insert(shares, at, visual, axis=1)
        shares[:, at + 1] = np.clip(shares[:, at + 1] - visual, 0, None)
        segments.insert(at, "visual sinks")
        names["visual sinks"], colours["visual sinks"] = "image: visual sinks", VISUAL_SINK_COLOUR
        names["image"] = "image: other tokens"
    labels = ["mean of layers"] + _layer_rows(layers, layer)
    values = np.vstack([shares.mean(0, keepdims=True), shares])
    fig = go.Figure()
    for s, segment in enumerate(segments):
        fig.add_trace(go.Bar(
            y=labels, x=values[:, s], orientation="h", name=names[segment],
            marker=dict(color=colours[segment], line=dict(width=0)),
            hovertemplate="%{y}: %{x:.1%} on " + names[segment] + "<extra></extra>",
        ))
    fig.update_layout(barmode="stack", bargap=0.15,
                      legend=dict(orientation="h", y=-0.08, yanchor="top", x=0, font=dict(size=11), traceorder="normal"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    title = f"Step {step} → {step_token(trace, step)}: where each layer's attention went" + subtitle(
        ["mean over heads", "a sink: a segment taking far more than its share", "typically the BOS token",
         sink_summary(trace)])
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
    kinds = sink_kinds(trace)
    if kinds is not None:  # outline the cells whose token is a sink in that layer, by kind
        for kind, name, colour in ((2, "visual sink (an image token)", VISUAL_SINK_COLOUR),
                                   (1, "text sink (BOS or another text token)", TEXT_SINK_COLOUR)):
            cells = [(l, r) for l in range(layers) for r in range(k)
                     if positions[l, r] < kinds.shape[1] and kinds[l, positions[l, r]] == kind]
            for i, (l, r) in enumerate(cells):  # categorical axes: cell (r, l) spans index ± 0.5
                fig.add_shape(type="rect", x0=r - 0.46, x1=r + 0.46, y0=l - 0.44, y1=l + 0.44,
                              line=dict(color=colour, width=3), name=name, legendgroup=name,
                              showlegend=i == 0)
        fig.update_layout(legend=dict(orientation="h", y=-0.16, yanchor="top", x=0, font=dict(size=11)))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(title="rank")
    title = f"Step {step}: the {k} tokens taking most attention in each layer" + subtitle(
        ["mean over heads", "gN: generated token N, @N: prompt position N", "hover for the full name",
         "outlined: a sink token by its activations (VAR's rule)" if kinds is not None else
         "one token at rank 1 in every layer, with a large share: a sink", sink_summary(trace)])
    base_layout(fig, title, _rows_height(layers, per_row=30) + (90 if kinds is not None else 40),
                margin=dict(b=60 if kinds is not None else 10))
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


def _visual_sink_share(trace: Trace, step: int) -> np.ndarray | None:
    """(L,) the head-mean attention this step put on image tokens that are sinks in each layer."""
    kinds = sink_kinds(trace)
    image = trace.meta.get("image_positions") or []
    attention = trace.arrays.get("image_attn")
    if kinds is None or attention is None or attention.shape[-1] != len(image):
        return None
    visual = kinds[:, [p for p in image]] == 2  # (L, image tokens)
    return (attention[step].astype(np.float64) * visual).sum(-1)
