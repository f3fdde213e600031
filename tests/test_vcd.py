"""VCD against independent computations: the noise schedule in numpy, the noising formula on small
tensors, and a run's logits against two stock models' teacher-forced logits (clean and noised image)."""

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.methods import METHODS
from halviz.methods.vcd import VCD, diffusion_noise, noise_schedule
from spies import LogitSpy


def _alpha_bar_numpy(t):
    s = np.linspace(-6, 6, 1000)
    betas = 1 / (1 + np.exp(-s)) * (0.5e-2 - 1e-5) + 1e-5
    return float(np.prod(1 - betas[: t + 1]))


def test_noise_schedule_matches_numpy():
    schedule = noise_schedule()
    for t in (0, 1, 250, 500, 999):
        assert abs(schedule[t].item() - _alpha_bar_numpy(t)) < 1e-12
    assert 0 < schedule[500].item() < schedule[0].item() < 1  # noise grows with t


def test_diffusion_noise_formula_on_small_tensors():
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    eps = torch.tensor([[0.1, 0.2], [-0.3, 1.0]], dtype=torch.float64)
    a = _alpha_bar_numpy(500)
    want = np.sqrt(a) * x.numpy() + np.sqrt(1 - a) * eps.numpy()
    np.testing.assert_allclose(diffusion_noise(x, 500, eps).numpy(), want, rtol=1e-12)


def test_logits_are_the_contrast_of_the_clean_and_the_noised_image(tiny_models_f64, tiny_model_dirs, photo):
    loaded = tiny_models_f64["llava-1.5"]
    seed, alpha, beta = 3, 1.0, 0.1
    spy = LogitSpy()
    dec = Decoder(loaded, photo, "Describe.", [VCD(seed=seed, alpha=alpha, beta=beta), spy], max_new_tokens=5,
                  stop_at_eos=False)
    dec.run_to_end()
    stock = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs["llava-1.5"], dtype=torch.float64,
                                                          attn_implementation="sdpa").eval()
    pixels = dec.inputs["pixel_values"]
    eps = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
    a = _alpha_bar_numpy(500)
    noised = np.sqrt(a) * pixels + np.sqrt(1 - a) * eps
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    n = dec.run.prompt_len
    with torch.no_grad():
        theta = stock(input_ids=ids, pixel_values=pixels).logits[0, n - 1:]
        prior = stock(input_ids=ids, pixel_values=noised).logits[0, n - 1:]
    assert not torch.allclose(theta, prior)  # the noise matters
    p = torch.softmax(theta, -1)
    want = torch.where(p >= beta * p.amax(-1, keepdim=True), (1 + alpha) * theta - alpha * prior, -torch.inf)
    got = torch.cat(spy.logits)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-8, atol=1e-8)
    assert dec.token_ids == want.argmax(-1).tolist()


def test_alpha_zero_is_vanilla_and_registered(tiny_models, photo):
    loaded = tiny_models["llava-interleave"]
    off = Decoder(loaded, photo, "Describe.", [VCD(alpha=0.0, beta=0.0)], max_new_tokens=8)
    off.run_to_end()
    vanilla = Decoder(loaded, photo, "Describe.", [], max_new_tokens=8)
    vanilla.run_to_end()
    assert off.token_ids == vanilla.token_ids
    assert METHODS["vcd"] is VCD
