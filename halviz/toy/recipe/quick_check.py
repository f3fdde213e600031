"""A quick look at a trained toy model on a validation stream of its own (seed 5_000_011: not the
held-out, probe or tuning seeds), to steer the recipe; the shipped figures come from
``python -m halviz.toy.recipe.probe``.

    python -m halviz.toy.recipe.quick_check --model DIR [--n 60]
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from halviz.hallucination import chair_metrics, extract_mentions
from halviz.toy import scenes
from halviz.toy.captions import DEFAULT_PROMPT

VALIDATION_SEED = 5_000_011


def captions(model, processor, images, max_new_tokens: int = 64, batch: int = 16) -> list[str]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        inputs = processor(text=[text] * len(chunk), images=chunk, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out += processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def partner_rate(texts: list[str], partner: str) -> float:
    return sum(any(m.canonical == partner for m in extract_mentions(t)) for t in texts) / max(1, len(texts))


def check(model, processor, n: int = 60) -> dict:
    model.eval()
    held = scenes.heldout(n, seed=VALIDATION_SEED)
    caps = captions(model, processor, [s.image for s in held])
    chair = chair_metrics(caps, [frozenset(s.names) for s in held])
    report = {"precision": round(chair.precision, 3), "recall": round(chair.recall, 3), "example": caps[0],
              "example_truth": sorted(held[0].names), "pairs": {}}
    for pair in scenes.PRIOR_PAIRS:
        broken = captions(model, processor, [s.image for s in scenes.broken_pair(pair, n // 2, seed=VALIDATION_SEED)])
        ctrl = captions(model, processor, [s.image for s in scenes.control(pair, n // 2, seed=VALIDATION_SEED)])
        report["pairs"]["->".join(pair)] = {"broken": round(partner_rate(broken, pair[1]), 3),
                                            "control": round(partner_rate(ctrl, pair[1]), 3)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.toy.recipe.quick_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args(argv)
    model = LlavaForConditionalGeneration.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    print(json.dumps(check(model, processor, args.n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
