"""Where a batched decode step's CPU time goes: the model's arithmetic vs everything around it.

    python -m tools.decode_profile --model 30m --tokens 8
    python -m tools.decode_profile --model interleave-0.5b --tokens 8 --methods vanilla,vhr

Builds the bench's model (random weights, real architecture: ``halviz.bench.BENCH_MODELS``), decodes
one comparison of the given columns as one batch (recording on, as the app does), and profiles the
decode steps only (the prefill and the first token are left out) with cProfile. Every function's own
time is put in one bucket by the file it lives in; the time of a torch operator called from Python
goes to its caller's bucket, split into *arithmetic* (matmuls, linear layers, attention, softmax) and
*other ops* (indexing, copies, concatenation, elementwise glue). An unprofiled run of the same decode
gives the real per-step time; cProfile's own cost inflates the Python shares, so read them as shares.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ARITHMETIC = ("linear", "matmul", "bmm", "addmm", "baddbmm", "scaled_dot_product", "softmax", "embedding",
              "einsum", "'mm'", "conv")
BUCKETS = (  # (bucket, path fragment); first match wins
    ("halviz recorder", "halviz/engine/recorder.py"),
    ("halviz attention fn", "halviz/engine/attention.py"),
    ("halviz engine (rows, steps, cache)", "halviz/engine/"),
    ("halviz methods", "halviz/methods/"),
    ("halviz other", "halviz/"),
    ("transformers model code", "transformers/models/"),
    ("transformers other (cache, masks)", "transformers/"),
    ("torch.nn module dispatch", "torch/nn/"),
    ("torch other", "torch/"),
)
DEFAULT_METHODS = "vanilla,prunehal,vasparse,vhr,kvsmooth"


def bucket_of(filename: str) -> str:
    path = filename.replace("\\", "/")
    return next((name for name, part in BUCKETS if part in path), "python other")


def is_arithmetic(name: str) -> bool:
    return any(word in name for word in ARITHMETIC)


def breakdown(stats: pstats.Stats) -> dict[str, dict[str, float]]:
    """{bucket: {"python": s, "arithmetic": s, "other ops": s}} from cProfile's own times."""
    out: dict[str, dict[str, float]] = {}

    def add(bucket: str, kind: str, seconds: float) -> None:
        out.setdefault(bucket, {"python": 0.0, "arithmetic": 0.0, "other ops": 0.0})[kind] += seconds

    for (filename, _, name), (_, _, own, _, callers) in stats.stats.items():
        if filename != "~":  # a Python function: its own time is Python overhead of its bucket
            add(bucket_of(filename), "python", own)
            continue
        kind = "arithmetic" if is_arithmetic(name) else "other ops"
        if not callers:
            add("python other", kind, own)
            continue
        for (caller_file, _, _), (_, _, caller_own, _) in callers.items():
            add(bucket_of(caller_file), kind, caller_own)
    return out


def build(model: str, folder: Path):
    from halviz.bench import BENCH_MODELS
    from halviz.models import load_model

    return load_model(str(BENCH_MODELS[model].save(folder / model)), device="cpu")


def decoder(loaded, image, methods: list[str], tokens: int):
    from halviz.engine.batch import BatchDecoder
    from halviz.engine.recorder import RecordOptions
    from halviz.methods import build_stack
    from halviz.models.families import DEFAULT_PROMPT

    stacks = [[] if m == "vanilla" else build_stack([m]) for m in methods]
    return BatchDecoder(loaded, image, DEFAULT_PROMPT, stacks, max_new_tokens=tokens, record=RecordOptions(),
                        stop_at_eos=False)


def step_times(dec) -> list[float]:
    """Per decode step (prefill excluded) wall ms of an unprofiled run."""
    it = iter(dec)
    next(it)  # prefill + first token
    stamps = [time.perf_counter()]
    for _ in it:
        stamps.append(time.perf_counter())
    return list(np.diff(stamps) * 1e3)


def profiled(dec) -> tuple[pstats.Stats, int]:
    it = iter(dec)
    next(it)
    profile = cProfile.Profile()
    steps = 0
    profile.enable()
    for _ in it:
        steps += 1
    profile.disable()
    return pstats.Stats(profile), steps


def report(rows: dict[str, dict[str, float]], steps: int, wall_ms: float) -> str:
    total = sum(sum(v.values()) for v in rows.values())
    lines = [f"unprofiled: {wall_ms:.1f} ms per decode step (median); profiled total {total / steps * 1e3:.1f} ms/step",
             f"{'bucket':<36}{'python':>9}{'arith':>9}{'other ops':>11}{'share':>8}   (ms per step, profiled)"]
    kinds = ("python", "arithmetic", "other ops")
    for name, v in sorted(rows.items(), key=lambda kv: -sum(kv[1].values())):
        s = sum(v.values())
        if s / total < 0.002:
            continue
        lines.append(f"{name:<36}" + "".join(f"{v[k] / steps * 1e3:>{w}.2f}" for k, w in zip(kinds, (9, 9, 11)))
                     + f"{s / total:>8.1%}")
    arith = sum(v["arithmetic"] for v in rows.values())
    ops = sum(v["other ops"] for v in rows.values())
    py = sum(v["python"] for v in rows.values())
    lines.append(f"{'all':<36}{py / steps * 1e3:>9.2f}{arith / steps * 1e3:>9.2f}{ops / steps * 1e3:>11.2f}")
    lines.append(f"model arithmetic {arith / total:.1%}; other tensor ops {ops / total:.1%}; Python {py / total:.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.decode_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="30m", help="a halviz.bench model: tiny, 30m, interleave-0.5b, smolvlm-256m")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated columns (vanilla = no method)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per column")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--top", type=int, default=0, help="also print cProfile's top N functions by own time")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="halviz-profile-") as tmp:
        loaded = build(args.model, Path(tmp))
        step_times(decoder(loaded, image, methods, 2))  # warm-up
        wall = statistics.median(step_times(decoder(loaded, image, methods, args.tokens)))
        stats, steps = profiled(decoder(loaded, image, methods, args.tokens))
    print(f"{args.model}, columns {','.join(methods)}, {args.tokens} tokens, {args.threads} thread(s), "
          f"{steps} decode steps profiled")
    print(report(breakdown(stats), steps, wall))
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
