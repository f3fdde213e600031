"""LLaVA-OneVision: a base view plus "anyres" tiles of the upload, 1-D RoPE (Qwen2 decoder).

The processor (one image per prompt) picks the best of ``image_grid_pinpoints`` for the upload
(up to 2304×2304 in 384 px steps), resizes the upload into it keeping the aspect ratio, centres it on
a black canvas of that size and cuts the canvas into 384×384 tiles; before them it puts the whole
upload squashed to 384×384 (the base view). SigLIP/14 sees 27×27 patches per 384 frame (the last 6 px
of each frame fall outside the patch grid).

The model keeps the base view's 729 tokens as they are; the tiles' features are stitched into one
(tiles·27) grid, the padding rows (or columns) are cut off in feature units ("unpad"), and when more
than ~9 tiles' worth remain the grid is shrunk by bilinear interpolation (``anyres_max_9``). Every row
of that grid ends with an ``image_newline`` token. In the prompt: 729 base tokens, then the grid row
by row, each row followed by its newline (newlines are image tokens in no grid).

Boxes: a base token's 14×14 patch scaled back from 384×384 to the upload; a grid cell's footprint
(rows and columns of stitched features it was pooled from, fractional after interpolation) mapped to
canvas pixels (feature k of tile t starts at t·384 + 14k) and from the canvas back to the upload.
Layout: ``grids[0]`` = "base" 27×27, ``grids[1]`` = "tiles" (the unpadded, possibly shrunk grid).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from halviz.models.families.base import Family, processor_fields, Fixture, Grid, ImageLayout, ImagePlan
from halviz.models.families.standin import cut_text_layers, drop_dtypes, standin_tokenizer


@dataclass(frozen=True)
class AnyresPlan:
    """Where the processor and the model put one upload of ``width`` × ``height``."""

    width: int
    height: int
    canvas: tuple[int, int]  # (width, height) of the best pinpoint
    pasted: tuple[int, int, int, int]  # x, y, width, height of the resized upload on the canvas
    tile: int  # px per tile side (the vision tower's image size)
    side: int  # patches per tile side
    patch: int  # px per patch
    kept: tuple[int, int, int, int]  # top, left, rows, cols of the stitched feature grid kept by unpad
    grid: tuple[int, int]  # (rows, cols) of the final grid (after any interpolation)

    @property
    def tokens(self) -> int:
        rows, cols = self.grid
        return self.side * self.side + rows * (cols + 1)


def anyres_plan(width: int, height: int, pinpoints, tile: int, patch: int, max_tiles: int) -> AnyresPlan:
    from transformers.image_processing_utils import select_best_resolution

    best_h, best_w = select_best_resolution((height, width), pinpoints)
    # The processor's aspect-keeping resize into the pinpoint (get_patch_output_size) and centred paste.
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    side = tile // patch
    cur_h, cur_w = best_h // tile * side, best_w // tile * side
    # The model's unpad_image on the stitched features.
    top, left, rows, cols = 0, 0, cur_h, cur_w
    if width / height > cur_w / cur_h:
        new = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new) // 2
        top, rows = pad, cur_h - 2 * pad
    else:
        new = int(round(width * (cur_h / height), 7))
        pad = (cur_w - new) // 2
        left, cols = pad, cur_w - 2 * pad
    ratio = math.sqrt(rows * cols / (max_tiles * side**2))
    grid = (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)
    return AnyresPlan(width, height, (best_w, best_h), (paste_x, paste_y, new_w, new_h), tile, side, patch,
                      (top, left, rows, cols), grid)


def _feature_to_canvas(f: np.ndarray, side: int, tile: int, patch: int, end: bool) -> np.ndarray:
    """Canvas px of stitched feature coordinate ``f`` (continuous). ``end``: an interval's right end,
    so a whole multiple of ``side`` ends its tile (at ``side·patch``), not starts the next one."""
    t = np.floor(f / side)
    if end:
        t = np.maximum(np.ceil(f / side) - 1, 0)
    return t * tile + (f - t * side) * patch


def anyres_boxes(plan: AnyresPlan) -> np.ndarray:
    top, left, rows, cols = plan.kept
    out_rows, out_cols = plan.grid
    fy = top + np.arange(out_rows + 1) * rows / out_rows  # footprint edges in stitched features
    fx = left + np.arange(out_cols + 1) * cols / out_cols
    paste_x, paste_y, new_w, new_h = plan.pasted
    args = (plan.side, plan.tile, plan.patch)
    x0 = (_feature_to_canvas(fx[:-1], *args, end=False) - paste_x) * plan.width / new_w
    x1 = (_feature_to_canvas(fx[1:], *args, end=True) - paste_x) * plan.width / new_w
    y0 = (_feature_to_canvas(fy[:-1], *args, end=False) - paste_y) * plan.height / new_h
    y1 = (_feature_to_canvas(fy[1:], *args, end=True) - paste_y) * plan.height / new_h
    boxes = np.empty((out_rows, out_cols, 4), dtype=np.float32)
    boxes[..., 0] = np.clip(x0, 0, plan.width)[None, :]
    boxes[..., 2] = np.clip(x1, 0, plan.width)[None, :]
    boxes[..., 1] = np.clip(y0, 0, plan.height)[:, None]
    boxes[..., 3] = np.clip(y1, 0, plan.height)[:, None]
    return boxes


def base_boxes(plan: AnyresPlan) -> np.ndarray:
    edges = np.arange(plan.side + 1) * plan.patch
    boxes = np.empty((plan.side, plan.side, 4), dtype=np.float32)
    boxes[..., 0] = (edges[:-1] * plan.width / plan.tile)[None, :]
    boxes[..., 2] = (edges[1:] * plan.width / plan.tile)[None, :]
    boxes[..., 1] = (edges[:-1] * plan.height / plan.tile)[:, None]
    boxes[..., 3] = (edges[1:] * plan.height / plan.tile)[:, None]
    return boxes


def onevision_layout(plan: AnyresPlan, positions) -> ImageLayout:
    positions = tuple(int(p) for p in positions)
    if len(positions) != plan.tokens:
        raise ValueError(f"the prompt holds {len(positions)} image tokens, the anyres layout {plan.tokens}; "
                         "this checkpoint's processor and model disagree")
    base_n = plan.side * plan.side
    base = Grid("base", tuple(range(base_n)), plan.side, plan.side, base_boxes(plan))
    rows, cols = plan.grid
    index = tuple(base_n + r * (cols + 1) + c for r in range(rows) for c in range(cols))  # skip the newlines
    tiles = Grid(f"tiles {rows}×{cols}", index, rows, cols, anyres_boxes(plan))
    return ImageLayout(positions, (base, tiles), (plan.width, plan.height))


def image_only_processor(image_processor, tokenizer, chat_template, **options):
    """``LlavaOnevisionProcessor`` without its video processor (the stock class checks that argument
    against the torchvision-backed video classes even when it is None)."""
    from transformers import LlavaOnevisionProcessor, ProcessorMixin

    class LlavaOnevisionImageProcessor(LlavaOnevisionProcessor):
        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token = getattr(tokenizer, "image_token", None) or image_token
            self.video_token = getattr(tokenizer, "video_token", None) or video_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.vision_aspect_ratio = vision_aspect_ratio
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return LlavaOnevisionImageProcessor(image_processor, tokenizer, chat_template=chat_template, **options)


PROCESSOR_OPTIONS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")
# Image-token budgets: the processor's and the model's own ``vision_aspect_ratio`` ("anyres_max_N"), which
# shrinks the tile grid to about N tiles' worth of tokens (the tower still sees every tile).
ANYRES_BUDGETS = ("anyres_max_1", "anyres_max_4")


class LlavaOnevision(Family):
    family = "llava-onevision"
    title = "LLaVA-OneVision (SigLIP + Qwen2, anyres tiles + base view)"
    hub_notes = {"llava-hf/llava-onevision-qwen2-0.5b-ov-hf": "hub, ~1.8 GB; anyres tiles, up to ~7300 image tokens"}
    hub_ids = tuple(hub_notes)
    budgets = (*ANYRES_BUDGETS, "default")

    @classmethod
    def budget_label(cls, name: str) -> str:
        if name in ANYRES_BUDGETS:
            n = name.removeprefix("anyres_max_")
            return f"{name}: the tile grid shrunk to about {n} tile{'s' if n != '1' else ''} of tokens, + the base view"
        return "the checkpoint's own (anyres_max_9 on the hub)"

    def _apply_budget(self, name: str) -> None:
        # The processor counts the prompt's image tokens with it; encode_image hands it to the model.
        self.processor.vision_aspect_ratio = name
        self.max_tiles = int(name.removeprefix("anyres_max_"))

    def image_plan(self, width: int, height: int) -> ImagePlan:
        plan = self.plan(width, height)
        return ImagePlan(plan.tokens, (("base", plan.side, plan.side), (f"tiles {plan.grid[0]}×{plan.grid[1]}", *plan.grid)))

    @classmethod
    def accepts(cls, config: dict) -> bool:
        return config.get("model_type") == "llava_onevision"

    @classmethod
    def model_class(cls):
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    @classmethod
    def image_processor(cls, preprocessor: dict):
        from transformers import LlavaOnevisionImageProcessorPil

        fields = processor_fields(preprocessor)
        return LlavaOnevisionImageProcessorPil(**json.loads(json.dumps(fields)))

    @classmethod
    def load_processor(cls, source: str, local: bool):
        # Built by hand: the stock processor wants a video processor (torchvision).
        from huggingface_hub import hf_hub_download
        from transformers import AutoTokenizer

        folder = Path(source)

        def read(name: str) -> dict | None:
            try:
                path = folder / name if local else Path(hf_hub_download(source, name))
                return json.loads(path.read_text()) if path.is_file() else None
            except Exception:  # noqa: BLE001 - a file the repo does not have
                return None

        nested = read("processor_config.json") or {}
        preprocessor = read("preprocessor_config.json") or nested.get("image_processor")
        if preprocessor is None:
            raise FileNotFoundError(f"{source}: no preprocessor_config.json nor processor_config.json with an image processor")
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        template = getattr(tokenizer, "chat_template", None)
        for name in ("chat_template.jinja", "chat_template.json"):
            path = folder / name if local else None
            if path is not None and path.is_file():
                text = path.read_text()
                template = json.loads(text)["chat_template"] if name.endswith(".json") else text
                break
        options = {k: v for k, v in nested.items() if k in PROCESSOR_OPTIONS}
        return image_only_processor(cls.image_processor(preprocessor), tokenizer, template, **options)

    def __init__(self, model, processor):
        super().__init__(model, processor)
        config = self.model_config
        self.image_token_id = int(config.image_token_id)
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        self.tile = int(config.vision_config.image_size)
        self.patch = int(config.vision_config.patch_size)
        self.max_tiles = int(str(config.vision_aspect_ratio).removeprefix("anyres_max_"))

    def plan(self, width: int, height: int) -> AnyresPlan:
        return anyres_plan(width, height, self.pinpoints, self.tile, self.patch, self.max_tiles)

    def prepare(self, image, prompt: str, device: torch.device, dtype: torch.dtype,
                system: str | None = None) -> tuple[dict, ImageLayout]:
        inputs = self.processor(text=self.chat_text(prompt, system), images=image, return_tensors="pt")
        input_ids = inputs["input_ids"]
        positions = torch.nonzero(input_ids[0] == self.image_token_id).flatten().tolist()
        layout = onevision_layout(self.plan(image.width, image.height), positions)
        model_inputs = {
            "input_ids": input_ids.to(device),
            "pixel_values": inputs["pixel_values"].to(device=device, dtype=dtype),
            "image_sizes": inputs["image_sizes"].to(device),
            "batch_num_images": inputs["batch_num_images"].to(device),
        }
        return model_inputs, layout

    def encode_image(self, model, inputs: dict) -> object:
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                                  batch_num_images=inputs.get("batch_num_images"),
                                                  vision_aspect_ratio=f"anyres_max_{self.max_tiles}", return_dict=True)

    # ---- the test checkpoint from the real config ------------------------------------------------
    @classmethod
    def fixture_processor(cls, fixture: Fixture):
        options = {k: v for k, v in fixture.processor.items() if k in PROCESSOR_OPTIONS}
        return image_only_processor(cls.image_processor(fixture.preprocessor), standin_tokenizer(fixture),
                                    fixture.chat_template, **options)

    @classmethod
    def fixture_parts(cls, fixture: Fixture, text_layers: int = 1, vision_layers: int | None = None):
        """The real config with the decoder cut to ``text_layers`` and the SigLIP tower to what its feature
        layer needs (``vision_feature_layer`` -1: one layer); the real preprocessing."""
        from transformers import LlavaOnevisionConfig

        raw = drop_dtypes(cut_text_layers(fixture.config, text_layers))
        raw.pop("architectures", None)
        layer = raw.get("vision_feature_layer", -1)
        needed = max(1, -min(layer if isinstance(layer, list) else [layer]))
        raw["vision_config"]["num_hidden_layers"] = vision_layers or needed
        return LlavaOnevisionConfig(**raw), cls.fixture_processor(fixture)
