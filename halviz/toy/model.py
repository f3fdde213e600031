"""The toy LLaVA: a real ``LlavaForConditionalGeneration`` (CLIP tower + projector + Llama
decoder) with a byte-level BPE tokenizer and a ``LlavaProcessor``, so that the saved folder loads
through the same loader as any hub checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from halviz.models.tokenizer import IMAGE_TOKEN
from halviz.toy.scenes import IMAGE_SIZE

# LLaVA-1.5's layout without the system line, image first: BOS is the only token every prompt
# shares at a fixed position, so the attention sink grown in the text stage stays on BOS (with a
# fixed prefix the sink lands on a prefix token instead: Gu et al. 2025, §6).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "USER: {% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ToyModelConfig:
    vocab_size: int = 512
    patch_size: int = 8  # 96 px / 8 → 12×12 = 144 image tokens
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 6
    text_heads: int = 6
    intermediate: int = 512

    def as_dict(self) -> dict:
        return asdict(self)


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: ToyModelConfig) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False, do_resize=True,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: ToyModelConfig,
                attention_bias: bool = False) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=IMAGE_SIZE, patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=cfg.text_hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads, vocab_size=len(tokenizer),
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, attention_bias=attention_bias,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
