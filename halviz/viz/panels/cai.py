"""CAI's debugger panel: where its entropy gate opened (layers × steps) and, at the chosen step, the
relevance weights w it gave each image patch (see :mod:`halviz.methods.cai`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.common import NOT_WHY, base_layout, clamp_step, step_token
from halviz.viz.method_data import method_array, method_params
from halviz.viz.panels.base import Figure, MethodPanel


def cai_gate_figure(trace: Trace, step: int) -> go.Figure | None:
    entropy = method_array(trace, "cai", "entropy", ndim=2)
    gate = method_array(trace, "cai", "gate", ndim=2)
    layers = method_array(trace, "cai", "layers", ndim=1)
    if entropy is None or gate is None or layers is None or len(entropy) == 0 or len(layers) == 0:
        return None
    layers = [int(l) for l in layers]
    z = entropy[:, layers].T.astype(np.float64)  # (gated layers, steps)
    opened = gate[:, layers].T.astype(bool)
    tau = float(method_params(trace, "cai").get("threshold", np.nan))
    steps = np.arange(z.shape[1])
    fig = go.Figure(go.Heatmap(
        z=z, x=steps, y=[str(l) for l in layers], colorscale="Viridis", zmin=0.0,
        colorbar=dict(title=dict(text="entropy (bans)", side="right"), thickness=12),
        hovertemplate="step %{x}, layer %{y}<br>entropy of the previous layer's lens %{z:.3f} bans<extra></extra>"))
    ys, xs = np.nonzero(opened)
    fig.add_trace(go.Scatter(x=steps[xs], y=[str(layers[i]) for i in ys], mode="markers", name="tilt on",
                             marker=dict(symbol="circle-open", size=9, color="#f97316", line=dict(width=2)),
                             hovertemplate="step %{x}, layer %{y}: tilt on<extra></extra>"))
    step = min(clamp_step(trace, step), z.shape[1] - 1)
    fig.add_vline(x=step, line_color="#2563eb")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="tilted layer", type="category")
    share = float(opened.mean()) if opened.size else 0.0
    base_layout(fig, f"Where CAI's gate opened (τ = {tau:g} bans; open in {share:.0%} of layer-steps; "
                     f"step {step} in blue)", 320)
    return fig


def cai_weights_figure(trace: Trace, step: int) -> go.Figure | None:
    weights = method_array(trace, "cai", "weights", ndim=2)
    if weights is None or len(weights) == 0:
        return None
    step = min(clamp_step(trace, step), len(weights) - 1)
    rows, cols = (int(v) for v in trace.meta.get("grid", [0, 0]))
    index = trace.grid_index()
    if rows * cols == 0 or len(index) != rows * cols or int(index.max()) >= weights.shape[1]:
        return None
    grid = weights[step].astype(np.float64)[index].reshape(rows, cols)
    fig = go.Figure(go.Heatmap(
        z=grid, colorscale="Oranges", zmin=0.5, zmax=1.0,
        colorbar=dict(title=dict(text="w", side="right"), thickness=12),
        hovertemplate="patch row %{y}, col %{x}<br>w = %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title="patch row")
    fig.update_xaxes(title="patch column")
    several = " (primary grid only)" if "grid_index" in trace.meta else ""
    base_layout(fig, f"Step {step} → {step_token(trace, step)}: relevance w per patch{several}", 320)
    return fig


PANEL = MethodPanel(
    method="cai", title="CAI: when its gate opened and which patches it favoured",
    figures=(Figure("hv-cai-gate", cai_gate_figure,
                    help=("Each cell is one layer CAI may tilt (ℓ_s+1 … L−1) at one step: the entropy, in bans "
                          "(log base 10), of the logit lens of the layer before it (final norm and language head on "
                          "the predicting position's residual). An orange ring means the entropy exceeded τ, so that "
                          "layer's attention from the predicting query to the image was tilted. Layers without a row "
                          "are never tilted.")),
             Figure("hv-cai-weights", cai_weights_figure, row=1,
                    help=("The weight w CAI gave each image patch at this step: σ(κ·(cos − min cos)), the cosine "
                          "between the patch's input embedding and the text (the prompt after the image at step 0, "
                          "the current token's embedding after that). w is at least 0.5 (the least related patch); "
                          "a tilted logit a becomes a + |a|·w, so it only rises. The same weights serve every tilted "
                          "layer and head of the step; on a step where no gate opened they were not used."))),
    help=("CAI acts only on the main row's predicting query, in the layers shown, and (with γ ≠ 1) contrasts the "
          "result with a text-only row: γ·(log p − log q) + log q after keeping tokens with p ≥ 0.1·max p. " + NOT_WHY),
    present=lambda trace: method_array(trace, "cai", "gate", ndim=2) is not None,
)
