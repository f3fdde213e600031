"""The toy probe: does a model carry the mechanisms the app exists to show?

    python -m halviz.toy.recipe.probe [--model toy|PATH] [--json PATH] [--n 200] [--n-pair 170]
        [--methods prunehal,kvsmooth,vasparse,vhr] [--max-new-tokens 64] [--threads N]
        [--paper-defaults] [--quick] [--seed N]

Scenes come from the seed stream ``PROBE_SEED``, which nothing else uses: training draws from
small seeds, ``halviz.toy.recipe.tune`` from ``TUNING_SEED`` and ``halviz.eval`` from ``HELDOUT_SEED``.
Every caption is one greedy decode at batch 1 without padding through the project's engine
(``halviz.engine.decode.Decoder``, as ``halviz.eval`` runs it); attention is then read from a
teacher-forced pass with transformers' eager attention over the same tokens
(:mod:`halviz.toy.recipe.teacher_forcing`), which equals what the decode computed. One table:

- S1 sink: Sink^0.3 on BOS (Gu et al. 2025): share of heads whose mean attention to BOS over the
  caption queries exceeds 0.3; goal ≥ 0.25 over layers 2..L−1 and ≤ 0.05 over layers 0–1.
- S2 sink signatures (reported): BOS value norm / mean value norm of the other tokens, and BOS
  residual norm / median residual norm of the other tokens, per layer.
- S3 necessity: mean caption NLL (teacher-forced on the scenes' ground-truth captions) with the
  BOS column masked in every layer and the rest renormalised, minus without; goal ≥ 0.1 nat.
- D1 decay: Spearman ρ of the mean image attention mass (layers 2..L−1, head mean) against caption
  position, over positions that at least 20 % of the captions reach; goal ≤ −0.5.
- H1 prior: per planted pair, the share of trigger-without-partner captions naming the partner;
  goal ≥ 20 % and ≥ 5× its share on control scenes (neither present), for every pair.
- R1 recognition: CHAIR precision and recall on held-out-distribution scenes; goal ≥ 0.85 each.
  Reported beside it, as CHAIR cannot see them: the share of captions that end in a loop, their mean
  seq-rep-4, and mentions beyond the scenes' exact object counts (:mod:`halviz.hallucination.metrics`).
- M1 methods: per method at this model's defaults (:func:`halviz.methods.defaults.defaults_for`),
  partner insertion on the pooled broken-pair scenes against vanilla on the same scenes, relative
  change, recall change and McNemar's exact p; goal for at least one method: ≥ 25 % relative cut,
  ≤ 3 points of recall lost, p < 0.01. Each method's row also reports its looping captions and
  seq-rep-4: a method that cuts partner mentions by looping on one object is not a fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.hallucination import ChairResult, chair_metrics, extract_mentions
from halviz.methods import METHODS, build_stack
from halviz.methods.defaults import defaults_for, defaults_problems
from halviz.models import DEFAULT_PROMPT, ModelLoadError, load_model
from halviz.threads import add_threads_argument, use_threads
from halviz.toy import scenes as toy_scenes
from halviz.toy.captions import caption_for
from halviz.toy.recipe.sink_metrics import decay_curve, mcnemar_exact, relative_change, sink_rate, sink_rate_per_layer

PROBE_SEED = 2_000_029
PROBE_METHODS = ("prunehal", "kvsmooth", "vasparse", "vhr", "vcd", "var")
EARLY_LAYERS = (0, 1)  # S1's "no sink yet" layers; everything after them is a sink layer

GOALS = {
    "sink_late": 0.25, "sink_early": 0.05, "nll_rise": 0.1, "decay_rho": -0.5, "prior_rate": 0.2,
    "prior_ratio": 5.0, "recognition": 0.85, "m1_relative": -0.25, "m1_recall_points": 3.0, "m1_p": 0.01,
}


@dataclass(frozen=True)
class ProbeConfig:
    n: int = 200  # held-out-distribution scenes (S1–S3, D1, R1)
    n_pair: int = 170  # broken-pair and control scenes per planted pair; M1 pools the broken ones
    max_new_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    methods: tuple[str, ...] = PROBE_METHODS
    seed: int = PROBE_SEED
    min_position_share: float = 0.2  # D1 keeps positions reached by at least this share of captions


QUICK = ProbeConfig(n=20, n_pair=10)


@dataclass(frozen=True)
class Caption:
    text: str
    token_ids: list[int]
    steps: int
    seconds: float
    params: dict | None = None  # the knob values of the method instance that ran (None: vanilla)


def greedy_caption(loaded, image, prompt: str, methods, max_new_tokens: int) -> tuple[Caption, Decoder]:
    """One greedy decode through the engine at batch 1, no recording."""
    decoder = Decoder(loaded, image, prompt, methods, max_new_tokens, record=RecordOptions(enabled=False))
    t0 = time.perf_counter()
    trace = decoder.run_to_end()
    params = dict(methods[0].params) if methods else None
    return Caption(trace.caption, decoder.token_ids, trace.num_steps, time.perf_counter() - t0, params), decoder


def scene_chair(captions: Sequence[str], sample: Sequence) -> ChairResult:
    """CHAIR of captions of toy scenes, with each scene's exact object counts."""
    return chair_metrics(captions, [frozenset(s.names) for s in sample],
                         [{name: sum(o.name == name for o in s.objects) for name in s.names} for s in sample])


def names_partner(caption: str, partner: str) -> bool:
    return any(m.canonical == partner for m in extract_mentions(caption))


def caption_scenes(loaded, scenes: Sequence, method: str, knobs: dict, cfg: ProbeConfig) -> list[Caption]:
    """Greedy captions of ``scenes`` under one method with ``knobs`` ({knob: value}; the rest at the
    class defaults), a fresh method instance per decode."""
    return [greedy_caption(loaded, s.image, cfg.prompt, build_stack([method], {method: knobs}),
                           cfg.max_new_tokens)[0] for s in scenes]


def ground_truth_targets(tokenizer, caption: str) -> list[int]:
    """A ground-truth caption as the training targets it: ' ' + caption, then EOS."""
    return tokenizer(" " + caption, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


# ---- S1, S2, S3, D1, R1: the held-out-distribution scenes ------------------------------------

def measure_heldout(loaded, cfg: ProbeConfig) -> dict[str, Any]:
    from halviz.toy.recipe.teacher_forcing import TeacherForcer

    forcer = TeacherForcer(loaded)
    tokenizer = loaded.processor.tokenizer
    sample = toy_scenes.heldout(cfg.n, seed=cfg.seed)
    truth_rng = np.random.default_rng([cfg.seed, 3])
    num_layers = loaded.adapter.num_layers
    late = [l for l in range(num_layers) if l not in EARLY_LAYERS]
    bos_rows, masses, value_ratios, residual_ratios = [], [], [], []
    nll = {"truth": [0.0, 0.0, 0], "own": [0.0, 0.0, 0]}  # sum without mask, sum with BOS masked, tokens
    captions: list[Caption] = []
    for scene in sample:
        caption, decoder = greedy_caption(loaded, scene.image, cfg.prompt, [], cfg.max_new_tokens)
        captions.append(caption)
        positions = decoder.layout.positions
        own = forcer.run(decoder.inputs, positions, caption.token_ids)
        bos_rows.append(own.bos_attention)
        masses.append(own.image_mass[late].mean(axis=(0, 1)) if late else own.image_mass.mean(axis=(0, 1)))
        value_ratios.append(own.value_norm_ratio)
        residual_ratios.append(own.residual_norm_ratio)
        own_masked = forcer.run(decoder.inputs, positions, caption.token_ids, hide_bos=True)
        truth = ground_truth_targets(tokenizer, caption_for(scene, truth_rng))
        truth_plain = forcer.run(decoder.inputs, positions, truth)
        truth_masked = forcer.run(decoder.inputs, positions, truth, hide_bos=True)
        for key, plain, masked in (("own", own, own_masked), ("truth", truth_plain, truth_masked)):
            nll[key][0] -= float(plain.target_logprobs.sum())
            nll[key][1] -= float(masked.target_logprobs.sum())
            nll[key][2] += len(plain.target_logprobs)

    bos_share = np.concatenate(bos_rows, axis=-1).mean(-1)  # (L, H): pooled over every caption query
    sink_heads = bos_share > 0.3
    value_ratio = np.mean(value_ratios, axis=0)  # (L, H)
    residual_ratio = np.mean(residual_ratios, axis=0)  # (L,)
    curve = decay_curve(masses, int(np.ceil(cfg.min_position_share * len(masses))))
    chair = scene_chair([c.text for c in captions], sample)
    s1 = {"late_layers": late, "early_layers": list(EARLY_LAYERS),
          "sink_late": sink_rate(bos_share, late), "sink_early": sink_rate(bos_share, EARLY_LAYERS),
          "per_layer": sink_rate_per_layer(bos_share).tolist(),
          "bos_mean_per_layer": bos_share.mean(1).tolist(), "bos_max_per_layer": bos_share.max(1).tolist(),
          "bos_share": bos_share.tolist(), "queries": int(sum(r.shape[-1] for r in bos_rows))}
    s1["pass"] = bool(s1["sink_late"] >= GOALS["sink_late"] and s1["sink_early"] <= GOALS["sink_early"])
    s2 = {"value_norm_ratio_per_layer": value_ratio.mean(1).tolist(),
          "value_norm_ratio_late": float(value_ratio[late].mean()) if late else float("nan"),
          "value_norm_ratio_sink_heads": float(value_ratio[sink_heads].mean()) if sink_heads.any() else None,
          "residual_norm_ratio_per_layer": residual_ratio.tolist()}
    s3 = {}
    for key, (plain, masked, count) in nll.items():
        s3[key] = {"nll": plain / count, "nll_bos_masked": masked / count, "rise": (masked - plain) / count,
                   "tokens": count}
    s3["pass"] = bool(s3["truth"]["rise"] >= GOALS["nll_rise"])
    d1 = {"rho": curve.rho, "p_value": curve.p_value, "positions": curve.positions.tolist(),
          "mean_image_mass": curve.means.tolist(), "captions_per_position": curve.counts.tolist(),
          "layers": late}
    d1["pass"] = bool(curve.rho == curve.rho and curve.rho <= GOALS["decay_rho"])
    r1 = {"precision": chair.precision, "recall": chair.recall, "chair_s": chair.chair_s, "chair_i": chair.chair_i,
          "f1": chair.f1, "len": chair.len, "looping": chair.looping, "repetition": chair.repetition,
          "over_counted": chair.over_counted, "scenes": len(sample)}
    r1["pass"] = bool(chair.precision >= GOALS["recognition"] and chair.recall >= GOALS["recognition"])
    examples = [{"caption": c.text, "objects": sorted(s.names)} for c, s in list(zip(captions, sample))[:3]]
    return {"S1": s1, "S2": s2, "S3": s3, "D1": d1, "R1": r1, "examples": examples}


# ---- H1 and M1: the broken-pair and control scenes ----------------------------------------------

def measure_pairs(loaded, cfg: ProbeConfig, params: dict[str, dict]) -> dict[str, Any]:
    pairs = list(toy_scenes.WorldConfig().pairs)
    broken = {pair: toy_scenes.broken_pair(pair, cfg.n_pair, seed=cfg.seed) for pair in pairs}
    control = {pair: toy_scenes.control(pair, cfg.n_pair, seed=cfg.seed) for pair in pairs}
    pooled = [(s, pair) for pair in pairs for s in broken[pair]]

    def run(method: str) -> dict[str, Any]:
        captions = caption_scenes(loaded, [s for s, _ in pooled], method, params.get(method, {}), cfg)
        named = np.array([names_partner(c.text, pair[1]) for c, (_, pair) in zip(captions, pooled)])
        chair = scene_chair([c.text for c in captions], [s for s, _ in pooled])
        per_pair = {f"{t}->{p}": float(named[[q == (t, p) for _, q in pooled]].mean()) for t, p in pairs}
        return {"named": named, "params": captions[0].params, "rate": float(named.mean()), "per_pair": per_pair,
                "recall": chair.recall,
                "precision": chair.precision, "chair_i": chair.chair_i, "len": chair.len,
                "looping": chair.looping, "repetition": chair.repetition,
                "ms_per_token": 1e3 * sum(c.seconds for c in captions) / max(1, sum(c.steps for c in captions))}

    vanilla = run("vanilla")
    h1 = {}
    for trigger, partner in pairs:
        key = f"{trigger}->{partner}"
        base = caption_scenes(loaded, control[(trigger, partner)], "vanilla", {}, cfg)
        control_rate = float(np.mean([names_partner(c.text, partner) for c in base]))
        rate = vanilla["per_pair"][key]
        ratio = rate / control_rate if control_rate > 0 else (float("inf") if rate > 0 else float("nan"))
        h1[key] = {"broken_rate": rate, "control_rate": control_rate, "ratio": ratio, "scenes": cfg.n_pair,
                   "pass": bool(rate >= GOALS["prior_rate"] and ratio >= GOALS["prior_ratio"])}
    h1_pass = all(row["pass"] for row in h1.values())

    m1: dict[str, Any] = {"vanilla": {k: v for k, v in vanilla.items() if k != "named"}, "scenes": len(pooled)}
    for method in cfg.methods:
        row = run(method)
        test = mcnemar_exact(vanilla["named"], row["named"])
        rel = relative_change(vanilla["rate"], row["rate"])
        recall_points = 100 * (row["recall"] - vanilla["recall"])
        m1[method] = {k: v for k, v in row.items() if k != "named"}
        m1[method].update({
            "relative_change": rel, "recall_change_points": recall_points,
            "only_vanilla_names_partner": test.only_before, "only_method_names_partner": test.only_after,
            "mcnemar_p": test.p_value,
            "meets_goal": bool(rel == rel and rel <= GOALS["m1_relative"]
                               and recall_points >= -GOALS["m1_recall_points"] and test.p_value < GOALS["m1_p"]),
        })
    m1["goal_met_by"] = [m for m in cfg.methods if m1[m]["meets_goal"]]
    m1["pass"] = bool(m1["goal_met_by"])
    return {"H1": {"pairs": h1, "pass": h1_pass}, "M1": m1}


def run_probe(loaded, cfg: ProbeConfig, params: dict[str, dict]) -> dict[str, Any]:
    t0 = time.perf_counter()
    report = measure_heldout(loaded, cfg)
    t1 = time.perf_counter()
    report.update(measure_pairs(loaded, cfg, params))
    report["seconds"] = {"heldout": t1 - t0, "pairs_and_methods": time.perf_counter() - t1,
                         "total": time.perf_counter() - t0}
    return report


# ---- the table -----------------------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "reported" if ok is None else ("PASS" if ok else "FAIL")


def _floats(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return " ".join(fmt.format(v) for v in values)


def format_table(report: dict[str, Any]) -> str:
    PAPER_KNOBS = {name: {k.name: k.default for k in cls.knobs} for name, cls in METHODS.items()}
    rows: list[tuple[str, str, str, str]] = []
    s1, s2, s3, d1, h1, r1, m1 = (report[k] for k in ("S1", "S2", "S3", "D1", "H1", "R1", "M1"))
    late = f"{s1['late_layers'][0]}..{s1['late_layers'][-1]}" if s1["late_layers"] else "-"
    rows.append(("S1 sink", f"Sink^0.3 layers {late}: {s1['sink_late']:.3f}; layers 0-1: {s1['sink_early']:.3f}",
                 "≥ 0.25; ≤ 0.05", _verdict(s1["pass"])))
    rows.append(("   per layer", "Sink^0.3 " + _floats(s1["per_layer"]), "", ""))
    rows.append(("   BOS attention", "head mean " + _floats(s1["bos_mean_per_layer"], "{:.3f}")
                 + "; max " + _floats(s1["bos_max_per_layer"], "{:.3f}"), "", ""))
    sink_heads = s2["value_norm_ratio_sink_heads"]
    rows.append(("S2 value norm", f"BOS/mean, layers {late}: {s2['value_norm_ratio_late']:.2f}; sink heads: "
                 + ("none" if sink_heads is None else f"{sink_heads:.2f}")
                 + "; per layer " + _floats(s2["value_norm_ratio_per_layer"]), "", _verdict(None)))
    rows.append(("S2 residual norm", "BOS/median per layer " + _floats(s2["residual_norm_ratio_per_layer"]),
                 "", _verdict(None)))
    t, o = s3["truth"], s3["own"]
    rows.append(("S3 necessity", f"NLL {t['nll']:.3f} -> {t['nll_bos_masked']:.3f} nat/token with BOS masked "
                 f"({t['rise']:+.3f}); own captions {o['rise']:+.3f}", "rise ≥ 0.1", _verdict(s3["pass"])))
    pos = d1["positions"]
    span = f"positions {pos[0]}..{pos[-1]}" if pos else "no positions"
    rows.append(("D1 decay", f"Spearman rho {d1['rho']:+.3f} ({span}; p = {d1['p_value']:.2g})",
                 "rho ≤ -0.5", _verdict(d1["pass"])))
    for key, row in h1["pairs"].items():
        ratio = "inf" if row["ratio"] == float("inf") else f"{row['ratio']:.1f}x"
        rows.append((f"H1 prior {key}", f"named {100 * row['broken_rate']:.1f}% vs control "
                     f"{100 * row['control_rate']:.1f}% ({ratio}), n = {row['scenes']} each",
                     "≥ 20%, ≥ 5x", _verdict(row["pass"])))
    rows.append(("R1 recognition", f"precision {r1['precision']:.3f}, recall {r1['recall']:.3f} "
                 f"(n = {r1['scenes']})", "≥ 0.85 each", _verdict(r1["pass"])))
    over = "-" if r1.get("over_counted") is None else f"{100 * r1['over_counted']:.1f}%"
    rows.append(("   beside CHAIR", f"looping {100 * r1.get('looping', 0.0):.1f}% of captions, "
                 f"rep-4 {100 * r1.get('repetition', 0.0):.1f}%, over-counted mentions {over}", "", ""))
    van = m1["vanilla"]
    rows.append(("M1 vanilla", f"partner named {100 * van['rate']:.1f}%, recall {100 * van['recall']:.1f}, "
                 f"looping {100 * van.get('looping', 0.0):.1f}% (n = {m1['scenes']} broken-pair scenes)", "", ""))
    for method in (k for k in m1 if isinstance(m1[k], dict) and "mcnemar_p" in m1[k]):
        row = m1[method]
        rel = "n/a" if row["relative_change"] != row["relative_change"] else f"{100 * row['relative_change']:+.1f}%"
        changed = {k: v for k, v in (row["params"] or {}).items()
                   if k in PAPER_KNOBS.get(method, {}) and PAPER_KNOBS[method][k] != v}
        at = ", ".join(f"{k}={v}" for k, v in changed.items()) or "paper defaults"
        rows.append((f"M1 {method}", f"[{at}] {100 * row['rate']:.1f}% ({rel} rel), recall {row['recall_change_points']:+.1f} pt, "
                     f"McNemar p = {row['mcnemar_p']:.2g} ({row['only_vanilla_names_partner']}/"
                     f"{row['only_method_names_partner']} discordant), looping {100 * row.get('looping', 0.0):.1f}%, "
                     f"rep-4 {100 * row.get('repetition', 0.0):.1f}%",
                     "≤ -25%, ≥ -3 pt, p < 0.01", "meets goal" if row["meets_goal"] else "short"))
    rows.append(("M1 goal", "met by " + (", ".join(m1["goal_met_by"]) or "no method"), "≥ 1 method",
                 _verdict(m1["pass"])))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    head = ("criterion", "figure", "goal", "result")
    lines = [f"{head[0]:<{width[0]}}  {head[1]:<{width[1]}}  {head[2]:<{width[2]}}  {head[3]}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}".rstrip() for a, b, c, d in rows]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if v != v else ("inf" if v == float("inf") else v)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def main(argv: list[str] | None = None) -> int:
    from halviz.chair import InputError, write_json_atomically

    parser = argparse.ArgumentParser(prog="python -m halviz.toy.recipe.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="'toy' or a local toy-model folder")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--n", type=int, help=f"held-out-distribution scenes (S1-S3, D1, R1; default {ProbeConfig.n})")
    parser.add_argument("--n-pair", type=int, help="broken-pair and control scenes per planted pair; M1 pools the "
                        f"broken ones (default {ProbeConfig.n_pair})")
    parser.add_argument("--seed", type=int, help=f"scene seed stream (default PROBE_SEED = {PROBE_SEED}); another "
                        "seed is a validation set for choosing recipe settings without looking at the probe sets")
    parser.add_argument("--methods", default=",".join(PROBE_METHODS))
    parser.add_argument("--max-new-tokens", type=int, default=ProbeConfig.max_new_tokens)
    add_threads_argument(parser)
    parser.add_argument("--paper-defaults", action="store_true",
                        help="run the methods at their papers' defaults, not this model's")
    parser.add_argument("--quick", action="store_true", help=f"small sets for development (n={QUICK.n}, "
                        f"n-pair={QUICK.n_pair}) unless --n/--n-pair say otherwise")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS or m == "vanilla"]
    if unknown:
        print(f"halviz.toy.recipe.probe: unknown method {', '.join(unknown)}; known: "
              f"{', '.join(m for m in METHODS if m != 'vanilla')}", file=sys.stderr)
        return 2
    cfg = replace(QUICK if args.quick else ProbeConfig(), methods=methods, max_new_tokens=args.max_new_tokens)
    if args.n is not None:
        cfg = replace(cfg, n=args.n)
    if args.n_pair is not None:
        cfg = replace(cfg, n_pair=args.n_pair)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if cfg.n < 1 or cfg.n_pair < 1 or not 1 <= cfg.max_new_tokens <= 1024:
        print("halviz.toy.recipe.probe: --n and --n-pair must be ≥ 1 and --max-new-tokens in 1..1024", file=sys.stderr)
        return 2
    use_threads(args.threads)
    try:
        if args.json:  # fail now, not after a quarter of an hour of decoding
            args.json.parent.mkdir(parents=True, exist_ok=True)
        loaded = load_model(args.model)
        params = {} if args.paper_defaults else defaults_for(loaded.source)
        problems = [] if args.paper_defaults else defaults_problems(loaded.source)
    except OSError as exc:
        print(f"halviz.toy.recipe.probe: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (ModelLoadError, ValueError) as exc:
        print(f"halviz.toy.recipe.probe: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"note: method defaults: {problem}", file=sys.stderr)
    report = run_probe(loaded, cfg, params)
    report = {"config": {**asdict(cfg), "model": args.model, "source": loaded.source, "threads": torch.get_num_threads(),
                         "defaults": "paper" if args.paper_defaults else ("model" if params else "paper (none stored)"),
                         "defaults_problems": problems, "command": "python -m halviz.toy.recipe.probe "
                         + " ".join(argv if argv is not None else sys.argv[1:])}, **report}
    print(f"toy probe of {loaded.source}: {cfg.n} held-out-distribution scenes, {cfg.n_pair} broken-pair and "
          f"control scenes per pair, seed {cfg.seed}, max_new_tokens {cfg.max_new_tokens}, prompt {cfg.prompt!r}, "
          f"method defaults: {report['config']['defaults']}")
    print(format_table(report))
    seconds = report["seconds"]
    print(f"took {seconds['total']:.0f} s ({seconds['heldout']:.0f} s held-out, {seconds['pairs_and_methods']:.0f} s "
          f"pairs and methods) on {torch.get_num_threads()} thread(s)")
    if args.json:
        try:
            write_json_atomically(args.json, _jsonable(report))
        except InputError as exc:
            print(f"halviz.toy.recipe.probe: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
