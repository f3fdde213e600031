"""CHAIR metrics (methods.md section 6), as fractions in [0, 1] (tables multiply by 100).

- CHAIR_S   = captions with >= 1 hallucinated mention / captions
- CHAIR_I   = hallucinated mentions / all mentions (repeats counted)
- Recall    = sum over captions of distinct correct objects / sum of |ground truth|
- Precision = sum of distinct correct objects / sum of distinct mentioned objects
- F1        = 2PR / (P + R)
- Len       = mean caption length in words (`extract.count_words`). The standard script counts
              NLTK tokens after phrase merging instead (punctuation counts, "hot dog" is one), so
              its Len runs a little higher on punctuated captions.

A zero denominator (no captions, no mentions, empty ground truth, P + R = 0) gives 0.0, so an
empty evaluation reads as "nothing measured" rather than raising or returning NaN.

These follow the standard script, repeats included, so that figures compare with the papers'. What
they cannot see is reported beside them (evaluation.md, "CHAIR's blind spots"):

- Looping   = captions that end in a loop (repetition.py's rule) / captions. A loop repeats its
              mentions, so CHAIR_I counts every copy: a looping caption of a present object scores 0.
- Rep-4     = mean seq-rep-4 of the captions (repetition.py).
- Over      = over-counted mentions / all mentions, over the captions whose ground truth has counts
              (the toy world's); None when none has. A mention is over-counted when its object is
              present but mentioned more often than the image holds it (labels.beyond_count),
              counted on the text before a loop's repeats. CHAIR counts these as correct.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from halviz.hallucination.extract import count_words, extract_mentions
from halviz.hallucination.labels import beyond_count
from halviz.hallucination.repetition import Loop, find_loop, repetition_rate


@dataclass(frozen=True)
class CaptionChair:
    """One caption's objects: canonical names in order of mention, repeats included."""

    mentions: tuple[str, ...]
    hallucinated: tuple[str, ...]
    words: int
    loop: Loop | None = None  # the loop the caption ends in
    repetition: float = 0.0  # seq-rep-4
    over_counted: tuple[str, ...] | None = None  # one name per extra mention; None: counts unknown


@dataclass(frozen=True)
class ChairResult:
    chair_s: float
    chair_i: float
    recall: float
    precision: float
    f1: float
    len: float
    per_caption: tuple[CaptionChair, ...]
    looping: float = 0.0  # share of captions that end in a loop
    repetition: float = 0.0  # mean seq-rep-4
    over_counted: float | None = None  # over-counted / all mentions where counts are known; None: nowhere


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def over_counted_names(caption: str, loop: Loop | None, counts: Mapping[str, int]) -> tuple[str, ...]:
    """The objects of ``caption``'s mentions past their count, one name per extra mention, on the
    text before its loop's repeats."""
    cut = len(caption) if loop is None else loop.repeat_char
    names = [m.canonical for m in extract_mentions(caption[:cut])]
    return tuple(name for name, past in zip(names, beyond_count(names, counts)) if past)


def chair_metrics(captions: Sequence[str], truths: Sequence[frozenset[str]],
                  counts: Sequence[Mapping[str, int] | None] | None = None) -> ChairResult:
    """CHAIR over captions paired with their images' canonical ground-truth objects, and, where
    ``counts`` gives an image's object counts (None: unknown), its over-counted mentions."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground truths")
    counts = list(counts) if counts is not None else [None] * len(captions)
    if len(counts) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(counts)} object counts")
    per_caption: list[CaptionChair] = []
    hallucinated_captions = hallucinated_mentions = all_mentions = 0
    distinct_correct = distinct_mentioned = truth_objects = 0
    over_mentions = checked_mentions = 0
    for caption, truth, known in zip(captions, truths, counts):
        mentions = tuple(mention.canonical for mention in extract_mentions(caption))
        hallucinated = tuple(name for name in mentions if name not in truth)
        loop = find_loop(caption)
        over = None if known is None else over_counted_names(caption, loop, known)
        if over is not None:
            over_mentions += len(over)
            checked_mentions += len(mentions)
        per_caption.append(CaptionChair(mentions, hallucinated, count_words(caption), loop,
                                        repetition_rate(caption), over))
        hallucinated_captions += bool(hallucinated)
        hallucinated_mentions += len(hallucinated)
        all_mentions += len(mentions)
        distinct_correct += len(set(mentions) & truth)
        distinct_mentioned += len(set(mentions))
        truth_objects += len(truth)

    recall = _ratio(distinct_correct, truth_objects)
    precision = _ratio(distinct_correct, distinct_mentioned)
    return ChairResult(
        chair_s=_ratio(hallucinated_captions, len(captions)),
        chair_i=_ratio(hallucinated_mentions, all_mentions),
        recall=recall,
        precision=precision,
        f1=_ratio(2 * precision * recall, precision + recall),
        len=_ratio(sum(item.words for item in per_caption), len(captions)),
        per_caption=tuple(per_caption),
        looping=_ratio(sum(item.loop is not None for item in per_caption), len(captions)),
        repetition=_ratio(sum(item.repetition for item in per_caption), len(captions)),
        over_counted=(_ratio(over_mentions, checked_mentions)
                      if any(known is not None for known in counts) else None),
    )
