"""Compare and Stop: check the request, stream every column's caption, keep the traces; a new
picture brings its own ground truth."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import gradio as gr

from halviz.models import LoadedModel
from halviz.trace import Trace
from halviz.session import checks
from halviz.session.results import ColumnResult, Progress
from halviz.session.service import Request
from halviz.session.escaping import markdown_text
from halviz.session.examples import resolve_truth, truth_markdown
from halviz.session.state import RunEntry, Runs, display_copy
from halviz.session.memory import release_memory
from halviz.ui.errors import refused_status, session_of, ui_error
from halviz.ui.layout import Layout
from halviz.ui.page_service import HalvizApp


log = logging.getLogger("halviz.ui")
UPLOAD_PREFIX = "upload:"


def with_notice(status: str, request: Request) -> str:
    return f"{status}  \n{request.notice}" if request.notice else status


def model_line(loaded: LoadedModel) -> str:
    a = loaded.adapter
    return (f"**{markdown_text(loaded.name)}** ({markdown_text(a.family)}, {a.num_layers} layers × "
            f"{a.num_heads} heads, {loaded.device.type})")


class CompareCallbacks:
    """The comparison's callbacks (mixed into :class:`halviz.ui.controller.Controller`)."""

    app: HalvizApp
    ui: Layout

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
            for progress in self.app.decode_request(request, phases=True):  # the status says what the wait is for
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
                name = request.methods[i]
                updates[slot.header] = f"### {self.app.title(name)}\n{self.app.summary(name)}"
                updates[slot.caption] = []
                updates[slot.summary] = "waiting for the model…"
        return updates

    def _progress(self, request: Request, progress: Progress, described: str, started: float, runs: Runs,
                  owner: str = "") -> dict:
        ui = self.ui
        image_note = f" · image {markdown_text(request.image.note)}" if request.image.note else ""
        if progress.phase is not None:  # before the first token: the vision tower, then the prompt
            return {ui.status: with_notice(f"{progress.note} ({described}{image_note})", request)}
        results = self.app.column_results(request, progress)
        done = all(f is not None for f in progress.finish)
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
