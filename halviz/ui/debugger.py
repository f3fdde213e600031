"""The visual debugger: every panel of one recorded trace at one step, layer and head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from halviz import viz
from halviz.trace import Trace
from halviz.session.budget import check_kept
from halviz.session.checks import InputError
from halviz.session.results import mention_ranges
from halviz.session.escaping import markdown_text as md
from halviz.session.state import RunEntry, Runs
from halviz.ui.pickers import EXPIRED, SessionDropdown, SessionRadio, SessionSlider
from halviz.ui.method_panels import MethodBox, how_to_read
from halviz.ui.style import sized_plot
from halviz.ui.texts import CAPTION_COLOURS, DEBUGGER_INTRO, HELP

EMPTY_DEBUGGER = ("**Nothing to inspect yet.** Run a comparison above (or replay a saved trace at the bottom of "
                  "the page), then click any word of a caption to open its step here.")
from halviz.session.selection import selection_of
from halviz.ui.whatif import InterventionPanel
from halviz.viz import lens as lens_viz
from halviz.viz.common import index_ranges
from halviz.viz.panels import PANELS
from halviz.viz.step_view import STEP_FIGURES, step_figures


def parse_choice(value: Any) -> int | str:
    """Dropdown value → "mean" or an int (anything odd falls back to "mean")."""
    try:
        return "mean" if value in (None, "", "mean") else int(value)
    except (TypeError, ValueError):
        return "mean"


def in_model(trace: Trace, layer: Any, head: Any) -> tuple[int | str, int | str]:
    """The Layer and Head pickers' values as choices this trace has: a layer or head outside its model
    (a picker of another session's page, a hand-made request) reads as the mean."""
    layer, head = parse_choice(layer), parse_choice(head)
    if layer != "mean" and not 0 <= layer < int(trace.meta.get("num_layers", 0)):
        layer = "mean"
    if head != "mean" and not 0 <= head < int(trace.meta.get("num_heads", 0)):
        head = "mean"
    return layer, head


def parse_view(value: Any) -> str:
    """Dropdown value → a view name (the figures refuse names the trace lacks with a message)."""
    return value if isinstance(value, str) and value else viz.PRIMARY


def view_picker(trace: Trace) -> gr.Dropdown:
    """The View picker, reset to the primary grid; shown only where the trace has several grids."""
    choices = viz.view_choices(trace)
    return gr.Dropdown(choices=choices, value=viz.PRIMARY, visible=len(choices) > 1)


def shown_layer_head(trace: Trace, layer: Any, head: Any) -> tuple[int | str, int | str]:
    """The picked layer and head as drawn: within the model, and the head mean where the layer has no
    single-head record."""
    layer, head = in_model(trace, layer, head)
    return layer, head if layer != "mean" and layer in head_layers(trace) else "mean"


def head_layers(trace: Trace) -> list[int]:
    return [int(l) for l in trace.meta.get("head_layers") or []]


def help_text(key: str) -> gr.Markdown:
    return how_to_read(HELP[key])


@dataclass
class DebuggerPanel:
    """The debugger's components; its methods return ``{component: update}`` dicts for the callbacks."""

    choice: gr.Radio
    info: gr.Markdown
    empty: gr.Markdown  # what the debugger says before there is any trace to show
    body: gr.Column  # everything else, hidden until there is a trace
    caption: gr.HighlightedText
    step: gr.Slider
    layer: gr.Dropdown
    head: gr.Dropdown
    view: gr.Dropdown
    step_info: gr.Markdown
    overlay: gr.Plot
    mask_box: gr.Column
    mask: gr.Plot
    candidates: gr.Plot
    entropy: gr.Plot
    shares: gr.Plot
    top_keys: gr.Plot
    methods: list[MethodBox]  # one per registered method panel (halviz.viz.panels)
    whatif: InterventionPanel
    figure_format: gr.Dropdown  # "Save figures": the format of the files
    save_figures: gr.Button
    figure_files: gr.File  # the zip of this step's figures; hidden again when the view changes
    lens_note: gr.Markdown  # the logit lens: what was recorded and which column is the reference
    lens_heat: gr.Plot
    lens_words: gr.Plot

    @classmethod
    def build(cls) -> "DebuggerPanel":
        gr.Markdown("## Look inside: the visual debugger", elem_classes=["hv-section"])
        gr.Markdown(DEBUGGER_INTRO, elem_classes=["hv-note"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=280):
                choice = SessionRadio(label="Trace", choices=[], elem_id="hv-trace-choice")
            with gr.Column(scale=3, min_width=320):
                info = gr.Markdown(elem_classes=["hv-trace-info"], latex_delimiters=[], elem_id="hv-trace-info")
        empty = gr.Markdown(EMPTY_DEBUGGER, elem_classes=["hv-note"], elem_id="hv-debugger-empty")
        with gr.Column(visible=False, elem_id="hv-debugger-body") as body:  # shown once there is a trace
            caption = gr.HighlightedText(
                label="Caption, one span per token: click a token to jump to its step",
                color_map=CAPTION_COLOURS, combine_adjacent=False, show_legend=False, show_inline_category=False,
                elem_id="hv-debug-caption", elem_classes=["hv-caption"])
            with gr.Row(equal_height=True):
                step = SessionSlider(0, 1, value=0, step=1, label="Step", scale=4, interactive=False,
                                     elem_id="hv-step")
                layer = SessionDropdown(choices=[("all layers (mean)", "mean")], value="mean", label="Layer",
                                        scale=1, min_width=190, elem_id="hv-layer")
                head = SessionDropdown(choices=[("all heads (mean)", "mean")], value="mean", label="Head", scale=1,
                                       min_width=190, elem_id="hv-head")
                view = SessionDropdown(choices=[("primary grid", viz.PRIMARY)], value=viz.PRIMARY, label="View",
                                       scale=1, visible=False, elem_id="hv-view",
                                       info="which grid of image tokens the attention and kept-token maps draw")
            step_info = gr.Markdown(elem_classes=["hv-step-info"], latex_delimiters=[])
            with gr.Row(equal_height=True, elem_id="hv-save-figures"):
                figure_format = gr.Dropdown(choices=[("PNG", "png"), ("SVG", "svg"), ("PDF", "pdf")], value="png",
                                            label="Figure format", scale=1, min_width=140, elem_id="hv-figure-format")
                save_figures = gr.Button("Save this step's figures", scale=1, min_width=200,
                                         elem_id="hv-save-figures-button")
                figure_files = gr.File(label="Figures of this step (zip)", visible=False, scale=2,
                                       elem_id="hv-figure-files")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    overlay = gr.Plot(label="Where the model looked", elem_id="hv-overlay", show_label=False)
                    help_text("overlay")
                    with gr.Column(visible=False) as mask_box:
                        mask = gr.Plot(label="Kept and removed image tokens", show_label=False, elem_id="hv-mask")
                        help_text("mask")
                with gr.Column(scale=4):
                    candidates = gr.Plot(label="Next-token candidates", show_label=False, elem_id="hv-candidates")
                    help_text("candidates")
                    entropy = gr.Plot(label="Attention entropy", show_label=False, elem_id="hv-entropy")
                    help_text("entropy")
            whatif = InterventionPanel.build()
            gr.Markdown("### Attention sinks", elem_classes=["hv-subsection"])
            with gr.Row(equal_height=False):
                shares = gr.Plot(label="Segment shares", show_label=False, elem_id="hv-shares")
                top_keys = gr.Plot(label="Most-attended tokens", show_label=False, elem_id="hv-topkeys")
            help_text("sinks")
            gr.Markdown("### Logit lens: in which layer the word was decided", elem_classes=["hv-subsection"])
            lens_note = gr.Markdown(elem_id="hv-lens-note", latex_delimiters=[])
            lens_heat = gr.Plot(label="Logit lens", show_label=False, elem_id="hv-lens")
            lens_words = gr.Plot(label="Logit lens: top words per layer", show_label=False, elem_id="hv-lens-words")
            how_to_read(lens_viz.HELP)
            methods = [MethodBox.build(panel) for panel in PANELS]
        return cls(choice, info, empty, body, caption, step, layer, head, view, step_info, overlay, mask_box, mask, candidates,
                   entropy, shares, top_keys, methods, whatif, figure_format, save_figures, figure_files,
                   lens_note, lens_heat, lens_words)

    def method_box(self, method: str) -> MethodBox:
        """The panel of method ``method`` (its registry name)."""
        return next(m for m in self.methods if m.panel.method == method)

    # ---- component lists for event wiring -------------------------------------------------------
    @property
    def step_outputs(self) -> list:
        return [self.caption, self.head, self.step_info, self.overlay, self.mask_box, self.mask,
                self.candidates, self.entropy, self.shares, self.top_keys, self.figure_files,
                self.lens_note, self.lens_heat, self.lens_words,
                *(c for m in self.methods for c in m.step_outputs), *self.whatif.view_outputs]

    @property
    def trace_outputs(self) -> list:
        return [self.choice, self.info, self.empty, self.body, self.step, self.layer, self.view,
                *(c for m in self.methods for c in m.trace_outputs),
                self.whatif.selection, self.whatif.rerun, self.whatif.status,
                *self.whatif.options, *self.step_outputs]

    # ---- rendering ------------------------------------------------------------------------------
    def show(self, runs: Runs | None, key: str | None, step: int = 0) -> dict:
        """Everything for the trace ``key`` at ``step``, layer and head reset to the means, the view to
        the primary grid, the intervention pickers showing the trace's own interventions."""
        runs = still_held(runs, key)
        choices = [(entry.title, k) for k, entry in runs.items()]
        if key not in runs:
            key = next(iter(runs), None)
        if key is None:
            return {self.choice: gr.Radio(choices=[], value=None), self.info: "",
                    self.empty: gr.Markdown(visible=True), self.body: gr.Column(visible=False)}
        entry = check_kept(runs[key])  # a dropped entry: one sentence for its owner
        trace = entry.trace
        steps = trace.num_steps
        step = int(min(max(step, 0), max(steps - 1, 0)))
        if steps > 1:
            slider = gr.Slider(minimum=0, maximum=steps - 1, value=step, step=1, interactive=True,
                               label=f"Step (0–{steps - 1}): the query predicting generated token i")
        else:  # a Slider whose maximum equals its minimum raises in Gradio 6
            slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False,
                               label="Step (this trace has a single step)")
        layers = int(trace.meta.get("num_layers", 0))
        layer_options = [("all layers (mean)", "mean")] + [(f"layer {l}", str(l)) for l in range(layers)]
        # The pickers start from this trace's own interventions (none for a plain column).
        chosen = selection_of(trace.meta.get("methods"), tuple(int(v) for v in trace.meta.get("grid", (0, 0))))
        updates = {
            self.choice: gr.Radio(choices=choices, value=key),
            self.info: trace_info(entry),
            self.empty: gr.Markdown(visible=False),
            self.body: gr.Column(visible=True),
            self.step: slider,
            self.layer: gr.Dropdown(choices=layer_options, value="mean"),
            self.view: view_picker(trace),
            **{c: u for m in self.methods for c, u in m.show(trace).items()},
            self.whatif.selection: chosen,
            # Only a column decoded in this session has an image and a model behind it to decode again.
            self.whatif.rerun: gr.Button(interactive=rerunnable(entry)),
            self.whatif.status: "" if rerunnable(entry) else REPLAY_RERUN_NOTE,
            self.whatif.sink: chosen.sink,
            self.whatif.scale: chosen.head_scale,
            self.whatif.first_layer: chosen.first_layer,
            self.whatif.last_layer: chosen.last_layer,
        }
        updates.update(self.at_step(runs, key, step, "mean", "mean", chosen, viz.PRIMARY))
        return updates

    def whatif_view(self, runs: Runs | None, key: str | None, step: Any, layer: Any, head: Any,
                    selection: Any = None) -> dict:
        """Only the intervention pickers and the patch → token view (what a click on them redraws)."""
        if key not in still_held(runs, key):
            return {}
        trace = check_kept(runs[key]).trace
        layer, head = shown_layer_head(trace, layer, head)
        return self.whatif.view(runs[key], viz.common.clamp_step(trace, int(step or 0)), layer, head, selection)

    def at_step(self, runs: Runs | None, key: str | None, step: Any, layer: Any, head: Any,
                selection: Any = None, view: Any = None) -> dict:
        """The step-dependent panels (cheap: what the slider and pickers redraw); ``view`` is the grid
        the patch maps draw (the overlay and the kept mask)."""
        if key not in still_held(runs, key):
            return {}
        entry = check_kept(runs[key])
        trace = entry.trace
        step = viz.common.clamp_step(trace, int(step or 0))
        layer, head = in_model(trace, layer, head)
        recorded = head_layers(trace)
        heads_here = layer != "mean" and layer in recorded
        if not heads_here:
            head = "mean"
        head_options = [("all heads (mean)", "mean")] + (
            [(f"head {h}", str(h)) for h in range(int(trace.meta.get("num_heads", 0)))] if heads_here else [])
        head_info = (f"single heads recorded for layers {index_ranges(recorded)} only" if recorded
                     else "no single-head data recorded")
        figures = step_figures(trace, step, layer, head, entry.image, parse_view(view))
        return {
            self.caption: caption_tokens(entry, step),
            self.head: gr.Dropdown(choices=head_options, value=str(head), interactive=heads_here, info=head_info),
            self.step_info: step_summary(trace, step, layer),
            self.mask_box: gr.Column(visible=figures["mask"] is not None),
            **{getattr(self, name): sized_plot(figures[name]) for name in STEP_FIGURES},
            self.figure_files: gr.File(value=None, visible=False),  # a saved zip was of the last view
            **{c: u for m in self.methods for c, u in m.at_step(trace, step).items()},
            **self.whatif.view(entry, step, layer, head, selection),
            **self.lens_at_step(runs, key, step),
        }

    def lens_at_step(self, runs: Runs, key: str, step: int) -> dict:
        """The lens of trace ``key`` at ``step``, beside a reference column of the same comparison."""
        entry = runs[key]
        reference = lens_reference(runs, key)
        names = (entry.title, reference.title if reference is not None else "")
        other = reference.trace if reference is not None else None
        note = lens_viz.lens_summary(entry.trace)
        if lens_viz.has_lens(entry.trace):
            note += (f" Beside it: **{md(reference.title)}**, the reference column of the same picture and prompt."
                     if reference is not None else " No other column of this picture and prompt has a lens to compare.")
        return {self.lens_note: note,
                self.lens_heat: sized_plot(lens_viz.lens_heatmap_figure(entry.trace, step, other, names)),
                self.lens_words: sized_plot(lens_viz.lens_words_figure(entry.trace, step, other, names))}


def lens_reference(runs: Runs, key: str) -> RunEntry | None:
    """The column the lens panel draws beside trace ``key``: the first other held column with a lens
    decoded by the same model from the same picture and prompt (the comparison's first column, or its
    second when ``key`` is the first)."""
    meta = runs[key].trace.meta
    same = ("model", "prompt", "image_digest", "image_size")
    for other_key, entry in runs.items():
        if other_key == key or entry.dropped or not lens_viz.has_lens(entry.trace):
            continue
        if all(entry.trace.meta.get(k) == meta.get(k) for k in same):
            return entry
    return None


def still_held(runs: Runs | None, key: Any) -> Runs:
    """The session's runs; a page that names a trace (``key``) to a session holding none has outlived
    its state (expired, or dropped to make room): one sentence, never Gradio's choice check."""
    if not runs and key not in (None, ""):
        raise InputError(EXPIRED)
    return runs or {}


REPLAY_RERUN_NOTE = ("Re-running needs the picture and the model: this trace was replayed from a file, so "
                     "put its picture in the Image box and press **Compare** to decode it here first.")


def rerunnable(entry: RunEntry) -> bool:
    return entry.source is not None and bool(entry.model)


def caption_tokens(entry: RunEntry, step: int) -> list[tuple[str, str | None]]:
    trace = entry.trace
    ranges = mention_ranges(trace.caption, entry.truth)
    return viz.token_spans(trace.texts, ranges, step, trace.meta.get("finish_reason") == "eos")


def trace_info(entry: RunEntry) -> str:
    """What the trace is, in Markdown; every string in it comes from a file, so all are escaped."""
    meta = entry.trace.meta
    methods = meta.get("methods") or []
    described = ", ".join(
        f"{m.get('title') or m.get('name')} ({', '.join(f'{k}={v}' for k, v in (m.get('params') or {}).items())})"
        for m in methods) or "plain greedy"
    rows, cols = meta.get("grid", ["?", "?"])
    truth = entry.truth
    truth_text = f"{', '.join(sorted(truth.objects)) or 'none'} ({truth.trust})" if truth else "none given"
    lines = [
        f"**{md(entry.title)}** · model {md(meta.get('model'))} ({md(meta.get('family', '?'))}, "
        f"{md(meta.get('num_layers'))} layers × {md(meta.get('num_heads'))} heads) · image tokens {md(rows)}×{md(cols)}",
        f"methods: {md(described)} · {entry.trace.num_steps} steps, ended by {md(meta.get('finish_reason'))} · "
        f"trace {entry.trace.nbytes() / 2**20:.1f} MB",
        f"prompt: “{md(meta.get('prompt', ''))}”",
        f"ground truth: {md(truth_text)}",
    ]
    return "  \n".join(lines)


def step_summary(trace: Trace, step: int, layer: int | str) -> str:
    """One line of numbers about this step, so the figures' colours have a scale."""
    parts = [f"**Step {step}** of 0–{max(trace.num_steps - 1, 0)} predicts {viz.step_token(trace, step)}"]
    if "top_probs" in trace.arrays and step < len(trace.arrays["top_probs"]):
        probs = trace.arrays["top_probs"][step]
        parts.append(f"p = {float(probs[0]):.2f}" + (f" (runner-up {float(probs[1]):.2f})" if len(probs) > 1 else ""))
    if trace.has_attention:
        shares = trace.arrays["segment_share"][step].astype(np.float64)
        segments = list(trace.meta.get("segments") or [])
        where = "mean of layers" if layer == "mean" else f"layer {layer}"
        row = shares.mean(0) if layer == "mean" else shares[int(layer)]
        if "image" in segments:
            parts.append(f"image tokens got {row[segments.index('image')]:.0%} of attention ({where})")
        if "bos" in segments:
            parts.append(f"BOS {row[segments.index('bos')]:.0%}")
    return " · ".join(parts)
