"""The GPU benchmark builds LLaVA-1.5-7B's real architecture (checked on the meta device: no memory)."""

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from halviz.gpubench import real_geometry_config


def test_config_is_llava_15_7b():
    config = LlavaConfig(**real_geometry_config("7b"))
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (32, 4096, 32, 32, 11008, 32064)
    assert (vision.num_hidden_layers, vision.hidden_size, vision.image_size, vision.patch_size) == (24, 1024, 336, 14)
    assert (vision.image_size // vision.patch_size) ** 2 == 576
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    # llava-hf/llava-1.5-7b-hf's safetensors index lists 7,063,427,072 parameters.
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072


def test_layers_cut_keeps_every_other_size():
    config = LlavaConfig(**real_geometry_config("7b", layers=1))
    assert config.text_config.num_hidden_layers == 1 and config.text_config.hidden_size == 4096
    assert config.vision_config.num_hidden_layers == 2  # the feature layer is the second-to-last
