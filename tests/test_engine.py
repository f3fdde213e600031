"""The engine against independent computations: SDPA logits, eager attentions, the processor."""

import threading

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.methods.base import Method
from halviz.models import ModelLoadError, load_model
from halviz.trace import Trace, TraceFormatError
from spies import LogitSpy

FAMILIES = ["llava-1.5", "llava-interleave"]
F16 = 2.0**-11  # float16 relative rounding error


class MaskHalfImage(Method):
    """A test method with a visible effect: hide every second image token in every layer."""

    name = "mask-half"
    hook_points = frozenset({"scores"})

    def wants_scores(self, p, layer):
        return True

    def edit_scores(self, p, layer, scores, keys):
        scores = scores.clone()
        scores[..., p.column.image_index[::2]] = float("-inf")
        return scores


def reference_logits(folder, inputs, tokens, attn, dtype=torch.float32):
    """Teacher-forced logits of prompt + generated tokens from a model with a stock attention."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn, dtype=dtype).eval()
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens[:-1]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=inputs["pixel_values"], output_attentions=attn == "eager")
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("recording", [False, True])
def test_passthrough_matches_sdpa(tiny_models_f64, tiny_model_dirs, photo, family, recording):
    spy = LogitSpy()
    dec = Decoder(tiny_models_f64[family], photo, methods=[spy], max_new_tokens=6,
                  record=RecordOptions(enabled=recording))
    dec.run_to_end()
    ref = reference_logits(tiny_model_dirs[family], dec.inputs, dec.token_ids, "sdpa", torch.float64)
    n = dec.run.prompt_len
    ours = torch.cat(spy.logits).double()
    theirs = ref.logits[0, n - 1: n - 1 + len(dec.token_ids)]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5
    # greedy tokens are the argmax of the reference logits
    assert dec.token_ids == theirs.argmax(-1).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_attention_equals_eager(tiny_models, tiny_model_dirs, photo, family):
    dec = Decoder(tiny_models[family], photo, max_new_tokens=5)
    trace = dec.run_to_end()
    ref = reference_logits(tiny_model_dirs[family], dec.inputs, dec.token_ids, "eager")
    n = dec.run.prompt_len
    image = list(dec.layout.positions)
    seg = np.array(trace.meta["segment_ids_prompt"] + [4] * len(dec.token_ids))
    for step in range(trace.num_steps):
        pos = n - 1 + step
        for layer in range(trace.meta["num_layers"]):
            row = ref.attentions[layer][0, :, pos, : pos + 1].double().numpy()  # (H, kv)
            mean = row.mean(0)
            # stored as float16: allow its rounding (half an ulp, 2**-11 relative) on top of 1e-4
            np.testing.assert_allclose(trace.arrays["image_attn"][step, layer], mean[image], atol=1e-4, rtol=F16)
            ent = -(row * np.log(np.clip(row, 1e-30, None))).sum(-1).mean()
            assert abs(trace.arrays["entropy"][step, layer] - ent) <= 1e-4
            shares = np.bincount(seg[: pos + 1], weights=mean, minlength=5)
            np.testing.assert_allclose(trace.arrays["segment_share"][step, layer], shares, atol=1e-4)
            np.testing.assert_array_equal(np.sort(trace.arrays["top_key_pos"][step, layer]),
                                          np.sort(np.argsort(-mean)[:5]))
            if layer in trace.meta["head_layers"]:
                slot = trace.meta["head_layers"].index(layer)
                np.testing.assert_allclose(trace.arrays["head_image_attn"][step, slot], row[:, image], atol=1e-4,
                                           rtol=F16)


def test_llava15_image_span_and_grid(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    inputs, layout = loaded.adapter.prepare(photo, "Please describe this image in detail.", loaded.device, loaded.dtype)
    ids = inputs["input_ids"][0]
    expanded = torch.nonzero(ids == loaded.model.config.image_token_id).flatten().tolist()
    assert len(expanded) == 576 and (layout.rows, layout.cols) == (24, 24)
    assert list(layout.positions) == expanded == list(range(expanded[0], expanded[0] + 576))
    # 400×300 → shortest edge 336: 448×336, centre crop 336 → original x ∈ [56/1.12, 392/1.12] = [50, 350]
    boxes = layout.boxes
    assert boxes[0, 0, 0] == pytest.approx(50.0, abs=0.01) and boxes[0, -1, 2] == pytest.approx(350.0, abs=0.01)
    assert boxes[0, 0, 1] == 0.0 and boxes[-1, 0, 3] == pytest.approx(300.0, abs=0.01)
    assert boxes[0, 1, 0] - boxes[0, 0, 0] == pytest.approx(14 / 1.12, abs=0.01)


def test_interleave_grid_and_gqa(tiny_models, photo):
    loaded = tiny_models["llava-interleave"]
    assert loaded.adapter.num_kv_heads == 2 and loaded.adapter.num_heads == 4
    _, layout = loaded.adapter.prepare(photo, "Describe.", loaded.device, loaded.dtype)
    assert (layout.rows, layout.cols) == (8, 8) and len(layout.positions) == 64
    # SigLIP resizes without cropping: the grid stretches over the whole picture
    assert layout.boxes[0, 0, :2].tolist() == [0, 0] and layout.boxes[-1, -1, 2:].tolist() == [400, 300]


def _alone(loaded, image, methods):
    dec = Decoder(loaded, image, methods=methods, max_new_tokens=8)
    return dec.token_ids if dec.run_to_end() else None, dec.trace()


def test_two_threads_give_the_same_results_as_alone(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    other = photo.transpose(0)  # mirrored picture: a different input
    alone_a = _alone(loaded, photo, [])
    alone_b = _alone(loaded, other, [MaskHalfImage()])
    assert alone_a[0] != alone_b[0] or not np.array_equal(alone_a[1].arrays["image_attn"], alone_b[1].arrays["image_attn"])
    results = {}
    barrier = threading.Barrier(2)

    def work(key, image, methods):
        barrier.wait()
        results[key] = _alone(loaded, image, methods)

    threads = [threading.Thread(target=work, args=("a", photo, [])),
               threading.Thread(target=work, args=("b", other, [MaskHalfImage()]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, alone in (("a", alone_a), ("b", alone_b)):
        tokens, trace = results[key]
        assert tokens == alone[0]
        for name, array in alone[1].arrays.items():
            if name != "step_ms":
                np.testing.assert_array_equal(trace.arrays[name], array)


def test_interleaved_generators_in_one_thread(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    alone_a, alone_b = _alone(loaded, photo, []), _alone(loaded, photo, [MaskHalfImage()])
    a = Decoder(loaded, photo, max_new_tokens=8)
    b = Decoder(loaded, photo, methods=[MaskHalfImage()], max_new_tokens=8)
    for _ in zip(iter(a), iter(b)):
        pass
    assert a.token_ids == alone_a[0] and b.token_ids == alone_b[0]
    np.testing.assert_array_equal(b.trace().arrays["image_attn"], alone_b[1].arrays["image_attn"])


def test_trace_round_trip(tiny_models, photo, tmp_path):
    trace = Decoder(tiny_models["llava-interleave"], photo, max_new_tokens=4).run_to_end()
    npz, js = trace.save(tmp_path / "run1")
    assert npz.exists() and js.exists()
    back = Trace.load(npz)
    assert back.meta == trace.meta
    assert set(back.arrays) == set(trace.arrays)
    for name, array in trace.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)


def test_trace_load_refuses_pickles_and_junk(tmp_path):
    bad = tmp_path / "evil.npz"
    np.savez(bad, token_ids=np.array([object()], dtype=object))
    with pytest.raises(TraceFormatError):
        Trace.load(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(TraceFormatError):
        Trace.load(junk)


def test_unknown_model_id_fails_clearly():
    with pytest.raises(ModelLoadError, match="nobody-xyz/not-a-model"):
        load_model("nobody-xyz/not-a-model")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="supports"):
        load_model(str(tmp_path))


def test_bad_arguments(tiny_models, photo):
    with pytest.raises(ValueError):
        Decoder(tiny_models["llava-1.5"], photo, prompt="   ")
    with pytest.raises(ValueError):
        Decoder(tiny_models["llava-1.5"], photo, max_new_tokens=0)


def test_trace_size_formula_matches_a_real_trace(tiny_models, photo):
    from halviz.engine.recorder import trace_bytes_once, trace_bytes_per_step

    loaded = tiny_models["llava-1.5"]
    trace = Decoder(loaded, photo, max_new_tokens=3, stop_at_eos=False).run_to_end()
    per_step = trace_bytes_per_step(loaded.adapter.num_layers, loaded.adapter.num_heads, 576, RecordOptions(),
                                    lens_layers=len(trace.meta["lens_layers"]))
    assert trace.meta["lens_layers"]  # the lens is recorded by default
    once = trace_bytes_once(loaded.adapter.num_layers, trace.meta["prompt_len"])
    assert trace.nbytes() == 3 * per_step + once
