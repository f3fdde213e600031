"""The Evaluation view: open a results folder (one the operator allows, or an uploaded zip), read its
table with 95 % intervals and McNemar p, list the samples a method fixed, broke or changed against the
baseline, and open one as the baseline's and the method's caption cards with the debugger below.

A clicked sample goes through the page's own "replay a saved trace" callback (``Controller.replay``:
the same checks, keys, per-session upload limit and memory budget), once per column; a sample whose
traces were not saved is first decoded with the recorded settings by the app's decode call, its traces
written to a private temporary folder, and replayed the same way. The Gradio-free parts live in
``session/results_folders.py`` and ``evaluation/opening.py``.
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np

from halviz.evaluation import opening
from halviz.session import checks
from halviz.session import results_folders as folders
from halviz.session.escaping import markdown_text
from halviz.session.service import NEVER
from halviz.session.state import display_copy
from halviz.ui.errors import session_of, ui_error, user_errors

log = logging.getLogger("halviz.ui")
MAX_LISTED_SAMPLES = 200
KIND_CHOICES = [("fixed by it (baseline wrong, it right)", "fixed"), ("broken by it (baseline right, it wrong)", "broken"),
                ("changed by it (text differs)", "changed")]
SAMPLE_HEADERS = ["#", "sample", "image", "baseline says", "it says"]
_SCALED = {"len": 1.0}  # every other metric is a fraction, shown ×100
_COLUMNS = {"chair": [("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "Recall"), ("f1", "F1"), ("len", "Len")],
            "pope": [("accuracy", "Acc"), ("precision", "Prec"), ("recall", "Rec"), ("f1", "F1"), ("yes_ratio", "Yes%")]}


def table_html(results) -> str:
    """Every section as a table: value [95 % interval], McNemar p and the paired difference of the
    section's first metric against the baseline (cells never wrap; the table scrolls on a narrow page)."""
    base = results.baseline
    parts = []
    rows = results.rows
    cell = "style='padding:2px 8px;text-align:right'"
    for section in dict.fromkeys((r["benchmark"], r["split"]) for r in rows):
        bench, split = section
        columns = _COLUMNS["chair" if bench == "chair" else "pope"]
        first = columns[0][0]
        chosen = [r for r in rows if (r["benchmark"], r["split"]) == section]
        what = "hallucinates" if bench == "chair" else "right"
        parts.append(f"<p><b>{html.escape(bench.upper())}{' ' + html.escape(split) if split else ''}</b>, "
                     f"n = {int(chosen[0]['n'])}, 95 % bootstrap intervals; McNemar p on “{what}” and "
                     f"Δ{columns[0][1]} against <b>{html.escape(base)}</b></p>")
        head = "".join(f"<th {cell}>{h}</th>" for h in ["method", *(n for _, n in columns), "p", f"Δ{columns[0][1]}"])
        body = []
        for r in chosen:
            cells = [f"<td style='padding:2px 8px'>{html.escape(r['method'])}</td>"]
            for key, _ in columns:
                scale = _SCALED.get(key, 100.0)
                if key in r:
                    v, (lo, hi) = r[key]["value"], r[key]["ci"]
                    cells.append(f"<td {cell}>{scale * v:.1f} <small>[{scale * lo:.1f}, {scale * hi:.1f}]</small></td>")
                else:
                    cells.append(f"<td {cell}>–</td>")
            cells.append(f"<td {cell}>{'–' if r['p'] is None else format(r['p'], '.3f')}</td>")
            diff = (r["diff"] or {}).get(first)
            cells.append(f"<td {cell}>" + ("–" if not diff else f"{100 * diff['diff']:+.1f} <small>[{100 * diff['ci'][0]:+.1f}, "
                                                                 f"{100 * diff['ci'][1]:+.1f}]</small>") + "</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<div style='overflow-x:auto'><table style='white-space:nowrap;font-size:0.9em'>"
                     f"<tr>{head}</tr>{''.join(body)}</table></div>")
    return "\n".join(parts)


def _short(text: str, most: int = 140) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[: most - 1] + "…"


def _said(line) -> str:
    if line["benchmark"] == "chair":
        wrong = ", ".join(line["hallucinated"])
        return _short(line["caption"]) + (f"  ✗ {wrong}" if wrong else "  ✓")
    return f"{_short(line['answer'], 60)} → {line['parsed']} (label {line['label']})"


class EvaluationView:
    """The view's components, built where it is called (an accordion under the trace files)."""

    def __init__(self, controller, root: Path | None):
        self.controller = controller
        self.root = root
        listed = folders.listed_folders(root)
        with gr.Accordion("Evaluation: open a results folder (halviz eval --out DIR)", open=False,
                          elem_id="hv-eval"):
            gr.Markdown("A benchmark's table, then the samples behind it: pick a method and what it did against "
                        "the baseline (the first method), click a sample, and its two columns open above with "
                        "the debugger below: replayed from the saved traces (`--save-traces`), else decoded "
                        "again with the recorded settings.", elem_classes=["hv-note"])
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=280):
                    self.folder = gr.Dropdown(choices=listed, value=listed[0] if listed else None,
                                              label="Results folder on this server", interactive=bool(listed),
                                              elem_id="hv-eval-folder",
                                              info=(f"{len(listed)} folder(s) under the allowed results folder"
                                                    if listed else "none: the server allows none "
                                                    "(halviz app --results-dir DIR)"))
                    self.open = gr.Button("Open this folder", elem_id="hv-eval-open", interactive=bool(listed),
                                          size="sm")
                self.upload = gr.File(label="…or upload a .zip of a results folder", file_types=[".zip"],
                                      file_count="single", scale=3, min_width=280,
                                      elem_id="hv-eval-upload")
            self.status = gr.Markdown("No results folder open.", elem_id="hv-eval-status", latex_delimiters=[])
            self.table = gr.HTML(elem_id="hv-eval-table")
            with gr.Row(equal_height=True):
                self.method = gr.Dropdown(choices=[], label="Method (against the baseline)", scale=2,
                                          elem_id="hv-eval-method")
                self.kind = gr.Radio(choices=KIND_CHOICES, value="fixed", label="Samples", scale=3,
                                     elem_id="hv-eval-kind")
                self.benchmark = gr.Dropdown(choices=[], label="Benchmark", scale=2, elem_id="hv-eval-benchmark")
            self.samples = gr.Dataframe(headers=SAMPLE_HEADERS, value=[], interactive=False, wrap=True,
                                        column_widths=["5%", "12%", "11%", "36%", "36%"],
                                        elem_id="hv-eval-samples", label="Click a sample to open it as a comparison")
        self.opened = gr.State(None, time_to_live=3600)  # folders.Opened
        self.pairs = gr.State([], time_to_live=3600)  # the listed samples' pairs, in the table's order

    # ---- opening a folder -----------------------------------------------------------------------------
    def open_listed(self, name) -> dict:
        return self._shown(folders.open_listed(self.root, name))

    def open_zip(self, file) -> dict:
        return self._shown(folders.open_zip(file))

    def _shown(self, opened: folders.Opened) -> dict:
        results = opened.results
        others = [m for m in results.methods if m != results.baseline]
        if not others:
            raise checks.InputError("This evaluation has only its baseline; there is nothing to compare it with.")
        sections = [(b.upper(), b) for b in results.benchmarks if b == "chair"]
        sections += [(f"{b.upper()} {s}", f"{b}/{s}") for b in ("pope", "opope") for s in results.data.get(b, {})]
        method = "vcd" if "vcd" in others else others[0]
        section = sections[0][1] if sections else None
        saved = "with saved traces" if results.config.get("save_traces") else "without traces (samples are decoded again)"
        status = (f"Opened **{markdown_text(opened.name)}**: {markdown_text(str(results.config.get('model')))} on "
                  f"{markdown_text(str(results.config.get('images')))}, methods {markdown_text(', '.join(results.methods))}, "
                  f"baseline **{markdown_text(results.baseline)}**, {saved}.")
        listing = self._listing(opened, method, "fixed", section)
        return {self.opened: opened, self.status: status, self.table: table_html(results),
                self.method: gr.Dropdown(choices=others, value=method),
                self.benchmark: gr.Dropdown(choices=sections, value=section), self.kind: "fixed",
                self.upload: None, **listing}

    def filter(self, opened, method, kind, section) -> dict:
        if opened is None:
            raise checks.InputError("Open a results folder first.")
        return self._listing(opened, method, kind, section)

    def _listing(self, opened: folders.Opened, method, kind, section) -> dict:
        results = opened.results
        bench, _, split = (section or "").partition("/")
        try:
            pairs = results.discordant(str(method), str(kind), bench or None, split or None)
        except ValueError as exc:
            raise checks.InputError(str(exc)) from None
        shown = pairs[:MAX_LISTED_SAMPLES]
        rows = [[i + 1, p.sample_id, p.image_id, _said(p.baseline), _said(p.other)] for i, p in enumerate(shown)]
        more = f" (the first {MAX_LISTED_SAMPLES} listed)" if len(pairs) > len(shown) else ""
        kind_text = dict((v, k.split(" (")[0]) for k, v in KIND_CHOICES).get(kind, kind)
        note = (f"{len(pairs)} sample(s) {kind_text.replace('it', markdown_text(str(method)))}{more}. "
                "Click one to open it." if pairs else
                f"No sample {kind_text.replace('it', markdown_text(str(method)))} here.")
        return {self.pairs: shown, self.samples: gr.Dataframe(value=rows, headers=SAMPLE_HEADERS), self.status: note}

    # ---- opening a sample as a comparison -----------------------------------------------------------------
    def open_sample(self, opened, pairs, runs, evt: gr.SelectData, caller: gr.Request = None) -> dict:
        if opened is None:
            raise checks.InputError("Open a results folder first.")
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(pairs or []):
            raise checks.InputError("That row is not a sample; click a row of the list.")
        pair = pairs[row]
        results = opened.results
        methods = [results.baseline, pair.method]
        lines = {results.baseline: pair.baseline, pair.method: pair.other}
        truth = opening.ground_truth(results.config, pair.other, results._scenes)
        picture = results.picture(pair)
        ui = self.controller.ui
        keys = []
        with ExitStack() as stack:
            paths = {m: stack.enter_context(opened.saved(lines[m]["key"])) for m in methods}
            if all(paths[m] is not None for m in methods):
                source = "replayed from the saved traces"
            else:
                paths = self._decoded(results, pair, methods, picture, stack)
                source = "decoded again with the recorded settings (its traces were not saved)"
            for method in methods:
                name = re.sub(r"[^\w.+-]", "-", f"{pair.sample_id}-{method}")[:100] + ".npz"
                shown = self.controller.replay({"path": str(paths[method]), "orig_name": name}, None, runs, caller)
                runs = shown[ui.runs]
                keys.append(list(runs)[-1])  # the replay's entry is the newest
        image = display_copy(picture) if picture is not None else None
        for method, key in zip(methods, keys):  # the evaluation's ground truth and picture: harness traces carry neither
            runs[key] = replace(runs[key], truth=truth, image=image, title=f"{method} · {pair.sample_id}")
        self.controller.app.budget.hold(session_of(caller), [runs[k] for k in keys])
        comparison = opening.comparison_from_traces({m: runs[k].trace for m, k in zip(methods, keys)}, methods,
                                                    image=picture, truth=truth, model="", prompt="", max_new_tokens=0)
        updates = {ui.runs: runs, ui.slot_methods: keys, ui.live: [c.result for c in comparison.columns],
                   ui.summary_json: comparison.summary, ui.upload: None, **ui.panel.show(runs, keys[1])}
        for i, slot in enumerate(ui.slots):
            updates[slot.column] = gr.Column(visible=i < 2)
            if i < 2:
                column = comparison.columns[i]
                role = "baseline" if i == 0 else f"{pair.kind} by {column.title} · sample {pair.sample_id}"
                updates[slot.header] = f"### {markdown_text(column.title)}\n{markdown_text(role)}"
                updates[slot.caption] = column.spans
                updates[slot.summary] = column.result.summary_markdown()
        for slot in ui.whatif_slots:  # re-run columns of an earlier comparison would sit beside these
            updates[slot.column] = gr.Column(visible=False)
        updates[ui.whatif] = []
        said = (f"Opened {markdown_text(pair.describe())}: {source}. "
                "Click any word in a caption to inspect that step below.")
        updates[ui.status] = f"✓ {said}"
        updates[self.status] = said
        return updates

    def _decoded(self, results, pair, methods, picture, stack: ExitStack) -> dict:
        """The pair decoded with the recorded settings by the app's decode call; the trace files' paths."""
        app = self.controller.app
        if picture is None:
            raise checks.InputError(f"The traces of {pair.sample_id} were not saved and its picture ({pair.image_id}) "
                                    "is not on this server; run `halviz eval … --save-traces` and open that folder.")
        plan = opening.setting(results.config, pair)
        key = app.policy.check(plan.model, app.default_model)  # a model this server does not offer is refused
        app.load(key)
        last = None
        for last in app.decode_stacks(key, np.asarray(picture.convert("RGB")), plan.prompt,
                                      [plan.stacks[m] for m in methods], plan.max_new_tokens, NEVER, system=plan.system):
            pass
        if last is None or last.traces is None or any(t is None for t in last.traces):
            raise checks.InputError("Decoding this sample failed; the details are in the server log.")
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="halviz-eval-")))
        return {m: trace.save(folder / m.replace("+", "-"))[0] for m, trace in zip(methods, last.traces)}

    # ---- wiring -------------------------------------------------------------------------------------------
    def wire(self) -> None:
        ui = self.controller.ui
        private = dict(api_visibility="private")
        shown = [self.opened, self.status, self.table, self.method, self.benchmark, self.kind, self.upload,
                 self.pairs, self.samples]
        self.open.click(user_errors(self.open_listed), inputs=self.folder, outputs=shown, **private)
        self.upload.upload(user_errors(self.open_zip), inputs=self.upload, outputs=shown, preprocess=False,
                           **private)
        for control in (self.method, self.kind, self.benchmark):
            control.input(user_errors(self.filter), inputs=[self.opened, self.method, self.kind, self.benchmark],
                          outputs=[self.pairs, self.samples, self.status], **private)
        slot_parts = [c for s in ui.slots for c in (s.column, s.header, s.caption, s.summary)]
        outputs = [ui.status, *slot_parts, ui.runs, ui.slot_methods, ui.live, ui.summary_json, ui.upload,
                   *(s.column for s in ui.whatif_slots), ui.whatif, self.status, *ui.panel.trace_outputs]
        self.samples.select(user_errors(self.open_sample), inputs=[self.opened, self.pairs, ui.runs], outputs=outputs,
                            concurrency_id="decode", show_progress="minimal", **private) \
            .success(None, js="() => document.getElementById('hv-columns')?.scrollIntoView({behavior: 'smooth'})",
                     **private)


def build(controller) -> EvaluationView:
    """The view, wired, for the folder ``$HALVIZ_RESULTS_DIR`` names (``halviz app --results-dir``)."""
    view = EvaluationView(controller, folders.results_root())
    view.wire()
    return view
