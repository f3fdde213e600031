"""Callbacks and their wiring. Every failure reaches the user as a raised ``gr.Error`` sentence;
details go to the server log, never a stack trace to the page."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import gradio as gr
import numpy as np

from halviz.methods.base import Method
from halviz.models import LoadedModel, ModelLoadError
from halviz.trace import Trace, TraceFormatError
from halviz.ui import inputs as checks
from halviz.ui.compare import UPDATE_EVERY_S, ColumnResult, Progress, column_result, with_divergence
from halviz.ui.gpu import gpu_decoder
from halviz.ui.debugger import DebuggerPanel
from halviz.ui.escaping import html_text, markdown_text
from halviz.ui.examples import Example, TruthInfo, resolve_truth, truth_markdown
from halviz.ui.knobs import MethodSettings
from halviz.ui.model_defaults import ModelDefaults, model_defaults
from halviz.models.loading import TOY_KEY
from halviz.toy.scenes import looks_like_toy_scene
from halviz.ui.models import DEFAULT_MODELS, ModelCache, ModelPolicy
from halviz.ui.state import (MAX_SESSION_UPLOAD_BYTES, RunEntry, Runs, TraceFiles, display_copy, keep_uploads,
                             truth_from_meta, truth_to_meta)
from halviz.ui.memory import release_memory
from halviz.viz import span_offset, step_at_offset

log = logging.getLogger("halviz.ui")
MAX_ERROR_CHARS = 400
UPLOAD_PREFIX = "upload:"


def ui_error(message: str, title: str = "Error") -> gr.Error:
    """A ``gr.Error`` whose sentence is shown literally: toasts render HTML, so it is escaped; the
    plain sentence stays on ``.plain`` for the Markdown status line."""
    error = gr.Error(html_text(_short(message), MAX_ERROR_CHARS), title=title)
    error.plain = message
    return error


def session_of(request: gr.Request | None) -> str:
    """Who asked: Gradio's session hash (one per browser tab or API client)."""
    return str(getattr(request, "session_hash", None) or "")


@dataclass
class Slot:
    """One pre-created caption column; shown when a run has a method for it."""

    column: gr.Column
    header: gr.Markdown
    caption: gr.HighlightedText
    summary: gr.Markdown


@dataclass
class Layout:
    image: gr.Image
    prompt: gr.Textbox
    methods: gr.CheckboxGroup
    max_tokens: gr.Slider
    truth: gr.Textbox
    model: gr.Dropdown
    settings: gr.Textbox
    knobs: MethodSettings
    truth_note: gr.Markdown
    run: gr.Button
    stop: gr.Button
    status: gr.Markdown
    slots: list[Slot]
    summary_json: gr.JSON
    panel: DebuggerPanel
    trace_files: gr.File
    upload: gr.File
    runs: gr.State  # Runs: the traces the debugger can show
    slot_methods: gr.State  # method name shown in each slot
    live: gr.State  # latest ColumnResults, so Stop can finish the summaries
    knob_defaults: gr.State  # {method: {knob: value}}: the defaults the knobs show for the chosen model


@dataclass
class Request:
    """A checked comparison request."""

    image: checks.ImageInput
    prompt: str
    methods: list[str]
    stacks: list[list[Method]]  # built once here, so bad knob values are refused before any model work
    settings: dict  # the knob values as plain data: what crosses to a ZeroGPU worker
    max_new_tokens: int
    truth: TruthInfo
    model: str
    notice: str = ""  # shown on the status line for the whole run (e.g. a photo given to the toy model)


class HalvizApp:
    """What lives as long as the server: the model cache, the examples, the trace files."""

    def __init__(self, models: Sequence[str | tuple[str, str]], default_model: str,
                 loader: Callable[[str], LoadedModel], examples: list[Example],
                 registry: Mapping[str, type[Method]], update_every_s: float = UPDATE_EVERY_S,
                 allow_local: bool = False):
        self.models = list(models)
        self.update_every_s = update_every_s
        self.default_model = default_model
        self.policy = ModelPolicy.build(self.models, default_model, allow_local)
        self.session_upload_bytes = MAX_SESSION_UPLOAD_BYTES  # replayed traces one session keeps
        self.cache = ModelCache(loader)
        self.examples = examples
        self.registry = dict(registry)
        self.decode = gpu_decoder(self.cache, self.registry)  # the only call that holds a GPU
        self.files = TraceFiles()

    def check(self, image, prompt, methods, max_new_tokens, truth_text, model, settings) -> Request:
        """Cheap checks first, so a bad request never waits for a model."""
        model = self.policy.check(model, self.default_model)  # before the image: no file work for a refused model
        prompt = checks.check_prompt(prompt)
        tokens = checks.check_max_new_tokens(max_new_tokens)
        names = checks.check_methods(methods, self.registry)
        checks.check_request_size(len(names), tokens)
        knobs = model_defaults(model, self.registry).merged(checks.parse_settings(settings), names)
        stacks = checks.build_stacks(names, knobs, self.registry)
        if truth_text is not None and not isinstance(truth_text, str):
            raise checks.InputError("The ground-truth objects must be text, such as “cat, cup”.")
        checks.check_text_characters(truth_text or "", "The ground-truth box")
        picture = checks.load_image(image)
        truth = resolve_truth(truth_text, picture.digest, self.examples)
        return Request(picture, prompt, names, stacks, knobs, tokens, truth, model, self.image_notice(model, picture))

    def image_notice(self, model: str, picture: checks.ImageInput) -> str:
        """A warning when the toy model is given a picture that is not one of its scenes."""
        if model != TOY_KEY or looks_like_toy_scene(picture.image):
            return ""
        real = [k for k in self.policy.allowed if k != TOY_KEY] or [m for m, _ in DEFAULT_MODELS if m != TOY_KEY]
        return toy_photo_notice(real)

    def check_for_model(self, request: Request, loaded: LoadedModel) -> None:
        """The limits only the chosen model knows: its special tokens, its tokens, its context."""
        processor = loaded.processor
        sequence = processor(text=loaded.adapter.chat_text(request.prompt), images=request.image.image,
                             return_tensors="np")["input_ids"]
        context = getattr(getattr(loaded.model.config, "text_config", None), "max_position_embeddings", None)
        checks.check_prompt_tokens(request.prompt, processor.tokenizer, int(sequence.shape[-1]), context,
                                   request.max_new_tokens)

    def warm(self, names: Sequence[str], decode: bool = True) -> list[str]:
        """Load ``names`` now (start-up) and, unless ``decode`` is off, run every method for two tokens
        on a grey image, so the first visitor does not pay for first-call set-up. Returns what failed:
        a model that cannot load is logged and left to load (and fail) on first use."""
        failed = []
        grey = np.full((64, 64, 3), 128, dtype=np.uint8)
        # First-call costs outside the model: labelling mentions imports inflect, which typeguard
        # instruments on import (about 10 s on the 2-core machine).
        column_result("vanilla", "", ["two cups and a fork"], 1.0, "eos", None)
        for name in names:
            try:
                key = self.policy.check(name, self.default_model)
                self.cache.get(key)
                if decode:
                    for _ in self.decode(key, grey, "Describe the image.", list(self.registry), {}, 2, 0.0):
                        pass
            except Exception:
                log.exception("warming %s failed", name)
                failed.append(name)
        return failed

    def method_defaults(self, name: object) -> ModelDefaults:
        """The knob defaults of the model the picker names (the papers' for a name the app refuses)."""
        try:
            key = self.policy.check(name, self.default_model)
        except checks.InputError:
            return ModelDefaults()
        return model_defaults(key, self.registry)

    def load(self, name: str) -> LoadedModel:
        try:
            return self.cache.get(name)
        except ModelLoadError as exc:
            raise ui_error(f"Could not load the model: {exc}", title="Model not available") from None
        except Exception as exc:  # still the user's model choice failing, whatever the loader raised
            log.exception("loading %s failed", name)
            raise ui_error(f"Could not load the model {name!r}; the details are in the server log.",
                           title="Model not available") from None

    def truth_note(self, image, truth_text) -> str:
        path = checks.image_path(image)
        try:
            digest = checks.file_digest(path) if path else ""
        except OSError:
            digest = ""
        return truth_markdown(resolve_truth(truth_text if isinstance(truth_text, str) else "", digest, self.examples))


def toy_photo_notice(real_models: Sequence[str]) -> str:
    """What the status line says when a photo (not a toy scene) goes to the toy model."""
    named = " or ".join(f"**{markdown_text(m)}**" for m in real_models)
    return ("⚠ **This picture is not a toy scene.** The toy model only knows its glyph world (coloured shapes "
            "on a plain background), so its captions of a photo are noise. For photos pick a real model in "
            f"the Model box: {named}. The comparison runs anyway.")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def user_errors(fn: Callable) -> Callable:
    """Turn unexpected exceptions of a (non-generator) callback into a short ``gr.Error``; the
    exception itself goes to the server log only."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except checks.InputError as exc:
            raise ui_error(str(exc)) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise ui_error("Something went wrong on the server; please try again.", title="Error") from None
    return wrapped


def with_notice(status: str, request: Request) -> str:
    return f"{status}  \n{request.notice}" if request.notice else status


def model_line(loaded: LoadedModel) -> str:
    a = loaded.adapter
    return (f"**{markdown_text(loaded.name)}** ({markdown_text(a.family)}, {a.num_layers} layers × "
            f"{a.num_heads} heads, {loaded.device.type})")


class Controller:
    """The callbacks; each returns ``{component: update}`` for the layout it was built with."""

    def __init__(self, app: HalvizApp, layout: Layout):
        self.app = app
        self.ui = layout

    # ---- the comparison ---------------------------------------------------------------------------
    @property
    def compare_outputs(self) -> list:
        ui = self.ui
        slot_parts = [c for s in ui.slots for c in (s.column, s.header, s.caption, s.summary)]
        return [ui.status, *slot_parts, ui.runs, ui.slot_methods, ui.live, ui.trace_files, ui.summary_json]

    def compare(self, image, prompt, methods, max_new_tokens, ground_truth, model, settings="", runs=None,
                caller: gr.Request = None) -> Iterator[dict]:
        """Stream every method's caption together; the last update carries the JSON summary."""
        started = time.perf_counter()
        try:
            request = self.app.check(image, prompt, methods, max_new_tokens, ground_truth, model, settings)
        except checks.InputError as exc:
            raise ui_error(str(exc), title="Please check the inputs") from None
        except Exception:  # a check that failed in an unforeseen way is still the input's fault
            log.exception("checking the inputs failed")
            raise ui_error("These inputs could not be used; please check them.",
                           title="Please check the inputs") from None
        owner = session_of(caller)
        runs = {k: v for k, v in (runs or {}).items() if k.startswith(UPLOAD_PREFIX)}  # drop the last run's traces
        yield {**self._start(request), self.ui.runs: runs}
        try:
            loaded = self.app.load(request.model)
            try:
                self.app.check_for_model(request, loaded)
            except checks.InputError as exc:
                raise ui_error(str(exc), title="Please check the inputs") from None
            described = model_line(loaded)
            for progress in self.app.decode(request.model, np.asarray(request.image.image), request.prompt,
                                            request.methods, request.settings, request.max_new_tokens,
                                            self.app.update_every_s):
                yield self._progress(request, progress, described, started, runs, owner)
        except gr.Error as error:
            plain = getattr(error, "plain", None)  # the page keeps saying what went wrong
            yield {self.ui.status: f"✗ {markdown_text(plain) if plain is not None else error.message}"}
            raise
        except Exception:
            log.exception("decoding failed")
            message = "Decoding failed on the server; the details are in its log."
            yield {self.ui.status: f"✗ {message}"}
            raise ui_error(message, title="Decoding failed") from None
        finally:  # also when the run is cancelled or the client goes away
            release_memory()

    def _start(self, request: Request) -> dict:
        ui = self.ui
        updates: dict = {ui.status: with_notice(f"Loading **{markdown_text(request.model)}**…", request),
                         ui.slot_methods: request.methods,
                         ui.live: [], ui.trace_files: None, ui.summary_json: {}}
        for i, slot in enumerate(ui.slots):
            shown = i < len(request.methods)
            updates[slot.column] = gr.Column(visible=shown)
            if shown:
                method = self.app.registry[request.methods[i]]
                updates[slot.header] = f"### {method.title or method.name}\n{method.summary}"
                updates[slot.caption] = []
                updates[slot.summary] = "waiting for the model…"
        return updates

    def _progress(self, request: Request, progress: Progress, described: str, started: float, runs: Runs,
                  owner: str = "") -> dict:
        ui = self.ui
        truth = request.truth.truth
        results = with_divergence(
            [column_result(name, self.app.registry[name].title or name, texts, compute, finish, truth)
             for name, texts, compute, finish in zip(request.methods, progress.texts, progress.compute_s,
                                                     progress.finish)], progress.tokens)
        done = all(f is not None for f in progress.finish)
        image_note = f" · image {markdown_text(request.image.note)}" if request.image.note else ""
        failed = [r.title for r in results if r.error]
        if done and failed:
            status = (f"⚠ Done in {time.perf_counter() - started:.1f} s with {described}{image_note}, but "
                      f"{', '.join(failed)} failed (see {'its column' if len(failed) == 1 else 'their columns'}); "
                      "the other columns are complete.")
        elif done:
            status = (f"✓ Done in {time.perf_counter() - started:.1f} s with {described}{image_note}. "
                      "Click any word in a caption to inspect that step below.")
        else:
            status = (f"Decoding with {described}{image_note} · token {max(len(t) for t in progress.texts)} "
                      f"of at most {request.max_new_tokens}")
        updates: dict = {ui.status: with_notice(status, request), ui.live: results,
                         ui.summary_json: {r.method: r.summary_json() for r in results}}
        for slot, result in zip(ui.slots, results):
            updates[slot.caption] = result.spans
            updates[slot.summary] = result.summary_markdown()
        if progress.traces is not None:
            fresh = self._entries(request, progress.traces)
            updates[ui.runs] = {**runs, **fresh}
            if done:
                updates[ui.trace_files] = self.app.files.save(fresh, owner) if fresh else None
        return updates

    def _entries(self, request: Request, traces: list[Trace | None]) -> Runs:
        picture = display_copy(request.image.image)
        entries: Runs = {}
        for name, trace in zip(request.methods, traces):
            if trace is None:  # the column failed before it recorded anything
                continue
            trace.meta["ground_truth"] = truth_to_meta(request.truth.truth)
            trace.meta["image_digest"] = request.image.digest
            entries[name] = RunEntry(name, self.app.registry[name].title or name, trace, picture,
                                     request.truth.truth)
        return entries

    def stop(self, runs: Runs | None, slot_methods: list[str] | None, live: list[ColumnResult] | None,
             caller: gr.Request = None) -> dict:
        ui = self.ui
        runs, live = runs or {}, live or []
        for result in live:
            result.finish = result.finish or "stopped"
        recorded = {k: v for k, v in runs.items() if k in (slot_methods or [])}
        steps = ", ".join(f"{markdown_text(e.title)} {e.trace.num_steps}" for e in recorded.values()) or "none yet"
        updates: dict = {
            ui.status: f"■ Stopped. The debugger holds the steps recorded up to the last checkpoint ({steps}).",
            ui.summary_json: {r.method: r.summary_json() for r in live},
            ui.trace_files: self.app.files.save(recorded, session_of(caller)) if recorded else None,
        }
        for slot, result in zip(ui.slots, live):
            updates[slot.summary] = result.summary_markdown()
        return updates

    def knobs_for_model(self, model, shown, *values) -> list:
        """The knobs show the chosen model's defaults; values the user set stay."""
        return self.ui.knobs.for_model(self.app.method_defaults(model), shown, *values)

    # ---- debugger ---------------------------------------------------------------------------------
    def show_first(self, runs: Runs | None, slot_methods: list[str] | None) -> dict:
        key = next((k for k in (slot_methods or []) if k in (runs or {})), None)
        return self.ui.panel.show(runs, key)

    def jump_from_column(self, index: int) -> Callable:
        """Clicking a word in column ``index`` opens that column's trace at the word's step."""
        def jump(runs: Runs | None, slot_methods: list[str] | None, evt: gr.SelectData) -> dict:
            methods = slot_methods or []
            if not runs or index >= len(methods) or methods[index] not in runs:
                raise ui_error("That column's trace is not ready yet; wait for the run to finish.")
            entry = runs[methods[index]]
            spans = column_result(entry.key, entry.title, entry.trace.texts, 1.0, None, entry.truth).spans
            step = step_at_offset(entry.trace.texts, span_offset(spans, int(evt.index or 0)))
            return self.ui.panel.show(runs, entry.key, step)
        return user_errors(jump)

    def jump_from_tokens(self, runs, key, layer, head, evt: gr.SelectData) -> dict:
        step = int(evt.index or 0)
        return {self.ui.panel.step: step, **self.ui.panel.at_step(runs, key, step, layer, head)}

    def replay(self, file, image, runs: Runs | None) -> dict:
        path = checks.image_path(file)
        if not path:
            raise ui_error("Choose a .npz trace file to replay.")
        name = file.get("orig_name") if isinstance(file, Mapping) else None
        name = str(name or path).rsplit("/", 1)[-1][:120]
        try:
            checks.check_trace_upload(path)
            trace = Trace.load(path)
        except (checks.InputError, TraceFormatError) as exc:
            raise ui_error(f"Could not open the trace: {exc}", title="Not a halviz trace") from None
        picture = None
        image_file = checks.image_path(image)
        if image_file and trace.meta.get("image_digest"):
            try:  # draw on the picture only if it is the very image the trace was recorded on
                loaded = checks.load_image(image)
                picture = display_copy(loaded.image) if loaded.digest == trace.meta["image_digest"] else None
            except checks.InputError:
                picture = None
        key = f"{UPLOAD_PREFIX}{name}"
        entry = RunEntry(key, f"uploaded: {name}", trace, picture, truth_from_meta(trace.meta))
        runs = {k: v for k, v in (runs or {}).items() if k != key}  # a re-upload counts as the newest
        runs = keep_uploads({**runs, key: entry}, UPLOAD_PREFIX, self.app.session_upload_bytes)  # its oldest go first
        try:
            shown = self.ui.panel.show(runs, key)
        except Exception:  # passed every check yet cannot be drawn: still the file's fault
            log.exception("drawing the uploaded trace %s failed", name)
            raise ui_error(f"Could not open the trace: {name} passed the checks but cannot be drawn.",
                           title="Not a halviz trace") from None
        # Clearing the uploader makes room for the next trace.
        return {self.ui.runs: runs, self.ui.upload: None, **shown}

    # ---- wiring -------------------------------------------------------------------------------------
    def wire(self) -> None:
        ui, panel = self.ui, self.ui.panel
        private = dict(api_visibility="private", show_progress="hidden")
        knob_components = [c for _, _, c in ui.knobs.components]
        settings_inputs = [ui.knob_defaults, *knob_components]
        for component in knob_components:
            component.change(ui.knobs.settings_json, inputs=settings_inputs, outputs=ui.settings, queue=False,
                             **private)
        ui.model.change(user_errors(self.knobs_for_model), inputs=[ui.model, ui.knob_defaults, *knob_components],
                        outputs=[ui.knob_defaults, *ui.knobs.notes.values(), *knob_components], queue=False,
                        **private) \
            .then(ui.knobs.settings_json, inputs=settings_inputs, outputs=ui.settings, queue=False, **private)
        ui.methods.change(ui.knobs.visibility, inputs=ui.methods, outputs=list(ui.knobs.accordions.values()),
                          queue=False, **private)
        gr.on([ui.image.change, ui.truth.change], user_errors(self.app.truth_note), inputs=[ui.image, ui.truth],
              outputs=ui.truth_note, preprocess=False, trigger_mode="always_last", **private)

        run_event = ui.run.click(
            self.compare,
            inputs=[ui.image, ui.prompt, ui.methods, ui.max_tokens, ui.truth, ui.model, ui.settings, ui.runs],
            outputs=self.compare_outputs, api_name="compare", preprocess=False, show_progress="minimal",
            api_description="Caption one image with several decoding methods; streams every column, "
                            "the last output is a JSON summary per method. Knobs missing from the settings "
                            "JSON take the model's own defaults (its method_defaults.json), else the papers'.",
        )
        run_event.success(user_errors(self.show_first), inputs=[ui.runs, ui.slot_methods],
                          outputs=panel.trace_outputs, **private)
        ui.stop.click(user_errors(self.stop), inputs=[ui.runs, ui.slot_methods, ui.live],
                      outputs=[ui.status, ui.summary_json, ui.trace_files, *(s.summary for s in ui.slots)],
                      cancels=[run_event], **private) \
            .then(user_errors(self.show_first), inputs=[ui.runs, ui.slot_methods], outputs=panel.trace_outputs,
                  **private)

        panel.choice.input(user_errors(panel.show), inputs=[ui.runs, panel.choice], outputs=panel.trace_outputs,
                           **private)
        step_inputs = [ui.runs, panel.choice, panel.step, panel.layer, panel.head]
        for trigger in (panel.step.input, panel.layer.input, panel.head.input):
            trigger(user_errors(panel.at_step), inputs=step_inputs, outputs=panel.step_outputs,
                    trigger_mode="always_last", **private)
        panel.caption.select(user_errors(self.jump_from_tokens),
                             inputs=[ui.runs, panel.choice, panel.layer, panel.head],
                             outputs=[panel.step, *panel.step_outputs], **private)
        for index, slot in enumerate(ui.slots):
            slot.caption.select(self.jump_from_column(index), inputs=[ui.runs, ui.slot_methods],
                                outputs=panel.trace_outputs, **private)
        ui.upload.upload(user_errors(self.replay), inputs=[ui.upload, ui.image, ui.runs],
                         outputs=[ui.runs, ui.upload, *panel.trace_outputs], preprocess=False, **private)
