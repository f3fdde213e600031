"""VHR against independent computations: stock transformers models with hooks on the o_proj inputs
(with and without the image, run separately), o_proj weight columns scaled by α, the selection rule
re-implemented in numpy layer by layer (so a run's head choice is checked, not read back from its
trace), hand-made VHD matrices, T-VHD over all layers by hand, and vanilla decoding at α = 1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.methods.base import Method
from halviz.methods.vhr import VHR, outlier_heads, reinforce, select_heads, t_vhd, vhr_layers
from halviz.models import load_model
from spies import LogitSpy

FAMILIES = ["llava-1.5", "llava-interleave"]


class MaskHalfImage(Method):
    """A trivial scores method to stack with: hide every second image token in every layer, in the rows
    laid out like the main prompt (a text-only stream has no image)."""

    name = "mask-half"
    hook_points = frozenset({"scores"})

    def wants_scores(self, p, layer):
        return True

    def edit_scores(self, p, layer, scores, keys):
        scores = scores.clone()
        rows = p.main_layout
        scores[rows] = scores[rows].index_fill(-1, p.column.image_index[::2], float("-inf"))
        return scores


def stock_model(folder, selected=None, alpha=1.0):
    """A stock float64 model; with ``selected`` (L, H), those heads' o_proj weight columns are × α."""
    model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa",
                                                          dtype=torch.float64).eval()
    if selected is not None:
        for layer, heads in enumerate(torch.as_tensor(selected)):
            o_proj = decoder_layers(model)[layer].self_attn.o_proj
            d = o_proj.weight.shape[1] // heads.numel()
            with torch.no_grad():
                for head in torch.nonzero(heads).flatten().tolist():
                    o_proj.weight[:, head * d:(head + 1) * d] *= alpha
    return model


def decoder_layers(model):
    return model.model.language_model.layers


def last_head_outputs(model, layers, **inputs) -> dict[int, torch.Tensor]:
    """(H, D) input of o_proj at the last position for each layer (test-only hooks)."""
    heads = model.config.text_config.num_attention_heads
    seen, hooks = {}, []
    for layer in layers:
        def hook(module, args, layer=layer):
            seen[layer] = args[0][0, -1].reshape(heads, -1).clone()
        hooks.append(decoder_layers(model)[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def text_only(dec) -> torch.Tensor:
    ids = dec.inputs["input_ids"][0].tolist()
    image = set(dec.layout.positions)
    return torch.tensor([[t for i, t in enumerate(ids) if i not in image]])


def test_layer_rule():
    assert vhr_layers(32) == (1, *range(18, 32))
    assert vhr_layers(32, last_layers=18) == (1, *range(14, 32))  # InstructBLIP
    assert vhr_layers(24) == (1, *range(13, 24))
    assert vhr_layers(2) == (1,) and vhr_layers(3) == (1, 2)


def test_outlier_filter_and_median_selection_on_a_hand_made_matrix():
    vhd = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0, 5.0],    # head 4: outlier in VHD and in TA
                        [0.5, 0.4, 0.3, 0.2, 0.1, 3.0],     # head 5: large VHD, ordinary TA → kept
                        [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],     # head 0: large TA, ordinary VHD → kept
                        [1.0, 2.0, 3.0, 4.0, 4.9, 5.0]],    # head 4: above μ+σ with population σ only
                       dtype=torch.float64)
    ta = torch.tensor([[1.0, 1.0, 1.0, 1.0, 50.0, 1.0],
                       [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                       [40.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                       [1.0, 1.0, 1.0, 1.0, 30.0, 1.0]], dtype=torch.float64)
    outliers = outlier_heads(vhd, ta)
    # by hand: row 0 VHD μ+σ = 25/6 + sqrt(155/6 − (25/6)²) ≈ 7.08, TA μ+σ ≈ 27.4 → only head 4;
    # row 3 VHD μ+σ ≈ 4.79 (population σ; 4.93 with the sample σ), TA μ+σ ≈ 16.6 → head 4
    expected = np.zeros((4, 6), bool)
    expected[0, 4] = expected[3, 4] = True
    np.testing.assert_array_equal(outliers.numpy(), expected)
    # the same with numpy's population std, each quantity against its own statistics
    v, t = vhd.numpy(), ta.numpy()
    def above(x):
        return x > x.mean(1, keepdims=True) + x.std(1, keepdims=True)
    ref = above(v) & above(t)
    np.testing.assert_array_equal(outliers.numpy(), ref)
    chosen = select_heads(vhd, outliers)
    # filtered row 0 [1,2,3,4,0,5] median 2.5; row 1 median 0.35; row 2 1.25; row 3 [1,2,3,4,0,5] 2.5
    np.testing.assert_array_equal(chosen.numpy(), [[0, 0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 1],
                                                   [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 1]])
    filtered = np.where(ref, 0.0, v)
    np.testing.assert_array_equal(chosen.numpy(), filtered > np.median(filtered, axis=1, keepdims=True))


def test_reinforce_equals_scaling_o_proj_weight_columns():
    gen = torch.Generator().manual_seed(0)
    b, h, q, d, hidden = 2, 4, 3, 5, 7
    out = torch.randn(b, h, q, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(hidden, h * d, generator=gen, dtype=torch.float64)
    heads, alpha = torch.tensor([True, False, False, True]), 2.0
    ours = F.linear(reinforce(out, heads, alpha).transpose(1, 2).reshape(b, q, h * d), weight)
    scaled = weight.clone()
    for head in (0, 3):
        scaled[:, head * d:(head + 1) * d] *= alpha
    theirs = F.linear(out.transpose(1, 2).reshape(b, q, h * d), scaled)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert torch.equal(reinforce(out, heads, alpha)[:, 1:3], out[:, 1:3])


@pytest.mark.parametrize("family", FAMILIES)
def test_vhd_of_first_vhr_layer_matches_separate_runs_with_hooks(tiny_models_f64, tiny_model_dirs, photo, family):
    dec = Decoder(tiny_models_f64[family], photo, methods=[VHR()], max_new_tokens=1)
    trace = dec.run_to_end()
    first = vhr_layers(dec.run.num_layers)[0]
    model = stock_model(tiny_model_dirs[family])
    with_image = last_head_outputs(model, [first], **dec.inputs)[first]
    without = last_head_outputs(model, [first], input_ids=text_only(dec))[first]
    np.testing.assert_allclose(trace.arrays["method/vhr/vhd"][first], (with_image - without).norm(dim=-1).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(trace.arrays["method/vhr/text_norm"][first], without.square().sum(-1).numpy(), rtol=1e-6)
    # layer 0 is no VHR layer but is measured too (nothing before it is reinforced)
    with_image = last_head_outputs(model, [0], **dec.inputs)[0]
    without = last_head_outputs(model, [0], input_ids=text_only(dec))[0]
    np.testing.assert_allclose(trace.arrays["method/vhr/vhd"][0], (with_image - without).norm(dim=-1).numpy(),
                               rtol=1e-6)
    assert not trace.arrays["method/vhr/selected"][0].any() and not trace.arrays["method/vhr/outlier"][0].any()
    assert trace.arrays["method/vhr/selected"][first].sum() >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_reinforced_decode_matches_a_model_with_scaled_o_proj_columns(tiny_models_f64, tiny_model_dirs, photo, family):
    alpha = 2.0
    spy = LogitSpy()
    dec = Decoder(tiny_models_f64[family], photo, methods=[VHR(alpha=alpha, per_step_tvhd=True), spy], max_new_tokens=5)
    trace = dec.run_to_end()
    selected = trace.arrays["method/vhr/selected"]
    layers = vhr_layers(dec.run.num_layers)
    assert selected[list(layers)].any()
    model = stock_model(tiny_model_dirs[family], selected, alpha)
    tokens = dec.token_ids
    # every position, prefill and decode, is reinforced: teacher-forced logits agree
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([tokens[:-1]])], dim=1)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"]).logits[0, dec.run.prompt_len - 1:]
    torch.testing.assert_close(torch.cat(spy.logits).double(), ref, rtol=1e-6, atol=1e-6)
    assert tokens == ref.argmax(-1).tolist()
    # o_proj inputs of the scaled model are the unreinforced outputs with earlier layers reinforced:
    # the selection pass's VHD (all VHR layers) and the per-step VHD / T-VHD
    txt = text_only(dec)
    k = min(8, dec.run.num_heads)
    for step in range(len(tokens)):
        gen = torch.tensor([tokens[:step]], dtype=torch.long)
        every = range(dec.run.num_layers)
        a = last_head_outputs(model, every, input_ids=torch.cat([dec.inputs["input_ids"], gen], 1),
                              pixel_values=dec.inputs["pixel_values"])
        b = last_head_outputs(model, every, input_ids=torch.cat([txt, gen], 1))
        vhd = np.zeros(selected.shape)
        for layer in every:
            vhd[layer] = (a[layer] - b[layer]).norm(dim=-1).numpy()
        if step == 0:
            np.testing.assert_allclose(trace.arrays["method/vhr/vhd"], vhd, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(trace.arrays["method/vhr/step_vhd"][step], vhd, rtol=2e-3, atol=1e-6)
        # T-VHD sums every layer (layer 0 is no VHR layer), each layer's top-k heads
        tvhd = sum(sum(sorted(vhd[layer].tolist(), reverse=True)[:k]) for layer in every)
        assert trace.arrays["method/vhr/tvhd"][step] == pytest.approx(tvhd, rel=1e-5)
        assert 0 not in layers and vhd[0].max() > 0  # the non-VHR layer does contribute


def test_t_vhd_sums_every_layer_on_a_hand_made_three_layer_matrix():
    vhd = torch.tensor([[[4.0, 1.0, 3.0, 2.0],     # layer 0 (not a VHR layer of 3): top-2 = 4 + 3
                         [0.5, 6.0, 0.1, 5.5],     # layer 1: 6 + 5.5
                         [2.0, 2.0, 9.0, 0.0]]],   # layer 2: 9 + 2
                       dtype=torch.float64)
    assert t_vhd(vhd, 2).tolist() == [7.0 + 11.5 + 11.0]
    assert t_vhd(vhd, 8).tolist() == [vhd.sum().item()]  # k above the head count: every head


def boost_head(model, layer: int, kv_head: int, factor: float) -> None:
    """Scale one KV head's value projection, so that head's output (VHD and TA) grows by ``factor``."""
    v_proj = decoder_layers(model)[layer].self_attn.v_proj
    d = v_proj.weight.shape[0] // model.config.text_config.num_key_value_heads
    with torch.no_grad():
        v_proj.weight[kv_head * d:(kv_head + 1) * d] *= factor
        if v_proj.bias is not None:
            v_proj.bias[kv_head * d:(kv_head + 1) * d] *= factor


def hand_selection(model, dec, layers, alpha):
    """The paper's rule in numpy, layer by layer on a stock model whose chosen heads get scaled as we go."""
    heads = model.config.text_config.num_attention_heads
    selected = np.zeros((len(decoder_layers(model)), heads), bool)
    outliers = np.zeros_like(selected)
    for layer in sorted(layers):
        a = last_head_outputs(model, [layer], **dec.inputs)[layer].numpy()
        b = last_head_outputs(model, [layer], input_ids=text_only(dec))[layer].numpy()
        vhd = np.sqrt(((a - b) ** 2).sum(-1))
        ta = (b ** 2).sum(-1)
        out = (vhd > vhd.mean() + vhd.std()) & (ta > ta.mean() + ta.std())
        filtered = np.where(out, 0.0, vhd)
        selected[layer], outliers[layer] = filtered > np.median(filtered), out
        o_proj = decoder_layers(model)[layer].self_attn.o_proj
        d = o_proj.weight.shape[1] // heads
        with torch.no_grad():
            for head in np.nonzero(selected[layer])[0].tolist():
                o_proj.weight[:, head * d:(head + 1) * d] *= alpha
    return selected, outliers


@pytest.mark.parametrize("family,boost", [("llava-1.5", True), ("llava-interleave", False)])
def test_head_selection_and_outlier_filter_inside_a_run(tiny_model_dirs, photo, family, boost):
    """The run's heads come from the rule recomputed by hand (not from its trace); on llava-1.5 one head
    of layer 1 is made an outlier in both VHD and TA, which the filter must drop."""
    alpha = 2.0
    loaded = load_model(str(tiny_model_dirs[family]), device="cpu", dtype=torch.float64)
    stock = stock_model(tiny_model_dirs[family])
    if boost:
        boost_head(loaded.model, 1, 0, 10.0)
        boost_head(stock, 1, 0, 10.0)
    spy = LogitSpy()
    dec = Decoder(loaded, photo, methods=[VHR(alpha=alpha), spy], max_new_tokens=5)
    trace = dec.run_to_end()
    layers = vhr_layers(dec.run.num_layers)
    selected, outliers = hand_selection(stock, dec, layers, alpha)
    if boost:
        assert outliers[1, 0] and not selected[1, 0]  # the boosted head is filtered out
    np.testing.assert_array_equal(trace.arrays["method/vhr/outlier"], outliers)
    np.testing.assert_array_equal(trace.arrays["method/vhr/selected"], selected)
    # and the run reinforced exactly those heads: its logits are the hand-built model's
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        ref = stock(input_ids=ids, pixel_values=dec.inputs["pixel_values"]).logits[0, dec.run.prompt_len - 1:]
    torch.testing.assert_close(torch.cat(spy.logits).double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_one_gives_vanilla_tokens(tiny_models, photo, family):
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=10)
    vanilla.run_to_end()
    off = Decoder(tiny_models[family], photo, methods=[VHR(alpha=1.0)], max_new_tokens=10)
    off.run_to_end()
    assert off.token_ids == vanilla.token_ids
    on = Decoder(tiny_models[family], photo, methods=[VHR(alpha=3.0)], max_new_tokens=10)
    on.run_to_end()
    assert on.token_ids != vanilla.token_ids  # the method does act on these models


def test_stacks_with_other_methods(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    alone = Decoder(loaded, photo, methods=[VHR()], max_new_tokens=6)
    alone.run_to_end()
    with_mask = Decoder(loaded, photo, methods=[MaskHalfImage(), VHR()], max_new_tokens=6)
    trace = with_mask.run_to_end()
    assert len(with_mask.token_ids) == 6 and trace.arrays["method/vhr/selected"].any()
    assert with_mask.token_ids != alone.token_ids
    others = [n for n in ("prunehal", "vasparse", "kvsmooth") if n in METHODS]
    for names in [[n, "vhr"] for n in others] + [others + ["vhr"]]:
        dec = Decoder(loaded, photo, methods=build_stack(names), max_new_tokens=6)
        arrays = dec.run_to_end().arrays
        assert len(dec.token_ids) == 6 and arrays["method/vhr/selected"].any()
        assert [m.name for m in dec.run.methods] == sorted(names, key=list(METHODS).index)


def test_per_step_tvhd_stacks_with_prunehal_and_leaves_the_main_row_alone(tiny_models_f64, photo):
    """The text stream is a row of its own: PruneHal masks only rows laid out like the main prompt, and
    adding the stream changes nothing in the main row (its logits equal the run without it)."""
    loaded = tiny_models_f64["llava-1.5"]
    runs = {}
    for per_step in (False, True):
        spy = LogitSpy()
        stack = build_stack(["prunehal", "vhr"], {"prunehal": {"r": 0.3}, "vhr": {"per_step_tvhd": per_step}})
        dec = Decoder(loaded, photo, methods=[*stack, spy], max_new_tokens=6, stop_at_eos=False)
        runs[per_step] = (dec.run_to_end(), torch.cat(spy.logits))
    (plain, plain_logits), (tvhd, tvhd_logits) = runs[False], runs[True]
    assert plain.arrays["method/prunehal/trigger_steps"].tolist()[:1] == [2]
    assert (tvhd_logits - plain_logits).abs().max().item() <= 1e-9
    assert tvhd.arrays["method/vhr/step_vhd"].shape == (6, loaded.adapter.num_layers, loaded.adapter.num_heads)
    assert np.isfinite(tvhd.arrays["method/vhr/tvhd"]).all()


def test_registered():
    assert METHODS["vhr"] is VHR and list(METHODS)[:7] == ["vanilla", "prunehal", "vasparse", "vhr", "kvsmooth", "vcd", "var"]
