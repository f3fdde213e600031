"""VASparse against independent computations: hand-computed δ and top-S, eager attentions for the
saliency and sink statistics, a spy-run ℓ_φ for the contrast, and vanilla decoding when switched off."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.methods import METHODS, build_stack
from halviz.methods.base import Method
from halviz.methods.vasparse import (VASparse, contrast_logits, keep_top, saliency_from_mass, selection_scores,
                                     sink_penalty, sink_weights, unmasked, vasparse_layers)

FAMILIES = ["llava-1.5", "llava-interleave"]


class LogitSpy(Method):
    """Keeps the logits it receives; ``order`` places it before or after VASparse (20)."""

    name = "logit-spy"

    def __init__(self, order: int):
        super().__init__()
        self.order = order
        self.logits: list[torch.Tensor] = []

    def edit_logits(self, run, logits):
        self.logits.append(logits.clone())
        return logits


class ScoreSpy(Method):
    """Keeps the main pass's decode-step attention logits of every layer as it sees them."""

    name = "score-spy"

    def __init__(self, order: int):
        super().__init__()
        self.order = order
        self.scores: list[tuple[int, int, torch.Tensor]] = []

    def uses_scores(self, run, layer):
        return run.variant is None and run.phase == "decode"

    def edit_scores(self, run, layer, scores):
        self.scores.append((run.step, layer, scores.clone()))
        return scores


class PhiSpy(Method):
    """Computes ℓ_φ on its own: a second decode-step pass masking the spec's seeded random image columns."""

    name = "phi-spy"
    order = 15

    def __init__(self, layers, seed: int, rate: float):
        super().__init__()
        self.layers, self.seed, self.rate = set(layers), seed, rate
        self.phi: list[torch.Tensor] = []

    def setup(self, run):
        n = len(run.image_index)
        drawn = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[: round(self.rate * n)]
        self.columns = run.image_index[drawn]

    def before_forward(self, run, input_ids):
        self.phi.append(run.forward(variant="phi-spy", restore_cache=True, input_ids=input_ids))

    def uses_scores(self, run, layer):
        return run.variant == "phi-spy" and layer in self.layers

    def edit_scores(self, run, layer, scores):
        scores = scores.clone()
        scores[..., self.columns] = float("-inf")
        return scores


def _ceil(ratio: float, n: int) -> int:
    return math.ceil(Fraction(ratio).limit_denominator(1000) * n)


def _hand_keep(scores, saliency, lam, ratio):
    """Top-S by δ per row with plain Python: δ = minmax((q·K)²) + λP, masked never, newest always."""
    b, h, q, kv = scores.shape
    keep = np.zeros(scores.shape, dtype=bool)
    for bi in range(b):
        for hi in range(h):
            for qi in range(q):
                row = scores[bi, hi, qi].tolist()
                valid = [j for j in range(kv) if row[j] > -1e30]
                sq = {j: row[j] ** 2 for j in valid}
                lo, hi_ = min(sq.values()), max(sq.values())
                delta = {j: (sq[j] - lo) / (hi_ - lo) + lam * float(saliency[bi, j]) for j in valid}
                delta[kv - 1] = float("inf")
                ranked = sorted(valid, key=lambda j: (-delta[j], j))
                for j in ranked[: _ceil(ratio, len(valid))]:
                    keep[bi, hi, qi, j] = True
    return keep


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("lam", [0.0, 1.0, 5.0])
def test_kept_set_is_top_s_by_delta(ratio, lam):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 1, 11, generator=gen, dtype=torch.float64) * 2
    scores[0, :, :, 4] = float("-inf")  # a column another method masked
    scores[1, 1, :, 2] = torch.finfo(torch.float32).min  # masked by a mask function's minimum
    mass = torch.rand(2, 10, generator=gen, dtype=torch.float64)
    saliency = saliency_from_mass(mass)
    # P by hand: softmax over the previous tokens, 0 for the newest
    expected_p = np.exp(mass.numpy()) / np.exp(mass.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(saliency[:, :-1].numpy(), expected_p, rtol=1e-12)
    assert (saliency[:, -1] == 0).all()
    keep = keep_top(selection_scores(scores, saliency, lam), ratio, unmasked(scores))
    np.testing.assert_array_equal(keep.numpy(), _hand_keep(scores.numpy(), saliency.numpy(), lam, ratio))
    assert not keep[0, :, :, 4].any() and keep[..., -1].all()


def test_sink_weights_and_penalty_on_small_tensors():
    gen = torch.Generator().manual_seed(1)
    n = 6
    attn = torch.softmax(torch.randn(n, n, generator=gen, dtype=torch.float64)
                         .masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")), -1)
    text = torch.tensor([True, True, False, False, True, True])
    # Σ_{i≥j} a_{i,j} by hand, then a softmax over the text columns only
    sums = [sum(float(attn[i, j]) for i in range(j, n)) for j in range(n)]
    z = sum(math.exp(sums[j]) for j in range(n) if text[j])
    expected_w = [math.exp(sums[j]) / z if text[j] else 0.0 for j in range(n)]
    w = sink_weights(attn.sum(0, keepdim=True), text)
    np.testing.assert_allclose(w[0].numpy(), expected_w, rtol=1e-12)

    beta = 0.3
    scores = torch.randn(1, 2, 1, n, generator=gen, dtype=torch.float64)
    scores[..., 3] = float("-inf")
    out = sink_penalty(scores, w, text, beta)
    for j in range(n):
        s = scores[..., j]
        want = (1 + beta) * s - beta * (expected_w[j] * s) if text[j] else s
        if torch.isinf(s).all():
            assert torch.isneginf(out[..., j]).all()
        else:
            np.testing.assert_allclose(out[..., j].numpy(), want.numpy(), rtol=1e-12)


def test_contrast_with_plausibility_cut_on_small_tensors():
    theta = torch.tensor([[3.0, 2.9, 1.0, -2.0, 0.5]], dtype=torch.float64)
    phi = torch.tensor([[1.0, 3.5, 0.0, 4.0, -1.0]], dtype=torch.float64)
    out = contrast_logits(theta, phi, alpha=0.5, cut=0.1)
    p = torch.softmax(theta, -1)[0]
    for j in range(5):
        if p[j] >= 0.1 * p.max():
            assert out[0, j].item() == pytest.approx(1.5 * theta[0, j].item() - 0.5 * phi[0, j].item())
        else:
            assert out[0, j].item() == float("-inf")
    assert out[0].argmax().item() == 0 and torch.isneginf(out[0, 3])  # token 3 is implausible despite ℓ_φ


def test_layer_rule():
    assert vasparse_layers(32) == tuple(range(2, 32))
    assert vasparse_layers(24) == tuple(range(2, 24))
    assert vasparse_layers(40) == tuple(range(3, 40))
    assert vasparse_layers(3) == (1, 2) and vasparse_layers(2) == (1,)
    assert vasparse_layers(32, first_layer=5) == tuple(range(5, 32))


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_count_and_set_inside_a_run(tiny_models, photo, family):
    ratio = 0.5
    before, after = ScoreSpy(order=19), ScoreSpy(order=21)
    # λ = 0: δ depends on q·K only, so the kept set can be checked from the incoming logits alone
    methods = [before, VASparse(saliency_weight=0.0, keep_ratio=ratio, sink=False), after]
    dec = Decoder(tiny_models[family], photo, methods=methods, max_new_tokens=5)
    dec.run_to_end()
    layers = set(vasparse_layers(dec.run.num_layers))
    assert len(after.scores) == len(before.scores) == 4 * dec.run.num_layers
    for (step, layer, s_in), (_, _, s_out) in zip(before.scores, after.scores):
        kv = dec.run.prompt_len + step
        assert s_in.shape[-1] == kv
        kept = torch.isfinite(s_out)
        if layer not in layers:
            assert kept.all()
            continue
        assert (kept.sum(-1) == _ceil(ratio, kv)).all()
        np.testing.assert_array_equal(kept.numpy(), _hand_keep(s_in.numpy(), np.zeros((1, kv)), 0.0, ratio))
        assert torch.equal(s_out[kept], s_in[kept])  # kept logits untouched (sink penalty off)
    # with saliency on, the count rule still holds
    after = ScoreSpy(order=21)
    Decoder(tiny_models[family], photo, methods=[VASparse(keep_ratio=0.3), after], max_new_tokens=3).run_to_end()
    for step, layer, s_out in after.scores:
        if layer in layers:
            assert (torch.isfinite(s_out).sum(-1) == _ceil(0.3, dec.run.prompt_len + step)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_final_logits_are_the_cut_contrast_of_theta_and_phi(tiny_models, photo, family):
    alpha, seed, rate = 1.0, 7, 0.5
    loaded = tiny_models[family]
    layers = vasparse_layers(loaded.adapter.num_layers)
    theta_spy, final_spy = LogitSpy(order=15), LogitSpy(order=25)
    phi_spy = PhiSpy(layers, seed, rate)
    method = VASparse(alpha=alpha, seed=seed, mask_rate=rate, sink=False)
    dec = Decoder(loaded, photo, methods=[theta_spy, phi_spy, method, final_spy], max_new_tokens=6)
    trace = dec.run_to_end()
    assert torch.equal(final_spy.logits[0], theta_spy.logits[0])  # step 0: no ℓ_φ, uncontrasted
    assert len(phi_spy.phi) == len(dec.token_ids) - 1
    for theta, phi, final in zip(theta_spy.logits[1:], phi_spy.phi, final_spy.logits[1:]):
        assert not torch.allclose(theta, phi)
        p = torch.softmax(theta, -1)
        expected = torch.where(p >= 0.1 * p.max(), (1 + alpha) * theta - alpha * phi, float("-inf"))
        assert torch.equal(torch.isinf(final), torch.isinf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(final[finite], expected[finite], rtol=1e-5, atol=1e-5)
    phi_ids = trace.arrays["method/vasparse/phi_top_ids"]
    assert (phi_ids[0] == -1).all()
    np.testing.assert_array_equal(phi_ids[1:], np.stack([p[0].topk(5).indices.numpy() for p in phi_spy.phi]))


@pytest.mark.parametrize("family", FAMILIES)
def test_saliency_and_sink_statistics_match_eager_attention(tiny_models, tiny_model_dirs, photo, family):
    # S = 1 and β = α = 0: the decode is plain, so teacher-forced eager attentions are its attentions
    dec = Decoder(tiny_models[family], photo, methods=[VASparse(keep_ratio=1.0, alpha=0.0, sink_beta=0.0)],
                  max_new_tokens=5, record=RecordOptions(enabled=False))
    trace = dec.run_to_end()
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[family], attn_implementation="eager").eval()
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        attentions = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"], output_attentions=True).attentions
    n = ids.shape[1]
    image = list(dec.layout.positions)
    last = attentions[-1][0].double().mean(0)  # (n, n) head-mean, last layer
    np.testing.assert_allclose(trace.arrays["method/vasparse/image_mass"], last[:, image].sum(-1).numpy(), atol=1e-5)
    text = np.array([i for i in range(n) if i not in set(image)])
    np.testing.assert_array_equal(trace.arrays["method/vasparse/sink_positions"], text)
    for slot, layer in enumerate(trace.arrays["method/vasparse/layers"]):
        sums = attentions[layer][0].double().mean(0).sum(0).numpy()[text]  # Σ_{i≥j} a_{i,j} (causal)
        w = np.exp(sums - sums.max()) / np.exp(sums - sums.max()).sum()
        np.testing.assert_allclose(trace.arrays["method/vasparse/sink_w"][slot], w, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_switched_off_gives_vanilla_tokens(tiny_models, photo, family):
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=10)
    vanilla.run_to_end()
    off = Decoder(tiny_models[family], photo, methods=[VASparse(keep_ratio=1.0, alpha=0.0, sink_beta=0.0)],
                  max_new_tokens=10)
    trace = off.run_to_end()
    assert off.token_ids == vanilla.token_ids
    assert (trace.arrays["method/vasparse/kept_image"] == 1).all()
    on = Decoder(tiny_models[family], photo, methods=[VASparse(alpha=1.0, keep_ratio=0.3)], max_new_tokens=10)
    on.run_to_end()
    assert on.token_ids != vanilla.token_ids  # the method does act on these models


def test_trace_arrays(tiny_models, photo):
    dec = Decoder(tiny_models["llava-1.5"], photo, methods=[VASparse()], max_new_tokens=4)
    arrays = dec.run_to_end().arrays
    kept = arrays["method/vasparse/kept_image"]
    assert kept.shape == (4, 576) and kept.dtype == np.float16
    assert (kept[0] == 1).all() and (kept[1:] >= 0).all() and (kept[1:] <= 1).all() and (kept[1:] < 1).any()
    assert arrays["method/vasparse/theta_top_ids"].shape == (4, 5)
    assert np.isnan(arrays["method/vasparse/phi_top_logits"][0]).all()
    np.testing.assert_array_equal(arrays["method/vasparse/theta_top_ids"][:, 0][:1], arrays["token_ids"][:1])


def test_registered_and_stacks():
    assert METHODS["vasparse"] is VASparse and VASparse.order == 20
    stack = build_stack(["vasparse", "vhr"], {"vasparse": {"keep_ratio": 0.25}})
    assert [m.name for m in stack] == ["vasparse", "vhr"] and stack[0].keep_ratio == 0.25
