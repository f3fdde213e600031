"""Per-token decode cost of our attention function and of each method, as ratios from one run.

    python -m halviz.bench [--quick] [--json PATH] [--models tiny,30m] [--methods vasparse,...]

Two random LLaVA-1.5-layout checkpoints (576 image tokens) are built from configs and loaded
through the normal loader: ``tiny`` (the test model) and ``30m`` (~30 M parameters). For each we
time, interleaved over several rounds: the stock SDPA attention, our function with recording
off (pass-through), with recording on, and every registered method (recording on) against
vanilla with recording on. Method timings include the prefill and any extra passes, amortised
over the generated tokens, so VHR's selection pass counts. Ratios come from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions, trace_bytes_per_step
from halviz.methods import METHODS, build_stack
from halviz.models import load_model
from halviz.models.tiny import TinySpec, save_tiny_llava

BENCH_MODELS = {
    "tiny": TinySpec(init_std=0.2),
    "30m": TinySpec(vision_hidden=192, vision_layers=2, text_hidden=512, text_layers=8, heads=8, kv_heads=8,
                    intermediate=1376, init_std=0.05),
}
LLAVA7B = {"num_layers": 32, "num_heads": 32, "num_image_tokens": 576, "steps": 512}


def llava7b_trace_mb(options: RecordOptions = RecordOptions()) -> float:
    per_step = trace_bytes_per_step(LLAVA7B["num_layers"], LLAVA7B["num_heads"], LLAVA7B["num_image_tokens"], options)
    return per_step * LLAVA7B["steps"] / 1e6


def _time_run(loaded, image, tokens: int, methods=(), record=True) -> tuple[float, float]:
    """Return (decode ms/token excluding prefill, total ms/token including prefill)."""
    dec = Decoder(loaded, image, methods=list(methods), max_new_tokens=tokens,
                  record=RecordOptions(enabled=record), stop_at_eos=False)
    t0 = time.perf_counter()
    for _ in dec:
        pass
    total = (time.perf_counter() - t0) * 1e3 / tokens
    decode = statistics.median(s.elapsed_ms for s in dec.steps[1:])
    return decode, total


def method_label(name: str) -> str:
    """The method's name, with the ℓ_φ reading for VASparse (its cost depends on it)."""
    params = build_stack([name])[0].params
    return f"{name} (phi={params['phi']})" if "phi" in params else name


def bench_model(name: str, spec: TinySpec, folder: Path, tokens: int, rounds: int,
                method_names: tuple[str, ...] | None = None) -> dict:
    loaded = load_model(str(save_tiny_llava(spec, folder / name)), device="cpu")
    model = loaded.model
    params = sum(p.numel() for p in model.parameters()) / 1e6
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    engine = {"sdpa": [], "passthrough": [], "traced": []}
    methods = {m: [] for m in (method_names or METHODS) if m != "vanilla"}
    vanilla_total = []
    _time_run(loaded, image, 4)  # warm-up
    for _ in range(rounds):
        model.set_attn_implementation({"text_config": "sdpa"})
        engine["sdpa"].append(_time_run(loaded, image, tokens, record=False)[0])
        model.set_attn_implementation({"text_config": "halviz"})
        engine["passthrough"].append(_time_run(loaded, image, tokens, record=False)[0])
        traced = _time_run(loaded, image, tokens)
        engine["traced"].append(traced[0])
        vanilla_total.append(traced[1])
        for method in methods:
            methods[method].append(_time_run(loaded, image, tokens, build_stack([method]))[1])
    med = {k: statistics.median(v) for k, v in engine.items()}
    vanilla = statistics.median(vanilla_total)
    return {
        "params_m": round(params, 2),
        "tokens": tokens,
        "rounds": rounds,
        "sdpa_ms_per_token": round(med["sdpa"], 3),
        "passthrough_ratio": round(med["passthrough"] / med["sdpa"], 3),
        "traced_ratio": round(med["traced"] / med["sdpa"], 3),
        "vanilla_total_ms_per_token": round(vanilla, 3),
        "methods": {method_label(m): {"ratio": round(statistics.median(v) / vanilla, 3),
                        "ms_per_token": round(statistics.median(v), 3)} for m, v in methods.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds (under 40 s)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--models", default="tiny,30m", help="comma-separated subset of: " + ",".join(BENCH_MODELS))
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "vanilla"),
                        help="comma-separated methods to time against vanilla")
    args = parser.parse_args(argv)
    method_names = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if unknown_methods := [m for m in method_names if m not in METHODS]:
        parser.error(f"unknown method(s): {', '.join(unknown_methods)}")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_MODELS]
    if unknown:
        parser.error(f"unknown benchmark model(s): {', '.join(unknown)}")
    tokens, rounds = (24, 2) if args.quick else (64, 3)
    results = {"models": {}, "trace_mb_llava7b_512": round(llava7b_trace_mb(), 2),
               "config": {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results["models"][name] = bench_model(name, BENCH_MODELS[name], Path(tmp), tokens, rounds, method_names)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def format_table(results: dict) -> str:
    lines = [f"trace size, LLaVA-1.5-7B geometry, 512 steps, default recording: {results['trace_mb_llava7b_512']:.1f} MB"]
    for name, r in results["models"].items():
        lines.append(f"\n{name} ({r['params_m']} M params, {r['tokens']} tokens x {r['rounds']} rounds)")
        lines.append(f"  sdpa                 {r['sdpa_ms_per_token']:8.2f} ms/token")
        lines.append(f"  ours, pass-through   {r['passthrough_ratio']:8.2f} x sdpa")
        lines.append(f"  ours, traced         {r['traced_ratio']:8.2f} x sdpa")
        for m, v in r["methods"].items():
            lines.append(f"  {m:<26} {v['ratio']:8.2f} x vanilla (traced, prefill included)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
