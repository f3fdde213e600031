"""Reduced per-step attention records.

Full ``output_attentions`` is O(layers · heads · seq²) per step and runs out of memory on real
models. Per step and layer we keep only what the panels draw, computed from the current query's
attention row: the head-mean row over image tokens, the entropy, the segment shares, the most
attended keys, and full per-head image rows for a few chosen layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from halviz.engine.rows import SEGMENTS
from halviz.methods.sink_rule import PAPER_TAU, scaled_tau, sink_tokens


@dataclass(frozen=True)
class RecordOptions:
    enabled: bool = True
    head_layers: tuple[int, ...] | None = None  # None: every layer up to 8 layers, else the middle and last
    top_keys: int = 5
    # logit lens (engine/lens.py): None = the cost rule's layers, "all", a tuple of layers, () = none
    lens_layers: tuple[int, ...] | str | None = None

    def resolve_head_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.head_layers is not None:
            bad = [l for l in self.head_layers if not 0 <= l < num_layers]
            if bad:
                raise ValueError(f"head_layers {bad} outside 0..{num_layers - 1}")
            return tuple(sorted(set(self.head_layers)))
        if num_layers <= 8:
            return tuple(range(num_layers))
        return (num_layers // 2, num_layers - 1)


@dataclass(frozen=True)
class StepRecord:
    """One step's reduced attention, all layers. Shapes: L layers, N image tokens, H heads."""

    image_attn: np.ndarray  # (L, N) float16, head-mean attention on each image token
    entropy: np.ndarray  # (L,) float32, mean over heads of the row entropy (nats)
    segment_share: np.ndarray  # (L, len(SEGMENTS)) float32, head-mean share per segment
    top_key_pos: np.ndarray  # (L, K) int32, positions of the most attended keys (head-mean)
    top_key_attn: np.ndarray  # (L, K) float16
    head_image_attn: np.ndarray  # (len(head_layers), H, N) float16


class Recorder:
    def __init__(self, num_layers: int, num_heads: int, image_index: torch.Tensor, segment_ids: torch.Tensor,
                 options: RecordOptions):
        self.num_layers = num_layers
        self.image_index = image_index
        self.segment_ids = segment_ids
        self.top_k = options.top_keys
        self.head_layers = options.resolve_head_layers(num_layers)
        self.lens_option = options.lens_layers
        self._head_slot = {layer: i for i, layer in enumerate(self.head_layers)}
        self._rows: list[torch.Tensor | None] = [None] * num_layers
        self._entropy: list[torch.Tensor | None] = [None] * num_layers
        self._head_rows: list[torch.Tensor | None] = [None] * len(self.head_layers)
        self._sinks: dict[int, torch.Tensor] = {}  # layer → (prompt,) bool, from the prefill's layer inputs
        self.sink_tau: float | None = None

    def see_prefill_residual(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden (prompt, D): the main row's input to ``layer`` in the prefill. Which prompt tokens are
        sinks there, by VAR's rule at the paper's τ (rescaled to D): what tells visual from text sinks."""
        self.sink_tau = scaled_tau(PAPER_TAU, hidden.shape[-1])
        self._sinks[layer] = sink_tokens(hidden, self.sink_tau).cpu()

    def sink_arrays(self) -> dict[str, np.ndarray]:
        """``sink_tokens`` (L, prompt) uint8: 1 where a prompt token is a sink in that layer (empty
        when the prefill's layer inputs were not seen)."""
        if len(self._sinks) != self.num_layers:
            return {}
        return {"sink_tokens": torch.stack([self._sinks[l] for l in range(self.num_layers)]).to(torch.uint8).numpy()}

    def record(self, layer: int, weights: torch.Tensor) -> None:
        """weights: (H, kv) float32, the current query's attention in ``layer``."""
        self._rows[layer] = weights.mean(0)
        slot = self._head_slot.get(layer)
        if slot is not None:
            self._head_rows[slot] = weights[:, self.image_index]
        self._entropy[layer] = -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1).mean()

    def take(self) -> StepRecord:
        """Reduce and return this step's records, then clear them for the next step."""
        if any(r is None for r in self._rows):
            missing = [i for i, r in enumerate(self._rows) if r is None]
            raise RuntimeError(f"no attention was recorded for layers {missing}; is the halviz attention active?")
        mean, entropy = torch.stack(self._rows), torch.stack(self._entropy)  # (L, kv), (L,)
        kv = mean.shape[1]
        shares = torch.zeros(self.num_layers, len(SEGMENTS), device=mean.device, dtype=mean.dtype)
        shares.index_add_(1, self.segment_ids[:kv], mean)
        k = min(self.top_k, kv)
        top_attn, top_pos = mean.topk(k, dim=-1)
        record = StepRecord(
            image_attn=mean[:, self.image_index].half().cpu().numpy(),
            entropy=entropy.float().cpu().numpy(),
            segment_share=shares.float().cpu().numpy(),
            top_key_pos=top_pos.int().cpu().numpy(),
            top_key_attn=top_attn.half().cpu().numpy(),
            head_image_attn=(torch.stack(self._head_rows).half().cpu().numpy() if self.head_layers
                             else np.zeros((0, 0, len(self.image_index)), np.float16)),
        )
        self._rows = [None] * self.num_layers
        self._entropy = [None] * self.num_layers
        self._head_rows = [None] * len(self.head_layers)
        return record


def trace_bytes_per_step(num_layers: int, num_heads: int, num_image_tokens: int, options: RecordOptions,
                         top_k_tokens: int = 5, lens_layers: int = 0) -> int:
    """Bytes one step adds to a trace in memory (and uncompressed on disk), from the record layout;
    ``lens_layers``: how many layers the logit lens records (a trace's ``meta["lens_layers"]``)."""
    head_layers = len(options.resolve_head_layers(num_layers))
    per_layer = num_image_tokens * 2 + 4 + len(SEGMENTS) * 4 + options.top_keys * (4 + 2)
    per_step = num_layers * per_layer + head_layers * num_heads * num_image_tokens * 2
    lens = lens_layers * (top_k_tokens * (4 + 4) + 4 + 4)  # top-k ids and probs, the token's prob and rank
    return per_step + lens + 8 + top_k_tokens * (4 + 4) + 4  # token id, top-k ids and probs, step time


def trace_bytes_once(num_layers: int, prompt_len: int) -> int:
    """Bytes a trace holds once, whatever its length: the prompt's sink tokens per layer (uint8)."""
    return num_layers * prompt_len
