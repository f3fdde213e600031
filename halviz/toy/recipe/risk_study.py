"""Which trace signal marks hallucinated mentions? ROC AUC of each risk candidate on the toy's exact labels.

    halviz risk-study [--model toy] [--n 160] [--max-new-tokens 48] [--methods vanilla] [--json PATH]
        [--save] [--threads N]

Two disjoint splits of scenes, each half training-distribution scenes and half broken-pair scenes
(trigger present, partner absent: where the toy's prior makes it hallucinate), drawn from seed
streams nothing else uses (``TUNING_SEED``, ``HELDOUT_SEED`` below; the probe, tuning, evaluation and
validation streams are others). Every caption is one traced greedy decode through the engine; each
mention outside a loop, and not over-counted, is labelled exactly (hallucinated: the scene has no
such object; correct: it has). For every candidate of :mod:`halviz.hallucination.risk` (direction
fixed a priori) the AUC of hallucinated against correct mentions is measured on both splits. The
tuning split alone chooses the candidate (highest tuning AUC) and its threshold (Youden's J); the
held-out split only reports. ``--save`` writes the result where the page reads it
(``halviz/hallucination/risk_study.json``); the page marks unverified mentions only if the chosen
candidate's held-out AUC is at least 0.75.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from halviz.engine.batch import BatchDecoder
from halviz.hallucination import CORRECT, HALLUCINATED, GroundTruth, label_caption, one_of_each
from halviz.hallucination.risk import CANDIDATES, SHOW_AT_AUC, STUDY_FILE, mention_scores
from halviz.methods import build_stack
from halviz.models import DEFAULT_PROMPT, load_model
from halviz.threads import add_threads_argument, use_threads
from halviz.toy import scenes as toy_scenes

TUNING_SEED = 6_000_007
HELDOUT_SEED = 7_000_003


def split_scenes(n: int, seed: int) -> list:
    """n scenes: half from the training distribution, half broken pairs spread over the prior pairs."""
    pairs = toy_scenes.WorldConfig().pairs
    plain = toy_scenes.heldout(n - n // 2, seed=seed)
    per_pair = [n // 2 // len(pairs) + (i < n // 2 % len(pairs)) for i in range(len(pairs))]
    broken = [s for pair, k in zip(pairs, per_pair) for s in toy_scenes.broken_pair(pair, k, seed=seed)]
    return plain + broken


def labelled_scores(loaded, scenes: Sequence, methods: Sequence[str], max_new_tokens: int,
                    prompt: str = DEFAULT_PROMPT) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels: 1 hallucinated / 0 correct, per mention; each candidate's score per mention, NaN where
    the trace has none) over every caption of every method column."""
    labels: list[int] = []
    scores: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for scene in scenes:
        decoder = BatchDecoder(loaded, scene.image, prompt, [build_stack([m], {}) if m != "vanilla" else []
                                                              for m in methods], max_new_tokens)
        for _ in decoder:
            pass
        truth = GroundTruth(frozenset(scene.names), "toy scene", "exact", one_of_each(scene.names))
        for index in range(len(methods)):
            trace = decoder.trace(index)
            items = [item for item in label_caption(trace.caption, truth).labelled
                     if item.label in (CORRECT, HALLUCINATED)]  # not in a loop, not over-counted
            kept = [item.mention for item in items]
            labels += [int(item.label == HALLUCINATED) for item in items]
            for name in CANDIDATES:
                scores[name] += [np.nan if s is None else s for s in mention_scores(trace, kept, name)]
    return np.asarray(labels), {name: np.asarray(values, dtype=np.float64) for name, values in scores.items()}


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """P(score of a hallucinated mention > score of a correct one), ties half (Mann–Whitney U / n₁n₀)."""
    ok = ~np.isnan(scores)
    pos, neg = scores[ok & (labels == 1)], scores[ok & (labels == 0)]
    if not len(pos) or not len(neg):
        return None
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (mark when score ≥ it) maximising TPR − FPR."""
    ok = ~np.isnan(scores)
    labels, scores = labels[ok], scores[ok]
    best, best_j = float(np.inf), -1.0
    for t in np.unique(scores):
        marked = scores >= t
        j = marked[labels == 1].mean() - marked[labels == 0].mean()
        if j > best_j:
            best, best_j = float(t), j
    return best


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    marked = np.nan_to_num(scores, nan=-np.inf) >= threshold
    return float(marked[labels == 1].mean()), float(marked[labels == 0].mean())


def study(loaded, n: int, methods: Sequence[str], max_new_tokens: int) -> dict:
    splits = {"tuning": split_scenes(n, TUNING_SEED), "heldout": split_scenes(n, HELDOUT_SEED)}
    measured = {name: labelled_scores(loaded, scenes, methods, max_new_tokens) for name, scenes in splits.items()}
    table = {c: {split: auc(labels, scores[c]) for split, (labels, scores) in measured.items()} for c in CANDIDATES}
    usable = {c: v["tuning"] for c, v in table.items() if v["tuning"] is not None}
    result = {
        "model": str(loaded.name), "methods": list(methods), "scenes_per_split": n, "max_new_tokens": max_new_tokens,
        "seeds": {"tuning": TUNING_SEED, "heldout": HELDOUT_SEED},
        "mentions": {split: {"hallucinated": int(labels.sum()), "correct": int((labels == 0).sum())}
                     for split, (labels, _) in measured.items()},
        "auc": table, "show_at_auc": SHOW_AT_AUC,
    }
    if usable:
        chosen = max(usable, key=usable.get)
        threshold = youden_threshold(measured["tuning"][0], measured["tuning"][1][chosen])
        tpr, fpr = rates(measured["heldout"][0], measured["heldout"][1][chosen], threshold)
        result["chosen"] = {"candidate": chosen, "threshold": threshold, "tuning_auc": table[chosen]["tuning"],
                            "heldout_auc": table[chosen]["heldout"], "heldout_true_positive_rate": tpr,
                            "heldout_false_positive_rate": fpr}
    return result


def report(result: dict) -> str:
    counts = result["mentions"]
    lines = [f"risk study: {result['model']}, {result['scenes_per_split']} scenes per split, methods "
             f"{', '.join(result['methods'])}, {result['max_new_tokens']} tokens",
             "mentions (hallucinated / correct): " + ", ".join(
                 f"{s} {c['hallucinated']} / {c['correct']}" for s, c in counts.items()),
             f"{'candidate':<18}{'tuning AUC':>12}{'held-out AUC':>14}"]
    for name, v in result["auc"].items():
        cell = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"{name:<18}{cell(v['tuning']):>12}{cell(v['heldout']):>14}")
    chosen = result.get("chosen")
    if chosen:
        shown = chosen["heldout_auc"] is not None and chosen["heldout_auc"] >= result["show_at_auc"]
        lines.append(f"chosen on tuning: {chosen['candidate']} (threshold {chosen['threshold']:.4g}); held-out AUC "
                     f"{chosen['heldout_auc']:.3f}, marks {chosen['heldout_true_positive_rate']:.0%} of hallucinated "
                     f"and {chosen['heldout_false_positive_rate']:.0%} of correct mentions; "
                     + ("shown on the page" if shown else f"below {result['show_at_auc']}: the page shows no mark"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halviz risk-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=160, help="scenes per split (default 160)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--methods", default="vanilla", help="comma-separated columns whose mentions count")
    parser.add_argument("--json", type=Path, help="write the result here too")
    parser.add_argument("--save", action="store_true", help=f"write the result where the page reads it ({STUDY_FILE.name})")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    loaded = load_model(args.model)
    result = study(loaded, args.n, [m.strip() for m in args.methods.split(",") if m.strip()], args.max_new_tokens)
    print(report(result))
    for path in [p for p in (args.json, STUDY_FILE if args.save else None) if p is not None]:
        Path(path).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
