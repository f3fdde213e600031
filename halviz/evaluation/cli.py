"""The body of ``python -m halviz.eval`` once its flags are parsed: build the job, run this rank's share,
merge and score on rank 0, print the tables and write the files. Kept apart from the entry module so
that the entry points can move (a ``halviz`` console command) without touching this."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from halviz.evaluation.harness import (Plan, Stopped, device_for, make_stack, model_identity, read_cache, run_plan,
                                      start_processes)
from halviz.evaluation.jobs import build_job, job_summary
from halviz.evaluation.parsers import DEFAULT_PARSER, PARSERS
from halviz.evaluation.pope import SPLITS, TEMPLATE, PopeError, Question, coco_splits, question_text, read_questions, toy_splits
from halviz.evaluation.pope_presets import POPE_PRESETS
from halviz.evaluation.results import format_intervals, halviz_version, legacy_rows, score_job, write_results

BENCHMARKS = ("chair", "pope", "opope")
STOPPED = 3
_DEFAULT_QUESTION = re.compile(r"^Is there an? (.+) in the image\?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of evaluation at scale (POPE, OPOPE, --out, resume, batching)."""
    g = parser.add_argument_group("evaluation at scale (POPE, OPOPE, results folder, shards, resume)")
    g.add_argument("--benchmarks", default="chair", help="comma-separated: chair, pope, opope (default chair)")
    g.add_argument("--out", type=Path, help="results folder: results.json, samples.jsonl and the resumable cache/")
    g.add_argument("--pope-questions", type=Path, nargs="+", help="POPE JSONL files (released or RePOPE's); "
                   "default: built from --annotations, or the toy world's exact splits")
    g.add_argument("--pope-splits", default=",".join(SPLITS), help="splits to build (random,popular,adversarial)")
    g.add_argument("--pope-n", type=int, default=500, help="images per built split (POPE: 500)")
    g.add_argument("--pope-template", default=TEMPLATE, help="question template when halviz writes the question")
    g.add_argument("--pope-suffix", default="", help="text appended to every POPE question (a preset sets it)")
    g.add_argument("--pope-max-new-tokens", type=int, default=16)
    g.add_argument("--pope-parser", default=DEFAULT_PARSER, choices=list(PARSERS), help="the parser of the table")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    g.add_argument("--bootstrap-seed", type=int, default=0)
    g.add_argument("--no-batch", action="store_true", help="decode one method at a time (the old loop)")
    g.add_argument("--batch-images", type=int, default=1,
                   help="images whose decodes share one batch (rows of equal prompt length: the same prompt on "
                        "K images, the POPE questions of equal length); 1: one image's method columns a batch")
    g.add_argument("--save-traces", action="store_true",
                   help="keep each decode's compact trace in OUT/traces/KEY.npz (needs --out; replayable in the app)")
    g.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop after K decodes (exit 3)


def pope_questions(args, source_is_folder: bool) -> tuple[dict[str, list[Question]], dict[str, Any]]:
    """(split -> questions, image id -> PIL image for toy scenes)."""
    splits = [s.strip() for s in args.pope_splits.split(",") if s.strip()]
    if args.pope_questions:
        from halviz.evaluation.pope_cli import split_name

        out = {}
        for path in args.pope_questions:
            questions = read_questions(path)
            if args.pope_template != TEMPLATE:  # rewrite released questions in the preset's template
                questions = [_retemplate(q, args.pope_template, path) for q in questions]
            out[split_name(path) if split_name(path) not in out else str(path)] = questions
        return out, {}
    if source_is_folder:
        built = coco_splits(args.annotations, args.pope_n, args.seed, splits, args.pope_template, args.images)
        return built, {}
    scenes, built = toy_splits(args.pope_n, args.seed, splits, args.pope_template)
    return built, {image_id: scene.image for image_id, scene in scenes.items()}


def _retemplate(q: Question, template: str, path: Path) -> Question:
    match = _DEFAULT_QUESTION.match(q.text.strip())
    name = q.object or (match.group(1) if match else None)
    if name is None:
        raise PopeError(f"{path}: question {q.question_id} is not in POPE's template; cannot apply --pope-template")
    return Question(q.question_id, q.image, question_text(name, template), q.label, name)


def run(args, names: list[str], params: dict, sample, partner, source: str, load) -> int:
    """``load(device)`` loads the model; ``sample`` is CHAIR's (id, image, objects, counts) list."""
    from halviz.eval import format_table
    from halviz.chair import write_json_atomically

    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    bad = [b for b in benchmarks if b not in BENCHMARKS]
    if bad or not benchmarks:
        raise PopeError(f"--benchmarks: unknown {', '.join(bad) or '(none)'}; known: {', '.join(BENCHMARKS)}")
    processes = start_processes()
    try:
        pope_splits, pope_images = ({}, {})
        if "pope" in benchmarks or "opope" in benchmarks:
            pope_splits, pope_images = pope_questions(args, args.images is not None)
        if args.save_traces and args.out is None:
            raise PopeError("--save-traces needs --out DIR")
        loaded = load(device_for(processes))
        plan = Plan(model_identity(loaded), args.system, params, args.out / "traces" if args.save_traces else None)
        job = build_job(plan, names, benchmarks, chair_sample=sample if "chair" in benchmarks else (), partner=partner,
                        prompt=args.prompt, max_new_tokens=args.max_new_tokens, pope_splits=pope_splits,
                        pope_images=pope_images, pope_folder=args.images, pope_suffix=args.pope_suffix,
                        pope_max_new_tokens=args.pope_max_new_tokens)
        # without --out the cache is a fresh folder, rank 0's, shared with every rank (one machine)
        out = args.out or Path(processes.share(tempfile.mkdtemp(prefix="halviz-eval-") if processes.rank == 0 else None))
        t0 = time.perf_counter()
        try:
            mode = "solo" if args.no_batch else ("images" if args.batch_images > 1 else "columns")
            stats = run_plan(loaded, plan, out, processes.rank, processes.world, batch=mode,
                             progress=not args.no_progress, stop_after=args.stop_after, batch_images=args.batch_images)
        except Stopped as exc:
            print(f"halviz.eval: rank {processes.rank}: {exc}; run the same command again to finish", file=sys.stderr)
            return STOPPED
        processes.barrier()
        if processes.rank != 0:
            return 0
        wall = time.perf_counter() - t0
        scored, samples = score_job(job, read_cache(out), args.pope_parser, args.bootstrap, args.bootstrap_seed)
        config = {
            "halviz_version": halviz_version(), "model": args.model, "source": loaded.source,
            "dtype": str(loaded.dtype).replace("torch.", ""), "images": source, "benchmarks": benchmarks,
            "methods": {n: [m.describe() for m in make_stack(n, params)] for n in names},
            "n": len(sample) if "chair" in benchmarks else 0, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "prompt": args.prompt, "system": args.system, "preset": args.preset, "params": params,
            "pope": ({"questions": [str(p) for p in args.pope_questions] if args.pope_questions else
                      ("built from " + (str(args.annotations) if args.images is not None else "the toy world")),
                      "splits": {s: len(q) for s, q in pope_splits.items()}, "n_images": args.pope_n,
                      "template": args.pope_template, "suffix": args.pope_suffix,
                      "max_new_tokens": args.pope_max_new_tokens, "parser": args.pope_parser}
                     if pope_splits else None),
            "bootstrap": {"replicates": args.bootstrap, "seed": args.bootstrap_seed, "level": 0.95},
            "decoding": "greedy", "save_traces": args.save_traces, "batching": mode, "batch_images": args.batch_images,
        }
        summary = job_summary(job)
        print(f"{source}, max_new_tokens={args.max_new_tokens}, prompt={args.prompt!r}"
              + (f", system={args.system!r}" if args.system else "") + (f", preset={args.preset}" if args.preset else "")
              + f"; {summary['decodes']} decodes on {summary['images']} images, {processes.world} process(es): "
              f"{stats.decoded} decoded here, {stats.reused} reused, {wall:.1f} s")
        rows = legacy_rows(scored)
        if rows:
            print(format_table(rows))
        print(format_intervals(scored))
        if args.out:
            write_results(args.out, config, scored, samples)
            print(f"wrote {args.out / 'results.json'} and {args.out / 'samples.jsonl'}")
        if args.json:
            write_json_atomically(args.json, {"config": config, "methods": rows,
                                              **{k: v for k, v in scored.items() if k in ("pope", "opope")}})
        return 0
    finally:
        processes.close()


__all__ = ["add_arguments", "run", "BENCHMARKS", "POPE_PRESETS"]
