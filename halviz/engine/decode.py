"""One column on its own: the single-decode face of :class:`~halviz.engine.batch.BatchDecoder`.

``Decoder`` is a one-shot iterator of :class:`~halviz.trace.Step`; its :meth:`Decoder.trace`
gives the trace of whatever has been generated so far (so a stopped run keeps its data). It is a
batch of one column, so a solo run and a column of a comparison run the same code.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from PIL import Image

from halviz.engine.batch import MAX_NEW_TOKENS_LIMIT, TOP_K, BatchDecoder
from halviz.engine.recorder import RecordOptions
from halviz.methods.base import Method
from halviz.models.families import DEFAULT_PROMPT
from halviz.models.loading import LoadedModel
from halviz.trace import Step, Trace

__all__ = ["Decoder", "MAX_NEW_TOKENS_LIMIT", "TOP_K"]


class Decoder:
    """One greedy decode of ``image`` + ``prompt`` under a stack of methods (empty = vanilla).

    The methods act in the order given; :func:`halviz.methods.build_stack` gives the registry order.
    A method that raises ends the decode with that exception.
    """

    def __init__(self, loaded: LoadedModel, image: Image.Image, prompt: str = DEFAULT_PROMPT,
                 methods: Sequence[Method] = (), max_new_tokens: int = 64,
                 record: RecordOptions = RecordOptions(), stop_at_eos: bool = True, system: str | None = None):
        self.batch = BatchDecoder(loaded, image, prompt, [list(methods)], max_new_tokens, record, stop_at_eos, system)
        self.loaded = loaded
        self.prompt = prompt
        self.max_new_tokens = self.batch.max_new_tokens
        self.inputs = self.batch.inputs
        self.layout = self.batch.layout
        self.run = self.batch.columns[0]  # the column: prompt_len, image_index, methods, generated, …

    def __iter__(self) -> Iterator[Step]:
        for round_ in self.batch:
            step = round_[0]
            if step is None:
                break
            yield step
        if self.run.error is not None:
            raise self.run.error

    def run_to_end(self) -> Trace:
        for _ in self:
            pass
        return self.trace()

    @property
    def steps(self) -> list[Step]:
        return self.batch.steps[0]

    @property
    def cache(self):
        """The decode's KV cache (row 0 = the main row, then the methods' decode streams)."""
        return self.batch.batch.cache

    @property
    def finish_reason(self) -> str | None:
        return self.run.finish

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    def trace(self) -> Trace:
        return self.batch.trace(0)
