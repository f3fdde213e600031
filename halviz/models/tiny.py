"""Tiny random-initialised checkpoints of each supported family, built from configs alone.

Tests and the benchmark save these with ``save_pretrained`` and load them back through
:func:`halviz.models.load_model`, so the real loading path is exercised with no hub access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from halviz.models.families import Fixture
from halviz.models.families.llava import Llava15
from halviz.models.tokenizer import IMAGE_TOKEN, train_tokenizer

# The tiny LLaVA-interleave checkpoint keeps this hand-written USER/ASSISTANT format (with a BOS) so its
# prompts have the same segments as LLaVA-1.5's; the tiny LLaVA-1.5 uses the real checkpoint's template
# (configs/llava-hf/llava-1.5-7b-hf/chat_template.jinja) and, like Llama's tokenizer, prepends <s> itself.
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: {{ message['content'][0]['text'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_CORPUS = (
    "please describe this image in detail . help me describe the image . what is in the picture ? "
    "a cup a fork a knife a plate a dog a cat a car a boat a kite a clock a person a man a woman "
    "USER ASSISTANT there is on next to above below left right red green blue small large the and of"
)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a random checkpoint; ``family`` picks the vision tower and decoder."""

    family: str = "llava-1.5"  # "llava-1.5" (CLIP + Llama) or "llava-interleave" (SigLIP + Qwen2, GQA)
    image_size: int = 336
    patch_size: int = 14
    vision_hidden: int = 32
    vision_layers: int = 1
    text_hidden: int = 64
    text_layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 128
    vocab_size: int = 320
    seed: int = 0
    # Larger than the usual 0.02 so random attention is peaked and differences are visible in tests.
    init_std: float = 0.02


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a fixed toy corpus: deterministic, offline, decodes any text."""
    return train_tokenizer([_CORPUS] * 4, vocab_size - 8)


def build_tiny_llava(spec: TinySpec) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    tokenizer = build_tokenizer(spec.vocab_size)
    template = LLAVA_CHAT_TEMPLATE
    if spec.family == "llava-1.5":
        template = Fixture.load(Llava15.hub_ids[0]).chat_template
        tokenizer = with_bos_prepended(tokenizer)
        vision = CLIPVisionConfig(
            hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
            num_attention_heads=2, image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden,
        )
        text = LlamaConfig(
            hidden_size=spec.text_hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, vocab_size=len(tokenizer),
            max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, initializer_range=spec.init_std,
        )
        image_processor = clip_image_processor(spec.image_size)
        strategy, extra_tokens = "default", 1  # CLIP: drop the CLS token
    elif spec.family == "llava-interleave":
        vision = SiglipVisionConfig(
            hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
            num_attention_heads=2, image_size=spec.image_size, patch_size=spec.patch_size,
        )
        text = Qwen2Config(
            hidden_size=spec.text_hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, vocab_size=len(tokenizer),
            max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, initializer_range=spec.init_std,
        )
        image_processor = SiglipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})
        strategy, extra_tokens = "full", 0  # SigLIP has no CLS token
    else:
        raise ValueError(f"unknown tiny family {spec.family!r}")
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy=strategy, vision_feature_layer=-1, projector_hidden_act="gelu",
        initializer_range=spec.init_std,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    return model, llava_processor(image_processor, tokenizer, spec.patch_size, strategy, extra_tokens, template)


def clip_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """LLaVA-1.5's preprocessing: resize the short side, centre-crop a square."""
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                 do_center_crop=True)


def with_bos_prepended(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tokenizer writing its BOS before every text, as Llama's does (add_bos_token)."""
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tokenizer.bos_token_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tokenizer.eos_token,
                                   pad_token=tokenizer.pad_token, extra_special_tokens={"image_token": IMAGE_TOKEN})


def llava_processor(image_processor, tokenizer, patch_size: int, strategy: str, extra_tokens: int,
                    template: str = LLAVA_CHAT_TEMPLATE) -> LlavaProcessor:
    """A LLaVA processor around a stand-in tokenizer."""
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens,
        chat_template=template,
    )


def save_tiny_llava(spec: TinySpec, folder: str | Path) -> Path:
    folder = Path(folder)
    model, processor = build_tiny_llava(spec)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
