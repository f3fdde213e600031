"""The toy's designed BOS sink (halviz/toy/designed_sink.py), checked from the outside: eager attention
of a stock Llava shows BOS's logit raised by exactly the designed amount in every sink head and by
nothing before the first sink layer; the residual dimension belongs to BOS alone; training leaves
the fixed parameters where they were; the saved folder is a stock checkpoint."""

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.models.tokenizer import IMAGE_TOKEN, train_tokenizer
from halviz.toy import scenes
from halviz.toy.designed_sink import DesignedSink, impose, rotary_pair
from halviz.toy.model import ToyModelConfig, build_model, build_processor
from halviz.toy.recipe.train import TrainConfig, train

TINY = ToyModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=4,
                      text_heads=2, intermediate=64)
SINK = DesignedSink(logit=3.0, first_layer=2, dim=5, magnitude=1000.0)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    corpus = ["a red circle next to a blue square", "Describe the image.", "USER: ASSISTANT:"] * 5
    tokenizer = train_tokenizer(corpus, 120)
    processor = build_processor(tokenizer, TINY)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True) + " a red circle next to a blue square"
    inputs = processor(text=text, images=scenes.heldout(1)[0].image, return_tensors="pt")
    return tokenizer, processor, inputs


def _model(tokenizer, sink=SINK):
    torch.manual_seed(1)
    model = build_model(tokenizer, TINY, attention_bias=True)
    with torch.no_grad():  # random weights at a scale where content logits matter
        for name, p in model.model.language_model.named_parameters():
            if name.endswith("_proj.weight"):
                p.normal_(0, 0.3)
    impose(model, tokenizer.bos_token_id, sink)
    model.set_attn_implementation("eager")
    return model.eval()


def _attentions(model, inputs):
    with torch.no_grad():
        return model(**inputs, output_attentions=True, output_hidden_states=True)


# (sink, the heads that carry it in layers 2 and 3 of TINY): every head, or one head in layer 2 and
# (past the end of `heads`) every head in layer 3.
@pytest.mark.parametrize("sink, carriers", [(SINK, {2: {0, 1}, 3: {0, 1}}),
                                            (replace(SINK, heads=(1,)), {2: {0}, 3: {0, 1}})])
def test_every_sink_head_adds_the_designed_logit_to_bos(parts, sink, carriers):
    tokenizer, _, inputs = parts
    model = _model(tokenizer, sink)
    out = _attentions(model, inputs)
    hd = TINY.text_hidden // TINY.text_heads
    j0, _ = rotary_pair(hd)
    theta = 10000.0 ** (-2 * j0 / hd)  # the pair's rotary frequency (Llama's default schedule)
    for layer in sorted(carriers):
        # The same model with this layer's query bias removed: layers below see identical inputs.
        plain = copy.deepcopy(model)
        with torch.no_grad():
            plain.model.language_model.layers[layer].self_attn.q_proj.bias.zero_()
        a, a0 = out.attentions[layer][0].double(), _attentions(plain, inputs).attentions[layer][0].double()
        q = torch.arange(1, a.shape[-1])
        for h in range(TINY.text_heads):
            # log-odds of BOS against every other visible key, with and without the bias
            odds = torch.log(a[h, q, :1] / a[h, q, 1:]) - torch.log(a0[h, q, :1] / a0[h, q, 1:])
            visible = torch.ones_like(odds, dtype=torch.bool).tril()
            logit = SINK.logit if h in carriers[layer] else 0.0
            expected = logit * torch.cos(theta * q.double())[:, None].expand_as(odds)
            torch.testing.assert_close(odds[visible], expected[visible], rtol=2e-3, atol=1e-6)


def test_layers_before_the_first_sink_layer_are_untouched(parts):
    tokenizer, _, inputs = parts
    with_sink = _attentions(_model(tokenizer), inputs).attentions
    without = _attentions(_model(tokenizer, replace(SINK, first_layer=TINY.text_layers)), inputs).attentions
    for layer in range(SINK.first_layer):
        torch.testing.assert_close(with_sink[layer], without[layer], rtol=0, atol=0)
    later = with_sink[SINK.first_layer][0, :, 1:, 0].mean()
    assert later > 3 * without[SINK.first_layer][0, :, 1:, 0].mean()  # and the first sink layer is not


def test_the_sink_dimension_belongs_to_bos_alone(parts):
    tokenizer, _, inputs = parts
    hidden = _attentions(_model(tokenizer), inputs).hidden_states
    assert (inputs["input_ids"][0] == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).sum() > 0  # image rows too
    for h in hidden[:-1]:  # the embeddings and every layer's output (the last entry is after the final norm)
        assert h[0, 0, SINK.dim] == SINK.magnitude
        assert torch.count_nonzero(h[0, 1:, SINK.dim]) == 0
    norms = hidden[-2][0].norm(dim=-1)
    assert norms[0] > 10 * norms[1:].median()  # a massive activation
    assert torch.count_nonzero(hidden[-1][0, :, SINK.dim]) == 0  # and none of it reaches the logits


def test_training_keeps_the_sink_fixed_and_saves_a_stock_checkpoint(tmp_path):
    torch.set_num_threads(1)
    steps = TrainConfig(vision_steps=2, vision_batch=2, text_steps=3, text_batch=2, align_steps=2, align_batch=2,
                        multi_steps=3, multi_batch=2, warmup=1, probe_every=100, ckpt_every=100,
                        tokenizer_scenes=30, caption_pool=30, designed_sink=True, designed_sink_logit=4.0,
                        designed_sink_heads="1")
    info = train(tmp_path / "toy", steps, TINY, threads=1, log_every=100, ckpt=tmp_path / "ckpt")
    assert info["sink_fallback"]["kind"].startswith("designed sink") and info["sink_fallback"]["logit"] == 4.0
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "toy")
    assert model.config.text_config.attention_bias
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokenizer_bos = json.loads((tmp_path / "toy" / "config.json").read_text())["text_config"]["bos_token_id"]
    impose(model, tokenizer_bos, DesignedSink(logit=4.0, heads=(1,)))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []  # every fixed parameter is still what impose sets
    hd = TINY.text_hidden // TINY.text_heads
    layers = model.model.language_model.layers
    bias = layers[2].self_attn.q_proj.bias  # one sink head of two in layer 2, both in layer 3
    assert bias[rotary_pair(hd)[0]] == 4.0 and torch.count_nonzero(bias) == 1
    assert torch.count_nonzero(layers[3].self_attn.q_proj.bias) == TINY.text_heads
    # and the rest of the decoder did train
    assert not math.isclose(float(model.model.language_model.layers[3].mlp.up_proj.weight.detach().std()), 0.02, rel_tol=1e-3)


def test_sink_head_counts_are_checked():
    with pytest.raises(ValueError, match="3 sink heads in layer 2 of 2"):
        DesignedSink(heads=(3,)).sink_heads(2, 2)
    with pytest.raises(ValueError, match="head counts"):
        TrainConfig(designed_sink_heads="3,half")
    assert TrainConfig(designed_sink_heads="3, 4").sink().heads == (3, 4)


def test_the_two_sink_fallbacks_are_not_combined():
    with pytest.raises(ValueError, match="one sink fallback"):
        TrainConfig(null_bos_sink=True)
    assert TrainConfig(null_bos_sink=True, designed_sink=False).sink() is None


def test_a_decoder_without_biases_is_refused(parts):
    tokenizer, _, _ = parts
    with pytest.raises(ValueError, match="attention_bias"):
        impose(build_model(tokenizer, TINY), tokenizer.bos_token_id, SINK)
