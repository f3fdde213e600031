"""Random checkpoints with a real model's exact architecture, built from its stored ``config.json``.

The configs live in ``configs/`` (each file's ``_source`` says where every value comes from). The
weights are random and the tokenizer is a small stand-in with the checkpoint's special tokens; the
stand-in's ids replace the checkpoint's special ids in the config while the embedding keeps the real
vocabulary size, so every layer has its real shape and only the prompt's token count differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast,
                          SiglipImageProcessorPil)

from halviz.models.tiny import _CORPUS, build_tokenizer, clip_image_processor, llava_processor
from halviz.models.tokenizer import IMAGE_TOKEN

CONFIGS = Path(__file__).parent / "configs"
GEOMETRIES = {"7b": "llava-1.5-7b-hf.json", "interleave-0.5b": "llava-interleave-qwen-0.5b-hf.json"}
STANDIN_VOCAB = 320

# llava-interleave's chat format (ChatML, images before the text of a turn), as its chat_template.json.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)


def real_geometry_config(name: str, layers: int | None = None) -> dict:
    """The checkpoint's config as a dict; ``layers`` cuts both towers (every other size is kept)."""
    config = json.loads((CONFIGS / GEOMETRIES[name]).read_text())
    config.pop("_source", None)
    for part in (config, config["text_config"], config["vision_config"]):  # the dtype is the caller's choice
        part.pop("torch_dtype", None)
    if layers is not None:
        config["text_config"]["num_hidden_layers"] = layers
        # The vision feature layer (-1 or -2) must still exist.
        config["vision_config"]["num_hidden_layers"] = max(layers, -config["vision_feature_layer"])
    return config


def qwen_standin_tokenizer(vocab_size: int = STANDIN_VOCAB) -> PreTrainedTokenizerFast:
    """A byte-level BPE on the toy corpus with Qwen's special tokens (no BOS, like Qwen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 8, special_tokens=list(QWEN_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN})


def _with_standin_ids(raw: dict, tokenizer) -> dict:
    """The stand-in tokenizer's ids in place of the checkpoint's special ids (the vocabulary size stays)."""
    raw = dict(raw, text_config=dict(raw["text_config"]))
    raw["image_token_index"] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    raw["pad_token_id"] = tokenizer.pad_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    raw["text_config"].update(bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return raw


def standin_processor(raw: dict, tokenizer):
    """The checkpoint's preprocessing (CLIP resize + crop, or SigLIP square resize) around ``tokenizer``."""
    vision = raw["vision_config"]
    size, patch = vision["image_size"], vision["patch_size"]
    if vision["model_type"] == "siglip_vision_model":
        image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
        return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                              vision_feature_select_strategy=raw["vision_feature_select_strategy"],
                              num_additional_image_tokens=0, chat_template=CHATML_TEMPLATE)
    return llava_processor(clip_image_processor(size), tokenizer, patch, raw["vision_feature_select_strategy"], 1)


def build_real_geometry_model(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                              layers: int | None = None, seed: int = 0):
    """(model, processor): random weights of the real architecture, allocated straight on ``device``."""
    raw = real_geometry_config(name, layers)
    tokenizer = (qwen_standin_tokenizer() if raw["text_config"]["model_type"] == "qwen2"
                 else build_tokenizer(STANDIN_VOCAB))
    raw = _with_standin_ids(raw, tokenizer)
    config = LlavaConfig(**raw)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model, standin_processor(raw, tokenizer)


def save_real_geometry(name: str, folder: str | Path, layers: int | None = None, seed: int = 0) -> Path:
    """Build on the CPU in float32 and save as a checkpoint folder that ``load_model`` reads."""
    folder = Path(folder)
    model, processor = build_real_geometry_model(name, "cpu", torch.float32, layers, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
