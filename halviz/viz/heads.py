"""VHR's per-head vision sensitivity: the VHD map (layers × heads) and T-VHD over steps."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import base_layout, clamp_step, index_ranges, message_figure, step_token, subtitle
from halviz.viz.method_data import HeadMaps, vhr_maps


def vhd_figure(trace: Trace, maps: HeadMaps | None = None) -> go.Figure:
    """Heatmap of VHD per (layer, head); reinforced heads outlined, filtered outliers crossed."""
    maps = maps or vhr_maps(trace)
    if maps is None:
        return message_figure("No VHR head map in this trace.")
    layers, heads = maps.vhd.shape
    fig = go.Figure(go.Heatmap(
        z=maps.vhd, x=list(range(heads)), y=list(range(layers)), colorscale="Viridis",
        colorbar=dict(title="VHD", thickness=12),
        hovertemplate="layer %{y}, head %{x}<br>VHD %{z:.3g}<extra></extra>",
    ))
    legend = []
    if maps.selected is not None and maps.selected.any():
        ys, xs = np.nonzero(maps.selected)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name="reinforced (above the layer median)", hoverinfo="skip",
            showlegend=False,
            marker=dict(symbol="square-open", size=max(6, min(18, 360 // max(heads, layers))),
                        color="#f8fafc", line=dict(width=2)),
        ))
        legend.append(f"white □: {int(maps.selected.sum())} reinforced heads (above their layer's median)")
    if maps.outliers is not None and maps.outliers.any():
        ys, xs = np.nonzero(maps.outliers)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="filtered outlier (VHD set to 0)",
                                 hoverinfo="skip", showlegend=False, marker=dict(symbol="x-thin-open", size=10,
                                                               color="#ef4444", line=dict(width=2))))
        legend.append(f"red ×: {int(maps.outliers.sum())} outliers filtered out (VHD set to 0)")
    fig.update_yaxes(title="layer", autorange="reversed", dtick=max(1, layers // 16))
    fig.update_xaxes(title="head", dtick=max(1, heads // 16))
    acting = None if maps.layers is None else f"VHR acts on layers {index_ranges(maps.layers)} (others are 0)"
    title = "VHR: vision sensitivity (VHD) of each head" + subtitle(
        ["VHD = ‖head output with the image − with text only‖ at the first token", f"{layers} layers × {heads} heads",
         acting, *(legend or ["no head selection recorded"])], 80)
    return base_layout(fig, title, int(min(max(220 + 14 * layers, 360), 800)))


def tvhd_figure(trace: Trace, step: int | None = None, maps: HeadMaps | None = None) -> go.Figure | None:
    """T-VHD per generated token, when VHR recorded it."""
    maps = maps or vhr_maps(trace)
    if maps is None or maps.t_vhd is None:
        return None
    values = maps.t_vhd.astype(np.float64)
    steps = np.arange(len(values))
    fig = go.Figure(go.Scatter(
        x=steps, y=values, mode="lines+markers", line=dict(color="#0f766e", width=2),
        customdata=[step_token(trace, int(s)) for s in steps],
        hovertemplate="step %{x} → %{customdata}<br>T-VHD %{y:.3g}<extra></extra>",
    ))
    if step is not None:
        fig.add_vline(x=clamp_step(trace, step), line=dict(color="#2563eb", width=2))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="T-VHD")
    return base_layout(fig, "VHR: T-VHD per generated token (sum over layers of the top-8 head VHDs)", 260)

