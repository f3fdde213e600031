"""Several decodes of one image, batched as rows of one forward, and what each column shows.

:func:`decode_rounds` is the only place the app drives the model. It yields plain Python/numpy data
(text pieces, counts, traces), so it may run inside ``@spaces.GPU`` on ZeroGPU (see
:mod:`halviz.ui.gpu`), where the function runs in another process and only what it yields comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from halviz.engine.batch import BatchDecoder
from halviz.hallucination import (
    CORRECT,
    HALLUCINATED,
    UNVERIFIED,
    GroundTruth,
    extract_mentions,
    highlight_spans,
    label_mentions,
)
from halviz.methods.base import Method
from halviz.models import LoadedModel
from halviz.trace import Trace
from halviz.ui.escaping import markdown_text

log = logging.getLogger("halviz.ui")
UPDATE_EVERY_S = 0.1  # at most 10 UI updates per second: each costs Gradio ~15 ms of the decode thread
CHECKPOINT_EVERY_S = 1.0  # traces are rebuilt this often so that a stopped run keeps its data
ERROR_PREFIX = "error: "  # a column whose method raised finishes with this reason
MAX_COLUMN_ERROR_CHARS = 200


@dataclass
class Progress:
    """What happened since the start, after one or more rounds (one token per running decoder)."""

    texts: list[list[str]]  # per column, the text piece of every step so far
    compute_s: list[float]  # per column, time spent in its own forward passes
    finish: list[str | None]  # per column: "eos", "length", "error: ..." or None while running
    traces: list[Trace | None] | None = None  # at checkpoints and at the end; None for a column that failed early
    tokens: list[list[int]] | None = None  # per column, the token id of every step so far


def decode_rounds(loaded: LoadedModel, image: Image.Image, prompt: str, stacks: Sequence[Sequence[Method]],
                  max_new_tokens: int, update_every_s: float = UPDATE_EVERY_S) -> Iterator[Progress]:
    """Decode every stack at once, as rows of one batch (one token per column per round), yielding
    progress now and then.

    A column whose method raises ends with ``finish == "error: ..."`` while the others carry on: one
    faulty method must never take the whole comparison (or the worker) down with it.
    """
    count = len(stacks)
    texts: list[list[str]] = [[] for _ in range(count)]
    tokens: list[list[int]] = [[] for _ in range(count)]
    compute = [0.0] * count
    finish: list[str | None] = [None] * count
    try:
        decoder = BatchDecoder(loaded, image, prompt, [list(s) for s in stacks], max_new_tokens)
    except Exception as exc:  # bad input for every column: each reports it
        finish = [column_error(i, exc) for i in range(count)]
        yield Progress(texts, compute, finish, [None] * count)
        return
    last_update = last_checkpoint = time.perf_counter()
    checkpoint_cost = 0.0
    rounds = iter(decoder)
    while True:
        try:
            steps = next(rounds, None)
        except Exception as exc:  # the batch itself failed (not one method): every running column reports it
            steps = None
            for i in range(count):
                if finish[i] is None:
                    finish[i] = column_error(i, exc)
        if steps is not None:
            for i, step in enumerate(steps):
                if step is not None:
                    texts[i].append(step.text)
                    tokens[i].append(step.token_id)
                    compute[i] += step.elapsed_ms / 1e3
        for i, column in enumerate(decoder.columns):
            if finish[i] is None and column.finish is not None:
                finish[i] = column_error(i, column.error) if column.error is not None else column.finish
        if steps is None:  # the decoder is done: every column has ended (or the batch failed)
            finish = [f or "stopped" for f in finish]
        now = time.perf_counter()
        done = steps is None
        if done or now - last_update >= update_every_s:
            traces = None
            if done or now - last_checkpoint >= max(CHECKPOINT_EVERY_S, 10 * checkpoint_cost):
                started = time.perf_counter()
                traces = [safe_trace(decoder, i, loaded, finish[i]) for i in range(count)]
                checkpoint_cost, last_checkpoint = time.perf_counter() - started, time.perf_counter()
            yield Progress([list(t) for t in texts], list(compute), list(finish), traces, [list(t) for t in tokens])
            last_update = time.perf_counter()
        if done:
            return


def column_error(index: int, exc: BaseException) -> str:
    """The finish reason of a column whose method raised; the stack trace goes to the server log only."""
    log.error("column %d failed", index, exc_info=exc)
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > MAX_COLUMN_ERROR_CHARS:
        text = text[: MAX_COLUMN_ERROR_CHARS - 1] + "…"
    return f"{ERROR_PREFIX}{type(exc).__name__}: {text}"


def safe_trace(decoder: BatchDecoder, index: int, loaded: LoadedModel, finish: str | None) -> Trace | None:
    """Column ``index``'s trace, or None when it failed before it had one (or building it fails too)."""
    if finish and finish.startswith(ERROR_PREFIX) and not decoder.steps[index]:
        return None
    try:
        trace = finished_trace(decoder, index, loaded)
    except Exception:
        log.exception("building a trace failed")
        return None
    if finish and finish.startswith(ERROR_PREFIX):
        trace.meta["finish_reason"] = finish
    return trace


def finished_trace(decoder: BatchDecoder, index: int, loaded: LoadedModel) -> Trace:
    """Column ``index``'s trace plus the strings of every vocabulary id it mentions (for replay without a model)."""
    trace = decoder.trace(index)
    ids: set[int] = set()
    for key, array in trace.arrays.items():
        if key == "top_ids" or key.endswith("_ids") and key.startswith("method/"):
            ids.update(int(i) for i in np.unique(array) if i >= 0)
    tokenizer = loaded.processor.tokenizer
    trace.meta["vocab_strings"] = {str(i): tokenizer.decode([i]) for i in sorted(ids)}
    return trace


# ---- what a column shows ------------------------------------------------------------------------

@dataclass
class ColumnResult:
    method: str
    title: str
    caption: str
    spans: list[tuple[str, str | None]]
    objects: dict[str, list[str]]  # label → distinct canonical objects, in order of first mention
    counts: dict[str, int]  # label → mentions, repeats included (as CHAIR_i counts them)
    tokens: int
    tokens_per_s: float
    finish: str | None
    baseline: str | None = None  # the first column's title, which this one is diffed against
    diverges_at: int | None = None  # first step whose token differs from the baseline's (None: none yet)

    @property
    def error(self) -> str | None:
        """What went wrong in this column, if its method raised."""
        return self.finish[len(ERROR_PREFIX):] if self.finish and self.finish.startswith(ERROR_PREFIX) else None

    def summary_json(self) -> dict[str, Any]:
        summary = {"caption": self.caption, **{label: self.objects[label] for label in LABELS},
                   "tokens_per_s": round(self.tokens_per_s, 2), "tokens": self.tokens,
                   "finish_reason": self.finish or "running"}
        if self.error:
            summary["error"] = self.error
        if self.baseline is not None:
            summary["first_divergence_step"] = self.diverges_at
        return summary

    def summary_markdown(self) -> str:
        c = self.counts
        parts = [f"**{self.tokens}** tokens", f"{self.tokens_per_s:.0f} tok/s"]
        if sum(c.values()):
            parts.append(f"<span class='hv-ok'>✔ {c[CORRECT]}</span> <span class='hv-bad'>✘ {c[HALLUCINATED]}</span>"
                         f" <span class='hv-unk'>? {c[UNVERIFIED]}</span> mentions")
            checked = c[CORRECT] + c[HALLUCINATED]
            if checked:
                parts.append(f"CHAIRᵢ {c[HALLUCINATED] / checked:.0%}")
        else:
            parts.append("no object mentions")
        if self.error:
            parts.append(f"<span class='hv-bad'>✗ this method failed and stopped: {markdown_text(self.error)}</span>")
            return " · ".join(parts)
        if self.baseline is not None:
            parts.append(f"same tokens as {markdown_text(self.baseline)} so far" if self.diverges_at is None
                         else f"differs from {markdown_text(self.baseline)} from step {self.diverges_at}")
        state = {"eos": "finished", "length": "hit max tokens", "stopped": "stopped", None: "running…"}
        parts.append(state.get(self.finish, markdown_text(self.finish)))
        return " · ".join(parts)


LABELS = (CORRECT, HALLUCINATED, UNVERIFIED)


def column_result(method: str, title: str, texts: Sequence[str], compute_s: float, finish: str | None,
                  truth: GroundTruth | None) -> ColumnResult:
    caption = "".join(texts)
    labelled = label_mentions(extract_mentions(caption), truth)
    objects: dict[str, list[str]] = {label: [] for label in LABELS}
    counts = dict.fromkeys(LABELS, 0)
    for item in labelled:
        counts[item.label] += 1
        if item.mention.canonical not in objects[item.label]:
            objects[item.label].append(item.mention.canonical)
    speed = len(texts) / compute_s if compute_s > 0 else 0.0
    return ColumnResult(method, title, caption, highlight_spans(caption, labelled), objects, counts,
                        len(texts), speed, finish)


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first step at which two columns chose different tokens; None while one is a prefix of the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def with_divergence(results: list[ColumnResult], tokens: Sequence[Sequence[int]] | None) -> list[ColumnResult]:
    """Every column after the first, diffed token by token against the first (the original)."""
    if tokens is None or len(results) < 2:
        return results
    for result, own in zip(results[1:], tokens[1:]):
        result.baseline = results[0].title
        result.diverges_at = first_divergence(tokens[0], own)
    return results


def mention_ranges(caption: str, truth: GroundTruth | None) -> list[tuple[int, int, str]]:
    return [(m.mention.start, m.mention.end, m.label) for m in label_mentions(extract_mentions(caption), truth)]
