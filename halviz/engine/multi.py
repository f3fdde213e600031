"""Several images and prompts in one batch: every (image, prompt, method stack) a column.

    decoder = MultiBatchDecoder(loaded, [Request(image_a, "Describe.", [[], [VHR()]]),
                                         Request(image_a, "Is there a cup in the image?", [[]]),
                                         Request(image_b, "Describe.", [[], [VHR()]])], max_new_tokens=16)
    traces = decoder.run_to_end()   # one per column, in request order then stack order

It is :class:`~halviz.engine.batch.BatchDecoder` with one prepared input per request: the prefill
shares one main row per request among the columns that leave the prompt's forward alone, every row
gets its own positions and its own image encoding, and the decode rounds, hooks and row dropping are
the base class's. Rows never see one another, so each column equals its solo run: in float64 the
same tokens and logits within 1e-9 whatever the batch composition (tests/test_multi_batch.py).

The requests of one batch must have prompts of **equal token length** (image tokens included):
methods index the cache by sequence position (the previous entry, the generated tokens, the image
columns), so a main row cannot be padded. Text-only rows (VHR) are shorter and padded, as in a
single comparison. :func:`decode_requests` takes requests of any lengths, groups them by length and
decodes each group as one batch: same prompt on several images (LLaVA-1.5's fixed 576 image tokens,
the toy's) batches together; POPE questions of other lengths go to their own batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from halviz.engine.batch import MAX_NEW_TOKENS_LIMIT, BatchDecoder
from halviz.engine.recorder import Recorder, RecordOptions
from halviz.engine.rows import Column
from halviz.engine.run import BatchRun
from halviz.methods.base import Method
from halviz.models.loading import LoadedModel

MAX_MULTI_COLUMNS = 256


@dataclass(frozen=True)
class Request:
    image: Image.Image
    prompt: str
    stacks: Sequence[Sequence[Method]] = ((),)


class MultiBatchDecoder(BatchDecoder):
    """Greedy decodes of several (image, prompt) requests, each with its method stacks, as rows of one batch."""

    def __init__(self, loaded: LoadedModel, requests: Sequence[Request], max_new_tokens: int = 64,
                 record: RecordOptions = RecordOptions(), stop_at_eos: bool = True, system: str | None = None,
                 prepared: Sequence[tuple[dict, object]] | None = None):
        if not requests:
            raise ValueError("no requests")
        if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must lie in 1..{MAX_NEW_TOKENS_LIMIT}")
        if not 1 <= sum(len(r.stacks) for r in requests) <= MAX_MULTI_COLUMNS:
            raise ValueError(f"a multi-request batch has 1..{MAX_MULTI_COLUMNS} columns")
        self.loaded = loaded
        self.max_new_tokens = int(max_new_tokens)
        self.stop_at_eos = stop_at_eos
        adapter = self.adapter = loaded.adapter
        self._prepared: list[tuple[dict, object]] = []
        self._prompts: list[str] = []
        self._request_of: list[int] = []
        self.columns = []
        for r, request in enumerate(requests):
            if not isinstance(request.image, Image.Image):
                raise TypeError("image must be a PIL image")
            if not request.prompt or not request.prompt.strip():
                raise ValueError("the prompt is empty")
            inputs, layout = prepared[r] if prepared is not None else prepare(loaded, request, system)
            if self._prepared and inputs["input_ids"].shape[1] != self._prepared[0][0]["input_ids"].shape[1]:
                raise ValueError("the requests of one batch need prompts of equal token length; "
                                 "decode_requests groups them")
            self._prepared.append((inputs, layout))
            self._prompts.append(request.prompt)
            for stack in request.stacks:
                column = Column(len(self.columns), loaded.model, adapter, layout, inputs["input_ids"], list(stack),
                                self.max_new_tokens)
                if record.enabled:
                    column.recorder = Recorder(adapter.num_layers, adapter.num_heads, column.image_index,
                                               column.segment_ids, record)
                self.columns.append(column)
                self._request_of.append(r)
        self.prompt = self._prompts[0]
        self.inputs, self.layout = self._prepared[0]
        self.steps = [[] for _ in self.columns]
        self.batch = BatchRun(loaded.model, self.max_new_tokens + 1)
        self._texts = [""] * len(self.columns)
        self._started = False
        self._rows = []
        self._positions: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._decode_index: torch.Tensor | None = None
        self._packing = None

    def _request(self, column: Column) -> int:
        return self._request_of[column.index]

    def _request_inputs(self, request: int):
        return self._prepared[request]

    def _request_prompt(self, request: int) -> str:
        return self._prompts[request]


def prepare(loaded: LoadedModel, request: Request, system: str | None = None):
    return loaded.adapter.prepare(request.image.convert("RGB"), request.prompt, loaded.device, loaded.dtype,
                                  system=system)


def decode_requests(loaded: LoadedModel, requests: Sequence[Request], max_new_tokens: int = 64,
                    record: RecordOptions = RecordOptions(enabled=False), stop_at_eos: bool = True,
                    system: str | None = None, max_columns: int = 64) -> list[list]:
    """Every request's columns decoded, batched by equal prompt length (at most ``max_columns`` columns a
    batch); returns, per request, ``(trace, column)`` pairs in stack order."""
    prepared = [prepare(loaded, r, system) for r in requests]
    groups: dict[int, list[int]] = {}
    for i, (inputs, _) in enumerate(prepared):
        groups.setdefault(int(inputs["input_ids"].shape[1]), []).append(i)
    out: list[list] = [[] for _ in requests]
    for members in groups.values():
        chunk: list[int] = []
        chunks = []
        for i in members:
            if chunk and sum(len(requests[j].stacks) for j in chunk) + len(requests[i].stacks) > max_columns:
                chunks.append(chunk)
                chunk = []
            chunk.append(i)
        chunks.append(chunk)
        for chunk in chunks:
            decoder = MultiBatchDecoder(loaded, [requests[i] for i in chunk], max_new_tokens, record, stop_at_eos,
                                        system, [prepared[i] for i in chunk])
            traces = decoder.run_to_end()
            k = 0
            for i in chunk:
                for _ in requests[i].stacks:
                    out[i].append((traces[k], decoder.columns[k]))
                    k += 1
    return out
