"""Teacher-forced forward passes with exact per-head attention, for the toy probe.

The engine's recorder keeps head-mean rows (plus per-head image rows in chosen layers), which
is all the panels need; Sink^0.3 needs every head's attention to BOS, and S3 needs a pass with
the BOS column hidden. So the probe loads a second copy of the checkpoint whose decoder runs
transformers' own ``eager_attention_forward``; the only change is an optional set of key
columns hidden from every query (which renormalises the remaining attention, as a softmax over
the remaining columns does).

A teacher-forced pass over ``prompt + generated[:-1]`` gives, at each caption query, exactly the
attention the greedy decode computed step by step (causal attention does not look ahead); tests
check it against the engine's recorder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import AttentionInterface, LlavaForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

PROBE_ATTENTION = "halviz_probe"


def hide_key_columns(mask: torch.Tensor | None, q_len: int, kv_len: int, columns: torch.Tensor,
                     dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An additive (…, q, kv) mask that also hides ``columns`` from every query.

    A query that could see nothing else (BOS's own row, which sees only BOS) keeps its mask:
    a softmax over no columns is undefined.
    """
    neg = torch.finfo(dtype).min
    if mask is None:
        mask = torch.zeros(q_len, kv_len, dtype=dtype, device=device).masked_fill(
            torch.ones(q_len, kv_len, dtype=torch.bool, device=device).triu(kv_len - q_len + 1), neg)
    visible = mask > neg / 2
    hidden = torch.zeros(kv_len, dtype=torch.bool, device=device)
    hidden[columns] = True
    keep = visible & ~hidden
    keep = torch.where(keep.any(-1, keepdim=True), keep, visible)
    return mask.masked_fill(visible & ~keep, neg)


def probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                    hide_columns: torch.Tensor | None = None, **kwargs):
    """transformers' eager attention; ``hide_columns`` (a forward kwarg) masks those key columns."""
    if hide_columns is not None:
        attention_mask = hide_key_columns(attention_mask, query.shape[2], key.shape[2], hide_columns,
                                          query.dtype, query.device)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                   dropout=dropout, **kwargs)


def register_probe_attention() -> None:
    AttentionInterface.register(PROBE_ATTENTION, probe_attention)
    AttentionMaskInterface.register(PROBE_ATTENTION, eager_mask)


@dataclass(frozen=True)
class ForcedPass:
    """What one teacher-forced pass measured. Q caption queries, T positions, L layers, H heads."""

    bos_attention: np.ndarray  # (L, H, Q) each caption query's attention to position 0
    image_mass: np.ndarray  # (L, H, Q) each caption query's attention summed over the image tokens
    value_norm_ratio: np.ndarray  # (L, H) ‖v_BOS‖ / mean over the other tokens of ‖v_t‖
    residual_norm_ratio: np.ndarray  # (L,) ‖h_BOS‖ / median other ‖h_t‖, each layer's output
    target_logprobs: np.ndarray  # (Q,) log p of each target token


class TeacherForcer:
    """A copy of a loaded model's checkpoint that runs eager attention, for measurement only."""

    def __init__(self, loaded):
        register_probe_attention()
        self.adapter = loaded.adapter
        self.model = LlavaForConditionalGeneration.from_pretrained(
            loaded.source, dtype=loaded.dtype, local_files_only=True,
            attn_implementation={"text_config": PROBE_ATTENTION, "vision_config": "sdpa"},
        ).to(loaded.device).eval()
        self.layers = self.model.model.language_model.layers

    def run(self, inputs: dict, image_positions: Sequence[int], targets: Sequence[int],
            hide_bos: bool = False) -> ForcedPass:
        """One pass over the prompt ``inputs`` followed by ``targets`` (all but the last fed in).

        The caption queries are the positions that predict the targets: the last prompt token and
        every fed target token.
        """
        from halviz.toy.recipe.sink_metrics import residual_norm_ratio, value_norm_ratio

        prompt = inputs["input_ids"]
        if int(prompt[0, 0]) != self.adapter.bos_token_id:
            raise ValueError("the prompt does not start with BOS; the sink probe measures BOS at position 0")
        device = prompt.device
        target = torch.tensor([list(targets)], dtype=prompt.dtype, device=device)
        ids = torch.cat([prompt, target[:, :-1]], dim=1)
        p, q = prompt.shape[1], target.shape[1]
        values: list[torch.Tensor] = []
        hidden: list[torch.Tensor] = []
        hooks = [layer.self_attn.v_proj.register_forward_hook(lambda m, a, out: values.append(out[0]))
                 for layer in self.layers]
        hooks += [layer.register_forward_hook(lambda m, a, out: hidden.append(out[0] if isinstance(out, tuple) else out))
                  for layer in self.layers]
        extra = {"hide_columns": torch.tensor([0], device=device)} if hide_bos else {}
        try:
            with torch.inference_mode():
                out = self.model(input_ids=ids, pixel_values=inputs["pixel_values"], output_attentions=True,
                                 use_cache=False, **extra)
        finally:
            for hook in hooks:
                hook.remove()
        rows = slice(p - 1, p - 1 + q)
        image = torch.tensor(list(image_positions), device=device)
        attn = torch.stack([a[0, :, rows, :].float() for a in out.attentions])  # (L, H, Q, T)
        logprobs = torch.log_softmax(out.logits[0, rows].float(), dim=-1).gather(-1, target[0, :, None])[:, 0]
        heads, head_dim = self.adapter.num_kv_heads, self.adapter.head_dim
        v = [x.float().reshape(x.shape[0], heads, head_dim).cpu().numpy() for x in values]
        h = [x[0].float().cpu().numpy() for x in hidden]
        ratio_v = np.stack([value_norm_ratio(x) for x in v])
        if heads != self.adapter.num_heads:  # grouped-query attention: a query head reads its kv group
            ratio_v = np.repeat(ratio_v, self.adapter.num_heads // heads, axis=1)
        return ForcedPass(
            bos_attention=attn[..., 0].cpu().numpy(),
            image_mass=attn[..., image].sum(-1).cpu().numpy(),
            value_norm_ratio=ratio_v,
            residual_norm_ratio=np.array([residual_norm_ratio(x) for x in h]),
            target_logprobs=logprobs.cpu().numpy(),
        )
