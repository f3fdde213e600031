"""Issue 28 (B4, B6): what the debugger draws has a bounded size whatever the trace or upload: the
"tiles in place" answer of a crafted many-grid trace is drawn in blocks of patches, and the patch picker
of a 40000×1 upload keeps a clickable short side."""

import numpy as np
import pytest

from halviz import viz
from halviz.trace import FORMAT, Trace
from halviz.viz import grid_views
from halviz.viz.grid_views import MAX_DRAWN_CELLS, TILES_IN_PLACE
from halviz.viz.pickers import PICKER_MIN_SIDE, PICKER_SIDE, patch_picker, patch_picker_image

MB = 2**20


def many_tiles_trace(tiles: int = 16, side: int = 64, cell: int = 4) -> Trace:
    """``tiles`` tile grids of side × side patches in a row, a global view of the same shape under them:
    the crafted trace whose every "tiles in place" redraw was many megabytes."""
    grids, n = [], 0
    width, height = tiles * side * cell, side * cell
    for t in range(tiles + 1):
        name = f"tile {t}" if t < tiles else "global"
        scale_x = cell if t < tiles else cell * tiles
        x0 = t * side * cell if t < tiles else 0
        boxes = [[x0 + c * scale_x, r * cell, x0 + (c + 1) * scale_x, (r + 1) * cell]
                 for r in range(side) for c in range(side)]
        grids.append({"name": name, "grid": [side, side], "index": list(range(n, n + side * side)),
                      "patch_boxes": boxes})
        n += side * side
    rng = np.random.default_rng(0)
    meta = {"format": FORMAT, "num_steps": 1, "texts": ["A"], "finish_reason": "eos", "grid": [side, side],
            "patch_boxes": grids[-1]["patch_boxes"], "grid_index": grids[-1]["index"], "grids": grids,
            "image_positions": list(range(n)), "prompt_len": n + 1, "image_size": [width, height],
            "num_layers": 1, "num_heads": 1, "head_layers": [], "methods": []}
    return Trace(meta, {"token_ids": np.zeros(1, np.int64),
                        "image_attn": rng.random((1, 1, n)).astype(np.float32) / n})


def test_tiles_in_place_is_drawn_in_blocks_when_there_are_too_many_cells(monkeypatch):
    trace = many_tiles_trace(tiles=15)
    assert TILES_IN_PLACE in [v for _, v in viz.view_choices(trace)]
    capped = viz.attention_overlay(trace, 0, view=TILES_IN_PLACE)
    drawn = sum(np.asarray(h.z).size for h in capped.data if h.type == "heatmap")
    assert drawn <= 1.1 * MAX_DRAWN_CELLS  # 16 grids of 64×64 = 65,536 patches, drawn in 2×2 blocks
    assert "each cell drawn is the mean of 2×2 patches" in capped.layout.title.text
    size = len(capped.to_json())
    monkeypatch.setattr(grid_views, "MAX_DRAWN_CELLS", 10**9)
    full = len(viz.attention_overlay(trace, 0, view=TILES_IN_PLACE).to_json())
    assert size < full / 2.5 and size < 1.5 * MB, (size, full)  # bounded by MAX_DRAWN_CELLS, whatever the grids


def test_each_block_shows_the_mean_of_its_patches():
    trace = many_tiles_trace(tiles=15, side=64)
    fig = viz.attention_overlay(trace, 0, view=TILES_IN_PLACE)
    heatmaps = [h for h in fig.data if h.type == "heatmap"]
    tile0, grid = heatmaps[0], trace.meta["grids"][0]
    values = trace.arrays["image_attn"][0, 0][grid["index"]].reshape(64, 64)
    z, custom = np.asarray(tile0.z, dtype=np.float64), np.asarray(tile0.customdata)
    assert z.shape == (32, 32)
    assert z[3, 5] == pytest.approx(values[6:8, 10:12].mean(), rel=1e-5)
    assert custom[3, 5].tolist() == [6, 10, 7, 11]  # first row, first col, last row, last col
    assert list(tile0.x[:3]) == [0, 8, 16] and tile0.x[-1] == 64 * 4  # the blocks sit where their patches do
    assert "their mean" in tile0.hovertemplate


def test_a_few_tiles_are_still_drawn_cell_for_cell():
    trace = many_tiles_trace(tiles=2, side=16)
    fig = viz.attention_overlay(trace, 0, view=TILES_IN_PLACE)
    assert all(np.asarray(h.z).shape == (16, 16) for h in fig.data if h.type == "heatmap")
    assert "each cell drawn is" not in fig.layout.title.text


def strip_trace(width: int, height: int, cols: int = 4) -> Trace:
    boxes = [[c * width / cols, 0, (c + 1) * width / cols, height] for c in range(cols)]
    meta = {"format": FORMAT, "num_steps": 1, "texts": ["A"], "grid": [1, cols], "image_size": [width, height],
            "patch_boxes": boxes, "num_layers": 1, "num_heads": 1, "head_layers": [], "methods": []}
    return Trace(meta, {"token_ids": np.zeros(1, np.int64), "image_attn": np.ones((1, 1, cols), np.float32)})


@pytest.mark.parametrize("size", [(40_000, 1), (1, 40_000), (3000, 2)])
def test_the_patch_picker_has_a_minimum_side(size):
    trace = strip_trace(*size) if size[0] > size[1] else strip_trace(*size, cols=1)
    picker = patch_picker(trace)
    picture = patch_picker_image(trace, np.ones(trace.meta["grid"][1]))
    assert picture.size == (picker.width, picker.height)
    assert min(picture.size) >= PICKER_MIN_SIDE and max(picture.size) == PICKER_SIDE
    # A click anywhere in a cell's drawn box still picks that cell.
    for col in range(trace.meta["grid"][1]):
        x0, y0, x1, y1 = picker.cell_box(0, col)
        assert picker.patch_at((x0 + x1) / 2, (y0 + y1) / 2) == (0, col)


def test_an_ordinary_picture_keeps_its_aspect():
    picker = patch_picker(strip_trace(800, 600))
    assert (picker.width, picker.height) == (800, 600) and picker.y_scale is None
