"""The debugger's VAR panel: its figures show the trace's own arrays (checked with loops and numpy of
their own, on a hand-made trace and on a real VAR decode), and the panel appears for a VAR column only."""

import subprocess
import sys

import numpy as np
import pytest

from halviz.trace import FORMAT, Trace
from halviz.ui.texts import HELP, NOT_WHY
from halviz.viz.var_figures import MAX_BARS, var_heads_figure, var_moved_figure, var_sinks_figure

LAYERS, HEADS, STEPS, PROMPT_LEN = 4, 3, 3, 10
# <s> USER : then 6 image tokens at 3..8, then "ASSISTANT:" — VAR's kinds by hand: 1 BOS, 2 image, 3 text
KINDS = [1, 3, 3, 2, 2, 2, 2, 2, 2, 3]
SEARCHED = [1, 2]  # first_layer 1, last_layer −2 of 4 layers


def var_trace(heads=None, moved=None, layers=LAYERS, n_heads=HEADS) -> Trace:
    rng = np.random.default_rng(3)
    sinks = np.zeros((layers, PROMPT_LEN), np.uint8)
    sinks[1, [0, 4]] = 1  # BOS and an image token: layer 1 has a visual sink
    sinks[2, [0, 9]] = 1  # BOS and text only: no visual sink
    if heads is None:
        heads = np.zeros((STEPS, layers, n_heads), np.uint8)
        heads[0, 1, [0, 2]] = 1
        heads[2, 1, 1] = 1  # step 1: no head
    if moved is None:
        moved = (rng.random(heads.shape) * heads).astype(np.float16)
    meta = {"format": FORMAT, "num_steps": STEPS, "texts": ["A", " cat", "."], "finish_reason": "length",
            "model": "hand-made", "prompt_len": PROMPT_LEN, "prompt_tokens": ["<s>", "USER", ":"] + ["<image>"] * 6
            + ["ĠASSISTANT"], "image_positions": list(range(3, 9)), "grid": [2, 3], "num_layers": layers,
            "num_heads": n_heads, "segments": ["bos", "system", "image", "prompt", "generated"],
            "segment_ids_prompt": [0, 1, 1] + [2] * 6 + [3],
            "methods": [{"name": "var", "title": "VAR", "params": {"tau": 20.0, "rho": 0.5, "min_image": 0.2,
                                                                   "p": 0.6, "first_layer": 1, "last_layer": -2}}]}
    arrays = {"token_ids": np.arange(STEPS), "method/var/sinks": sinks, "method/var/heads": heads,
              "method/var/moved": moved}
    return Trace(meta, arrays)


def nan_equal(a, b):
    np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


def test_sink_map_colours_each_sink_by_its_kind_and_greys_unsearched_layers():
    trace = var_trace()
    fig = var_sinks_figure(trace)
    heat = fig.data[0]
    sinks = trace.method_array("var", "sinks")
    expected = np.full((LAYERS, PROMPT_LEN), np.nan)
    for layer in SEARCHED:
        for pos in range(PROMPT_LEN):
            expected[layer, pos] = KINDS[pos] if sinks[layer, pos] else 0
    nan_equal(heat.z, expected)
    assert expected[1, 0] == 1 and expected[1, 4] == 2 and expected[2, 9] == 3  # the three kinds occur
    title = fig.layout.title.text
    assert "found 2 BOS, 1 image and 1 text sink entries" in title
    assert "searched layers 1–2" in title and "visual sinks (image tokens that are sinks) in layers 1" in title
    labels = list(fig.layout.yaxis.ticktext)
    assert labels == ["layer 0 (not edited)", "layer 1 · visual sink", "layer 2", "layer 3 (not edited)"]
    names = {a.text for a in fig.layout.annotations}
    assert {"BOS", "text 1–2", "image 3–8", "text"} <= names
    assert heat.customdata[1][4][0] == "image r0 c1" and heat.customdata[1][4][1] == "sink"


def test_each_kind_of_sink_gets_its_own_colour():
    heat = var_sinks_figure(var_trace()).data[0]
    scale = [(float(t), colour) for t, colour in heat.colorscale]
    wanted = {0: "#f8fafc", 1: "#7c3aed", 2: "#0ea5e9", 3: "#f59e0b"}  # none, BOS, image, text (as SEGMENT_COLOURS)
    for code, colour in wanted.items():
        t = (code - heat.zmin) / (heat.zmax - heat.zmin)
        # the stops around t: both the same colour, t strictly inside (not on a colour boundary)
        below = [s for s in scale if s[0] <= t][-1]  # stops in order: the last one at or before t
        above = next(s for s in scale if s[0] >= t)
        assert below[0] < t < above[0] and below[1] == above[1] == colour, (code, t, below, above)


def test_a_trace_without_sinks_says_var_changed_nothing():
    trace = var_trace()
    trace.arrays["method/var/sinks"] = np.zeros((LAYERS, PROMPT_LEN), np.uint8)
    title = var_sinks_figure(trace).layout.title.text
    assert "no sink token found" in title and "no visual sink" in title


@pytest.mark.parametrize("step", [0, 1, 2])
def test_head_map_and_moved_bars_are_the_step_arrays(step):
    trace = var_trace()
    heads, moved = trace.method_array("var", "heads"), trace.method_array("var", "moved")
    fig = var_heads_figure(trace, step)
    expected = np.full((LAYERS, HEADS), np.nan)
    expected[SEARCHED] = heads[step][SEARCHED]
    nan_equal(fig.data[0].z, expected)
    chosen = [(l, h) for l in range(LAYERS) for h in range(HEADS) if heads[step, l, h]]
    if chosen:
        outline = fig.data[1]
        assert sorted(zip(outline.y.tolist(), outline.x.tolist())) == chosen
        assert f"outlined: {len(chosen)} of {LAYERS * HEADS} heads" in fig.layout.title.text
    else:
        assert len(fig.data) == 1
    bars = var_moved_figure(trace, step)
    if not chosen:
        assert "chose no head" in bars.layout.annotations[0].text
        return
    assert list(bars.data[0].x) == [f"L{l}·H{h}" for l, h in chosen]
    np.testing.assert_allclose(bars.data[0].y, [float(moved[step, l, h]) for l, h in chosen])
    total = sum(float(moved[step, l, h]) for l, h in chosen)
    assert f"{len(chosen)} heads, {total:.3f} in all" in bars.layout.title.text
    assert "p = 0.6 ×" in bars.layout.title.text


def test_moved_bars_keep_the_largest_heads_in_layer_order():
    layers, n_heads = 8, 12  # 96 heads, more than MAX_BARS
    heads = np.ones((STEPS, layers, n_heads), np.uint8)
    moved = np.random.default_rng(0).permutation(STEPS * layers * n_heads).reshape(heads.shape).astype(np.float64)
    trace = var_trace(heads, moved, layers, n_heads)
    fig = var_moved_figure(trace, 1)
    flat = [(moved[1, l, h], l, h) for l in range(layers) for h in range(n_heads)]
    largest = sorted(flat, reverse=True)[:MAX_BARS]
    by_hand = [f"L{l}·H{h}" for _, l, h in sorted(largest, key=lambda t: (t[1], t[2]))]
    assert list(fig.data[0].x) == by_hand
    assert f"the largest {MAX_BARS} shown" in fig.layout.title.text


def test_help_texts_and_imports_without_torch():
    assert {"var_sinks", "var_heads", "var_moved"} <= set(HELP)
    assert HELP["var_heads"].endswith(NOT_WHY) and HELP["var_moved"].endswith(NOT_WHY)
    code = ("import sys, halviz.viz.var_figures, halviz.viz; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- a real VAR decode, and the panel in the debugger -------------------------------------------

@pytest.fixture(scope="module")
def decoded(tiny_models):
    from PIL import Image

    from halviz.engine.decode import Decoder
    from halviz.methods import build_stack

    loaded = tiny_models["llava-1.5"]
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(300, 400, 3), dtype=np.uint8))
    # The random tiny model has no real sinks; at τ = 12 (width 4096) some prompt tokens are (tests/test_var.py).
    var = Decoder(loaded, photo, "Describe.", build_stack(["var"], {"var": {"tau": 12.0, "first_layer": 1,
                                                                            "last_layer": -1}}),
                  max_new_tokens=4, stop_at_eos=False).run_to_end()
    plain = Decoder(loaded, photo, "Describe.", [], max_new_tokens=4, stop_at_eos=False).run_to_end()
    return var, plain


def test_figures_of_a_real_var_decode(decoded):
    trace, _ = decoded
    sinks = trace.method_array("var", "sinks").astype(bool)
    heads = trace.method_array("var", "heads").astype(bool)
    assert sinks.any() and heads.any(), "the decode found no sink or no head: nothing to check"
    z = np.asarray(var_sinks_figure(trace).data[0].z, dtype=float)
    searched = range(1, sinks.shape[0])
    assert np.isnan(z[0]).all()
    image = set(trace.meta["image_positions"])
    for layer in searched:
        for pos in range(sinks.shape[1]):
            kind = 1 if pos == 0 else 2 if pos in image else 3  # the tiny LLaVA prompt starts with BOS
            assert z[layer, pos] == (kind if sinks[layer, pos] else 0)
    step = int(np.nonzero(heads.any((1, 2)))[0][0])
    bars = var_moved_figure(trace, step)
    moved = trace.method_array("var", "moved").astype(np.float64)
    ls, hs = np.nonzero(heads[step])
    np.testing.assert_allclose(bars.data[0].y, moved[step][ls, hs])


def test_the_panel_shows_for_a_var_column_only(decoded):
    import gradio as gr

    from halviz.ui.debugger import DebuggerPanel
    from halviz.session.state import RunEntry

    var, plain = decoded
    with gr.Blocks():
        panel = DebuggerPanel.build()
    runs = {"var": RunEntry("var", "VAR", var, None, None), "vanilla": RunEntry("vanilla", "Greedy", plain, None, None)}
    box = panel.method_box("var")  # the registered VAR panel (halviz.viz.panels.var)
    sinks, heads, moved = (box.plot(f"hv-var-{name}") for name in ("sinks", "heads", "moved"))
    shown = panel.show(runs, "var")
    assert shown[box.box].visible is True
    assert shown[sinks].visible is True and shown[heads].visible is True
    assert shown[moved].visible is True
    assert "VAR at step 0" in str(shown[heads].value)
    later = panel.at_step(runs, "var", 2, "mean", "mean")
    assert "VAR at step 2" in str(later[heads].value) and "VAR at step 2" in str(later[moved].value)
    shown = panel.show(runs, "vanilla")
    assert shown[box.box].visible is False
    assert shown[sinks].visible is False and shown[heads].visible is False
    assert box.box in panel.trace_outputs and heads in panel.step_outputs and sinks in panel.trace_outputs
