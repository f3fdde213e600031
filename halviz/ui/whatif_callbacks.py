"""What if: choosing patches and heads on the debugger's maps, and re-running a column with that
intervention beside the original."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import gradio as gr
import numpy as np

from halviz.session.results import column_result, first_divergence, with_divergence
from halviz.session.decoding import build_spec_stacks
from halviz.session.budget import DROPPED, check_kept
from halviz.session.escaping import markdown_text
from halviz.ui.pickers import EXPIRED
from halviz.session.state import RunEntry, Runs
from halviz.session.memory import release_memory
from halviz.session.selection import (Selection, as_selection, intervention_specs, short_title, stack_specs,
                                 with_intervention)
from halviz.ui.whatif import GROW_BOX, INSPECT, MAX_WHATIF, clicked_head, clicked_patch, whatif_spans
from halviz.methods import check_compatible
from halviz.ui.compare_callbacks import model_line
from halviz.ui.errors import _number, file_paths, rerun_refused, session_of, ui_error, user_errors
from halviz.ui.layout import Layout
from halviz.ui.page_service import HalvizApp


log = logging.getLogger("halviz.ui")
WHATIF_PREFIX = "whatif:"


class WhatIfCallbacks:
    """The what-if callbacks (mixed into :class:`halviz.ui.controller.Controller`)."""

    app: HalvizApp
    ui: Layout

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
                                                   tokens, self.app.update_every_s,
                                                   image_budget=entry.trace.meta.get("image_budget")):
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
