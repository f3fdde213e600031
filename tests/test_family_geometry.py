"""Image layouts of the tiled and dynamic-resolution families against their real processors.

No model weights: each family is bound to its stored hub config (a config object, no tensors) and
the real processor built from the stored preprocessing. The upload is a colour ramp (red = x,
green = y), so the mean colour of the pixels the processor hands to any one image token says where
in the upload those pixels came from; every token's box must be centred there. Which pixels feed
which token is read from the model's own rules (frames in sequence order, pixel shuffle row-major),
never from the layout under test.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from halviz.models.families.base import Fixture

UPLOADS = [(300, 300), (640, 480), (200, 700), (2000, 100), (37, 23)]


def ramp(width: int, height: int) -> Image.Image:
    """Red encodes x, green y (pixel centres), blue constant: a linear signal a resize keeps."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    rgb = np.empty((height, width, 3), dtype=np.float64)
    rgb[..., 0] = x[None, :]
    rgb[..., 1] = y[:, None]
    rgb[..., 2] = 0.5
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8))


def where_from(pixels: np.ndarray, mean, std, width: int, height: int) -> tuple[float, float]:
    """Upload coordinates (x, y) that a block of normalised (3, h, w) pixels came from, on average."""
    colour = pixels.reshape(3, -1).mean(axis=1) * np.asarray(std) + np.asarray(mean)
    return colour[0] * width, colour[1] * height


def bind(family, fixture: Fixture, processor):
    """The family bound to the real config (no weights) and a processor."""
    from transformers import AutoConfig, GenerationConfig

    raw = {k: v for k, v in fixture.config.items() if not k.startswith("_")}
    config = AutoConfig.for_model(**raw)
    return family(SimpleNamespace(config=config, generation_config=GenerationConfig()), processor)


def centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], axis=-1)


def assert_grid_covers(boxes: np.ndarray, width: int, height: int):
    """Boxes of a grid over the whole upload: edges at 0 and the size, each column/row touching the next."""
    assert boxes[:, 0, 0].max() == 0 and boxes[0, :, 1].max() == 0
    assert np.allclose(boxes[:, -1, 2], width) and np.allclose(boxes[-1, :, 3], height)
    assert np.allclose(boxes[:, 1:, 0], boxes[:, :-1, 2]) and np.allclose(boxes[1:, :, 1], boxes[:-1, :, 3])


# ---- SmolVLM (Idefics3) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smolvlm():
    from halviz.models.families.smolvlm import SmolVLM

    fixture = Fixture.load("HuggingFaceTB/SmolVLM-256M-Instruct")
    return bind(SmolVLM, fixture, SmolVLM.fixture_processor(fixture))


def test_smolvlm_pixel_shuffle_folds_square_blocks_row_major():
    """The connector's pixel shuffle: output token (i, j) holds the s×s patches of block (i, j)."""
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    side, s = 8, 4
    patches = torch.arange(side * side, dtype=torch.float64).reshape(1, side * side, 1)
    shuffled = Idefics3Connector.pixel_shuffle(None, patches, scale_factor=s)[0]  # (tokens, s*s)
    for token in range(shuffled.shape[0]):
        i, j = divmod(token, side // s)
        block = {r * side + c for r in range(i * s, i * s + s) for c in range(j * s, j * s + s)}
        assert set(shuffled[token].long().tolist()) == block


@pytest.mark.parametrize("budget", ["default", "global", "2x2"])
@pytest.mark.parametrize("size", UPLOADS)
def test_smolvlm_layout_matches_the_processor(smolvlm, size, budget):
    smolvlm = smolvlm.with_budget(budget)  # image-token budgets: the same checks at every one
    width, height = size
    processor = smolvlm.processor
    image_processor = processor.image_processor
    inputs, layout = smolvlm.prepare(ramp(width, height), "describe", torch.device("cpu"), torch.float32)
    ids = inputs["input_ids"][0]
    frames = inputs["pixel_values"][0].numpy()
    _, rows, cols = image_processor.get_number_of_image_patches(height, width)  # transformers' own count
    side = smolvlm.side
    assert frames.shape[0] == rows * cols + 1
    image_at = torch.nonzero(ids == smolvlm.image_token_id).flatten().tolist()
    assert list(layout.positions) == image_at and len(image_at) == (rows * cols + 1) * side * side
    # Every tile's tokens follow its <row_r_col_c> marker; the global view's follow <global-img>.
    tok = processor.tokenizer
    for frame in range(frames.shape[0]):
        before = int(ids[image_at[frame * side * side] - 1])
        marker = "<global-img>" if frame == rows * cols else f"<row_{frame // cols + 1}_col_{frame % cols + 1}>"
        assert before == tok.convert_tokens_to_ids(marker)
    names = [g.name for g in layout.grids]
    assert names == (["global", f"tiles {rows}×{cols}"] if rows else ["image"])
    if rows:
        assert (layout.grids[1].rows, layout.grids[1].cols) == (rows * side, cols * side)
    step = frames.shape[-1] // side
    mean, std = image_processor.image_mean, image_processor.image_std
    tolerance = 1.0 + max(width, height) / 255  # 8-bit colour steps, plus resampling at the borders
    for grid in layout.grids:
        assert sorted(grid.index) == sorted(set(grid.index))
        assert_grid_covers(grid.boxes, width, height)
        want = centres(grid.boxes).reshape(-1, 2)
        for cell, k in enumerate(grid.index):  # k: the k-th image token of the sequence
            frame, local = divmod(k, side * side)
            i, j = divmod(local, side)
            block = frames[frame, :, i * step:(i + 1) * step, j * step:(j + 1) * step]
            got = where_from(block, mean, std, width, height)
            assert abs(got[0] - want[cell, 0]) <= tolerance and abs(got[1] - want[cell, 1]) <= tolerance, (
                grid.name, cell, got, want[cell])


def test_smolvlm_text_only_prompt_drops_the_whole_image_block(smolvlm):
    inputs, layout = smolvlm.prepare(ramp(640, 480), "describe", torch.device("cpu"), torch.float32)
    text_only = smolvlm.text_only_ids(inputs["input_ids"][0], layout)
    plain = smolvlm.processor.tokenizer(smolvlm.chat_text("describe").replace("<image>", ""),
                                        add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    assert text_only.tolist() == plain.tolist()


# ---- Qwen2.5-VL ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen():
    from halviz.models.families.qwen2_5_vl import Qwen2_5_VL

    fixture = Fixture.load("Qwen/Qwen2.5-VL-3B-Instruct")
    return bind(Qwen2_5_VL, fixture, Qwen2_5_VL.fixture_processor(fixture))


@pytest.mark.parametrize("budget", ["default", "64"])
@pytest.mark.parametrize("size", [(448, 448), (500, 333), (200, 700), (37, 23), (3000, 2000)])
def test_qwen_layout_matches_the_processor(qwen, size, budget):
    from halviz.models.families.qwen2_5_vl import MAX_PIXELS

    qwen = qwen.with_budget(budget)

    width, height = size
    image_processor = qwen.processor.image_processor
    inputs, layout = qwen.prepare(ramp(width, height), "describe", torch.device("cpu"), torch.float32)
    ids = inputs["input_ids"][0]
    t, gh, gw = inputs["image_grid_thw"][0].tolist()
    merge, patch = image_processor.merge_size, image_processor.patch_size
    assert t == 1 and (layout.rows, layout.cols) == (gh // merge, gw // merge)
    assert gh * gw * patch * patch <= MAX_PIXELS  # halviz's cap holds, whatever the upload
    image_at = torch.nonzero(ids == qwen.image_token_id).flatten().tolist()
    assert list(layout.positions) == image_at and len(image_at) == gh * gw // merge**2
    assert inputs["mm_token_type_ids"][0].nonzero().flatten().tolist() == image_at
    assert int(ids[image_at[0] - 1]) == qwen.vision_start_id and int(ids[image_at[-1] + 1]) == qwen.vision_end_id
    assert_grid_covers(layout.boxes, width, height)
    # The merger folds each run of merge² consecutive patches into one token, token k row-major.
    patches = inputs["pixel_values"].numpy().reshape(-1, merge * merge, 3, image_processor.temporal_patch_size,
                                                     patch, patch)
    mean, std = image_processor.image_mean, image_processor.image_std
    tolerance = 1.0 + max(width, height) / 255
    want = centres(layout.boxes).reshape(-1, 2)
    for k in range(patches.shape[0]):
        block = patches[k, :, :, 0].transpose(1, 0, 2, 3)  # (3, merge², patch, patch)
        got = where_from(block, mean, std, width, height)
        assert abs(got[0] - want[k, 0]) <= tolerance and abs(got[1] - want[k, 1]) <= tolerance, (k, got, want[k])


def test_qwen_positions_equal_the_model_rope_index(qwen):
    """M-RoPE positions of an image row equal transformers' get_rope_index; a text-only row counts 0..n-1."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    class RopeIndex:  # get_rope_index needs only the config and its helper
        config = qwen.model_config
        get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids
        get_rope_index = Qwen2_5_VLModel.get_rope_index

    for size in [(448, 448), (500, 333)]:
        inputs, layout = qwen.prepare(ramp(*size), "describe", torch.device("cpu"), torch.float32)
        ids = inputs["input_ids"]
        want, _ = RopeIndex().get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
        assert torch.equal(qwen.prompt_positions(ids[0], inputs), want[:, 0])
        text_only = qwen.text_only_ids(ids[0], layout)
        n = int(text_only.shape[0])
        assert torch.equal(qwen.prompt_positions(text_only, None), torch.arange(n).expand(3, n))
        plain = qwen.processor.tokenizer(qwen.chat_text("describe").replace("<|vision_start|><|image_pad|><|vision_end|>", ""),
                                         add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        assert text_only.tolist() == plain.tolist()


# ---- LLaVA-OneVision ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onevision():
    from halviz.models.families.llava_onevision import LlavaOnevision

    fixture = Fixture.load("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    return bind(LlavaOnevision, fixture, LlavaOnevision.fixture_processor(fixture))


@pytest.mark.parametrize("budget", ["default", "anyres_max_1"])
@pytest.mark.parametrize("size", [(384, 384), (500, 333), (200, 700), (37, 23), (3000, 2000), (1600, 300)])
def test_onevision_layout_matches_the_processor_and_the_model_packing(onevision, size, budget):
    """The model's own pack_image_features (unpad, shrink, newlines) run on stand-in features that hold
    each patch's mean ramp colour: every grid token's colour must point inside its box, at its centre."""
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    onevision = onevision.with_budget(budget)
    width, height = size
    image_processor = onevision.processor.image_processor
    inputs, layout = onevision.prepare(ramp(width, height), "describe", torch.device("cpu"), torch.float32)
    ids = inputs["input_ids"][0]
    image_at = torch.nonzero(ids == onevision.image_token_id).flatten().tolist()
    assert list(layout.positions) == image_at  # the processor's count equals the layout's
    frames = inputs["pixel_values"][0].double()  # (tiles + 1, 3, 384, 384), base view first
    side, patch = onevision.tile // onevision.patch, onevision.patch
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float64)[:, None, None]
    colour = frames * std + mean  # (frames, 3, H, W) in 0..1
    cells = colour[:, :2, :side * patch, :side * patch].reshape(-1, 2, side, patch, side, patch).mean(dim=(3, 5))
    features = cells.permute(0, 2, 3, 1).reshape(frames.shape[0], side * side, 2)  # patch-mean (x, y) fractions

    class Packer:  # pack_image_features needs only the config
        config = onevision.model_config

    packed, lengths = LlavaOnevisionModel.pack_image_features(
        Packer(), [features], inputs["image_sizes"], image_newline=torch.full((2,), float("nan"), dtype=torch.float64),
        vision_aspect_ratio=onevision.processor.vision_aspect_ratio if budget != "default"
        else onevision.model_config.vision_aspect_ratio)
    packed = packed[0]
    assert packed.shape[0] == len(image_at)
    in_grid = sorted(i for g in layout.grids for i in g.index)
    newlines = sorted(set(range(len(image_at))) - set(in_grid))
    assert torch.isnan(packed[newlines]).all() and not torch.isnan(packed[in_grid]).any()
    plan = onevision.plan(width, height)
    _, _, new_w, new_h = plan.pasted
    shrunk = plan.grid != plan.kept[2:]  # bilinear pooling across tile seams (6 px gaps) blurs the ramp a little
    tolerance = 1.0 + max(width, height) / 255 + (0.5 * patch * max(width / new_w, height / new_h) if shrunk else 0)
    for grid in layout.grids:
        got = packed[list(grid.index)].numpy() * np.array([width, height])
        want = centres(grid.boxes).reshape(-1, 2)
        boxes = grid.boxes.reshape(-1, 4)
        inside = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        if grid.name.startswith("tiles"):  # cells that reach into the canvas padding see black there
            inside &= (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < width) & (boxes[:, 3] < height)
        err = np.abs(got - want)[inside]
        assert inside.sum() >= 0.5 * len(boxes), grid.name
        assert err.max() <= tolerance, (grid.name, float(err.max()), tolerance)
