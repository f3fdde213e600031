"""Per-run state, reached by the attention function through a ContextVar.

Each decode owns one :class:`Run`. The decode loop activates it only around its own forward
passes (never across a ``yield``), so runs interleaved in one thread or spread over many threads
never see each other's state.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Iterator

import torch
from transformers import DynamicCache

if TYPE_CHECKING:
    from halviz.engine.recorder import Recorder
    from halviz.methods.base import Method
    from halviz.models.adapters import ImageLayout

_ACTIVE_RUN: ContextVar["Run | None"] = ContextVar("halviz_active_run", default=None)

SEGMENTS = ("bos", "system", "image", "prompt", "generated")


def active_run() -> "Run | None":
    return _ACTIVE_RUN.get()


class Run:
    """What one decode's forward passes need: geometry, methods, cache, recorder, step counter."""

    def __init__(self, model, adapter, layout: "ImageLayout", input_ids: torch.Tensor,
                 methods: list["Method"], recorder: "Recorder | None", max_new_tokens: int):
        self.model = model
        self.adapter = adapter
        self.layout = layout
        self.prompt_ids = input_ids
        self.prompt_len = int(input_ids.shape[1])
        self.device = input_ids.device
        self.num_layers = adapter.num_layers
        self.num_heads = adapter.num_heads
        self.num_kv_heads = adapter.num_kv_heads
        self.methods = sorted(methods, key=lambda m: m.order)
        self.recorder = recorder
        self.max_new_tokens = max_new_tokens
        self.image_index = torch.tensor(layout.positions, dtype=torch.long, device=self.device)
        self.segment_ids = segment_ids(input_ids[0], layout.positions, adapter.bos_token_id, max_new_tokens)
        self.cache = DynamicCache()
        self.step = 0  # index of the token being predicted
        self.phase = "prefill"
        self.variant: str | None = None  # name of an extra pass; None for the main pass
        self.generated: list[int] = []

    @contextmanager
    def active(self, variant: str | None = None) -> Iterator["Run"]:
        token = _ACTIVE_RUN.set(self)
        previous, self.variant = self.variant, variant
        try:
            yield self
        finally:
            self.variant = previous
            _ACTIVE_RUN.reset(token)

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    @property
    def cache_len(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, variant: str | None = None, cache: DynamicCache | None = None,
                restore_cache: bool = False, **inputs) -> torch.Tensor:
        """One forward pass; returns the last position's logits (batch, vocab), float32 or wider.

        ``restore_cache`` drops whatever this pass appended to the run's cache, so a contrast
        branch leaves the main cache exactly as it found it.
        """
        cache = self.cache if cache is None else cache
        before = cache.get_seq_length()
        with torch.inference_mode(), self.active(variant):
            out = self.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if restore_cache:
            added = cache.get_seq_length() - before
            if added:
                cache.crop(-added)
        logits = out.logits[:, -1]
        return logits.to(torch.promote_types(logits.dtype, torch.float32))


def segment_ids(prompt_ids: torch.Tensor, image_positions, bos_token_id, max_new_tokens: int) -> torch.Tensor:
    """Segment index (see ``SEGMENTS``) of every sequence position, prompt and generated."""
    n = int(prompt_ids.shape[0])
    ids = torch.full((n + max_new_tokens + 1,), SEGMENTS.index("generated"), dtype=torch.long)
    first, last = min(image_positions), max(image_positions)
    ids[:first] = SEGMENTS.index("system")
    ids[first:last + 1] = SEGMENTS.index("image")
    ids[last + 1:n] = SEGMENTS.index("prompt")
    if bos_token_id is not None and int(prompt_ids[0]) == bos_token_id:
        ids[0] = SEGMENTS.index("bos")
    return ids.to(prompt_ids.device)
