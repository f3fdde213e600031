"""Risk scores for object mentions that no ground truth can check, computed from the trace alone.

Each candidate reads the step whose token begins the mention (step i is the query that predicted
token i) and returns a number where **higher means more likely hallucinated**; the direction of
each was fixed before any measurement, from the papers that propose it, so that a study choosing
among them on a tuning split only chooses which one, never which way:

- ``low_image_share``: minus the share of the step's attention on image tokens (head mean, layers
  from ⌊L/4⌋ on): a word written while looking away from the image is suspect (the attention-decay
  account of hallucination, e.g. OPERA, PAI).
- ``dispersion``: the entropy of the step's attention over image tokens, normalised by log N (same
  layers): attention spread over the whole picture rather than on one object (arXiv 2604.04863
  reports dispersion detecting hallucinated tokens).
- ``low_margin``: minus the gap between the two most probable next tokens: an uncertain choice.
- ``low_probability``: minus the emitted token's probability.
- ``late_decision``: the logit lens (when recorded): the share of the recorded layers before the
  emitted token becomes, and stays, the lens's top token; a word decided late in the network.

Whether any of them works, and how well, is measured on the toy's exact labels by
``halviz risk-study`` (:mod:`halviz.toy.recipe.risk_study`); the page shows a mark only when the
chosen candidate's held-out AUC reaches :data:`SHOW_AT_AUC`. No torch: this reads a trace.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halviz.hallucination.extract import Mention
from halviz.hallucination.repetition import step_of_char
from halviz.trace import Trace

SHOW_AT_AUC = 0.75  # issue 29: a mark is shown only if its held-out AUC on the toy reaches this
STUDY_FILE = Path(__file__).with_name("risk_study.json")  # written by `halviz risk-study --save`


def _layers(trace: Trace) -> slice:
    layers = int(trace.meta.get("num_layers", 0))
    return slice(layers // 4, layers)


def low_image_share(trace: Trace, step: int) -> float | None:
    if "segment_share" not in trace.arrays:
        return None
    segments = list(trace.meta.get("segments") or [])
    if "image" not in segments:
        return None
    shares = trace.arrays["segment_share"][step, _layers(trace), segments.index("image")]
    return -float(np.mean(shares.astype(np.float64)))


def dispersion(trace: Trace, step: int) -> float | None:
    if "image_attn" not in trace.arrays:
        return None
    rows = trace.arrays["image_attn"][step, _layers(trace)].astype(np.float64)  # (layers, N)
    n = rows.shape[-1]
    if n < 2:
        return None
    total = rows.sum(-1, keepdims=True)
    p = np.where(total > 0, rows / np.where(total > 0, total, 1), 1.0 / n)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1) / math.log(n)
    return float(entropy.mean())


def low_margin(trace: Trace, step: int) -> float | None:
    probs = trace.arrays.get("top_probs")
    if probs is None or probs.shape[-1] < 2:
        return None
    return -float(probs[step, 0] - probs[step, 1])


def low_probability(trace: Trace, step: int) -> float | None:
    probs = trace.arrays.get("top_probs")
    ids, tokens = trace.arrays.get("top_ids"), trace.arrays.get("token_ids")
    if probs is None or ids is None or tokens is None or probs.shape[-1] < 1:
        return None
    hits = np.flatnonzero(ids[step] == tokens[step])
    return -float(probs[step, hits[0]]) if hits.size else 0.0  # outside the top k: below all of them


def late_decision(trace: Trace, step: int) -> float | None:
    ranks = trace.arrays.get("lens_token_rank")
    if ranks is None or ranks.shape[-1] == 0:
        return None
    top = ranks[step] == 0  # (recorded layers,)
    n = top.shape[0]
    first = n  # the first layer from which the emitted token stays on top
    for layer in range(n - 1, -1, -1):
        if not top[layer]:
            break
        first = layer
    return first / n


CANDIDATES: dict[str, Callable[[Trace, int], float | None]] = {
    "low_image_share": low_image_share,
    "dispersion": dispersion,
    "low_margin": low_margin,
    "low_probability": low_probability,
    "late_decision": late_decision,
}


def mention_step(trace: Trace, mention: Mention) -> int | None:
    """The step whose token holds the mention's first character (None past the recorded steps)."""
    step = step_of_char(trace.texts, mention.start)
    return step if step is not None and step < trace.num_steps else None


def mention_scores(trace: Trace, mentions: Sequence[Mention], candidate: str) -> list[float | None]:
    """``candidate``'s score of each mention (None where the trace cannot give one)."""
    score = CANDIDATES[candidate]
    steps = [mention_step(trace, m) for m in mentions]
    return [None if s is None else score(trace, s) for s in steps]


@dataclass(frozen=True)
class RiskMark:
    """The study's choice, as the page reads it: which candidate, the threshold above which a mention
    is marked, and the figures that justify showing it (or not)."""

    candidate: str
    threshold: float
    tuning_auc: float
    heldout_auc: float
    heldout_true_positive_rate: float  # share of hallucinated mentions marked, held-out split
    heldout_false_positive_rate: float  # share of correct mentions marked, held-out split

    @property
    def shown(self) -> bool:
        return self.heldout_auc >= SHOW_AT_AUC

    def marks(self, trace: Trace, mentions: Sequence[Mention]) -> list[bool]:
        return [s is not None and s >= self.threshold for s in mention_scores(trace, mentions, self.candidate)]


def load_risk_mark(path: Path = STUDY_FILE) -> RiskMark | None:
    """The stored study's mark, or None when no study has been saved."""
    try:
        chosen = json.loads(Path(path).read_text())["chosen"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RiskMark(**{k: chosen[k] for k in RiskMark.__dataclass_fields__})
