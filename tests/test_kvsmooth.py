"""KVSmooth against independent computations: a hand-worked λ sequence, a re-implementation on a
stock eager model that reads its own attentions, vanilla's prefill cache, and the off switch."""

from collections import deque

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.methods.base import Method
from halviz.methods.kvsmooth import EntropyQueue, KVSmooth, clipped_lambda, smoothed_layers
from halviz.trace import Trace

FAMILIES = ["llava-1.5", "llava-interleave"]


def test_layer_rule():
    assert smoothed_layers(32) == range(3, 31)  # the paper's 3..L−2
    assert smoothed_layers(40) == range(4, 39)
    assert smoothed_layers(2) == range(1, 2) and smoothed_layers(3) == range(1, 3)
    assert len(smoothed_layers(1)) == 0
    for depth in range(2, 200):
        layers = smoothed_layers(depth)
        assert len(layers) >= 1 and 0 not in layers and layers[-1] <= depth - 1


def test_lambda_by_hand():
    """M = 3, λ_ref = 0.5, radius 0.3: λ ∈ [0.2, 0.8]; the queue holds z_t itself after the push."""
    queue = EntropyQueue(size=3, batch=1, device=torch.device("cpu"), dtype=torch.float64)
    zs = [1.0, 2.0, 3.0, 0.5, 4.0, 3.5, 3.5]
    # queues after each push and the count of entries strictly below z:
    # [1] 0 → 0 → 0.2 | [1,2] 1 → 1/3 | [1,2,3] 2 → 2/3 | [2,3,.5] 0 → 0.2 | [3,.5,4] 2 → 2/3
    # [.5,4,3.5] 1 → 1/3 (3 was evicted; a queue of 4 would give 2/3) | [4,3.5,3.5] 0 (ties do not count) → 0.2
    expected = [0.2, 1 / 3, 2 / 3, 0.2, 2 / 3, 1 / 3, 0.2]
    got = []
    for z in zs:
        z = torch.tensor([z], dtype=torch.float64)
        queue.push(z)
        got.append(clipped_lambda(queue.fraction_below(z), 0.5, 0.3).item())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    # the clip is kept inside [0, 1] and λ_ref = 0 alone still allows λ up to the radius
    one = torch.tensor([1.0], dtype=torch.float64)
    assert clipped_lambda(one, 0.9, 0.2).item() == 1.0
    assert clipped_lambda(one, 0.0, 0.2).item() == pytest.approx(0.2)
    assert clipped_lambda(torch.tensor([0.0]), 0.0, 0.2).item() == 0.0


def reference_decode(folder, inputs, tokens, params):
    """KVSmooth re-implemented on a stock eager model: z from its returned attentions, plain lists."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="eager",
                                                          dtype=torch.float64).eval()
    ref, radius, size = params["lambda_ref"], params["radius"], params["queue"]
    cache = DynamicCache()
    with torch.no_grad():
        model(**inputs, past_key_values=cache, use_cache=True)
        num_layers = len(cache.layers)
        layers = smoothed_layers(num_layers)
        queues = {layer: deque(maxlen=size) for layer in layers}
        z_table = np.full((len(tokens), num_layers), np.nan)
        lam_table = np.full((len(tokens), num_layers), np.nan)
        for step in range(1, len(tokens)):
            out = model(input_ids=torch.tensor([[tokens[step - 1]]]), past_key_values=cache, use_cache=True,
                        output_attentions=True)
            for layer in layers:
                a = out.attentions[layer][0, :, -1, :].numpy()  # (H, kv)
                z = float(np.mean([-sum(p * np.log(p) for p in row if p > 0) for row in a]))
                queues[layer].append(z)
                if params["fixed_lambda"]:
                    lam = ref
                else:
                    lam_hat = sum(1 for q in queues[layer] if q < z) / size
                    lam = min(max(min(max(lam_hat, ref - radius), ref + radius), 0.0), 1.0)
                z_table[step, layer], lam_table[step, layer] = z, lam
                for name in ("keys", "values"):
                    if name[0] in params["mode"]:
                        cached = getattr(cache.layers[layer], name)
                        cached[:, :, -1] = (1 - lam) * cached[:, :, -1] + lam * cached[:, :, -2]
    return cache, z_table, lam_table


CASES = [
    ("llava-1.5", {"lambda_ref": 0.5, "radius": 0.3, "queue": 4}),
    ("llava-interleave", {"lambda_ref": 0.5, "radius": 0.3, "queue": 4}),
    ("llava-1.5", {"lambda_ref": 0.3, "radius": 0.3, "queue": 3, "mode": "k"}),
    ("llava-interleave", {"lambda_ref": 0.6, "fixed_lambda": True, "mode": "v"}),
    ("llava-interleave", {}),  # the paper's defaults
]


@pytest.mark.parametrize("family,params", CASES)
def test_cache_equals_formula(tiny_models_f64, tiny_model_dirs, photo, family, params):
    method = KVSmooth(**params)
    dec = Decoder(tiny_models_f64[family], photo, methods=[method], max_new_tokens=10)
    trace = dec.run_to_end()
    cache, z_ref, lam_ref = reference_decode(tiny_model_dirs[family], dec.inputs, dec.token_ids, method.params)
    lam = trace.arrays["method/kvsmooth/lambda"]
    z = trace.arrays["method/kvsmooth/entropy"]
    assert lam.shape == z.shape == (10, trace.meta["num_layers"])
    np.testing.assert_array_equal(np.isnan(lam), np.isnan(lam_ref))
    np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-7)  # rank-based: identical up to float32 storage
    # stock eager takes its softmax in float32, hence 1e-5 rather than 1e-12 below
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    if not params.get("fixed_lambda") and method.params["lambda_ref"] < 0.9:
        assert len(set(lam[~np.isnan(lam)].round(6))) >= 3  # the rank moved λ around: a real test
    for layer, ours in enumerate(dec.cache.layers):
        torch.testing.assert_close(ours.keys, cache.layers[layer].keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.values, cache.layers[layer].values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_entries_untouched_and_decode_entries_smoothed(tiny_models, photo, family):
    ours = Decoder(tiny_models[family], photo, methods=[KVSmooth()], max_new_tokens=6)
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=6)
    ours.run_to_end(), vanilla.run_to_end()
    n = ours.run.prompt_len
    for a, b in zip(ours.cache.layers, vanilla.cache.layers):
        assert torch.equal(a.keys[:, :, :n], b.keys[:, :, :n])
        assert torch.equal(a.values[:, :, :n], b.values[:, :, :n])
    # the first decode entry of a smoothed layer is pulled towards the last prompt entry (λ ≥ 0.7)
    layer = smoothed_layers(len(ours.cache.layers))[0]
    assert not torch.equal(ours.cache.layers[layer].keys[:, :, n], vanilla.cache.layers[layer].keys[:, :, n])


@pytest.mark.parametrize("family", FAMILIES)
def test_switched_off_is_vanilla(tiny_models, photo, family):
    method = KVSmooth(lambda_ref=0.0, radius=0.0)
    ours = Decoder(tiny_models[family], photo, methods=[method], max_new_tokens=12)
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=12)
    ours.run_to_end(), vanilla.run_to_end()
    assert ours.token_ids == vanilla.token_ids
    lam = method.trace_arrays()["lambda"]
    assert np.nanmax(lam) == 0.0
    for a, b in zip(ours.cache.layers, vanilla.cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # λ_ref = 0 alone is not off: the clip lets λ reach the radius
    leaky = KVSmooth(lambda_ref=0.0, radius=0.2, queue=4)
    Decoder(tiny_models[family], photo, methods=[leaky], max_new_tokens=12).run_to_end()
    assert np.nanmax(leaky.trace_arrays()["lambda"]) == pytest.approx(0.2)


def test_stacks_with_prunehal(tiny_models, photo, tmp_path):
    assert METHODS["kvsmooth"] is KVSmooth
    stack = build_stack(["kvsmooth", "prunehal"])
    dec = Decoder(tiny_models["llava-1.5"], photo, methods=stack, max_new_tokens=8)
    trace = dec.run_to_end()
    assert [m.name for m in dec.run.methods] == ["prunehal", "kvsmooth"]  # the registry's order
    steps, layers = trace.num_steps, trace.meta["num_layers"]
    for key in ("mass", "reference", "votes", "retained_count"):
        assert trace.arrays[f"method/prunehal/{key}"].shape == (steps, layers)
    assert trace.arrays["method/prunehal/trigger_steps"].tolist()[:1] == [2]
    assert trace.arrays["method/prunehal/retained"].shape[1:] == (layers, 576)
    for key in ("lambda", "entropy"):
        array = trace.arrays[f"method/kvsmooth/{key}"]
        assert array.shape == (steps, layers)
        assert np.isfinite(array[1:, 1]).all() and np.isnan(array[:, 0]).all()
    assert [m["name"] for m in trace.meta["methods"]] == ["prunehal", "kvsmooth"]
    back = Trace.load(trace.save(tmp_path / "stacked")[0])  # the method arrays survive a file round trip
    for name, array in trace.arrays.items():
        if name.startswith("method/"):
            np.testing.assert_array_equal(back.arrays[name], array)
    with pytest.raises(ValueError):
        KVSmooth(mode="q")


class ScoreSpy(Method):
    """Keeps the main row's decode-step logits at its place in the stack."""

    name = "score-spy"
    hook_points = frozenset({"scores"})

    def __init__(self):
        super().__init__()
        self.scores = {}

    def wants_scores(self, p, layer):
        return p.decode

    def edit_scores(self, p, layer, scores, keys):
        self.scores[(p.step, layer)] = scores[p.main:p.main + 1].clone()
        return scores


def _entropy(scores):
    a = torch.softmax(scores[0, :, -1].double(), -1)
    return float((-(a * torch.log(a.clamp_min(1e-300)))).sum(-1).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_entropy_is_read_after_the_other_methods_edits(tiny_models, photo, family):
    """Stacked after PruneHal, z is the entropy of the attention actually applied (pruned image columns
    at zero weight), not of the logits before PruneHal's mask: the cached K/V KVSmooth blends are the
    ones that attention produced, so that is the distribution whose sink-likeness matters."""
    raw, final = ScoreSpy(), ScoreSpy()
    stack = build_stack(["prunehal", "kvsmooth"], {"prunehal": {"r": 0.2}})
    dec = Decoder(tiny_models[family], photo, methods=[raw, *stack, final], max_new_tokens=8)
    trace = dec.run_to_end()
    z = trace.arrays["method/kvsmooth/entropy"]
    assert trace.arrays["method/prunehal/trigger_steps"].tolist()[:1] == [2]
    differs = 0
    for (step, layer), scores in final.scores.items():
        if layer not in smoothed_layers(dec.run.num_layers):
            continue
        assert z[step, layer] == pytest.approx(_entropy(scores), rel=1e-5, abs=1e-6)
        differs += abs(_entropy(raw.scores[(step, layer)]) - _entropy(scores)) > 1e-3
    assert differs >= 3  # after the prune the two readings really differ
