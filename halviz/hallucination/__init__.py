"""Object hallucination: COCO vocabulary, mention extraction, ground truth, labels and CHAIR."""

from halviz.hallucination.extract import Mention, count_words, extract_mentions
from halviz.hallucination.ground_truth import (
    TRUST_LEVELS,
    GroundTruth,
    GroundTruthError,
    GroundTruthUnavailable,
    canonicalise_objects,
    detector_ground_truth,
    one_of_each,
    ground_truth_from_text,
    load_coco_annotations,
    parse_object_list,
)
from halviz.hallucination.labels import (
    CORRECT,
    HALLUCINATED,
    IN_LOOP,
    OVER_COUNTED,
    UNVERIFIED,
    CaptionLabels,
    LabelledMention,
    beyond_count,
    highlight_spans,
    label_caption,
    label_mentions,
)
from halviz.hallucination.metrics import CaptionChair, ChairResult, chair_metrics
from halviz.hallucination.repetition import Loop, find_loop, repetition_rate, step_of_char
from halviz.hallucination.vocabulary import COCO_CATEGORIES, SYNONYM_LINES, canonical_name

__all__ = [
    "COCO_CATEGORIES",
    "CORRECT",
    "HALLUCINATED",
    "IN_LOOP",
    "OVER_COUNTED",
    "SYNONYM_LINES",
    "TRUST_LEVELS",
    "UNVERIFIED",
    "CaptionChair",
    "CaptionLabels",
    "ChairResult",
    "GroundTruth",
    "GroundTruthError",
    "GroundTruthUnavailable",
    "LabelledMention",
    "Loop",
    "Mention",
    "beyond_count",
    "canonical_name",
    "canonicalise_objects",
    "chair_metrics",
    "count_words",
    "detector_ground_truth",
    "extract_mentions",
    "find_loop",
    "ground_truth_from_text",
    "highlight_spans",
    "label_caption",
    "label_mentions",
    "load_coco_annotations",
    "one_of_each",
    "parse_object_list",
    "repetition_rate",
    "step_of_char",
]
