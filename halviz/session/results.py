"""Several decodes of one image, batched as rows of one forward, and what each column shows.

:func:`decode_rounds` is the only place the app drives the model. It yields plain Python/numpy data
(text pieces, counts, traces), so it may run inside ``@spaces.GPU`` on ZeroGPU (see
:mod:`halviz.session.decoding`), where the function runs in another process and only what it yields comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from halviz.engine.batch import BatchDecoder, PrefillWork
from halviz.hallucination import (
    CORRECT,
    HALLUCINATED,
    IN_LOOP,
    OVER_COUNTED,
    UNVERIFIED,
    GroundTruth,
    highlight_spans,
    label_caption,
    repetition_rate,
    step_of_char,
)
from halviz.methods.base import Method
from halviz.models import LoadedModel
from halviz.trace import Trace
from halviz.session.escaping import markdown_text

log = logging.getLogger("halviz.session")

# The caption card's small print, under its scores.
CHAIR_BLIND_SPOTS = ("CHAIRᵢ = hallucinated ÷ object mentions; it cannot see objects left out (recall), counts, "
                     "colours and sizes, or repetition (a loop's repeats are grey and not counted).")
COUNTS_UNKNOWN = "No counts in this ground truth: repeated mentions are not checked."
SPEED_NOTE = "tok/s is the batch's decode rate, the same for every column of one run."
UPDATE_EVERY_S = 0.1  # at most 10 UI updates per second: each costs Gradio ~15 ms of the decode thread
CHECKPOINT_EVERY_S = 1.0  # traces are rebuilt this often so that a stopped run keeps its data
ERROR_PREFIX = "error: "  # a column whose method raised finishes with this reason
MAX_COLUMN_ERROR_CHARS = 200


@dataclass
class Progress:
    """What happened since the start, after one or more rounds (one token per running decoder)."""

    texts: list[list[str]]  # per column, the text piece of every step so far
    # Per column: its tokens × the batch's mean decode round. Every running column gets one token per
    # round of one shared forward, so a column has no speed of its own: len(texts[i]) / compute_s[i]
    # is the batch's decode rate, the same for every column. The shared prefill is left out (in
    # prefill_s): spread over each column's own length it made short columns look slow.
    compute_s: list[float]
    finish: list[str | None]  # per column: "eos", "length", "error: ..." or None while running
    traces: list[Trace | None] | None = None  # at checkpoints and at the end; None for a column that failed early
    tokens: list[list[int]] | None = None  # per column, the token id of every step so far
    prefill_s: float = 0.0  # the batch's one prefill forward (it also gives every column its first token)
    # Before the first token, where the caller asked for phases: "image" (the vision tower is about to
    # run) then "prompt" (the prefill is); ``note`` says what in one sentence. None once tokens come.
    phase: str | None = None
    note: str = ""


def decode_rounds(loaded: LoadedModel, image: Image.Image, prompt: str, stacks: Sequence[Sequence[Method]],
                  max_new_tokens: int, update_every_s: float = UPDATE_EVERY_S,
                  system: str | None = None, phases: bool = False) -> Iterator[Progress]:
    """Decode every stack at once, as rows of one batch (one token per column per round), yielding
    progress now and then. ``phases``: before the first token, also yield a Progress as the vision
    tower starts (``phase="image"``) and as the prefill starts (``phase="prompt"``), so a page can say
    what the wait is for.

    A column whose method raises ends with ``finish == "error: ..."`` while the others carry on: one
    faulty method must never take the whole comparison (or the worker) down with it.
    """
    count = len(stacks)
    texts: list[list[str]] = [[] for _ in range(count)]
    tokens: list[list[int]] = [[] for _ in range(count)]
    timing = BatchTiming()
    finish: list[str | None] = [None] * count
    try:
        decoder = BatchDecoder(loaded, image, prompt, [list(s) for s in stacks], max_new_tokens, system=system)
    except Exception as exc:  # bad input for every column: each reports it
        finish = [column_error(i, exc) for i in range(count)]
        yield Progress(texts, [0.0] * count, finish, [None] * count)
        return
    if phases and decoder.open():
        try:
            work = decoder.prefill_work()
            finish = _finishes(decoder, finish)
            yield Progress([[] for _ in range(count)], [0.0] * count, list(finish), phase="image",
                           note=image_note(work))
            decoder.encode_images()
        except Exception as exc:  # the tower failed: every running column reports it, as a failed batch does
            finish = [f or column_error(i, exc) for i, f in enumerate(_finishes(decoder, finish))]
            traces = [safe_trace(decoder, i, loaded, f) for i, f in enumerate(finish)]
            yield Progress(texts, [0.0] * count, finish, traces)
            return
        yield Progress([[] for _ in range(count)], [0.0] * count, list(finish), phase="prompt", note=prompt_note(work))
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
            timing.add_round(steps)
            for i, step in enumerate(steps):
                if step is not None:
                    texts[i].append(step.text)
                    tokens[i].append(step.token_id)
        for i, column in enumerate(decoder.columns):
            if finish[i] is None and column.finish is not None:
                finish[i] = column_error(i, column.error) if column.error is not None else column.finish
        if steps is None:  # the decoder is done: every column has ended (or the batch failed)
            finish = [f or "stopped" for f in finish]
        now = time.perf_counter()
        done = steps is None
        # The prefill round gives every column its first token: shown the moment it exists.
        first_words = steps is not None and timing.prefill_s is not None and timing.decode_rounds == 0
        if done or first_words or now - last_update >= update_every_s:
            traces = None
            if done or now - last_checkpoint >= max(CHECKPOINT_EVERY_S, 10 * checkpoint_cost):
                started = time.perf_counter()
                traces = [safe_trace(decoder, i, loaded, finish[i]) for i in range(count)]
                checkpoint_cost, last_checkpoint = time.perf_counter() - started, time.perf_counter()
            yield Progress([list(t) for t in texts], timing.compute_s(texts), list(finish), traces,
                           [list(t) for t in tokens], timing.prefill_s or 0.0)
            last_update = time.perf_counter()
        if done:
            return


def _finishes(decoder: BatchDecoder, finish: list[str | None]) -> list[str | None]:
    """``finish`` with the columns that have ended since (a method refusing its setup) filled in."""
    return [f if f is not None or c.finish is None else column_error(i, c.error) if c.error is not None
            else c.finish for i, (f, c) in enumerate(zip(finish, decoder.columns))]


def image_note(work: PrefillWork) -> str:
    """The vision tower's phase in one sentence: the picture's image tokens and views."""
    views = "1 view" if work.views == 1 else f"{work.views} views: tiles and a whole-picture view"
    times = "" if work.images == 1 else " twice" if work.images == 2 else f" {work.images} times"
    why = "" if work.images == 1 else " (the picture and a method's altered copy of it)"
    return (f"Encoding the picture: {work.image_tokens} image tokens ({views}) through the vision tower"
            f"{times}{why}…")


def prompt_note(work: PrefillWork) -> str:
    """The prefill's phase in one sentence: the prompt's tokens, the image's among them, and its rows."""
    rows = f" in {work.rows} rows of one forward" if work.rows > 1 else ""
    return (f"Reading the prompt: {work.prompt_tokens} tokens ({work.image_tokens} of them the picture's){rows}; "
            "the first words come with it…")


@dataclass
class BatchTiming:
    """The batch's prefill and decode rounds; each round's time is shared by every column in it."""

    prefill_s: float | None = None  # None until the prefill round has come
    decode_s: float = 0.0
    decode_rounds: int = 0

    def add_round(self, steps: Sequence[Any]) -> None:
        ran = [s for s in steps if s is not None]
        if not ran:
            return
        seconds = ran[0].elapsed_ms / 1e3  # the round's forward, the same for every column in it
        if self.prefill_s is None:  # the first round is the prefill
            self.prefill_s = seconds
        else:
            self.decode_s += seconds
            self.decode_rounds += 1

    def compute_s(self, texts: Sequence[Sequence[str]]) -> list[float]:
        """Progress.compute_s: each column's tokens at the batch's mean decode round (0 before one)."""
        per_round = self.decode_s / self.decode_rounds if self.decode_rounds else 0.0
        return [len(t) * per_round for t in texts]


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
        if key in ("top_ids", "lens_top_ids") or key.endswith("_ids") and key.startswith("method/"):
            ids.update(int(i) for i in np.unique(array) if i >= 0)
    tokenizer = loaded.processor.tokenizer
    trace.meta["vocab_strings"] = {str(i): tokenizer.decode([i]) for i in sorted(ids)}
    trace.meta["image_budget"] = loaded.adapter.budget  # the image-token budget the processor applied
    return trace


# ---- what a column shows ------------------------------------------------------------------------

LOOP_BLOCK_CHARS = 40  # the card quotes at most this much of a loop's block


@dataclass
class ColumnResult:
    method: str
    title: str
    caption: str
    spans: list[tuple[str, str | None]]
    objects: dict[str, list[str]]  # label → distinct canonical objects, in order of first mention
    counts: dict[str, int]  # label → counted mentions, repeats included (as CHAIR_i counts them)
    tokens: int
    tokens_per_s: float | None  # the batch's decode rate: one figure for every column of one batch (None: unknown)
    finish: str | None
    baseline: str | None = None  # the first column's title, which this one is diffed against
    diverges_at: int | None = None  # first step whose token differs from the baseline's (None: none yet)
    loops_from: int | None = None  # the step (token index) where the looping tail begins; None: no loop
    loop_block: str = ""  # one copy of the loop's block, as the caption writes it
    loop_copies: float = 0.0
    repetition: float = 0.0  # seq-rep-4 of the caption (hallucination.repetition)
    in_loop: int = 0  # mentions in the loop's repeats: shown, not counted
    over_counted: dict[str, int] | None = None  # object → mentions beyond its count; None: counts unknown
    checked: bool = False  # a ground truth was given

    @property
    def error(self) -> str | None:
        """What went wrong in this column, if its method raised."""
        return self.finish[len(ERROR_PREFIX):] if self.finish and self.finish.startswith(ERROR_PREFIX) else None

    def chair_i(self) -> float | None:
        """Hallucinated / counted mentions (over-counted ones are of present objects, so CHAIR counts
        them as correct); None without a ground truth or a counted mention."""
        c = self.counts
        checked = c[CORRECT] + c[HALLUCINATED] + sum((self.over_counted or {}).values())
        return c[HALLUCINATED] / checked if self.checked and checked else None

    def summary_json(self) -> dict[str, Any]:
        """The API's per-column summary. Besides the caption, the distinct objects per label and the
        speed (``tokens_per_s``: the batch's decode rate, shared by every column), it gives
        ``loops_from_step`` (the step where the caption starts looping, or null), ``repetition_rate``
        (seq-rep-4, 0–1), ``mentions_in_loop`` (mentions in the loop's repeats, not counted) and
        ``over_counted`` ({object: mentions beyond its count}, or null where the ground truth gives no
        counts)."""
        summary = {"caption": self.caption, **{label: self.objects[label] for label in LABELS},
                   "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 2),
                   "tokens": self.tokens,
                   "finish_reason": self.finish or "running", "loops_from_step": self.loops_from,
                   "repetition_rate": round(self.repetition, 3), "mentions_in_loop": self.in_loop,
                   "over_counted": self.over_counted}
        if self.error:
            summary["error"] = self.error
        if self.baseline is not None:
            summary["first_divergence_step"] = self.diverges_at
        return summary

    def summary_markdown(self) -> str:
        c = self.counts
        parts = []
        if self.loops_from is not None:  # first, so a loop is seen before any score
            block = self.loop_block if len(self.loop_block) <= LOOP_BLOCK_CHARS else \
                self.loop_block[:LOOP_BLOCK_CHARS - 1] + "…"
            parts.append(f"<span class='hv-bad'>⚠ **loops from token {self.loops_from}**: "
                         f"“{markdown_text(block)}” ×{self.loop_copies:.1f}</span>")
        if self.repetition > 0:
            parts.append(f"repetition {self.repetition:.0%}")
        parts += [f"**{self.tokens}** tokens", "no timing recorded" if self.tokens_per_s is None else
                  f"{self.tokens_per_s:.0f} tok/s (shared batch)"]
        over = sum((self.over_counted or {}).values())
        if sum(c.values()) + over + self.in_loop:
            marks = (f"<span class='hv-ok'>✔ {c[CORRECT]}</span> <span class='hv-bad'>✘ {c[HALLUCINATED]}</span>"
                     + (f" <span class='hv-bad'>+{over} over-counted</span>" if over else "")
                     + f" <span class='hv-unk'>? {c[UNVERIFIED]}</span> mentions")
            if self.in_loop:
                marks += f" (+{self.in_loop} in the loop, not counted)"
            parts.append(marks)
            chair_i = self.chair_i()
            if chair_i is not None:
                warn = [w for w, on in (("before the loop only", self.in_loop or self.loops_from is not None),
                                        (f"{over} over-counted", over)) if on]
                parts.append(f"CHAIRᵢ {chair_i:.0%}" + (f" ⚠ {'; '.join(warn)}" if warn else ""))
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
        text = " · ".join(parts)
        if self.chair_i() is not None:  # what the score on this card cannot see
            notes = [CHAIR_BLIND_SPOTS] + ([COUNTS_UNKNOWN] if self.over_counted is None else [])
            text += f"  \n<small>{' '.join(notes)} {SPEED_NOTE}</small>"
        return text


LABELS = (CORRECT, HALLUCINATED, UNVERIFIED)


def column_result(method: str, title: str, texts: Sequence[str], compute_s: float | None, finish: str | None,
                  truth: GroundTruth | None) -> ColumnResult:
    """What column ``method`` shows. ``compute_s`` is its entry of :attr:`Progress.compute_s`, so that
    ``len(texts) / compute_s`` is the batch's decode rate (one figure for every column); None where no
    timing is known (a column replayed from a trace recorded without step times)."""
    caption = "".join(texts)
    labels = label_caption(caption, truth)
    objects: dict[str, list[str]] = {label: [] for label in LABELS}
    counts = dict.fromkeys(LABELS, 0)
    over: dict[str, int] = {}
    in_loop = 0
    for item in labels.labelled:
        name = item.mention.canonical
        if item.label == IN_LOOP:
            in_loop += 1
        elif item.label == OVER_COUNTED:  # the object is present: its first mentions were correct
            over[name] = over.get(name, 0) + 1
        else:
            counts[item.label] += 1
            if name not in objects[item.label]:
                objects[item.label].append(name)
    speed = None if compute_s is None else len(texts) / compute_s if compute_s > 0 else 0.0
    loop = labels.loop
    return ColumnResult(
        method, title, caption, highlight_spans(caption, labels.labelled), objects, counts, len(texts), speed,
        finish, loops_from=None if loop is None else step_of_char(texts, loop.start_char),
        loop_block="" if loop is None else loop.block, loop_copies=0.0 if loop is None else loop.copies,
        repetition=repetition_rate(caption), in_loop=in_loop,
        over_counted=over if truth is not None and truth.counts is not None else None,
        checked=truth is not None)


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
    """Every mention's characters and label, labelled as the caption cards label them."""
    return [(m.mention.start, m.mention.end, m.label) for m in label_caption(caption, truth).labelled]
