"""Risk candidates against hand computations on a small trace; the study's AUC and threshold against
hand-worked sets; the page's mark stays off unless the stored study's held-out AUC reaches 0.75."""

import json
import math

import numpy as np
import pytest

from halviz.hallucination import extract_mentions
from halviz.hallucination import risk
from halviz.toy.recipe.risk_study import auc, rates, youden_threshold
from halviz.trace import Trace


def small_trace() -> Trace:
    texts = ["A", " cat", " and", " a", " fork"]
    steps, layers, n = len(texts), 4, 4
    image_attn = np.zeros((steps, layers, n), np.float16)
    image_attn[1] = [0.4, 0.0, 0.0, 0.0]  # " cat": all on one patch
    image_attn[4] = [0.05, 0.05, 0.05, 0.05]  # " fork": spread thin
    shares = np.zeros((steps, layers, 5), np.float32)
    shares[..., 2] = image_attn.astype(np.float32).sum(-1)
    top_probs = np.array([[0.9, 0.05], [0.8, 0.1], [0.6, 0.3], [0.7, 0.2], [0.35, 0.3]], np.float32)
    top_ids = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [10, 9]], np.int32)  # the fork's token is second
    lens_rank = np.array([[0, 0, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 5, 1, 0]], np.int32)
    meta = {"format": "halviz-trace-v1", "texts": texts, "num_steps": steps, "num_layers": layers, "num_heads": 1,
            "grid": [2, 2], "segments": ["bos", "system", "image", "prompt", "generated"]}
    arrays = {"token_ids": np.array([1, 3, 5, 7, 9]), "top_ids": top_ids, "top_probs": top_probs,
              "image_attn": image_attn, "segment_share": shares, "lens_token_rank": lens_rank}
    return Trace(meta, arrays)


def test_each_candidate_is_its_formula_at_the_mentions_first_token():
    trace = small_trace()
    cat, fork = extract_mentions(trace.caption)
    assert [risk.mention_step(trace, m) for m in (cat, fork)] == [1, 4]
    assert risk.low_image_share(trace, 1) == pytest.approx(-0.4, abs=1e-3)
    assert risk.low_image_share(trace, 4) == pytest.approx(-0.2, abs=1e-3)
    assert risk.dispersion(trace, 1) == pytest.approx(0.0, abs=1e-6)  # one patch: no spread
    assert risk.dispersion(trace, 4) == pytest.approx(1.0, abs=1e-3)  # uniform: log N / log N
    assert risk.low_margin(trace, 4) == pytest.approx(-0.05, abs=1e-6)
    assert risk.low_probability(trace, 4) == pytest.approx(-0.3, abs=1e-6)  # the emitted token's, not the top's
    assert risk.late_decision(trace, 1) == 0.25 and risk.late_decision(trace, 4) == 0.75  # stays top from layer 3
    assert risk.mention_scores(trace, [cat, fork], "dispersion") == pytest.approx([0.0, 1.0], abs=1e-3)


def test_auc_threshold_and_rates_on_hand_worked_sets():
    labels = np.array([1, 1, 0, 0, 0])
    # NaN dropped: positives .9, .4 against negatives .5, .1: won .9>.5, .9>.1, .4>.1, lost .4<.5
    assert auc(labels, np.array([0.9, 0.4, 0.5, 0.1, np.nan])) == pytest.approx(3 / 4)
    assert auc(labels, np.array([0.9, 0.8, 0.5, 0.1, 0.2])) == 1.0
    assert auc(labels, np.array([0.5, 0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert auc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    t = youden_threshold(labels, np.array([0.9, 0.8, 0.5, 0.1, 0.2]))
    assert t == 0.8 and rates(labels, np.array([0.9, 0.8, 0.5, 0.1, 0.2]), t) == (1.0, 0.0)


def test_the_mark_is_shown_only_at_a_held_out_auc_of_075(tmp_path):
    chosen = {"candidate": "dispersion", "threshold": 0.5, "tuning_auc": 0.8, "heldout_true_positive_rate": 0.6,
              "heldout_false_positive_rate": 0.2}
    for heldout, shown in ((0.74, False), (0.75, True)):
        path = tmp_path / f"{heldout}.json"
        path.write_text(json.dumps({"chosen": dict(chosen, heldout_auc=heldout)}))
        mark = risk.load_risk_mark(path)
        assert mark.shown is shown
    trace = small_trace()
    assert mark.marks(trace, extract_mentions(trace.caption)) == [False, True]
    assert risk.load_risk_mark(tmp_path / "missing.json") is None
    assert math.isclose(risk.SHOW_AT_AUC, 0.75)
