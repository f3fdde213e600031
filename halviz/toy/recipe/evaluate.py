"""Everything the README says about the toy model, measured in one run.

    python -m halviz.toy.recipe.evaluate [--model toy] [--n 200] [--max-new-tokens 64] [--methods vanilla,...] [--json PATH]

Prints: caption precision/recall and CHAIR on held-out scenes, with what CHAIR cannot see (looping
captions, seq-rep-4, mentions beyond a scene's object counts); CHAIR and the partner rate on
each broken-pair set (trigger present, partner absent) and the partner rate on the matching
control set (neither present); hallucination rate by mention position; the attention share of
BOS, system text, image and prompt per decoder layer for the last prompt token (from the
engine's records, which tests check against eager attention); decode speed; and, with
``--methods``, each method's CHAIR and partner rate on the broken-pair sets (for the held-out
comparison of methods use ``python -m halviz.eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from halviz.engine.rows import SEGMENTS
from halviz.eval import evaluate, format_table, timed_decode, toy_sample
from halviz.hallucination import chair_metrics, extract_mentions
from halviz.models import DEFAULT_PROMPT, load_model
from halviz.threads import add_threads_argument, use_threads
from halviz.toy.scenes import PRIOR_PAIRS


def vanilla_report(loaded, n: int, max_new_tokens: int, prompt: str) -> dict:
    sample, _ = toy_sample("heldout", n, seed=0)
    captions, truths, counts, shares, tokens, seconds = [], [], [], [], 0, 0.0
    for _, image, objects, known in sample:
        trace, spent = timed_decode(loaded, image, prompt, [], max_new_tokens, record=True)
        seconds += spent
        tokens += trace.num_steps
        captions.append(trace.caption)
        truths.append(objects)
        counts.append(known)
        shares.append(trace.arrays["segment_share"][0])  # step 0: the last prompt token's query
    chair = chair_metrics(captions, truths, counts)
    by_position: dict[int, list[int]] = defaultdict(list)
    for caption, truth in zip(captions, truths):
        for i, mention in enumerate(extract_mentions(caption)):
            by_position[i + 1].append(int(mention.canonical not in truth))
    share = np.mean(shares, axis=0)  # (L, segments)
    return {
        "heldout": {"precision": chair.precision, "recall": chair.recall, "chair_s": chair.chair_s,
                    "chair_i": chair.chair_i, "f1": chair.f1, "len": chair.len, "looping": chair.looping,
                    "repetition": chair.repetition, "over_counted": chair.over_counted},
        "by_position": {str(p): {"rate": float(np.mean(v)), "mentions": len(v)} for p, v in sorted(by_position.items())},
        "attention_share_last_prompt_token": {
            seg: [round(float(x), 4) for x in share[:, i]] for i, seg in enumerate(SEGMENTS) if seg != "generated"},
        "tokens_per_s": tokens / seconds,
        "examples": [{"caption": c, "objects": sorted(t)} for c, t in list(zip(captions, truths))[:5]],
    }


def pair_report(loaded, n: int, max_new_tokens: int, prompt: str, methods: list[str]) -> dict:
    rows = {}
    for trigger, partner in PRIOR_PAIRS:
        key = f"{trigger}->{partner}"
        broken, _ = toy_sample(f"broken:{trigger},{partner}", n, seed=0)
        control, _ = toy_sample(f"control:{trigger},{partner}", n, seed=0)
        rows[key] = {
            "broken": evaluate(loaded, broken, methods, {}, max_new_tokens, prompt, partner, progress=False),
            "control": evaluate(loaded, control, ["vanilla"], {}, max_new_tokens, prompt, partner,
                                progress=False)["vanilla"],
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.toy.recipe.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes (broken-pair and control sets: n/2 each)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--methods", default="vanilla", help="methods compared on held-out and broken-pair sets")
    parser.add_argument("--json", type=Path)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    loaded = load_model(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    prompt = DEFAULT_PROMPT
    report = {"config": {"model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens, "prompt": prompt}}
    report["vanilla"] = vanilla_report(loaded, args.n, args.max_new_tokens, prompt)
    v = report["vanilla"]
    print(f"toy model {loaded.source}: n={args.n} held-out scenes, max_new_tokens={args.max_new_tokens}, prompt={prompt!r}")
    h = v["heldout"]
    print(f"held-out: precision {h['precision']:.3f}  recall {h['recall']:.3f}  CHAIR_s {h['chair_s']:.3f}  "
          f"CHAIR_i {h['chair_i']:.3f}  Len {h['len']:.1f} words  looping {h['looping']:.3f}  "
          f"rep-4 {h['repetition']:.3f}  over-counted {h['over_counted']:.3f}  "
          f"speed {v['tokens_per_s']:.0f} tokens/s (traced)")
    print("hallucination rate by mention position: " + "  ".join(
        f"#{p}: {r['rate']:.3f} (n={r['mentions']})" for p, r in v["by_position"].items()))
    print("attention share of the last prompt token's query, per layer:")
    for seg, values in v["attention_share_last_prompt_token"].items():
        print(f"  {seg:<8}" + " ".join(f"{x:6.3f}" for x in values))
    report["pairs"] = pair_report(loaded, max(1, args.n // 2), args.max_new_tokens, prompt, methods)
    for key, row in report["pairs"].items():
        print(f"\nbroken pair {key}: partner named in {100 * row['broken'][methods[0]]['partner_rate']:.1f}% "
              f"(control, neither present: {100 * row['control']['partner_rate']:.1f}%)")
        print(format_table(row["broken"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
