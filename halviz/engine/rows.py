"""Columns, rows and passes: who owns which rows of a batched forward.

A comparison decodes several *columns* (method stacks) of one prompt together. Each column owns
a ``main`` row and one row per extra :class:`~halviz.methods.base.Stream` its methods ask for. In
decode a column's rows are contiguous, so the tensors its hooks receive are views; in the prefill
columns whose methods leave the prompt's forward alone share one main row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from halviz.methods.base import HOOK_POINTS

if TYPE_CHECKING:
    from halviz.engine.lens import Lens
    from halviz.engine.recorder import Recorder
    from halviz.methods.base import Method, Stream
    from halviz.models.families import ImageLayout

SEGMENTS = ("bos", "system", "image", "prompt", "generated")
MAIN = "main"


class Column:
    """One method stack's share of a comparison: its prompt geometry, methods, recorder and tokens."""

    def __init__(self, index: int, model, adapter, layout: "ImageLayout", prompt_ids: torch.Tensor,
                 methods: list["Method"], max_new_tokens: int):
        self.index = index
        self.model = model
        self.adapter = adapter
        self.layout = layout
        self.prompt_ids = prompt_ids  # (1, n)
        self.prompt_len = int(prompt_ids.shape[1])
        self.device = prompt_ids.device
        self.num_layers = adapter.num_layers
        self.num_heads = adapter.num_heads
        self.num_kv_heads = adapter.num_kv_heads
        self.head_dim = adapter.head_dim
        self.methods = list(methods)  # in stacking order
        # Dispatch tables, once per run: at each hook point only the methods that declare it.
        self.hooks: dict[str, list[Method]] = {point: [m for m in self.methods if point in m.hook_points]
                                               for point in HOOK_POINTS}
        self.max_new_tokens = max_new_tokens
        self.image_index = torch.tensor(layout.positions, dtype=torch.long, device=self.device)
        # length of the prompt a text-only stream reads (the family drops the image tokens)
        self.text_len = int(adapter.text_only_ids(prompt_ids[0], layout).shape[-1])
        self.segment_ids = segment_ids(prompt_ids[0], layout.positions, adapter.bos_token_id, max_new_tokens)
        self.recorder: Recorder | None = None
        self.lens: Lens | None = None  # engine/lens.py: the decode's logit lens, if this column records one
        self.streams: dict[str, Stream] = {}
        self.shares_prefill = not any(m.edits_prefill for m in self.methods)
        self.step = 0  # index of the token being predicted
        self.generated: list[int] = []
        self.finish: str | None = None  # "eos", "length", "error" once the column has ended
        self.error: BaseException | None = None

    def open(self) -> None:
        """Collect the methods' extra streams and set them up (before any forward pass)."""
        for method in self.methods:
            for stream in method.streams():
                if stream.name == MAIN or stream.name in self.streams:
                    raise ValueError(f"two rows of one column are both called {stream.name!r}")
                if stream.decode and not stream.prefill and not stream.mirrors_main:
                    raise ValueError(f"stream {stream.name!r} decodes without a prefill of its own or the main row's")
                self.streams[stream.name] = stream
        for method in self.methods:
            method.setup(self)

    @property
    def running(self) -> bool:
        return self.finish is None

    def fail(self, exc: BaseException) -> None:
        if self.finish is None:
            self.finish, self.error = "error", exc


@dataclass(frozen=True)
class Pass:
    """What a hook is told about the forward it is called in, for its column's rows."""

    column: Column
    phase: str  # "prefill" or "decode"
    step: int  # the token being predicted (0 in the prefill)
    streams: tuple[str, ...]  # the stream of each row the hook's tensors hold, in order
    text_only: frozenset[int] = field(default_factory=frozenset)  # rows without the image tokens

    @property
    def prefill(self) -> bool:
        return self.phase == "prefill"

    @property
    def decode(self) -> bool:
        return self.phase == "decode"

    def row(self, stream: str) -> int | None:
        """Index of ``stream``'s row among the hook's rows, or None when it is not among them."""
        return self.streams.index(stream) if stream in self.streams else None

    @property
    def main(self) -> int | None:
        return self.row(MAIN)

    @property
    def main_layout(self) -> list[int]:
        """Rows laid out like the main prompt (image tokens at the main positions)."""
        return [i for i in range(len(self.streams)) if i not in self.text_only]


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
