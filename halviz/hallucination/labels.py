"""Mark each object mention as correct, hallucinated or unverified, and cut the text into
`(piece, label)` spans for `gr.HighlightedText`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from halviz.hallucination.extract import Mention
from halviz.hallucination.ground_truth import GroundTruth

Label = Literal["correct", "hallucinated", "unverified"]
CORRECT: Label = "correct"
HALLUCINATED: Label = "hallucinated"
UNVERIFIED: Label = "unverified"  # no ground truth to check against


@dataclass(frozen=True)
class LabelledMention:
    mention: Mention
    label: Label


def label_mentions(mentions: Sequence[Mention], gt: GroundTruth | None) -> list[LabelledMention]:
    """Label each mention against the ground truth's objects; all "unverified" when gt is None."""
    if gt is None:
        return [LabelledMention(mention, UNVERIFIED) for mention in mentions]
    return [
        LabelledMention(mention, CORRECT if mention.canonical in gt.objects else HALLUCINATED)
        for mention in mentions
    ]


def highlight_spans(text: str, labelled: Sequence[LabelledMention]) -> list[tuple[str, str | None]]:
    """Partition `text` into `(piece, label)`: mentions carry their label, the rest None.

    Concatenating the pieces gives `text` back exactly. Mentions that overlap an earlier one or
    fall outside the text are skipped rather than breaking the partition.
    """
    spans: list[tuple[str, str | None]] = []
    cursor = 0
    for item in sorted(labelled, key=lambda item: (item.mention.start, item.mention.end)):
        start, end = item.mention.start, item.mention.end
        if start < cursor or end <= start or end > len(text):
            continue
        if start > cursor:
            spans.append((text[cursor:start], None))
        spans.append((text[start:end], item.label))
        cursor = end
    if cursor < len(text):
        spans.append((text[cursor:], None))
    return spans
