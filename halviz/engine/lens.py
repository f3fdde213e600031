"""Logit lens at the predicting query, recorded inside the decode's own forwards (no extra pass).

For every recording column's main row, the residual stream after decoder layer l (the layer's output)
at the query that predicts token i is passed through the model's final norm and language head; the
last layer's lens *is* the model's own logits (taken from the forward, before any method edits them).
A forward hook on each decoder layer (found once through ``get_decoder()``, like the ``residual``
pre-hook of engine/run.py) keeps the chosen layers' rows while a forward is active; once the forward
is done the decoder projects all columns' rows in one matmul, and per column, when its token is known,
keeps the top 5 and the emitted token's probability and rank (0 = top).

Cost: each lens layer is ``vocab × hidden`` multiply-adds per column-step. At LLaVA-1.5-7B that is
2 % of a decode step per layer; at LLaVA-interleave-0.5B (152 k vocabulary, hidden 896) 27 %. So by
default a model records every layer only when the whole lens is tiny (toy-sized models); otherwise
the layers that fit :data:`LENS_BUDGET` of a decode step's multiply-adds, evenly spaced, plus the last
(free). ``RecordOptions(lens_layers=...)`` chooses: ``None`` that default, ``"all"``, a tuple, ``()`` none.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from threading import Lock
from typing import TYPE_CHECKING

import numpy as np
import torch

from halviz.engine.run import active_forward

if TYPE_CHECKING:
    from halviz.engine.rows import Column
    from halviz.engine.run import Forward

LENS_TOP_K = 5
LENS_BUDGET = 0.05  # the share of a decode step's multiply-adds the default lens layers may add
LENS_FREE_MACS = 2**22  # a whole lens below this many multiply-adds per step is always recorded (toy sizes)


@dataclass(frozen=True)
class LensRecord:
    """One step's lens over the recorded layers (``len(lens_layers)`` rows)."""

    top_ids: np.ndarray  # (Lk, 5) int32
    top_probs: np.ndarray  # (Lk, 5) float32
    token_prob: np.ndarray  # (Lk,) float32, probability of the token the column emitted
    token_rank: np.ndarray  # (Lk,) int32, how many tokens the layer ranks strictly above it


def resolve_lens_layers(option, num_layers: int, head_macs: int, step_macs: int) -> tuple[int, ...]:
    """The layers a trace records: ``option`` None → the cost rule in the module docstring."""
    last = num_layers - 1
    if option == "all":
        return tuple(range(num_layers))
    if option is not None:
        layers = tuple(sorted({int(l) for l in option}))
        bad = [l for l in layers if not 0 <= l < num_layers]
        if bad:
            raise ValueError(f"lens_layers {bad} outside 0..{last}")
        return layers
    if head_macs * last <= LENS_FREE_MACS:
        return tuple(range(num_layers))
    extra = min(last, int(LENS_BUDGET * step_macs // max(head_macs, 1)))
    spaced = {round((j + 1) * num_layers / (extra + 1)) - 1 for j in range(extra)}
    return tuple(sorted({l for l in spaced if 0 <= l < last} | {last}))


def _macs(model) -> tuple[int, int]:
    """(language head, one decode step of the language model) multiply-adds, from the weights' sizes."""
    head = model.get_output_embeddings().weight.numel()
    layers = sum(p.numel() for p in model.get_decoder().layers.parameters())
    return head, head + layers


class Lens:
    """The lens of one decode: the chosen layers, the columns it records, and this round's rows."""

    def __init__(self, model, layers: tuple[int, ...], columns: list["Column"]):
        decoder = model.get_decoder()
        self.norm, self.head = decoder.norm, model.get_output_embeddings()
        self.layers = layers
        self.last = len(decoder.layers) - 1
        self.hidden_layers = tuple(l for l in layers if l != self.last)  # the last one is the logits
        self._slot = {l: i for i, l in enumerate(self.hidden_layers)}
        self.columns = {c.index for c in columns}
        self._rows: list[torch.Tensor | None] = [None] * len(self.hidden_layers)
        self._order: list[int] = []  # column index of each captured row, in plan order
        self._logprobs: torch.Tensor | None = None  # (columns, Lk, vocab) of this round

    @classmethod
    def open(cls, model, columns: list["Column"]) -> "Lens | None":
        """The lens for the recording columns (None when none records one, or the model has no final norm)."""
        recording = [c for c in columns if c.recorder is not None]
        if not recording or getattr(model.get_decoder(), "norm", None) is None:
            return None
        option = recording[0].recorder.lens_option
        if option == ():
            return None
        layers = resolve_lens_layers(option, recording[0].num_layers, *_macs(model))
        if not layers:
            return None
        install_lens_hook(model)
        lens = cls(model, layers, recording)
        for column in recording:
            column.lens = lens  # what the layers' hook finds through the active plan's columns
        return lens

    def _targets(self, plan: "Forward") -> list:
        return [c for c in plan.columns if c.column.index in self.columns and c.column.running]

    def capture(self, plan: "Forward", layer: int, hidden: torch.Tensor) -> None:
        """Keep ``layer``'s output at each recording column's predicting query (its main row's last token)."""
        slot = self._slot.get(layer)
        targets = self._targets(plan)
        if slot is None or not targets:
            return
        mains = torch.tensor([c.main for c in targets], device=hidden.device)
        packing = plan.packing
        if packing is not None:  # a ragged prefill: the rows' last tokens wherever the packing put them
            slots = packing.gather.view(-1, packing.n)[mains, packing.lengths[mains] - 1]
            self._rows[slot] = hidden.reshape(-1, hidden.shape[-1])[slots]
        else:  # main rows are never padded (engine/batch.py), so their last position is the query
            self._rows[slot] = hidden[mains, -1]
        self._order = [c.column.index for c in targets]

    @torch.inference_mode()
    def project(self, plan: "Forward", logits: torch.Tensor) -> None:
        """This round's log-probabilities per recording column and lens layer, from the captured rows
        (final norm, then the head, in one matmul) and the forward's own logits (the last layer)."""
        targets = self._targets(plan)
        self._order = [c.column.index for c in targets]
        if not targets:
            self._logprobs = None
            return
        parts = []
        if self.hidden_layers:
            if any(r is None for r in self._rows):
                raise RuntimeError("the logit lens saw no output of some decoder layers; is the hook installed?")
            hidden = torch.stack(self._rows, dim=1)  # (C, Lh, d)
            parts.append(self.head(self.norm(hidden)))
        if self.last in self.layers:
            mains = torch.tensor([c.main for c in targets], device=logits.device)
            parts.append(logits[mains][:, None])
        acc = torch.promote_types(parts[0].dtype, torch.float32)
        self._logprobs = torch.log_softmax(torch.cat([p.to(acc) for p in parts], dim=1), dim=-1)
        self._rows = [None] * len(self.hidden_layers)

    @torch.inference_mode()
    def take(self, column: "Column", token: int) -> LensRecord | None:
        """Column ``column``'s record of this round, now that its emitted ``token`` is known."""
        if self._logprobs is None or column.index not in self._order:
            return None
        logprobs = self._logprobs[self._order.index(column.index)]  # (Lk, vocab)
        top, ids = logprobs.topk(min(LENS_TOP_K, logprobs.shape[-1]), dim=-1)
        chosen = logprobs[:, token]
        rank = (logprobs > chosen[:, None]).sum(-1)
        return LensRecord(ids.int().cpu().numpy(), top.exp().float().cpu().numpy(),
                          chosen.exp().float().cpu().numpy(), rank.int().cpu().numpy())


_LENS_LOCK = Lock()


def install_lens_hook(model) -> None:
    """Hand every decoder layer's output to the active plan's lens (once per model)."""
    decoder = model.get_decoder()
    with _LENS_LOCK:
        if getattr(decoder, "_halviz_lens_hook", False):
            return
        for index, layer in enumerate(decoder.layers):
            layer.register_forward_hook(partial(_see_output, index))
        decoder._halviz_lens_hook = True


def _see_output(layer: int, module, args, output) -> None:
    plan = active_forward()
    if plan is None or not plan.recording:
        return None
    lens = next((c.column.lens for c in plan.columns if c.column.lens is not None), None)
    if lens is not None:
        lens.capture(plan, layer, output[0] if isinstance(output, tuple) else output)
    return None
