"""Views of multi-grid traces (tiles plus a global view): every drawn cell shows the attention on the token
whose box lies there, tiles sit at their boxes, one colour scale, shares that match hand sums; single-grid
traces keep their one primary view. The traces are built by hand and pass the loader's checks."""

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from family_hand_grids import hand_onevision
from halviz import viz
from halviz.trace import FORMAT, Trace
from test_viz import make_trace

WIDTH, HEIGHT = 40, 20
# The upload's left and right halves are two 2×2 tiles of 10×10 cells, with a row-newline token (in no
# grid) between them; the global view is 2×2 cells of 20×10 over the whole upload, and the primary grid.
TILE_LEFT = {"name": "tile r0 c0", "index": [0, 1, 2, 3], "x": [0, 10, 20], "y": [0, 10, 20]}
NEWLINE = 4
TILE_RIGHT = {"name": "tile r0 c1", "index": [5, 6, 7, 8], "x": [20, 30, 40], "y": [0, 10, 20]}
GLOBAL = {"name": "global", "index": [9, 10, 11, 12], "x": [0, 20, 40], "y": [0, 10, 20]}
N_TOKENS, FIRST_IMAGE = 13, 2
# Attention of layer 0 at step 1 on each image token (out of all keys, so the shares are of the whole row).
LAYER0 = np.array([1, 2, 3, 4, 20, 5, 6, 7, 8, 9, 10, 11, 12], dtype=np.float64) / 200
LAYER1 = LAYER0[::-1].copy()


def hand_boxes(grid: dict) -> list[list[float]]:
    xs, ys = grid["x"], grid["y"]
    return [[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(len(ys) - 1) for c in range(len(xs) - 1)]


def grid_meta(grid: dict) -> dict:
    return {"name": grid["name"], "grid": [len(grid["y"]) - 1, len(grid["x"]) - 1], "index": grid["index"],
            "patch_boxes": hand_boxes(grid)}


def multigrid_trace(grids=(GLOBAL, TILE_LEFT, TILE_RIGHT), primary=GLOBAL, layer0=LAYER0, layer1=LAYER1,
                    n_tokens=N_TOKENS, size=(WIDTH, HEIGHT)) -> tuple[dict, dict]:
    steps, layers, heads = 2, 2, 2
    prompt_len = FIRST_IMAGE + n_tokens + 1
    image_attn = np.zeros((steps, layers, n_tokens), np.float32)
    image_attn[1, 0], image_attn[1, 1] = layer0, layer1
    image_attn[0] = 1 / (4 * n_tokens)
    meta = {
        "format": FORMAT, "num_steps": steps, "texts": ["A", " cat"], "finish_reason": "eos", "model": "hand-made",
        "family": "hand", "prompt": "Describe.", "prompt_len": prompt_len,
        "prompt_tokens": ["<s>", "USER"] + ["<image>"] * n_tokens + ["ASSISTANT"],
        "image_positions": list(range(FIRST_IMAGE, FIRST_IMAGE + n_tokens)),
        "grid": [len(primary["y"]) - 1, len(primary["x"]) - 1], "patch_boxes": hand_boxes(primary),
        "image_size": list(size), "grid_index": primary["index"], "grids": [grid_meta(g) for g in grids],
        "num_layers": layers, "num_heads": heads, "head_layers": [1],
        "segments": ["bos", "system", "image", "prompt", "generated"], "methods": [],
        "segment_ids_prompt": [0, 1] + [2] * n_tokens + [3],
    }
    arrays = {
        "token_ids": np.array([7, 8], np.int64), "top_ids": np.array([[7, 8], [8, 7]], np.int32),
        "top_probs": np.array([[0.6, 0.3], [0.7, 0.2]], np.float32), "step_ms": np.ones(steps, np.float32),
        "image_attn": image_attn, "entropy": np.ones((steps, layers), np.float32),
        "segment_share": np.full((steps, layers, 5), 0.2, np.float32),
        "top_key_pos": np.zeros((steps, layers, 2), np.int32), "top_key_attn": np.zeros((steps, layers, 2), np.float32),
        "head_image_attn": np.stack([image_attn[:, 1:], image_attn[:, 1:] * 2], axis=2),
    }
    return meta, arrays


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Trace:
    """The hand-made trace as the loader returns it (so it passes every format check)."""
    folder = tmp_path_factory.mktemp("grids")
    Trace(*multigrid_trace()).save(folder / "hand")
    return Trace.load(folder / "hand.npz")


def heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def grid_of(heatmap: go.Heatmap, grids=(GLOBAL, TILE_LEFT, TILE_RIGHT)) -> dict:
    """The hand grid a heatmap's hover names."""
    named = [g for g in grids if heatmap.hovertemplate.startswith(g["name"] + ":")]
    assert len(named) == 1, heatmap.hovertemplate
    return named[0]


def token_at(grid: dict, x: float, y: float) -> int:
    """The image token whose box (in the hand layout) holds the point (x, y)."""
    boxes = np.asarray(hand_boxes(grid))
    inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
    assert inside.sum() == 1
    return grid["index"][int(np.flatnonzero(inside)[0])]


def assert_cells_show_their_tokens(heatmap: go.Heatmap, grid: dict, expected: np.ndarray) -> None:
    z = np.asarray(heatmap.z, dtype=np.float64)
    xs, ys = np.asarray(heatmap.x, dtype=np.float64), np.asarray(heatmap.y, dtype=np.float64)
    assert z.shape == (len(ys) - 1, len(xs) - 1)
    for r in range(z.shape[0]):
        for c in range(z.shape[1]):
            token = token_at(grid, (xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2)
            assert z[r, c] == pytest.approx(expected[token], rel=1e-6), (grid["name"], r, c)


def test_the_views_offered():
    meta, arrays = multigrid_trace()
    assert [v for _, v in viz.view_choices(Trace(meta, arrays))] == \
        ["primary", "tile r0 c0", "tile r0 c1", "tiles in place"]
    assert viz.view_choices(Trace(meta, arrays))[0][0] == "primary grid (global, 2×2 patches)"
    # Grids none of whose names says "tile": single views only, no mosaic.
    renamed = [dict(g, name=n) for g, n in ((GLOBAL, "global"), (TILE_LEFT, "crop a"), (TILE_RIGHT, "crop b"))]
    meta, arrays = multigrid_trace(grids=renamed, primary=renamed[0])
    assert [v for _, v in viz.view_choices(Trace(meta, arrays))] == ["primary", "crop a", "crop b"]
    fig = viz.attention_overlay(Trace(meta, arrays), 1, view=viz.TILES_IN_PLACE)
    assert not heatmaps(fig) and "no tile grids" in fig.layout.annotations[0].text


@pytest.mark.parametrize("view, drawn", [("primary", ["global"]), (None, ["global"]),
                                         ("tile r0 c1", ["tile r0 c1"]),
                                         ("tiles in place", ["tile r0 c0", "tile r0 c1", "global"])])
def test_each_cell_shows_the_attention_on_the_token_at_its_place(trace, view, drawn):
    fig = viz.attention_overlay(trace, 1, layer=0, view=view)
    assert [grid_of(h)["name"] for h in heatmaps(fig)] == drawn
    for heatmap in heatmaps(fig):
        assert_cells_show_their_tokens(heatmap, grid_of(heatmap), LAYER0)
    mean = viz.attention_overlay(trace, 1, view=view)  # the mean of the two layers, by hand
    for heatmap in heatmaps(mean):
        assert_cells_show_their_tokens(heatmap, grid_of(heatmap), (LAYER0 + LAYER1) / 2)
    single_head = viz.attention_overlay(trace, 1, layer=1, head=1, view=view)  # recorded as twice layer 1
    for heatmap in heatmaps(single_head):
        assert_cells_show_their_tokens(heatmap, grid_of(heatmap), LAYER1 * 2)


def test_tiles_sit_at_their_boxes_and_the_other_views_beside(trace):
    fig = viz.attention_overlay(trace, 1, layer=0, image=Image.new("RGB", (WIDTH, HEIGHT)),
                                view=viz.TILES_IN_PLACE)
    left, right, whole = heatmaps(fig)
    np.testing.assert_allclose(left.x, [0, 10, 20])
    np.testing.assert_allclose(right.x, [20, 30, 40])
    np.testing.assert_allclose(left.y, [0, 10, 20])
    np.testing.assert_allclose(right.y, [0, 10, 20])
    np.testing.assert_allclose(whole.x, [0, 20, 40])
    # The tiles share the first subplot; the global view has its own beside it; the picture under both.
    assert left.xaxis == right.xaxis == "x" and whole.xaxis == "x2"
    assert sorted(t.xaxis for t in fig.data if isinstance(t, go.Image)) == ["x", "x2"]
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]
    assert [a.text for a in fig.layout.annotations][:2] == ["tiles in place", "global 2×2"]
    outlines = sorted((s.x0, s.x1) for s in fig.layout.shapes)
    assert outlines == [(0, 20), (20, 40)]  # each tile's edge


def test_one_colour_scale_for_every_view_shown(trace):
    fig = viz.attention_overlay(trace, 1, layer=0, view=viz.TILES_IN_PLACE)
    shown_max = 12 / 200  # the largest of the tiles' and global view's tokens; the newline's 20 is not drawn
    assert [h.zmax for h in heatmaps(fig)] == pytest.approx([shown_max] * 3)
    assert [h.zmin for h in heatmaps(fig)] == [0.0] * 3
    assert [h.showscale for h in heatmaps(fig)] == [None, False, False]  # one colour bar
    assert "one colour scale" in fig.layout.title.text and f"{shown_max:.3g}" in fig.layout.title.text
    one = viz.attention_overlay(trace, 1, layer=0, view="tile r0 c1")
    assert heatmaps(one)[0].zmax == pytest.approx(8 / 200)  # alone, a grid uses its own max
    assert "this map's max, 0.04" in one.layout.title.text


def test_the_title_gives_each_views_share_and_the_tokens_in_no_grid(trace):
    text = viz.attention_overlay(trace, 1, layer=0, view=viz.TILES_IN_PLACE).layout.title.text
    # Hand sums: global (9+10+11+12)/200, left tile (1+2+3+4)/200, right (5+6+7+8)/200, newline 20/200.
    for part in ("global 21.0%", "tile r0 c0 5.0%", "tile r0 c1 13.0%", "no grid 10.0%",
                 "image tokens got 49% of the attention"):
        assert part in text, part
    assert "attention on the tiles in place (tile r0 c0: 2×2 patches; tile r0 c1: 2×2 patches), global 2×2 beside" in text
    # Every view of a multi-grid trace states the shares, the primary too.
    assert "tile r0 c0 5.0%" in viz.attention_overlay(trace, 1, layer=0).layout.title.text


def test_hover_names_the_grid_row_col_and_value(trace):
    fig = viz.attention_overlay(trace, 1, layer=0, view=viz.TILES_IN_PLACE)
    right = heatmaps(fig)[1]
    assert right.hovertemplate.startswith("tile r0 c1: patch row %{customdata[0]}, col %{customdata[1]}")
    assert "%{z:.4f}" in right.hovertemplate
    custom = np.asarray(right.customdata, dtype=np.float64)
    np.testing.assert_allclose(custom[1, 0, :2], [1, 0])  # row 1, col 0 of its own grid
    np.testing.assert_allclose(custom[1, 0, 2], (7 / 200) / (98 / 200))  # token 7's share of the image's


def test_kept_masks_follow_the_view(trace):
    kept = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=np.float64)  # every image token
    fig = viz.kept_mask_figure(trace, kept, "PruneHal", view=viz.TILES_IN_PLACE)
    assert [grid_of(h)["name"] for h in heatmaps(fig)] == ["tile r0 c0", "tile r0 c1", "global"]
    for heatmap in heatmaps(fig):
        assert_cells_show_their_tokens(heatmap, grid_of(heatmap), kept)
    assert "view: tiles in place (tile r0 c0: 2×2 patches; tile r0 c1: 2×2 patches)" in fig.layout.title.text
    # A mask over the primary grid alone draws on the primary view and says why not on another.
    primary_only = np.array([0, 1, 1, 0], dtype=np.float64)
    np.testing.assert_allclose(heatmaps(viz.kept_mask_figure(trace, primary_only, "x"))[0].z, [[0, 1], [1, 0]])
    refused = viz.kept_mask_figure(trace, primary_only, "x", view="tile r0 c0")
    assert not heatmaps(refused) and "primary view" in refused.layout.annotations[0].text


def test_a_view_the_trace_lacks_gives_a_message(trace):
    for fig in (viz.attention_overlay(trace, 1, view="tile r9 c9"),
                viz.kept_mask_figure(trace, np.ones(N_TOKENS), "x", view="<b>nope</b>")):
        assert not heatmaps(fig) and "has no view" in fig.layout.annotations[0].text
    assert "<b>" not in viz.kept_mask_figure(trace, np.ones(N_TOKENS), "x", view="<b>x</b>").layout.annotations[0].text


def test_a_single_grid_trace_offers_only_the_primary_and_draws_as_before():
    single = make_trace()
    assert viz.view_choices(single) == [("primary grid", "primary")]
    fig = viz.attention_overlay(single, 1, layer=0, view=viz.PRIMARY)
    assert [type(t).__name__ for t in fig.data] == ["Heatmap"] and "xaxis2" not in fig.layout
    assert fig.data[0].hovertemplate.startswith("patch row %{customdata[0]}")
    np.testing.assert_allclose(np.asarray(fig.data[0].z),
                               single.arrays["image_attn"][1, 0].astype(np.float64).reshape(2, 3))
    assert "share of the attention" not in fig.layout.title.text and "2×3 image patches" in fig.layout.title.text
    assert "no tile grids" in viz.attention_overlay(single, 1, view=viz.TILES_IN_PLACE).layout.annotations[0].text


def test_onevision_geometry_tiles_in_place_with_row_newlines(tmp_path):
    """LLaVA-OneVision's layout for a wide upload, from the processor's documented rules: a 27×27 base view,
    then the unpadded tile grid with a newline token after each of its rows."""
    width, height = 500, 250
    n, ((base_rows, base_cols, base_boxes), (rows, cols, tile_boxes)) = hand_onevision(width, height)
    base = list(range(base_rows * base_cols))
    tiles = [len(base) + r * (cols + 1) + c for r in range(rows) for c in range(cols)]

    def as_grid(name, rows_, cols_, boxes, index):
        return {"name": name, "grid": [rows_, cols_], "index": index, "patch_boxes": boxes.reshape(-1, 4).tolist()}

    values = np.random.default_rng(3).random(n) / n
    meta, arrays = multigrid_trace(layer0=values, layer1=values, n_tokens=n, size=(width, height))
    meta.update(grid=[base_rows, base_cols], patch_boxes=base_boxes.reshape(-1, 4).tolist(), grid_index=base,
                grids=[as_grid("base", base_rows, base_cols, base_boxes, base),
                       as_grid("tiles", rows, cols, tile_boxes, tiles)])
    Trace(meta, arrays).save(tmp_path / "ov")
    trace = Trace.load(tmp_path / "ov.npz")
    fig = viz.attention_overlay(trace, 1, layer=0, view=viz.TILES_IN_PLACE)
    mosaic, beside = heatmaps(fig)
    for heatmap, boxes, index in ((mosaic, tile_boxes, tiles), (beside, base_boxes, base)):
        z = np.asarray(heatmap.z, dtype=np.float64)
        xs, ys = np.asarray(heatmap.x), np.asarray(heatmap.y)
        cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
        flat = boxes.reshape(-1, 4)
        for r in range(z.shape[0]):
            for c in range(z.shape[1]):
                inside = ((flat[:, 0] <= cx[c]) & (cx[c] < flat[:, 2]) & (flat[:, 1] <= cy[r]) & (cy[r] < flat[:, 3]))
                assert inside.sum() == 1
                assert z[r, c] == pytest.approx(values[index[int(np.flatnonzero(inside)[0])]], rel=1e-5)
    newlines = sorted(set(range(n)) - set(base) - set(tiles))
    assert len(newlines) == rows
    text = fig.layout.title.text
    assert f"no grid {values[newlines].sum():.1%}" in text and f"tiles {values[tiles].sum():.1%}" in text
    assert f"base {values[base].sum():.1%}" in text


def test_every_grid_a_tile_draws_one_mosaic():
    meta, arrays = multigrid_trace(grids=(TILE_LEFT, TILE_RIGHT), primary=TILE_LEFT)
    fig = viz.attention_overlay(Trace(meta, arrays), 1, layer=0, view=viz.TILES_IN_PLACE)
    assert [grid_of(h)["name"] for h in heatmaps(fig)] == ["tile r0 c0", "tile r0 c1"]
    assert "xaxis2" not in fig.layout and "beside" not in fig.layout.title.text
    # The global view's tokens are in no grid here: the newline's 20 and 9 + 10 + 11 + 12, of 200.
    assert "no grid 31.0%" in fig.layout.title.text


def test_the_app_offers_the_view_picker_and_draws_the_chosen_view(tmp_path):
    """The app's own wiring: a replayed multi-grid trace shows the View picker, and the callback that picker
    triggers (called with the inputs the event passes, in their order) draws the tiles in place."""
    import base64
    import json

    import gradio as gr

    from halviz.methods import METHODS
    from halviz.models import load_model
    from halviz.ui.app import _layout
    from halviz.ui.controller import Controller, HalvizApp

    app = HalvizApp(["toy"], "toy", load_model, [], METHODS)
    with gr.Blocks() as demo:
        controller = Controller(app, _layout(app))
        controller.wire()
    panel = controller.ui.panel
    npz, _ = Trace(*multigrid_trace()).save(tmp_path / "tiles")
    shown = controller.replay({"path": str(npz), "orig_name": "tiles.npz"}, None, {})
    assert shown[panel.view].visible is True and shown[panel.view].value == viz.PRIMARY
    assert [v for _, v in shown[panel.view].choices] == ["primary", "tile r0 c0", "tile r0 c1", "tiles in place"]
    runs = shown[controller.ui.runs]

    (event,) = [fn for fn in demo.fns.values() if (panel.view._id, "input") in fn.targets]
    given = {controller.ui.runs: runs, panel.choice: "upload:tiles.npz", panel.step: 1, panel.layer: "0",
             panel.head: "mean", panel.whatif.selection: None}

    def drawn(view):
        updates = event.fn(*[given.get(c, view) if c is not panel.view else view for c in event.inputs])
        data = json.loads(updates[panel.overlay].value["plot"])["data"]  # as the browser gets it
        return [np.frombuffer(base64.b64decode(t["x"]["bdata"]), t["x"]["dtype"]).tolist()
                for t in data if t["type"] == "heatmap"]

    assert drawn(viz.TILES_IN_PLACE) == [[0, 10, 20], [20, 30, 40], [0, 20, 40]]
    assert drawn("no such view") == []  # a message figure, not an error
    # A single-grid trace: the picker stays hidden.
    meta, arrays = multigrid_trace(grids=(), primary=dict(GLOBAL, index=[0, 1, 2, 3]), layer0=LAYER0[:4],
                                   layer1=LAYER1[:4], n_tokens=4)
    del meta["grid_index"], meta["grids"]
    npz, _ = Trace(meta, arrays).save(tmp_path / "single")
    shown = controller.replay({"path": str(npz), "orig_name": "single.npz"}, None, runs)
    assert shown[panel.view].visible is False
