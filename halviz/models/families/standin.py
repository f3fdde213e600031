"""Helpers every family's :meth:`~halviz.models.families.base.Family.build_fixture` uses.

The stand-in tokenizer is a small byte-level BPE trained offline on a fixed corpus, with the real
checkpoint's special tokens at their real ids (the ordinary tokens fill the ids the specials leave
free), so a random checkpoint keeps its real vocabulary size and special ids and only the count of
ordinary text tokens in a prompt differs from the real tokenizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from halviz.models.families.base import Fixture

STANDIN_ORDINARY = 300  # ordinary (non-special) tokens of the stand-in vocabulary
CORPUS = (
    "please describe this image in detail . help me describe the image . what is in the picture ? "
    "a cup a fork a knife a plate a dog a cat a car a boat a kite a clock a person a man a woman "
    "USER ASSISTANT user assistant system there is on next to above below left right red green blue "
    "small large the and of"
)
ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


def standin_tokenizer(fixture: Fixture, ordinary: int = STANDIN_ORDINARY):
    """A ``PreTrainedTokenizerFast`` with ``fixture``'s special tokens at their ids and its roles
    (bos/eos/pad/unk, and ``image_token`` and any other ``*_token`` role as extra special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = fixture.special_ids
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ordinary, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([CORPUS] * 4, trainer=trainer)
    data = json.loads(bpe.to_str())
    taken, vocab, next_id = set(specials.values()), {}, 0
    for token, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]):
        while next_id in taken:
            next_id += 1
        vocab[token] = next_id
        next_id += 1
    vocab.update(specials)  # a special's id is honoured only when the model's vocabulary holds it
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in sorted(specials.items(), key=lambda kv: kv[1])]
    roles = {r: fixture.role(r) for r in ROLES if fixture.role(r)}
    extra = {k: v for k, v in fixture.special_tokens.items()
             if k.endswith("_token") and k not in ROLES and isinstance(v, str)}
    backend = Tokenizer.from_str(json.dumps(data))
    bos = fixture.role("bos_token")
    if fixture.special_tokens.get("add_bos_token") and bos:  # e.g. Llama: the tokenizer, not the template, writes <s>
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                               special_tokens=[(bos, specials[bos])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **roles, extra_special_tokens=extra)
    for token, i in specials.items():  # the ids are the point of the stand-in: fail loudly if one moved
        if tokenizer.convert_tokens_to_ids(token) != i:
            raise RuntimeError(f"stand-in tokenizer put {token!r} at {tokenizer.convert_tokens_to_ids(token)}, not {i}")
    return tokenizer


def cut_text_layers(config: dict, layers: int) -> dict:
    """A copy of a ``config.json`` dict with the language model cut to ``layers`` layers (nested or flat)."""
    config = json.loads(json.dumps(config))
    part = config.get("text_config") or config
    part["num_hidden_layers"] = layers
    for key in ("layer_types", "max_window_layers"):  # per-layer lists must match the new count
        if isinstance(part.get(key), list):
            part[key] = part[key][:layers]
    return config


def drop_dtypes(config: dict) -> dict:
    """Remove dtype fields everywhere (the caller chooses the dtype)."""
    for key in ("torch_dtype", "dtype"):
        config.pop(key, None)
    for value in config.values():
        if isinstance(value, dict):
            drop_dtypes(value)
    return config


def set_init_std(config, std: float) -> None:
    """Set ``initializer_range`` on a config and on every sub-config that has one."""
    if hasattr(config, "initializer_range"):
        config.initializer_range = std
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "initializer_range"):
            sub.initializer_range = std


def random_model(model_class, config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0, generation: dict | None = None):
    """Random weights of ``config``, allocated straight on ``device`` in ``dtype``; ``generation``: the
    checkpoint's generation_config.json values (its eos ids end a caption)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config).eval()
    finally:
        torch.set_default_dtype(previous)
    for key, value in (generation or {}).items():
        if key.endswith("_token_id"):
            setattr(model.generation_config, key, value)
    return model


def save_random(model_class, config, processor, folder: str | Path, seed: int = 0, generation: dict | None = None) -> Path:
    """Random float32 weights of ``config`` saved with ``processor`` in ``folder``."""
    folder = Path(folder)
    model = random_model(model_class, config, "cpu", torch.float32, seed, generation)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
