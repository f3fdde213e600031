"""LLaVA-1.5 and LLaVA-interleave: a vision tower, a projector and a decoder-only LM, one image grid.

LLaVA-1.5 (CLIP ViT-L/14-336 + Vicuna/Llama): the upload is resized on its short side to 336 and
centre-cropped (or padded to a square first, with ``do_pad``), 576 tokens on 24×24. LLaVA-interleave
(SigLIP-so400m/14-384 + Qwen1.5): the upload is squashed to 384×384, 729 tokens on 27×27. Both use
``LlavaForConditionalGeneration`` with 1-D RoPE positions.
"""

from __future__ import annotations

import json

import torch

from halviz.models.families.base import Family, processor_fields, Fixture, ImageLayout, ImagePlan
from halviz.models.families.standin import cut_text_layers, drop_dtypes, standin_tokenizer
from halviz.models.geometry import patch_boxes


class Llava(Family):
    """Shared code of the LLaVA-style families; subclasses name the language models they accept."""

    text_model_types: tuple[str, ...] = ()

    @classmethod
    def accepts(cls, config: dict) -> bool:
        text_type = (config.get("text_config") or {}).get("model_type", "llama")  # LlavaConfig's default
        return config.get("model_type") == "llava" and text_type in cls.text_model_types

    @classmethod
    def model_class(cls):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def __init__(self, model, processor):
        super().__init__(model, processor)
        self.image_token_id = int(self.model_config.image_token_id)
        self.patch_size = int(self.model_config.vision_config.patch_size)

    def image_plan(self, width: int, height: int) -> ImagePlan:
        """Fixed: every upload becomes the tower's one square grid (its image size / patch size per side)."""
        side = int(self.model_config.vision_config.image_size) // self.patch_size
        return ImagePlan(side * side, (("image", side, side),))

    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """``system`` (optional) is a system message: a system turn where the chat template knows that
        role, else the text followed by a space before the first turn (LLaVA-1.5's own format)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            if system and "system" in template:
                messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            if system and "system" not in template:
                bos = self.processor.tokenizer.bos_token or ""
                head = bos if bos and text.startswith(bos) else ""
                text = f"{head}{system} {text[len(head):]}"
            return text
        text = f"USER: {self.processor.image_token}\n{prompt} ASSISTANT:"
        return f"{system} {text}" if system else text

    def prepare(self, image, prompt: str, device: torch.device, dtype: torch.dtype,
                system: str | None = None) -> tuple[dict, ImageLayout]:
        inputs = self.processor(text=self.chat_text(prompt, system), images=image, return_tensors="pt")
        input_ids = inputs["input_ids"]
        positions = torch.nonzero(input_ids[0] == self.image_token_id).flatten().tolist()
        height, width = inputs["pixel_values"].shape[-2:]
        rows, cols = height // self.patch_size, width // self.patch_size
        if len(positions) != rows * cols:
            raise ValueError(
                f"the prompt holds {len(positions)} image tokens but the patch grid is {rows}×{cols}; "
                "this checkpoint's processor and vision tower disagree"
            )
        boxes = patch_boxes(self.processor.image_processor, image.width, image.height, rows, cols, self.patch_size)
        layout = ImageLayout.single(positions, rows, cols, boxes, (image.width, image.height))
        model_inputs = {
            "input_ids": input_ids.to(device),
            "pixel_values": inputs["pixel_values"].to(device=device, dtype=dtype),
        }
        return model_inputs, layout

    def encode_image(self, model, inputs: dict) -> object:
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)

    # ---- the test checkpoint from the real config ------------------------------------------------
    @classmethod
    def fixture_parts(cls, fixture: Fixture, text_layers: int = 1, vision_layers: int | None = None):
        from transformers import LlavaConfig, LlavaProcessor

        raw = drop_dtypes(cut_text_layers(fixture.config, text_layers))
        raw.pop("architectures", None)
        # The tower keeps at least what its feature layer reads (-1: the last layer, -2: the one before).
        needed = -int(raw.get("vision_feature_layer", -2))
        raw["vision_config"]["num_hidden_layers"] = max(needed, vision_layers or 1)
        tokenizer = standin_tokenizer(fixture)
        options = {k: v for k, v in fixture.processor.items() if k in
                   ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")}
        processor = LlavaProcessor(image_processor=image_processor_from(fixture.preprocessor), tokenizer=tokenizer,
                                   chat_template=fixture.chat_template, **options)
        return LlavaConfig(**raw), processor


class Llava15(Llava):
    family = "llava-1.5"
    title = "LLaVA-1.5 (CLIP + Llama)"
    hub_notes = {"llava-hf/llava-1.5-7b-hf": "hub, ~14 GB, GPU advised"}
    hub_ids = tuple(hub_notes)
    text_model_types = ("llama", "mistral")


class LlavaInterleave(Llava):
    family = "llava-interleave"
    title = "LLaVA-interleave (SigLIP + Qwen2)"
    hub_notes = {"llava-hf/llava-interleave-qwen-0.5b-hf": "hub, ~1.7 GB"}
    hub_ids = tuple(hub_notes)
    text_model_types = ("qwen2",)


def image_processor_from(preprocessor: dict):
    """The PIL image processor a ``preprocessor_config.json`` names (no torchvision needed)."""
    import transformers

    fields = processor_fields(preprocessor)
    name = preprocessor["image_processor_type"].removesuffix("Fast").removesuffix("Pil")
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    return cls(**json.loads(json.dumps(fields)))
