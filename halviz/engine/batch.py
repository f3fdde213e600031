"""Greedy decoding of several method stacks ("columns") of one prompt as rows of one batch.

    decoder = BatchDecoder(loaded, image, prompt, [[], [PruneHal()], [VHR()]], max_new_tokens=64)
    for round in decoder:          # one token for every running column per round
        ...                        # round[i] is column i's Step, or None once it has ended
    traces = [decoder.trace(i) for i in range(3)]

The prefill is one forward: columns whose methods leave the prompt's forward alone share one main
row, the others (VHR reinforces the prompt) get their own, and every extra stream (VHR's text-only
stream, VASparse's masked branch) is a row of the same call. The cache is then expanded so that
every column owns contiguous decode rows. Rows are exact: every row gets its own ``position_ids``
from the model family; a text-only row (much shorter) rides after a longer row in the model call,
kept apart by a block-diagonal mask (engine/packing.py), and hooks see every row right-padded with
the padding masked. A column ends
on EOS, at ``max_new_tokens`` or when one of its methods raises; its rows leave the batch and the
others carry on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from halviz.engine.lens import Lens
from halviz.engine.packing import Packing, pack_rows
from halviz.engine.recorder import Recorder, RecordOptions
from halviz.engine.rows import MAIN, SEGMENTS, Column, Pass
from halviz.engine.run import BatchRun, ColumnRows, Forward
from halviz.methods.base import Method
from halviz.models.families import DEFAULT_PROMPT
from halviz.models.loading import LoadedModel, public_name
from halviz.trace import Step, Trace

TOP_K = 5
MAX_NEW_TOKENS_LIMIT = 1024
MAX_COLUMNS = 16


@dataclass
class _Row:
    """One row of the prefill: its tokens, and the (column, stream) pairs it serves."""

    ids: torch.Tensor  # (length,)
    text_only: bool
    serves: list[tuple[Column, str]]
    pixels: Callable[[torch.Tensor], torch.Tensor] | None = None  # this row's image (None: the main one)
    request: int = 0  # which (image, prompt) of the batch the row reads (MultiBatchDecoder: several)


@dataclass(frozen=True)
class PrefillWork:
    """What the first round computes before its token, known before it runs (for a caller to report)."""

    image_tokens: int  # the picture's tokens in the prompt
    views: int  # the picture's views through the vision tower (SmolVLM's tiles + global view; mostly 1)
    images: int  # distinct images the tower encodes (the picture; VCD's noised copy is another)
    prompt_tokens: int  # the longest prefill row, the image's tokens included
    rows: int  # rows of the prefill forward


class BatchDecoder:
    """One greedy decode of ``image`` + ``prompt`` per stack of methods (an empty stack = vanilla)."""

    ragged_prefill = True  # text-only rows ride after longer rows (engine/packing.py); False: padded
    # Set by open()/encode_images() (class defaults: MultiBatchDecoder has an __init__ of its own).
    _opened = False
    _images: dict | None = None  # the vision tower's output per (request, pixels), once encoded
    _encode_s = 0.0  # what encode_images() took before the first round
    _lens: Lens | None = None  # the logit lens of the recording columns (engine/lens.py), made in __iter__

    def __init__(self, loaded: LoadedModel, image: Image.Image, prompt: str = DEFAULT_PROMPT,
                 stacks: Sequence[Sequence[Method]] = ((),), max_new_tokens: int = 64,
                 record: RecordOptions = RecordOptions(), stop_at_eos: bool = True, system: str | None = None):
        if not isinstance(image, Image.Image):
            raise TypeError("image must be a PIL image")
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty")
        if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must lie in 1..{MAX_NEW_TOKENS_LIMIT}")
        if not 1 <= len(stacks) <= MAX_COLUMNS:
            raise ValueError(f"a comparison has 1..{MAX_COLUMNS} columns")
        self.loaded = loaded
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.stop_at_eos = stop_at_eos  # benchmarks turn it off to time a fixed number of tokens
        adapter = self.adapter = loaded.adapter
        self.inputs, self.layout = adapter.prepare(image.convert("RGB"), prompt, loaded.device, loaded.dtype,
                                                   system=system)
        ids = self.inputs["input_ids"]
        self.columns = [Column(i, loaded.model, adapter, self.layout, ids, list(stack), self.max_new_tokens)
                        for i, stack in enumerate(stacks)]
        for column in self.columns:
            if record.enabled:
                column.recorder = Recorder(adapter.num_layers, adapter.num_heads, column.image_index,
                                           column.segment_ids, record)
        self.steps: list[list[Step]] = [[] for _ in self.columns]
        self.batch = BatchRun(loaded.model, self.max_new_tokens + 1)
        self._texts = [""] * len(self.columns)
        self._started = False
        self._rows: list[tuple[Column, str]] = []  # decode rows, in batch order
        self._positions: torch.Tensor | None = None  # (rows,) position of each decode row's next token (all axes)
        self._mask: torch.Tensor | None = None  # (rows, kv) 2-D attention mask while any row has padding
        self._decode_index: torch.Tensor | None = None  # prefill row of each decode row
        self._packing: Packing | None = None  # the ragged prefill's physical rows, if it packed any

    # ---- decoding ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[Step | None]]:
        if self._started:
            raise RuntimeError("a BatchDecoder runs once; make a new one")
        self._started = True
        if not self.open():
            return
        self._lens = Lens.open(self.loaded.model, [c for c in self.columns if c.running])
        t0 = time.perf_counter() - self._encode_s  # step 0 counts the vision tower wherever it ran
        logits, plan = self._prefill()
        while True:
            yield self._finish_round(logits, plan, t0)
            self._drop_ended()
            if not self._rows:
                return
            t0 = time.perf_counter()
            for column in self.columns:
                if column.running:
                    column.step += 1
            logits, plan = self._decode_forward()

    # ---- before the first round, step by step: a caller that reports progress runs these first ----
    def open(self) -> bool:
        """Set every column up (once; a method refusing its setup ends its column only); any running?"""
        if not self._opened:
            self._opened = True
            for column in self.columns:
                try:
                    column.open()
                except Exception as exc:  # noqa: BLE001 - a method refusing its setup ends its column only
                    column.fail(exc)
        return any(c.running for c in self.columns)

    def prefill_work(self) -> PrefillWork:
        """What the vision tower and the prefill will compute; opens the columns, runs no model."""
        rows = self._prefill_rows() if self.open() else []
        pictures = [r for r in rows if not r.text_only]
        image_tokens, views = 0, 0
        if pictures:
            inputs, layout = self._request_inputs(pictures[0].request)
            image_tokens = len(layout.positions)
            pixels = inputs.get("pixel_values")
            # (batch, views, C, H, W) where a family tiles the picture; otherwise one view
            views = int(pixels.shape[1]) if pixels is not None and pixels.dim() == 5 else 1
        return PrefillWork(image_tokens, views, len({(r.request, id(r.pixels)) for r in pictures}),
                           max((len(r.ids) for r in rows), default=0), len(rows))

    def encode_images(self) -> None:
        """Run the vision tower now (opens the columns); the prefill then uses its output."""
        if self.open() and self._images is None:
            started = time.perf_counter()
            self._encoded_images(self._prefill_rows())
            self._encode_s = time.perf_counter() - started

    def run_to_end(self) -> list[Trace]:
        for _ in self:
            pass
        return [self.trace(i) for i in range(len(self.columns))]

    def _request(self, column: Column) -> int:
        """The (image, prompt) a column reads: always 0 here (one image, one prompt)."""
        return 0

    def _request_inputs(self, request: int) -> tuple[dict, object]:
        """(prepared inputs, image layout) of a request."""
        return self.inputs, self.layout

    def _request_prompt(self, request: int) -> str:
        return self.prompt

    def _prefill_rows(self) -> list[_Row]:
        """The prefill's rows: per request, one main row shared by the columns that leave the prompt's
        forward alone, an own main row for each column that does not, and one row per prefill stream."""
        text_ids: dict[int, torch.Tensor] = {}
        rows: list[_Row] = []
        shared: dict[int, _Row] = {}
        for column in (c for c in self.columns if c.running):
            request = self._request(column)
            inputs, layout = self._request_inputs(request)
            ids = inputs["input_ids"][0]
            if column.shares_prefill:
                if request not in shared:
                    shared[request] = _Row(ids, False, [], request=request)
                    rows.append(shared[request])
                shared[request].serves.append((column, MAIN))
            else:
                rows.append(_Row(ids, False, [(column, MAIN)], request=request))
            for name, stream in column.streams.items():
                if stream.prefill:
                    if stream.text_only and request not in text_ids:
                        text_ids[request] = self.adapter.text_only_ids(ids, layout)
                    rows.append(_Row(text_ids[request] if stream.text_only else ids, stream.text_only, [(column, name)],
                                     stream.pixels, request))
        return rows

    def _prefill(self) -> tuple[torch.Tensor, Forward]:
        rows = self._prefill_rows()
        n = max(int(r.ids.shape[0]) for r in rows)
        device = rows[0].ids.device
        batch_ids = torch.stack([torch.cat([r.ids, r.ids[-1:].expand(n - len(r.ids))]) for r in rows])
        row_positions = [self.adapter.prompt_positions(r.ids, None if r.text_only else self._request_inputs(r.request)[0])
                         for r in rows]
        positions = _stack_positions(row_positions, n)
        next_positions = torch.stack([p.max() + 1 for p in row_positions])  # where each row's decode goes on
        lengths = torch.tensor([len(r.ids) for r in rows], device=device)
        padded = bool((lengths < n).any())
        mask = (torch.arange(n, device=device)[None] < lengths[:, None]).long() if padded else None
        # Rows served per column, in the column's stream order: main first.
        where: dict[tuple[int, str], int] = {(c.index, s): i for i, r in enumerate(rows) for c, s in r.serves}
        columns = []
        for column in (c for c in self.columns if c.running):
            names = [MAIN] + [s for s, spec in column.streams.items() if spec.prefill]
            index = [where[(column.index, s)] for s in names]
            text_only = frozenset(i for i, s in enumerate(names) if s != MAIN and column.streams[s].text_only)
            own = [i for i, s in enumerate(names) if not (s == MAIN and column.shares_prefill)]
            observe = Pass(column, "prefill", 0, tuple(names), text_only)
            edit_rows, edit_pass = None, None
            if own:
                edit_rows = torch.tensor([index[i] for i in own], device=device)
                edit_pass = Pass(column, "prefill", 0, tuple(names[i] for i in own),
                                 frozenset(j for j, i in enumerate(own) if i in text_only))
            columns.append(ColumnRows(column, torch.tensor(index, device=device), observe, edit_rows, edit_pass,
                                      index[0]))
        bins = pack_rows([len(r.ids) for r in rows], [r.text_only for r in rows]) if self.ragged_prefill else None
        packing = None if bins is None else Packing.build([len(r.ids) for r in rows], bins, device)
        plan = Forward("prefill", columns, any(c.recorder is not None for c in self.columns), packing)
        inputs = {"input_ids": batch_ids, "position_ids": positions,
                  **self.adapter.image_inputs(self._encoded_images(rows), self.inputs)}
        if packing is not None:  # the model runs the physical rows (text-only rows after other rows)
            inputs["input_ids"] = packing.to_physical(batch_ids, int(batch_ids[0, 0]))
            inputs["position_ids"] = packing.to_physical(positions, 0)
            inputs["attention_mask"] = packing.attention_mask()
        elif mask is not None:
            inputs["attention_mask"] = mask
        self._packing = packing
        logits = self.batch.forward(plan, **inputs)
        self._images = {}  # the prefill was their only reader
        # Decode rows: every running column's main row, then its decode streams, contiguous.
        order, sources, starts = [], [], []
        for column in (c for c in self.columns if c.running):
            for name in [MAIN] + [s for s, spec in column.streams.items() if spec.decode]:
                spec = column.streams.get(name)
                source = where[(column.index, MAIN if spec is None or spec.mirrors_main else name)]
                order.append((column, name))
                sources.append(source)
                starts.append(int(next_positions[source]))
        self._rows = order
        index = torch.tensor(sources, device=device)
        self._positions = torch.tensor(starts, device=device)
        self._mask = mask[index] if mask is not None and bool((lengths[index] < n).any()) else None
        self._decode_index = index  # applied to the cache once the prefill's hooks are done
        return logits, plan

    def _encoded_images(self, rows: list[_Row]) -> list:
        """The vision tower's output for every row holding the image: once per distinct image (kept, so
        encode_images() before the prefill runs the tower only once)."""
        if self._images is None:
            self._images = {}
        done: dict[tuple[int, int], object] = self._images
        encoded = []
        for row in rows:
            if row.text_only:
                continue
            key = (row.request, id(row.pixels))
            if key not in done:
                inputs = self._request_inputs(row.request)[0]
                pixels = inputs["pixel_values"]
                image = inputs if row.pixels is None else {**inputs, "pixel_values": row.pixels(pixels)}
                done[key] = self.adapter.encode_image(self.loaded.model, image)
            encoded.append(done[key])
        return encoded

    def _decode_plan(self) -> Forward:
        columns, start = [], 0
        for column in dict.fromkeys(c for c, _ in self._rows):
            names = tuple(s for c, s in self._rows if c is column)
            rows = slice(start, start + len(names))
            text_only = frozenset(i for i, s in enumerate(names) if s != MAIN and column.streams[s].text_only)
            p = Pass(column, "decode", column.step, names, text_only)
            columns.append(ColumnRows(column, rows, p, rows, p, start))
            start += len(names)
        return Forward("decode", columns, any(c.column.recorder is not None for c in columns))

    def _decode_forward(self) -> tuple[torch.Tensor, Forward]:
        device = self._positions.device
        plan = self._decode_plan()
        tokens = torch.tensor([[c.generated[-1]] for c, _ in self._rows], device=device)
        positions = self._positions[:, None]  # (rows, 1); M-RoPE: the same on every axis
        if self.adapter.position_axes > 1:
            positions = positions.expand(self.adapter.position_axes, -1, -1)
        inputs = {"input_ids": tokens, "position_ids": positions}
        if self._mask is not None:
            self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
            inputs["attention_mask"] = self._mask
        logits = self.batch.forward(plan, **inputs)
        self._positions = self._positions + 1
        for i, (column, name) in enumerate(self._rows):
            if name != MAIN and column.streams[name].mirrors_main:
                self.batch.copy_last(self._main_row(column), i)
        return logits, plan

    def _main_row(self, column: Column) -> int:
        return next(i for i, (c, s) in enumerate(self._rows) if c is column and s == MAIN)

    def _finish_round(self, logits: torch.Tensor, plan: Forward, t0: float) -> list[Step | None]:
        """Each running column's logit hooks, greedy token, step hooks and Step."""
        if plan.phase == "prefill":
            self.batch.select_rows(self._decode_index, self._packing)
        if self._lens is not None:
            self._lens.project(plan, logits)  # before any method edits the logits
        steps: list[Step | None] = [None] * len(self.columns)
        elapsed = (time.perf_counter() - t0) * 1e3
        for rows in plan.columns:
            column = rows.column
            if not column.running:
                continue
            try:
                with torch.inference_mode():
                    own = logits[rows.observe]
                    for method in column.hooks["logits"]:
                        own = method.edit_logits(rows.observe_pass, own)
                    probs = torch.softmax(own[rows.observe_pass.main], dim=-1)
                    top_probs, top_ids = probs.topk(TOP_K)
                token = int(top_ids[0])  # greedy
                column.generated.append(token)
                for method in column.methods:
                    method.after_step(column, token)
                record = column.recorder.take() if column.recorder is not None else None
                lens = column.lens.take(column, token) if column.lens is not None else None
            except Exception as exc:  # noqa: BLE001 - the column reports it; the batch goes on
                column.fail(exc)
                continue
            is_eos = self.stop_at_eos and token in self.adapter.eos_token_ids
            text = "" if is_eos else self._piece(column.index, column.generated)
            step = Step(column.step, token, text, top_ids.int().cpu().numpy(), top_probs.float().cpu().numpy(),
                        record, elapsed, is_eos, lens)
            self.steps[column.index].append(step)
            steps[column.index] = step
            if is_eos:
                column.finish = "eos"
            elif len(column.generated) >= self.max_new_tokens:
                column.finish = "length"
        return steps

    def _drop_ended(self) -> None:
        keep = [i for i, (c, _) in enumerate(self._rows) if c.running]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self._positions.device)
        self.batch.select_rows(index)
        self._positions = self._positions[index]
        if self._mask is not None:
            self._mask = self._mask[index]
            if bool(self._mask.all()):
                self._mask = None

    def _piece(self, index: int, generated: list[int]) -> str:
        """The text this token adds; held back while a multi-byte character is incomplete."""
        text = self.loaded.processor.tokenizer.decode(generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        before = self._texts[index]
        piece = text[len(before):] if text.startswith(before) else text[len(_common_prefix(text, before)):]
        self._texts[index] = text
        return piece

    # ---- results -------------------------------------------------------------------------------
    def trace(self, index: int) -> Trace:
        """Column ``index``'s trace of whatever it has generated so far."""
        column, loaded = self.columns[index], self.loaded
        request = self._request(column)
        layout = self._request_inputs(request)[1]
        tokenizer = loaded.processor.tokenizer
        extras: dict[str, np.ndarray] = {}
        for method in column.methods:
            for key, value in method.trace_arrays().items():
                extras[f"{method.name}/{key}"] = value
        prompt_ids = column.prompt_ids[0].tolist()
        meta = {
            "model": public_name(loaded.name),
            "source": public_name(loaded.source),
            "family": self.adapter.family,
            "prompt": self._request_prompt(request),
            "prompt_tokens": tokenizer.convert_ids_to_tokens(prompt_ids),
            "prompt_len": column.prompt_len,
            "image_positions": list(layout.positions),
            "grid": [layout.rows, layout.cols],
            "patch_boxes": layout.boxes.reshape(-1, 4).tolist(),
            "image_size": list(layout.image_size),
            **_grid_meta(layout),
            "num_layers": column.num_layers,
            "num_heads": column.num_heads,
            "num_kv_heads": column.num_kv_heads,
            "head_layers": list(column.recorder.head_layers) if column.recorder else [],
            "lens_layers": list(column.lens.layers) if column.lens is not None else [],
            "segments": list(SEGMENTS),
            "segment_ids_prompt": column.segment_ids[: column.prompt_len].tolist(),
            "methods": [m.describe() for m in column.methods],
            "max_new_tokens": self.max_new_tokens,
            "finish_reason": column.finish if column.finish in ("eos", "length") else "stopped",
            "device": str(loaded.device),
            "step_semantics": "step i records the attention of the query that predicts generated token i",
        }
        sinks = column.recorder.sink_arrays() if column.recorder is not None else {}
        if sinks:
            meta["sink_rule"] = {"rule": "VAR", "tau": round(float(column.recorder.sink_tau), 6)}
        return Trace.from_steps(meta, self.steps[index], extras, recorded=sinks)


def _grid_meta(layout) -> dict:
    """Where the primary grid is not every image token (tiles + a global view, row newlines): its indices
    into image_positions, and every grid with its own indices and boxes. Single-grid traces need neither."""
    primary = layout.primary
    if len(layout.grids) == 1 and list(primary.index) == list(range(len(layout.positions))):
        return {}
    return {
        "grid_index": list(primary.index),
        "grids": [{"name": g.name, "grid": [g.rows, g.cols], "index": list(g.index),
                   "patch_boxes": g.boxes.reshape(-1, 4).tolist()} for g in layout.grids],
    }


def _stack_positions(row_positions: list[torch.Tensor], n: int) -> torch.Tensor:
    """Rows' prompt positions, each (axes, length), right-padded to ``n`` (the padding is masked; it
    continues from the row's largest position) and stacked as (rows, n), or (axes, rows, n) for M-RoPE."""
    padded = []
    for p in row_positions:
        extra = n - p.shape[-1]
        if extra:
            tail = p.max() + 1 + torch.arange(extra, device=p.device)
            p = torch.cat([p, tail.expand(p.shape[0], extra)], dim=-1)
        padded.append(p)
    stacked = torch.stack(padded, dim=1)  # (axes, rows, n)
    return stacked[0] if stacked.shape[0] == 1 else stacked


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
