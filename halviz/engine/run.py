"""One batched forward's plan, reached by the attention function through a ContextVar.

A :class:`BatchRun` owns the cache of all rows of a comparison. Each forward gets a
:class:`Forward`: for every running column, which batch rows its edit hooks and its observing
hooks act on, with the :class:`~halviz.engine.rows.Pass` they are told. The decode loop
activates a forward only around its own model call (never across a ``yield``), so batches
interleaved in one thread or spread over many threads never see each other's state.

The ``residual`` hook point (the hidden states entering each decoder layer) is a forward pre-hook
on the language model's decoder layers, put on a model the first time a plan needs it; it reads
the active plan like the attention function, so it does nothing outside halviz's own forwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from threading import Lock
from typing import Callable, Iterator

import torch

from halviz.engine.kvcache import GrowingCache
from halviz.engine.packing import Packing
from halviz.engine.rows import Column, Pass
from halviz.methods.base import HOOK_POINTS, Method

_ACTIVE: ContextVar["Forward | None"] = ContextVar("halviz_active_forward", default=None)

Rows = slice | torch.Tensor


def active_forward() -> "Forward | None":
    return _ACTIVE.get()


@dataclass
class ColumnRows:
    """One column's rows in one forward: what its edit hooks and its observing hooks act on."""

    column: Column
    observe: Rows
    observe_pass: Pass
    edit: Rows | None  # None: every row of the column is shared with others here (observe only)
    edit_pass: Pass | None
    main: int  # batch index of the column's main row


class Forward:
    """The plan of one model call: phase, step, and every running column's rows and hooks."""

    def __init__(self, phase: str, columns: list[ColumnRows], recording: bool, packing: "Packing | None" = None):
        self.phase = phase
        self.columns = columns
        self.recording = recording
        self.packing = packing  # a ragged prefill's physical rows (None: the rows are the logical ones)
        # The prefill's layer inputs tell which prompt tokens are sinks (recorded once, for the debugger).
        self.records_sinks = recording and phase == "prefill"
        # Each column's dispatch tables (built once, in Column), paired with its rows in this forward.
        self.hooks: dict[str, list[tuple[ColumnRows, Method]]] = {
            point: [(c, m) for c in columns for m in c.column.hooks[point]] for point in HOOK_POINTS
        }

    def call(self, rows: ColumnRows, fn: Callable, *args):
        """Run one hook; a raising hook ends its own column only (the others carry on)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the column reports it; the batch goes on
            rows.column.fail(exc)
            return None

    def running(self, point: str) -> Iterator[tuple[ColumnRows, Method]]:
        for rows, method in self.hooks[point]:
            if rows.column.running:
                yield rows, method


_RESIDUAL_LOCK = Lock()


def install_residual_hook(model) -> None:
    """Hand every decoder layer's input to the active plan's ``residual`` methods (once per model)."""
    decoder = model.get_decoder()  # transformers' own lookup of the language model
    with _RESIDUAL_LOCK:
        if getattr(decoder, "_halviz_residual_hook", False):
            return
        for index, layer in enumerate(decoder.layers):
            layer.register_forward_pre_hook(partial(_see_residual, index), with_kwargs=True)
        decoder._halviz_residual_hook = True


def _see_residual(layer: int, module, args, kwargs) -> None:
    plan = active_forward()
    if plan is None or not (plan.hooks["residual"] or plan.records_sinks):
        return None
    hidden = args[0] if args else kwargs["hidden_states"]
    if plan.packing is not None:
        hidden = plan.packing.unpack_hidden(hidden)
    for rows, method in plan.running("residual"):
        plan.call(rows, method.see_residual, rows.observe_pass, layer, hidden[rows.observe])
    if plan.records_sinks:
        for rows in plan.columns:
            column = rows.column
            if column.recorder is not None and column.running:
                column.recorder.see_prefill_residual(layer, hidden[rows.main, :column.prompt_len])
    return None


class BatchRun:
    """The shared model call of all rows: one cache, and the active :class:`Forward` around it."""

    def __init__(self, model, spare: int = 64):
        self.model = model
        self.cache = GrowingCache(spare)  # decode steps write in place (no whole-cache copy a step)

    @contextmanager
    def active(self, plan: Forward) -> Iterator[Forward]:
        token = _ACTIVE.set(plan)
        try:
            yield plan
        finally:
            _ACTIVE.reset(token)

    def forward(self, plan: Forward, **inputs) -> torch.Tensor:
        """One forward pass of every row; returns the last position's logits (rows, vocab), float32 or wider."""
        if plan.hooks["residual"] or plan.records_sinks:
            install_residual_hook(self.model)
        packing = plan.packing
        keep, pick = (1, None) if packing is None else packing.logits_positions()
        with torch.inference_mode(), self.active(plan):
            out = self.model(**inputs, past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        # each logical row's last token (a ragged prefill: wherever its segment ends)
        logits = out.logits[:, -1] if pick is None else out.logits.flatten(0, 1)[pick]
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def select_rows(self, index: torch.Tensor, packing: "Packing | None" = None) -> None:
        """Keep (and possibly repeat) the cache rows ``index``, in that order; after a ragged prefill
        ``index`` names logical rows, gathered out of the physical ones."""
        with torch.inference_mode():
            if packing is None:
                self.cache.batch_select_indices(index)
                return
            slots = packing.cache_index(index)
            for layer in self.cache.layers:
                layer.keys, layer.values = _gather_rows(layer.keys, slots, packing), _gather_rows(layer.values, slots, packing)

    def copy_last(self, source: int, target: int) -> None:
        """Make row ``target``'s newest cache entry equal row ``source``'s, in every layer."""
        with torch.inference_mode():
            for layer in self.cache.layers:
                layer.keys[target, :, -1] = layer.keys[source, :, -1]
                layer.values[target, :, -1] = layer.values[source, :, -1]


def _gather_rows(x: torch.Tensor, slots: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Physical cache (P, KVH, N, D) → the logical rows whose flat slots are ``slots`` (R, KVH, n, D)."""
    flat = x.transpose(1, 2).reshape(packing.rows * packing.width, x.shape[1], x.shape[-1])
    return flat[slots].view(-1, packing.n, x.shape[1], x.shape[-1]).transpose(1, 2).contiguous()
