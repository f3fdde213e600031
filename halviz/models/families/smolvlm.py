"""SmolVLM (Idefics3): image splitting into square tiles plus a global view, pixel shuffle, 1-D RoPE.

SmolVLM-256M-Instruct (SigLIP-B/16 at 512 + SmolLM2-135M): the processor resizes the upload so its
longest edge is ``size.longest_edge`` (2048; small uploads are enlarged), then to whole multiples of
``max_image_size.longest_edge`` (512) on both sides (the aspect ratio bends a little), cuts that into
rows × cols tiles of 512×512 and appends the whole picture squashed to 512×512 as a global view.
Each 512×512 frame gives 32×32 patches of 16 px, which the connector's pixel shuffle (scale factor 4)
folds into 8×8 tokens of 64×64 px: 64 ``<image>`` tokens per frame, up to 17 frames (1088 tokens).

The prompt spells the frames out: ``<fake_token_around_image><row_r_col_c>`` + 64 image tokens per
tile, a newline after every row of tiles, then ``\\n<fake_token_around_image><global-img>`` + 64
image tokens + ``<fake_token_around_image>``. Both resizes are plain rescalings, so a token's box in
the upload is its 64×64 square scaled back by (upload / resized) on each axis.

Layout: ``grids[0]`` (primary) is the 8×8 global view; ``grids[1]`` the tiles stitched into one
(rows·8)×(cols·8) grid covering the upload, each tile where it was cut (finer: 4× the global view's
tokens per side for a 4×4 split). An upload that needs no splitting (only possible when resizing is
off) has the global view alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from halviz.models.families.base import Family, processor_fields, Fixture, Grid, ImageLayout, ImagePlan
from halviz.models.families.standin import cut_text_layers, drop_dtypes, standin_tokenizer

IMAGE_TOKEN = "<image>"
AROUND_IMAGE = "<fake_token_around_image>"
MAX_IMAGE_SIZE = 4096  # the processor's absolute cap on the first resize (transformers' MAX_IMAGE_SIZE)
# Image-token budgets: "global" turns image splitting off (the 512² global view alone, 64 tokens); "NxN"
# caps the first resize's longest edge at N tiles, so at most N×N tiles + the global view.
SPLIT_BUDGETS = {"2x2": 2, "3x3": 3}


# ---- where the processor puts the upload -----------------------------------------------------------------
@dataclass(frozen=True)
class SplitPlan:
    """The processor's frames for one upload: ``rows`` × ``cols`` tiles of ``tile`` px cut from the
    upload resized to ``resized`` (width, height), plus the global view (rows == cols == 0: global only)."""

    width: int
    height: int
    resized: tuple[int, int]
    rows: int
    cols: int
    tile: int

    @property
    def frames(self) -> int:
        return self.rows * self.cols + 1


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    # As Idefics3's image processor: the longest edge becomes max_len, the other side even.
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        height += height % 2
    else:
        height = max_len
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def _to_tile_multiples(height: int, width: int, tile: int) -> tuple[int, int]:
    # As ``resize_for_vision_encoder``: the long side up to a multiple of the tile, the short side
    # from the aspect ratio, then up to a multiple too.
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def split_plan(image_processor, width: int, height: int) -> SplitPlan:
    """The frames Idefics3's image processor makes of a ``width`` × ``height`` upload."""
    tile = int(_field(image_processor.max_image_size, "longest_edge"))
    h, w = height, width
    if image_processor.do_resize:
        longest = _field(image_processor.size, "longest_edge")
        if longest:
            h, w = _rescale_to_max_len(h, w, int(longest))
            h, w = _scale_below(h, w, MAX_IMAGE_SIZE)
        else:
            h, w = int(_field(image_processor.size, "height")), int(_field(image_processor.size, "width"))
    if not image_processor.do_image_splitting:
        return SplitPlan(width, height, (tile, tile), 0, 0, tile)
    h, w = _to_tile_multiples(h, w, tile)
    if h > tile or w > tile:
        return SplitPlan(width, height, (w, h), h // tile, w // tile, tile)
    return SplitPlan(width, height, (w, h), 0, 0, tile)


def _field(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _boxes(edges_x: np.ndarray, edges_y: np.ndarray, width: int, height: int) -> np.ndarray:
    """(rows, cols, 4) boxes from column and row edges (already in upload pixels), clipped."""
    ex = np.clip(edges_x, 0, width)
    ey = np.clip(edges_y, 0, height)
    boxes = np.empty((len(ey) - 1, len(ex) - 1, 4), dtype=np.float32)
    boxes[..., 0] = ex[None, :-1]
    boxes[..., 2] = ex[None, 1:]
    boxes[..., 1] = ey[:-1, None]
    boxes[..., 3] = ey[1:, None]
    return boxes


def smolvlm_layout(plan: SplitPlan, positions, side: int) -> ImageLayout:
    """The layout of one upload's image tokens: ``positions`` are their sequence indices (ascending),
    ``side`` the tokens per side of a frame (image_size / patch_size / scale_factor)."""
    per_frame = side * side
    positions = tuple(int(p) for p in positions)
    if len(positions) != plan.frames * per_frame:
        raise ValueError(f"the prompt holds {len(positions)} image tokens but the processor made {plan.frames} "
                         f"frames of {per_frame}; this checkpoint's processor and vision tower disagree")
    step = plan.tile / side  # a token's square in the resized picture
    scale_x, scale_y = plan.width / plan.resized[0], plan.height / plan.resized[1]
    size = (plan.width, plan.height)
    global_boxes = _boxes(np.arange(side + 1) * step * plan.width / plan.tile,
                          np.arange(side + 1) * step * plan.height / plan.tile, *size)
    global_index = tuple(range(plan.rows * plan.cols * per_frame, plan.frames * per_frame))
    global_grid = Grid("global", global_index, side, side, global_boxes)
    if plan.rows == 0:
        return ImageLayout(positions, (Grid("image", global_index, side, side, global_boxes),), size)
    rows, cols = plan.rows * side, plan.cols * side
    r, c = np.divmod(np.arange(rows * cols), cols)  # stitched grid cell, row-major
    frame = (r // side) * plan.cols + c // side
    index = tuple(int(i) for i in frame * per_frame + (r % side) * side + c % side)
    tiles_boxes = _boxes(np.arange(cols + 1) * step * scale_x, np.arange(rows + 1) * step * scale_y, *size)
    tiles = Grid(f"tiles {plan.rows}×{plan.cols}", index, rows, cols, tiles_boxes)
    return ImageLayout(positions, (global_grid, tiles), size)


# ---- the family --------------------------------------------------------------------------------------
class SmolVLM(Family):
    family = "smolvlm"
    title = "SmolVLM (Idefics3: SigLIP + SmolLM2, image splitting)"
    hub_notes = {"HuggingFaceTB/SmolVLM-256M-Instruct": "hub, ~0.5 GB; up to 16 tiles + a global view"}
    hub_ids = tuple(hub_notes)
    budgets = ("global", *SPLIT_BUDGETS, "default")

    @classmethod
    def budget_label(cls, name: str) -> str:
        if name == "global":
            return "global view only (64 tokens per 512² frame)"
        if name in SPLIT_BUDGETS:
            return f"up to {name.replace('x', '×')} tiles + the global view"
        return "the checkpoint's own (up to 4×4 tiles + the global view on the hub)"

    def _apply_budget(self, name: str) -> None:
        image_processor = self.processor.image_processor
        if name == "global":
            image_processor.do_image_splitting = False
            return
        tile = int(_field(image_processor.max_image_size, "longest_edge"))
        longest = min(SPLIT_BUDGETS[name] * tile, int(_field(image_processor.size, "longest_edge") or MAX_IMAGE_SIZE))
        image_processor.size = type(image_processor.size)(longest_edge=longest) if not isinstance(
            image_processor.size, dict) else {"longest_edge": longest}

    def image_plan(self, width: int, height: int) -> ImagePlan:
        plan = split_plan(self.processor.image_processor, width, height)
        grids = [("global" if plan.rows else "image", self.side, self.side)]
        if plan.rows:
            grids.append((f"tiles {plan.rows}×{plan.cols}", plan.rows * self.side, plan.cols * self.side))
        return ImagePlan(plan.frames * self.side * self.side, tuple(grids))

    @classmethod
    def accepts(cls, config: dict) -> bool:
        text_type = (config.get("text_config") or {}).get("model_type", "llama")  # Idefics3Config's default
        return config.get("model_type") == "idefics3" and text_type == "llama"

    @classmethod
    def model_class(cls):
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    @classmethod
    def load_processor(cls, source: str, local: bool):
        # Explicitly the PIL image processor: AutoProcessor would pick the torchvision one when present.
        from transformers import AutoTokenizer, Idefics3ImageProcessorPil, Idefics3Processor

        image_processor = Idefics3ImageProcessorPil.from_pretrained(source, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        return Idefics3Processor.from_pretrained(source, image_processor=image_processor, tokenizer=tokenizer,
                                                 local_files_only=local)

    def __init__(self, model, processor):
        super().__init__(model, processor)
        config = self.model_config
        self.image_token_id = int(config.image_token_id)
        self.around_image_id = int(processor.tokenizer.convert_tokens_to_ids(AROUND_IMAGE))
        vision = config.vision_config
        self.side = int(vision.image_size) // int(vision.patch_size) // int(config.scale_factor)

    def prepare(self, image, prompt: str, device: torch.device, dtype: torch.dtype,
                system: str | None = None) -> tuple[dict, ImageLayout]:
        inputs = self.processor(text=self.chat_text(prompt, system), images=image, return_tensors="pt")
        input_ids = inputs["input_ids"]
        positions = torch.nonzero(input_ids[0] == self.image_token_id).flatten().tolist()
        plan = split_plan(self.processor.image_processor, image.width, image.height)
        if inputs["pixel_values"].shape[1] != plan.frames:
            raise ValueError(f"the processor made {inputs['pixel_values'].shape[1]} frames, halviz expected "
                             f"{plan.frames} ({plan.rows}×{plan.cols} tiles + global)")
        layout = smolvlm_layout(plan, positions, self.side)
        model_inputs = {
            "input_ids": input_ids.to(device),
            "pixel_values": inputs["pixel_values"].to(device=device, dtype=dtype),
            "pixel_attention_mask": inputs["pixel_attention_mask"].to(device),
        }
        return model_inputs, layout

    def text_only_ids(self, input_ids: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
        """The prompt without the whole image block: from the first ``<fake_token_around_image>`` to
        the last, with the tile markers and newlines between them (what ``<image>`` expanded to)."""
        around = torch.nonzero(input_ids == self.around_image_id).flatten()
        if len(around) < 2:
            return super().text_only_ids(input_ids, layout)
        first, last = int(around[0]), int(around[-1])
        return torch.cat([input_ids[..., :first], input_ids[..., last + 1:]], dim=-1)

    def encode_image(self, model, inputs: dict) -> object:
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                  pixel_attention_mask=inputs.get("pixel_attention_mask"),
                                                  return_dict=True)

    # ---- the test checkpoint from the real config ------------------------------------------------
    @classmethod
    def fixture_processor(cls, fixture: Fixture):
        """The real preprocessing (PIL image processor, image_seq_len, chat template) around a stand-in
        tokenizer with the real special tokens and ids."""
        from transformers import Idefics3ImageProcessorPil, Idefics3Processor

        fields = processor_fields(fixture.preprocessor)
        options = {k: v for k, v in fixture.processor.items() if k == "image_seq_len"}
        return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**fields), tokenizer=standin_tokenizer(fixture),
                                 chat_template=fixture.chat_template, **options)

    @classmethod
    def fixture_parts(cls, fixture: Fixture, text_layers: int = 1, vision_layers: int | None = None):
        """The real config with the decoder cut to ``text_layers`` and the vision tower to ``vision_layers``
        (default one: the connector reads its last hidden state); the real preprocessing."""
        from transformers import Idefics3Config

        raw = drop_dtypes(cut_text_layers(fixture.config, text_layers))
        raw.pop("architectures", None)
        raw["vision_config"]["num_hidden_layers"] = vision_layers or 1
        return Idefics3Config(**raw), cls.fixture_processor(fixture)
