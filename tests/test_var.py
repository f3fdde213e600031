"""VAR against hand computations: the head rule on a hand-made attention matrix, sink detection on
hand-made hidden states, the redistribution on a small tensor, and a whole decode against a stock
eager model whose attention weights are edited by a loop written here from the paper's rule."""

import math

import pytest
import torch

from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.methods.layer_range import chosen_layers
from halviz.methods.var import VAR, image_centric, redistribute, scaled_tau, sink_tokens
from halviz.trace import Trace
from spies import LogitSpy
from stock import decode_logits, stock_with_weights

TOKENS = 6
# Per tiny family: a τ at which some prompt tokens are sinks (the random models have no real ones),
# and the layers edited (a strict subset, so a method editing the wrong layers differs).
SETTINGS = {"llava-1.5": {"tau": 12.0, "first_layer": 1, "last_layer": -1},
            "llava-interleave": {"tau": 16.0, "first_layer": 0, "last_layer": -2}}


# ---- the pieces on hand-made tensors ----------------------------------------------------------------
def test_head_rule_on_a_hand_made_attention_matrix():
    # keys: 0 = BOS (text sink), 1..4 image (1 a visual sink), 5 prompt text
    image = torch.tensor([False, True, True, True, True, False])
    sinks = torch.tensor([True, True, False, False, False, False])
    weights = torch.tensor([
        [0.50, 0.10, 0.20, 0.10, 0.05, 0.05],  # image 0.45, non-sink 0.35/0.45 = 0.78: image-centric
        [0.10, 0.50, 0.10, 0.10, 0.10, 0.10],  # image 0.80, non-sink 0.30/0.80 = 0.375 < 0.5: a sink head
        [0.85, 0.02, 0.05, 0.03, 0.00, 0.05],  # image 0.10 < 0.2: not looking at the image
        [0.30, 0.20, 0.20, 0.10, 0.00, 0.20],  # image 0.50, non-sink 0.30/0.50 = 0.6: image-centric
    ], dtype=torch.float64)
    got = image_centric(weights, image, sinks, rho=0.5, min_image=0.2)
    assert got.tolist() == [True, False, False, True]
    # a stricter ρ keeps only the first; no visual sink in the layer: no head at all
    assert image_centric(weights, image, sinks, rho=0.7, min_image=0.2).tolist() == [True, False, False, False]
    no_visual_sink = torch.tensor([True, False, False, False, False, False])
    assert not image_centric(weights, image, no_visual_sink, rho=0.5, min_image=0.2).any()


def test_sink_tokens_on_hand_made_hidden_states():
    d = 16
    assert scaled_tau(20.0, 4096) == 20.0 and scaled_tau(20.0, 16) == pytest.approx(1.25)
    tau = scaled_tau(20.0, d)  # 20·√(16/4096) = 1.25
    rows = []
    for dim, value in [(3, 10.0), (None, 0.0), (3, 5.0), (7, 10.0), (3, -5.0)]:
        h = torch.ones(d, dtype=torch.float64)
        if dim is not None:
            h[dim] = value
        rows.append(h)
    hidden = torch.stack(rows)
    # by hand: row 0 (BOS): rms = √((15 + 100)/16) = 2.68, |x_3| = 3.73 > 1.25, the other dims 0.37 → sink dim {3}
    # row 1: all x = 1 → no; row 2: rms = √(40/16) = 1.58, x_3 = 3.16 → sink; row 3: massive in dim 7, which
    # is not a sink dimension → no; row 4: |x_3| = 3.16 → sink (absolute value)
    assert sink_tokens(hidden, tau).tolist() == [True, False, True, False, True]
    assert sink_tokens(100 * hidden, tau).tolist() == [True, False, True, False, True]  # scale-free (RMSNorm)
    # a first token without a massive activation: no sink dimension, no sinks
    assert not sink_tokens(hidden[1:], tau).any()


def test_redistribution_on_a_small_tensor():
    # keys: BOS (sink), an image sink, two image tokens, a text token
    weights = torch.tensor([[0.3, 0.2, 0.1, 0.3, 0.1]], dtype=torch.float64)
    sinks = torch.tensor([True, True, False, False, False])
    image = torch.tensor([False, True, True, True, False])
    got = redistribute(weights, sinks, image, p=0.5)
    # sink mass 0.5 → budget 0.25; targets hold 0.1 and 0.3 → +0.0625 and +0.1875; sinks halved; text unchanged
    want = torch.tensor([[0.15, 0.10, 0.1625, 0.4875, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(redistribute(weights, sinks, image, p=0.0), weights, rtol=0, atol=0)


def test_knob_defaults_are_the_papers_and_registered_after_vcd():
    defaults = {k.name: k.default for k in VAR.knobs}
    assert defaults == {"tau": 20.0, "rho": 0.5, "min_image": 0.2, "p": 0.6, "first_layer": 2, "last_layer": -2}
    assert chosen_layers(32, 2, -2) == frozenset(range(2, 31))  # layers 2..L−2 of LLaVA-1.5-7B
    names = list(METHODS)
    assert names.index("var") == names.index("vcd") + 1


# ---- the whole method against a stock model edited by hand ----------------------------------------
def _reference(folder, name, dec, tau, layers, rho=0.5, min_image=0.2, p=0.6):
    """A stock float64 model where, in ``layers``, every query after the image is rewritten by the rule
    of Kang et al. on the weights, head by head; sinks from the layer's input over the prompt."""
    n = dec.run.prompt_len
    image_positions = set(dec.layout.positions)
    after = max(image_positions) + 1
    sinks = {}

    def find_sinks(layer):
        def hook(module, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"])[0, :n].double()
            tau_d = tau * math.sqrt(h.shape[-1] / 4096)
            x = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6)
            dims = [d for d in range(h.shape[-1]) if abs(x[0, d].item()) > tau_d]
            sinks[layer] = {i for i in range(n) if dims and max(abs(x[i, d].item()) for d in dims) > tau_d}
        return hook

    def edit(layer, queries, weights):
        if layer not in layers or not (sinks[layer] & image_positions):
            return weights
        weights = weights.clone()
        sink, clean = sorted(sinks[layer]), sorted(image_positions - sinks[layer])
        img = sorted(image_positions)
        for h in range(weights.shape[1]):
            for i, position in enumerate(queries.tolist()):
                if position < after:
                    continue
                row = weights[0, h, i]
                image_mass, clean_mass = row[img].sum(), row[clean].sum()
                if image_mass >= min_image and clean_mass / image_mass >= rho:
                    budget = p * row[sink].sum()
                    new = row.clone()
                    new[sink] = (1 - p) * row[sink]
                    new[clean] = row[clean] + budget * row[clean] / clean_mass
                    weights[0, h, i] = new
        return weights

    model = stock_with_weights(folder, name, edit)
    for layer, module in enumerate(model.model.language_model.layers):
        module.register_forward_pre_hook(find_sinks(layer), with_kwargs=True)
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"]).logits[0]
    return out[n - 1:], sinks


@pytest.mark.parametrize("family", list(SETTINGS))
def test_var_equals_eager_attention_with_weights_redistributed_by_hand(tiny_models_f64, tiny_model_dirs, photo,
                                                                       family):
    loaded, knobs = tiny_models_f64[family], SETTINGS[family]
    method = VAR(**knobs)
    dec, logits = decode_logits(TOKENS, loaded, photo, method)
    layers = chosen_layers(loaded.adapter.num_layers, knobs["first_layer"], knobs["last_layer"])
    ref, sinks = _reference(tiny_model_dirs[family], f"var-{family}", dec, knobs["tau"], layers)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    arrays = method.trace_arrays()
    for layer in layers:  # the same sink tokens, found from the same hidden states
        assert set(arrays["sinks"][layer].nonzero()[0].tolist()) == sinks[layer]
    # it acted: heads were chosen, and the logits differ from vanilla's
    assert arrays["heads"].sum() > 0 and arrays["heads"].shape == (TOKENS, loaded.adapter.num_layers,
                                                                   loaded.adapter.num_heads)
    assert arrays["heads"][:, sorted(set(range(loaded.adapter.num_layers)) - layers)].sum() == 0
    _, vanilla = decode_logits(TOKENS, loaded, photo, VAR(**knobs, p=0.0))
    assert (logits - vanilla).abs().max().item() > 1e-4


def test_p_zero_is_vanilla(tiny_models_f64, photo):
    loaded = tiny_models_f64["llava-1.5"]
    _, off = decode_logits(TOKENS, loaded, photo, VAR(**SETTINGS["llava-1.5"], p=0.0))
    spy = LogitSpy()
    Decoder(loaded, photo, "Describe.", [spy], max_new_tokens=TOKENS, stop_at_eos=False).run_to_end()
    torch.testing.assert_close(off, torch.cat(spy.logits), rtol=1e-10, atol=1e-10)


def test_a_var_column_equals_its_solo_run(tiny_models_f64, photo, tmp_path):
    loaded = tiny_models_f64["llava-1.5"]
    params = {"var": SETTINGS["llava-1.5"]}
    stacks = [[LogitSpy()], [*build_stack(["var"], params), LogitSpy()], [*build_stack(["vcd", "var"], params),
                                                                          LogitSpy()]]
    batch = BatchDecoder(loaded, photo, "Describe.", stacks, max_new_tokens=TOKENS, stop_at_eos=False)
    traces = batch.run_to_end()
    for i, names in ((1, ["var"]), (2, ["vcd", "var"])):
        solo_stack = [*build_stack(names, params), LogitSpy()]
        solo = Decoder(loaded, photo, "Describe.", solo_stack, max_new_tokens=TOKENS, stop_at_eos=False)
        solo_trace = solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids
        torch.testing.assert_close(torch.cat(stacks[i][-1].logits), torch.cat(solo_stack[-1].logits),
                                   rtol=1e-9, atol=1e-9)
        for key in ("var/sinks", "var/heads"):
            assert (traces[i].arrays[f"method/{key}"] == solo_trace.arrays[f"method/{key}"]).all()
    npz, _ = traces[1].save(tmp_path / "var")  # its arrays pass the trace's checks and round-trip
    assert (Trace.load(npz).method_array("var", "heads") == traces[1].method_array("var", "heads")).all()
    assert [s.token_id for s in batch.steps[1]] != [s.token_id for s in batch.steps[0]] or \
        not torch.allclose(torch.cat(stacks[1][-1].logits), torch.cat(stacks[0][-1].logits))
