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
