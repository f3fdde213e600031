"""Traces of layouts with several grids (tiles + a global view): what the engine writes, what loading
checks and what the figures draw (the primary grid), on a real decode whose 576 image tokens are
re-described as a 12×12 global view followed by an 18×24 tile."""

import numpy as np
import pytest

from halviz.engine.batch import _grid_meta
from halviz.engine.decode import Decoder
from halviz.models.families import Grid, ImageLayout
from halviz.trace import Trace, TraceFormatError
from halviz.viz.common import key_label
from halviz.viz.patches import attention_overlay, kept_mask_figure, patch_values


def two_grid_layout(positions, image_size=(400, 300)) -> ImageLayout:
    def boxes(rows, cols):  # an even grid over the whole upload
        w, h = image_size
        out = np.empty((rows, cols, 4), dtype=np.float32)
        out[..., 0], out[..., 2] = (np.arange(cols) * w / cols)[None], (np.arange(1, cols + 1) * w / cols)[None]
        out[..., 1], out[..., 3] = (np.arange(rows) * h / rows)[:, None], (np.arange(1, rows + 1) * h / rows)[:, None]
        return out

    grids = (Grid("global", tuple(range(144)), 12, 12, boxes(12, 12)),
             Grid("tile 0", tuple(range(144, 576)), 18, 24, boxes(18, 24)))
    return ImageLayout(tuple(positions), grids, image_size)


@pytest.fixture(scope="module")
def traced(tiny_models):
    from PIL import Image

    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8))
    trace = Decoder(tiny_models["llava-1.5"], photo, max_new_tokens=3).run_to_end()
    layout = two_grid_layout(trace.meta["image_positions"])
    meta = dict(trace.meta, grid=[12, 12], patch_boxes=layout.primary.boxes.reshape(-1, 4).tolist(),
                **_grid_meta(layout))
    return Trace(meta, trace.arrays), layout


def test_single_grid_layouts_add_nothing_to_the_trace():
    layout = ImageLayout.single(range(5, 9), 2, 2, np.zeros((2, 2, 4), dtype=np.float32), (10, 10))
    assert _grid_meta(layout) == {}


def test_two_grids_are_written_and_survive_a_round_trip(traced, tmp_path):
    trace, layout = traced
    assert trace.meta["grid_index"] == list(range(144))
    assert [g["name"] for g in trace.meta["grids"]] == ["global", "tile 0"]
    assert trace.image_tokens == 576 and trace.arrays["image_attn"].shape[-1] == 576
    trace.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t.npz")
    assert back.meta["grids"][1]["index"] == list(range(144, 576))
    np.testing.assert_array_equal(back.grid_index(), np.arange(144))


def test_figures_draw_the_primary_grid(traced):
    trace, layout = traced
    values = patch_values(trace, 1)
    np.testing.assert_allclose(values, trace.arrays["image_attn"][1].astype(np.float32).mean(0)[:144])
    assert "12×12" in attention_overlay(trace, 1).layout.title.text
    kept = np.zeros(576)
    kept[:10] = 1
    z = kept_mask_figure(trace, kept, "kept").data[0].z
    assert np.asarray(z, dtype=float).sum() == 10


def test_hover_names_the_grid_of_a_position(traced):
    trace, _ = traced
    positions = trace.meta["image_positions"]
    assert key_label(trace, positions[13]) == "global r1 c1"
    assert key_label(trace, positions[144 + 25]) == "tile 0 r1 c1"


@pytest.mark.parametrize("damage", [
    lambda m: m.update(grid_index=[9999] * 144),
    lambda m: m.update(grid_index=list(range(100))),
    lambda m: m["grids"][1].update(index=list(range(10))),
    lambda m: m["grids"][0].update(grid=[12, -1]),
])
def test_damaged_grid_metadata_is_refused(traced, tmp_path, damage):
    import copy

    trace, _ = traced
    meta = copy.deepcopy(trace.meta)
    damage(meta)
    Trace(meta, trace.arrays).save(tmp_path / "bad")
    with pytest.raises(TraceFormatError):
        Trace.load(tmp_path / "bad.npz")
