"""Seeded bootstrap intervals and paired tests over per-sample outcomes (numpy and scipy).

Every metric here is a function of per-sample *sums* (CHAIR_i = hallucinated mentions / mentions,
POPE precision = TP / (TP + FP), …), so a bootstrap replicate is one resampling of the samples with
replacement and the metric recomputed from the resampled sums (vectorised: ``B × n`` indices).
A paired comparison resamples the *same* indices for both methods (they decoded the same images or
questions), which is what makes the interval of the difference narrow where the methods agree.
The generator is ``numpy.random.default_rng(seed)``: a rerun gives the same interval.

McNemar's test is the exact binomial test on the discordant pairs (scipy ``binomtest``): for
per-sample binary outcomes (a caption hallucinates or not; an answer is right or wrong).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from scipy.stats import binomtest

Components = Mapping[str, np.ndarray]  # name -> (n,) per-sample values
Metric = Callable[[Mapping[str, np.ndarray], int], np.ndarray]  # sums (each (B,) or scalar), n -> value(s)

DEFAULT_BOOTSTRAP = 1000
LEVEL = 0.95


def ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def f1(precision, recall):
    return ratio(2 * precision * recall, precision + recall)


def _sums(components: Components, index: np.ndarray | None) -> dict[str, np.ndarray]:
    if index is None:
        return {k: np.asarray(v, dtype=np.float64).sum() for k, v in components.items()}
    return {k: np.asarray(v, dtype=np.float64)[index].sum(axis=-1) for k, v in components.items()}


def _length(components: Components) -> int:
    lengths = {len(v) for v in components.values()}
    if len(lengths) != 1:
        raise ValueError(f"components of unequal length: {sorted(lengths)}")
    return lengths.pop()


def resample_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement, from ``default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def estimate(components: Components, metrics: Mapping[str, Metric], n_boot: int = DEFAULT_BOOTSTRAP,
             seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """{metric: {"value", "ci": [lo, hi]}}: the point value and its percentile bootstrap interval."""
    n = _length(components)
    point = _sums(components, None)
    out: dict[str, dict] = {name: {"value": float(fn(point, n))} for name, fn in metrics.items()}
    if n == 0 or n_boot <= 0:
        for row in out.values():
            row["ci"] = [row["value"], row["value"]]
        return out
    sums = _sums(components, resample_index(n, n_boot, seed))
    for name, fn in metrics.items():
        out[name]["ci"] = _interval(fn(sums, n))
    return out


def paired_difference(base: Components, other: Components, metrics: Mapping[str, Metric],
                      n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """{metric: {"diff": other − base, "ci": [lo, hi]}} with the same resampled samples for both."""
    n = _length(base)
    if _length(other) != n:
        raise ValueError("a paired comparison needs the same samples for both methods")
    pa, pb = _sums(base, None), _sums(other, None)
    out: dict[str, dict] = {name: {"diff": float(fn(pb, n) - fn(pa, n))} for name, fn in metrics.items()}
    if n == 0 or n_boot <= 0:
        for row in out.values():
            row["ci"] = [row["diff"], row["diff"]]
        return out
    index = resample_index(n, n_boot, seed)
    sa, sb = _sums(base, index), _sums(other, index)
    for name, fn in metrics.items():
        out[name]["ci"] = _interval(fn(sb, n) - fn(sa, n))
    return out


def mcnemar(base: np.ndarray, other: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar on paired booleans: ``only_base`` = true for base only, ``only_other`` = true for
    the other only; p = two-sided binomial test of the discordant pairs at 1/2 (1.0 when none)."""
    a, b = np.asarray(base, dtype=bool), np.asarray(other, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs paired outcomes of the same samples")
    only_base, only_other = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_base + only_other
    p = 1.0 if discordant == 0 else float(binomtest(only_other, discordant, 0.5).pvalue)
    return {"only_base": only_base, "only_other": only_other, "p": p}


# ---- the metrics of the two benchmarks, as functions of per-sample sums ---------------------------

CHAIR_METRICS: dict[str, Metric] = {
    "chair_s": lambda s, n: ratio(s["hallucinates"], n),
    "chair_i": lambda s, n: ratio(s["hallucinated_mentions"], s["mentions"]),
    "recall": lambda s, n: ratio(s["distinct_correct"], s["truth"]),
    "precision": lambda s, n: ratio(s["distinct_correct"], s["distinct_mentioned"]),
    "f1": lambda s, n: f1(ratio(s["distinct_correct"], s["distinct_mentioned"]), ratio(s["distinct_correct"], s["truth"])),
    "len": lambda s, n: ratio(s["words"], n),
    "looping": lambda s, n: ratio(s["loops"], n),
    "repetition": lambda s, n: ratio(s["repetition"], n),
}

POPE_METRICS: dict[str, Metric] = {
    "accuracy": lambda s, n: ratio(s["correct"], n),
    "precision": lambda s, n: ratio(s["tp"], s["tp"] + s["fp"]),
    "recall": lambda s, n: ratio(s["tp"], s["tp"] + s["fn"]),
    "f1": lambda s, n: f1(ratio(s["tp"], s["tp"] + s["fp"]), ratio(s["tp"], s["tp"] + s["fn"])),
    "yes_ratio": lambda s, n: ratio(s["yes"], n),
}


def pope_components(predictions: list[str | None], labels: list[str]) -> dict[str, np.ndarray]:
    """Per-question 0/1 columns; "yes" is the positive class; a None reading is not-yes and wrong."""
    pred = np.array([p == "yes" for p in predictions])
    gold = np.array([l == "yes" for l in labels])
    correct = np.array([p == l for p, l in zip(predictions, labels)])
    return {"tp": pred & gold, "fp": pred & ~gold, "fn": ~pred & gold, "yes": pred, "correct": correct}
