"""The logit lens panel: in which layer a column's word was decided, and what each layer would have said.

Reads the trace's ``lens_*`` arrays (engine/lens.py): per step and recorded layer (``meta["lens_layers"]``),
the residual stream after that layer read through the model's final norm and language head. Two
figures, each for one column or side by side with a reference column (e.g. Greedy beside VHR):

- :func:`lens_heatmap_figure`: recorded layers × steps, the emitted token's rank (log scale) or its
  probability (a toggle on the figure), the chosen step outlined, each step's *moment of decision*
  (the first layer from which the word stays the top token) marked ◆;
- :func:`lens_words_figure`: at the chosen step, each recorded layer's five most likely tokens.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from halviz.trace import LENS_ARRAYS, Trace
from halviz.viz.common import base_layout, clamp_step, escape, index_ranges, message_figure, step_token, subtitle
from halviz.viz.method_data import token_string

NO_LENS = "This trace has no logit lens (it was recorded before halviz kept one, or with the lens off)."
RANK_TICKS = (0, 1, 10, 100, 1000, 10000, 100000)
COLORBAR = dict(len=0.55, y=0, yanchor="bottom", thickness=14)  # under the rank/probability toggle
# Shown in an HTML box (ui/debugger.py): emphasis as <b>, never Markdown.
HELP = ("Each row is a layer: the residual stream after it, read through the model's final norm and "
        "language head as if the model stopped there (the <i>logit lens</i>); the last layer is the model's own "
        "output, before any method edits the logits. The heatmap colours the rank (0 = top) or the "
        "probability of the word the column actually wrote at each step; ◆ marks the first layer from which "
        "that word stays on top (its <i>moment of decision</i>). The table lists each layer's five likeliest "
        "tokens at the chosen step, the written word in bold. The second column is a reference: the first "
        "column of the comparison (or the second, when you are looking at the first). <b>What it does not "
        "prove:</b> intermediate "
        "layers were never trained to be read through the final head, so an early layer's poor rank may "
        "only mean the word is encoded in a form the head cannot read yet; a decision 'made' in a layer "
        "shows where it became readable, not where or why it was caused. Only the layers in the subtitle "
        "were recorded (the default keeps the lens within 5 % of a decode step's cost).")


def has_lens(trace: Trace | None) -> bool:
    return trace is not None and all(name in trace.arrays for name in LENS_ARRAYS) and trace.num_steps > 0 \
        and len(trace.meta.get("lens_layers") or []) == trace.arrays["lens_token_rank"].shape[1] > 0


def lens_layers(trace: Trace) -> list[int]:
    return [int(l) for l in trace.meta.get("lens_layers") or []]


def decision_layers(trace: Trace) -> np.ndarray:
    """(steps,) per step the index into ``lens_layers`` from which the emitted token is the top token in
    every later recorded layer; -1 where even the last recorded layer does not rank it first."""
    top = trace.arrays["lens_token_rank"] == 0  # (T, Lk)
    stays = np.flip(np.logical_and.accumulate(np.flip(top, 1), axis=1), 1)  # top here and in every later layer
    return np.where(stays.any(1), stays.argmax(1), -1)


def first_divergence(a: Trace, b: Trace) -> int | None:
    """The first step at which two columns wrote different tokens (None: one is a prefix of the other)."""
    x, y = a.arrays.get("token_ids"), b.arrays.get("token_ids")
    if x is None or y is None:
        return None
    n = min(len(x), len(y))
    differ = np.nonzero(x[:n] != y[:n])[0]
    return int(differ[0]) if differ.size else None


def _columns(trace: Trace, reference: Trace | None, names: tuple[str, str]) -> list[tuple[str, Trace]]:
    shown = [(names[0], trace)]
    if reference is not None and reference is not trace:
        shown.append((names[1], reference))
    return shown


def _divergence_note(trace: Trace, reference: Trace | None, names: tuple[str, str]) -> str:
    if reference is None or reference is trace:
        return ""
    split = first_divergence(trace, reference)
    return (f"{escape(names[0])} and {escape(names[1])} write the same tokens throughout" if split is None
            else f"{escape(names[0])} and {escape(names[1])} first differ at step {split}")


def lens_heatmap_figure(trace: Trace, step: int, reference: Trace | None = None,
                        names: tuple[str, str] = ("this column", "reference")) -> go.Figure:
    """Recorded layers × steps of the emitted token's rank (log colour scale) or probability (the
    figure's toggle); the chosen ``step`` outlined; ◆ each step's moment of decision."""
    if not has_lens(trace):
        return message_figure(NO_LENS)
    shown = [(name, t) for name, t in _columns(trace, reference, names) if has_lens(t)]
    step = clamp_step(trace, step)
    fig = make_subplots(rows=1, cols=len(shown), shared_yaxes=False, horizontal_spacing=0.12,
                        subplot_titles=[escape(name) for name, _ in shown])
    rank_traces, prob_traces = [], []
    for c, (name, t) in enumerate(shown, start=1):
        layers = [f"layer {l}" for l in lens_layers(t)]
        ranks = t.arrays["lens_token_rank"].astype(np.float64).clip(0)  # (T, Lk)
        probs = np.nan_to_num(t.arrays["lens_token_prob"].astype(np.float64)).clip(0, 1)
        steps = np.arange(t.num_steps)
        words = [step_token(t, int(s)) for s in steps]
        custom = np.stack([np.broadcast_to(np.array(words, dtype=object)[:, None], ranks.shape).T,
                           ranks.T, probs.T], axis=-1)
        hover = ("step %{x} writes %{customdata[0]}<br>%{y}: rank %{customdata[1]:.0f} (0 = top), "
                 "p = %{customdata[2]:.3f}<extra></extra>")
        # On a long scale the tick 1 (at log 2) sits on top of 0: show it only when the ranks stay below 10.
        ticks = [r for r in RANK_TICKS if r <= max(ranks.max(), 1) * 10 and (r != 1 or ranks.max() < 10)]
        rank_bar = dict(title=dict(text="rank<br>(log)", side="top"), tickvals=[np.log10(r + 1) for r in ticks],
                        ticktext=["0 (top)" if r == 0 else f"{r:,}" for r in ticks], **COLORBAR)
        fig.add_trace(go.Heatmap(z=np.log10(ranks.T + 1), x=steps, y=layers, customdata=custom, hovertemplate=hover,
                                 colorscale="Viridis_r", zmin=0, zmax=max(np.log10(ranks.max() + 1), 1.0),
                                 colorbar=rank_bar, showscale=c == len(shown), name=name), 1, c)
        rank_traces.append(len(fig.data) - 1)
        fig.add_trace(go.Heatmap(z=probs.T, x=steps, y=layers, customdata=custom, hovertemplate=hover,
                                 colorscale="Viridis", zmin=0, zmax=1, visible=False, showscale=c == len(shown),
                                 colorbar=dict(title=dict(text="p of the<br>written<br>word", side="top"),
                                               tickformat=".0%", **COLORBAR), name=name), 1, c)
        prob_traces.append(len(fig.data) - 1)
        decided = decision_layers(t)
        where = decided >= 0
        fig.add_trace(go.Scatter(x=steps[where], y=[layers[i] for i in decided[where]], mode="markers",
                                 marker=dict(symbol="diamond", size=7, color="white", line=dict(color="black", width=1)),
                                 hovertemplate="step %{x}: the written word stays on top from %{y} on<extra></extra>",
                                 showlegend=False), 1, c)
        if step < t.num_steps:
            fig.add_vrect(x0=step - 0.5, x1=step + 0.5, line=dict(color="#dc2626", width=2), row=1, col=c)
        fig.update_xaxes(title_text="step (the query predicting generated token i)", row=1, col=c)
        fig.update_yaxes(title_text="layer (deepest at the bottom)" if c == 1 else None,
                         autorange="reversed", type="category", row=1, col=c)
    both = list(range(len(fig.data)))
    markers = [i for i in both if i not in rank_traces + prob_traces]
    fig.update_layout(updatemenus=[dict(
        type="buttons", direction="down", x=1.01, xanchor="left", y=1.0, yanchor="top", pad=dict(t=0, b=0),
        buttons=[dict(label="rank (log)", method="restyle",
                      args=[{"visible": [i in rank_traces or i in markers for i in both]}]),
                 dict(label="probability", method="restyle",
                      args=[{"visible": [i in prob_traces or i in markers for i in both]}])])])
    decided = decision_layers(trace)[step]
    layers = lens_layers(trace)
    moment = (f"step {step}'s word is top from layer {layers[decided]} on" if decided >= 0
              else f"no recorded layer ranks step {step}'s word first (a method changed the logits after them)")
    title = (f"Logit lens: where step {step}'s word {step_token(trace, step)} was decided" + subtitle([
        "colour: rank (log scale) or probability of the word each column wrote, per layer (toggle)",
        moment, _divergence_note(trace, reference, names),
        f"recorded layers {index_ranges(layers)} of 0–{int(trace.meta.get('num_layers', 0)) - 1}",
        "red box: the chosen step"]))
    return _room_for_column_titles(base_layout(fig, title, 200 + 22 * len(layers), panel="full"))


def lens_words_figure(trace: Trace, step: int, reference: Trace | None = None,
                      names: tuple[str, str] = ("this column", "reference")) -> go.Figure:
    """At ``step``, each recorded layer's five likeliest tokens (colour = probability), the written word bold."""
    if not has_lens(trace):
        return message_figure(NO_LENS)
    step = clamp_step(trace, step)
    shown = [(name, t) for name, t in _columns(trace, reference, names) if has_lens(t) and step < t.num_steps]
    fig = make_subplots(rows=1, cols=len(shown), horizontal_spacing=0.1,
                        subplot_titles=[f"{escape(name)}: writes {step_token(t, step)}" for name, t in shown])
    for c, (name, t) in enumerate(shown, start=1):
        ids = t.arrays["lens_top_ids"][step]  # (Lk, K)
        probs = np.nan_to_num(t.arrays["lens_top_probs"][step].astype(np.float64)).clip(0, 1)
        written = int(t.arrays["token_ids"][step])
        words = [[token_string(t, int(i)) for i in row] for row in ids]
        text = [[f"<b>{w}</b>" if int(i) == written else w for w, i in zip(row, id_row)]
                for row, id_row in zip(words, ids)]
        layers = [f"layer {l}" for l in lens_layers(t)]
        ranks = [f"#{k + 1}" for k in range(ids.shape[1])]
        fig.add_trace(go.Heatmap(
            z=probs, x=ranks, y=layers, text=text, texttemplate="%{text}", textfont=dict(size=11),
            customdata=np.array(words, dtype=object), colorscale="Blues", zmin=0, zmax=1,
            hovertemplate="%{y}, %{x}: %{customdata} p = %{z:.3f}<extra></extra>", showscale=c == len(shown),
            colorbar=dict(title=dict(text="probability", side="top"), tickformat=".0%", len=0.9)), 1, c)
        fig.update_xaxes(title_text="the layer's k-th likeliest token", side="bottom", row=1, col=c)
        fig.update_yaxes(title_text="recorded layer" if c == 1 else None, autorange="reversed", type="category",
                         row=1, col=c)
    title = f"Logit lens at step {step}: each layer's five likeliest next tokens" + subtitle([
        "colour: the token's probability when that layer is read through the final norm and head",
        "bold: the word the column wrote", _divergence_note(trace, reference, names)])
    return _room_for_column_titles(base_layout(fig, title, 170 + 24 * len(lens_layers(trace)), panel="full"))


def lens_summary(trace: Trace | None) -> str:
    """One plain sentence: what the lens recorded, or that there is none."""
    if not has_lens(trace):
        return NO_LENS
    layers = lens_layers(trace)
    decided = decision_layers(trace)
    known = decided[decided >= 0]
    median = f"; the written word is typically decided by layer {layers[int(np.median(known))]}" if known.size else ""
    return (f"Lens recorded for layers {index_ranges(layers)} of 0–{int(trace.meta.get('num_layers', 0)) - 1}"
            f" over {trace.num_steps} steps{median}.")


COLUMN_TITLE_PX = 24  # a subplot's title sits above its plot, below the figure's title


def _room_for_column_titles(fig: go.Figure) -> go.Figure:
    """Move the plots down by one line so the columns' titles never overlap the figure's subtitles."""
    fig.update_layout(margin=dict(t=fig.layout.margin.t + COLUMN_TITLE_PX), height=fig.layout.height + COLUMN_TITLE_PX)
    return fig
