"""Object hallucination: COCO vocabulary, mention extraction, ground truth, labels and CHAIR."""

from halviz.hallucination.extract import Mention, count_words, extract_mentions
from halviz.hallucination.ground_truth import (
    TRUST_LEVELS,
    GroundTruth,
    GroundTruthError,
    GroundTruthUnavailable,
    canonicalise_objects,
    detector_ground_truth,
    ground_truth_from_text,
    load_coco_annotations,
    parse_object_list,
)
from halviz.hallucination.labels import (
    CORRECT,
    HALLUCINATED,
    UNVERIFIED,
    LabelledMention,
    highlight_spans,
    label_mentions,
)
from halviz.hallucination.metrics import CaptionChair, ChairResult, chair_metrics
from halviz.hallucination.vocabulary import COCO_CATEGORIES, SYNONYM_LINES, canonical_name

__all__ = [
    "COCO_CATEGORIES",
    "CORRECT",
    "HALLUCINATED",
    "SYNONYM_LINES",
    "TRUST_LEVELS",
    "UNVERIFIED",
    "CaptionChair",
    "ChairResult",
    "GroundTruth",
    "GroundTruthError",
    "GroundTruthUnavailable",
    "LabelledMention",
    "Mention",
    "canonical_name",
    "canonicalise_objects",
    "chair_metrics",
    "count_words",
    "detector_ground_truth",
    "extract_mentions",
    "ground_truth_from_text",
    "highlight_spans",
    "label_mentions",
    "load_coco_annotations",
    "parse_object_list",
]
