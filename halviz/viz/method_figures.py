"""Figures of the methods' own decisions: PruneHal's votes, VASparse's logit contrast and sink weights,
and the final next-token candidates."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import base_layout, clamp_step, index_ranges, key_label, message_figure, step_token
from halviz.viz.method_data import prunehal_votes, token_string, vasparse_logits, vasparse_sink


def prunehal_figure(trace: Trace, step: int | None = None) -> go.Figure | None:
    """Which layers voted "attention to the image collapsed" (A < √r·Ā) at each step, and the prunes."""
    data = prunehal_votes(trace)
    if data is None:
        return None
    votes, mass, reference = data
    steps, layers = votes.shape
    hover = "step %{x}, layer %{y}<br>vote: %{z}"
    custom = None
    if mass is not None and reference is not None:
        custom = np.stack([mass.T, reference.T], axis=-1)
        hover += "<br>A = %{customdata[0]:.3f}, Ā = %{customdata[1]:.3f}"
    fig = go.Figure(go.Heatmap(
        z=votes.T.astype(int), x=list(range(steps)), y=list(range(layers)), customdata=custom,
        colorscale=[[0, "#f1f5f9"], [1, "#f97316"]], zmin=0, zmax=1, showscale=False, xgap=1, ygap=1,
        hovertemplate=hover + "<extra></extra>",
    ))
    triggers = trace.method_array("prunehal", "trigger_steps")
    for t in ([] if triggers is None else triggers):
        fig.add_vline(x=float(t) + 0.5, line=dict(color="#0f172a", width=2, dash="dash"))
    if step is not None:
        fig.add_vline(x=clamp_step(trace, step), line=dict(color="#2563eb", width=2))
    fig.update_yaxes(title="layer", autorange="reversed", dtick=1 if layers <= 16 else None)
    fig.update_xaxes(title="step")
    title = ("PruneHal: orange = layer votes that attention to the image collapsed (A < √r·Ā)"
             "<br><span style='font-size:11px'>a majority of votes (or the forced step) prunes; dashed = "
             "prune, acting from the next step · blue: this step</span>")
    return base_layout(fig, title, int(min(max(180 + 12 * layers, 280), 640)))


def vasparse_logits_figure(trace: Trace, step: int) -> go.Figure | None:
    """Top-5 logits of VASparse's sparse pass ℓ_θ and of its random-image-mask pass ℓ_φ at a step."""
    step = clamp_step(trace, step)
    data = vasparse_logits(trace, step)
    if data is None:
        return None
    fig = go.Figure()
    fig.add_trace(go.Bar(
        y=[token_string(trace, i) for i in data.theta_ids], x=data.theta_logits, orientation="h",
        name="ℓ_θ (visual-aware sparse pass)", marker_color="#2563eb",
        hovertemplate="ℓ_θ %{y}: %{x:.2f}<extra></extra>",
    ))
    if data.phi_ids is not None:
        fig.add_trace(go.Bar(
            y=[token_string(trace, i) for i in data.phi_ids], x=data.phi_logits, orientation="h",
            name="ℓ_φ (random image tokens masked)", marker_color="#f59e0b",
            hovertemplate="ℓ_φ %{y}: %{x:.2f}<extra></extra>",
        ))
        note = "the final logits are (1+α)·ℓ_θ − α·ℓ_φ over the plausible tokens"
    else:
        note = "no ℓ_φ at this step (the first token is never contrasted)"
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="logit")
    title = (f"VASparse at step {step} → {step_token(trace, step)}: top-5 logits of both passes"
             f"<br><span style='font-size:11px'>{note}</span>")
    return base_layout(fig, title, 300, barmode="group", legend=dict(orientation="h", y=-0.2, x=0))


def vasparse_sink_figure(trace: Trace, top: int = 12) -> go.Figure | None:
    """VASparse's sink weights W over text tokens at the end of the run (mean over its layers)."""
    data = vasparse_sink(trace)
    if data is None:
        return None
    weights, positions, layers = data
    order = np.argsort(-weights)[:top]
    span = f"layers {index_ranges(layers)}" if layers is not None and len(layers) else "its layers"
    fig = go.Figure(go.Bar(
        y=[key_label(trace, int(positions[i])) for i in order], x=weights[order], orientation="h",
        marker_color="#7c3aed", hovertemplate="%{y}: W = %{x:.3f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="W (softmax of accumulated attention)")
    title = (f"VASparse sink weights W at the end of the run (mean over {span}), top {len(order)} text tokens"
             "<br><span style='font-size:11px'>the penalty lowers attention to these columns by β·W</span>")
    return base_layout(fig, title, 300)


def candidates_figure(trace: Trace, step: int) -> go.Figure:
    """The five most likely next tokens after all methods; greedy decoding takes the first."""
    if "top_probs" not in trace.arrays or trace.num_steps == 0:
        return message_figure("No next-token probabilities in this trace.")
    step = clamp_step(trace, step)
    ids, probs = trace.arrays["top_ids"][step], trace.arrays["top_probs"][step].astype(np.float64)
    labels = [f"{token_string(trace, int(i))}" for i in ids]
    labels = [label if labels.count(label) == 1 else f"{label} #{int(i)}" for label, i in zip(labels, ids)]
    fig = go.Figure(go.Bar(
        y=labels, x=probs, orientation="h", marker_color=["#2563eb"] + ["#94a3b8"] * (len(ids) - 1),
        text=[f"{p:.0%}" for p in probs], textposition="outside",
        hovertemplate="%{y}: p = %{x:.3f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(range=[0, 1.12], tickformat=".0%", title="probability")
    title = (f"Step {step} → {step_token(trace, step)}: next-token candidates after all methods"
             "<br><span style='font-size:11px'>greedy decoding takes the top one (blue)</span>")
    return base_layout(fig, title, 260)
