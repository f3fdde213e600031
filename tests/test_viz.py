"""The pure figure functions on a small hand-made trace: values land where they should, titles say
what is averaged and the grid shape."""

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from halviz import viz
from halviz.trace import FORMAT, Trace
from halviz.viz.method_data import prunehal_mask, vasparse_mask

ROWS, COLS, LAYERS, HEADS, STEPS = 2, 3, 2, 2, 3
PROMPT_LEN = 10  # <s> USER : then 6 image tokens at 3..8, then "ASSISTANT:"
IMAGE_POSITIONS = list(range(3, 9))


def boxes(width=60, height=40, x_offset=0.0):
    """Patch boxes of a 2×3 grid over a 60×40 picture (x shifted to mimic a crop)."""
    out = []
    for r in range(ROWS):
        for c in range(COLS):
            out.append([x_offset + c * 20, r * 20, x_offset + (c + 1) * 20, (r + 1) * 20])
    return out


def make_trace(steps=STEPS, patch_boxes=None, methods=True) -> Trace:
    rng = np.random.default_rng(0)
    image_attn = rng.random((steps, LAYERS, ROWS * COLS)).astype(np.float16) / 10
    shares = rng.random((steps, LAYERS, 5)).astype(np.float32)
    shares /= shares.sum(-1, keepdims=True)
    meta = {
        "format": FORMAT, "num_steps": steps, "texts": ["A", " cat", ""][:steps], "finish_reason": "eos",
        "model": "hand-made", "family": "llava-1.5", "prompt": "Describe.", "prompt_len": PROMPT_LEN,
        "prompt_tokens": ["<s>", "USER", ":"] + ["<image>"] * 6 + ["ĠASSISTANT"],
        "image_positions": IMAGE_POSITIONS, "grid": [ROWS, COLS],
        "patch_boxes": patch_boxes if patch_boxes is not None else boxes(), "image_size": [60, 40],
        "num_layers": LAYERS, "num_heads": HEADS, "head_layers": [1],
        "segments": ["bos", "system", "image", "prompt", "generated"], "methods": [],
        "vocab_strings": {"7": " cat", "8": " dog", "10": "</s>"},
    }
    arrays = {
        "token_ids": np.arange(steps, dtype=np.int64),
        "top_ids": np.tile(np.array([7, 8, 9, 10, 11], np.int32), (steps, 1)),
        "top_probs": np.tile(np.array([0.5, 0.2, 0.1, 0.1, 0.05], np.float32), (steps, 1)),
        "image_attn": image_attn,
        "entropy": np.arange(steps * LAYERS, dtype=np.float32).reshape(steps, LAYERS) / 4,
        "segment_share": shares,
        "top_key_pos": np.tile(np.array([0, 4, PROMPT_LEN, 9, 1], np.int32), (steps, LAYERS, 1)),
        "top_key_attn": np.tile(np.array([0.6, 0.1, 0.05, 0.03, 0.02], np.float16), (steps, LAYERS, 1)),
        "head_image_attn": rng.random((steps, 1, HEADS, ROWS * COLS)).astype(np.float16),
    }
    if methods:
        arrays.update({
            "method/prunehal/trigger_steps": np.array([0], np.int32),
            "method/prunehal/retained": np.array([[[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]]], bool),
            "method/prunehal/votes": np.zeros((steps, LAYERS), bool),
            "method/kvsmooth/lambda": np.full((steps, LAYERS), 0.7, np.float32),
            "method/vhr/vhd": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
            "method/vhr/selected": np.array([[False, True], [False, True]]),
            "method/vhr/outlier": np.array([[True, False], [False, False]]),
            "method/vhr/tvhd": np.arange(steps, dtype=np.float32),
            "method/vasparse/layers": np.array([1], np.int32),
            # Step t reads generated tokens < t: row t holds j < t, NaN elsewhere.
            "method/vasparse/kept_generated": np.where(np.tril(np.ones((steps, steps)), -1) > 0,
                                                       np.linspace(0.25, 1.0, steps * steps).reshape(steps, steps),
                                                       np.nan).astype(np.float16),
            "method/vasparse/merged_columns": np.arange(steps, dtype=np.float32) / 2,
            "method/vasparse/sink_w": np.array([np.linspace(0.05, 0.15, PROMPT_LEN + steps)[::-1],
                                                np.linspace(0.05, 0.15, PROMPT_LEN + steps)], np.float32),
            "method/vasparse/sink_positions": np.arange(PROMPT_LEN + steps, dtype=np.int32),
        })
        arrays["method/vasparse/layers"] = np.array([0, 1], np.int32)
        meta["methods"] = [{"name": "vasparse", "title": "VASparse", "params": {"aggregate": "dpc-knn",
                                                                                "phi": "embedding"}}]
        meta["segment_ids_prompt"] = [0, 1, 1] + [2] * 6 + [3]
    return Trace(meta, arrays)


def heatmap(fig: go.Figure) -> go.Heatmap:
    return next(t for t in fig.data if isinstance(t, go.Heatmap))


def title(fig: go.Figure) -> str:
    return fig.layout.title.text


def test_overlay_puts_each_value_on_its_patch():
    trace = make_trace()
    fig = viz.attention_overlay(trace, 1, layer=0, image=Image.new("RGB", (60, 40), "white"))
    z = np.asarray(heatmap(fig).z, dtype=np.float64)
    expected = trace.arrays["image_attn"][1, 0].astype(np.float64).reshape(ROWS, COLS)
    np.testing.assert_allclose(z, expected)
    np.testing.assert_allclose(heatmap(fig).x, [0, 20, 40, 60])
    np.testing.assert_allclose(heatmap(fig).y, [0, 20, 40])
    assert any(isinstance(t, go.Image) for t in fig.data)  # the picture lies underneath
    text = title(fig)
    assert "2×3" in text and "layer 0" in text and "mean of 2 heads" in text
    assert "Step 1" in text and "cat" in text


def test_overlay_mean_over_layers_and_single_head():
    trace = make_trace()
    fig = viz.attention_overlay(trace, 2)
    np.testing.assert_allclose(np.asarray(heatmap(fig).z),
                               trace.arrays["image_attn"][2].astype(np.float32).mean(0).reshape(ROWS, COLS), rtol=1e-6)
    assert "mean of all 2 layers" in title(fig) and "mean of 2 heads" in title(fig)
    fig = viz.attention_overlay(trace, 0, layer=1, head=1)
    np.testing.assert_allclose(np.asarray(heatmap(fig).z),
                               trace.arrays["head_image_attn"][0, 0, 1].astype(np.float32).reshape(ROWS, COLS))
    assert "head 1" in title(fig) and "layer 1" in title(fig)
    # Layer 0 has no per-head rows: the figure says so instead of drawing something else.
    fig = viz.attention_overlay(trace, 0, layer=0, head=1)
    assert not any(isinstance(t, go.Heatmap) for t in fig.data)
    assert "[1]" in fig.layout.annotations[0].text


def test_overlay_marks_the_cropped_region_and_drops_padding():
    cropped = viz.patch_grid(make_trace(patch_boxes=boxes(x_offset=0)))
    assert not cropped.cropped and cropped.note == ""
    # A centre crop: the patches cover x 5..65 of a wider picture.
    trace = make_trace(patch_boxes=boxes(x_offset=5))
    trace.meta["image_size"] = [70, 40]
    fig = viz.attention_overlay(trace, 0)
    assert viz.patch_grid(trace).cropped and "cropped" in title(fig)
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 5
    # Padding: the first column lies wholly outside the picture (an empty box) and is not drawn.
    padded = boxes()
    for r in range(ROWS):
        padded[r * COLS] = [0, r * 20, 0, (r + 1) * 20]
    trace = make_trace(patch_boxes=padded)
    fig = viz.attention_overlay(trace, 0, layer=0)
    assert np.asarray(heatmap(fig).z).shape == (ROWS, COLS - 1)
    np.testing.assert_allclose(np.asarray(heatmap(fig).z),
                               trace.arrays["image_attn"][0, 0].astype(np.float64).reshape(ROWS, COLS)[:, 1:])
    assert "padding" in title(fig)


def test_kept_masks_follow_prunes_and_vasparse_shares():
    trace = make_trace()
    before = prunehal_mask(trace, 0, 0)  # the prune decided at step 0 acts from step 1
    assert before.kept.tolist() == [1.0] * 6 and "all 6" in before.title
    after = prunehal_mask(trace, 1, 1)
    assert after.kept.tolist() == [0, 1, 1, 0, 0, 0] and "2 of 6" in after.title
    averaged = prunehal_mask(trace, 2, "mean")
    np.testing.assert_allclose(averaged.kept, [0.5, 0.5, 1, 0, 0, 0.5])
    fig = viz.kept_mask_figure(trace, after.kept, after.title, None, after.details)
    np.testing.assert_allclose(np.asarray(heatmap(fig).z), after.kept.reshape(ROWS, COLS))
    assert "grid 2×3" in title(fig) and "layer 1" in title(fig)
    # Today's VASparse never drops image tokens: no image mask from it.
    assert vasparse_mask(trace, 1) is None
    assert [m.method for m in viz.kept_masks(trace, 1, 0)] == ["prunehal"]
    assert viz.kept_masks(make_trace(methods=False), 1, 0) == []
    # A first-edition trace (kept_image) still replays, and says what it is.
    trace.arrays["method/vasparse/kept_image"] = np.full((STEPS, ROWS * COLS), 0.5, np.float16)
    vas = vasparse_mask(trace, 1)
    assert vas.kept.tolist() == [0.5] * 6 and "50%" in vas.title and "first-edition" in vas.title


def test_vasparse_selection_draws_kept_generated_tokens_and_merged_columns():
    trace = make_trace()
    fig = viz.vasparse_selection_figure(trace)
    z = np.asarray(heatmap(fig).z, dtype=np.float64)
    kept = trace.arrays["method/vasparse/kept_generated"].astype(np.float64)
    assert z.shape == (STEPS, STEPS)
    np.testing.assert_array_equal(np.isnan(z), np.triu(np.ones((STEPS, STEPS)), 0) > 0)  # j ≥ t: not generated yet
    np.testing.assert_allclose(z[1, 0], kept[1, 0])
    np.testing.assert_allclose(z[2, :2], kept[2, :2])
    bars = next(t for t in fig.data if isinstance(t, go.Bar))
    np.testing.assert_allclose(bars.x, [0.0, 0.5, 1.0])
    text = title(fig)
    assert "share of heads × layers 0–1" in text and "never dropped" in text and "DPC-KNN" in text
    assert fig.layout.xaxis.title.text == "generated token j" and fig.layout.yaxis.title.text == "step t"
    assert list(fig.layout.xaxis.ticktext[:2]) == ["A (gen 0)", "␣cat (gen 1)"]
    # Without merged columns (aggregate = none), only the heatmap, labelled as masking.
    del trace.arrays["method/vasparse/merged_columns"]
    trace.meta["methods"][0]["params"]["aggregate"] = "none"
    bare = viz.vasparse_selection_figure(trace)
    assert not any(isinstance(t, go.Bar) for t in bare.data) and "masked" in title(bare)
    assert viz.vasparse_selection_figure(make_trace(methods=False)) is None


def test_vasparse_sink_weights_over_every_position_by_segment():
    trace = make_trace()
    fig = viz.vasparse_sink_figure(trace)
    expected = trace.arrays["method/vasparse/sink_w"].astype(np.float64).mean(0)  # mean over the 2 layers
    drawn = {int(x): y for t in fig.data for x, y in zip(t.x, t.y)}
    assert sorted(drawn) == list(range(PROMPT_LEN + STEPS))  # every position, the image and generated ones too
    np.testing.assert_allclose([drawn[p] for p in sorted(drawn)], expected, rtol=1e-6)
    by_segment = {t.name: [int(x) for x in t.x] for t in fig.data}
    assert by_segment["BOS token"] == [0] and by_segment["image tokens"] == IMAGE_POSITIONS
    assert by_segment["system text"] == [1, 2] and by_segment["prompt text"] == [9]
    assert by_segment["generated text"] == [10, 11, 12]
    assert any(abs(s.y0 - 1 / 13) < 1e-9 for s in fig.layout.shapes)  # the uniform share 1/P
    text = title(fig)
    assert "all 13 positions" in text and "mean over layers 0–1" in text and "1 + β − β·W" in text
    assert viz.vasparse_sink_figure(make_trace(methods=False)) is None


def test_vasparse_logits_name_the_phi_reading_of_the_trace():
    trace = make_trace()
    trace.arrays.update({
        "method/vasparse/theta_top_ids": np.tile(np.array([7, 8, 9, 10, 11], np.int32), (STEPS, 1)),
        "method/vasparse/theta_top_logits": np.tile(np.arange(5, 0, -1, dtype=np.float32), (STEPS, 1)),
        "method/vasparse/phi_top_ids": np.tile(np.array([8, 7, 9, 10, 11], np.int32), (STEPS, 1)),
        "method/vasparse/phi_top_logits": np.tile(np.arange(4, -1, -1, dtype=np.float32), (STEPS, 1)),
    })
    fig = viz.vasparse_logits_figure(trace, 0)
    assert [t.name for t in fig.data][1].startswith("ℓ_φ (language head of the token embedding, no decoder pass")
    assert list(fig.data[1].y[:2]) == [" dog", " cat"] and list(fig.data[1].x[:2]) == [4, 3]
    trace.meta["methods"][0]["params"]["phi"] = "masked-pass"
    assert "random image tokens masked" in viz.vasparse_logits_figure(trace, 0).data[1].name


def test_entropy_curves_with_lambda_and_step_marker():
    trace = make_trace()
    fig = viz.entropy_figure(trace, 1, "mean")
    lines = {t.name: t for t in fig.data}
    np.testing.assert_allclose(lines["layer 1"].y, trace.arrays["entropy"][:, 1])
    np.testing.assert_allclose(lines["mean of 2 layers"].y, trace.arrays["entropy"].mean(1))
    lam = next(t for t in fig.data if t.name.startswith("KVSmooth λ"))
    assert lam.yaxis == "y2" and np.allclose(lam.y, 0.7)
    assert any(s.x0 == 1 for s in fig.layout.shapes)  # the current step
    assert any(s.x0 == 0.5 for s in fig.layout.shapes)  # PruneHal's prune after step 0
    assert "mean of all 2 layers" in title(fig) and "mean over heads" in title(fig)
    assert "layer 1" in title(viz.entropy_figure(trace, layer=1))


def test_sinks_segment_shares_and_top_tokens():
    trace = make_trace()
    fig = viz.segment_share_figure(trace, 2, layer=1)
    bos = next(t for t in fig.data if t.name == "BOS token")
    shares = trace.arrays["segment_share"][2]
    np.testing.assert_allclose(bos.x, [shares[:, 0].mean(), *shares[:, 0]], rtol=1e-6)
    assert list(bos.y) == ["mean of layers", "layer 0", "▶ layer 1"]
    assert "mean over heads" in title(fig)
    fig = viz.top_keys_figure(trace, 0)
    names = heatmap(fig).customdata  # the full names, on hover (the cells hold short ones)
    assert names[0][0] == "&lt;s&gt; @0 (position 0)" and names[0][1].startswith("image r0 c1 (")  # escaped: plotly reads HTML
    assert names[0][2].startswith("A (gen 0) (") and names[0][3] == "␣ASSISTANT @9 (position 9)"
    np.testing.assert_allclose(np.asarray(heatmap(fig).z), trace.arrays["top_key_attn"][0].astype(np.float64))


def test_vhd_map_outlines_selected_heads_and_crosses_outliers():
    trace = make_trace()
    fig = viz.vhd_figure(trace)
    np.testing.assert_allclose(np.asarray(heatmap(fig).z), [[1, 2], [3, 4]])
    selected = next(t for t in fig.data if t.name and t.name.startswith("reinforced"))
    assert sorted(zip(selected.y, selected.x)) == [(0, 1), (1, 1)]
    outliers = next(t for t in fig.data if t.name and t.name.startswith("filtered"))
    assert list(zip(outliers.y, outliers.x)) == [(0, 0)]
    assert "2 layers × 2 heads" in title(fig)
    assert list(viz.tvhd_figure(trace, 1).data[0].y) == [0, 1, 2]
    assert viz.tvhd_figure(make_trace(methods=False)) is None


def test_candidates_name_tokens_from_the_trace():
    fig = viz.candidates_figure(make_trace(), 0)
    assert list(fig.data[0].y[:2]) == [" cat", " dog"] and fig.data[0].y[2] == "#9"
    assert fig.data[0].y[3] == "&lt;/s&gt;"  # a tag-like token is shown, not parsed
    np.testing.assert_allclose(fig.data[0].x, [0.5, 0.2, 0.1, 0.1, 0.05])


def test_candidates_of_a_trace_without_probabilities_say_so():
    trace = make_trace()
    del trace.arrays["top_probs"]
    fig = viz.candidates_figure(trace, 0)  # was a NameError (message_figure not imported)
    assert "No next-token probabilities" in fig.layout.annotations[0].text


def test_single_step_trace_and_missing_attention():
    one = make_trace(steps=1)
    for fig in (viz.attention_overlay(one, 0), viz.entropy_figure(one, 0, "mean"), viz.segment_share_figure(one, 0),
                viz.top_keys_figure(one, 0), viz.candidates_figure(one, 0)):
        assert isinstance(fig, go.Figure)
    assert viz.attention_overlay(one, 5).layout.title.text.startswith("Step 0")  # clamped
    bare = make_trace()
    for key in ("image_attn", "entropy", "segment_share", "top_key_pos", "top_key_attn", "head_image_attn"):
        del bare.arrays[key]
    assert "no recorded attention" in viz.attention_overlay(bare, 0).layout.annotations[0].text


@pytest.mark.parametrize("offset, step", [(0, 0), (1, 1), (4, 1), (5, 2), (99, 2)])
def test_character_offsets_map_to_steps(offset, step):
    assert viz.step_at_offset(["A", " cat", ""], offset) == step


def test_token_spans_one_per_step_with_labels():
    spans = viz.token_spans(["A", " cat", " and", ""], [(2, 5, "hallucinated")], current=2, ends_with_eos=True)
    assert spans == [("A", None), (" cat", "hallucinated"), (" and", viz.CURRENT_STEP), (" ⟨end⟩", None)]
    assert viz.span_offset([("A ", None), ("cat", "correct"), (".", None)], 2) == 5


def test_figures_keep_their_stated_height_with_a_picture():
    fig = viz.attention_overlay(make_trace(), 0, image=Image.new("RGB", (600, 400)), height=500)
    assert fig.layout.height == 500
