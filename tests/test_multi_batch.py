"""Several images and prompts in one batch: every column equals its solo run (float64: tokens, logits 1e-9)."""

import numpy as np
import pytest
import torch
from PIL import Image

from halviz.engine.decode import Decoder
from halviz.engine.multi import MultiBatchDecoder, Request, decode_requests
from halviz.engine.recorder import RecordOptions
from test_batch import _assert_close_logits, _assert_same_trace, _stack

NAMES = ["vanilla", "prunehal", "vasparse-masked", "vhr-tvhd", "vcd", "all"]
TOKENS = 6


def _second_photo():
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, size=(200, 260, 3), dtype=np.uint8))


def _check(loaded, requests_spec, tokens=TOKENS):
    """requests_spec: [(image, prompt, [column names])], batched by prompt length (decode_requests); each
    column against its solo decode. Returns the batch sizes (requests per model batch) that were used."""
    stacks = [[_stack(n) for n in names] for _, _, names in requests_spec]
    requests = [Request(image, prompt, s) for (image, prompt, _), s in zip(requests_spec, stacks)]
    sizes = []
    real = MultiBatchDecoder.__init__

    def spy(self, loaded, requests, *args, **kwargs):
        sizes.append(len(requests))
        real(self, loaded, requests, *args, **kwargs)

    MultiBatchDecoder.__init__ = spy
    try:
        results = decode_requests(loaded, requests, max_new_tokens=tokens, record=RecordOptions())
    finally:
        MultiBatchDecoder.__init__ = real
    for (image, prompt, names), request_stacks, columns in zip(requests_spec, stacks, results):
        for name, stack, (trace, column) in zip(names, request_stacks, columns):
            assert column.error is None, (name, column.error)
            solo_stack = _stack(name)
            solo = Decoder(loaded, image, prompt, solo_stack, max_new_tokens=tokens)
            solo_trace = solo.run_to_end()
            assert trace.arrays["token_ids"].tolist() == solo.token_ids, (prompt, name)
            _assert_close_logits(torch.cat(stack[-1].logits), torch.cat(solo_stack[-1].logits))
            _assert_same_trace(trace, solo_trace)
    return sizes


@pytest.mark.parametrize("family", ["llava-1.5", "llava-interleave"])
def test_images_and_prompts_of_different_lengths_in_one_batch_equal_solo_float64(tiny_models_f64, photo, family):
    other = _second_photo()
    sizes = _check(tiny_models_f64[family], [
        (photo, "Describe the image.", NAMES),
        (other, "Is there a cup in the image? Answer the question using a single word or phrase.", ["vanilla", "vhr-tvhd", "vcd"]),
        (photo, "Describe.", ["vanilla", "prunehal"]),
        (other, "Describe the image.", ["all", "vanilla"]),
        (photo, "Is there a cup in the image? Answer the question using a single word or phrase.", ["prunehal"]),
    ])
    assert max(sizes) >= 2  # requests of several images really shared a batch


def test_unequal_prompt_lengths_are_refused_in_one_batch(tiny_models, photo):
    with pytest.raises(ValueError, match="equal token length"):
        MultiBatchDecoder(tiny_models["llava-1.5"], [Request(photo, "Describe."),
                                                     Request(photo, "Describe the image in detail, please.")])


def test_toy_model_batch_composition_does_not_change_any_sample():
    from halviz.models import load_model
    from halviz.toy import scenes

    toy = load_model("toy", device="cpu", dtype=torch.float64)
    a, b = (s.image for s in scenes.heldout(2, seed=5))
    sizes = _check(toy, [
        (a, "Please describe this image in detail.", ["vanilla", "prunehal", "vhr-tvhd", "kvsmooth"]),
        (b, "Please describe this image in detail.", ["vanilla", "vasparse-masked", "all"]),
        (a, "Is there an apple in the image?", ["vanilla", "vcd"]),
        (b, "Is there an apple in the image?", ["kvsmooth"]),
    ], tokens=10)
    assert sizes == [2, 2]
