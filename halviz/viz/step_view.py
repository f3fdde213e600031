"""Every figure the debugger draws for one trace at one step, by name: the page draws these, the
"Save figures" button writes these, and a notebook can call the same function. No Gradio, no torch."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from halviz.trace import Trace
from halviz.viz.curves import entropy_figure
from halviz.viz.grid_views import PRIMARY
from halviz.viz.method_data import kept_masks
from halviz.viz.method_figures import candidates_figure
from halviz.viz.panels import PANELS
from halviz.viz.patches import attention_overlay, kept_mask_figure
from halviz.viz.sinks import segment_share_figure, top_keys_figure

STEP_FIGURES = ("overlay", "mask", "candidates", "entropy", "shares", "top_keys")


def step_figures(trace: Trace, step: int, layer: int | str = "mean", head: int | str = "mean",
                 image: Any = None, view: str = PRIMARY) -> dict[str, go.Figure | None]:
    """The debugger's own figures at ``step`` (named as in :data:`STEP_FIGURES`; None where the trace
    has nothing to draw, e.g. no kept-token mask without a pruning method). ``image`` is the picture
    the patch maps are drawn on (None: the grid alone); ``view`` the grid they draw."""
    masks = kept_masks(trace, step, layer)
    mask = (kept_mask_figure(trace, masks[0].kept, masks[0].title, image, masks[0].details, view=view)
            if masks else None)
    return {
        "overlay": attention_overlay(trace, step, layer, head, image, view=view),
        "mask": mask,
        "candidates": candidates_figure(trace, step),
        "entropy": entropy_figure(trace, step, layer),
        "shares": segment_share_figure(trace, step, layer),
        "top_keys": top_keys_figure(trace, step, layer),
    }


def panel_figures(trace: Trace, step: int) -> dict[str, go.Figure]:
    """The figures of every method panel shown for ``trace`` at ``step``, by their page id."""
    figures: dict[str, go.Figure] = {}
    for panel in PANELS:
        if not panel.shown_for(trace):
            continue
        for figure in panel.figures:
            drawn = figure.figure(trace, step)
            if drawn is not None:
                figures[figure.elem_id] = drawn
    return figures
