"""Issue 14, the debugger's half: clicks on the patch and head maps become the interventions' knobs
(checked against the grid geometry worked out by hand and against the methods' own position rules),
the patch → token figures show the trace's numbers (checked with numpy indexing of their own), and a
re-run on the toy model adds a column whose diff step is the first differing token of the two traces."""

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_greedy
from halviz.methods.mask_patches import MaskPatches, box_positions, patch_positions
from halviz.methods.scale_heads import ScaleHeads
from halviz.trace import FORMAT, Trace
from halviz.session.selection import (Selection, box_patches, describe, intervention_specs, short_title, stack_specs,
                                  with_intervention)
from halviz.ui.whatif import GROW_BOX, TOGGLE
from halviz.viz.patch_tokens import patch_token_figure, patch_token_heads_figure
from halviz.viz.pickers import (BOX_COLOUR, HEAD_SELECTED, INSPECT_COLOUR, head_picker, head_picker_image, patch_picker,
                                patch_picker_image)

# A 3×4 grid over an 80×60 picture: every patch is 20×20 pixels (patch (r, c) covers x 20c..20c+20, y 20r..20r+20).
ROWS, COLS, WIDTH, HEIGHT, PATCH = 3, 4, 80, 60, 20
LAYERS, HEADS, STEPS = 3, 2, 5
HEAD_LAYERS = [0, 2]


def grid_trace(boxes=None, steps=STEPS) -> Trace:
    rng = np.random.default_rng(1)
    n = ROWS * COLS
    if boxes is None:
        boxes = [[c * PATCH, r * PATCH, (c + 1) * PATCH, (r + 1) * PATCH] for r in range(ROWS) for c in range(COLS)]
    meta = {"format": FORMAT, "num_steps": steps, "texts": ["a", " cup", " and", " a", " fork"][:steps],
            "grid": [ROWS, COLS], "image_size": [WIDTH, HEIGHT], "patch_boxes": boxes, "num_layers": LAYERS,
            "num_heads": HEADS, "head_layers": HEAD_LAYERS, "finish_reason": "length", "methods": []}
    arrays = {"token_ids": np.arange(steps), "image_attn": rng.random((steps, LAYERS, n)).astype(np.float16),
              "head_image_attn": rng.random((steps, len(HEAD_LAYERS), HEADS, n)).astype(np.float16)}
    return Trace(meta, arrays)


def canvas_point(picker, x, y):
    """Canvas pixel of original picture pixel (x, y)."""
    return x * picker.scale, y * picker.scale


# ---- patches: click → box → the positions MaskPatches hides -----------------------------------------------

def test_clicks_grow_the_box_that_mask_patches_hides():
    trace = grid_trace()
    picker = patch_picker(trace)
    assert picker.scale == pytest.approx(800 / 80)  # the longer side drawn at 800 px
    # Picture pixel (45, 25) lies in patch row 25 // 20 = 1, column 45 // 20 = 2; (70, 50) in (2, 3).
    first = picker.patch_at(*canvas_point(picker, 45, 25))
    second = picker.patch_at(*canvas_point(picker, 70, 50))
    assert (first, second) == ((1, 2), (2, 3))
    assert picker.patch_at(-1, 5) is None and picker.patch_at(5, picker.height + 3) is None
    selection = Selection().with_patch(*first).with_patch(*second)
    assert selection.box == (1, 2, 2, 3) and selection.inspected == (2, 3)
    specs = dict(intervention_specs(selection))
    assert specs == {"mask_patches": {"first_row": 1, "last_row": 2, "first_col": 2, "last_col": 3,
                                      "first_layer": 0, "last_layer": -1}}
    # The method's own rule turns those knobs into sequence positions: the 2×2 patches clicked around.
    image_positions = torch.arange(5, 5 + ROWS * COLS)
    params = specs["mask_patches"]
    hidden = box_positions(image_positions, ROWS, COLS, params["first_row"], params["last_row"],
                           params["first_col"], params["last_col"])
    by_hand = [5 + r * COLS + c for r in (1, 2) for c in (2, 3)]
    assert sorted(hidden.tolist()) == by_hand
    MaskPatches(**params)  # the knobs are in the method's ranges


def test_clicks_toggle_single_patches_that_mask_patches_hides():
    trace = grid_trace()
    picker = patch_picker(trace)
    first = picker.patch_at(*canvas_point(picker, 45, 25))  # (1, 2), as above
    second = picker.patch_at(*canvas_point(picker, 70, 50))  # (2, 3)
    third = picker.patch_at(*canvas_point(picker, 5, 5))  # (0, 0)
    selection = Selection().toggled_patch(*first).toggled_patch(*second).toggled_patch(*third)
    assert selection.patches == {(1, 2), (2, 3), (0, 0)} and selection.box is None and selection.inspected == (0, 0)
    selection = selection.toggled_patch(*third)  # a second click takes it out again
    assert selection.patches == {(1, 2), (2, 3)}
    specs = dict(intervention_specs(selection))
    assert specs == {"mask_patches": {"patches": "1:2,2:3", "first_layer": 0, "last_layer": -1}}
    method = MaskPatches(**specs["mask_patches"])  # the box knobs stay at their defaults and are not used
    image_positions = torch.arange(5, 5 + ROWS * COLS)
    hidden = patch_positions(image_positions, ROWS, COLS, method.params["patches"])
    assert sorted(hidden.tolist()) == [5 + 1 * COLS + 2, 5 + 2 * COLS + 3]  # by hand: row-major
    assert "mask **2 patches** of the 3×4 grid (r1·c2, r2·c3)" in describe(selection, (ROWS, COLS))
    assert short_title(selection) == "mask r1c2, r2c3"
    # Toggling the four patches of a box back in gives the box knobs, as before the list existed.
    full = selection.toggled_patch(1, 3).toggled_patch(2, 2)
    assert full.box == (1, 2, 2, 3) and "first_row" in dict(intervention_specs(full))["mask_patches"]
    # Box mode fills the box from the chosen patches to the one clicked.
    assert Selection().toggled_patch(0, 3).with_patch(2, 1).patches == box_patches(0, 2, 1, 3)


def test_the_outline_drawn_is_the_box_picked():
    trace = grid_trace()
    picker = patch_picker(trace)
    box = box_patches(1, 2, 2, 3)
    image = np.asarray(patch_picker_image(trace, None, None, box, inspected=(0, 0)))
    s = picker.scale
    left, top, right, bottom = 2 * PATCH * s, 1 * PATCH * s, 4 * PATCH * s, 3 * PATCH * s  # by hand
    mid_y, mid_x = int((top + bottom) / 2), int((left + right) / 2)
    assert tuple(image[mid_y, int(round(left)) + 1]) == BOX_COLOUR
    assert tuple(image[int(round(top)) + 1, mid_x]) == BOX_COLOUR
    assert tuple(image[mid_y, int(round(left)) - 6]) != BOX_COLOUR  # outside the box: no outline
    assert tuple(image[1, int(PATCH * s / 2)]) == INSPECT_COLOUR  # the inspected patch (0, 0), top edge
    assert image.shape[:2] == (round(HEIGHT * s), round(WIDTH * s))
    # Scattered patches: each is outlined, the patch between them is not.
    image = np.asarray(patch_picker_image(trace, None, None, {(0, 0), (0, 2)}))
    for col, outlined in ((0, True), (1, False), (2, True)):
        left = col * PATCH * s
        assert (tuple(image[int(PATCH * s / 2), int(round(left)) + 1]) == BOX_COLOUR) is outlined, col


def test_patches_covering_only_padding_cannot_be_clicked():
    # The first grid column covers no pixel (a letterbox): no click may pick it.
    boxes = [[max(c * PATCH - PATCH, 0), r * PATCH, max(c * PATCH, 0), (r + 1) * PATCH]
             for r in range(ROWS) for c in range(COLS)]
    trace = grid_trace(boxes)
    picker = patch_picker(trace)
    columns = {picker.patch_at(x, y)[1] for x in range(0, picker.width, 7) for y in range(0, picker.height, 7)
               if picker.patch_at(x, y) is not None}
    assert columns == {1, 2, 3}


# ---- heads: click → the head ScaleHeads silences -------------------------------------------------------------

def test_a_click_on_the_head_map_silences_that_head():
    picker = head_picker(LAYERS, HEADS)
    cell = picker.cell
    # Cell (layer 2, head 1) spans x left+cell..left+2·cell, y top+2·cell..top+3·cell.
    x, y = picker.left + cell + cell // 2, picker.top + 2 * cell + 1
    assert picker.head_at(x, y) == (2, 1)
    assert picker.head_at(picker.left - 1, y) is None and picker.head_at(x, picker.top + LAYERS * cell) is None
    selection = Selection().toggled_head(*picker.head_at(x, y))
    (name, params), = intervention_specs(selection)
    assert name == "scale_heads" and params == {"head": 1, "scale": 0.0, "first_layer": 2, "last_layer": 2}
    column = SimpleNamespace(num_layers=LAYERS, num_heads=HEADS, device=torch.device("cpu"))
    method = ScaleHeads(**params)
    method.setup(column)
    assert {l: f.tolist() for l, f in method.factors.items()} == {2: [1.0, 0.0]}
    image = np.asarray(head_picker_image(np.ones((LAYERS, HEADS)), [(2, 1)]))
    assert image.shape[:2] == (picker.size[1], picker.size[0])
    # A second head (layer 0, head 0), then a third clicked twice (in and out again): the heads list.
    several = selection.toggled_head(0, 0).toggled_head(1, 1).toggled_head(1, 1)
    (name, params), = intervention_specs(several)
    assert params == {"heads": "0:0,2:1", "scale": 0.0}
    method = ScaleHeads(**params)
    method.setup(column)
    assert {l: f.tolist() for l, f in method.factors.items()} == {0: [0.0, 1.0], 2: [1.0, 0.0]}
    assert "silence **2 heads**: L0·H0, L2·H1" in describe(several)
    image = np.asarray(head_picker_image(np.ones((LAYERS, HEADS)), several.heads))
    for layer, head in ((0, 0), (2, 1), (1, 1)):
        x0, y0, _, _ = picker.cell_box(layer, head)
        assert (tuple(image[y0 + picker.cell // 2, x0]) == (37, 99, 235)) is ((layer, head) in several.heads)
    # The outline of a chosen head stands out from every colour of the map's ramp (a blue ramp hid it).
    ramp = np.asarray(head_picker_image(np.linspace(0, 1, LAYERS * HEADS).reshape(LAYERS, HEADS)), dtype=float)
    cells = np.array([ramp[picker.cell_box(l, h)[1] + picker.cell // 2, picker.cell_box(l, h)[0] + picker.cell // 2]
                      for l in range(LAYERS) for h in range(HEADS)])
    assert np.linalg.norm(cells - np.array(HEAD_SELECTED), axis=1).min() > 150


def test_the_original_stack_keeps_its_knobs_and_takes_the_intervention_in_registry_order():
    from halviz.methods import REGISTRY

    original = stack_specs([{"name": "vcd", "params": {"alpha": 2.0}},
                            {"name": "mask_patches", "params": {"first_row": 0, "last_row": -1}}])
    selection = Selection(patches=box_patches(1, 1, 0, 2), sink=True)
    merged = with_intervention(original, intervention_specs(selection), list(REGISTRY))
    names = [n for n, _ in merged]
    assert names == sorted(names, key=list(REGISTRY).index)
    assert dict(merged)["vcd"] == {"alpha": 2.0}
    assert dict(merged)["mask_patches"]["first_row"] == 1 and dict(merged)["mask_patches"]["last_col"] == 2
    assert "remove_sink" in names
    with pytest.raises(ValueError):
        with_intervention([("nope", {})], [], list(REGISTRY))
    with pytest.raises(ValueError):
        stack_specs([{"params": {}}])
    assert "3 patches" in describe(selection) and "sink" in describe(selection)
    assert "every layer" in describe(selection)
    late = Selection(patches=box_patches(0, 0, 0, 0), sink=True, first_layer=2, last_layer=3)
    specs = dict(intervention_specs(late))
    for name in ("mask_patches", "remove_sink"):
        assert (specs[name]["first_layer"], specs[name]["last_layer"]) == (2, 3)
    assert "in layers 2–3" in describe(late)


def test_a_traces_own_interventions_come_back_as_its_selection():
    from halviz.methods import RemoveSink
    from halviz.session.selection import selection_of

    methods = [MaskPatches(first_row=1, last_row=-1, first_col=2, last_col=9, first_layer=1).describe(),
               ScaleHeads(head=1, scale=0.5, first_layer=2, last_layer=2).describe(), RemoveSink().describe()]
    chosen = selection_of(methods, (ROWS, COLS))
    assert chosen == Selection(patches=box_patches(1, ROWS - 1, 2, COLS - 1), heads=frozenset({(2, 1)}),
                               head_scale=0.5, sink=True, first_layer=1, last_layer=-1)
    listed = [MaskPatches(patches="2:0,0:3", first_layer=2).describe(), ScaleHeads(heads="2:1,0:0", scale=0.5).describe()]
    assert selection_of(listed, (ROWS, COLS)) == Selection(patches=frozenset({(2, 0), (0, 3)}),
                                                           heads=frozenset({(2, 1), (0, 0)}), head_scale=0.5,
                                                           first_layer=2)
    every_head = [ScaleHeads(head=-1).describe(), RemoveSink(tokens=2).describe()]
    assert selection_of(every_head, (ROWS, COLS)) == Selection()  # not one head, not BOS alone: not a selection
    assert selection_of([{"name": "mask_patches", "params": {"first_row": "x"}}], (ROWS, COLS)) == Selection()


# ---- patch → token: the figures' numbers are the trace's --------------------------------------------------------

def test_patch_token_figures_show_the_traces_attention_on_that_patch():
    trace = grid_trace()
    row, col = 2, 1
    grid = trace.arrays["image_attn"].astype(np.float64).reshape(STEPS, LAYERS, ROWS, COLS)
    expected = grid[:, :, row, col].T  # (layers, steps)
    figure = patch_token_figure(trace, row, col, step=3)
    heat = next(t for t in figure.data if t.type == "heatmap")
    np.testing.assert_array_equal(np.asarray(heat.z), expected)
    assert figure.layout.xaxis.title.text.startswith("step") and figure.layout.yaxis.title.text == "layer"
    assert "attention weight" in heat.colorbar.title.text
    heads = trace.arrays["head_image_attn"].astype(np.float64).reshape(STEPS, len(HEAD_LAYERS), HEADS, ROWS, COLS)
    figure = patch_token_heads_figure(trace, row, col, layer=2)
    heat = next(t for t in figure.data if t.type == "heatmap")
    np.testing.assert_array_equal(np.asarray(heat.z), heads[:, HEAD_LAYERS.index(2), :, row, col].T)
    assert figure.layout.yaxis.title.text == "head"
    # A layer without single heads, and a patch off the grid, say so instead of raising.
    assert "not recorded" in patch_token_heads_figure(trace, row, col, layer=1).layout.annotations[0].text
    assert "outside" in patch_token_figure(trace, ROWS, 0).layout.annotations[0].text


def test_patch_token_figure_of_a_layout_with_several_grids_reads_the_primary_grids_token():
    trace = grid_trace()
    n = ROWS * COLS
    extra = 3  # three tokens of another view first, then the primary grid
    trace.arrays["image_attn"] = np.random.default_rng(2).random((STEPS, LAYERS, n + extra)).astype(np.float16)
    trace.meta["image_positions"] = list(range(10, 10 + n + extra))
    trace.meta["grid_index"] = list(range(extra, extra + n))
    heat = next(t for t in patch_token_figure(trace, 1, 2).data if t.type == "heatmap")
    np.testing.assert_array_equal(np.asarray(heat.z), trace.arrays["image_attn"][:, :, extra + 1 * COLS + 2].astype(
        np.float64).T)


def test_the_new_figures_import_without_torch():
    code = ("import sys; import halviz.viz, halviz.viz.patch_tokens, halviz.viz.pickers; "
            "bad = [m for m in ('torch', 'transformers', 'gradio') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the callbacks on the toy model (conftest's ``controller`` and ``run_greedy``) -------------------------------

def test_rerun_adds_a_column_diffed_against_the_original(controller):
    ctl, gr = controller
    panel, whatif = ctl.ui.panel, ctl.ui.panel.whatif
    runs = run_greedy(ctl)
    shown = panel.show(runs, "vanilla")
    selection = shown[whatif.selection]
    picker = patch_picker(runs["vanilla"].trace)
    for x, y in ((0, 0), (picker.width - 1, picker.height - 1)):  # two corners: the whole grid
        update = ctl.pick_patch(runs, "vanilla", 0, "mean", "mean", selection, GROW_BOX,
                                gr.SelectData(None, {"index": [x, y], "value": None}))
        selection = update[whatif.selection]
    rows, cols = runs["vanilla"].trace.meta["grid"]
    assert selection.box == (0, rows - 1, 0, cols - 1)
    assert f"{rows * cols} patches" in update[whatif.chosen]
    for update in ctl.rerun(runs, "vanilla", selection, []):
        pass
    shown_list = update[ctl.ui.whatif]
    (item,) = shown_list
    new = update[ctl.ui.runs][item["key"]]
    original = runs["vanilla"].trace.arrays["token_ids"].tolist()
    changed = new.trace.arrays["token_ids"].tolist()
    by_hand = next((i for i, (a, b) in enumerate(zip(original, changed)) if a != b), None)
    assert by_hand is not None, "masking the whole grid changed nothing"
    assert item["step"] == by_hand and f"differs from Greedy from step {by_hand}" in item["summary"]
    methods = new.trace.meta["methods"]
    assert [m["name"] for m in methods] == ["mask_patches"]
    assert methods[0]["params"]["last_row"] == rows - 1 and methods[0]["params"]["last_col"] == cols - 1
    assert f"at step {by_hand}" in update[ctl.ui.whatif_slots[0].open].value
    spans = update[ctl.ui.whatif_slots[0].caption]
    assert len(spans) == len(changed) and [i for i, (_, label) in enumerate(spans) if label == "first change"] == [by_hand]
    opened = ctl.open_whatif(0)(update[ctl.ui.runs], shown_list)
    assert opened[panel.choice].value == item["key"] and opened[panel.step].value == by_hand
    assert opened[whatif.selection].box == (0, rows - 1, 0, cols - 1)  # the pickers show the column's own mask


def refused_rerun(ctl, updates, match: str) -> None:
    """A refused re-run says why on its status line first, then raises the same sentence as a toast."""
    import gradio as gr

    first = next(updates)
    said = first[ctl.ui.panel.whatif.status].replace("\\", "")  # Markdown-escaped
    assert said.startswith("✗ ") and re.search(match, said), said
    with pytest.raises(gr.Error, match=match):
        next(updates)


def test_bad_clicks_and_requests_are_sentences_not_stack_traces(controller):
    ctl, gr = controller
    runs = run_greedy(ctl, tokens=2)
    whatif = ctl.ui.panel.whatif
    for index in (None, ["x", 1], [float("nan"), 2], [10**6, 10**6], [-5, 3]):
        with pytest.raises(gr.Error, match="not on an image patch"):
            ctl.pick_patch(runs, "vanilla", 0, "mean", "mean", None, GROW_BOX,
                           gr.SelectData(None, {"index": index, "value": None}))
        with pytest.raises(gr.Error, match="not on a head"):
            ctl.pick_head(runs, "vanilla", 0, "mean", "mean", None, gr.SelectData(None, {"index": index, "value": None}))
    refused_rerun(ctl, ctl.rerun(runs, "vanilla", Selection(), []), "Choose what to change")
    refused_rerun(ctl, ctl.rerun({}, None, Selection(sink=True), []), "Run a comparison")
    refused_rerun(ctl, ctl.rerun(runs, "vanilla", Selection(heads=frozenset({(0, 0), (99, 0)})), []), "layers 0")
    refused_rerun(ctl, ctl.rerun(runs, "vanilla", Selection(patches=frozenset({(0, 0), (99, 0)})), []), "must lie on this trace's")
    refused_rerun(ctl, ctl.rerun(runs, "vanilla", Selection(sink=True, first_layer=4, last_layer=2), []), "layers to mask in")
    refused_rerun(ctl, ctl.rerun(runs, "vanilla", Selection(sink=True, first_layer=99), []), "layers to mask in")
    with pytest.raises(gr.Error, match="Pick one layer and one head"):
        ctl.take_head(runs, "vanilla", 0, "mean", "mean", None)
    uploaded = {"upload:x": runs["vanilla"].__class__("upload:x", "uploaded: x", runs["vanilla"].trace, None, None)}
    refused_rerun(ctl, ctl.rerun(uploaded, "upload:x", Selection(sink=True), []), "uploaded trace")
    assert ctl.set_options(runs, "vanilla", 0, "mean", "mean", None, True, "junk", float("nan"), None)[
        whatif.selection] == Selection(sink=True, head_scale=0.0, first_layer=0, last_layer=-1)


def test_toggled_patches_and_heads_rerun_as_the_list_knobs(controller, toy):
    from halviz.engine.decode import Decoder
    from halviz.methods import build_stack

    ctl, gr = controller
    panel, whatif = ctl.ui.panel, ctl.ui.panel.whatif
    runs = run_greedy(ctl, tokens=8)
    selection = panel.show(runs, "vanilla")[whatif.selection]
    picker = patch_picker(runs["vanilla"].trace)
    rows, cols = runs["vanilla"].trace.meta["grid"]

    def click_patch(selection, x, y):
        return ctl.pick_patch(runs, "vanilla", 0, "mean", "mean", selection, TOGGLE,
                              gr.SelectData(None, {"index": [x, y], "value": None}))[whatif.selection]

    corner = (picker.width - 1, picker.height - 1)
    selection = click_patch(selection, 0, 0)
    selection = click_patch(selection, *corner)
    selection = click_patch(selection, picker.width // 2, 0)
    selection = click_patch(selection, picker.width // 2, 0)  # the same patch again: out
    assert selection.patches == {(0, 0), (rows - 1, cols - 1)}
    heads = head_picker(int(runs["vanilla"].trace.meta["num_layers"]), int(runs["vanilla"].trace.meta["num_heads"]))
    for layer, head in ((1, 2), (0, 1), (3, 3), (3, 3)):
        x0, y0, x1, y1 = heads.cell_box(layer, head)
        update = ctl.pick_head(runs, "vanilla", 0, "mean", "mean", selection,
                               gr.SelectData(None, {"index": [(x0 + x1) / 2, (y0 + y1) / 2], "value": None}))
        selection = update[whatif.selection]
    assert selection.heads == {(1, 2), (0, 1)} and "silence **2 heads**" in update[whatif.chosen]
    assert ctl.clear_heads(runs, "vanilla", 0, "mean", "mean", selection)[whatif.selection].heads == frozenset()
    for update in ctl.rerun(runs, "vanilla", selection, []):
        pass
    (item,) = update[ctl.ui.whatif]
    new = update[ctl.ui.runs][item["key"]].trace
    params = {m["name"]: m["params"] for m in new.meta["methods"]}
    assert params["mask_patches"]["patches"] == f"0:0,{rows - 1}:{cols - 1}"
    assert params["scale_heads"]["heads"] == "0:1,1:2"
    # The same stack decoded directly, outside the app: the re-run column's tokens.
    stack = build_stack(["mask_patches", "scale_heads"], {"mask_patches": {"patches": f"0:0,{rows - 1}:{cols - 1}"},
                                                          "scale_heads": {"heads": "0:1,1:2", "scale": 0.0}})
    direct = Decoder(toy, runs["vanilla"].source, "Describe the image.", stack, max_new_tokens=8)
    direct.run_to_end()
    assert new.arrays["token_ids"].tolist() == direct.token_ids
    assert "Greedy + mask r0c0, r{}c{} + silence L0·H1, L1·H2".format(rows - 1, cols - 1) in \
        update[ctl.ui.whatif_slots[0].header].replace("\\", "")  # Markdown-escaped
