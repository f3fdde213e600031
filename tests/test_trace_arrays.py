"""Issue 28: a trace whose attention arrays are incomplete is refused when it is opened, with a
sentence naming the missing array, never accepted and then "passed the checks but cannot be drawn"."""

import pytest
from PIL import Image

from halviz import viz
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.trace import Trace, TraceFormatError
from tools.hostile import PARTIAL_ATTENTION, EXAMPLES, PROMPT, crafted_traces, read_npz, without, write_npz


@pytest.fixture(scope="module")
def good_trace(toy, tmp_path_factory):
    trace = Decoder(toy, Image.open(EXAMPLES / "toy-scene.png"), PROMPT, [], 3).run_to_end()
    npz, _ = trace.save(tmp_path_factory.mktemp("trace") / "good")
    return npz


def draw_every_panel(trace: Trace) -> None:
    """What the debugger draws for a trace (the figures it opens with, at step 0, layer and head means)."""
    for step in range(trace.num_steps):
        viz.attention_overlay(trace, step, "mean", "mean")
        viz.segment_share_figure(trace, step)
        viz.top_keys_figure(trace, step)
        viz.entropy_figure(trace, step, "mean")
        viz.candidates_figure(trace, step)
    layers = [int(l) for l in trace.meta.get("head_layers") or []]
    if layers:
        viz.attention_overlay(trace, 0, layers[0], 0)


def test_the_engines_trace_holds_every_attention_array_and_draws(good_trace):
    trace = Trace.load(good_trace)
    assert trace.has_attention and trace.meta["head_layers"]
    assert all(name in trace.arrays for name in PARTIAL_ATTENTION)
    draw_every_panel(trace)


@pytest.mark.parametrize("name", PARTIAL_ATTENTION)
def test_a_trace_missing_one_attention_array_is_refused_naming_it(good_trace, tmp_path, name):
    meta, arrays = read_npz(good_trace)
    path = write_npz(tmp_path / f"no-{name}.npz", meta, without(arrays, name))
    with pytest.raises(TraceFormatError) as refused:
        Trace.load(path)
    message = str(refused.value)
    assert f"lacks the attention array {name}" in message, message
    assert message.startswith(f"no-{name}.npz is inconsistent:"), message


def test_attention_arrays_without_image_attn_are_refused(good_trace, tmp_path):
    meta, arrays = read_npz(good_trace)
    path = write_npz(tmp_path / "no-image-attn.npz", meta, without(arrays, "image_attn"))
    with pytest.raises(TraceFormatError, match="lacks the attention array image_attn"):
        Trace.load(path)


def test_a_trace_without_any_attention_still_opens(good_trace, tmp_path):
    meta, arrays = read_npz(good_trace)
    plain = {k: v for k, v in arrays.items() if k in ("token_ids", "top_ids", "top_probs", "step_ms")}
    trace = Trace.load(write_npz(tmp_path / "plain.npz", meta, plain))
    assert not trace.has_attention
    draw_every_panel(trace)  # each panel says "no recorded attention"


def test_a_trace_recorded_without_single_heads_opens_and_draws(toy, tmp_path):
    """head_layers=(): the engine writes head_image_attn as (T, 0, 0, N); that is complete, not missing."""
    decoder = Decoder(toy, Image.open(EXAMPLES / "toy-scene.png"), PROMPT, [], 3,
                      record=RecordOptions(head_layers=()))
    npz, _ = decoder.run_to_end().save(tmp_path / "no-heads")
    trace = Trace.load(npz)
    assert trace.meta["head_layers"] == [] and trace.arrays["head_image_attn"].size == 0
    draw_every_panel(trace)
    meta, arrays = read_npz(npz)  # with no single heads recorded their array may be left out
    draw_every_panel(Trace.load(write_npz(tmp_path / "no-heads-array.npz", meta,
                                          without(arrays, "head_image_attn"))))


def test_the_crafted_partial_traces_are_among_the_hostile_replays(good_trace, tmp_path):
    crafted = crafted_traces(good_trace, tmp_path)
    for name in PARTIAL_ATTENTION:
        with pytest.raises(TraceFormatError, match=f"lacks the attention array {name}"):
            Trace.load(crafted[f"attention-without-{name}"])
