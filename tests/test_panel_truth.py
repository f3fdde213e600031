"""Panels that must not contradict what they show (issue 24, item 3): each figure is checked against the
data it is drawn from, computed here independently (hand-made traces, and traces of the bundled toy
model decoded with the methods whose panels they are)."""

import numpy as np
import plotly.graph_objects as go
import pytest

from halviz import viz
from test_viz import make_trace


def test_entropy_panel_keeps_lambda_on_its_own_axis():
    trace = make_trace()
    fig = viz.entropy_figure(trace, "mean", step=1)
    lam = next(t for t in fig.data if t.name.startswith("KVSmooth λ"))
    assert lam.yaxis == "y2"
    assert "λ" in fig.layout.yaxis2.title.text and "entropy" not in fig.layout.yaxis2.title.text
    assert fig.layout.yaxis.title.text == "entropy (nats)"
    assert tuple(fig.layout.yaxis2.range) == (0, 1.05)  # λ lies in [0, 1]
    # Without λ there is no right axis at all.
    del trace.arrays["method/kvsmooth/lambda"]
    assert "yaxis2" not in viz.entropy_figure(trace, "mean", step=1).to_dict()["layout"]


def test_candidates_title_states_this_steps_margin():
    trace = make_trace()
    trace.arrays["top_probs"][1] = [0.91, 0.06, 0.02, 0.005, 0.005]
    for step in (0, 1):
        probs = trace.arrays["top_probs"][step].astype(np.float64)
        text = viz.candidates_figure(trace, step).layout.title.text
        assert f"margin {probs[0] - probs[1]:.2f}" in text  # 0.30 at step 0, 0.85 at step 1
        assert f"p = {probs[0]:.2f}" in text and f"runner-up  dog {probs[1]:.2f}" in text


def test_candidates_help_claims_no_typical_margin():
    from halviz.ui.texts import HELP

    assert "small margin" not in HELP["candidates"].replace("a small margin is", "")
    assert "often" not in HELP["candidates"] and "margin" in HELP["candidates"]


def test_help_texts_shown_as_html_carry_no_markdown():
    """The debugger puts each help text inside an HTML <div>, where Markdown is not read: ``**x**`` would
    print its asterisks (as "**View**" and "**designed**" did)."""
    from halviz.ui.texts import HELP
    from halviz.ui.whatif import PATCH_TOKENS_HELP

    for key, text in {**HELP, "patch_tokens": PATCH_TOKENS_HELP}.items():
        assert "**" not in text and "__" not in text and "`" not in text, key
        assert text.count("<b>") == text.count("</b>"), key
