"""The interventions against stock transformers models edited by hand: an eager attention function
registered by the test that masks the same columns, and o_proj weight columns scaled per head."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.methods import INTERVENTIONS, REGISTRY, build_stack
from halviz.methods.mask_patches import MaskPatches, box_positions
from halviz.methods.remove_sink import RemoveSink
from halviz.methods.scale_heads import ScaleHeads
from stock import decode_logits, teacher_forced_logits, assert_edit_acts, stock_with_attention as _stock

FAMILIES = ["llava-1.5", "llava-interleave"]
TOKENS = 6


def _vanilla_tokens(loaded, photo):
    dec = Decoder(loaded, photo, "Describe.", [], max_new_tokens=TOKENS, stop_at_eos=False)
    dec.run_to_end()
    return dec.token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_sink_equals_eager_attention_without_the_bos_column(tiny_models_f64, tiny_model_dirs, photo, family):
    loaded = tiny_models_f64[family]
    method = RemoveSink(tokens=1, first_layer=1, last_layer=-1)
    dec, logits = decode_logits(TOKENS, loaded, photo, method)
    layers = set(range(1, loaded.adapter.num_layers))

    def hide(layer, queries, kv):  # key 0 hidden from every query but the first, in layers 1..L−1
        if layer not in layers:
            return None
        return (queries[:, None] >= 1) & (torch.arange(kv)[None, :] < 1)

    ref = teacher_forced_logits(_stock(tiny_model_dirs[family], f"nosink-{family}", hide), dec)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    assert_edit_acts(TOKENS, loaded, photo, logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_patches_equals_eager_attention_without_those_columns_for_the_text(tiny_models_f64, tiny_model_dirs,
                                                                                photo, family):
    loaded = tiny_models_f64[family]
    method = MaskPatches(first_row=1, last_row=3, first_col=0, last_col=2, first_layer=0, last_layer=-1)
    dec, logits = decode_logits(TOKENS, loaded, photo, method)
    layout = dec.layout
    positions = torch.tensor(layout.positions).reshape(layout.rows, layout.cols)[1:4, 0:3].flatten()
    after = max(layout.positions) + 1

    def hide(layer, queries, kv):  # those patches, hidden from every query after the image
        cols = torch.zeros(kv, dtype=torch.bool)
        cols[positions] = True
        return (queries[:, None] >= after) & cols[None, :]

    ref = teacher_forced_logits(_stock(tiny_model_dirs[family], f"nopatch-{family}", hide), dec)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    assert_edit_acts(TOKENS, loaded, photo, logits)
    assert box_positions(torch.tensor(layout.positions), layout.rows, layout.cols, 1, 3, 0, 2).tolist() == \
        positions.tolist()


def test_mask_patches_default_box_is_the_whole_grid():
    positions = torch.arange(10, 19)
    assert box_positions(positions, 3, 3, 0, -1, 0, -1).tolist() == list(range(10, 19))
    assert box_positions(positions, 3, 3, 2, -1, 1, 1).tolist() == [17]


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_heads_equals_a_model_with_scaled_o_proj_columns(tiny_models_f64, tiny_model_dirs, photo, family):
    loaded = tiny_models_f64[family]
    head, scale = 1, 0.0
    dec, logits = decode_logits(TOKENS, loaded, photo, ScaleHeads(head=head, scale=scale, first_layer=0, last_layer=0))
    stock = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[family], dtype=torch.float64,
                                                          attn_implementation="sdpa").eval()
    o_proj = stock.model.language_model.layers[0].self_attn.o_proj
    d = o_proj.weight.shape[1] // loaded.adapter.num_heads
    with torch.no_grad():
        o_proj.weight[:, head * d:(head + 1) * d] *= scale
    ref = teacher_forced_logits(stock, dec)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    assert_edit_acts(TOKENS, loaded, photo, logits)


def test_scale_one_and_a_refused_head(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    assert decode_logits(TOKENS, loaded, photo, ScaleHeads(head=-1, scale=1.0))[0].token_ids == _vanilla_tokens(loaded, photo)
    with pytest.raises(ValueError, match="heads 0.."):
        Decoder(loaded, photo, "Describe.", [ScaleHeads(head=99)], max_new_tokens=2).run_to_end()


def test_an_intervention_beside_the_original_in_one_comparison(tiny_models_f64, photo):
    """The debugger's "what if": the original and its intervened copy are two columns of one batch."""
    loaded = tiny_models_f64["llava-1.5"]
    batch = BatchDecoder(loaded, photo, "Describe.", [[], build_stack(["remove_sink"])], max_new_tokens=TOKENS,
                         stop_at_eos=False)
    batch.run_to_end()
    assert [s.token_id for s in batch.steps[0]] == _vanilla_tokens(loaded, photo)
    alone = Decoder(loaded, photo, "Describe.", build_stack(["remove_sink"]), max_new_tokens=TOKENS, stop_at_eos=False)
    alone.run_to_end()
    assert [s.token_id for s in batch.steps[1]] == alone.token_ids


def test_registered_after_the_methods():
    assert list(INTERVENTIONS) == ["remove_sink", "mask_patches", "scale_heads"]
    assert list(REGISTRY)[-3:] == list(INTERVENTIONS)
