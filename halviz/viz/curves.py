"""Per-step curves: attention entropy per layer, with KVSmooth's λ and PruneHal's prunes on top."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from halviz.trace import Trace
from halviz.viz.common import (
    Choice,
    base_layout,
    clamp_step,
    layer_text,
    message_figure,
    num_layers,
    step_token,
    subtitle,
)
from halviz.viz.method_data import kvsmooth_lambda, prune_steps

ALL_LINES_UP_TO = 12  # deeper models get a min–max band instead of one line per layer (keeps updates small)


def _nan_mean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    count = finite.sum(axis)
    total = np.where(finite, values, 0.0).sum(axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def entropy_figure(trace: Trace, step: int | None = None, layer: Choice = "mean", height: int = 320) -> go.Figure:
    """Entropy (nats) of the predicting query's attention row at every step, per layer and averaged; ``step``
    is marked. Arguments in the order every panel takes them: trace, step, layer."""
    if not trace.has_attention or trace.num_steps == 0:
        return message_figure("This trace has no recorded attention.")
    entropy = trace.arrays["entropy"].astype(np.float64)  # (T, L)
    steps = np.arange(entropy.shape[0])
    tokens = [step_token(trace, int(s)) for s in steps]
    mode = "lines+markers" if len(steps) < 3 else "lines"
    layers = num_layers(trace)
    fig = go.Figure()
    if layers <= ALL_LINES_UP_TO:
        colours = sample_colorscale("Viridis", [i / max(layers - 1, 1) for i in range(layers)])
        for l in range(layers):
            picked = layer != "mean" and int(layer) == l
            faded = layer != "mean" and not picked
            fig.add_trace(go.Scatter(
                x=steps, y=entropy[:, l], mode=mode, name=f"layer {l}", customdata=tokens, showlegend=False,
                line=dict(width=3 if picked else 1.2, color="rgba(148,163,184,0.5)" if faded else colours[l]),
                hovertemplate=f"layer {l}<br>step %{{x}} → %{{customdata}}<br>%{{y:.3f}} nats<extra></extra>",
            ))
        spread = "one line per layer, shallow (purple) → deep (yellow)"
    else:
        low, high = entropy.min(1), entropy.max(1)
        fig.add_trace(go.Scatter(x=steps, y=high, mode="lines", line=dict(width=0), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=steps, y=low, mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor="rgba(148,163,184,0.3)", name=f"range over {layers} layers",
                                 hoverinfo="skip"))
        if layer != "mean":
            fig.add_trace(go.Scatter(
                x=steps, y=entropy[:, int(layer)], mode=mode, name=f"layer {layer}", customdata=tokens,
                line=dict(width=2.5, color="#0d9488"),
                hovertemplate=f"layer {layer}<br>step %{{x}} → %{{customdata}}<br>%{{y:.3f}} nats<extra></extra>",
            ))
        spread = f"grey band: lowest to highest of the {layers} layers"
    fig.add_trace(go.Scatter(
        x=steps, y=entropy.mean(1), mode=mode, name=f"mean of {layers} layers", customdata=tokens,
        line=dict(width=3 if layer == "mean" else 1.5, color="#111827", dash="solid" if layer == "mean" else "dot"),
        hovertemplate="mean of layers<br>step %{x} → %{customdata}<br>%{y:.3f} nats<extra></extra>",
    ))
    notes = [spread]
    lam = kvsmooth_lambda(trace)
    if lam is not None and lam.shape[1] == layers:
        lam = lam[: len(steps)].astype(np.float64)
        series = lam[:, int(layer)] if layer != "mean" else _nan_mean(lam, 1)
        if np.isfinite(series).any():
            where = f"layer {layer}" if layer != "mean" else "mean of smoothed layers"
            fig.add_trace(go.Scatter(
                x=steps[: len(series)], y=series, mode="lines+markers", name=f"KVSmooth λ ({where})", yaxis="y2",
                line=dict(color="#c026d3", width=2, dash="dash"), marker=dict(size=4),
                hovertemplate="KVSmooth λ %{y:.2f} at step %{x}<extra></extra>",
            ))
            fig.update_layout(yaxis2=dict(title=dict(text="KVSmooth λ (0–1)"), overlaying="y", side="right",
                                          range=[0, 1.05], showgrid=False))
            notes.append("dashed magenta: KVSmooth λ (right axis)")
        elif layer != "mean":
            notes.append(f"KVSmooth does not smooth layer {layer}")
    triggers = prune_steps(trace)
    if triggers is not None and len(triggers):
        for t in triggers:  # a prune decided after step t acts from step t + 1
            fig.add_vline(x=float(t) + 0.5, line=dict(color="#0f172a", width=1, dash="dash"))
        notes.append("dashed black: PruneHal prunes")
    if step is not None:
        fig.add_vline(x=clamp_step(trace, step), line=dict(color="#2563eb", width=2))
        notes.append("blue: this step")
    fig.update_xaxes(title="step (generated token index)", range=[-0.5, max(len(steps) - 0.5, 0.5)])
    # The left axis only: update_yaxes would also retitle λ's right axis (yaxis2) "entropy (nats)".
    fig.update_layout(yaxis=dict(title=dict(text="entropy (nats)"), rangemode="tozero"))
    title = "Attention entropy per step, mean over heads" + subtitle([f"{layer_text(trace, layer)} in bold", *notes], 80)
    return base_layout(fig, title, height + 15 * title.count("<br>"), legend=dict(orientation="h", y=-0.3, x=0))
