"""VHR's per-head vision sensitivity: the VHD map (layers × heads) and T-VHD over steps."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import (base_layout, clamp_step, finite_max, index_ranges, message_figure, step_token,
                               subtitle)
from halviz.viz.method_data import HeadMaps, method_params, vhr_maps


SKIPPED_GREY = "#cbd5e1"
NEAR_ZERO = 0.01  # a VHR layer whose largest VHD is under 1% of the map's largest: its heads barely react


def layer_rule(layers: list[int], num_layers: int) -> str:
    """VHR's layer set in words: {1} ∪ the last k layers (its rule), or the bare list when it is not of that form."""
    tail = 0
    while tail < num_layers and num_layers - 1 - tail in layers:
        tail += 1
    rest = sorted(set(layers) - set(range(num_layers - tail, num_layers)))
    if tail and rest in ([], [1]):
        return ("{1} ∪ " if rest else "") + f"the last {tail} of {num_layers}"
    return "as recorded"


def vhd_figure(trace: Trace, maps: HeadMaps | None = None) -> go.Figure:
    """Heatmap of VHD per (layer, head). Only VHR's layers are coloured; the layers its rule skips are grey
    (measured, never reinforced; their VHD shows on hover). Outlined: the heads VHR chose in its layers and
    multiplied by α; crossed: outliers whose VHD was zeroed before the choice."""
    maps = maps or vhr_maps(trace)
    if maps is None:
        return message_figure("No VHR head map in this trace.")
    layers, heads = maps.vhd.shape
    vhd = maps.vhd
    acting = np.zeros(layers, bool)
    if maps.layers is None:  # a trace without the list: every layer counts as VHR's
        acting[:] = True
    else:
        acting[[int(l) for l in maps.layers if 0 <= int(l) < layers]] = True
    params = method_params(trace, "vhr")
    alpha = params.get("alpha")
    chosen = np.zeros_like(vhd, bool) if maps.selected is None else maps.selected & acting[:, None]
    outliers = np.zeros_like(vhd, bool) if maps.outliers is None else maps.outliers & acting[:, None]
    scaled = f"×{alpha:g}" if isinstance(alpha, (int, float)) else "×α"
    status = np.where(chosen, f"chosen: output {scaled}", "not chosen")
    status = np.where(outliers, "outlier: VHD zeroed for the choice, not chosen", status)
    status = np.where(acting[:, None], status, "layer outside VHR's rule: measured, never reinforced")
    shown = np.where(acting[:, None], vhd, np.nan)
    top = finite_max(shown)
    fig = go.Figure(go.Heatmap(
        z=shown, x=list(range(heads)), y=list(range(layers)), colorscale="Viridis", zmin=0,
        zmax=top if top > 0 else 1.0, colorbar=dict(title="VHD", thickness=12), text=status, hoverongaps=False,
        hovertemplate="layer %{y}, head %{x}<br>VHD %{z:.3g}<br>%{text}<extra></extra>", name="VHR's layers",
    ))
    skipped = np.flatnonzero(~acting)
    if len(skipped):
        fig.add_trace(go.Heatmap(
            z=np.where(acting[:, None], np.nan, 1.0) * np.ones((1, heads)), x=list(range(heads)),
            y=list(range(layers)), customdata=vhd, text=status, colorscale=[[0, SKIPPED_GREY], [1, SKIPPED_GREY]],
            showscale=False, hoverongaps=False, name="skipped layers",
            hovertemplate="layer %{y}, head %{x}<br>VHD %{customdata:.3g}<br>%{text}<extra></extra>",
        ))
    legend = []
    if chosen.any():
        ys, xs = np.nonzero(chosen)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name="reinforced", hoverinfo="skip", showlegend=False,
            marker=dict(symbol="square-open", size=max(6, min(18, 360 // max(heads, layers))),
                        color="#f8fafc", line=dict(width=2)),
        ))
        what = (f"{int(chosen.sum())} heads VHR chose, output {scaled}" if alpha != 1
                else f"{int(chosen.sum())} heads VHR chose, left unchanged (α = 1)")
        legend.append(f"white □: {what} (above their layer's median)")
    elif maps.selected is None:
        legend.append("no head selection recorded")
    if outliers.any():
        ys, xs = np.nonzero(outliers)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="filtered outlier (VHD set to 0)",
                                 hoverinfo="skip", showlegend=False, marker=dict(symbol="x-thin-open", size=10,
                                                               color="#ef4444", line=dict(width=2))))
        legend.append(f"red ×: {int(outliers.sum())} outliers (VHD zeroed before the choice)")
    fig.update_yaxes(title="layer", autorange="reversed", dtick=max(1, layers // 16))
    fig.update_xaxes(title="head", dtick=max(1, heads // 16))
    fig.update_layout(plot_bgcolor="white")
    notes = []
    if maps.layers is not None:
        rule = layer_rule([int(l) for l in maps.layers], layers)
        notes.append(f"VHR's layers: {index_ranges(np.flatnonzero(acting)) or 'none'} ({rule})")
        if len(skipped):
            notes.append(f"grey: layers {index_ranges(skipped)}, measured, never reinforced (hover for VHD)")
            outside = np.where(acting[:, None], -np.inf, vhd)
            if outside.max() > top:
                l, h = np.unravel_index(int(np.argmax(outside)), outside.shape)
                notes.append(f"the largest VHD, {vhd[l, h]:.3g} (layer {l} head {h}), is outside VHR's layers")
    overall, choosable = finite_max(vhd), np.where(outliers, 0.0, vhd)  # the choice reads the filtered VHD
    faint = [l for l in np.flatnonzero(acting)
             if overall > 0 and np.nanmax(choosable[l]) < NEAR_ZERO * overall and chosen[l].any()]
    if faint:
        notes.append(f"layer{'s' if len(faint) > 1 else ''} {index_ranges(faint)}: every VHD left after the "
                     f"filter is ≈ 0 (under {NEAR_ZERO:.0%} of the largest), yet VHR chose "
                     f"{int(chosen[faint].sum())} heads there")
    title = "VHR: vision sensitivity (VHD) of each head" + subtitle(
        ["VHD = ‖head output with the image − with text only‖ at the first token",
         f"{layers} layers × {heads} heads",
         *notes, *legend, f"colour: 0 to {top:.3g}"])
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
    k = method_params(trace, "vhr").get("tvhd_top_k", 8)
    return base_layout(fig, "VHR: T-VHD per generated token" + subtitle(
        [f"sum over all layers of each layer's top-{k} head VHDs", "blue: this step" if step is not None else ""]),
        260)

