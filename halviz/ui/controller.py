"""Callbacks and their wiring. Every failure reaches the user as a raised ``gr.Error`` sentence;
details go to the server log, never a stack trace to the page."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from dataclasses import dataclass, replace

import gradio as gr
import numpy as np

from halviz.methods.base import Method
from halviz.models import LoadedModel
from halviz.trace import Trace, TraceFormatError
from halviz.session import checks
from halviz.session.results import (UPDATE_EVERY_S, ColumnResult, Progress, column_result, first_divergence,
                               with_divergence)
from halviz.session.decoding import build_spec_stacks
# The Gradio-free comparison service; Request and toy_photo_notice lived here before.
from halviz.session.service import CompareService, ModelUnavailable, Request, toy_photo_notice  # noqa: F401
from halviz.session.runids import LatestRuns
from halviz.session.budget import DROPPED, MemoryBudget, budget_from_env, check_kept
from halviz.ui.debugger import DebuggerPanel
from halviz.session.escaping import html_text, markdown_text
from halviz.session.examples import Example, resolve_truth, truth_markdown
from halviz.ui.knobs import MethodSettings
from halviz.ui.pickers import EXPIRED
from halviz.session.state import (MAX_SESSION_UPLOAD_BYTES, RunEntry, Runs, TraceFiles, display_copy, keep_uploads,
                             truth_from_meta)
from halviz.session.memory import release_memory
from halviz.session.selection import (Selection, as_selection, intervention_specs, short_title, stack_specs,
                                 with_intervention)
from halviz.ui.whatif import GROW_BOX, INSPECT, MAX_WHATIF, WhatIfSlot, clicked_head, clicked_patch, whatif_spans
from halviz.methods import check_compatible
from halviz.viz import span_offset, step_at_offset

log = logging.getLogger("halviz.ui")
MAX_ERROR_CHARS = 400
UPLOAD_PREFIX = "upload:"
WHATIF_PREFIX = "whatif:"


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
    whatif_slots: list[WhatIfSlot]  # the re-run columns beside the method columns
    whatif: gr.State  # list of {key, summary, step}: what each re-run column shows, oldest first
    lesson: Any = None  # ui.lesson.LessonPanel when the toy model and its knife scene are offered


class HalvizApp(CompareService):
    """What lives as long as the server: the comparison service (model cache, examples, checks, the
    decode driver; ``session/service.py``, shared with the Python API) plus the page's own state
    (trace files for download, each session's latest run, the memory budget)."""

    def __init__(self, models: Sequence[str | tuple[str, str]], default_model: str,
                 loader: Callable[[str], LoadedModel], examples: list[Example],
                 registry: Mapping[str, type[Method]], update_every_s: float = UPDATE_EVERY_S,
                 allow_local: bool = False):
        super().__init__(models, default_model, loader, examples, registry, update_every_s, allow_local)
        self.session_upload_bytes = MAX_SESSION_UPLOAD_BYTES  # replayed traces one session keeps
        self.files = TraceFiles()
        self.latest = LatestRuns()  # each owner's latest comparison: a re-run of an older one writes nothing
        self.budget = MemoryBudget(budget_from_env())  # every session's traces and pictures, in all

    def load(self, name: str) -> LoadedModel:
        try:
            return super().load(name)
        except ModelUnavailable as exc:
            raise ui_error(str(exc), title=exc.title) from None


def _number(value, default: float) -> float:
    """``value`` as a finite number, else ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


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


def file_paths(files) -> list[str]:
    """The paths of a File component's value as the page sends it (FileData dicts, paths, or None)."""
    if not isinstance(files, (list, tuple)):
        files = [files] if files else []
    return [p for p in (checks.image_path(f) for f in files) if p]


def rerun_refused(message: str) -> gr.Error:
    return ui_error(message, title="Cannot re-run this column")


def refused_status(reason: str, shown: bool) -> str:
    """The status line when a comparison is refused: why, and whose captions are still on the page."""
    kept = " The columns below still show the previous comparison." if shown else ""
    return f"✗ Not run: {markdown_text(reason)}{kept}"


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
        self.app.latest.start(session_of(caller))  # before any check: Compare cleared the re-run columns
        try:
            request = self.app.check(image, prompt, methods, max_new_tokens, ground_truth, model, settings)
        except checks.InputError as exc:
            refusal = str(exc)
        except Exception:  # a check that failed in an unforeseen way is still the input's fault
            log.exception("checking the inputs failed")
            refusal = "These inputs could not be used; please check them."
        else:
            refusal = None
        if refusal is not None:
            log.info("comparison refused: %s", refusal)
            yield {self.ui.status: refused_status(refusal, shown=any(not k.startswith(UPLOAD_PREFIX)
                                                                      for k in (runs or {})))}
            raise ui_error(refusal, title="Please check the inputs")
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
            held: list[RunEntry] = []
            for progress in self.app.decode_request(request):
                update = self._progress(request, progress, described, started, runs, owner)
                if self.ui.runs in update:  # this checkpoint's entries replace the last one's in the budget
                    fresh = [v for k, v in update[self.ui.runs].items() if k not in runs]
                    self.app.budget.hold(owner, fresh, replacing=held)
                    held = fresh
                yield update
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
        results = self.app.column_results(request, progress)
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
        return self.app.entries(request, traces)  # the traces annotated as the API's are

    def stop(self, runs: Runs | None, slot_methods: list[str] | None, live: list[ColumnResult] | None,
             caller: gr.Request = None) -> dict:
        ui = self.ui
        runs, live = runs or {}, live or []
        if live and all(r.finish is not None for r in live):
            return {ui.status: gr.skip()}  # the run had already finished: its "✓ Done" stays true
        for result in live:
            result.finish = result.finish or "stopped"
        recorded = {k: v for k, v in runs.items() if k in (slot_methods or []) and not v.dropped}
        steps = ", ".join(f"{markdown_text(e.title)} {e.trace.num_steps}" for e in recorded.values()) or "none yet"
        updates: dict = {
            ui.status: f"■ Stopped. The debugger holds the steps recorded up to the last checkpoint ({steps}).",
            ui.summary_json: {r.method: r.summary_json() for r in live},
            ui.trace_files: self.app.files.save(recorded, session_of(caller)) if recorded else None,
        }
        for slot, result in zip(ui.slots, live):
            updates[slot.summary] = result.summary_markdown()
        return updates

    def image_changed(self, image, slot_methods, runs, choice, caller: gr.Request = None) -> dict:
        """A new picture (upload, paste, example, cleared): the ground-truth box takes that picture's own
        list and the note says where it comes from; captions still shown are said to be of the previous
        picture; a replayed trace recorded on this very picture is drawn on it."""
        ui = self.ui
        own = self.app.own_truth(image)
        text = own.objects if own is not None else ""
        updates: dict = {ui.truth: text, ui.truth_note: truth_markdown(resolve_truth(text, own))}
        if slot_methods:
            updates[ui.status] = ("The picture changed: the captions below are of the previous picture. "
                                  "Press **Compare** to caption this one.")
        entry = (runs or {}).get(choice) if isinstance(choice, str) else None
        if entry is not None and entry.image is None and entry.key.startswith(UPLOAD_PREFIX) and not entry.dropped:
            picture = self._recorded_picture(image, entry.trace)
            if picture is not None:
                runs = {**runs, entry.key: replace(entry, image=picture)}
                self.app.budget.hold(session_of(caller), [runs[entry.key]])
                updates.update({ui.runs: runs, **ui.panel.show(runs, entry.key)})
        return updates

    @staticmethod
    def _recorded_picture(image, trace: Trace):
        """A display copy of ``image`` if it is the very file ``trace`` was recorded on, else None."""
        digest = trace.meta.get("image_digest")
        if not digest or not checks.image_path(image):
            return None
        try:
            loaded = checks.load_image(image)
        except checks.InputError:
            return None
        return display_copy(loaded.image) if loaded.digest == digest else None

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
            if not runs and not methods:  # the page shows a caption this session never had: its state is gone
                raise ui_error(EXPIRED)
            if not runs or index >= len(methods) or methods[index] not in runs:
                raise ui_error("That column's trace is not ready yet; wait for the run to finish.")
            entry = runs[methods[index]]
            spans = column_result(entry.key, entry.title, entry.trace.texts, 1.0, None, entry.truth).spans
            step = step_at_offset(entry.trace.texts, span_offset(spans, int(evt.index or 0)))
            return self.ui.panel.show(runs, entry.key, step)
        return user_errors(jump)

    def jump_from_tokens(self, runs, key, layer, head, selection, view, evt: gr.SelectData) -> dict:
        step = int(evt.index or 0)
        return {self.ui.panel.step: step, **self.ui.panel.at_step(runs, key, step, layer, head, selection, view)}

    def replay(self, file, image, runs: Runs | None, caller: gr.Request = None) -> dict:
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
        picture = self._recorded_picture(image, trace)  # drawn on only if it is the very image recorded
        key = f"{UPLOAD_PREFIX}{name}"
        entry = RunEntry(key, f"uploaded: {name}", trace, picture, truth_from_meta(trace.meta))
        runs = {k: v for k, v in (runs or {}).items() if k != key}  # a re-upload counts as the newest
        runs = keep_uploads({**runs, key: entry}, UPLOAD_PREFIX, self.app.session_upload_bytes)  # its oldest go first
        self.app.budget.hold(session_of(caller), [entry])  # the server's total: least recently used go first
        try:
            shown = self.ui.panel.show(runs, key)
        except Exception:  # passed every check yet cannot be drawn: still the file's fault
            log.exception("drawing the uploaded trace %s failed", name)
            raise ui_error(f"Could not open the trace: {name} passed the checks but cannot be drawn.",
                           title="Not a halviz trace") from None
        # Clearing the uploader makes room for the next trace.
        return {self.ui.runs: runs, self.ui.upload: None, **shown}

    # ---- what if: choosing an intervention and re-running a column ------------------------------------
    def _entry(self, runs: Runs | None, key: str | None) -> RunEntry:
        if not runs and key:
            raise ui_error(EXPIRED)
        if not runs or key not in runs:
            raise ui_error("Run a comparison (or open a trace) first; then choose patches or heads on its maps.")
        if runs[key].dropped:
            raise ui_error(DROPPED, title="Dropped to free memory")
        return check_kept(runs[key])

    def _view(self, runs, key, step, layer, head, selection: Selection) -> dict:
        """The selection stored, and every picture that shows it redrawn."""
        panel = self.ui.panel
        return {panel.whatif.selection: selection, **panel.whatif_view(runs, key, step, layer, head, selection)}

    def pick_patch(self, runs, key, step, layer, head, selection, mode, evt: gr.SelectData) -> dict:
        """A click on the patch map: toggle the patch, fill the box up to it, or only inspect it."""
        entry = self._entry(runs, key)
        patch = clicked_patch(entry.trace, evt.index)
        if patch is None:
            raise ui_error("That click was not on an image patch; click inside the grid.")
        selection = as_selection(selection)
        if mode == GROW_BOX:
            selection = selection.with_patch(*patch)
        elif mode == INSPECT:
            selection = replace(selection, inspected=patch)
        else:  # the default: a click toggles the patch
            selection = selection.toggled_patch(*patch)
        return self._view(runs, key, step, layer, head, selection)

    def pick_head(self, runs, key, step, layer, head, selection, evt: gr.SelectData) -> dict:
        """A click on the head map: that (layer, head) joins the heads to scale, or leaves them."""
        entry = self._entry(runs, key)
        chosen = clicked_head(entry.trace, evt.index)
        if chosen is None:
            raise ui_error("That click was not on a head; click a cell of the map.")
        return self._view(runs, key, step, layer, head, as_selection(selection).toggled_head(*chosen))

    def take_head(self, runs, key, step, layer, head, selection) -> dict:
        """The head the Layer and Head pickers show joins the heads to scale."""
        self._entry(runs, key)
        try:
            chosen_layer, chosen_head = int(layer), int(head)
        except (TypeError, ValueError):
            raise ui_error("Pick one layer and one head in the Layer and Head boxes above first "
                           "(or click a cell of the head map).") from None
        return self._view(runs, key, step, layer, head, as_selection(selection).with_head(chosen_layer, chosen_head))

    def clear_box(self, runs, key, step, layer, head, selection) -> dict:
        self._entry(runs, key)
        return self._view(runs, key, step, layer, head,
                          replace(as_selection(selection), patches=frozenset(), inspected=None))

    def clear_heads(self, runs, key, step, layer, head, selection) -> dict:
        self._entry(runs, key)
        return self._view(runs, key, step, layer, head, replace(as_selection(selection), heads=frozenset()))

    def set_options(self, runs, key, step, layer, head, selection, sink, scale, first_layer=0, last_layer=-1) -> dict:
        """The sink tick box, the head scale and the layer range, kept in the selection (odd values
        fall back to the defaults; the range is checked against the model at re-run)."""
        factor, first, last = _number(scale, 0.0), _number(first_layer, 0), _number(last_layer, -1)
        selection = replace(as_selection(selection), sink=bool(sink), head_scale=min(max(factor, 0.0), 10.0),
                            first_layer=int(min(max(first, 0), 255)), last_layer=int(min(max(last, -1), 255)))
        if not runs or key not in runs:
            return {self.ui.panel.whatif.selection: selection}
        return self._view(runs, key, step, layer, head, selection)

    def clear_whatif(self) -> dict:
        """A new comparison: the re-run columns of the last one go."""
        return {**{slot.column: gr.Column(visible=False) for slot in self.ui.whatif_slots}, self.ui.whatif: []}

    @property
    def rerun_outputs(self) -> list:
        ui = self.ui
        return [ui.panel.whatif.status, ui.runs, ui.whatif, ui.trace_files,
                *(c for s in ui.whatif_slots for c in s.parts)]

    def _show_whatif(self, runs: Runs, shown: list[dict]) -> dict:
        """Every re-run column drawn from the session's list (oldest first)."""
        updates: dict = {}
        for slot, item in zip(self.ui.whatif_slots, [*shown, *[None] * MAX_WHATIF]):
            if item is None:
                updates[slot.column] = gr.Column(visible=False)
                continue
            entry = runs.get(item["key"])
            texts = entry.trace.texts if entry is not None else item.get("texts", [])
            step = item.get("step")
            spans = whatif_spans(texts, item.get("truth"), step, item.get("finish") == "eos")
            updates.update({
                slot.column: gr.Column(visible=True),
                slot.header: f"### ↻ {markdown_text(item['title'])}\nre-run of {markdown_text(item['original'])} "
                             "with an intervention",
                slot.caption: spans,
                slot.summary: item["summary"],
                slot.open: gr.Button(value="Open in the debugger" + (f" at step {step}" if step is not None else ""),
                                     interactive=entry is not None),
            })
        return updates

    def _rerun_request(self, runs, key, selection):
        """Checked inputs of a re-run: the entry, its stack, the new stack, the title (cheap checks only)."""
        if not runs and key:
            raise rerun_refused(EXPIRED)
        if not runs or key not in runs:
            raise rerun_refused("Run a comparison (or open a trace) first; then choose patches or heads on its maps.")
        entry = runs[key]
        if entry.dropped:
            raise rerun_refused(DROPPED)
        check_kept(entry)
        selection = as_selection(selection)
        if selection.empty:
            raise rerun_refused("Choose what to change first: click patches on the map, a cell of the head map, "
                                "or tick “remove the sink”.")
        if entry.source is None or not entry.model:
            raise rerun_refused("Only a column run in this session can be re-run (an uploaded trace has no image "
                                "and model behind it): put its image in the Image box and press Compare.")
        trace = entry.trace
        layers, heads = int(trace.meta.get("num_layers", 0)), int(trace.meta.get("num_heads", 0))
        if any(not (0 <= l < layers and 0 <= h < heads) for l, h in selection.heads):
            raise rerun_refused(f"This model has layers 0–{layers - 1} and heads 0–{heads - 1}.")
        rows, cols = (int(v) for v in trace.meta.get("grid", (0, 0)))
        if any(not (0 <= r < rows and 0 <= c < cols) for r, c in selection.patches):
            raise rerun_refused(f"The patches to mask must lie on this trace's {rows}×{cols} grid.")
        last = layers - 1 if selection.last_layer < 0 else selection.last_layer
        if (selection.patches or selection.sink) and not 0 <= selection.first_layer <= last < layers:
            raise rerun_refused(f"The layers to mask in must run from a first to a last layer within 0–{layers - 1}.")
        try:
            original = stack_specs(trace.meta.get("methods"))
            changed = with_intervention(original, intervention_specs(selection), list(self.app.registry))
            for stack in build_spec_stacks([original, changed], self.app.registry):
                check_compatible(stack)
        except (ValueError, TypeError, KeyError) as exc:
            raise rerun_refused(f"This intervention cannot run on {entry.title}: {exc}") from None
        return entry, original, changed, f"{entry.title} + {short_title(selection)}"

    def rerun(self, runs, key, selection, shown, files=None, caller: gr.Request = None) -> Iterator[dict]:
        """Decode the column ``key`` again, as it was and with the intervention, as two rows of one batch;
        the new column appears beside the others, diffed token by token against the original."""
        ui, status = self.ui, self.ui.panel.whatif.status
        runs, shown = dict(runs or {}), list(shown or [])
        owner = session_of(caller)
        started_under = self.app.latest.current(owner)  # a newer comparison makes every later update stale
        try:
            entry, original, changed, title = self._rerun_request(runs, key, selection)
        except gr.Error as error:
            log.info("re-run refused: %s", getattr(error, "plain", error.message))
            yield {status: f"✗ {markdown_text(getattr(error, 'plain', error.message))}"}
            raise
        new_key = f"{WHATIF_PREFIX}{uuid.uuid4().hex[:8]}"
        shown = [*shown, {"key": new_key, "title": title, "original": entry.title,
                          "summary": "waiting for the model…", "step": None}]
        replaced = ", ".join(f"“{markdown_text(item['title'])}”" for item in shown[:-MAX_WHATIF])
        replaced = (f" It replaces the oldest re-run column ({replaced}): at most {MAX_WHATIF} are shown."
                    if replaced else "")
        shown = shown[-MAX_WHATIF:]
        kept = {item["key"] for item in shown}
        runs = {k: v for k, v in runs.items() if not k.startswith(WHATIF_PREFIX) or k in kept}
        tokens = int(entry.trace.meta.get("max_new_tokens") or max(entry.trace.num_steps, 1))
        yield {status: f"Re-running **{markdown_text(title)}**…{replaced}", ui.runs: runs, ui.whatif: shown,
               **self._show_whatif(runs, shown)}
        item = shown[-1]
        try:
            loaded = self.app.load(entry.model)
            prompt = str(entry.trace.meta.get("prompt", ""))
            for progress in self.app.decode_stacks(entry.model, np.asarray(entry.source), prompt, [original, changed],
                                                   tokens, self.app.update_every_s):
                results = with_divergence(
                    [column_result(k, t, texts, compute, finish, entry.truth) for k, t, texts, compute, finish in
                     zip((entry.key, new_key), (entry.title, title), progress.texts, progress.compute_s,
                         progress.finish)], progress.tokens)
                done = all(f is not None for f in progress.finish)
                summary = results[1].summary_markdown()
                if results[1].diverges_at is not None:
                    summary += " · <span style='color:#7c3aed'>purple</span>: its first token that differs"
                item.update(summary=summary, step=results[1].diverges_at, texts=progress.texts[1],
                            truth=entry.truth, finish=progress.finish[1])
                if done and progress.traces is not None and progress.traces[1] is not None:
                    trace = progress.traces[1]
                    trace.meta["ground_truth"] = entry.trace.meta.get("ground_truth")
                    trace.meta["image_digest"] = entry.trace.meta.get("image_digest")
                    runs[new_key] = RunEntry(new_key, f"↻ {title}", trace, entry.image, entry.truth, entry.source,
                                             entry.model)
                    self.app.budget.hold(owner, [runs[new_key]])
                    item["summary"] += self._baseline_note(entry, progress.tokens[0] if progress.tokens else None)
                if self.app.latest.current(owner) != started_under:
                    log.info("re-run of %s dropped: a newer comparison replaced it", entry.key)
                    return  # its runs and columns belong to the comparison that was replaced
                updates = {ui.runs: runs, ui.whatif: shown, **self._show_whatif(runs, shown)}
                if new_key in runs:  # its trace joins the downloads, beside the comparison's files
                    updates[ui.trace_files] = [*(p for p in file_paths(files) if self.app.files.owns(p)),
                                               *self.app.files.save({new_key: runs[new_key]}, session_of(caller))]
                if done:
                    where = ("the same tokens as the original" if results[1].diverges_at is None else
                             f"differs from the original from step {results[1].diverges_at}")
                    updates[status] = (f"✓ Re-ran **{markdown_text(title)}** with {model_line(loaded)}: {where}. "
                                       f"Press its **Open in the debugger** button to look at that step.{replaced}")
                yield updates
        except gr.Error as error:
            plain = getattr(error, "plain", None)
            yield {status: f"✗ {markdown_text(plain) if plain is not None else error.message}"}
            raise
        except Exception:
            log.exception("re-running failed")
            message = "Re-running failed on the server; the details are in its log."
            yield {status: f"✗ {message}"}
            raise ui_error(message, title="Re-run failed") from None
        finally:
            release_memory()

    @staticmethod
    def _baseline_note(entry: RunEntry, redecoded: Sequence[int] | None) -> str:
        """Says so when the original, decoded again beside the intervention, is not the caption shown."""
        if redecoded is None:
            return ""
        shown = [int(t) for t in entry.trace.arrays.get("token_ids", [])]
        step = first_divergence(shown, redecoded)
        if step is None and len(shown) == len(redecoded):
            return ""
        where = f"from step {step}" if step is not None else "in length"
        return (f" · ⚠ the original decoded again in this batch differs from the column shown {where} "
                "(numerics of a different batch); the diff is against the one decoded beside it")

    def open_whatif(self, index: int) -> Callable:
        """The button under re-run column ``index``: its trace in the debugger at the first differing step."""
        def open_it(runs: Runs | None, shown: list[dict] | None) -> dict:
            shown = shown or []
            if not runs:  # a re-run column on the page, none in the session: its state is gone
                raise ui_error(EXPIRED)
            if index >= len(shown) or shown[index]["key"] not in (runs or {}):
                raise ui_error("That re-run has not finished yet.")
            return self.ui.panel.show(runs, shown[index]["key"], int(shown[index].get("step") or 0))
        return user_errors(open_it)

    def jump_from_whatif(self, index: int) -> Callable:
        """Clicking a word in re-run column ``index`` opens its trace at that word's step."""
        def jump(runs: Runs | None, shown: list[dict] | None, evt: gr.SelectData) -> dict:
            shown = shown or []
            if not runs:  # a re-run column on the page, none in the session: its state is gone
                raise ui_error(EXPIRED)
            if index >= len(shown) or shown[index]["key"] not in (runs or {}):
                raise ui_error("That re-run has not finished yet.")
            return self.ui.panel.show(runs, shown[index]["key"], int(evt.index or 0))  # one span per step
        return user_errors(jump)

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
        # Ground truth belongs to a picture: every change of picture resets the box to the picture's own list.
        ui.image.change(user_errors(self.image_changed), inputs=[ui.image, ui.slot_methods, ui.runs, panel.choice],
                        outputs=[ui.truth, ui.truth_note, ui.status, ui.runs, *panel.trace_outputs],
                        preprocess=False, trigger_mode="always_last", **private)
        ui.truth.change(user_errors(self.app.truth_note), inputs=[ui.image, ui.truth], outputs=ui.truth_note,
                       preprocess=False, trigger_mode="always_last", **private)

        run_event = ui.run.click(
            self.compare,
            inputs=[ui.image, ui.prompt, ui.methods, ui.max_tokens, ui.truth, ui.model, ui.settings, ui.runs],
            outputs=self.compare_outputs, api_name="compare", preprocess=False, show_progress="minimal",
            concurrency_id="decode",  # one pool with the re-runs: at most `concurrency` decodes in all
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
        whatif = panel.whatif
        step_inputs = [ui.runs, panel.choice, panel.step, panel.layer, panel.head, whatif.selection]
        for trigger in (panel.step.input, panel.layer.input, panel.head.input, panel.view.input):
            trigger(user_errors(panel.at_step), inputs=[*step_inputs, panel.view], outputs=panel.step_outputs,
                    trigger_mode="always_last", **private)
        panel.caption.select(user_errors(self.jump_from_tokens),
                             inputs=[ui.runs, panel.choice, panel.layer, panel.head, whatif.selection, panel.view],
                             outputs=[panel.step, *panel.step_outputs], **private)
        picked = [whatif.selection, *whatif.view_outputs]
        whatif.patches.select(user_errors(self.pick_patch), inputs=[*step_inputs, whatif.mode], outputs=picked,
                              **private)
        whatif.heads.select(user_errors(self.pick_head), inputs=step_inputs, outputs=picked, **private)
        whatif.take_head.click(user_errors(self.take_head), inputs=step_inputs, outputs=picked, **private)
        whatif.clear.click(user_errors(self.clear_box), inputs=step_inputs, outputs=picked, **private)
        whatif.clear_heads.click(user_errors(self.clear_heads), inputs=step_inputs, outputs=picked, **private)
        for control in whatif.options:
            control.input(user_errors(self.set_options), inputs=[*step_inputs, *whatif.options],
                          outputs=picked, trigger_mode="always_last", **private)
        ui.run.click(self.clear_whatif, outputs=[*(s.column for s in ui.whatif_slots), ui.whatif], queue=False,
                     **private)
        rerun_event = whatif.rerun.click(self.rerun, inputs=[ui.runs, panel.choice, whatif.selection, ui.whatif,
                                                             ui.trace_files],
                                         outputs=self.rerun_outputs, show_progress="minimal", preprocess=False,
                                         api_visibility="private", concurrency_id="decode")
        ui.stop.click(None, cancels=[rerun_event], **private)  # Stop ends a re-run too
        for index, slot in enumerate(ui.whatif_slots):
            slot.open.click(self.open_whatif(index), inputs=[ui.runs, ui.whatif], outputs=panel.trace_outputs,
                            **private)
            slot.caption.select(self.jump_from_whatif(index), inputs=[ui.runs, ui.whatif],
                                outputs=panel.trace_outputs, **private)
        for index, slot in enumerate(ui.slots):
            slot.caption.select(self.jump_from_column(index), inputs=[ui.runs, ui.slot_methods],
                                outputs=panel.trace_outputs, **private)
        ui.upload.upload(user_errors(self.replay), inputs=[ui.upload, ui.image, ui.runs],
                         outputs=[ui.runs, ui.upload, *panel.trace_outputs], preprocess=False, **private)
