"""Per-architecture facts behind one small interface.

Adding an architecture means one adapter class here and a line in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from halviz.models.geometry import patch_boxes

DEFAULT_PROMPT = "Please describe this image in detail."


@dataclass(frozen=True)
class ImageLayout:
    """Where the image sits in one prompt and how its tokens tile the picture."""

    positions: tuple[int, ...]  # sequence indices of the image tokens, in grid order (row-major)
    rows: int
    cols: int
    boxes: np.ndarray  # (rows, cols, 4) x0, y0, x1, y1 in the uploaded image's pixels
    image_size: tuple[int, int]  # (width, height) of the uploaded image


class LlavaAdapter:
    """LLaVA-style checkpoints: a vision tower, a projector and a decoder-only LM.

    Covers LLaVA-1.5 (CLIP ViT-L/14-336 + Llama/Vicuna, 576 tokens on 24×24) and LLaVA-interleave
    (SigLIP + Qwen2 with grouped-query attention, 729 tokens on 27×27).
    """

    model_types = ("llava",)
    text_model_types = ("llama", "qwen2", "mistral")

    def __init__(self, model, processor):
        self.config = model.config
        self.processor = processor
        text = self.config.text_config
        self.family = {"llama": "llava-1.5", "qwen2": "llava-interleave"}.get(text.model_type, f"llava-{text.model_type}")
        self.num_layers = int(text.num_hidden_layers)
        self.num_heads = int(text.num_attention_heads)
        self.num_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // self.num_heads)
        self.image_token_id = int(self.config.image_token_id)
        self.patch_size = int(self.config.vision_config.patch_size)
        tok = processor.tokenizer
        self.bos_token_id = tok.bos_token_id
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
        self.eos_token_ids = frozenset(i for i in (tok.eos_token_id, *gen_eos) if i is not None)

    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """The full prompt string with one image placeholder, in the checkpoint's own chat format.

        ``system`` (optional) is a system message: a system turn where the chat template knows that
        role, else the text followed by a space before the first turn (LLaVA-1.5's own format).
        """
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
        layout = ImageLayout(tuple(positions), rows, cols, boxes, (image.width, image.height))
        model_inputs = {
            "input_ids": input_ids.to(device),
            "pixel_values": inputs["pixel_values"].to(device=device, dtype=dtype),
        }
        return model_inputs, layout

    # ---- rows of a batched forward ---------------------------------------------------------------
    def text_only_ids(self, input_ids: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
        """The prompt (n,) without its image tokens: what a text-only stream reads."""
        keep = torch.ones(input_ids.shape[-1], dtype=torch.bool, device=input_ids.device)
        keep[list(layout.positions)] = False
        return input_ids[..., keep]

    def position_ids(self, length: int, start: int, device: torch.device) -> torch.Tensor:
        """Positions of ``length`` tokens after ``start`` earlier ones: (length,) for 1-D RoPE."""
        return torch.arange(start, start + length, device=device)

    def encode_image(self, model, inputs: dict) -> object:
        """The vision tower and projector, run once per comparison (their output, as the model returns it)."""
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)

    def image_inputs(self, encoded: list) -> dict:
        """Model inputs that place ``encoded[i]`` (an :meth:`encode_image` output) in the i-th row holding the image."""
        if not encoded:
            return {}
        copy = type(encoded[0])(**{k: v for k, v in encoded[0].items()})
        copy.pooler_output = [feature for e in encoded for feature in e.pooler_output]
        return {"mm_encoder_outputs": {"image": copy}}


ADAPTERS = (LlavaAdapter,)


def adapter_for(model, processor):
    config = model.config
    for adapter in ADAPTERS:
        text_type = getattr(getattr(config, "text_config", None), "model_type", None)
        if config.model_type in adapter.model_types and text_type in adapter.text_model_types:
            return adapter(model, processor)
    raise ValueError(f"no halviz adapter for model_type={config.model_type!r}")
