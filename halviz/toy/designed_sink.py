"""The toy decoder's designed attention sink: a fixed default on BOS that the sink heads from layer 2
on can fall back to (every head, or the first ``heads[i]`` of a layer: the shipped model leaves half
of layer 2's heads without it, free to read the image). It is a fallback, named wherever the model
is shown, because in the toy's short training no sink emerged (issue 10: five recipes, Sink^0.3 = 0
in the image layout).

It is built from the parts a real sink is made of (Sun et al. 2024, "Massive Activations in Large
Language Models"; Gu et al. 2025, "When Attention Sink Emerges"), so that every panel and probe
reads it the way it would read a learned one:

- a **massive activation**: residual dimension ``dim`` belongs to BOS alone (its embedding holds
  ``magnitude`` there; every other writer of the residual stream — token embeddings, the image
  projector, attention and MLP outputs — has a zero row for it), so BOS's residual norm dwarfs
  the others' and, after RMSNorm, BOS's normalised state is almost the unit vector of ``dim``;
- a **key that only BOS has**: each sink head's key reads ``dim`` into the head's lowest-frequency
  rotary pair, where rotary position changes it by < 0.5 % over 512 positions;
- a **constant query** in that pair (the query bias), so every query gives BOS the same logit
  ``logit`` on top of whatever its content says; all other attention biases stay zero;
- a near-empty **value**: no value weight reads ``dim``, so attending to BOS is close to a no-op.

The model is still a stock ``LlavaForConditionalGeneration`` (Llama with ``attention_bias``). The
parameters above are fixed: ``impose`` sets them after every optimiser step, and the rest of the
network learns around them, as models trained with a fixed "softmax + 1" slot do (Miller 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DesignedSink:
    # BOS's logit in every sink head, before the softmax. At 6 the heads learnt to outbid it and masking
    # BOS cost 0.01 nat (not necessary, issue 10's S3); at 10 they fall back to it (+0.84 nat, validation set).
    # The recipe's own default (TrainConfig.designed_sink_logit) is 12 since the fourth edition's data
    # (with the sink in half the heads of layer 2 since the fifth: TrainConfig.designed_sink_heads).
    logit: float = 10.0
    first_layer: int = 2  # layers 0..first_layer-1 have no sink (S1 asks for none there)
    dim: int = 0  # the residual dimension only BOS uses
    magnitude: float = 1000.0  # BOS's value in that dimension
    # How many heads (the first ones) carry the sink in each layer from first_layer on; a layer past
    # the end of the tuple, or an empty tuple, has it in every head. Heads left without it must find
    # their own default, and keep reading the image where the sink would have taken their attention.
    heads: tuple[int, ...] = ()

    def sink_heads(self, layer: int, num_heads: int) -> range:
        """The heads of ``layer`` that carry the sink."""
        if layer < self.first_layer:
            return range(0)
        index = layer - self.first_layer
        count = self.heads[index] if index < len(self.heads) else num_heads
        if not 0 <= count <= num_heads:
            raise ValueError(f"the designed sink asks for {count} sink heads in layer {layer} of {num_heads}")
        return range(count)

    def describe(self) -> dict:
        return {"kind": "designed sink (fallback, not learned)", **asdict(self),
                "how": "BOS alone carries a massive activation in residual dimension `dim`; every head of "
                       "layers >= first_layer (but only the first `heads[i]` heads of layer first_layer + i) "
                       "reads it through a fixed key and query bias in its lowest-frequency rotary pair, "
                       "giving BOS a fixed attention logit `logit`; "
                       "no value weight reads it (halviz/toy/designed_sink.py)"}


def rotary_pair(head_dim: int) -> tuple[int, int]:
    """The lowest-frequency rotary pair (Llama's rotate_half pairs dimension i with i + d/2)."""
    return head_dim // 2 - 1, head_dim - 1


@torch.no_grad()
def impose(model, bos_id: int, sink: DesignedSink) -> None:
    """Set the sink's fixed parameters on a Llava model whose decoder has attention biases."""
    lm = model.model.language_model
    cfg = lm.config
    d, hd, heads = sink.dim, cfg.head_dim, cfg.num_attention_heads
    if not cfg.attention_bias:
        raise ValueError("the designed sink needs a decoder built with attention_bias=True")
    if cfg.num_key_value_heads != heads:
        raise ValueError("the designed sink assumes one key head per query head")
    j0, j1 = rotary_pair(hd)
    emb = lm.embed_tokens.weight
    emb[:, d] = 0.0
    emb[bos_id] = 0.0
    emb[bos_id, d] = sink.magnitude
    proj = model.model.multi_modal_projector.linear_2
    proj.weight[d] = 0.0
    proj.bias[d] = 0.0
    lm.norm.weight[d] = 0.0  # nothing of `dim` reaches the logits (the head is tied to the embeddings)
    # BOS's normalised state in `dim` is ≈ sqrt(hidden); this weight makes its key component sqrt(head_dim),
    # so query bias `logit` gives a logit of `logit` after the 1/sqrt(head_dim) scaling.
    key_weight = math.sqrt(hd) / math.sqrt(cfg.hidden_size)
    for index, layer in enumerate(lm.layers):
        attn, mlp = layer.self_attn, layer.mlp
        layer.input_layernorm.weight[d] = 1.0
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            lin.weight[:, d] = 0.0  # only the sink keys below read `dim`
        attn.o_proj.weight[d] = 0.0
        mlp.down_proj.weight[d] = 0.0
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            lin.bias.zero_()
        for h in sink.sink_heads(index, heads):
            rows = [h * hd + j0, h * hd + j1]
            attn.q_proj.weight[rows] = 0.0
            attn.k_proj.weight[rows] = 0.0
            attn.k_proj.weight[h * hd + j0, d] = key_weight
            attn.q_proj.bias[h * hd + j0] = sink.logit
