"""Pure metric functions behind the toy probe (numpy and scipy only; no model, no torch).

Each takes plain arrays so that tests can check it against a hand computation:

- Sink^ε (Gu et al., ICLR 2025, "When Attention Sink Emerges in Language Models", §3): the share
  of heads whose mean attention to the first token, averaged over the chosen queries, exceeds ε.
- Sink signatures: the first token's value norm and residual-stream norm relative to the others.
- Decay: Spearman's ρ between caption position and attention mass on the image.
- McNemar's exact test on paired yes/no outcomes (binomial test on the discordant pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import binomtest, spearmanr

SINK_EPSILON = 0.3


def sink_rate(bos_share: np.ndarray, layers: Sequence[int], epsilon: float = SINK_EPSILON) -> float:
    """Share of the heads of ``layers`` whose mean BOS attention exceeds ``epsilon``.

    bos_share (L, H): per layer and head, the mean attention to BOS over the caption queries.
    """
    rows = np.asarray(bos_share, dtype=np.float64)[list(layers)]
    return float((rows > epsilon).mean()) if rows.size else float("nan")


def sink_rate_per_layer(bos_share: np.ndarray, epsilon: float = SINK_EPSILON) -> np.ndarray:
    """(L,) share of each layer's heads whose mean BOS attention exceeds ``epsilon``."""
    return (np.asarray(bos_share, dtype=np.float64) > epsilon).mean(axis=1)


def value_norm_ratio(values: np.ndarray, sink: int = 0) -> np.ndarray:
    """(H,) per head, ‖v_sink‖ / mean over the other tokens of ‖v_t‖.

    values (T, H, D): one layer's value vectors (the output of v_proj, split into heads).
    """
    norms = np.linalg.norm(np.asarray(values, dtype=np.float64), axis=-1)  # (T, H)
    others = np.delete(norms, sink, axis=0)
    return norms[sink] / others.mean(axis=0)


def residual_norm_ratio(hidden: np.ndarray, sink: int = 0) -> float:
    """‖h_sink‖ / median over the other tokens of ‖h_t‖, for one layer's residual stream (T, d)."""
    norms = np.linalg.norm(np.asarray(hidden, dtype=np.float64), axis=-1)
    return float(norms[sink] / np.median(np.delete(norms, sink)))


@dataclass(frozen=True)
class DecayCurve:
    positions: np.ndarray  # caption positions (0 = the query predicting the first token) kept
    means: np.ndarray  # mean image mass at each kept position
    counts: np.ndarray  # captions that reach each kept position
    rho: float  # Spearman's ρ of means against positions
    p_value: float


def decay_curve(masses: Sequence[np.ndarray], min_count: int) -> DecayCurve:
    """Mean image mass per caption position over captions of different lengths, and its ρ.

    masses: one 1-D array per caption (the mass at each of its positions). Positions reached by
    fewer than ``min_count`` captions are left out, so a few long captions do not set the tail.
    """
    longest = max((len(m) for m in masses), default=0)
    sums, counts = np.zeros(longest), np.zeros(longest, dtype=np.int64)
    for m in masses:
        sums[: len(m)] += np.asarray(m, dtype=np.float64)
        counts[: len(m)] += 1
    keep = counts >= max(1, min_count)
    positions = np.nonzero(keep)[0]
    means = sums[keep] / counts[keep]
    if len(positions) < 3:
        return DecayCurve(positions, means, counts[keep], float("nan"), float("nan"))
    result = spearmanr(positions, means)
    return DecayCurve(positions, means, counts[keep], float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class McNemar:
    only_before: int  # pairs where the event happened before (vanilla) but not after (method)
    only_after: int  # pairs where it happened only after
    p_value: float  # exact two-sided: binomial test of only_before among the discordant pairs, p = 0.5


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired binary outcomes (same items, two conditions)."""
    a, b = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape} vs {b.shape}")
    only_before, only_after = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_before + only_after
    p = 1.0 if discordant == 0 else float(binomtest(only_before, discordant, 0.5).pvalue)
    return McNemar(only_before, only_after, p)


def relative_change(before: float, after: float) -> float:
    """(after − before) / before; NaN when there was nothing to change (before = 0)."""
    return float("nan") if before == 0 else (after - before) / before
