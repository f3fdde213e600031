"""Per-token cost of our attention function, of each method and of the peers' approach, as ratios from one run.

    python -m halviz.bench [--quick] [--json PATH] [--models tiny,30m,interleave-0.5b] [--methods vasparse,...]
                           [--tokens N] [--rounds N] [--threads N]

Random checkpoints are built and loaded through the normal loader: ``tiny`` (the test model) and
``30m`` (~30 M parameters), both LLaVA-1.5 layout with 576 image tokens, and ``interleave-0.5b``,
the exact architecture of llava-hf/llava-interleave-qwen-0.5b-hf (SigLIP-384 + Qwen1.5-0.5B, 729
image tokens, 864 M parameters; ``halviz/models/configs/``). For each we time the stock SDPA
attention, our function with recording off (pass-through) and on (traced), every registered method
(traced) against vanilla traced, and what peers do: ``generate(output_attentions=True)`` with eager
attention, whose returned attention tensors we weigh against our trace.

Every variant runs once per round, in an order rotated each round, and each figure is the minimum
over rounds. Ratios are of CPU time (``time.process_time``), which load from other processes moves
far less than wall time (about ±10 % between runs at load 5 on 2 cores, against up to 2x), with
wall-time ratios beside them: load only ever adds time, so the minimum over rounds is the least
disturbed reading. Decode is a step after the first token: for the engine
(SDPA, pass-through, traced) its fastest step, since every step does the same work; for a method
or a batch its median step, since some do more on some steps. Prefill is the first token's time;
total is the whole run per generated token (prefill and any extra passes included). It also times
all columns of a comparison (vanilla and every method) decoded as rows of one ``BatchDecoder``
against one column alone.
"""

from __future__ import annotations

import argparse
import gc
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
from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions, trace_bytes_once, trace_bytes_per_step
from halviz.methods import METHODS, build_stack
from halviz.models import DEFAULT_PROMPT, load_model
from halviz.models.real_geometry import save_real_geometry
from halviz.models.tiny import TinySpec, save_tiny_llava
from halviz.threads import add_threads_argument, use_threads


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
    # SmolVLM-256M-Instruct whole (256 M parameters); the 336×336 upload becomes 16 tiles + a global view
    # (1088 image tokens), so a prefill takes ~65 s of CPU here.
    "smolvlm-256m": BenchModel(partial(save_real_geometry, "HuggingFaceTB/SmolVLM-256M-Instruct"), (4, 12), (2, 2)),
}
QUICK_MODELS, FULL_MODELS = "tiny,30m", "tiny,30m,interleave-0.5b"
LLAVA7B = {"num_layers": 32, "num_heads": 32, "num_image_tokens": 576, "steps": 512}


def llava7b_trace_mb(options: RecordOptions = RecordOptions()) -> float:
    per_step = trace_bytes_per_step(LLAVA7B["num_layers"], LLAVA7B["num_heads"], LLAVA7B["num_image_tokens"], options)
    return per_step * LLAVA7B["steps"] / 1e6


def best_ratio(readings: dict[str, dict[str, list[float]]], variant: str, base: str, metric: str) -> float:
    """min over rounds of ``variant``'s ``metric`` / min over rounds of ``base``'s."""
    return min(readings[variant][metric]) / min(readings[base][metric])


def _timed_iteration(decoder, tokens: int, steps) -> dict[str, float]:
    """Wall and CPU time of one decode: the first yield (prefill and first token), then every step."""
    c0, t0 = time.process_time(), time.perf_counter()
    stamps = []
    for _ in decoder:
        stamps.append(time.process_time())
    c2, t2 = time.process_time(), time.perf_counter()
    cpu_steps = np.diff(stamps) * 1e3
    decode = [s.elapsed_ms for s in steps[1:]]
    return {"total": (t2 - t0) * 1e3 / tokens, "prefill": steps[0].elapsed_ms, "decode": statistics.median(decode),
            "decode_min": min(decode), "cpu_total": (c2 - c0) * 1e3 / tokens, "cpu_prefill": (stamps[0] - c0) * 1e3,
            "cpu_decode": float(np.median(cpu_steps)), "cpu_decode_min": float(cpu_steps.min())}


def time_decoder(loaded, image, tokens: int, methods=(), record: bool = True, lens=None) -> dict[str, float]:
    """One halviz decode: wall (median and fastest decode step, prefill, total per token) and CPU times;
    ``lens``: the logit lens's layers (RecordOptions.lens_layers; None: the default rule)."""
    dec = Decoder(loaded, image, DEFAULT_PROMPT, list(methods), max_new_tokens=tokens,
                  record=RecordOptions(enabled=record, lens_layers=lens), stop_at_eos=False)
    out = _timed_iteration(dec, tokens, dec.steps)
    if record:
        out["trace_bytes"] = dec.trace().nbytes()
    return out


def time_generate(loaded, image, tokens: int, output_attentions: bool) -> dict[str, float]:
    """Stock ``generate`` (greedy): SDPA, or eager attention returning every attention tensor as peers do."""
    inputs, _ = loaded.adapter.prepare(image, DEFAULT_PROMPT, loaded.device, loaded.dtype)
    loaded.model.set_attn_implementation({"text_config": "eager" if output_attentions else "sdpa"})
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                        output_attentions=output_attentions, return_dict_in_generate=True)
        result = {"total": (time.perf_counter() - t0) * 1e3 / tokens, "cpu_total": (time.process_time() - c0) * 1e3 / tokens}
    finally:
        loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
    assert out.sequences.shape[1] - inputs["input_ids"].shape[1] == tokens
    if output_attentions:  # one tuple per step, one (batch, heads, queries, keys) tensor per layer
        result["attn_bytes"] = sum(a.numel() * a.element_size() for step in out.attentions for a in step)
    return result


def time_columns(loaded, image, tokens: int, method_names) -> dict[str, float]:
    """One comparison decoded as rows of one batch: vanilla (an empty stack) and one column per method."""
    stacks = [build_stack([m]) if m != "vanilla" else [] for m in method_names]
    dec = BatchDecoder(loaded, image, DEFAULT_PROMPT, stacks, max_new_tokens=tokens, record=RecordOptions(),
                       stop_at_eos=False)
    # Every column runs every round (none ends early), so column 0's step times are the rounds'.
    return _timed_iteration(dec, tokens, dec.steps[0])


def method_label(name: str) -> str:
    """The method's name, with the ℓ_φ reading for VASparse (its cost depends on it)."""
    params = build_stack([name])[0].params
    return f"{name} (phi={params['phi']})" if "phi" in params else name


def _variants(loaded, image, tokens: int, method_names) -> dict[str, Callable[[], dict]]:
    def engine(attention: str, record: bool, lens=None):
        def run():
            loaded.model.set_attn_implementation({"text_config": attention})
            try:
                return time_decoder(loaded, image, tokens, record=record, lens=lens)
            finally:
                loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
        return run

    variants = {"sdpa": engine("sdpa", False), "passthrough": engine(ATTENTION_NAME, False),
                "traced": engine(ATTENTION_NAME, True),
                "traced_lens_off": engine(ATTENTION_NAME, True, ()), "traced_lens_all": engine(ATTENTION_NAME, True, "all"),
                "generate_sdpa": partial(time_generate, loaded, image, tokens, False),
                "generate_attentions": partial(time_generate, loaded, image, tokens, True)}
    for m in method_names:  # a fresh stack per run: methods keep per-decode state
        variants[m] = lambda m=m: time_decoder(loaded, image, tokens, build_stack([m]))
    variants["columns_one"] = partial(time_columns, loaded, image, tokens, ["vanilla"])
    variants["columns_all"] = partial(time_columns, loaded, image, tokens, ["vanilla", *method_names])
    return variants


def run_rounds(variants: dict[str, Callable[[], dict]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each variant once per round, the order rotated by one each round; every reading kept."""
    names = list(variants)
    readings: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()  # no collector pause inside a timed run
            gc.disable()
            try:
                reading = variants[name]()
            finally:
                gc.enable()
            for key, value in reading.items():
                readings[name].setdefault(key, []).append(value)
    return readings


def bench_model(name: str, spec: BenchModel, folder: Path, tokens: int, rounds: int,
                method_names: tuple[str, ...] | None = None, image_budget: str = "default") -> dict:
    from halviz.session.resolution import budgeted

    started = time.perf_counter()
    loaded = budgeted(load_model(str(spec.save(folder / name)), device="cpu"), image_budget)
    build_s = time.perf_counter() - started
    adapter = loaded.adapter
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    methods = [m for m in (method_names or METHODS) if m != "vanilla"]
    time_decoder(loaded, image, 2)  # warm-up
    r = run_rounds(_variants(loaded, image, tokens, methods), rounds)
    best = {v: {k: min(vals) for k, vals in readings.items()} for v, readings in r.items()}
    n_image = len(Decoder(loaded, image, max_new_tokens=1).layout.positions)
    prompt_len = int(Decoder(loaded, image, max_new_tokens=1).inputs["input_ids"].shape[1])
    lens_layers = Decoder(loaded, image, max_new_tokens=1).run_to_end().meta["lens_layers"]  # the default rule's
    formula_bytes = (trace_bytes_per_step(adapter.num_layers, adapter.num_heads, n_image, RecordOptions(),
                                          lens_layers=len(lens_layers)) * tokens
                     + trace_bytes_once(adapter.num_layers, prompt_len))
    ratio = partial(best_ratio, r)

    def both(variant: str, base: str, cpu: str, wall: str) -> dict[str, float]:
        return {"cpu": round(ratio(variant, base, cpu), 3), "wall": round(ratio(variant, base, wall), 3)}

    def solo_sum(key: str) -> float:
        return best["traced"][key] + sum(best[m][key] for m in methods)

    return {
        "params_m": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 2),
        "layers": adapter.num_layers, "heads": adapter.num_heads, "image_tokens": n_image,
        "tokens": tokens, "rounds": rounds, "build_s": round(build_s, 1),
        "sdpa": {"cpu_decode_ms": round(best["sdpa"]["cpu_decode_min"], 3),
                 "cpu_prefill_ms": round(best["sdpa"]["cpu_prefill"], 1),
                 "wall_decode_ms": round(best["sdpa"]["decode_min"], 3), "wall_prefill_ms": round(best["sdpa"]["prefill"], 1)},
        # Every engine step does the same work, so the fastest step is the least disturbed reading.
        "passthrough": {"decode": both("passthrough", "sdpa", "cpu_decode_min", "decode_min")},
        "traced": {"decode": both("traced", "sdpa", "cpu_decode_min", "decode_min"),
                   "prefill": both("traced", "sdpa", "cpu_prefill", "prefill")},
        # the logit lens (engine/lens.py): its default layers, none, every layer
        "lens": {"default_layers": list(lens_layers),
                 "off": both("traced_lens_off", "sdpa", "cpu_decode_min", "decode_min"),
                 "all": both("traced_lens_all", "sdpa", "cpu_decode_min", "decode_min")},
        "methods": {method_label(m): {
            "total": both(m, "traced", "cpu_total", "total"),
            "decode": both(m, "traced", "cpu_decode", "decode"),  # median step: some methods vary by step
            "prefill": both(m, "traced", "cpu_prefill", "prefill"),
            "cpu_ms_per_token": round(best[m]["cpu_total"], 3)} for m in methods},
        "peers": {
            "generate_attentions": both("generate_attentions", "traced", "cpu_total", "total"),
            "generate_sdpa": both("generate_sdpa", "traced", "cpu_total", "total"),
            "generate_attentions_cpu_ms_per_token": round(best["generate_attentions"]["cpu_total"], 3),
            "attentions_mb": round(best["generate_attentions"]["attn_bytes"] / 1e6, 3),
            "trace_mb": round(best["traced"]["trace_bytes"] / 1e6, 3),
            "trace_mb_formula": round(formula_bytes / 1e6, 3),
            "bytes_ratio": round(best["generate_attentions"]["attn_bytes"] / best["traced"]["trace_bytes"], 1),
        },
        "columns": {
            "count": 1 + len(methods),
            "all_vs_one": both("columns_all", "columns_one", "cpu_total", "total"),
            "decode": both("columns_all", "columns_one", "cpu_decode", "decode"),
            "prefill": both("columns_all", "columns_one", "cpu_prefill", "prefill"),
            "one_column_vs_solo_decoder": both("columns_one", "traced", "cpu_total", "total"),
            "all_cpu_ms_per_token": round(best["columns_all"]["cpu_total"], 3),
            # what a comparison cost before rows: every column's solo decode, one after another
            "one_after_another": {"cpu": round(solo_sum("cpu_total") / best["traced"]["cpu_total"], 3),
                                  "wall": round(solo_sum("total") / best["traced"]["total"], 3)},
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
    parser.add_argument("--image-budget", default="default",
                        help="image-token budget: 'default' (the checkpoint's own, as the recorded figures), 'min' "
                             "(the cheapest, what the app uses on a CPU) or a family's budget name (docs/models.md)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
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
    print(f"trace size, LLaVA-1.5-7B geometry, 512 steps, default recording: {results['trace_mb_llava7b_512']:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = BENCH_MODELS[name]
            tokens, rounds = args.tokens or spec.tokens[mode], args.rounds or spec.rounds[mode]
            results["models"][name] = bench_model(name, spec, Path(tmp), tokens, rounds, method_names,
                                                  args.image_budget)
            print(format_model(name, results["models"][name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def format_model(name: str, r: dict) -> str:
    def pair(x: dict) -> str:
        return f"{x['cpu']:5.2f} x [{x['wall']:4.2f}]"

    sdpa, p = r["sdpa"], r["peers"]
    lines = [f"\n{name} ({r['params_m']} M params, {r['layers']} layers x {r['heads']} heads, {r['image_tokens']} image"
             f" tokens; {r['tokens']} tokens, best of {r['rounds']} rounds, variants interleaved)",
             "  ratios of CPU time [of wall time]",
             f"  sdpa                       {sdpa['cpu_decode_ms']:.2f} ms/token decode, prefill {sdpa['cpu_prefill_ms']:.0f} ms"
             f" (CPU) [wall {sdpa['wall_decode_ms']:.2f}, {sdpa['wall_prefill_ms']:.0f}]",
             f"  ours, pass-through         {pair(r['passthrough']['decode'])} sdpa, decode",
             f"  ours, traced               {pair(r['traced']['decode'])} sdpa, decode;"
             f" prefill {pair(r['traced']['prefill'])}",
             f"  logit lens: default layers {r['lens']['default_layers']} (in 'traced' above); traced with the lens"
             f" off {pair(r['lens']['off'])} sdpa, with every layer {pair(r['lens']['all'])} sdpa, decode",
             "  vs vanilla traced:         total            decode           prefill"]
    for m, v in r["methods"].items():
        lines.append(f"  {m:<26} {pair(v['total'])}   {pair(v['decode'])}   {pair(v['prefill'])}")
    lines += [f"  peers, generate(output_attentions=True) eager: {pair(p['generate_attentions'])} ours traced per token,"
              f" prefill included (stock generate, sdpa: {pair(p['generate_sdpa'])})",
              f"         attentions returned {p['attentions_mb']:.2f} MB vs our trace {p['trace_mb']:.3f} MB"
              f" (layout formula {p['trace_mb_formula']:.3f} MB): {p['bytes_ratio']:.0f} x"]
    c = r["columns"]
    lines.append(f"  all {c['count']} columns as one batch: {pair(c['all_vs_one'])} one column, per token (decode"
                 f" {pair(c['decode'])}, prefill {pair(c['prefill'])}); solo decodes one after another"
                 f" {pair(c['one_after_another'])}; one column in the batch engine {pair(c['one_column_vs_solo_decoder'])}"
                 " the solo Decoder")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
