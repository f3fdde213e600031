"""The sink panel tells visual sinks from BOS/text sinks from the recorded ``sink_tokens``: outlined cells
in the top-token grid by kind, the image bar split by the attention on visual sinks (computed here from
``image_attn``), and a plain sentence on the toy that it has no visual sink by design."""

import numpy as np
import pytest

import halviz
from halviz.viz.sinks import segment_share_figure, sink_kinds, top_keys_figure


@pytest.fixture(scope="module")
def toy_trace(toy):
    return halviz.compare(halviz.EXAMPLES_DIR / "toy-knife-no-fork.png", model=toy, max_new_tokens=5)["vanilla"].trace


def outlined(fig, kind_word):
    return {(round(s.x0 + 0.46), round(s.y0 + 0.44)) for s in fig.layout.shapes if kind_word in s.name}


def test_the_toy_has_bos_sinks_only_and_says_it_has_no_visual_sink_by_design(toy_trace):
    kinds = sink_kinds(toy_trace)
    assert (kinds[:, 0] == 1).all() and not (kinds == 2).any()
    fig = top_keys_figure(toy_trace, 3)
    assert "the toy has none by design" in fig.layout.title.text
    positions = toy_trace.arrays["top_key_pos"][3]
    expected = {(r, l) for l in range(positions.shape[0]) for r in range(positions.shape[1]) if positions[l, r] == 0}
    assert outlined(fig, "text sink") == expected and not outlined(fig, "visual sink")
    shares = segment_share_figure(toy_trace, 3)
    assert [bar.name for bar in shares.data if "visual" in bar.name] == []  # no split without a visual sink


def test_a_visual_sink_is_outlined_and_its_attention_split_off_the_image_bar(toy_trace):
    trace = halviz.Trace(dict(toy_trace.meta), {k: v.copy() for k, v in toy_trace.arrays.items()})
    step, layer = 3, 4
    image = trace.meta["image_positions"]
    pos = trace.arrays["top_key_pos"][step]
    patch = next(int(p) for p in pos[layer] if p in image)  # an image token among the layer's top keys
    other = image[7] if image[7] != patch else image[8]
    trace.arrays["sink_tokens"][layer, [patch, other]] = 1
    fig = top_keys_figure(trace, step)
    assert outlined(fig, "visual sink") == {(list(pos[layer]).index(patch), layer)}
    assert "visual sinks (image tokens with the massive activation) in layers 4" in fig.layout.title.text
    bars = {bar.name: np.asarray(bar.x, float) for bar in segment_share_figure(trace, step).data}
    attention = trace.arrays["image_attn"][step].astype(np.float64)
    want = attention[layer, image.index(patch)] + attention[layer, image.index(other)]
    assert bars["image: visual sinks"][1 + layer] == pytest.approx(want, abs=1e-6)  # row 0 is the mean
    image_share = trace.arrays["segment_share"][step][layer, trace.meta["segments"].index("image")]
    assert bars["image: other tokens"][1 + layer] == pytest.approx(image_share - want, abs=1e-6)
    assert bars["image: visual sinks"][1 + 3] == 0


def test_an_old_trace_without_sink_tokens_still_draws_and_says_so(toy_trace):
    arrays = {k: v for k, v in toy_trace.arrays.items() if k != "sink_tokens"}
    trace = halviz.Trace(dict(toy_trace.meta), arrays)
    fig = top_keys_figure(trace, 2)
    assert not fig.layout.shapes and "did not record which tokens are sinks" in fig.layout.title.text
