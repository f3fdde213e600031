"""VAR's own decisions (halviz.methods.var): which prompt tokens are sinks in each layer, which heads
were image-centric at a step, and how much attention each of them moved from the sinks to the image."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import (base_layout, clamp_step, index_ranges, key_label, message_figure,
                               position_segments, step_token, subtitle)
from halviz.viz.method_data import VarRecord, var_record

# A sink token's kind: the segment it lies in, read as VAR reads it (system and prompt text are both "text").
KIND_CODES = {"bos": 1, "image": 2}  # anything else in the prompt: 3 (text)
KIND_NAMES = {1: "BOS", 2: "image", 3: "text"}
KIND_COLOURS = {0: "#f8fafc", 1: "#7c3aed", 2: "#0ea5e9", 3: "#f59e0b"}
# zmin −0.5, zmax 3.5: code k sits at (k + 0.5) / 4, in the middle of its own quarter of the scale
KIND_SCALE = [[q / 4, KIND_COLOURS[k]] for k in range(4) for q in (k, k + 1)]
NOT_SEARCHED = "#cbd5e1"
MAX_BARS = 64  # moved-mass bars drawn at once (the largest; a 7B model has 1024 heads)


def prompt_kinds(trace: Trace, length: int) -> np.ndarray:
    """(length,) 1 = BOS, 2 = image, 3 = text for each prompt position."""
    return np.array([KIND_CODES.get(s, 3) for s in position_segments(trace, range(length))], dtype=int)


def _layer_labels(record: VarRecord, image: np.ndarray) -> list[str]:
    labels = []
    for layer in range(record.sinks.shape[0]):
        if layer not in record.layers:
            labels.append(f"layer {layer} (not edited)")
        else:
            visual = bool(record.sinks[layer][image].any())
            labels.append(f"layer {layer}" + (" · visual sink" if visual else ""))
    return labels


def var_sinks_figure(trace: Trace, record: VarRecord | None = None) -> go.Figure | None:
    """Layers × prompt positions: the sink tokens VAR found in each layer's input, coloured by kind
    (BOS, image, text); layers outside its range are grey."""
    record = record or var_record(trace)
    if record is None:
        return None
    layers, length = record.sinks.shape
    kinds = prompt_kinds(trace, length)
    searched = np.isin(np.arange(layers), record.layers)
    z = np.where(record.sinks, kinds[None, :], 0).astype(float)
    z[~searched] = np.nan
    names = [key_label(trace, p) for p in range(length)]
    status = np.where(record.sinks, "sink", "not a sink").astype(object)
    status[~searched] = "layer not searched"
    custom = np.stack([np.array([names] * layers, dtype=object), status], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(length)), y=list(range(layers)), zmin=-0.5, zmax=3.5, colorscale=KIND_SCALE, showscale=False,
        customdata=custom, xgap=0, ygap=1,
        hovertemplate="layer %{y}, %{customdata[0]} (position %{x}): %{customdata[1]}<extra></extra>",
    ))
    image = kinds == 2
    # Where the segments lie, named above the plot: BOS, the image tokens, the text.
    for code, name in KIND_NAMES.items():
        where = np.flatnonzero(kinds == code)
        if not len(where):
            continue
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{name} sink",
                                 marker=dict(symbol="square", size=10, color=KIND_COLOURS[code])))
    edges = np.flatnonzero(np.diff(kinds)) + 0.5
    for edge in edges:
        fig.add_vline(x=float(edge), line=dict(color="#475569", width=1, dash="dot"))
    starts = np.concatenate([[0], np.flatnonzero(np.diff(kinds)) + 1])
    ends = np.concatenate([starts[1:], [length]])
    for i, (start, end) in enumerate(zip(starts, ends)):  # alternate heights: narrow segments sit side by side
        fig.add_annotation(x=(start + end - 1) / 2, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           yshift=13 * (i % 2),
                           text=f"{KIND_NAMES[int(kinds[start])]} {start}–{end - 1}" if end - start > 1 else
                           KIND_NAMES[int(kinds[start])], font=dict(size=10, color="#475569"))
    fig.update_yaxes(title="layer", autorange="reversed", tickmode="array", tickvals=list(range(layers)),
                     ticktext=_layer_labels(record, image), tickfont=dict(size=9))
    fig.update_xaxes(title="prompt position", showgrid=False)
    counts = {name: int((record.sinks & (kinds[None, :] == code)).sum()) for code, name in KIND_NAMES.items()}
    visual = [l for l in record.layers if record.sinks[l][image].any()]
    found = (f"found {counts['BOS']} BOS, {counts['image']} image and {counts['text']} text sink entries "
             f"(token × layer)" if record.sinks.any() else "no sink token found: VAR left this run unchanged")
    title = "VAR: sink tokens in each layer's input" + subtitle([
        found, f"searched layers {index_ranges(record.layers)}" if record.layers else "no layer searched",
        f"visual sinks (image tokens that are sinks) in layers {index_ranges(visual)}" if visual else
        "no visual sink: no head can be image-centric", "grey: layers VAR leaves alone"])
    return base_layout(fig, title, int(min(max(200 + 14 * layers, 320), 760)), panel="full",
                       plot_bgcolor=NOT_SEARCHED, margin=dict(t=90), legend=dict(orientation="h", y=-0.2, x=0))


def var_heads_figure(trace: Trace, step: int, record: VarRecord | None = None) -> go.Figure | None:
    """Layers × heads at ``step``: the image-centric heads VAR redistributed (outlined)."""
    record = record or var_record(trace)
    if record is None:
        return None
    if not record.heads.shape[0]:
        return message_figure("VAR recorded no step in this trace.")
    step = clamp_step(trace, min(step, record.heads.shape[0] - 1))
    chosen = record.heads[step]
    layers, heads = chosen.shape
    z = chosen.astype(float)
    z[~np.isin(np.arange(layers), record.layers)] = np.nan
    image = prompt_kinds(trace, record.sinks.shape[1]) == 2
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(heads)), y=list(range(layers)), zmin=0, zmax=1, showscale=False, xgap=1, ygap=1,
        colorscale=[[0, "#f1f5f9"], [1, "#0ea5e9"]], customdata=record.moved[step],
        hovertemplate="layer %{y}, head %{x}: image-centric = %{z}<br>moved %{customdata:.3f}<extra></extra>",
    ))
    if chosen.any():
        ys, xs = np.nonzero(chosen)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", hoverinfo="skip", showlegend=False,
                                 marker=dict(symbol="square-open", size=max(6, min(18, 360 // max(heads, layers))),
                                             color="#0f172a", line=dict(width=2))))
    fig.update_yaxes(title="layer", autorange="reversed", tickmode="array", tickvals=list(range(layers)),
                     ticktext=_layer_labels(record, image), tickfont=dict(size=9))
    fig.update_xaxes(title="head", dtick=max(1, heads // 16))
    count = int(chosen.sum())
    title = f"VAR at step {step} → {step_token(trace, step)}: image-centric heads" + subtitle([
        f"outlined: {count} of {layers * heads} heads" + (f" in layers {index_ranges(np.nonzero(chosen)[0])}"
                                                          if count else ""),
        "image-centric: image attention ≥ the floor and ≥ ρ of it on non-sink image tokens",
        "only layers with a visual sink can have one", "grey: layers VAR leaves alone"])
    return base_layout(fig, title, int(min(max(220 + 14 * layers, 340), 800)), plot_bgcolor=NOT_SEARCHED)


def var_moved_figure(trace: Trace, step: int, record: VarRecord | None = None) -> go.Figure | None:
    """Bars: the attention mass each image-centric head moved from the sinks to the image at ``step``
    (a share of that query's attention, 0–1; the largest ``MAX_BARS`` heads)."""
    record = record or var_record(trace)
    if record is None:
        return None
    if not record.heads.shape[0]:
        return message_figure("VAR recorded no step in this trace.")
    step = clamp_step(trace, min(step, record.heads.shape[0] - 1))
    layers, heads = np.nonzero(record.heads[step])
    if not len(layers):
        return message_figure(f"Step {step}: VAR chose no head, so it moved no attention.", 200)
    mass = record.moved[step][layers, heads]
    shown = np.sort(np.argsort(-mass, kind="stable")[:MAX_BARS])  # the largest, in layer/head order
    labels = [f"L{int(l)}·H{int(h)}" for l, h in zip(layers[shown], heads[shown])]
    fig = go.Figure(go.Bar(
        x=labels, y=mass[shown], marker_color="#0ea5e9",
        hovertemplate="%{x}: moved %{y:.3f} of the query's attention<extra></extra>",
    ))
    fig.update_xaxes(title="layer · head", type="category", tickangle=-60 if len(shown) > 12 else 0,
                     tickfont=dict(size=9))
    fig.update_yaxes(title="attention moved (0–1)", rangemode="tozero")
    p = f"p = {record.p:g} × " if record.p is not None else ""
    title = f"VAR at step {step}: attention moved from the sinks to the image, per head" + subtitle([
        f"moved = {p}the sinks' weight in that head's row", f"{len(layers)} heads, {mass.sum():.3f} in all",
        f"the largest {MAX_BARS} shown" if len(layers) > MAX_BARS else ""])
    return base_layout(fig, title, 320, margin=dict(b=70))
