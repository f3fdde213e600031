"""Mark each object mention as correct, hallucinated, unverified, over-counted or in a loop, and cut
the text into `(piece, label)` spans for `gr.HighlightedText`.

CHAIR alone calls a present object's every mention correct. Two labels say what it cannot see:

- "over-counted": a mention of a present object beyond how many the ground truth says there are
  (the second "clock" of "a big black clock next to a small black clock" on a one-clock scene).
  Every mention is read as claiming one more instance, which holds for the toy grammar (each
  object is introduced once, "a big black clock"); in free text "the cat" after "a cat" refers
  back, so counts are only checked where a ground truth carries them (the toy world).
- "in loop": a mention inside the repeats of the loop a caption ends in (repetition.py); only the
  loop's first copy counts, so a loop cannot pile up correct mentions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from halviz.hallucination.extract import Mention, extract_mentions
from halviz.hallucination.ground_truth import GroundTruth
from halviz.hallucination.repetition import Loop, find_loop

Label = Literal["correct", "hallucinated", "unverified", "over-counted", "in loop"]
CORRECT: Label = "correct"
HALLUCINATED: Label = "hallucinated"
UNVERIFIED: Label = "unverified"  # no ground truth to check against
OVER_COUNTED: Label = "over-counted"  # a present object, mentioned more often than the image holds it
IN_LOOP: Label = "in loop"  # a repeat of the caption's loop: not counted


@dataclass(frozen=True)
class LabelledMention:
    mention: Mention
    label: Label


@dataclass(frozen=True)
class CaptionLabels:
    labelled: list[LabelledMention]  # every mention, in order
    loop: Loop | None  # the loop the caption ends in, if any


def beyond_count(names: Sequence[str], counts: Mapping[str, int]) -> list[bool]:
    """Per mention (canonical names in caption order): is it past its object's count?

    Only objects ``counts`` names are checked; the first ``counts[name]`` mentions of each are not."""
    seen: Counter[str] = Counter()
    flags = []
    for name in names:
        seen[name] += 1
        flags.append(name in counts and seen[name] > counts[name])
    return flags


def label_mentions(mentions: Sequence[Mention], gt: GroundTruth | None) -> list[LabelledMention]:
    """Label each mention against the ground truth's objects (and counts, where it has them); all
    "unverified" when gt is None."""
    if gt is None:
        return [LabelledMention(mention, UNVERIFIED) for mention in mentions]
    over = beyond_count([m.canonical for m in mentions], gt.counts or {})
    return [
        LabelledMention(mention, HALLUCINATED if mention.canonical not in gt.objects
                        else OVER_COUNTED if past else CORRECT)
        for mention, past in zip(mentions, over)
    ]


def label_caption(text: str, gt: GroundTruth | None) -> CaptionLabels:
    """Every mention in ``text`` labelled: those in the repeats of its loop "in loop", the rest
    by :func:`label_mentions` (so counts are checked on the text before the loop repeats)."""
    mentions = extract_mentions(text)
    loop = find_loop(text)
    cut = len(text) if loop is None else loop.repeat_char
    counted = [m for m in mentions if m.start < cut]
    repeats = [LabelledMention(m, IN_LOOP) for m in mentions if m.start >= cut]
    return CaptionLabels(label_mentions(counted, gt) + repeats, loop)


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
