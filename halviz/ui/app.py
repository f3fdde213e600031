"""The Blocks: inputs, one caption column per method, the debugger, trace files. Layout only;
the callbacks live in :mod:`halviz.ui.controller`."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import gradio as gr
from starlette.middleware import Middleware

from halviz.methods import REGISTRY
from halviz.methods.base import Method
from halviz.models import DEFAULT_PROMPT, LoadedModel, load_model
from halviz.models.loading import TOY_KEY
from halviz.toy.lesson import EXAMPLE_FILE as LESSON_EXAMPLE
from halviz.session import checks
from halviz.session.results import UPDATE_EVERY_S
from halviz.ui.controller import Controller, HalvizApp
from halviz.ui.layout import Layout, Slot
from halviz.ui.debugger import DebuggerPanel
from halviz.session.examples import EXAMPLES_DIR, TruthInfo, load_examples, truth_markdown
from halviz.ui.fairness import ClientGate, Limits, install as install_limits
from halviz.ui.knobs import MethodSettings
from halviz.ui.lesson import Lesson, LessonPanel
from halviz.ui.resolution import ResolutionControl
from halviz.session.model_cache import configured_models, local_models_allowed, model_choices
from halviz.session.state import TraceFiles
from halviz.ui.style import CSS, theme
from halviz.ui.whatif import MAX_WHATIF, WhatIfSlot
from halviz.ui.texts import API_NOTE, CAPTION_COLOURS, HEADER

QUEUE_SIZE = 16
# Per session and per client (network address), waiting or running: comparisons and re-runs, events of
# any kind; sessions and uploads per client per hour; the upload folder: halviz.ui.fairness.Limits.
# A page never has more than one comparison pending (its button ignores clicks while one runs).
DECODE_CONCURRENCY_ID = "decode"  # comparisons and re-runs share one pool of workers
# Comparisons decoded at once. The engine is thread-safe (per-run state in a ContextVar, weights only
# read), so two runs share one model; more than two mostly split the same CPU/GPU between them.
DEFAULT_CONCURRENCY = 2
CONCURRENCY_ENV = "HALVIZ_CONCURRENCY"
PRELOAD_ENV = "HALVIZ_PRELOAD"  # models loaded and warmed at start-up
STATE_SECONDS = 3600  # a session's traces are dropped this long after its last event (fairness.LeanSessionState.touch)
STATE_SESSIONS = Limits.state_sessions  # sessions whose state Gradio keeps (the heaviest client's oldest go first)
CACHE_SWEEP = (600, 3600)  # every 10 min, delete Gradio cache files (uploads, trace copies) older than 1 h
MAX_UPLOAD = "20mb"
DEFAULT_MAX_NEW_TOKENS = 64


def build_app(models: Sequence[str | tuple[str, str]] | None = None, default_model: str = "toy",
              loader: Callable[[str], LoadedModel] = load_model, examples_dir=EXAMPLES_DIR,
              registry: Mapping[str, type[Method]] = REGISTRY, update_every_s: float = UPDATE_EVERY_S,
              concurrency: int | None = None, allow_local: bool | None = None,
              preload: Sequence[str] = (), limits: Limits | None = None) -> gr.Blocks:
    """Build the app. ``models`` lists the picker's entries (ids, or (id, label) pairs; default
    ``$HALVIZ_MODELS`` or the toy and the known hub ids) and is the only list of models a request
    may name; ``allow_local`` (default ``$HALVIZ_ALLOW_LOCAL_MODELS``) also lets any local model
    folder load. ``loader`` loads a model by its canonical name (tests inject tiny ones);
    ``update_every_s`` throttles the caption stream (0: one update per round of tokens);
    ``concurrency`` is how many comparisons run at once (default: ``$HALVIZ_CONCURRENCY`` or 2).
    ``preload`` names models to load and warm before the app serves (``app.py`` passes
    ``$HALVIZ_PRELOAD``, default the default model). The model cache and trace files belong to this
    app only."""
    models = configured_models() if models is None else models
    allow_local = local_models_allowed() if allow_local is None else allow_local
    app = HalvizApp(models, default_model, loader, load_examples(examples_dir), registry, update_every_s,
                    allow_local=allow_local)
    # On ZeroGPU no CUDA work may run outside a request: load only (spaces places the weights).
    app.warm(preload, decode=not on_zero_gpu())
    with gr.Blocks(title="halviz · hallucination debugger", delete_cache=CACHE_SWEEP) as demo:
        # Trace files live inside Gradio's cache, so serving them needs no second copy.
        app.files = TraceFiles(parent=demo.GRADIO_CACHE)
        layout = _layout(app)
        controller = Controller(app, layout)
        controller.wire()
        if layout.lesson is not None:
            Lesson(controller, layout.lesson).wire()
        # The Evaluation view (issue 26): a results folder's table and samples, each opened as a comparison.
        from halviz.ui.evaluation_view import build as build_evaluation_view
        build_evaluation_view(controller)
    demo.halviz = app  # the server's own state (model cache, trace files), for shutdown() and the tests
    # Everything built so far lives as long as the server: keep it out of the cyclic collector's
    # scans, so the collection after each comparison (ui.memory) takes milliseconds, not seconds.
    gc.freeze()
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=concurrency or concurrency_from_env())
    decodes = [i for i, fn in demo.fns.items() if fn.concurrency_id == DECODE_CONCURRENCY_ID]
    install_limits(demo, decodes, limits)  # keyed on the client; ``limits`` (tests) replaces the defaults
    return demo


def shutdown(demo: gr.Blocks) -> None:
    """Stop the server and delete the trace folder now (not only when the interpreter exits)."""
    demo.close()
    app = getattr(demo, "halviz", None)
    if app is not None:
        app.files.close()


def on_zero_gpu(environ: Mapping[str, str] = os.environ) -> bool:
    """What the ``spaces`` package itself reads to know it runs on ZeroGPU."""
    return environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def preload_from_env(default_model: str = "toy", environ: Mapping[str, str] = os.environ) -> list[str]:
    """``$HALVIZ_PRELOAD`` (comma-separated), else the default model alone."""
    listed = [m.strip() for m in environ.get(PRELOAD_ENV, "").split(",") if m.strip()]
    return listed or [default_model]


def concurrency_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """``$HALVIZ_CONCURRENCY`` as a whole number from 1 to 16, else the default."""
    try:
        value = int(environ.get(CONCURRENCY_ENV, DEFAULT_CONCURRENCY))
    except ValueError:
        return DEFAULT_CONCURRENCY
    return min(max(value, 1), 16)


def launch_options() -> dict:
    """Keyword arguments for ``demo.launch()`` (Gradio 6 takes theme and CSS here)."""
    # halviz reads X-Forwarded-For itself ($HALVIZ_TRUSTED_PROXIES): uvicorn must not rewrite the peer.
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        logging.getLogger("halviz.ui").warning("FORWARDED_ALLOW_IPS is ignored; set HALVIZ_TRUSTED_PROXIES instead")
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    return dict(theme=theme(), css=CSS, max_file_size=MAX_UPLOAD, state_session_capacity=STATE_SESSIONS,
                app_kwargs={"middleware": [Middleware(ClientGate)]})


def _layout(app: HalvizApp) -> Layout:
    names = list(app.registry)
    default_methods = [n for n in ("vanilla", "prunehal") if n in names] or names[:1]
    gr.HTML(HEADER)
    lesson = LessonPanel.build() if lesson_available(app) else None
    start = _opening_example(app)
    truth = gr.Textbox(value=start.objects if start else "", label="Objects really in the image (ground truth)",
                       lines=1, render=False,
                       placeholder="e.g. cat, cup, dining table (COCO object names)", elem_id="hv-truth")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            image = gr.Image(value=str(start.path) if start else None, type="filepath", image_mode=None,
                             label="Image", sources=["upload", "clipboard"], height=320, elem_id="hv-image",
                             buttons=["fullscreen"])
            if app.examples:
                # Examples fill the inputs only: cached outputs would bypass the debugger's traces. Each
                # shows its name beside its picture, so "knife without fork" can be found by name.
                name = gr.Textbox(visible=False, label="example")
                gr.Examples(examples=[[str(e.path), e.objects, e.title] for e in app.examples],
                            inputs=[image, truth, name], visible_columns=[0, 2],
                            label="Examples: toy scenes (objects known exactly) and photos "
                            "(hand-checked object lists); each fills in its ground truth",
                            examples_per_page=12, cache_examples=False, elem_id="hv-examples")
        with gr.Column(scale=5, min_width=380):
            with gr.Row(equal_height=True):
                model = gr.Dropdown(choices=model_choices(app.models), value=app.default_model, label="Model",
                                    allow_custom_value=app.policy.allow_local, scale=3, elem_id="hv-model",
                                    info="hub models load on demand and need the network" +
                                         ("; a local folder works too" if app.policy.allow_local else ""))
                max_tokens = gr.Slider(1, checks.MAX_NEW_TOKENS, value=DEFAULT_MAX_NEW_TOKENS, step=1,
                                       label="Max new tokens", scale=2, elem_id="hv-max-tokens")
            # The image-token budget and what the picture becomes at it (ui/resolution.py); it rides in
            # the settings JSON as a knob, appended to the method knobs below.
            resolution = ResolutionControl.build(app, image, model)
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt", lines=1, max_lines=4, elem_id="hv-prompt")
            methods = gr.CheckboxGroup(choices=[(cls.title or n, n) for n, cls in app.registry.items()],
                                       value=default_methods, label="Methods: one caption column each",
                                       elem_id="hv-methods")
            defaults = app.method_defaults(app.default_model)
            truth.render()
            truth_note = gr.Markdown(app.truth_note(str(start.path), start.objects) if start else
                                     truth_markdown(TruthInfo(None, [])), elem_classes=["hv-note"],
                                     latex_delimiters=[], elem_id="hv-truth-note")
            settings = gr.Textbox(value="", visible=False, label="Method settings (JSON)")
            with gr.Row():
                run = gr.Button("▶ Compare", variant="primary", elem_id="hv-run", scale=3)
                stop = gr.Button("■ Stop", variant="stop", elem_id="hv-stop", scale=1)
            # Below the button: ticking every method opens one settings accordion each.
            knobs = MethodSettings.build(app.registry, default_methods, defaults)
            knobs.components.append(resolution.knob)
    status = gr.Markdown(f"Pick an image and press **Compare**. {API_NOTE}", elem_classes=["hv-status"],
                         elem_id="hv-status", label="status", latex_delimiters=[])
    slots: list[Slot] = []
    with gr.Row(equal_height=False, elem_id="hv-columns"):
        for i in range(len(names)):  # one slot per registered method, shown when used
            with gr.Column(visible=False, min_width=250, elem_classes=["hv-card"]) as column:
                header = gr.Markdown(elem_classes=["hv-card-title"], label=f"column {i + 1} method")
                caption = gr.HighlightedText(
                    label=f"column {i + 1} caption", show_label=False, color_map=CAPTION_COLOURS, combine_adjacent=False, show_legend=False,
                    show_inline_category=False, elem_id=f"hv-caption-{i}", elem_classes=["hv-caption"])
                summary = gr.Markdown(elem_classes=["hv-summary"], elem_id=f"hv-summary-{i}", label=f"column {i + 1} summary",
                                      latex_delimiters=[])
            slots.append(Slot(column, header, caption, summary))
        whatif_slots = [WhatIfSlot.build(i) for i in range(MAX_WHATIF)]  # "re-run with this intervention"
    with gr.Accordion("Run summary as JSON (what /compare returns last)", open=False):
        summary_json = gr.JSON(label="summary", elem_id="hv-json", show_label=False)
    panel = DebuggerPanel.build()
    with gr.Row(equal_height=False):
        trace_files = gr.File(label="Trace files (.npz + .json per column)", file_count="multiple",
                              interactive=False, elem_id="hv-trace-files")
        upload = gr.File(label="Replay a saved trace (.npz): no model needed", file_types=[".npz"],
                         file_count="single", elem_id="hv-trace-upload")
    return Layout(
        image=image, prompt=prompt, methods=methods, max_tokens=max_tokens, truth=truth, model=model,
        settings=settings, knobs=knobs, truth_note=truth_note, run=run, stop=stop, status=status, slots=slots,
        summary_json=summary_json, panel=panel, trace_files=trace_files, upload=upload,
        runs=gr.State({}, time_to_live=STATE_SECONDS), slot_methods=gr.State([], time_to_live=STATE_SECONDS),
        live=gr.State([], time_to_live=STATE_SECONDS),
        knob_defaults=gr.State(defaults.shown(app.registry), time_to_live=STATE_SECONDS),
        whatif_slots=whatif_slots, whatif=gr.State([], time_to_live=STATE_SECONDS), lesson=lesson,
    )


def lesson_available(app: HalvizApp) -> bool:
    """The lesson needs the toy model and its knife scene among the examples."""
    return TOY_KEY in app.policy.allowed and any(e.path.name == LESSON_EXAMPLE for e in app.examples)


def _opening_example(app: HalvizApp):
    """The example shown when the page opens: for the toy model the toy scene marked "opening"
    (a prior-pair trap), for other models the first photo."""
    if not app.examples:
        return None
    toy = app.default_model.strip().lower() in ("toy", "toy-llava")
    fitting = [e for e in app.examples if (e.trust == "exact") == toy] or app.examples
    return next((e for e in fitting if e.opening), fitting[0])
