"""Panels that must not contradict what they show (issue 24, item 3): each figure is checked against the
data it is drawn from, computed here independently (hand-made traces, and traces of the bundled toy
model decoded with the methods whose panels they are)."""

import html
import re

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from halviz import viz
from halviz.engine.decode import Decoder
from halviz.methods.prunehal import PruneHal
from halviz.methods.vhr import VHR
from halviz.ui.texts import HELP
from halviz.ui.whatif import PATCH_TOKENS_HELP
from test_viz import make_trace


def test_entropy_panel_keeps_lambda_on_its_own_axis():
    trace = make_trace()
    fig = viz.entropy_figure(trace, 1, "mean")
    lam = next(t for t in fig.data if t.name.startswith("KVSmooth λ"))
    assert lam.yaxis == "y2"
    assert "λ" in fig.layout.yaxis2.title.text and "entropy" not in fig.layout.yaxis2.title.text
    assert fig.layout.yaxis.title.text == "entropy (nats)"
    assert tuple(fig.layout.yaxis2.range) == (0, 1.05)  # λ lies in [0, 1]
    # Without λ there is no right axis at all.
    del trace.arrays["method/kvsmooth/lambda"]
    assert "yaxis2" not in viz.entropy_figure(trace, 1, "mean").to_dict()["layout"]


def test_candidates_title_states_this_steps_margin():
    trace = make_trace()
    trace.arrays["top_probs"][1] = [0.91, 0.06, 0.02, 0.005, 0.005]
    for step in (0, 1):
        probs = trace.arrays["top_probs"][step].astype(np.float64)
        text = viz.candidates_figure(trace, step).layout.title.text
        assert f"margin {probs[0] - probs[1]:.2f}" in text  # 0.30 at step 0, 0.85 at step 1
        assert f"p = {probs[0]:.2f}" in text and f"runner-up “ dog” {probs[1]:.2f}" in text


def test_candidates_help_claims_no_typical_margin():
    assert "small margin" not in HELP["candidates"].replace("a small margin is", "")
    assert "often" not in HELP["candidates"] and "margin" in HELP["candidates"]


def test_help_texts_shown_as_html_carry_no_markdown():
    """The debugger puts each help text inside an HTML <div>, where Markdown is not read: ``**x**`` would
    print its asterisks (as "**View**" and "**designed**" did)."""
    for key, text in {**HELP, "patch_tokens": PATCH_TOKENS_HELP}.items():
        assert "**" not in text and "__" not in text and "`" not in text, key
        assert text.count("<b>") == text.count("</b>"), key


def plain(text: str) -> str:
    """A plotly title as read: lines joined by spaces, tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", text.replace("<br>", " ")))


def prunehal_trace(votes: np.ndarray, triggers: list[int], t: int, forced_step: int = 2):
    trace = make_trace(steps=votes.shape[0])
    trace.arrays["method/prunehal/votes"] = votes
    trace.arrays["method/prunehal/trigger_steps"] = np.array(triggers, np.int32)
    trace.arrays["method/prunehal/retained"] = np.ones((len(triggers), votes.shape[1], 6), bool)
    trace.meta["methods"] = [{"name": "prunehal", "title": "PruneHal",
                              "params": {"r": 0.8, "t": t, "forced_step": forced_step}}]
    return trace


def test_prunehal_panel_states_its_budget_and_when_it_ran_out():
    # 8 steps, 3 layers: majorities (2 of 3 votes) at steps 4, 5 and 7; the forced prune after step 2
    # spent the budget of one, so none of them pruned.
    votes = np.zeros((8, 3), bool)
    votes[[4, 5, 7], :2] = True
    votes[6, 0] = True  # one vote of three: no majority
    fig = viz.prunehal_figure(prunehal_trace(votes, [2], t=1), step=3)
    text = plain(fig.layout.title.text)
    assert "budget t = 1 prune max" in text and "forced step 2 included" in text
    assert "budget spent at step 2" in text and "the 3 later majorities" in text
    marks = {t.name: list(t.x) for t in fig.data if isinstance(t, go.Scatter)}
    assert marks == {"prune": [2], "majority, no prune": [4, 5, 7]}
    assert "spent at step 2" in next(t for t in fig.data if t.name == "majority, no prune").hovertext[0]
    # The steps after the budget ran out are shaded: from 2.5 to the last step's edge.
    (shade,) = [s for s in fig.layout.shapes if s.type == "rect"]
    assert (shade.x0, shade.x1) == (2.5, 7.5)
    # Budget left: no shading, the title counts what is left.
    fig = viz.prunehal_figure(prunehal_trace(votes[:4], [2], t=3))
    assert "2 left at the end" in plain(fig.layout.title.text)
    assert not [s for s in fig.layout.shapes if s.type == "rect"]
    assert "never prunes" in plain(viz.prunehal_figure(prunehal_trace(votes, [], t=0)).layout.title.text)


def test_prunehal_panel_on_a_toy_decode(toy):
    """The toy model's defaults (r = 0.8, t = 1) on its cup-without-spoon example: the forced prune spends
    the budget, and every later majority is drawn as one that could not prune."""
    image = Image.open("halviz/assets/examples/toy-cup-no-spoon.png")
    trace = Decoder(toy, image, methods=[PruneHal(r=0.8, t=1)], max_new_tokens=32).run_to_end()
    mass = trace.method_array("prunehal", "mass").astype(np.float64)
    reference = trace.method_array("prunehal", "reference").astype(np.float64)
    with np.errstate(invalid="ignore"):
        majority = np.flatnonzero(2 * (mass < np.sqrt(0.8) * reference).sum(1) > mass.shape[1])
    triggers = [int(s) for s in trace.method_array("prunehal", "trigger_steps")]
    assert triggers == [2]  # the forced step, the budget's only prune
    later = [int(s) for s in majority if s > 2]
    assert later, "the example should show majorities after the budget ran out"
    fig = viz.prunehal_figure(trace)
    text = plain(fig.layout.title.text)
    assert "budget t = 1 prune max" in text and "budget spent at step 2" in text
    assert f"the {len(later)} later majorities" in text
    assert list(next(t for t in fig.data if t.name == "majority, no prune").x) == later


def numpy_selection(vhd: np.ndarray, text_norm: np.ndarray) -> np.ndarray:
    """VHR's head choice in one layer, from methods.md §4: outliers (VHD and TA both above their mean +
    population std) zeroed, then the heads strictly above the median."""
    outliers = (vhd > vhd.mean() + vhd.std()) & (text_norm > text_norm.mean() + text_norm.std())
    filtered = np.where(outliers, 0.0, vhd)
    return filtered > np.median(filtered)


def vhr_trace(layers=(1, 3), alpha=2.0):
    """4 layers × 4 heads; VHR acts on ``layers``; layer 2 (skipped) holds the largest VHD."""
    trace = make_trace()
    vhd = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8], [30, 0.5, 20, 0.1], [0.001, 0.002, 0.003, 0.004]], np.float32)
    selected = np.zeros((4, 4), bool)
    selected[1, 2:] = selected[3, 2:] = True
    selected[0, 3] = True  # a stray record outside VHR's layers: it reinforced nothing there
    trace.meta.update(num_layers=4, num_heads=4)
    trace.meta["methods"] = [{"name": "vhr", "title": "VHR", "params": {"alpha": alpha, "tvhd_top_k": 3},
                              "layers": list(layers)}]
    trace.arrays.update({"method/vhr/vhd": vhd, "method/vhr/selected": selected,
                         "method/vhr/outlier": np.zeros((4, 4), bool),
                         "method/vhr/layers": np.array(layers, np.int32)})
    return trace, vhd, selected


def outlined(fig) -> set:
    marks = next((t for t in fig.data if t.name == "reinforced"), None)
    return set() if marks is None else {(int(y), int(x)) for y, x in zip(marks.y, marks.x)}


def test_vhr_map_greys_the_layers_its_rule_skips_and_outlines_only_its_choice():
    trace, vhd, selected = vhr_trace()
    fig = viz.vhd_figure(trace)
    coloured, grey = fig.data[0], next(t for t in fig.data if t.name == "skipped layers")
    z = np.asarray(coloured.z, dtype=np.float64)
    assert np.isnan(z[[0, 2]]).all()  # skipped layers carry no colour
    np.testing.assert_allclose(z[[1, 3]], vhd[[1, 3]])
    assert coloured.zmax == pytest.approx(8.0)  # the scale spans VHR's layers only
    grey_z = np.asarray(grey.z, dtype=np.float64)
    assert np.isfinite(grey_z[[0, 2]]).all() and np.isnan(grey_z[[1, 3]]).all()
    np.testing.assert_allclose(np.asarray(grey.customdata, dtype=np.float64), vhd)  # VHD 30 on hover
    assert "%{customdata" in grey.hovertemplate and "%{z" in coloured.hovertemplate
    assert outlined(fig) == {(1, 2), (1, 3), (3, 2), (3, 3)}  # not the stray (0, 3)
    text = plain(fig.layout.title.text)
    assert "others are 0" not in text
    assert "VHR's layers: 1, 3" in text and "grey: layers 0, 2" in text
    assert "the largest VHD, 30 (layer 2 head 0), is outside VHR's layers" in text
    assert "layer 3: every VHD left after the filter is ≈ 0" in text
    assert "4 heads VHR chose, output ×2" in text
    assert "unchanged (α = 1)" in plain(viz.vhd_figure(vhr_trace(alpha=1.0)[0]).layout.title.text)
    assert "top-3 head VHDs" in plain(viz.tvhd_figure(trace).layout.title.text)


def test_vhr_map_on_a_toy_decode(toy):
    """The toy model (6 layers × 6 heads) under VHR: the coloured rows are exactly those of the paper's
    layer rule, each outline is a head the rule re-implemented in numpy picks, and the skipped rows
    show their (real) VHD on hover."""
    image = Image.open("halviz/assets/examples/toy-cup-no-spoon.png")
    trace = Decoder(toy, image, methods=[VHR(alpha=1.5)], max_new_tokens=2).run_to_end()
    vhd = trace.method_array("vhr", "vhd").astype(np.float64)
    text_norm = trace.method_array("vhr", "text_norm").astype(np.float64)
    depth, heads = vhd.shape
    rule = {1} | set(range(depth - int(np.floor(14 * depth / 32 + 0.5)), depth))  # {1} ∪ the last round(14L/32)
    assert rule == {1, 3, 4, 5}
    fig = viz.vhd_figure(trace)
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    assert {l for l in range(depth) if np.isfinite(z[l]).all()} == rule
    assert {l for l in range(depth) if np.isnan(z[l]).all()} == set(range(depth)) - rule
    grey = next(t for t in fig.data if t.name == "skipped layers")
    np.testing.assert_allclose(np.asarray(grey.customdata, dtype=np.float64), vhd, rtol=1e-6)
    expected = {(l, h) for l in rule for h in np.flatnonzero(numpy_selection(vhd[l], text_norm[l]))}
    assert outlined(fig) == expected
    assert "others are 0" not in plain(fig.layout.title.text)
    assert "grey: layers 0, 2" in plain(fig.layout.title.text)


# ---- f: titles fit their panel at 1024 px, labels do not overlap ---------------------------------------
# On a 1024 px page a half-row panel is about 430 px wide, a full row about 990 px. Inter's characters
# average under 0.55 em: 13 px title lines then fit 430 / (0.55·13) ≈ 60 characters, 11 px subtitles 71.
PANEL_PX = {"half": 430, "full": 990}


def title_lines(fig) -> list[tuple[str, int]]:
    """(visible text, font px) of every line of a figure's title."""
    out = []
    for line in fig.layout.title.text.split("<br>"):
        size = 11 if "font-size:11px" in line else 13
        out.append((html.unescape(re.sub(r"<[^>]*>", "", line)), size))
    return out


def assert_fits(fig, panel: str, name: str) -> None:
    for text, size in title_lines(fig):
        assert len(text) * 0.55 * size <= PANEL_PX[panel], f"{name}: {text!r} is cut at {PANEL_PX[panel]} px"


def long_token_trace():
    trace = make_trace()
    trace.meta["texts"] = ["A", " rather long token text here", ""]
    trace.meta["vocab_strings"] = {"7": " cat", "8": " an extremely long candidate token", "10": "</s>"}
    return trace


def test_figure_titles_fit_their_panels():
    trace = long_token_trace()
    votes = np.zeros((3, 2), bool)
    votes[2] = True
    ph = prunehal_trace(votes, [0], t=1)
    figures = {
        "candidates": (viz.candidates_figure(trace, 1), "half"),
        "entropy": (viz.entropy_figure(trace, 1, "mean"), "half"),
        "segment shares": (viz.segment_share_figure(trace, 1), "half"),
        "top tokens": (viz.top_keys_figure(trace, 1), "half"),
        "VASparse selection": (viz.vasparse_selection_figure(trace), "half"),
        "VHR map": (viz.vhd_figure(vhr_trace()[0]), "half"),
        "T-VHD": (viz.tvhd_figure(trace, 1), "half"),
        "PruneHal": (viz.prunehal_figure(ph, 1), "full"),
        "VASparse sinks": (viz.vasparse_sink_figure(trace), "full"),
    }
    for name, (fig, panel) in figures.items():
        assert_fits(fig, panel, name)
    # The patch maps name their view on one first line; their subtitles fit the overlay's column.
    for fig in (viz.attention_overlay(trace, 1), viz.kept_mask_figure(trace, np.ones(6), "PruneHal at step 1")):
        for text, size in title_lines(fig)[1:]:
            assert len(text) * 0.55 * size <= 540, text


def test_fitted_titles_keep_every_word_and_grow_the_figure():
    trace = long_token_trace()
    fig = viz.segment_share_figure(trace, 1)
    lines = [text for text, _ in title_lines(fig)]
    joined = " ".join(lines)
    assert len(lines) >= 3 and "typically the BOS token" in joined
    assert joined.endswith("this trace did not record which tokens are sinks")  # the last part, whole
    # was one line, cut at "…(mean over heads"
    assert "where each layer's attention went" in joined and "mean over heads" in joined
    # the plot keeps its room: the height grows by a line for each line the fitting added
    assert fig.layout.margin.t >= 24 + 15 * len(lines)


def test_top_token_cells_hold_short_labels_on_rows_tall_enough():
    trace = make_trace()
    trace.meta["prompt_tokens"][9] = "ĠASSISTANT_WITH_A_VERY_LONG_NAME"
    fig = viz.top_keys_figure(trace, 0)
    cells = np.asarray(fig.data[0].text)  # drawn in the cells
    names = np.asarray(fig.data[0].customdata)  # on hover
    assert names[0][3].startswith("␣ASSISTANT_WITH") and names[0][3].endswith("(position 9)")
    # Plotly draws a heatmap cell's customdata as one value: a per-cell list would print "-"
    assert "customdata[" not in fig.data[0].texttemplate + fig.data[0].hovertemplate
    # 10 characters of 10 px fit a 70 px cell
    assert all(len(html.unescape(str(label))) <= 10 for label in cells.ravel())
    assert str(cells[0][3]) == "␣ASSIS… @9" and str(cells[0][1]) == "img r0 c1"
    assert str(cells[0][2]) == "A g0"  # "A (gen 0)": the generated token's step kept in short
    assert str(cells[0][0]) == "&lt;s&gt; @0"  # an entity counts as one character and is never split
    # 32 layers: rows under 26 px get one line (the name), not two
    deep = make_trace()
    for key in ("top_key_pos", "top_key_attn"):
        deep.arrays[key] = np.repeat(deep.arrays[key], 16, axis=1)
    deep.meta["num_layers"] = 32
    fig = viz.top_keys_figure(deep, 0)
    row_px = (fig.layout.height - fig.layout.margin.t - fig.layout.margin.b - 30) / 32  # less the x axis
    assert row_px < 26 and "<br>" not in fig.data[0].texttemplate
    assert "<br>" in viz.top_keys_figure(trace, 0).data[0].texttemplate  # 2 layers: room for the share


def test_sink_weight_labels_sit_on_separate_levels():
    trace = make_trace()
    weights = np.full(13, 0.05)
    weights[[4, 5, 6]] = [0.2, 0.19, 0.18]  # three neighbours of about one height: labels placed by offset overlap
    trace.arrays["method/vasparse/sink_w"] = np.stack([weights, weights]).astype(np.float32)
    fig = viz.vasparse_sink_figure(trace)
    labels = [a for a in fig.layout.annotations if a.showarrow]
    assert sorted(a.x for a in labels) == [4, 5, 6]
    levels = sorted(a.ay for a in labels)
    gaps = np.diff(levels)
    axis_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b - 60  # less the legend
    px_per_unit = axis_px / fig.layout.yaxis.range[1]
    assert (gaps * px_per_unit >= 14).all()  # a 10 px label per level
    assert levels[-1] < fig.layout.yaxis.range[1]
