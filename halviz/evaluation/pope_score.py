"""POPE scores of answers already made: every parser, the predicted yes-ratio and their disagreements."""

from __future__ import annotations

from typing import Any, Sequence

from halviz.evaluation.parsers import DEFAULT_PARSER, PARSERS, disagreements, parse
from halviz.evaluation.pope import Question
from halviz.evaluation.stats import DEFAULT_BOOTSTRAP, POPE_METRICS, estimate, pope_components


def score_answers(answers: Sequence[str], labels: Sequence[str], parsers: Sequence[str] = tuple(PARSERS),
                  n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """{"n", "parsers": {name: {metric: {"value", "ci"}}, counts}, "disagree_with_official": {name: count}}."""
    out: dict[str, Any] = {"n": len(answers), "parsers": {}}
    for name in parsers:
        readings = [parse(name, a, l) for a, l in zip(answers, labels)]
        row = estimate(pope_components(readings, list(labels)), POPE_METRICS, n_boot, seed)
        row["unread"] = sum(r is None for r in readings)
        out["parsers"][name] = row
    out["disagree_with_official"] = disagreements(list(answers), list(labels),
                                                  [p for p in parsers if p != DEFAULT_PARSER])
    return out


def pair_answers(questions: Sequence[Question], answers: dict[Any, str], where: str = "answers") -> list[str]:
    """The answer of every question, in the questions' order; a missing one is an error naming it."""
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{where}: no answer for question_id {', '.join(map(str, missing[:5]))}{more}")
    return [answers[q.question_id] for q in questions]


def format_scores(split_scores: dict[str, dict[str, Any]]) -> str:
    """One row per split and parser, ×100 (accuracy, precision, recall, F1, yes-ratio), official first."""
    lines = [f"{'split':<12}{'parser':<10}{'n':>6}{'Acc':>7}{'Prec':>7}{'Rec':>7}{'F1':>7}{'Yes%':>7}{'differ':>8}"]
    for split, scores in split_scores.items():
        for name, row in scores["parsers"].items():
            differ = "-" if name == DEFAULT_PARSER else str(scores["disagree_with_official"].get(name, 0))
            lines.append(f"{split:<12}{name:<10}{scores['n']:>6}" + "".join(
                f"{100 * row[m]['value']:7.1f}" for m in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
                + f"{differ:>8}")
    lines.append("(x100; 'yes' is the positive class; Yes% = share of PREDICTED yes; differ = answers this parser "
                 "reads differently from the official one)")
    return "\n".join(lines)
