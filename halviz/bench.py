"""Per-token cost of our attention function, of each method and of the peers' approach, as ratios from one run.

    python -m halviz.bench [--quick] [--json PATH] [--models tiny,30m,interleave-0.5b] [--methods vasparse,...]

Random checkpoints are built and loaded through the normal loader: ``tiny`` (the test model) and
``30m`` (~30 M parameters), both LLaVA-1.5 layout with 576 image tokens, and ``interleave-0.5b``,
the exact architecture of llava-hf/llava-interleave-qwen-0.5b-hf (SigLIP-384 + Qwen1.5-0.5B, 729
image tokens, 864 M parameters; ``halviz/models/configs/``). For each we time the stock SDPA
attention, our function with recording off (pass-through) and on (traced), every registered method
(traced) against vanilla traced, and what peers do: ``generate(output_attentions=True)`` with eager
attention, whose returned attention tensors we weigh against our trace.

Every variant runs once per round, in an order rotated each round, and each figure is the minimum
over rounds: load from other processes only ever adds time, so the minimum is the least disturbed
reading, and ratios of minimums stay put under load where ratios of single runs do not. Decode
figures are the median step of a run (step 0, the prefill, excluded); prefill and total figures
are whole-run times (total = prefill and any extra passes, per generated token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from halviz.engine.attention import ATTENTION_NAME
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions, trace_bytes_per_step
from halviz.methods import METHODS, build_stack
from halviz.models import DEFAULT_PROMPT, load_model
from halviz.models.real_geometry import save_real_geometry
from halviz.models.tiny import TinySpec, save_tiny_llava


@dataclass(frozen=True)
class BenchModel:
    save: Callable[[Path], Path]  # writes a checkpoint folder that load_model reads
    tokens: tuple[int, int]  # (quick, full)
    rounds: tuple[int, int]


BENCH_MODELS = {
    "tiny": BenchModel(partial(save_tiny_llava, TinySpec(init_std=0.2)), (12, 64), (6, 5)),
    "30m": BenchModel(partial(save_tiny_llava, TinySpec(vision_hidden=192, vision_layers=2, text_hidden=512,
                                                        text_layers=8, heads=8, kv_heads=8, intermediate=1376,
                                                        init_std=0.05)), (12, 64), (6, 5)),
    # On 2 CPU cores one prefill here takes ~30 s, so fewer, longer runs.
    "interleave-0.5b": BenchModel(partial(save_real_geometry, "interleave-0.5b"), (6, 24), (2, 3)),
}
QUICK_MODELS, FULL_MODELS = "tiny,30m", "tiny,30m,interleave-0.5b"
LLAVA7B = {"num_layers": 32, "num_heads": 32, "num_image_tokens": 576, "steps": 512}


def llava7b_trace_mb(options: RecordOptions = RecordOptions()) -> float:
    per_step = trace_bytes_per_step(LLAVA7B["num_layers"], LLAVA7B["num_heads"], LLAVA7B["num_image_tokens"], options)
    return per_step * LLAVA7B["steps"] / 1e6


def best_ratio(readings: dict[str, dict[str, list[float]]], variant: str, base: str, metric: str) -> float:
    """min over rounds of ``variant``'s ``metric`` / min over rounds of ``base``'s."""
    return min(readings[variant][metric]) / min(readings[base][metric])


def time_decoder(loaded, image, tokens: int, methods=(), record: bool = True) -> dict[str, float]:
    """One halviz decode: decode ms/token (median step after the prefill), prefill ms, total ms/token."""
    dec = Decoder(loaded, image, DEFAULT_PROMPT, list(methods), max_new_tokens=tokens,
                  record=RecordOptions(enabled=record), stop_at_eos=False)
    t0 = time.perf_counter()
    for _ in dec:
        pass
    out = {"total": (time.perf_counter() - t0) * 1e3 / tokens, "prefill": dec.steps[0].elapsed_ms,
           "decode": statistics.median(s.elapsed_ms for s in dec.steps[1:])}
    if record:
        out["trace_bytes"] = dec.trace().nbytes()
    return out


def time_generate(loaded, image, tokens: int, output_attentions: bool) -> dict[str, float]:
    """Stock ``generate`` (greedy): SDPA, or eager attention returning every attention tensor as peers do."""
    inputs, _ = loaded.adapter.prepare(image, DEFAULT_PROMPT, loaded.device, loaded.dtype)
    loaded.model.set_attn_implementation({"text_config": "eager" if output_attentions else "sdpa"})
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                        output_attentions=output_attentions, return_dict_in_generate=True)
        total = (time.perf_counter() - t0) * 1e3 / tokens
    finally:
        loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
    assert out.sequences.shape[1] - inputs["input_ids"].shape[1] == tokens
    result = {"total": total}
    if output_attentions:  # one tuple per step, one (batch, heads, queries, keys) tensor per layer
        result["attn_bytes"] = sum(a.numel() * a.element_size() for step in out.attentions for a in step)
    return result


def method_label(name: str) -> str:
    """The method's name, with the ℓ_φ reading for VASparse (its cost depends on it)."""
    params = build_stack([name])[0].params
    return f"{name} (phi={params['phi']})" if "phi" in params else name


def _variants(loaded, image, tokens: int, method_names) -> dict[str, Callable[[], dict]]:
    def engine(attention: str, record: bool):
        def run():
            loaded.model.set_attn_implementation({"text_config": attention})
            try:
                return time_decoder(loaded, image, tokens, record=record)
            finally:
                loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
        return run

    variants = {"sdpa": engine("sdpa", False), "passthrough": engine(ATTENTION_NAME, False),
                "traced": engine(ATTENTION_NAME, True),
                "generate_sdpa": partial(time_generate, loaded, image, tokens, False),
                "generate_attentions": partial(time_generate, loaded, image, tokens, True)}
    for m in method_names:  # a fresh stack per run: methods keep per-decode state
        variants[m] = lambda m=m: time_decoder(loaded, image, tokens, build_stack([m]))
    return variants


def run_rounds(variants: dict[str, Callable[[], dict]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each variant once per round, the order rotated by one each round; every reading kept."""
    names = list(variants)
    readings: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for key, value in variants[name]().items():
                readings[name].setdefault(key, []).append(value)
    return readings


def bench_model(name: str, spec: BenchModel, folder: Path, tokens: int, rounds: int,
                method_names: tuple[str, ...] | None = None) -> dict:
    started = time.perf_counter()
    loaded = load_model(str(spec.save(folder / name)), device="cpu")
    build_s = time.perf_counter() - started
    adapter = loaded.adapter
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    methods = [m for m in (method_names or METHODS) if m != "vanilla"]
    time_decoder(loaded, image, 2)  # warm-up
    r = run_rounds(_variants(loaded, image, tokens, methods), rounds)
    best = {v: {k: min(vals) for k, vals in readings.items()} for v, readings in r.items()}
    n_image = len(Decoder(loaded, image, max_new_tokens=1).layout.positions)
    formula_bytes = trace_bytes_per_step(adapter.num_layers, adapter.num_heads, n_image, RecordOptions()) * tokens
    ratio = partial(best_ratio, r)
    return {
        "params_m": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 2),
        "layers": adapter.num_layers, "heads": adapter.num_heads, "image_tokens": n_image,
        "tokens": tokens, "rounds": rounds, "build_s": round(build_s, 1),
        "sdpa_ms_per_token": round(best["sdpa"]["decode"], 3),
        "sdpa_prefill_ms": round(best["sdpa"]["prefill"], 1),
        "passthrough_ratio": round(ratio("passthrough", "sdpa", "decode"), 3),
        "traced_ratio": round(ratio("traced", "sdpa", "decode"), 3),
        "traced_prefill_ratio": round(ratio("traced", "sdpa", "prefill"), 3),
        "vanilla_total_ms_per_token": round(best["traced"]["total"], 3),
        "methods": {method_label(m): {
            "ratio": round(ratio(m, "traced", "total"), 3),
            "decode_ratio": round(ratio(m, "traced", "decode"), 3),
            "prefill_ratio": round(ratio(m, "traced", "prefill"), 3),
            "ms_per_token": round(best[m]["total"], 3)} for m in methods},
        "peers": {
            "generate_sdpa_ms_per_token": round(best["generate_sdpa"]["total"], 3),
            "generate_attentions_ms_per_token": round(best["generate_attentions"]["total"], 3),
            "time_ratio_vs_traced": round(best["generate_attentions"]["total"] / best["traced"]["total"], 3),
            "attentions_mb": round(best["generate_attentions"]["attn_bytes"] / 1e6, 3),
            "trace_mb": round(best["traced"]["trace_bytes"] / 1e6, 3),
            "trace_mb_formula": round(formula_bytes / 1e6, 3),
            "bytes_ratio": round(best["generate_attentions"]["attn_bytes"] / best["traced"]["trace_bytes"], 1),
        },
        "readings": r,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"fewer, shorter runs; models {QUICK_MODELS} (about a minute)")
    parser.add_argument("--json", type=Path, help="write the figures (and every reading) here")
    parser.add_argument("--models", help=f"comma-separated subset of {', '.join(BENCH_MODELS)} "
                                         f"(default {FULL_MODELS}; {QUICK_MODELS} with --quick)")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "vanilla"),
                        help="comma-separated methods to time against vanilla")
    parser.add_argument("--tokens", type=int, help="new tokens per run (default: per model, see BENCH_MODELS)")
    parser.add_argument("--rounds", type=int, help="rounds (default: per model)")
    args = parser.parse_args(argv)
    method_names = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if unknown_methods := [m for m in method_names if m not in METHODS]:
        parser.error(f"unknown method(s): {', '.join(unknown_methods)}")
    names = [n.strip() for n in (args.models or (QUICK_MODELS if args.quick else FULL_MODELS)).split(",") if n.strip()]
    if unknown := [n for n in names if n not in BENCH_MODELS]:
        parser.error(f"unknown benchmark model(s): {', '.join(unknown)}")
    mode = 0 if args.quick else 1
    results = {"models": {}, "trace_mb_llava7b_512": round(llava7b_trace_mb(), 2),
               "config": {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = BENCH_MODELS[name]
            tokens, rounds = args.tokens or spec.tokens[mode], args.rounds or spec.rounds[mode]
            results["models"][name] = bench_model(name, spec, Path(tmp), tokens, rounds, method_names)
            print(format_model(name, results["models"][name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def format_model(name: str, r: dict) -> str:
    p = r["peers"]
    lines = [f"\n{name} ({r['params_m']} M params, {r['layers']} layers x {r['heads']} heads, {r['image_tokens']} image"
             f" tokens; {r['tokens']} tokens, best of {r['rounds']} rounds, variants interleaved)",
             f"  sdpa                     {r['sdpa_ms_per_token']:8.2f} ms/token decode, prefill {r['sdpa_prefill_ms']:.0f} ms",
             f"  ours, pass-through       {r['passthrough_ratio']:8.2f} x sdpa (decode)",
             f"  ours, traced             {r['traced_ratio']:8.2f} x sdpa (decode), prefill {r['traced_prefill_ratio']:.2f} x",
             "  vs vanilla traced:          total   decode  prefill"]
    for m, v in r["methods"].items():
        lines.append(f"  {m:<26} {v['ratio']:6.2f} x {v['decode_ratio']:6.2f} x {v['prefill_ratio']:6.2f} x")
    lines += [f"  peers: generate(output_attentions=True), eager: {p['generate_attentions_ms_per_token']:.2f} ms/token"
              f" = {p['time_ratio_vs_traced']:.2f} x ours traced (both prefill included; generate sdpa"
              f" {p['generate_sdpa_ms_per_token']:.2f})",
              f"         attentions returned {p['attentions_mb']:.2f} MB vs our trace {p['trace_mb']:.3f} MB"
              f" (layout formula {p['trace_mb_formula']:.3f} MB): {p['bytes_ratio']:.0f} x"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
