"""CAI against hand computations: relevance, lens entropy, tilt and contrast on small tensors with loops
of their own; a whole decode against a stock float64 model whose attention logits a loop written here
tilts (gates and weights found by hooks on the stock model, not by halviz); the contrast against the
stock model's own text-only logits; stacking in a batch; the panel against the record."""

import math

import numpy as np
import pytest
import torch

from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.methods.cai import CAI, cai_contrast, cai_start_layer, gated_layers, lens_entropy, relevance, tilt
from halviz.trace import Trace
from halviz.viz.panels import panel_for
from halviz.viz.panels.cai import cai_gate_figure, cai_weights_figure
from spies import LogitSpy
from stock import _stock, decode_logits, eager_scores

TOKENS = 6
FAMILIES = ("llava-1.5", "llava-interleave")


# ---- the pieces on hand-made tensors ----------------------------------------------------------------
def test_relevance_by_hand():
    visual = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, -3.0]], dtype=torch.float64)
    text = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    cos = [sum(a * b for a, b in zip(v, text.tolist())) / (math.hypot(*v) * math.hypot(*text.tolist()))
           for v in visual.tolist()]
    low = min(cos)
    expected = [1 / (1 + math.exp(-5.0 * (c - low))) for c in cos]
    got = relevance(visual, text, 5.0)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert got.min().item() == pytest.approx(0.5)  # the least related patch is always 0.5


def test_lens_entropy_by_hand():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64)
    z = sum(math.exp(x) for x in logits.tolist())
    p = [math.exp(x) / z for x in logits.tolist()]
    expected = -sum(q * math.log(q + 1e-9) for q in p) / math.log(10)
    assert lens_entropy(logits).item() == pytest.approx(expected, abs=1e-12)
    uniform = torch.zeros(100, dtype=torch.float64)
    assert lens_entropy(uniform).item() == pytest.approx(2.0, abs=1e-6)  # log10(100) bans


def test_tilt_raises_every_finite_logit_and_keeps_minus_inf():
    a = torch.tensor([[2.0, -1.0, 0.0, float("-inf")]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.9, 1.0, 0.7], dtype=torch.float64)
    got = tilt(a, w)
    assert got[0, :3].tolist() == pytest.approx([2.0 + 2.0 * 0.5, -1.0 + 1.0 * 0.9, 0.0])
    assert got[0, 3].item() == float("-inf") and not torch.isnan(got).any()


def test_contrast_is_the_released_formula():
    main = torch.tensor([[3.0, 2.5, 0.0, -2.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 3.0, 0.5, 0.0]], dtype=torch.float64)
    gamma = 3.0
    lp = torch.log_softmax(main, -1)[0].tolist()
    lq = torch.log_softmax(text, -1)[0].tolist()
    cutoff = math.log(0.1) + max(lp)
    expected = [-math.inf if a < cutoff else gamma * (a - b) + b for a, b in zip(lp, lq)]
    got = cai_contrast(main, text, gamma)[0].tolist()
    assert got[:2] == pytest.approx(expected[:2], abs=1e-12) and got[2:] == expected[2:] == [-math.inf] * 2
    # the contrast flips the choice here: the text-only row prefers token 1, so token 0 gains
    assert int(np.argmax(got)) == 0 and int(np.argmax(lq)) == 1


def test_layers_and_defaults():
    assert cai_start_layer(32) == 27 and gated_layers(32) == tuple(range(28, 32))
    assert gated_layers(6) == (5,) and gated_layers(3) == (2,) and gated_layers(2) == (1,)
    assert gated_layers(32, 30) == (31,) and gated_layers(6, 2) == (3, 4, 5)
    defaults = {k.name: k.default for k in CAI.knobs}
    assert defaults == {"threshold": 0.1, "start_layer": -1, "gamma": 3.0, "sharpness": 100.0}
    assert list(METHODS)[-1] == "cai" and METHODS["cai"] is CAI


# ---- the whole method against a stock model edited by hand ----------------------------------------
def _reference(folder, name, dec, threshold, gated, sharpness=100.0):
    """Stock float64 logits with CAI's rule written as loops: for every predicting query (the prompt's last
    position, then each generated one) and every gated layer whose previous layer's lens entropy exceeds
    the threshold, its logits to the image tokens become a + |a|·w."""
    n = dec.run.prompt_len
    image = list(dec.layout.positions)
    after = max(image) + 1
    found = {"weights": {}, "gate": {}}
    modules = {}

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scores, v = eager_scores(query, key, value, attention_mask, scaling)
        layer = module.layer_idx
        scores = scores.clone()
        for r in range(n - 1, scores.shape[2]):
            if found["gate"].get((layer, r)):
                w = found["weights"][r]
                for h in range(scores.shape[1]):
                    for j, position in enumerate(image):
                        a = scores[0, h, r, position].item()
                        scores[0, h, r, position] = a + abs(a) * w[j]
        weights = torch.softmax(scores, -1)
        return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights

    def pre_hook(layer):
        def hook(module, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"])[0]
            if layer == 0:
                vis = [h[p] for p in image]
                for r in range(n - 1, h.shape[0]):
                    t = h[after:n].mean(0) if r == n - 1 else h[r]
                    cos = [float(torch.dot(x, t) / (x.norm() * t.norm())) for x in vis]
                    found["weights"][r] = [1 / (1 + math.exp(-sharpness * (c - min(cos)))) for c in cos]
            if layer in gated:
                lm = modules["model"]
                for r in range(n - 1, h.shape[0]):
                    logits = lm.lm_head(lm.model.language_model.norm(h[r]))
                    p = torch.softmax(logits, -1)
                    entropy = float(-(p * torch.log(p + 1e-9)).sum() / math.log(10))
                    found["gate"][(layer, r)] = entropy > threshold
        return hook

    model = _stock(folder, name, attention)
    modules["model"] = model
    for layer, module in enumerate(model.model.language_model.layers):
        module.register_forward_pre_hook(pre_hook(layer), with_kwargs=True)
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"]).logits[0]
    return out[n - 1:], found


def _threshold(loaded, photo):
    """A τ between the recorded entropies (so some gates open and some stay shut)."""
    probe = CAI(threshold=0.0, gamma=1.0)
    decode_logits(TOKENS, loaded, photo, probe)
    arrays = probe.trace_arrays()
    return float(np.median(arrays["entropy"][:, list(probe.layers)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_cai_equals_a_stock_model_tilted_by_hand(tiny_models_f64, tiny_model_dirs, photo, family):
    loaded = tiny_models_f64[family]
    tau = _threshold(loaded, photo)
    method = CAI(threshold=tau, gamma=1.0)
    dec, logits = decode_logits(TOKENS, loaded, photo, method)
    gated = set(method.layers)
    ref, found = _reference(tiny_model_dirs[family], f"cai-{family}", dec, tau, gated)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    arrays = method.trace_arrays()
    n = dec.run.prompt_len
    for layer in gated:  # the same gates, found independently
        assert arrays["gate"][:, layer].tolist() == [found["gate"][(layer, n - 1 + t)] for t in range(TOKENS)]
    assert not arrays["gate"][:, sorted(set(range(loaded.adapter.num_layers)) - gated)].any()
    opened = arrays["gate"][:, sorted(gated)]
    assert opened.any() and not opened.all()  # the comparison had power: both kinds of step occur
    np.testing.assert_allclose(arrays["weights"].astype(np.float64),
                               np.array([found["weights"][n - 1 + t] for t in range(TOKENS)]), atol=2e-3)
    _, vanilla = decode_logits(TOKENS, loaded, photo, CAI(threshold=6.0, gamma=1.0))
    assert (logits - vanilla).abs().max().item() > 1e-4


def test_a_shut_gate_without_contrast_is_vanilla(tiny_models_f64, photo):
    loaded = tiny_models_f64["llava-1.5"]
    _, off = decode_logits(TOKENS, loaded, photo, CAI(threshold=6.0, gamma=1.0))
    spy = LogitSpy()
    Decoder(loaded, photo, "Describe.", [spy], max_new_tokens=TOKENS, stop_at_eos=False).run_to_end()
    torch.testing.assert_close(off, torch.cat(spy.logits), rtol=1e-10, atol=1e-10)


def test_contrast_uses_the_stock_text_only_logits(tiny_models_f64, tiny_model_dirs, photo):
    """γ = 3 with the gate shut: the main row is the stock model's, the text-only row the stock model's on
    the family's text-only prompt followed by the same tokens; the final logits are the released formula."""
    loaded = tiny_models_f64["llava-1.5"]
    dec, logits = decode_logits(TOKENS, loaded, photo, CAI(threshold=6.0, gamma=3.0))
    ref_main, _ = _reference(tiny_model_dirs["llava-1.5"], "cai-contrast", dec, 6.0, set())
    model = _stock(tiny_model_dirs["llava-1.5"], "cai-plain", lambda *a, **k: _plain(*a, **k))
    text_ids = loaded.adapter.text_only_ids(dec.inputs["input_ids"][0], dec.layout)
    ids = torch.cat([text_ids.reshape(1, -1), torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        ref_text = model(input_ids=ids).logits[0, text_ids.numel() - 1:]
    expected = []
    for m, t in zip(ref_main, ref_text):
        lp, lq = torch.log_softmax(m, -1), torch.log_softmax(t, -1)
        keep = lp >= math.log(0.1) + lp.max()
        expected.append(torch.where(keep, 3.0 * (lp - lq) + lq, -torch.inf))
    expected = torch.stack(expected)
    assert torch.equal(torch.isinf(logits), torch.isinf(expected)) and torch.isinf(expected).any()
    finite = torch.isfinite(expected)
    torch.testing.assert_close(logits[finite], expected[finite], rtol=1e-8, atol=1e-8)


def _plain(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    scores, v = eager_scores(query, key, value, attention_mask, scaling)
    weights = torch.softmax(scores, -1)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


# ---- stacking --------------------------------------------------------------------------------------
def test_a_cai_column_equals_its_solo_run_and_stacks(tiny_models_f64, photo, tmp_path):
    loaded = tiny_models_f64["llava-interleave"]
    tau = _threshold(loaded, photo)
    params = {"cai": {"threshold": tau}, "prunehal": {"r": 0.8, "t": 1}}
    names_list = (["cai"], ["vcd", "cai"], ["prunehal", "cai"], ["vhr", "cai"])
    stacks = [[LogitSpy()]] + [[*build_stack(names, params), LogitSpy()] for names in names_list]
    batch = BatchDecoder(loaded, photo, "Describe.", stacks, max_new_tokens=TOKENS, stop_at_eos=False)
    traces = batch.run_to_end()
    for i, names in enumerate(names_list, 1):
        solo_stack = [*build_stack(names, params), LogitSpy()]
        solo = Decoder(loaded, photo, "Describe.", solo_stack, max_new_tokens=TOKENS, stop_at_eos=False)
        solo_trace = solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids, names
        got, want = torch.cat(stacks[i][-1].logits), torch.cat(solo_stack[-1].logits)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        for key in ("cai/gate", "cai/weights", "cai/entropy"):
            a, b = traces[i].arrays[f"method/{key}"], solo_trace.arrays[f"method/{key}"]
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (names, key)
    npz, _ = traces[1].save(tmp_path / "cai")  # its arrays pass the trace's checks and round-trip
    assert (Trace.load(npz).method_array("cai", "gate") == traces[1].method_array("cai", "gate")).all()


def test_start_layer_past_the_model_is_refused(tiny_models_f64, photo):
    loaded = tiny_models_f64["llava-1.5"]
    dec = Decoder(loaded, photo, "Describe.", [CAI(start_layer=1)], max_new_tokens=2, stop_at_eos=False)
    with pytest.raises(ValueError, match="start layer 1 leaves no layer to tilt: this model has layers 0–1"):
        dec.run_to_end()


# ---- the panel -------------------------------------------------------------------------------------
def test_panel_shows_the_record(tiny_models, photo):
    loaded = tiny_models["llava-interleave"]
    method = CAI(threshold=0.0)
    trace = Decoder(loaded, photo, "Describe.", [method], max_new_tokens=4, stop_at_eos=False).run_to_end()
    panel = panel_for("cai")
    assert panel is not None and panel.shown_for(trace)
    arrays = method.trace_arrays()
    gate = cai_gate_figure(trace, 2)
    heat, rings = gate.data[0], gate.data[1]
    layers = list(method.layers)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=np.float64), arrays["entropy"][:, layers].T, rtol=1e-6)
    assert len(rings.x) == int(arrays["gate"][:, layers].sum())  # one ring per open gate, τ = 0 opens all
    assert "τ = 0 bans" in gate.layout.title.text
    weights = cai_weights_figure(trace, 1)
    rows, cols = trace.meta["grid"]
    np.testing.assert_allclose(np.asarray(weights.data[0].z, dtype=np.float64),
                               arrays["weights"][1].astype(np.float64)[trace.grid_index()].reshape(rows, cols))
    other = Decoder(loaded, photo, "Describe.", [], max_new_tokens=2, stop_at_eos=False).run_to_end()
    assert not panel.shown_for(other) and cai_gate_figure(other, 0) is None
