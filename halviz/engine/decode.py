"""Step-wise greedy decoding with methods plugged in at the hook points.

``Decoder`` is a one-shot iterator of :class:`~halviz.trace.Step`; its :meth:`Decoder.trace`
gives the trace of whatever has been generated so far (so a stopped run keeps its data).
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from halviz.engine.recorder import Recorder, RecordOptions
from halviz.engine.run import SEGMENTS, Run
from halviz.methods.base import Method
from halviz.models.adapters import DEFAULT_PROMPT
from halviz.models.loading import LoadedModel
from halviz.trace import Step, Trace

TOP_K = 5
MAX_NEW_TOKENS_LIMIT = 1024


class Decoder:
    """One greedy decode of ``image`` + ``prompt`` under a stack of methods (empty = vanilla)."""

    def __init__(self, loaded: LoadedModel, image: Image.Image, prompt: str = DEFAULT_PROMPT,
                 methods: Sequence[Method] = (), max_new_tokens: int = 64,
                 record: RecordOptions = RecordOptions(), stop_at_eos: bool = True, system: str | None = None):
        if not isinstance(image, Image.Image):
            raise TypeError("image must be a PIL image")
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty")
        if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must lie in 1..{MAX_NEW_TOKENS_LIMIT}")
        self.loaded = loaded
        self.prompt = prompt
        self.system = system
        self.max_new_tokens = int(max_new_tokens)
        self.stop_at_eos = stop_at_eos  # benchmarks turn it off to time a fixed number of tokens
        adapter = loaded.adapter
        inputs, layout = adapter.prepare(image.convert("RGB"), prompt, loaded.device, loaded.dtype, system=system)
        self.inputs = inputs
        self.layout = layout
        self.run = Run(loaded.model, adapter, layout, inputs["input_ids"], list(methods), None, self.max_new_tokens)
        if record.enabled:
            self.run.recorder = Recorder(adapter.num_layers, adapter.num_heads, self.run.image_index,
                                         self.run.segment_ids, record)
        self.steps: list[Step] = []
        self.finish_reason: str | None = None
        self._started = False
        self._text = ""

    # ---- decoding ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Step]:
        if self._started:
            raise RuntimeError("a Decoder runs once; make a new one")
        self._started = True
        run = self.run
        for method in run.methods:
            method.setup(run)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for method in run.methods:
                method.before_prefill(run, self.inputs)
        logits = run.forward(**self.inputs)
        run.phase = "decode"
        generated: list[int] = run.generated
        while True:
            with torch.inference_mode():
                for method in run.methods:
                    logits = method.edit_logits(run, logits)
                probs = torch.softmax(logits[0], dim=-1)
                top_probs, top_ids = probs.topk(TOP_K)
            token = int(top_ids[0])  # greedy
            generated.append(token)
            for method in run.methods:
                method.after_step(run, token)
            record = run.recorder.take() if run.recorder is not None else None
            is_eos = self.stop_at_eos and token in self.loaded.adapter.eos_token_ids
            step = Step(run.step, token, "" if is_eos else self._piece(generated), top_ids.int().cpu().numpy(),
                        top_probs.float().cpu().numpy(), record, (time.perf_counter() - t0) * 1e3, is_eos)
            self.steps.append(step)
            yield step
            if is_eos:
                self.finish_reason = "eos"
                return
            if len(generated) >= self.max_new_tokens:
                self.finish_reason = "length"
                return
            t0 = time.perf_counter()
            run.step += 1
            input_ids = torch.tensor([[token]], device=self.loaded.device)
            with torch.inference_mode():
                for method in run.methods:
                    method.before_forward(run, input_ids)
            logits = run.forward(input_ids=input_ids)

    def _piece(self, generated: list[int]) -> str:
        """The text this token adds; held back while a multi-byte character is incomplete."""
        text = self.loaded.processor.tokenizer.decode(generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self._text):] if text.startswith(self._text) else text[len(_common_prefix(text, self._text)):]
        self._text = text
        return piece

    def run_to_end(self) -> Trace:
        for _ in self:
            pass
        return self.trace()

    # ---- results -------------------------------------------------------------------------------
    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    def trace(self) -> Trace:
        run, loaded, layout = self.run, self.loaded, self.layout
        tokenizer = loaded.processor.tokenizer
        extras: dict[str, np.ndarray] = {}
        for method in run.methods:
            for key, value in method.trace_arrays().items():
                extras[f"{method.name}/{key}"] = value
        prompt_ids = run.prompt_ids[0].tolist()
        meta = {
            "model": loaded.name,
            "source": loaded.source,
            "family": loaded.adapter.family,
            "prompt": self.prompt,
            "prompt_tokens": tokenizer.convert_ids_to_tokens(prompt_ids),
            "prompt_len": run.prompt_len,
            "image_positions": list(layout.positions),
            "grid": [layout.rows, layout.cols],
            "patch_boxes": layout.boxes.reshape(-1, 4).tolist(),
            "image_size": list(layout.image_size),
            "num_layers": run.num_layers,
            "num_heads": run.num_heads,
            "num_kv_heads": run.num_kv_heads,
            "head_layers": list(run.recorder.head_layers) if run.recorder else [],
            "segments": list(SEGMENTS),
            "segment_ids_prompt": run.segment_ids[: run.prompt_len].tolist(),
            "methods": [m.describe() for m in run.methods],
            "max_new_tokens": self.max_new_tokens,
            "finish_reason": self.finish_reason or "stopped",
            "device": str(loaded.device),
            "step_semantics": "step i records the attention of the query that predicts generated token i",
        }
        return Trace.from_steps(meta, self.steps, extras)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
