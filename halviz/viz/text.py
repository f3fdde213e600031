"""Captions cut into one clickable span per generated token, and character offsets back to steps."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

CURRENT_STEP = "this step"
LabelledRange = tuple[int, int, str]  # start, end (characters of the caption), label


def token_spans(texts: Sequence[str], labelled: Sequence[LabelledRange], current: int | None = None,
                ends_with_eos: bool = False) -> list[tuple[str, str | None]]:
    """One ``(piece, label)`` per step, so a span's index is its step; a token inside an object
    mention carries that mention's label, the current step carries ``CURRENT_STEP``."""
    starts = [0, *accumulate(len(t) for t in texts)]
    spans: list[tuple[str, str | None]] = []
    for step, piece in enumerate(texts):
        start, end = starts[step], starts[step + 1]
        label = next((lab for s, e, lab in labelled if s < end and start < e), None)
        if step == current:
            label = CURRENT_STEP
        if not piece:  # the end token, or a token holding only part of a multi-byte character
            piece = " ⟨end⟩" if ends_with_eos and step == len(texts) - 1 else "·"
        spans.append((piece, label))
    return spans


def step_at_offset(texts: Sequence[str], offset: int) -> int:
    """The step whose text covers caption character ``offset`` (the last step past the end)."""
    position = 0
    for step, piece in enumerate(texts):
        position += len(piece)
        if offset < position:
            return step
    return max(len(texts) - 1, 0)


def span_offset(spans: Sequence[Sequence], index: int) -> int:
    """Character offset at which span ``index`` of a HighlightedText value starts."""
    total = 0
    for span in spans[:index]:
        total += len(span[0] if not isinstance(span, dict) else span.get("token", ""))
    return total
