"""Figures of the methods' own decisions: PruneHal's votes, VASparse's logit contrast and sink weights,
and the final next-token candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from plotly.subplots import make_subplots

from halviz.viz.common import (SEGMENT_COLOURS, SEGMENT_NAMES, base_layout, clamp_step, index_ranges, key_label,
                               message_figure, position_segments, readable, step_token, subtitle)
from halviz.viz.method_data import (method_params, prune_steps, prunehal_votes, token_string, vasparse_logits,
                                    vasparse_selection, vasparse_sink)


@dataclass(frozen=True)
class PruneBudget:
    """What PruneHal's gate allowed: at most ``t`` prunes, the forced one included."""

    t: int | None  # None: not recorded in the trace
    forced_step: int | None
    triggers: np.ndarray  # the steps after which it pruned
    spent_at: int | None  # the step whose prune used the last of the budget (None: budget left)

    def reason(self, step: int) -> str:
        return "forced" if self.forced_step and step == self.forced_step else "majority"


def prune_budget(trace: Trace) -> PruneBudget:
    params = method_params(trace, "prunehal")
    triggers = prune_steps(trace)
    triggers = np.zeros(0, dtype=int) if triggers is None else triggers.astype(int)

    def whole(key: str) -> int | None:
        try:
            return int(params[key])
        except (KeyError, TypeError, ValueError):
            return None

    t, forced = whole("t"), whole("forced_step")
    spent = None
    if t is not None and len(triggers) >= t:
        spent = int(triggers[t - 1]) if t > 0 else -1  # t = 0: spent before the first step
    return PruneBudget(t, forced, triggers, spent)


def prunehal_figure(trace: Trace, step: int | None = None) -> go.Figure | None:
    """Which layers voted "attention to the image collapsed" (A < √r·Ā) at each step, which steps had a
    majority, and the gate that decided whether a majority pruned: the budget of t prunes."""
    data = prunehal_votes(trace)
    if data is None:
        return None
    votes, mass, reference = data
    steps, layers = votes.shape
    budget = prune_budget(trace)
    hover = "step %{x}, layer %{y}<br>votes “collapsed”: %{text}"
    custom = None
    if mass is not None and reference is not None:
        custom = np.stack([mass.T, reference.T], axis=-1)
        hover += "<br>A = %{customdata[0]:.3f}, Ā = %{customdata[1]:.3f}"
    fig = go.Figure(go.Heatmap(
        z=votes.T.astype(int), x=list(range(steps)), y=list(range(layers)), customdata=custom,
        text=np.where(votes.T, "yes", "no"), colorscale=[[0, "#f1f5f9"], [1, "#f97316"]], zmin=0, zmax=1,
        showscale=False, xgap=1, ygap=1, hovertemplate=hover + "<extra></extra>",
    ))
    majority = 2 * votes.sum(1) > layers
    pruned = set(int(t) for t in budget.triggers)
    unpruned = [i for i in np.flatnonzero(majority) if int(i) not in pruned]
    after_budget = [i for i in unpruned if budget.spent_at is not None and i > budget.spent_at]
    size = max(7, min(13, 600 // max(steps, 1)))
    if pruned:
        xs = sorted(pruned)
        fig.add_trace(go.Scatter(
            x=xs, y=[-1] * len(xs), mode="markers", name="prune", showlegend=False,
            marker=dict(symbol="triangle-down", size=size, color="#0f172a"),
            hovertext=[f"step {x}: prune {k + 1}" + (f" of {budget.t}" if budget.t is not None else "")
                       + f" ({budget.reason(x)}), acting from step {x + 1}" for k, x in enumerate(xs)],
            hovertemplate="%{hovertext}<extra></extra>"))
    if unpruned:
        why = (f"the budget of {budget.t} prunes was spent at step {budget.spent_at}"
               if budget.spent_at is not None else "no prune")
        fig.add_trace(go.Scatter(
            x=unpruned, y=[-1] * len(unpruned), mode="markers", name="majority, no prune", showlegend=False,
            marker=dict(symbol="circle-open", size=size, color="#64748b", line=dict(width=2)),
            hovertext=[f"step {x}: a majority voted “collapsed”, no prune: {why}" for x in unpruned],
            hovertemplate="%{hovertext}<extra></extra>"))
    for t in budget.triggers:
        fig.add_vline(x=float(t) + 0.5, line=dict(color="#0f172a", width=2, dash="dash"))
    if budget.spent_at is not None and budget.spent_at + 1 < steps:
        fig.add_vrect(x0=max(budget.spent_at, -1) + 0.5, x1=steps - 0.5, fillcolor="#94a3b8", opacity=0.18,
                      line_width=0, layer="above")
    if step is not None:
        fig.add_vline(x=clamp_step(trace, step), line=dict(color="#2563eb", width=2))
    every = 1 if layers <= 16 else max(1, layers // 16)
    fig.update_yaxes(title="layer", autorange="reversed", tickmode="array",
                     tickvals=[-1, *range(0, layers, every)], ticktext=["prune?", *map(str, range(0, layers, every))])
    fig.update_xaxes(title="step", range=[-0.5, steps - 0.5])
    r = method_params(trace, "prunehal").get("r")
    title = "PruneHal: orange = layer votes image attention collapsed" + subtitle(
        [f"A &lt; √r·Ā{'' if r is None else f' (r = {r})'}", *budget_text(budget, after_budget),
         "top row: ▼ prune (dashed: acts from the next step)", "○ majority without a prune", "blue: this step"])
    return base_layout(fig, title, int(min(max(180 + 12 * layers, 280), 640)), panel="full")


def budget_text(budget: PruneBudget, after_budget: list[int]) -> list[str]:
    """The gate in words: the budget, the prunes it allowed, when it ran out and what that silenced."""
    if budget.t is None:
        return [f"{len(budget.triggers)} prunes", "budget t not recorded in this trace"]
    forced = f", forced step {budget.forced_step} included" if budget.forced_step else ""
    head = f"budget t = {budget.t} prune{'s' if budget.t != 1 else ''} max{forced}"
    if budget.t == 0:
        return [head, "PruneHal never prunes"]
    done = (f"pruned after step{'s' if len(budget.triggers) != 1 else ''} {index_list(budget.triggers)}"
            if len(budget.triggers) else "no prune")
    if budget.spent_at is None:
        return [head, done, f"{budget.t - len(budget.triggers)} left at the end"]
    shaded = (f"the {len(after_budget)} later majorit{'ies' if len(after_budget) != 1 else 'y'} (grey) "
              "could not prune" if after_budget else "later steps (grey) cannot prune")
    return [head, done, f"budget spent at step {budget.spent_at}: {shaded}"]


def index_list(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def phi_reading(trace: Trace) -> str:
    """What VASparse's ℓ_φ was in this trace (its ``phi`` knob; first-edition traces had the masked pass)."""
    phi = method_params(trace, "vasparse").get("phi", "masked-pass")
    return {"embedding": "ℓ_φ (language head of the token embedding, no decoder pass)",
            "embedding-raw": "ℓ_φ (language head of the raw token embedding, no norm, no decoder pass)",
            }.get(str(phi), "ℓ_φ (second pass with random image tokens masked)")


def vasparse_logits_figure(trace: Trace, step: int) -> go.Figure | None:
    """Top-5 logits of VASparse's sparse pass ℓ_θ and of its language prior ℓ_φ at a step."""
    step = clamp_step(trace, step)
    data = vasparse_logits(trace, step)
    if data is None:
        return None
    fig = go.Figure()
    fig.add_trace(go.Bar(
        y=[token_string(trace, i) for i in data.theta_ids], x=data.theta_logits, orientation="h",
        name="ℓ_θ (visual-aware sparse attention)", marker_color="#2563eb",
        hovertemplate="ℓ_θ %{y}: %{x:.2f}<extra></extra>",
    ))
    if data.phi_ids is not None:
        fig.add_trace(go.Bar(
            y=[token_string(trace, i) for i in data.phi_ids], x=data.phi_logits, orientation="h",
            name=phi_reading(trace), marker_color="#f59e0b",
            hovertemplate="ℓ_φ %{y}: %{x:.2f}<extra></extra>",
        ))
        note = "the final logits are (1+α)·ℓ_θ − α·ℓ_φ over the plausible tokens"
    else:
        note = "no ℓ_φ recorded at this step (contrast off)"
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="logit")
    title = (f"VASparse at step {step} → {step_token(trace, step)}: top-5 logits of ℓ_θ and ℓ_φ"
             f"<br><span style='font-size:11px'>{note}</span>")
    return base_layout(fig, title, 300, barmode="group", legend=dict(orientation="h", y=-0.2, x=0))


def vasparse_selection_figure(trace: Trace) -> go.Figure | None:
    """Which generated tokens VASparse kept at each step (share of heads × layers), and how many
    columns it merged from the dropped ones."""
    data = vasparse_selection(trace)
    if data is None:
        return None
    steps = data.kept.shape[0]
    texts = trace.texts
    labels = [f"{readable(texts[j]) if j < len(texts) else '?'} (gen {j})" for j in range(steps)]
    span = f"layers {index_ranges(data.layers)}" if data.layers is not None and len(data.layers) else "its layers"
    with_bars = data.merged is not None
    fig = (make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.8, 0.2], horizontal_spacing=0.03)
           if with_bars else go.Figure())
    heat = go.Heatmap(
        z=data.kept, x=list(range(steps)), y=list(range(steps)), zmin=0, zmax=1,
        # Kept by every head is pale blue, not white: white is left for "not generated yet".
        colorscale=[[0, "#0f172a"], [0.5, "#f97316"], [1, "#bfdbfe"]], xgap=0, ygap=0,
        colorbar=dict(title=dict(text="share kept", side="right"), len=0.8, x=1.02),
        customdata=np.array([labels] * steps), hovertemplate=(
            "step %{y} kept %{customdata} in %{z:.0%} of heads × layers<extra></extra>"),
    )
    if with_bars:
        fig.add_trace(heat, row=1, col=1)
        fig.add_trace(go.Bar(y=list(range(steps)), x=data.merged, orientation="h", marker_color="#7c3aed",
                             hovertemplate="step %{y}: %{x:.2f} merged columns per head and layer<extra></extra>",
                             showlegend=False), row=1, col=2)
        fig.update_xaxes(title="merged columns", row=1, col=2)
        fig.update_yaxes(title=None, row=1, col=2)
    else:
        fig.add_trace(heat)
    tick_every = max(1, steps // 24)
    fig.update_xaxes(title="generated token j", tickmode="array", tickvals=list(range(0, steps, tick_every)),
                     ticktext=labels[::tick_every], tickangle=-60, tickfont=dict(size=9), row=1 if with_bars else None,
                     col=1 if with_bars else None)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_yaxes(title="step t", row=1 if with_bars else None, col=1 if with_bars else None)
    fig.update_xaxes(showgrid=False)
    dropped = {"dpc-knn": "the dropped ones are merged per cluster (DPC-KNN)",
               "none": "the dropped ones are masked"}.get(data.aggregate or "", "")
    parts = [f"colour = share of heads × {span} that kept generated token j while predicting token t",
             "blank: j not generated yet", dropped,
             "image and prompt tokens are never dropped"]
    if with_bars:
        parts.append("right: merged columns at step t, mean per head and layer")
    title = "VASparse: which generated tokens each step kept" + subtitle(parts)
    height = int(min(max(260 + 9 * steps, 360), 760))
    return base_layout(fig, title, height, margin=dict(l=70, b=90), plot_bgcolor="white")


def vasparse_sink_figure(trace: Trace, top: int = 3) -> go.Figure | None:
    """VASparse's sink weights W over every position at the end of the run (mean over its layers)."""
    data = vasparse_sink(trace)
    if data is None:
        return None
    weights, positions = data.weights.mean(0), data.positions
    count = len(positions)
    segments = position_segments(trace, positions)
    names = [key_label(trace, int(p)) for p in positions]
    fig = go.Figure()
    for segment in dict.fromkeys(segments):
        where = [i for i, s in enumerate(segments) if s == segment]
        fig.add_trace(go.Bar(
            x=positions[where], y=weights[where], name=SEGMENT_NAMES.get(segment, segment),
            marker=dict(color=SEGMENT_COLOURS.get(segment, "#64748b"), line=dict(width=0)),
            customdata=[names[i] for i in where], hovertemplate="%{customdata} (position %{x}): W = %{y:.4f}<extra></extra>",
        ))
    fig.add_hline(y=1.0 / count, line=dict(color="#475569", width=1, dash="dash"))
    # The top positions are often neighbours: each label gets its own level above the highest bar (axis units),
    # so no two overlap whatever their bars' heights.
    highest = float(weights.max()) if count else 1.0
    for rank, i in enumerate(np.argsort(-weights, kind="stable")[:top]):
        fig.add_annotation(x=int(positions[i]), y=float(weights[i]), text=names[i], showarrow=True, arrowhead=0,
                           ax=20, ayref="y", ay=highest * (1.12 + 0.14 * rank), font=dict(size=10),
                           xanchor="left", bgcolor="rgba(255,255,255,0.85)")
    fig.update_yaxes(range=[0, highest * (1.2 + 0.14 * min(top, count))])
    fig.update_xaxes(title="sequence position (all columns)")
    fig.update_yaxes(title="W")
    span = f"layers {index_ranges(data.layers)}" if data.layers is not None and len(data.layers) else "its layers"
    title = (f"VASparse sink weights W over all {count} positions at the end of the run (mean over {span})"
             + subtitle(["W = softmax over all columns of the layer's accumulated head-mean attention",
                         "the penalty multiplies each column's logit by 1 + β − β·W",
                         f"dashed: uniform 1/{count}"]))
    return base_layout(fig, title, 340, panel="full", bargap=0, legend=dict(orientation="h", y=-0.25, x=0))


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
    title = f"Step {step} → {step_token(trace, step)}: next-token candidates" + subtitle(
        ["after all methods; greedy decoding takes the top one (blue)", candidate_margin(labels, probs)])
    return base_layout(fig, title, 260)


def candidate_margin(labels: list[str], probs: np.ndarray) -> str:
    """How far the chosen token led the runner-up at this step, in probability."""
    if len(probs) < 2:
        return f"p = {probs[0]:.2f}, no runner-up recorded" if len(probs) else ""
    return (f"p = {probs[0]:.2f} vs runner-up “{labels[1]}” {probs[1]:.2f}: "
            f"margin {probs[0] - probs[1]:.2f}")
