"""The protocol every decoding method implements.

A method is instantiated once per run (so the instance *is* the per-run state) and acts at up to
four hook points, which the engine calls in a fixed order:

``scores``  attention logits before softmax, mask included          (:meth:`Method.edit_scores`)
``heads``   per-head attention outputs before ``o_proj``           (:meth:`Method.edit_heads`)
``kv``      the newest cached key/value row, after it was used      (:meth:`Method.after_attention`)
``logits``  the final next-token logits                             (:meth:`Method.edit_logits`)

Extra forward passes (a contrast branch, a text-only stream) run through ``run.forward`` with a
``variant`` name; during them the engine records nothing and calls no ``after_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from halviz.engine.run import Run

HOOK_POINTS = ("scores", "heads", "kv", "logits")


@dataclass(frozen=True)
class Knob:
    """One hyperparameter, with what a UI or CLI needs to build a control for it."""

    name: str
    label: str
    default: float | int | bool | str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def coerce(self, value: Any) -> float | int | bool | str:
        """Convert ``value`` to this knob's type and check its range; raise ValueError if it does not fit."""
        if isinstance(self.default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"{self.name} must be true or false, not {value!r}")
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if self.choices is not None:
            if str(value) not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}")
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be a number, not {value!r}") from None
        if number != number:  # NaN
            raise ValueError(f"{self.name} must be a number, not NaN")
        if isinstance(self.default, int):
            if number != int(number):
                raise ValueError(f"{self.name} must be a whole number, not {value!r}")
            number = int(number)
        if self.minimum is not None and number < self.minimum or self.maximum is not None and number > self.maximum:
            raise ValueError(f"{self.name} must lie in [{self.minimum}, {self.maximum}], not {value!r}")
        return number


class Method:
    """Base class: the vanilla behaviour at every hook (greedy decoding, nothing changed)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    hook_points: ClassVar[frozenset[str]] = frozenset()
    # Stacking order when several methods run together: lower acts first at each hook point.
    order: ClassVar[int] = 0
    # Methods this one cannot run with, each with the reason shown to the user.
    incompatible_with: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any):
        known = {k.name: k for k in self.knobs}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"{self.title or self.name} has no knob {', '.join(sorted(unknown))}")
        self.params: dict[str, Any] = {k.name: k.coerce(values.get(k.name, k.default)) for k in self.knobs}

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self, run: Run) -> None:
        """Called once the prompt is laid out, before any forward pass."""

    def before_prefill(self, run: Run, inputs: dict[str, torch.Tensor]) -> None:
        """May run extra passes over the prompt (e.g. VHR's head selection)."""

    def before_forward(self, run: Run, input_ids: torch.Tensor) -> None:
        """Called before each decode step's main forward (not before the prefill)."""

    def after_step(self, run: Run, token_id: int) -> None:
        """Called once the step's token is chosen."""

    # ---- hook points -----------------------------------------------------------------------
    def needs_weights(self, run: Run, layer: int) -> bool:
        """Whether ``after_attention`` needs the full attention weights for this layer."""
        return False

    def uses_scores(self, run: Run, layer: int) -> bool:
        """Whether :meth:`edit_scores` changes anything for this layer in this pass."""
        return False

    def edit_scores(self, run: Run, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """scores: (batch, heads, q_len, kv_len) float32 logits with the mask already added."""
        return scores

    def edit_heads(self, run: Run, layer: int, out: torch.Tensor) -> torch.Tensor:
        """out: (batch, heads, q_len, head_dim) per-head attention outputs before o_proj."""
        return out

    def after_attention(self, run: Run, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        """Main pass only. key/value are the layer's cache (kv heads, not repeated); weights are
        (batch, heads, q_len, kv_len) when :meth:`needs_weights` said so, else None."""

    def edit_logits(self, run: Run, logits: torch.Tensor) -> torch.Tensor:
        """logits: (batch, vocab) float32 for the next token."""
        return logits

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        """Arrays this method adds to the trace (stored under ``NAME/KEY``)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "params": dict(self.params)}
