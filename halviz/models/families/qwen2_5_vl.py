"""Qwen2.5-VL: dynamic resolution under a pixel cap, a 2×2 patch merger, M-RoPE positions.

The processor resizes the upload to the nearest multiple of 28 px (patch 14 × merge 2) on each side,
keeping the pixel count within [min_pixels, max_pixels] ("smart resize"), and cuts it into 14 px
patches, grouped so that every 2×2 block of patches becomes one ``<|image_pad|>`` token after the
merger: (height / 28) × (width / 28) tokens, row-major, between ``<|vision_start|>`` and
``<|vision_end|>``. A token's box in the upload is its 28×28 square scaled back by
(upload / resized) on each axis.

The hub's max_pixels (12.8 M, up to 16384 image tokens) would let one photo fill any memory, so
halviz caps it at :data:`MAX_PIXELS` (1024 tokens); a folder's own smaller cap is kept.

Positions are M-RoPE's (temporal, height, width): text counts up on all three axes; the image's
tokens sit at t = s, h = s + row, w = s + col where s is the image's first index; the text after it
resumes at s + max(rows, cols). A text-only row (VHR's stream) is plain text: 0..n-1 on every axis.
The hub ``config.json`` is flat (text fields at the top level, no ``text_config``); transformers nests
them, and nothing here reads ``text_config`` from the raw dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from halviz.models.families.base import Family, processor_fields, Fixture, ImageLayout, ImagePlan, raw_text_config
from halviz.models.families.standin import cut_text_layers, drop_dtypes, standin_tokenizer

MAX_PIXELS = 1024 * 28 * 28  # halviz's cap: at most 1024 image tokens (802 816 px after resizing)
# Image-token budgets: max_pixels lowered to this many merged tokens (28×28 px each); the default keeps
# the folder's own cap (halviz's 1024 for the hub checkpoint).
TOKEN_BUDGETS = {"64": 64, "256": 256}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' Qwen2-VL ``smart_resize``: sides multiples of ``factor``, pixels within the bounds."""
    import math

    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"the upload's aspect ratio must be below 200, got {max(height, width) / min(height, width):.0f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_boxes(width: int, height: int, resized: tuple[int, int], rows: int, cols: int) -> np.ndarray:
    """(rows, cols, 4) boxes of the merged tokens in the upload: the resized picture's equal squares
    scaled back to the upload's size."""
    rw, rh = resized
    ex = np.arange(cols + 1) * (rw / cols) * (width / rw)
    ey = np.arange(rows + 1) * (rh / rows) * (height / rh)
    boxes = np.empty((rows, cols, 4), dtype=np.float32)
    boxes[..., 0] = np.clip(ex[:-1], 0, width)[None, :]
    boxes[..., 2] = np.clip(ex[1:], 0, width)[None, :]
    boxes[..., 1] = np.clip(ey[:-1], 0, height)[:, None]
    boxes[..., 3] = np.clip(ey[1:], 0, height)[:, None]
    return boxes


def mrope_positions(n: int, image_start: int | None, rows: int, cols: int) -> torch.Tensor:
    """(3, n) M-RoPE positions of a prompt of ``n`` tokens whose image tokens (rows × cols, row-major)
    start at ``image_start`` (None: no image)."""
    if image_start is None:
        return torch.arange(n).expand(3, n).clone()
    before = torch.arange(image_start).expand(3, image_start)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    image = torch.stack([torch.zeros(rows * cols, dtype=torch.long), r.flatten(), c.flatten()]) + image_start
    after_start = image_start + max(rows, cols)
    rest = n - image_start - rows * cols
    after = torch.arange(after_start, after_start + rest).expand(3, rest)
    return torch.cat([before, image, after], dim=1)


def image_only_processor(image_processor, tokenizer, chat_template: str | None):
    """``Qwen2_5_VLProcessor`` without its video processor: the stock class checks that argument
    against the torchvision-backed video classes even when it is None, so it cannot be built here."""
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor

    class Qwen2_5_VLImageProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2_5_VLImageProcessor(image_processor, tokenizer, chat_template=chat_template)


class Qwen2_5_VL(Family):
    family = "qwen2.5-vl"
    title = "Qwen2.5-VL (dynamic resolution, M-RoPE)"
    hub_notes = {"Qwen/Qwen2.5-VL-3B-Instruct": "hub, ~7.5 GB, GPU advised; up to 1024 image tokens"}
    hub_ids = tuple(hub_notes)
    position_axes = 3
    budgets = (*TOKEN_BUDGETS, "default")

    @classmethod
    def budget_label(cls, name: str) -> str:
        if name in TOKEN_BUDGETS:
            return f"at most {name} image tokens (max_pixels {TOKEN_BUDGETS[name] * 28 * 28:,})"
        return "the checkpoint's own max_pixels (halviz caps it at 1024 tokens)"

    def _apply_budget(self, name: str) -> None:
        image_processor = self.processor.image_processor
        size = image_processor.size
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        longest = min(TOKEN_BUDGETS[name] * factor * factor, int(size["longest_edge"]))
        image_processor.size = type(size)(shortest_edge=int(size["shortest_edge"]), longest_edge=longest)

    def image_plan(self, width: int, height: int) -> ImagePlan:
        image_processor = self.processor.image_processor
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        h, w = smart_resize(height, width, factor, int(image_processor.size["shortest_edge"]),
                            int(image_processor.size["longest_edge"]))
        return ImagePlan((h // factor) * (w // factor), (("image", h // factor, w // factor),))

    @classmethod
    def accepts(cls, config: dict) -> bool:
        return config.get("model_type") == "qwen2_5_vl"

    @classmethod
    def model_class(cls):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def image_processor(cls, preprocessor: dict):
        """The PIL image processor from a ``preprocessor_config.json`` dict, its max_pixels capped."""
        from transformers import Qwen2VLImageProcessorPil

        fields = processor_fields(preprocessor)
        size = dict(fields.pop("size", None) or {})
        min_pixels = fields.pop("min_pixels", size.get("shortest_edge", 56 * 56))
        max_pixels = fields.pop("max_pixels", size.get("longest_edge", MAX_PIXELS))
        size = {"shortest_edge": int(min_pixels), "longest_edge": min(int(max_pixels), MAX_PIXELS)}
        return Qwen2VLImageProcessorPil(size=size, **fields)

    @classmethod
    def load_processor(cls, source: str, local: bool):
        # Built by hand: the transformers processor wants a video processor (torchvision), and
        # AutoProcessor may return a bare tokenizer.
        from huggingface_hub import hf_hub_download
        from transformers import AutoTokenizer

        folder = Path(source)

        def read(name: str) -> dict | None:
            try:
                path = folder / name if local else Path(hf_hub_download(source, name))
                return json.loads(path.read_text()) if path.is_file() else None
            except Exception:  # noqa: BLE001 - a file the repo does not have
                return None

        # The hub's preprocessor_config.json, or transformers 5's processor_config.json that nests it.
        preprocessor = read("preprocessor_config.json") or (read("processor_config.json") or {}).get("image_processor")
        if preprocessor is None:
            raise FileNotFoundError(f"{source}: no preprocessor_config.json nor processor_config.json with an image processor")
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        template = getattr(tokenizer, "chat_template", None)
        if local and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif local and (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        return image_only_processor(cls.image_processor(preprocessor), tokenizer, template)

    def __init__(self, model, processor):
        super().__init__(model, processor)
        config = self.model_config
        self.image_token_id = int(config.image_token_id)
        self.vision_start_id = int(config.vision_start_token_id)
        self.vision_end_id = int(config.vision_end_token_id)
        self.merge = int(config.vision_config.spatial_merge_size)

    def prepare(self, image, prompt: str, device: torch.device, dtype: torch.dtype,
                system: str | None = None) -> tuple[dict, ImageLayout]:
        inputs = self.processor(text=self.chat_text(prompt, system), images=image, return_tensors="pt")
        input_ids = inputs["input_ids"]
        grid_thw = inputs["image_grid_thw"]
        positions = torch.nonzero(input_ids[0] == self.image_token_id).flatten().tolist()
        t, grid_h, grid_w = (int(v) for v in grid_thw[0])
        rows, cols = grid_h // self.merge, grid_w // self.merge
        if t != 1 or len(positions) != rows * cols or positions != list(range(positions[0], positions[0] + rows * cols)):
            raise ValueError(f"the prompt holds {len(positions)} image tokens for a {t}×{grid_h}×{grid_w} patch grid; "
                             "this checkpoint's processor and vision tower disagree")
        patch = int(self.processor.image_processor.patch_size)
        resized = (grid_w * patch, grid_h * patch)
        boxes = qwen_boxes(image.width, image.height, resized, rows, cols)
        layout = ImageLayout.single(positions, rows, cols, boxes, (image.width, image.height))
        model_inputs = {
            "input_ids": input_ids.to(device),
            "pixel_values": inputs["pixel_values"].to(device=device, dtype=dtype),
            "image_grid_thw": grid_thw.to(device),
            # generate() needs it to build M-RoPE positions itself (without it: 1-D positions, silently)
            "mm_token_type_ids": inputs["mm_token_type_ids"].to(device),
        }
        return model_inputs, layout

    def text_only_ids(self, input_ids: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
        """The prompt without the image and its ``<|vision_start|>`` / ``<|vision_end|>`` markers."""
        drop = torch.zeros(input_ids.shape[-1], dtype=torch.bool, device=input_ids.device)
        drop[list(layout.positions)] = True
        drop |= (input_ids == self.vision_start_id) | (input_ids == self.vision_end_id)
        return input_ids[..., ~drop]

    def prompt_positions(self, input_ids: torch.Tensor, inputs: dict | None) -> torch.Tensor:
        n = int(input_ids.shape[-1])
        if inputs is None:
            return mrope_positions(n, None, 0, 0).to(input_ids.device)
        image_at = torch.nonzero(input_ids == self.image_token_id).flatten()
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][0])
        return mrope_positions(n, int(image_at[0]), grid_h // self.merge, grid_w // self.merge).to(input_ids.device)

    def encode_image(self, model, inputs: dict) -> object:
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                  image_grid_thw=inputs["image_grid_thw"], return_dict=True)

    # ---- the test checkpoint from the real config ------------------------------------------------
    @classmethod
    def fixture_processor(cls, fixture: Fixture):
        return image_only_processor(cls.image_processor(fixture.preprocessor), standin_tokenizer(fixture),
                                    fixture.chat_template)

    @classmethod
    def fixture_parts(cls, fixture: Fixture, text_layers: int = 1, vision_layers: int | None = None):
        """The real (flat) config with the decoder cut to ``text_layers`` and the vision tower to
        ``vision_layers`` blocks (default one; the full-attention block indexes cut with it); the real
        preprocessing (under halviz's pixel cap)."""
        from transformers import Qwen2_5_VLConfig

        raw = drop_dtypes(cut_text_layers(fixture.config, text_layers))
        raw.pop("architectures", None)
        vision = raw["vision_config"]
        vision["depth"] = depth = vision_layers or 1
        vision["fullatt_block_indexes"] = [i for i in vision.get("fullatt_block_indexes", []) if i < depth] or [depth - 1]
        vision["out_hidden_size"] = raw_text_config(raw)["hidden_size"]  # the merger feeds the decoder (same on the hub)
        return Qwen2_5_VLConfig(**raw), cls.fixture_processor(fixture)
