"""Decode cost at a real model's size on a GPU: random weights with a real checkpoint's exact architecture.

    python -m halviz.gpubench [--device cuda] [--models 7b|interleave-0.5b] [--tokens 64] [--rounds 2] [--json PATH]

The model is built from the checkpoint's real ``config.json`` (``halviz/models/configs/``) straight
on the device in bfloat16: no download, no weights on disk. The tokenizer is a small stand-in (the
prompt's token count differs from the real one's; the image tokens, 576 or 729, and every layer's
shape do not).
In one run it prints per-token decode time for stock SDPA ``generate``, halviz vanilla with and
without recording, every method (prefill and extra passes amortised over the tokens), and all
columns of a comparison as one batch (and, for reference, one after another), plus peak GPU
memory. Sized to finish within a few minutes on one H200.
``--layers N`` cuts the decoder (and vision tower) to N layers: a smoke run on a CPU.
The evaluation-throughput item (``--eval-images K``, default 4; 0 skips it) decodes K images × 5 methods
as ``halviz.eval``'s harness does (one batch of method columns per image) against plain batched
``generate`` of the same decode count, in images per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from halviz.chair import write_json_atomically
from halviz.engine.attention import ATTENTION_NAME, register_attention
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.methods import METHODS, build_stack
from halviz.models import LoadedModel
from halviz.models.families import family_for_config
from halviz.models.real_geometry import GEOMETRIES, build_real_geometry_model, hub_id, real_geometry_config  # noqa: F401


def build_real_geometry(name: str, device: torch.device, dtype: torch.dtype, layers: int | None = None,
                        seed: int = 0) -> LoadedModel:
    """Random weights of the real architecture, allocated on ``device``, wrapped as the app loads models."""
    register_attention()
    model, processor = build_real_geometry_model(name, device, dtype, layers, seed)
    adapter = family_for_config(model.config.to_dict())(model, processor)  # the bound family
    model.set_attn_implementation(adapter.attn_implementation(ATTENTION_NAME))
    return LoadedModel(f"random-{name}", f"random weights, {hub_id(name)}", model, processor, adapter, device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generate(loaded: LoadedModel, image: Image.Image, tokens: int) -> float:
    """Stock transformers: SDPA attention, ``generate`` greedy, ms per new token (prefill included)."""
    inputs, _ = loaded.adapter.prepare(image, "Describe the image.", loaded.device, loaded.dtype)
    loaded.model.set_attn_implementation({"text_config": "sdpa"})
    try:
        _sync(loaded.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        _sync(loaded.device)
    finally:
        loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
    assert out.shape[1] - inputs["input_ids"].shape[1] == tokens
    return (time.perf_counter() - t0) * 1e3 / tokens


def time_decoder(loaded: LoadedModel, image: Image.Image, tokens: int, methods=(), record: bool = True) -> float:
    """halviz's engine: ms per new token, prefill and any extra passes included."""
    decoder = Decoder(loaded, image, "Describe the image.", list(methods), tokens,
                      record=RecordOptions(enabled=record), stop_at_eos=False)
    _sync(loaded.device)
    t0 = time.perf_counter()
    for _ in decoder:
        pass
    _sync(loaded.device)
    return (time.perf_counter() - t0) * 1e3 / tokens


def time_columns(loaded: LoadedModel, image: Image.Image, tokens: int, methods) -> float:
    """A whole comparison as rows of one batch (vanilla plus one column per method): ms per new token."""
    from halviz.engine.batch import BatchDecoder

    stacks = [[]] + [build_stack([m]) for m in methods]
    decoder = BatchDecoder(loaded, image, "Describe the image.", stacks, max_new_tokens=tokens,
                           record=RecordOptions(), stop_at_eos=False)
    _sync(loaded.device)
    t0 = time.perf_counter()
    decoder.run_to_end()
    _sync(loaded.device)
    return (time.perf_counter() - t0) * 1e3 / tokens


def eval_throughput(loaded: LoadedModel, images: int, tokens: int, methods) -> dict:
    """Evaluation throughput: ``images`` distinct images × (vanilla + ``methods``) columns × ``tokens``, decoded
    as the evaluation harness decodes them (one batch of method columns per image, no recording), against the
    same decode count run as plain batched ``generate`` (SDPA, the image repeated once per column). Images/s."""
    from halviz.engine.batch import BatchDecoder

    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(images)]
    stacks = lambda: [[]] + [build_stack([m]) for m in methods]  # noqa: E731 - fresh method state per image
    columns = 1 + len(methods)
    _sync(loaded.device)
    t0 = time.perf_counter()
    for picture in pictures:
        BatchDecoder(loaded, picture, "Describe the image.", stacks(), max_new_tokens=tokens,
                     record=RecordOptions(enabled=False), stop_at_eos=False).run_to_end()
    _sync(loaded.device)
    halviz_s = time.perf_counter() - t0
    loaded.model.set_attn_implementation({"text_config": "sdpa"})
    try:
        _sync(loaded.device)
        t0 = time.perf_counter()
        for picture in pictures:
            inputs, _ = loaded.adapter.prepare(picture, "Describe the image.", loaded.device, loaded.dtype)
            batch = {k: v.repeat(columns, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v for k, v in inputs.items()}
            with torch.inference_mode():
                out = loaded.model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            assert out.shape == (columns, inputs["input_ids"].shape[1] + tokens)
        _sync(loaded.device)
        generate_s = time.perf_counter() - t0
    finally:
        loaded.model.set_attn_implementation({"text_config": ATTENTION_NAME})
    return {"images": images, "columns": columns, "tokens": tokens, "methods": ["vanilla", *methods],
            "images_per_s_halviz": round(images / halviz_s, 4), "images_per_s_generate": round(images / generate_s, 4),
            "halviz_vs_generate_time": round(halviz_s / generate_s, 3)}


def bench(name: str, device: torch.device, dtype: torch.dtype, tokens: int, rounds: int,
          layers: int | None = None) -> dict:
    started = time.perf_counter()
    loaded = build_real_geometry(name, device, dtype, layers)
    build_s = time.perf_counter() - started
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    methods = [m for m in METHODS if m != "vanilla"]
    times: dict[str, list[float]] = {k: [] for k in ("generate_sdpa", "vanilla_untraced", "vanilla_traced", *methods,
                                                     "all_columns_batched")}
    time_decoder(loaded, image, 4)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(rounds):  # interleaved, so drift hits every entry alike
        times["generate_sdpa"].append(time_generate(loaded, image, tokens))
        times["vanilla_untraced"].append(time_decoder(loaded, image, tokens, record=False))
        times["vanilla_traced"].append(time_decoder(loaded, image, tokens))
        for method in methods:
            times[method].append(time_decoder(loaded, image, tokens, build_stack([method])))
        times["all_columns_batched"].append(time_columns(loaded, image, tokens, methods))
    best = {k: min(v) for k, v in times.items()}
    # What a comparison cost before rows: every column's solo decode, one after another.
    columns = best["vanilla_traced"] + sum(best[m] for m in methods)
    return {
        "geometry": hub_id(name), "layers_cut_to": layers, "device": str(device), "dtype": str(dtype),
        "params_b": round(sum(p.numel() for p in loaded.model.parameters()) / 1e9, 3),
        "image_tokens": len(loaded.adapter.prepare(image, "x", device, dtype)[1].positions),
        "tokens": tokens, "rounds": rounds, "build_s": round(build_s, 1),
        "ms_per_token": {k: round(v, 2) for k, v in best.items()},
        "ratios": {"vanilla_untraced_vs_generate": round(best["vanilla_untraced"] / best["generate_sdpa"], 3),
                   "vanilla_traced_vs_generate": round(best["vanilla_traced"] / best["generate_sdpa"], 3),
                   **{f"{m}_vs_vanilla": round(best[m] / best["vanilla_traced"], 3) for m in methods},
                   "all_columns_batched_vs_one": round(best["all_columns_batched"] / best["vanilla_traced"], 3),
                   "all_columns_one_after_another_vs_one": round(columns / best["vanilla_traced"], 3)},
        "gpu_seconds_per_comparison": round(best["all_columns_batched"] * tokens / 1e3, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def format_table(r: dict) -> str:
    lines = [f"{r['geometry']}: {r['params_b']} B params, {r['image_tokens']} image tokens, random weights, {r['dtype']} on {r['device']}"
             + (f", cut to {r['layers_cut_to']} layers" if r["layers_cut_to"] else ""),
             f"{r['tokens']} new tokens, best of {r['rounds']} interleaved rounds, prefill included"]
    for key, ms in r["ms_per_token"].items():
        lines.append(f"  {key:<20} {ms:9.2f} ms/token")
    for key, ratio in r["ratios"].items():
        lines.append(f"  {key:<32} {ratio:6.2f} x")
    lines.append(f"  all five columns as one batch: {r['gpu_seconds_per_comparison']:.1f} s for {r['tokens']} tokens")
    if r["peak_gpu_gib"] is not None:
        lines.append(f"  peak GPU memory {r['peak_gpu_gib']:.1f} GiB")
    lines.append(f"  model built in {r['build_s']:.0f} s; whole run {r['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.gpubench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="7b", choices=sorted(GEOMETRIES))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, help="cut both towers to this many layers (a CPU smoke run)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--eval-images", type=int, default=4,
                        help="evaluation throughput on this many images × 5 columns (0: skip the item)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu --layers 1 for a smoke run")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = bench(args.models, device, dtype, args.tokens, args.rounds, args.layers)
    if args.eval_images > 0:
        loaded = build_real_geometry(args.models, device, dtype, args.layers)
        five = ["prunehal", "kvsmooth", "vasparse", "vhr"]  # with vanilla: the five methods of the CHAIR table
        eval_throughput(loaded, 1, 2, five)  # warm-up
        result["evaluation"] = eval_throughput(loaded, args.eval_images, args.tokens, five)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["torch"] = torch.__version__
    print(format_table(result))
    if "evaluation" in result:
        e = result["evaluation"]
        print(f"  evaluation: {e['images']} images x {e['columns']} methods x {e['tokens']} tokens: "
              f"{e['images_per_s_halviz']:.3f} images/s (harness batches) vs {e['images_per_s_generate']:.3f} "
              f"images/s (batched generate, same decode count): {e['halviz_vs_generate_time']:.2f}x the time")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
