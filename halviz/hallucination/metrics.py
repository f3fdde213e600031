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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from halviz.hallucination.extract import count_words, extract_mentions


@dataclass(frozen=True)
class CaptionChair:
    """One caption's objects: canonical names in order of mention, repeats included."""

    mentions: tuple[str, ...]
    hallucinated: tuple[str, ...]
    words: int


@dataclass(frozen=True)
class ChairResult:
    chair_s: float
    chair_i: float
    recall: float
    precision: float
    f1: float
    len: float
    per_caption: tuple[CaptionChair, ...]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def chair_metrics(captions: Sequence[str], truths: Sequence[frozenset[str]]) -> ChairResult:
    """CHAIR over captions paired with their images' canonical ground-truth objects."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground truths")
    per_caption: list[CaptionChair] = []
    hallucinated_captions = hallucinated_mentions = all_mentions = 0
    distinct_correct = distinct_mentioned = truth_objects = 0
    for caption, truth in zip(captions, truths):
        mentions = tuple(mention.canonical for mention in extract_mentions(caption))
        hallucinated = tuple(name for name in mentions if name not in truth)
        per_caption.append(CaptionChair(mentions, hallucinated, count_words(caption)))
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
    )
