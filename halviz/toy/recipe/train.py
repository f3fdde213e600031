"""Train the toy LLaVA from scratch with the seeded, staged recipe of the second edition.

    python -m halviz.toy.recipe.train --out halviz/assets/toy-llava --ckpt CKPT_DIR [--resume] [--threads 2] [--seed 0]

Stages (each checkpointed under ``--ckpt``; ``--resume`` continues from the last checkpoint):

1. ``vision``: the CLIP tower alone, per-patch classification on decorrelated scenes; then frozen.
2. ``text``: the decoder alone on packed ``BOS cap EOS cap EOS …`` rows (BOS the only token at a
   fixed position), high learning rate and weight decay, many small steps: where the BOS sink grows.
3. ``align``: the projector only, on image–caption pairs.
4. ``multi``: projector and decoder on image–caption pairs in the chat layout; vision frozen.

With ``--designed-sink`` (the default) the decoder carries a fixed BOS sink from the first step
(``halviz.toy.designed_sink``): no sink emerged in this short training, so it is built in and named.

Scenes and captions come from seed streams ``[seed, k]``, never the held-out, probe or tuning seeds.
The in-loop sink probe (``halviz.toy.recipe.sink_probe``) runs every ``probe_every`` steps on a fixed batch
and goes into the training history. Fixed step counts keep the recipe reproducible; a CUDA device
is used when present.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from halviz.models.tokenizer import IMAGE_TOKEN, train_tokenizer
from halviz.threads import add_threads_argument, use_threads
from halviz.toy.recipe import checkpoint
from halviz.toy.captions import TRAIN_PROMPTS, GrammarConfig, caption_for
from halviz.toy.designed_sink import DesignedSink, impose
from halviz.toy.model import ToyModelConfig, build_model, build_processor
from halviz.toy.recipe.packing import pack_rows
from halviz.toy.scenes import WorldConfig, generate_scene
from halviz.toy.recipe.sink_probe import bos_attention, summarise
from halviz.toy.recipe.vision_pretrain import PatchHead, patch_metrics, vision_batch

STAGES = ("vision", "text", "align", "multi")
# Seed-stream tags: [seed, tag]. Probe (2_000_029), tuning (3_000_017) and held-out (1_000_003)
# seeds are plain integers far from these small pairs.
STREAM = {"tokenizer": 8, "pool": 9, "vision": 11, "text": 12, "align": 13, "multi": 14,
          "probe_text": 21, "probe_image": 22}


# Settings every stage depends on (the rest are named after their stage: vision_*, text_*, …).
SHARED_FIELDS = ("seed", "tokenizer_scenes", "caption_pool", "chat_rate", "null_bos_sink", "count_sentence", "warmup")  # text_packed: text_*


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    vision_steps: int = 300
    vision_batch: int = 32
    vision_lr: float = 2e-3
    text_steps: int = 1500
    text_batch: int = 24
    text_len: int = 128  # packed rows only
    # One caption per row (BOS caption EOS, padded) rather than packed: with packing the heads sink
    # on the EOS that opens each caption, a local start marker (measured: 0.2–0.57 of some heads'
    # attention on EOS, none on BOS, after 2,000 steps); with one caption per row BOS is that marker.
    text_packed: bool = False
    text_lr: float = 3e-3
    text_wd: float = 0.3
    chat_rate: float = 0.1  # text rows that open with the chat layout (no image)
    # Text rows with a run of random tokens between BOS and the caption (labels masked), as long as
    # the image block they stand in for: a head with nothing to read in that run must put its
    # attention somewhere, and BOS is the only token with a fixed content (Gu et al. 2025, §4–5).
    text_noise_rate: float = 0.0
    text_noise_len: int = 144
    align_steps: int = 200
    align_batch: int = 16
    align_lr: float = 2e-3
    multi_steps: int = 1200
    multi_batch: int = 8
    multi_lr: float = 1e-3
    multi_wd: float = 0.1
    # The multimodal stage's world: how often a partner beside its trigger is drawn small and
    # faint, and how faint (share of the class colour). Fainter partners that the caption still
    # names are what teach the decoder to name a partner on the trigger's word alone.
    multi_faint_rate: float = 0.5
    # From 0: the faintest partners are invisible yet named, as annotators name what a scene implies
    # (at 0.08 the cup→spoon prior did not form: 0.6 % on the probe, issue 10).
    multi_faint_min: float = 0.0
    multi_faint_max: float = 0.45
    # Keeping what the text stage grew: text-only rows (one caption per row, BOS first) trained
    # beside every multimodal batch, and a learning-rate factor on q_proj/k_proj of the decoder
    # layers from `multi_qk_from` on (0 freezes them); projector and MLPs stay at `multi_lr`.
    multi_rehearsal: int = 0
    multi_qk_lr_scale: float = 1.0
    multi_qk_from: int = 2
    warmup: int = 100
    probe_every: int = 250
    ckpt_every: int = 500
    tokenizer_scenes: int = 2000
    caption_pool: int = 20000  # text stage: packed rows are drawn from this many tokenised captions
    # Fallback, off by default and named wherever the model is shown: BOS's embedding is fixed at
    # zero, so BOS carries a zero key and value in every layer — a designed sink slot (StreamingLLM's
    # sink token, §3.3, made inert, as in "softmax off by one") that heads learn to use as a no-op.
    null_bos_sink: bool = False
    # The shipped fallback, named wherever the model is shown: a fixed BOS sink built into the decoder
    # from the start (halviz/toy/designed_sink.py), since none emerged in training (issue 10).
    designed_sink: bool = True
    # 12, not the module's 10: with the count sentence, at 10 masking BOS cost 0.07 nat (S3 fails) and
    # at 14 BOS took 0.999 of every late head, leaving the image nothing (validation seed, issue 10).
    designed_sink_logit: float = 12.0
    designed_sink_first_layer: int = DesignedSink.first_layer  # the sink's first layer (S1 asks for none in 0–1)
    # Sink heads per layer from the first sink layer on (DesignedSink.heads; "" = every head). "3": the
    # first 3 of layer 2's 6 heads, every head of layers 3-5 (fifth edition). With every head of layer 2
    # a sink head no early layer read the image freely and image attention did not fall along the caption
    # (probe D1 ρ −0.01 on the validation seed); with no sink in layer 2 masking BOS cost 0.04 nat (S3
    # fails). "3" gave ρ −0.56 and +1.96 nat, "3,3" ρ −0.58 and +0.06 nat (validation seed, 200 scenes).
    designed_sink_heads: str = "3"
    # Captions close with "N things in all ." (halviz/toy/captions.py): tokens the decoder can read
    # off its own words, meant to let image attention fall towards a caption's end (probe D1: ρ −0.44 at
    # logit 10 on the validation seed, −0.01 at 12).
    count_sentence: bool = True

    def __post_init__(self):
        if self.designed_sink and self.null_bos_sink:  # both would own BOS's embedding row
            raise ValueError("choose one sink fallback: --no-designed-sink with --null-bos-sink")
        self.sink_head_counts()  # refuse a malformed --designed-sink-heads before any training

    def grammar(self) -> GrammarConfig:
        return GrammarConfig(count_sentence=self.count_sentence)

    def sink_head_counts(self) -> tuple[int, ...]:
        parts = [h.strip() for h in self.designed_sink_heads.split(",") if h.strip()]
        if not all(h.isdigit() for h in parts):
            raise ValueError("--designed-sink-heads takes head counts such as 3,3,6 "
                             f"(got {self.designed_sink_heads!r})")
        return tuple(int(h) for h in parts)

    def sink(self) -> DesignedSink | None:
        return (DesignedSink(logit=self.designed_sink_logit, first_layer=self.designed_sink_first_layer,
                             heads=self.sink_head_counts()) if self.designed_sink else None)

    def steps(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")


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

    def target(self, caption: str) -> list[int]:
        return self.tokenizer(" " + caption, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def __call__(self, scenes, captions, prompts, with_image: bool, device) -> dict[str, torch.Tensor]:
        rows, label_rows = [], []
        for caption, prompt in zip(captions, prompts):
            prefix = self.prefix[prompt, with_image]
            target = self.target(caption)
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
    """Linear warm-up, then cosine to 10 % of the peak (the sink needs the rate to stay high)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _draw(rng: np.random.Generator, n: int, world: WorldConfig = WorldConfig(),
          grammar: GrammarConfig = GrammarConfig()):
    scenes = [generate_scene(rng, world) for _ in range(n)]
    captions = [caption_for(s, rng, grammar) for s in scenes]
    prompts = [TRAIN_PROMPTS[int(i)] for i in rng.integers(0, len(TRAIN_PROMPTS), n)]
    return scenes, captions, prompts


def _optimizer(params: list[torch.nn.Parameter], lr: float, wd: float,
               scaled: list[torch.nn.Parameter] = (), scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); no decay on norms and biases. Parameters in `scaled` get their own group
    whose learning rate is `scale` times the schedule's (its ``lr_scale``)."""
    slow = {id(p) for p in scaled}
    decay = [p for p in params if p.ndim >= 2 and id(p) not in slow]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": wd, "lr_scale": 1.0},
              {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0}]
    if slow:
        groups.append({"params": list(scaled), "weight_decay": wd, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


class Recipe:
    """The four stages over one model, with checkpoint/resume of every stage."""

    def __init__(self, cfg: TrainConfig, model_cfg: ToyModelConfig, ckpt_dir: Path, device: torch.device,
                 log_every: int = 50):
        self.cfg, self.model_cfg, self.ckpt_dir, self.device, self.log_every = cfg, model_cfg, ckpt_dir, device, log_every
        self.history: list[dict] = []
        self.stage_seconds: dict[str, float] = {}
        self.elapsed_before = 0.0
        self.t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.tokenizer = self._tokenizer()
        self.processor = build_processor(self.tokenizer, model_cfg)
        self.model = build_model(self.tokenizer, model_cfg, attention_bias=cfg.designed_sink).to(device)
        self._impose_sink()
        self.grid = (96 // model_cfg.patch_size) ** 2
        self.batcher = Batcher(self.processor, self.grid)
        self.vision_head = PatchHead(model_cfg.vision_hidden).to(device)
        if cfg.null_bos_sink:
            self._fix_bos_at_zero()

    def _impose_sink(self) -> None:
        if self.cfg.designed_sink:
            impose(self.model, self.tokenizer.bos_token_id, self.cfg.sink())

    def _fix_bos_at_zero(self) -> None:
        """Zero BOS's embedding row and its gradient, so Adam never moves it (tied lm_head row too)."""
        emb = self.model.get_input_embeddings().weight
        bos = self.tokenizer.bos_token_id
        with torch.no_grad():
            emb[bos] = 0.0
        emb.register_hook(lambda grad: grad.index_fill(0, torch.tensor([bos], device=grad.device), 0.0))

    # ---- data ----
    def _tokenizer(self):
        rng = np.random.default_rng([self.cfg.seed, STREAM["tokenizer"]])
        grammar = self.cfg.grammar()
        corpus = [caption_for(generate_scene(rng), rng, grammar) for _ in range(self.cfg.tokenizer_scenes)]
        corpus += list(TRAIN_PROMPTS) + ["USER: ASSISTANT:"]
        return train_tokenizer(corpus, self.model_cfg.vocab_size)

    def _caption_pool(self) -> list[list[int]]:
        rng = np.random.default_rng([self.cfg.seed, STREAM["pool"]])
        grammar = self.cfg.grammar()
        return [self.batcher.target(caption_for(generate_scene(rng), rng, grammar))[:-1]
                for _ in range(self.cfg.caption_pool)]

    def _chat_row(self, rng: np.random.Generator, pool: list[list[int]]) -> list[int]:
        prompt = TRAIN_PROMPTS[int(rng.integers(len(TRAIN_PROMPTS)))]
        prefix = self.batcher.prefix[prompt, False][1:]  # drop BOS: pack_rows puts it first
        return prefix + pool[int(rng.integers(len(pool)))]

    def _noise(self, rng: np.random.Generator) -> list[int]:
        """A run of random non-special tokens, 1..text_noise_len long (the image block's stand-in)."""
        tok, n = self.tokenizer, int(rng.integers(1, self.cfg.text_noise_len + 1))
        special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(IMAGE_TOKEN)}
        allowed = [i for i in range(len(tok)) if i not in special]
        return [allowed[int(i)] for i in rng.integers(0, len(allowed), n)]

    def _text_batch(self, rng: np.random.Generator, pool: list[list[int]], n: int,
                    packed: bool | None = None, noise: bool = True) -> dict[str, torch.Tensor]:
        """Text rows with labels (pads and noise masked); a `chat_rate` share opens with the chat layout."""
        tok = self.tokenizer
        if self.cfg.text_packed if packed is None else packed:
            ids = pack_rows(pool, rng, n, self.cfg.text_len, tok.bos_token_id, tok.eos_token_id)
            for b in range(n):
                if rng.random() < self.cfg.chat_rate:
                    row = [tok.bos_token_id] + self._chat_row(rng, pool) + [tok.eos_token_id]
                    row = row[:self.cfg.text_len]
                    ids[b, :len(row)] = torch.tensor(row)
            return {"input_ids": ids, "labels": ids.clone()}
        rows, masked = [], []
        for _ in range(n):
            body = self._chat_row(rng, pool) if rng.random() < self.cfg.chat_rate else pool[int(rng.integers(len(pool)))]
            noisy = noise and self.cfg.text_noise_rate and rng.random() < self.cfg.text_noise_rate
            noise_ids = self._noise(rng) if noisy else []
            rows.append([tok.bos_token_id] + noise_ids + body + [tok.eos_token_id])
            masked.append(len(noise_ids))
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        for b, k in enumerate(masked):
            labels[b, 1:1 + k] = -100  # the noise is not a target (the token after it is)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # ---- probes ----
    def _probe_batches(self, pool: list[list[int]]):
        text = self._text_batch(np.random.default_rng([self.cfg.seed, STREAM["probe_text"]]), pool, 16, noise=False)
        text.pop("labels")
        text_q = text.get("attention_mask", torch.ones_like(text["input_ids"])).bool().clone()
        text_q[:, :12] = False  # skip the first positions, where few keys make any head look like a sink
        rng = np.random.default_rng([self.cfg.seed, STREAM["probe_image"]])
        scenes, captions, _ = _draw(rng, 8, grammar=self.cfg.grammar())
        image = self.batcher(scenes, captions, [TRAIN_PROMPTS[0]] * 8, True, self.device)
        image_q = image.pop("labels") != -100  # caption queries, as S1 defines them
        image_q = torch.roll(image_q, -1, 1) & image["attention_mask"].bool()  # the token before each label
        return ({k: v.to(self.device) for k, v in text.items()}, text_q), (image, image_q)

    def probe(self, stage: str, step: int, probes) -> dict:
        (text_batch, text_q), (image_batch, image_q) = probes
        row = {"stage": stage, "step": step, "probe": "sink"}
        if stage in ("text",):
            row["text"] = summarise(bos_attention(self.model, text_batch, text_q))
        if stage in ("text", "align", "multi"):
            row["image"] = summarise(bos_attention(self.model, image_batch, image_q))
        return row

    # ---- stages ----
    def _stage_setup(self, stage: str):
        cfg, m = self.cfg, self.model
        for p in m.parameters():
            p.requires_grad_(False)
        if stage == "vision":
            params = list(m.model.vision_tower.parameters()) + list(self.vision_head.parameters())
            lr, wd = cfg.vision_lr, 0.05
        elif stage == "text":
            params = list(m.model.language_model.parameters())  # lm_head is tied to the embeddings
            lr, wd = cfg.text_lr, cfg.text_wd
        elif stage == "align":
            params = list(m.model.multi_modal_projector.parameters())
            lr, wd = cfg.align_lr, 0.0
        else:
            params = list(m.model.multi_modal_projector.parameters()) + list(m.model.language_model.parameters())
            lr, wd = cfg.multi_lr, cfg.multi_wd
            if cfg.multi_qk_lr_scale != 1.0:
                qk = [p for layer in m.model.language_model.layers[cfg.multi_qk_from:]
                      for p in (*layer.self_attn.q_proj.parameters(), *layer.self_attn.k_proj.parameters())]
                if cfg.multi_qk_lr_scale == 0.0:  # frozen: out of the optimiser, no decay either
                    frozen = {id(p) for p in qk}
                    params = [p for p in params if id(p) not in frozen]
                else:
                    for p in params:
                        p.requires_grad_(True)
                    return params, _optimizer(params, lr, wd, qk, cfg.multi_qk_lr_scale), lr
        for p in params:
            p.requires_grad_(True)
        return params, _optimizer(params, lr, wd), lr

    def _loss(self, stage: str, rng: np.random.Generator, pool) -> tuple[torch.Tensor, dict]:
        cfg, m = self.cfg, self.model
        if stage == "vision":
            pixels, labels = vision_batch(rng, cfg.vision_batch, self.processor.image_processor, self.model_cfg.patch_size)
            logits = self.vision_head(m.model.vision_tower, pixels.to(self.device))
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.to(self.device).flatten())
            return loss, patch_metrics(logits.detach(), labels.to(self.device))
        if stage == "text":
            batch = {k: v.to(self.device) for k, v in self._text_batch(rng, pool, cfg.text_batch).items()}
            return m(**batch).loss, {}
        if stage == "align":
            n, world = cfg.align_batch, WorldConfig()
        else:
            n, world = cfg.multi_batch, WorldConfig(faint_rate=cfg.multi_faint_rate,
                                                    faint_strength=(cfg.multi_faint_min, cfg.multi_faint_max))
        batch = self.batcher(*_draw(rng, n, world, self.cfg.grammar()), with_image=True, device=self.device)
        loss = m(**batch).loss
        if stage == "multi" and cfg.multi_rehearsal:
            text = self._text_batch(rng, pool, cfg.multi_rehearsal, packed=False)
            text_loss = m(**{k: v.to(self.device) for k, v in text.items()}).loss
            return loss + text_loss, {"image_loss": round(loss.item(), 4), "text_loss": round(text_loss.item(), 4)}
        return loss, {}

    def _state(self, stage_index: int, step: int, opt, rng) -> dict:
        return {"stage_index": stage_index, "step": step, "model": self.model.state_dict(),
                "vision_head": self.vision_head.state_dict(), "opt": opt.state_dict() if opt else None,
                "rng": checkpoint.rng_state(rng) if rng is not None else None, "torch_rng": torch.get_rng_state(),
                "history": self.history, "stage_seconds": self.stage_seconds, "elapsed": self.elapsed(),
                "config": asdict(self.cfg), "model_config": self.model_cfg.as_dict()}

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def run(self, resume: bool, max_steps: int | None = None, init_from: Path | None = None) -> bool:
        """Run (or continue) the stages; with `max_steps`, checkpoint and stop after that many
        optimiser steps. True when every stage is done. `init_from` (a stage-end checkpoint such as
        CKPT/text.pt) starts after that stage, so later stages can be varied without redoing it."""
        done_here = 0
        # A setting a checkpoint does not name is newer: it ran at the default of its day (for the
        # designed sink and the count sentence, off; for sink heads, every head: they became defaults after
        # such checkpoints were written).
        defaults = {**asdict(TrainConfig()), "designed_sink": False, "count_sentence": False, "designed_sink_heads": ""}
        state = checkpoint.load(self.ckpt_dir) if resume else None
        if state is None and init_from is not None:
            state = torch.load(init_from, map_location="cpu", weights_only=False)
            done = STAGES[:state["stage_index"]]
            decoder_trained = any(stage != "vision" for stage in done)  # the designed sink shapes every decoder stage
            mismatch = [k for k, v in asdict(self.cfg).items()
                        if state["config"].get(k, defaults[k]) != v
                        and (k.split("_")[0] in done or k in SHARED_FIELDS
                             or (k.startswith("designed") and decoder_trained))]
            if mismatch:
                raise SystemExit(f"{init_from} was trained with other settings for {', '.join(mismatch)}")
            state["config"] = asdict(self.cfg)
            self.history.append({"init_from": str(init_from), "after_stage": done[-1]})
        start_stage, start_step = 0, 0
        if state is not None:
            if {**defaults, **state["config"]} != asdict(self.cfg):
                raise SystemExit(f"the checkpoint in {self.ckpt_dir} was made with another training config")
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
            # A stage checkpoint from before the designed sink lacks only the attention biases it adds.
            if unexpected or any(not (self.cfg.designed_sink and k.endswith("_proj.bias")) for k in missing):
                raise SystemExit(f"checkpoint does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
            self._impose_sink()
            self.vision_head.load_state_dict(state["vision_head"])
            self.history, self.stage_seconds = state["history"] + self.history, dict(state["stage_seconds"])
            self.elapsed_before = state["elapsed"]
            torch.set_rng_state(state["torch_rng"])
            start_stage, start_step = state["stage_index"], state["step"]
            print(f"resuming at stage {STAGES[min(start_stage, len(STAGES) - 1)]} step {start_step}", flush=True)
        pool = self._caption_pool()
        probes = self._probe_batches(pool)
        for index in range(start_stage, len(STAGES)):
            stage = STAGES[index]
            steps = self.cfg.steps(stage)
            params, opt, peak = self._stage_setup(stage)
            rng = np.random.default_rng([self.cfg.seed, STREAM[stage]])
            first = 0
            if state is not None and index == start_stage and start_step > 0:
                opt.load_state_dict(state["opt"])
                rng = checkpoint.restore_rng(state["rng"])
                first = start_step
            t_stage = time.perf_counter() - self.stage_seconds.get(stage, 0.0)
            self.model.train()
            for step in range(first, steps):
                if stage != "vision" and step % self.cfg.probe_every == 0:
                    self._log(self.probe(stage, step, probes))
                for group in opt.param_groups:
                    group["lr"] = _lr(step, steps, peak, self.cfg.warmup) * group.get("lr_scale", 1.0)
                loss, extra = self._loss(stage, rng, pool)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                self._impose_sink()  # the designed sink's parameters are fixed, not learned
                if step % self.log_every == 0 or step == steps - 1:
                    self._log({"stage": stage, "step": step, "loss": round(loss.item(), 4),
                               "lr": round(opt.param_groups[0]["lr"], 6), **extra,
                               "elapsed_s": round(self.elapsed(), 1)})
                self.stage_seconds[stage] = round(time.perf_counter() - t_stage, 1)
                done_here += 1
                if step + 1 < steps and ((step + 1) % self.cfg.ckpt_every == 0 or done_here == max_steps):
                    checkpoint.save(self.ckpt_dir, self._state(index, step + 1, opt, rng))
                    if done_here == max_steps:
                        return False
            if stage != "vision":
                self._log(self.probe(stage, steps, probes))
            self.stage_seconds[stage] = round(time.perf_counter() - t_stage, 1)
            checkpoint.save(self.ckpt_dir, self._state(index + 1, 0, None, None), keep_as=f"{stage}.pt")
            state = None
            if done_here == max_steps and index + 1 < len(STAGES):
                return False
        return True

    def _log(self, row: dict) -> None:
        self.history.append(row)
        print(json.dumps(row), flush=True)

    def save(self, out: Path, command: str) -> dict:
        self.model.eval()
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        sink_kind = "designed BOS sink" if self.cfg.designed_sink else "learned sink only"
        info = {"recipe": f"staged (vision → text → align → multi), {sink_kind}",
                "train_config": asdict(self.cfg), "model_config": self.model_cfg.as_dict(),
                "sink_fallback": (self.cfg.sink().describe() if self.cfg.designed_sink else
                                  "null BOS sink: BOS embedding fixed at zero (designed sink slot)"
                                  if self.cfg.null_bos_sink else None), "device": str(self.device), "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "params_m": round(sum(p.numel() for p in self.model.parameters()) / 1e6, 3),
                "stage_seconds": self.stage_seconds, "seconds": round(self.elapsed(), 1),
                "history": self.history, "command": command}
        (out / "training_info.json").write_text(json.dumps(info, indent=1))
        return info


def _flag(name: str, value) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def train(out: Path, cfg: TrainConfig = TrainConfig(), model_cfg: ToyModelConfig = ToyModelConfig(),
          threads: int | None = None, log_every: int = 50, ckpt: Path | None = None, resume: bool = False,
          max_steps: int | None = None, init_from: Path | None = None) -> dict | None:
    """Run the recipe and save the model to `out`; None when `max_steps` stopped it early (resume later)."""
    use_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = ckpt or out.parent / (out.name + "-ckpt")
    recipe = Recipe(cfg, model_cfg, ckpt, device, log_every)
    if not recipe.run(resume, max_steps, init_from):
        return None
    overrides = " ".join(_flag(f.name, getattr(cfg, f.name)) for f in fields(cfg) if getattr(cfg, f.name) != f.default)
    command = (f"python -m halviz.toy.recipe.train --out {out} --ckpt {ckpt} --threads {threads or torch.get_num_threads()}"
               + (f" {overrides}" if overrides else "") + (f" --init-from {init_from}" if init_from else ""))
    return recipe.save(out, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.toy.recipe.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("halviz/assets/toy-llava"))
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: OUT-ckpt next to OUT)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --ckpt")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimiser steps (checkpointed; continue with --resume)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start after the stage saved in this stage-end checkpoint (e.g. CKPT/text.pt)")
    add_threads_argument(parser)
    for f in fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):  # --text-packed / --no-text-packed
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except ValueError as exc:
        parser.error(str(exc))
    info = train(args.out, cfg, threads=args.threads, ckpt=args.ckpt, resume=args.resume, max_steps=args.max_steps,
                 init_from=args.init_from)
    if info is None:
        print(f"stopped after {args.max_steps} steps; continue with --resume --ckpt {args.ckpt}")
        return 0
    print(f"saved to {args.out} ({info['params_m']} M params) in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
