"""The list knobs of the interventions: ``mask_patches.patches`` ("row:col,…") and ``scale_heads.heads``
("layer:head,…"), against stock transformers models edited by hand (tests/stock.py), their parsing and
refusals, and the old box/head knobs unchanged beside them."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.methods.index_pairs import MAX_INDEX, MAX_PAIRS_CHARS
from halviz.methods.mask_patches import MaskPatches
from halviz.methods.scale_heads import ScaleHeads
from halviz.session.checks import InputError, build_stacks
from stock import decode_logits, teacher_forced_logits, assert_edit_acts, stock_with_attention

FAMILIES = ["llava-1.5", "llava-interleave"]
TOKENS = 6
PATCHES = [(0, 1), (2, 3), (3, 0), (5, 5), (1, 4)]  # scattered: no box holds exactly these


@pytest.mark.parametrize("family", FAMILIES)
def test_a_patch_list_equals_eager_attention_without_exactly_those_columns(tiny_models_f64, tiny_model_dirs, photo,
                                                                           family):
    loaded = tiny_models_f64[family]
    listed = ", ".join(f"{r}:{c}" for r, c in PATCHES)  # the box knobs are left at their whole-grid default
    dec, logits = decode_logits(TOKENS, loaded, photo, MaskPatches(patches=listed, first_layer=1, last_layer=-1))
    layout = dec.layout
    grid = [layout.positions[r * layout.cols:(r + 1) * layout.cols] for r in range(layout.rows)]  # row-major
    positions = [grid[r][c] for r, c in PATCHES]
    after = max(layout.positions) + 1

    def hide(layer, queries, kv):  # the listed patches, hidden from every query after the image, layers 1..
        if layer < 1:
            return None
        cols = torch.zeros(kv, dtype=torch.bool)
        cols[positions] = True
        return (queries[:, None] >= after) & cols[None, :]

    ref = teacher_forced_logits(stock_with_attention(tiny_model_dirs[family], f"patchlist-{family}", hide), dec)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    assert_edit_acts(TOKENS, loaded, photo, logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_list_equals_a_model_with_those_o_proj_columns_scaled(tiny_models_f64, tiny_model_dirs, photo, family):
    loaded = tiny_models_f64[family]
    heads, scale = [(0, 1), (1, 0), (1, 3)], 0.25
    # head, first_layer and last_layer say "head 2 of layer 0": the list must win over them
    method = ScaleHeads(heads="1:3,0:1,1:0", scale=scale, head=2, first_layer=0, last_layer=0)
    dec, logits = decode_logits(TOKENS, loaded, photo, method)
    stock = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[family], dtype=torch.float64,
                                                          attn_implementation="sdpa").eval()
    d = stock.model.language_model.layers[0].self_attn.o_proj.weight.shape[1] // loaded.adapter.num_heads
    with torch.no_grad():
        for layer, head in heads:
            stock.model.language_model.layers[layer].self_attn.o_proj.weight[:, head * d:(head + 1) * d] *= scale
    ref = teacher_forced_logits(stock, dec)
    assert dec.token_ids == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-8, atol=1e-8)
    assert_edit_acts(TOKENS, loaded, photo, logits)


def test_the_old_knobs_keep_their_defaults_and_meaning(tiny_models_f64, photo):
    assert MaskPatches().params == {"first_row": 0, "last_row": -1, "first_col": 0, "last_col": -1, "patches": "",
                                    "first_layer": 0, "last_layer": -1}
    assert ScaleHeads().params == {"head": 0, "scale": 0.0, "heads": "", "first_layer": 0, "last_layer": -1}
    loaded = tiny_models_f64["llava-1.5"]
    # one patch as a list and as a 1×1 box; one head as a list and as head + layer range: the same run
    _, listed = decode_logits(TOKENS, loaded, photo, MaskPatches(patches="2:3"))
    _, boxed = decode_logits(TOKENS, loaded, photo, MaskPatches(first_row=2, last_row=2, first_col=3, last_col=3))
    torch.testing.assert_close(listed, boxed, rtol=0, atol=0)
    _, listed = decode_logits(TOKENS, loaded, photo, ScaleHeads(heads="1:2", scale=0.0))
    _, ranged = decode_logits(TOKENS, loaded, photo, ScaleHeads(head=2, scale=0.0, first_layer=1, last_layer=1))
    torch.testing.assert_close(listed, ranged, rtol=0, atol=0)


def test_lists_are_parsed_to_one_canonical_form():
    assert MaskPatches(patches=" 2:1, 0:3 ,2:1").params["patches"] == "0:3,2:1"
    assert ScaleHeads(heads="3:0,1:2").describe()["params"]["heads"] == "1:2,3:0"
    assert MaskPatches(patches="  ").params["patches"] == ""


@pytest.mark.parametrize("value, message", [
    ("1-2", "'1-2' is not a pair"), ("a:b", "is not a pair"), ("1:2,", "an empty entry"), ("-1:2", "is not a pair"),
    ("1:2:3", "is not a pair"), ("1:2;3:4", "is not a pair"), (f"{MAX_INDEX + 1}:0", "out of range"),
    ("0:" + "9" * 30, "is not a pair"), ("1:1," * (MAX_PAIRS_CHARS // 4 + 1), "characters; the limit"),
    (5, "must be text"), (None, "must be text"), (["1:2"], "must be text"),
], ids=lambda v: repr(v)[:24])
def test_malformed_lists_are_refused_with_a_sentence(value, message):
    for method, knob in ((MaskPatches, "patches"), (ScaleHeads, "heads")):
        with pytest.raises(ValueError, match=message):
            method(**{knob: value})
        with pytest.raises(InputError, match=message):  # what the app says to a request
            build_stacks([method.name], {method.name: {knob: value}}, {method.name: method})


def test_pairs_outside_the_model_are_refused_at_setup(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    layout = Decoder(loaded, photo, "Describe.", [], max_new_tokens=1).layout
    rows, cols = layout.rows, layout.cols
    with pytest.raises(ValueError, match=f"outside the {rows}×{cols} grid"):
        Decoder(loaded, photo, "Describe.", [MaskPatches(patches=f"0:0,{rows}:0")], max_new_tokens=1).run_to_end()
    with pytest.raises(ValueError, match=f"outside the {rows}×{cols} grid"):
        Decoder(loaded, photo, "Describe.", [MaskPatches(patches=f"0:{cols}")], max_new_tokens=1).run_to_end()
    with pytest.raises(ValueError, match="not in this model"):
        Decoder(loaded, photo, "Describe.", [ScaleHeads(heads="0:0,2:0")], max_new_tokens=1).run_to_end()
    with pytest.raises(ValueError, match="not in this model"):
        Decoder(loaded, photo, "Describe.", [ScaleHeads(heads="0:4")], max_new_tokens=1).run_to_end()


def test_a_text_knob_is_a_text_box():
    import gradio as gr

    from halviz.ui.knobs import knob_component

    knob = next(k for k in MaskPatches.knobs if k.name == "patches")
    with gr.Blocks():
        box = knob_component(knob)
    assert isinstance(box, gr.Textbox) and box.value == "" and box.max_length == MAX_PAIRS_CHARS
