"""``python -m halviz.pope``: build POPE splits, or score answers already made.

    python -m halviz.pope score --questions Q.jsonl [Q2.jsonl …] --answers A.jsonl [A2.jsonl …] [--json] [--parsers …]
    python -m halviz.pope build --annotations instances.json [--images DIR] --out DIR [--n 500] [--seed 0]
    python -m halviz.pope build --toy --out DIR [--n 500] [--seed 0]

``score`` pairs the i-th questions file with the i-th answers file (question ids repeat across the
released splits); a split is named after its file (``coco_pope_random.json`` → random). Answers:
``question_id`` and ``text`` (or ``answer``) per line. It prints accuracy, precision, recall, F1 and
the predicted yes-ratio per split and parser (official first) and how many answers each parser
reads differently from the official one; ``--json`` prints JSON instead, with 95 % bootstrap
intervals. Input problems exit with status 2 and one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from halviz.evaluation.parsers import DEFAULT_PARSER, PARSERS
from halviz.evaluation.pope import SPLITS, TEMPLATE, PopeError, coco_splits, read_answers, read_questions, toy_splits, write_questions
from halviz.evaluation.pope_score import format_scores, pair_answers, score_answers


def split_name(path: Path) -> str:
    stem = path.stem
    return next((s for s in SPLITS if stem.endswith(s) or f"_{s}" in stem), stem)


def _parsers(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARSERS]
    if unknown or not names:
        raise PopeError(f"--parsers: unknown {', '.join(unknown) or '(none)'}; known: {', '.join(PARSERS)}")
    return [DEFAULT_PARSER] + [p for p in names if p != DEFAULT_PARSER] if DEFAULT_PARSER in names else names


def score(args) -> int:
    if len(args.questions) != len(args.answers):
        raise PopeError("give one --answers file per --questions file, in the same order")
    parsers = _parsers(args.parsers)
    results = {}
    for qpath, apath in zip(args.questions, args.answers):
        questions = read_questions(qpath)
        try:
            answers = pair_answers(questions, read_answers(apath), str(apath))
        except ValueError as exc:
            raise PopeError(str(exc)) from None
        name = split_name(qpath)
        if name in results:
            name = str(qpath)
        results[name] = score_answers(answers, [q.label for q in questions], parsers, args.bootstrap, args.seed)
    if args.json:
        print(json.dumps({"splits": results, "bootstrap": args.bootstrap, "seed": args.seed}, indent=1))
    else:
        print(format_scores(results))
    return 0


def build(args) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.toy:
        _, built = toy_splits(args.n, args.seed, splits, args.template)
        prefix = "toy"
    else:
        if args.annotations is None:
            raise PopeError("build needs --annotations instances.json (or --toy)")
        built = coco_splits(args.annotations, args.n, args.seed, splits, args.template, args.images)
        prefix = "coco"
    args.out.mkdir(parents=True, exist_ok=True)
    for split, questions in built.items():
        path = args.out / f"{prefix}_pope_{split}.json"
        write_questions(path, questions)
        print(f"{path}: {len(questions)} questions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m halviz.pope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score answers already made")
    s.add_argument("--questions", type=Path, nargs="+", required=True)
    s.add_argument("--answers", type=Path, nargs="+", required=True)
    s.add_argument("--parsers", default=",".join(PARSERS), help=f"comma-separated, of {', '.join(PARSERS)}")
    s.add_argument("--json", action="store_true", help="print JSON (with 95%% bootstrap intervals)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (0: none)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    b = sub.add_parser("build", help="build the three splits")
    b.add_argument("--annotations", type=Path, help="COCO instances JSON")
    b.add_argument("--images", type=Path, help="only images present in this folder")
    b.add_argument("--toy", action="store_true", help="the toy world's exact splits")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--n", type=int, default=500)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--splits", default=",".join(SPLITS))
    b.add_argument("--template", default=TEMPLATE)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return score(args) if args.command == "score" else build(args)
    except (PopeError, ValueError) as exc:
        print(f"halviz.pope: {exc}", file=sys.stderr)
        return 2
