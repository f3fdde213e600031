"""The logit lens in the trace against transformers' own ``output_hidden_states``.

For every recorded step i and layer l the reference is the stock model (float64) teacher-forced on the
column's tokens: hidden_states[l + 1] at the query predicting token i, through the model's final norm
and language head; for the last layer the stock model's logits (hidden_states[-1] is already normed).
A column that masks image patches (an attention edit) is compared with a stock model whose eager
attention masks the same columns (tests/stock.py), and must differ from the unedited stock model on
the same tokens, so the edited reference is what makes it pass. The comparison runs the three columns
as one batch with VHR beside them (a text-only row rides in the ragged prefill), on two families.
"""

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.batch import BatchDecoder
from halviz.engine.lens import LENS_BUDGET, LENS_FREE_MACS, resolve_lens_layers
from halviz.engine.recorder import RecordOptions
from halviz.methods.mask_patches import MaskPatches
from halviz.methods.vhr import VHR
from halviz.trace import LENS_ARRAYS, Trace, TraceFormatError
from stock import stock_with_attention

FAMILIES = ["llava-1.5", "llava-interleave"]
TOKENS = 5


def reference_lens(model, decoder: BatchDecoder, tokens: list[int]) -> torch.Tensor:
    """(steps, layers, vocab) log-probabilities of the stock model's lens, teacher-forced on ``tokens``."""
    ids = torch.cat([decoder.inputs["input_ids"], torch.tensor([tokens[:-1]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=decoder.inputs["pixel_values"], output_hidden_states=True)
    text = model.model.language_model
    queries = torch.arange(len(tokens)) + decoder.columns[0].prompt_len - 1
    hidden = out.hidden_states  # embeddings, then each layer's output; the last one already normed
    with torch.no_grad():
        layers = [model.lm_head(text.norm(hidden[l + 1][0, queries])) for l in range(len(hidden) - 2)]
    layers.append(out.logits[0, queries])
    return torch.log_softmax(torch.stack(layers, dim=1).double(), dim=-1)


def assert_lens_equals(trace: Trace, ref: torch.Tensor) -> None:
    tokens = torch.tensor(trace.arrays["token_ids"])
    steps = torch.arange(len(tokens))
    chosen = ref[steps, :, tokens]  # (steps, layers)
    np.testing.assert_allclose(trace.arrays["lens_token_prob"], chosen.exp().numpy(), rtol=0, atol=1e-6)
    rank = (ref > chosen[..., None]).sum(-1)
    np.testing.assert_array_equal(trace.arrays["lens_token_rank"], rank.numpy())
    top, ids = ref.topk(5, dim=-1)
    np.testing.assert_array_equal(trace.arrays["lens_top_ids"], ids.numpy())
    np.testing.assert_allclose(trace.arrays["lens_top_probs"], top.exp().numpy(), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def stock_models(tiny_model_dirs):
    return {f: LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[f], dtype=torch.float64).eval()
            for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_equals_hidden_states_through_norm_and_head(tiny_models_f64, tiny_model_dirs, stock_models, photo, family):
    loaded = tiny_models_f64[family]
    masked = dict(first_row=1, last_row=3, first_col=0, last_col=2, first_layer=0, last_layer=-1)
    decoder = BatchDecoder(loaded, photo, "Describe.", [[], [MaskPatches(**masked)], [VHR()]], max_new_tokens=TOKENS,
                           record=RecordOptions(lens_layers="all"), stop_at_eos=False)
    vanilla, patched, vhr = decoder.run_to_end()
    assert decoder._packing is not None  # VHR's text-only row rode in the ragged prefill
    layers = loaded.adapter.num_layers
    for trace in (vanilla, patched, vhr):
        assert trace.meta["lens_layers"] == list(range(layers))
        assert trace.arrays["lens_top_ids"].shape == (TOKENS, layers, 5)

    stock = stock_models[family]
    assert_lens_equals(vanilla, reference_lens(stock, decoder, vanilla.arrays["token_ids"].tolist()))

    layout = decoder.layout
    hidden_patches = torch.tensor(layout.positions).reshape(layout.rows, layout.cols)[1:4, 0:3].flatten()
    after = max(layout.positions) + 1

    def hide(layer, queries, kv):  # those patches, hidden from every query after the image
        cols = torch.zeros(kv, dtype=torch.bool)
        cols[hidden_patches] = True
        return (queries[:, None] >= after) & cols[None, :]

    edited = stock_with_attention(tiny_model_dirs[family], f"lens-nopatch-{family}", hide)
    tokens = patched.arrays["token_ids"].tolist()
    assert_lens_equals(patched, reference_lens(edited, decoder, tokens))
    unedited = reference_lens(stock, decoder, tokens)  # the edit shows in the lens, so the test has power
    steps = torch.arange(TOKENS)
    assert np.abs(patched.arrays["lens_token_prob"] - unedited[steps, :, torch.tensor(tokens)].exp().numpy()).max() > 1e-4

    # VHR leaves the logits alone: its last lens layer is its own final distribution.
    np.testing.assert_allclose(vhr.arrays["lens_top_probs"][:, -1], vhr.arrays["top_probs"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vhr.arrays["lens_top_ids"][:, -1], vhr.arrays["top_ids"])


def test_a_chosen_subset_and_none(tiny_models_f64, stock_models, photo):
    loaded = tiny_models_f64["llava-interleave"]
    decoder = BatchDecoder(loaded, photo, "Describe.", [[]], max_new_tokens=3, record=RecordOptions(lens_layers=(0, 2)),
                           stop_at_eos=False)
    (trace,) = decoder.run_to_end()
    assert trace.meta["lens_layers"] == [0, 2]
    ref = reference_lens(stock_models["llava-interleave"], decoder, trace.arrays["token_ids"].tolist())
    assert_lens_equals(trace, ref[:, [0, 2]])
    (none,) = BatchDecoder(loaded, photo, "Describe.", [[]], max_new_tokens=2, record=RecordOptions(lens_layers=()),
                           stop_at_eos=False).run_to_end()
    assert none.meta["lens_layers"] == [] and not set(LENS_ARRAYS) & set(none.arrays)


def test_default_layers_follow_the_cost_rule():
    # toy-sized: the whole lens is below LENS_FREE_MACS, so every layer
    assert resolve_lens_layers(None, 6, 448 * 192, 3_000_000) == tuple(range(6))
    # LLaVA-1.5-7B: head 32000 × 4096; a step ≈ 6.6 G multiply-adds → 5 % buys 2 layers, evenly spaced, + the last
    head, step = 32000 * 4096, 32 * 202_383_360 + 32000 * 4096
    extra = int(LENS_BUDGET * step // head)
    assert extra == 2 and head * 31 > LENS_FREE_MACS
    assert resolve_lens_layers(None, 32, head, step) == (10, 20, 31)
    # LLaVA-interleave-0.5B (152 k vocabulary, hidden 896): one more layer costs 27 %, so the last only
    assert resolve_lens_layers(None, 24, 151_936 * 896, 494_000_000) == (23,)
    assert resolve_lens_layers("all", 4, 1, 1) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="outside"):
        resolve_lens_layers((5,), 4, 1, 1)


def test_traces_without_a_lens_load_and_damaged_lens_arrays_are_refused(tiny_models, photo, tmp_path):
    (trace,) = BatchDecoder(tiny_models["llava-1.5"], photo, "Describe.", [[]], max_new_tokens=2).run_to_end()
    trace.save(tmp_path / "lens")
    data = dict(np.load(tmp_path / "lens.npz"))
    old = {k: v for k, v in data.items() if k not in LENS_ARRAYS}
    assert not Trace.from_arrays(dict(old)).arrays.keys() & set(LENS_ARRAYS)  # a trace from before the lens
    short = dict(data, lens_token_rank=data["lens_token_rank"][:, :1])
    with pytest.raises(TraceFormatError, match="lens_token_rank has shape"):
        Trace.from_arrays(short)
    with pytest.raises(TraceFormatError, match="lacks the logit-lens array lens_top_probs"):
        Trace.from_arrays({k: v for k, v in data.items() if k != "lens_top_probs"})
    with pytest.raises(TraceFormatError, match="lens_top_ids has dtype"):
        Trace.from_arrays(dict(data, lens_top_ids=data["lens_top_ids"].astype(np.float32)))


def _hand_trace(ranks, tokens, lens_layers=(0, 2, 3)):
    ranks = np.asarray(ranks, dtype=np.int32)
    steps, layers = ranks.shape
    meta = {"num_steps": steps, "num_layers": 4, "lens_layers": list(lens_layers), "texts": [f" w{i}" for i in range(steps)],
            "vocab_strings": {"7": " cat", "8": " dog"}}
    arrays = {"token_ids": np.asarray(tokens, dtype=np.int64),
              "lens_token_rank": ranks, "lens_token_prob": np.where(ranks == 0, 0.9, 0.01).astype(np.float32),
              "lens_top_ids": np.full((steps, layers, 5), 8, dtype=np.int32),
              "lens_top_probs": np.full((steps, layers, 5), 0.2, dtype=np.float32)}
    arrays["lens_top_ids"][..., 0] = 7
    return Trace(meta, arrays)


def test_panel_moment_of_decision_divergence_and_a_trace_without_a_lens():
    from halviz.viz import lens as lens_viz

    # step 0: top from layer 3 (index 2) on (a top at layer 0 that is lost again does not count); step 1: never top;
    # step 2: top everywhere
    trace = _hand_trace([[0, 5, 0], [3, 1, 2], [0, 0, 0]], [7, 7, 7])
    assert lens_viz.decision_layers(trace).tolist() == [2, -1, 0]
    other = _hand_trace([[0, 0, 0]] * 3, [7, 8, 7])
    assert lens_viz.first_divergence(trace, other) == 1 and lens_viz.first_divergence(trace, trace) is None
    words = lens_viz.lens_words_figure(trace, 1, other, ("Greedy", "VHR"))
    assert [d.customdata[0][0] for d in words.data] == [" cat", " cat"]  # names tokens from vocab_strings
    assert "<b> cat</b>" in words.data[0].text[0][0] and "<b>" not in words.data[1].text[0][0]  # VHR wrote dog
    heat = lens_viz.lens_heatmap_figure(trace, 1, other, ("Greedy", "VHR"))
    assert "first differ at step 1" in heat.layout.title.text and "no recorded layer ranks step 1" in heat.layout.title.text
    old = Trace(dict(trace.meta, lens_layers=[]), {k: v for k, v in trace.arrays.items() if not k.startswith("lens_")})
    for figure in (lens_viz.lens_heatmap_figure(old, 0), lens_viz.lens_words_figure(old, 0)):
        assert "no logit lens" in figure.layout.annotations[0].text
    assert "no logit lens" in lens_viz.lens_summary(old)
