"""Opening traces in the debugger: the first column after a run, a clicked word's step, an
uploaded trace replayed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import gradio as gr

from halviz.trace import Trace, TraceFormatError
from halviz.session import checks
from halviz.session.results import column_result
from halviz.ui.pickers import EXPIRED
from halviz.session.state import RunEntry, Runs, keep_uploads, truth_from_meta
from halviz.viz import span_offset, step_at_offset
from halviz.ui.compare_callbacks import UPLOAD_PREFIX
from halviz.session.budget import check_kept
from halviz.session.figure_files import write_step_figures
from halviz.ui.debugger import lens_reference, parse_view, shown_layer_head, still_held
from halviz.viz.common import clamp_step
from halviz.viz.image_files import ExportError
from halviz.ui.errors import session_of, ui_error, user_errors
from halviz.ui.layout import Layout
from halviz.ui.page_service import HalvizApp


log = logging.getLogger("halviz.ui")
class TraceCallbacks:
    """The debugger's navigation callbacks (mixed into :class:`halviz.ui.controller.Controller`)."""

    app: HalvizApp
    ui: Layout

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

    def save_figures(self, runs, key, step, layer, head, view, fmt, caller: gr.Request = None) -> dict:
        """Every figure the debugger shows at this step, as PNG, SVG or PDF files in one zip."""
        runs = still_held(runs, key)
        if key not in runs:
            raise ui_error("Run a comparison (or open a trace) first; then save its figures.")
        entry = check_kept(runs[key])
        trace = entry.trace
        layer, head = shown_layer_head(trace, layer, head)
        step = clamp_step(trace, int(step or 0))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            reference = lens_reference(runs, key)
            paths = self.app.files.write(lambda folder: [write_step_figures(entry, step, layer, head, parse_view(view),
                                                                            fmt, folder, stamp, reference)],
                                         session_of(caller))
        except ExportError as exc:
            raise ui_error(str(exc), title="Could not save the figures") from None
        return {self.ui.panel.figure_files: gr.File(value=paths, visible=True)}

