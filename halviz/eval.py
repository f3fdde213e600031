"""CHAIR evaluation of decoding methods over a seeded sample.

    python -m halviz.eval --model toy --methods vanilla,prunehal,kvsmooth,vasparse,vhr \\
        --n 200 --max-new-tokens 64 [--scenes heldout|broken:knife,fork|control:knife,fork] [--json PATH]
    python -m halviz.eval --model FOLDER_OR_HUB_ID --images DIR --annotations instances.json [--captions-annotations captions.json]
    python -m halviz.eval --preset vhr|vasparse|kvsmooth|prunehal [flags that override it]
    python -m halviz.eval --list-presets
    python -m halviz.eval --benchmarks chair,pope,opope --out DIR [--preset pope-llava|pope-vcd|pope-halc]
    torchrun --nproc-per-node N -m halviz.eval … --out DIR   (sharded by image; rerun to resume)

``--preset NAME`` sets each paper's CHAIR setting (methods, images, new tokens, prompt, system
message, seed; see :mod:`halviz.eval_presets` for every value's source); flags given explicitly
override it.

Toy scenes (the default) carry their exact object lists; for real images the ground truth is a
COCO-format annotation file. Prints one row per method (the papers' table) and writes
``{"config": {...}, "methods": {NAME: {"chair_s", "chair_i", "recall", "precision", "f1", "len",
"looping", "repetition", "over_counted", "ms_per_token", ...}}}`` with metrics as fractions. On
broken-pair and control sets the row adds ``partner_rate``: the share of captions naming the absent
partner object.

CHAIR counts a loop's every repeat as a new mention, so a method whose captions loop can look clean;
``looping`` (captions that end in a loop), ``repetition`` (mean seq-rep-4) and, on toy scenes, whose
object counts are exact, ``over_counted`` (mentions of a present object beyond its count / mentions;
null for COCO folders, whose counts are not used) are reported beside it
(:mod:`halviz.hallucination.metrics`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from halviz.chair import InputError, write_json_atomically
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.eval_presets import PRESETS, preset_table
from halviz.evaluation import cli as scale
from halviz.evaluation.pope import PopeError
from halviz.evaluation.pope_presets import POPE_PRESETS
from halviz.hallucination import chair_metrics, extract_mentions, load_coco_annotations
from halviz.methods import REGISTRY, build_stack
from halviz.models import DEFAULT_PROMPT, ModelLoadError, load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


Sample = list[tuple[str, Image.Image, frozenset[str], dict[str, int] | None]]  # id, image, objects, counts


def toy_sample(spec: str, n: int, seed: int) -> tuple[Sample, str | None]:
    """(id, image, objects, counts) for n toy scenes, and the partner object for broken/control sets."""
    from halviz.toy import scenes

    kind, _, pair_text = spec.partition(":")
    if kind == "heldout":
        chosen, partner = scenes.heldout(n, seed=seed), None
    elif kind in ("broken", "control"):
        pair = tuple(p.strip() for p in pair_text.split(","))
        if len(pair) != 2:
            raise InputError(f"--scenes {spec}: give a pair as {kind}:TRIGGER,PARTNER")
        try:
            chosen = (scenes.broken_pair if kind == "broken" else scenes.control)(pair, n, seed=seed)
        except ValueError as exc:
            raise InputError(f"--scenes {spec}: {exc}") from None
        partner = pair[1]
    else:
        raise InputError(f"--scenes {spec}: expected heldout, broken:A,B or control:A,B")
    return [(f"{kind}-{i}", s.image, frozenset(s.names), dict(Counter(o.name for o in s.objects)))
            for i, s in enumerate(chosen)], partner


def folder_sample(images: Path, annotations: Path, captions: Path | None, n: int, seed: int) -> Sample:
    """(file name, image, objects, None) for up to n images: COCO lists give no counts here."""
    truths = load_coco_annotations(annotations, captions)
    if not images.is_dir():
        raise InputError(f"{images}: not a folder")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name in truths)
    if not files:
        raise InputError(f"{images}: no image in this folder has an entry in {annotations}")
    random.Random(seed).shuffle(files)
    sample = []
    for path in files[:n]:
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None
        sample.append((path.name, image, truths[path.name].objects, None))
    return sample


def parse_params(items: list[str]) -> dict[str, dict[str, str]]:
    params: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, knob = key.partition(".")
        if not eq or not dot:
            raise InputError(f"--param {item}: expected METHOD.KNOB=VALUE")
        params.setdefault(method, {})[knob] = value
    return params


def timed_decode(loaded, image, prompt: str, methods, max_new_tokens: int, record: bool = False,
                 system: str | None = None):
    """One decode to the end; returns (trace, seconds spent decoding, set-up excluded)."""
    decoder = Decoder(loaded, image, prompt, methods, max_new_tokens, record=RecordOptions(enabled=record),
                      system=system)
    t0 = time.perf_counter()
    trace = decoder.run_to_end()
    return trace, time.perf_counter() - t0


def evaluate(loaded, sample, method_names, params, max_new_tokens: int, prompt: str,
             partner: str | None, progress: bool = True, system: str | None = None) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name in method_names:
        captions, truths, counts, tokens, seconds = [], [], [], 0, 0.0
        for image_id, image, objects, known in tqdm(sample, desc=name, disable=not progress, leave=False):
            trace, spent = timed_decode(loaded, image, prompt, build_stack([name], params), max_new_tokens,
                                        system=system)
            seconds += spent
            tokens += trace.num_steps
            captions.append(trace.caption)
            truths.append(objects)
            counts.append(known)
        result = chair_metrics(captions, truths, counts)
        row = {"chair_s": result.chair_s, "chair_i": result.chair_i, "recall": result.recall,
               "precision": result.precision, "f1": result.f1, "len": result.len, "looping": result.looping,
               "repetition": result.repetition, "over_counted": result.over_counted,
               "ms_per_token": 1e3 * seconds / max(tokens, 1), "captions": len(captions)}
        if partner is not None:
            row["partner_rate"] = sum(any(m.canonical == partner for m in extract_mentions(c))
                                      for c in captions) / len(captions)
        rows[name] = row
    return rows


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per method, x100 but Len (words) and ms/tok. Loop% and Rep-4 say what CHAIR cannot:
    a looping caption's repeats count as correct mentions. Over (toy scenes only) is over-counted
    mentions; "-" where counts are unknown."""
    partner = any("partner_rate" in r for r in rows.values())
    head = (f"{'method':<12}{'CHAIR_s':>9}{'CHAIR_i':>9}{'Recall':>8}{'Prec':>8}{'F1':>8}{'Len':>7}"
            f"{'Loop%':>7}{'Rep-4':>7}{'Over':>7}{'ms/tok':>8}")
    lines = [head + (f"{'partner':>9}" if partner else "")]
    for name, r in rows.items():
        over = "-" if r.get("over_counted") is None else f"{100 * r['over_counted']:.1f}"
        line = (f"{name:<12}{100 * r['chair_s']:9.1f}{100 * r['chair_i']:9.1f}{100 * r['recall']:8.1f}"
                f"{100 * r['precision']:8.1f}{100 * r['f1']:8.1f}{r['len']:7.1f}{100 * r['looping']:7.1f}"
                f"{100 * r['repetition']:7.1f}{over:>7}{r['ms_per_token']:8.2f}")
        lines.append(line + (f"{100 * r['partner_rate']:9.1f}" if partner else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m halviz.eval", description="CHAIR evaluation of decoding methods.")
    parser.add_argument("--preset", choices=sorted({**PRESETS, **POPE_PRESETS}),
                        help="a paper's CHAIR or POPE setting; explicit flags override it")
    parser.add_argument("--list-presets", action="store_true", help="print every preset value with its source")
    parser.add_argument("--system", default=None, help="system message before the first turn (default: none)")
    parser.add_argument("--model", default="toy", help="'toy', a local folder or a hub id")
    parser.add_argument("--methods", default="vanilla,prunehal,kvsmooth,vasparse,vhr")
    parser.add_argument("--n", "--num-images", dest="n", type=int, default=200,
                        help="number of images (under torchrun write --num-images: torchrun reads --n as its own)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", default="heldout", help="toy set: heldout, broken:A,B or control:A,B")
    parser.add_argument("--images", type=Path, help="folder of real images (with --annotations)")
    parser.add_argument("--annotations", type=Path, help="COCO instances JSON for --images")
    parser.add_argument("--captions-annotations", type=Path, help="optional COCO captions JSON")
    parser.add_argument("--param", action="append", default=[], help="METHOD.KNOB=VALUE, repeatable")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    scale.add_arguments(parser)
    parser.add_argument("--legacy-loop", action="store_true",
                        help="CHAIR only, the loop before the harness: one process, one method at a time, no files")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the flags; a ``--preset`` supplies defaults, so every flag given explicitly wins."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**{**PRESETS, **POPE_PRESETS}[first.preset].defaults())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_presets:
        print(preset_table(PRESETS | POPE_PRESETS))
        return 0
    try:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [part for m in names for part in m.split("+") if part not in REGISTRY]
        if unknown or not names:
            raise InputError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(REGISTRY)}")
        if args.n < 1 or not 1 <= args.max_new_tokens <= 1024:
            raise InputError("--n must be ≥ 1 and --max-new-tokens in 1..1024")
        params = parse_params(args.param)
        for name in names:  # fail on bad knobs before any decoding
            build_stack(name.split("+"), params)
        chair = "chair" in args.benchmarks.split(",")
        released_pope = args.pope_questions and not chair  # POPE files name their images: --images alone
        if (args.images is None) != (args.annotations is None) and not (released_pope and args.images is not None):
            raise InputError("--images and --annotations go together")
        if args.legacy_loop:
            sample, partner = toy_sample(args.scenes, args.n, args.seed) if args.images is None else (
                folder_sample(args.images, args.annotations, args.captions_annotations, args.n, args.seed), None)
            return _legacy_main(args, names, params, sample, partner, f"toy:{args.scenes}" if args.images is None
                                else str(args.images))
        if args.images is not None:
            sample = folder_sample(args.images, args.annotations, args.captions_annotations, args.n, args.seed) if chair else []
            partner, source = None, str(args.images)
        else:
            sample, partner = toy_sample(args.scenes, args.n, args.seed) if chair else ([], None)
            source = f"toy:{args.scenes}"
        return scale.run(args, names, params, sample, partner, source, lambda device: load_model(args.model, device=device))
    except (InputError, ModelLoadError, PopeError, ValueError) as exc:
        print(f"halviz.eval: {exc}", file=sys.stderr)
        return 2


def _legacy_main(args, names, params, sample, partner, source) -> int:
    """The one-process, one-method-at-a-time loop before the harness (kept for halviz.toy.recipe.evaluate's helpers)."""
    loaded = load_model(args.model)
    rows = evaluate(loaded, sample, names, params, args.max_new_tokens, args.prompt, partner, not args.no_progress,
                    system=args.system)
    config = {"model": args.model, "source": loaded.source, "images": source, "n": len(sample), "seed": args.seed,
              "max_new_tokens": args.max_new_tokens, "prompt": args.prompt, "system": args.system,
              "preset": args.preset, "params": params,
              "methods": {n: (build_stack([n], params)[0].describe() if n != "vanilla" else {"name": n}) for n in names}}
    print(f"{source}, n={len(sample)}, max_new_tokens={args.max_new_tokens}, prompt={args.prompt!r}"
          + (f", system={args.system!r}" if args.system else "") + (f", preset={args.preset}" if args.preset else ""))
    print(format_table(rows))
    if args.json:
        write_json_atomically(args.json, {"config": config, "methods": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
