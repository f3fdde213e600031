"""Train the toy LLaVA from scratch, seeded.

    python -m halviz.toy.train --out assets/toy-llava [--seed 0] [--threads 2] [--text-steps 400] [--image-steps 900]

Stage 1 trains the decoder alone on text-only captions (the prompt without the image), so the
language prior — which objects tend to follow which — is learnt before the model can look.
Stage 2 trains the whole model on image–caption pairs. Loss only on the caption tokens. Scenes
are drawn on the fly from one seeded stream that the held-out sets never use. Fixed step counts
(not a time budget) keep the recipe reproducible; a CUDA device is used when present.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from halviz.toy.captions import SYSTEM_LINE, TRAIN_PROMPTS, caption_for
from halviz.models.tokenizer import IMAGE_TOKEN, train_tokenizer
from halviz.toy.model import ToyModelConfig, build_model, build_processor
from halviz.toy.scenes import generate_scene


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    text_steps: int = 400
    image_steps: int = 900
    text_batch: int = 64
    image_batch: int = 32
    text_lr: float = 2e-3
    image_lr: float = 1e-3
    warmup: int = 50
    tokenizer_scenes: int = 2000


def _messages(prompt: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


class Batcher:
    """Turns scenes into padded (input_ids, attention_mask, labels[, pixel_values]) batches."""

    def __init__(self, processor, num_image_tokens: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prefix: dict[tuple[str, bool], list[int]] = {}
        for prompt in TRAIN_PROMPTS:
            for with_image in (True, False):
                text = processor.apply_chat_template(_messages(prompt, with_image), add_generation_prompt=True)
                text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens)  # the processor's expansion
                self.prefix[prompt, with_image] = self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, scenes, captions, prompts, with_image: bool, device) -> dict[str, torch.Tensor]:
        rows, label_rows = [], []
        for caption, prompt in zip(captions, prompts):
            prefix = self.prefix[prompt, with_image]
            target = self.tokenizer(" " + caption, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            rows.append(prefix + target)
            label_rows.append([-100] * len(prefix) + target)
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
        if with_image:
            pixels = self.processor.image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"]
            batch["pixel_values"] = pixels.to(device)
        return batch


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _draw(rng: np.random.Generator, n: int):
    scenes = [generate_scene(rng) for _ in range(n)]
    captions = [caption_for(s, rng) for s in scenes]
    prompts = [TRAIN_PROMPTS[int(i)] for i in rng.integers(0, len(TRAIN_PROMPTS), n)]
    return scenes, captions, prompts


def train(out: Path, cfg: TrainConfig = TrainConfig(), model_cfg: ToyModelConfig = ToyModelConfig(),
          threads: int | None = None, log_every: int = 25) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng([cfg.seed, 7])  # held-out sets use other streams (see scenes.heldout)
    corpus_rng = np.random.default_rng([cfg.seed, 8])
    corpus = [caption_for(generate_scene(corpus_rng), corpus_rng) for _ in range(cfg.tokenizer_scenes)]
    corpus += list(TRAIN_PROMPTS) + [SYSTEM_LINE, "USER: ASSISTANT:"]
    tokenizer = train_tokenizer(corpus, model_cfg.vocab_size)
    processor = build_processor(tokenizer, model_cfg)
    model = build_model(tokenizer, model_cfg).to(device)
    num_image_tokens = (96 // model_cfg.patch_size) ** 2
    batcher = Batcher(processor, num_image_tokens)
    history: list[dict] = []
    t_start = time.perf_counter()

    def run_stage(name: str, steps: int, batch_size: int, lr: float, with_image: bool, params) -> None:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
        model.train()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, lr, cfg.warmup)
            batch = batcher(*_draw(rng, batch_size), with_image=with_image, device=device)
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                row = {"stage": name, "step": step, "loss": round(loss.item(), 4),
                       "elapsed_s": round(time.perf_counter() - t_start, 1)}
                history.append(row)
                print(json.dumps(row), flush=True)

    decoder_params = list(model.model.language_model.parameters())  # lm_head is tied to the embeddings
    run_stage("text", cfg.text_steps, cfg.text_batch, cfg.text_lr, False, decoder_params)
    run_stage("image", cfg.image_steps, cfg.image_batch, cfg.image_lr, True, list(model.parameters()))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"train_config": cfg.__dict__, "model_config": model_cfg.as_dict(), "device": str(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "seconds": round(time.perf_counter() - t_start, 1), "history": history,
            "command": f"python -m halviz.toy.train --out {out} --seed {cfg.seed} --text-steps {cfg.text_steps} "
                       f"--image-steps {cfg.image_steps} --threads {threads or torch.get_num_threads()}"}
    (out / "training_info.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.toy.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/toy-llava"))
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--text-steps", type=int, default=TrainConfig.text_steps)
    parser.add_argument("--image-steps", type=int, default=TrainConfig.image_steps)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    info = train(args.out, TrainConfig(seed=args.seed, text_steps=args.text_steps, image_steps=args.image_steps),
                 threads=args.threads)
    print(f"saved to {args.out} ({info['params_m']} M params) in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
