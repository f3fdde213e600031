"""The debugger's "what if": choose patches, a head or the sink on clickable maps, re-run the column
with that intervention beside the original, and look at one patch's attention over the tokens.

Layout and drawing only; the re-run itself is :meth:`halviz.ui.whatif_callbacks.WhatIfCallbacks.rerun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from halviz import viz
from halviz.trace import Trace
from halviz.session.selection import Selection, as_selection, describe
from halviz.session.state import RunEntry
from halviz.ui.style import sized_plot
from halviz.ui.texts import CAPTION_COLOURS
from halviz.viz.patch_tokens import patch_token_figure, patch_token_heads_figure
from halviz.viz.pickers import head_picker, head_picker_image, head_scores, patch_picker, patch_picker_image

MAX_WHATIF = 3  # re-run columns shown at once; a fourth replaces the oldest
FIRST_CHANGE = "first change"  # the caption label of a re-run's first token that differs from the original
TOGGLE = "add or remove the patch"
GROW_BOX = "fill the box from the chosen patches to this one"
INSPECT = "only inspect the patch (patch → token view)"

WHATIF_INTRO = (
    "Ask the model what happens if it could not look somewhere. **Click patches** on the map to choose the "
    "patches to mask (blue outline; a second click takes one out, or switch to box mode to fill a box), "
    "**click cells** of the head map to choose heads (again: a second click takes one out; or use the head shown "
    "above), tick **remove the sink**, then press **Re-run with this intervention**: the same image, prompt and model "
    "are decoded again with this column's methods plus your intervention, in a new column beside the "
    "original, diffed token by token.")
PATCH_TOKENS_HELP = (
    "Every cell is one step (x: the token that step's query predicted) and one layer (or head): the attention "
    "weight that query gave the chosen patch, i.e. its share (0–1) of the query's whole softmax. The green patch "
    "on the map is the one shown. Attention shows where the model looked, not why it answered.")


@dataclass
class WhatIfSlot:
    """One re-run column beside the method columns."""

    column: gr.Column
    header: gr.Markdown
    caption: gr.HighlightedText
    summary: gr.Markdown
    open: gr.Button

    @classmethod
    def build(cls, index: int) -> "WhatIfSlot":
        with gr.Column(visible=False, min_width=250, elem_classes=["hv-card", "hv-whatif"],
                       elem_id=f"hv-whatif-{index}") as column:
            header = gr.Markdown(elem_classes=["hv-card-title"], elem_id=f"hv-whatif-header-{index}")
            caption = gr.HighlightedText(
                show_label=False, label=f"re-run {index + 1} caption", color_map=CAPTION_COLOURS,
                combine_adjacent=False, show_legend=False, show_inline_category=False,
                elem_id=f"hv-whatif-caption-{index}", elem_classes=["hv-caption"])
            summary = gr.Markdown(elem_classes=["hv-summary"], elem_id=f"hv-whatif-summary-{index}",
                                  latex_delimiters=[])
            button = gr.Button("Open in the debugger", size="sm", elem_id=f"hv-whatif-open-{index}")
        return cls(column, header, caption, summary, button)

    @property
    def parts(self) -> list:
        return [self.column, self.header, self.caption, self.summary, self.open]


@dataclass
class InterventionPanel:
    """The debugger's intervention pickers, the re-run button and the patch → token view."""

    selection: gr.State
    mode: gr.Radio
    patches: gr.Image
    clear: gr.Button
    heads: gr.Image
    clear_heads: gr.Button
    heads_note: gr.Markdown
    take_head: gr.Button
    scale: gr.Slider
    sink: gr.Checkbox
    first_layer: gr.Number
    last_layer: gr.Number
    chosen: gr.Markdown
    rerun: gr.Button
    status: gr.Markdown
    token_layers: gr.Plot
    token_heads: gr.Plot

    @classmethod
    def build(cls) -> "InterventionPanel":
        gr.Markdown("### What if: intervene and re-run", elem_classes=["hv-subsection"])
        gr.Markdown(WHATIF_INTRO, elem_classes=["hv-note"])
        selection = gr.State(Selection())
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=300):
                # Labels as Markdown above: a floating block label would cover the top row of patches.
                gr.Markdown("**Click patches**: the heatmap of this step, layer and head; blue outline = patches "
                            "to mask, green = the patch in the patch → token view", elem_classes=["hv-note"])
                patches = gr.Image(label="patch picker", show_label=False, type="pil", interactive=False, buttons=[],
                                   elem_id="hv-patch-picker", height=400)
                mode = gr.Radio([TOGGLE, GROW_BOX, INSPECT], value=TOGGLE, label="A click on the map will",
                                elem_id="hv-click-mode")
                clear = gr.Button("Clear the patches", size="sm", elem_id="hv-clear-box")
            with gr.Column(scale=4, min_width=280):
                gr.Markdown("**Click heads**: layers down (L0 at the top), heads across; blue = the chosen heads",
                            elem_classes=["hv-note"])
                heads = gr.Image(label="head picker", show_label=False, type="pil", interactive=False, buttons=[],
                                 elem_id="hv-head-picker", height=300)
                heads_note = gr.Markdown(elem_classes=["hv-note"], elem_id="hv-head-note")
                with gr.Row():
                    take_head = gr.Button("Add the head shown above (Layer and Head pickers)", size="sm",
                                          elem_id="hv-take-head")
                    clear_heads = gr.Button("Clear the heads", size="sm", elem_id="hv-clear-heads")
                scale = gr.Slider(0.0, 2.0, value=0.0, step=0.1, label="Chosen heads' outputs × (0 silences them)",
                                  elem_id="hv-head-scale")
                sink = gr.Checkbox(value=False, label="Remove the sink: no query may attend to BOS",
                                   elem_id="hv-remove-sink")
                with gr.Row():
                    first_layer = gr.Number(value=0, precision=0, minimum=0, label="Mask and sink removal from layer",
                                            elem_id="hv-first-layer")
                    last_layer = gr.Number(value=-1, precision=0, minimum=-1, label="to layer (−1 = the last)",
                                           elem_id="hv-last-layer")
        chosen = gr.Markdown(describe(Selection()), elem_id="hv-selection", latex_delimiters=[])
        with gr.Row():
            rerun = gr.Button("↻ Re-run with this intervention", variant="primary", elem_id="hv-rerun", scale=2)
        status = gr.Markdown(elem_id="hv-rerun-status", latex_delimiters=[])
        gr.Markdown("### Patch → token: which steps attended to the green patch", elem_classes=["hv-subsection"])
        with gr.Row(equal_height=False):
            token_layers = gr.Plot(show_label=False, elem_id="hv-patch-tokens")
            token_heads = gr.Plot(show_label=False, elem_id="hv-patch-token-heads")
        gr.Markdown(f"<div class='hv-help'><b>How to read this.</b> {PATCH_TOKENS_HELP}</div>")
        return cls(selection, mode, patches, clear, heads, clear_heads, heads_note, take_head, scale, sink, first_layer,
                   last_layer, chosen, rerun, status, token_layers, token_heads)

    # ---- what the pickers and the patch → token view show -------------------------------------------
    @property
    def options(self) -> list:
        """The controls whose values the selection keeps (see ``Controller.set_options``)."""
        return [self.sink, self.scale, self.first_layer, self.last_layer]

    @property
    def view_outputs(self) -> list:
        return [self.patches, self.heads, self.heads_note, self.chosen, self.token_layers, self.token_heads]

    def view(self, entry: RunEntry | None, step: int, layer: Any, head: Any, selection: Any) -> dict:
        """Every picture of the panel for ``entry`` at ``step`` (layer/head as the debugger's pickers)."""
        selection = as_selection(selection)
        if entry is None:
            return {self.patches: None, self.heads: None, self.heads_note: "", self.chosen: describe(selection),
                    self.token_layers: gr.Plot(value=None), self.token_heads: gr.Plot(value=None)}
        trace = entry.trace
        scores, meaning = head_scores(trace, step)
        grid = tuple(int(v) for v in trace.meta.get("grid", (0, 0)))
        inspected = selection.inspected or most_attended_patch(trace, step, layer, head)
        head_layer = patch_head_layer(trace, layer, selection)
        return {
            self.patches: patch_picker_image(trace, map_values(trace, step, layer, head), entry.image,
                                             selection.patches, inspected),
            self.heads: head_picker_image(scores, selection.heads),
            self.heads_note: f"Colour: {meaning} (grey: not recorded). {scores.shape[0]} layers × "
                             f"{scores.shape[1]} heads.",
            self.chosen: describe(selection, grid),
            self.token_layers: sized_plot(patch_token_figure(trace, *inspected, step) if inspected else
                                     viz.message_figure("This trace has no recorded attention.")),
            self.token_heads: sized_plot(patch_token_heads_figure(trace, *inspected, head_layer, step) if inspected
                                    else viz.message_figure("This trace has no recorded attention.")),
        }


def map_values(trace: Trace, step: int, layer: Any, head: Any) -> np.ndarray | None:
    """The values the patch picker colours: the overlay's (``viz.patch_values``), None without them."""
    if not trace.has_attention or not trace.num_steps:
        return None
    try:
        return viz.patch_values(trace, step, layer, head)
    except ValueError:  # a single head asked of a layer without head data: fall back to the head mean
        return viz.patch_values(trace, step, layer, "mean")


def most_attended_patch(trace: Trace, step: int, layer: Any, head: Any) -> tuple[int, int] | None:
    values = map_values(trace, step, layer, head)
    if values is None or not np.isfinite(values).any():
        return None
    cols = int(trace.meta["grid"][1])
    return tuple(int(v) for v in divmod(int(np.nanargmax(values)), cols))  # type: ignore[return-value]


def patch_head_layer(trace: Trace, layer: Any, selection: Selection) -> int:
    """The layer the per-head patch → token figure shows: the debugger's layer, else the chosen head's,
    else the last layer with single heads recorded."""
    recorded = [int(l) for l in trace.meta.get("head_layers") or []]
    for candidate in (layer, *sorted(l for l, _ in selection.heads)):
        if isinstance(candidate, int) and candidate in recorded:
            return candidate
    return recorded[-1] if recorded else 0


def clicked_patch(trace: Trace, index: Any) -> tuple[int, int] | None:
    """The (row, col) patch under a click on the patch picker (``SelectData.index`` = [x, y])."""
    point = _point(index)
    return None if point is None else patch_picker(trace).patch_at(*point)


def clicked_head(trace: Trace, index: Any) -> tuple[int, int] | None:
    """The (layer, head) under a click on the head map."""
    point = _point(index)
    if point is None:
        return None
    return head_picker(int(trace.meta.get("num_layers", 0)), int(trace.meta.get("num_heads", 0))).head_at(*point)


def _point(index: Any) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in index)
    except (TypeError, ValueError):
        return None
    return (x, y) if np.isfinite(x) and np.isfinite(y) else None


def whatif_spans(texts: list[str], truth, diverges_at: int | None, ends_with_eos: bool) -> list[tuple[str, str | None]]:
    """A re-run's caption, one span per step (so a span's index is its step), object mentions labelled
    as in every column, and the first step that differs from the original marked."""
    from halviz.session.results import mention_ranges

    spans = viz.token_spans(texts, mention_ranges("".join(texts), truth), None, ends_with_eos)
    if diverges_at is not None and 0 <= diverges_at < len(spans):
        spans[diverges_at] = (spans[diverges_at][0], FIRST_CHANGE)
    return spans

