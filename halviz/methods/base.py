"""The protocol every decoding method implements.

A method is instantiated once per column (so the instance *is* the column's state). A comparison
decodes every column as rows of one batch; a method sees only its own column's rows. It acts at
the hook points it declares in ``hook_points`` (the engine dispatches nothing else to it):

``residual``   the hidden states entering each decoder layer, before its input norm (:meth:`see_residual`;
               observe only)
``scores``     attention logits before softmax, mask included  (:meth:`wants_scores`, :meth:`edit_scores`)
``heads``      per-head attention outputs before ``o_proj``   (:meth:`edit_heads`)
``attention``  the attention weights and the layer's K/V cache after the attention
               (:meth:`needs_weights`, :meth:`after_attention`); may rewrite the newest cache row
``logits``     the final next-token logits of the column's rows (:meth:`edit_logits`)

Every hook gets a :class:`~halviz.engine.rows.Pass`: prefill or decode, the step, the column, and
which stream each row of the tensor is (``"main"`` or one of the method's :class:`Stream` names).
Within a column the methods act in the stack's order (``build_stack`` gives the registry order).

A column's prefill is shared with other columns unless one of its methods sets ``edits_prefill``:
on a shared row the edit hooks (scores, heads) are never called, only the observing ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

HOOK_POINTS = ("residual", "scores", "heads", "attention", "logits")
# The methods behind each hook point: a class that overrides one must declare the point (tested).
HOOK_METHODS = {"residual": ("see_residual",), "scores": ("wants_scores", "edit_scores"), "heads": ("edit_heads",),
                "attention": ("needs_weights", "after_attention"), "logits": ("edit_logits",)}


@dataclass(frozen=True)
class Stream:
    """An extra row a method adds to its column (a text-only stream, a contrast branch).

    ``text_only``: its prompt is the main prompt without the image tokens (laid out by the model
    family), else the main prompt itself. ``prefill`` / ``decode``: the phases it runs in; in decode
    it is fed the column's chosen tokens. ``mirrors_main``: its cache is the main row's (what it
    appends is replaced by the main row's entries after every forward), so it is a branch that
    differs from the main row only in its current query. ``pixels``: a function of the processed
    pixel values giving this row's image instead (e.g. VCD's noised copy); None = the main image.
    """

    name: str
    text_only: bool = False
    prefill: bool = True
    decode: bool = True
    mirrors_main: bool = False
    pixels: Callable[[torch.Tensor], torch.Tensor] | None = None


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
    # A text knob (string default, no choices) needs a parser: text → its canonical form, ValueError if malformed.
    parse: Callable[[str], str] | None = None

    def coerce(self, value: Any) -> float | int | bool | str:
        """Convert ``value`` to this knob's type and check its range; raise ValueError if it does not fit."""
        if isinstance(self.default, str) and self.choices is None:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be text, not {type(value).__name__}")
            if self.parse is None:
                raise ValueError(f"{self.name} is a text knob without a parser")
            return self.parse(value)
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
    # True when the method changes the prompt's forward pass: its column then gets its own prefill.
    edits_prefill: ClassVar[bool] = False
    # Methods this one cannot run with, each with the reason shown to the user.
    incompatible_with: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any):
        known = {k.name: k for k in self.knobs}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"{self.title or self.name} has no knob {', '.join(sorted(unknown))}")
        self.params: dict[str, Any] = {k.name: k.coerce(values.get(k.name, k.default)) for k in self.knobs}

    # ---- lifecycle -------------------------------------------------------------------------
    def streams(self) -> tuple[Stream, ...]:
        """Extra rows this method needs in its column (asked once, before ``setup``)."""
        return ()

    def setup(self, column: Column) -> None:
        """Called once the prompt is laid out, before any forward pass."""

    def after_step(self, column: Column, token_id: int) -> None:
        """Called once the step's token is chosen (``column.step`` is the step just decoded)."""

    # ---- hook points -----------------------------------------------------------------------
    def see_residual(self, p: Pass, layer: int, hidden: torch.Tensor) -> None:
        """hidden: (rows, seq, hidden_size) the residual stream entering decoder layer ``layer``
        (what its input norm, then q/k/v, are computed from); read only."""

    def wants_scores(self, p: Pass, layer: int) -> bool:
        """Whether :meth:`edit_scores` changes anything for this layer in this pass."""
        return False

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """scores: (rows, heads, q_len, kv_len) logits with the mask added (float32 or wider);
        keys: the same rows' cached keys (rows, kv heads, kv_len, head_dim), post-RoPE, read only."""
        return scores

    def edit_heads(self, p: Pass, layer: int, out: torch.Tensor) -> torch.Tensor:
        """out: (rows, heads, q_len, head_dim) per-head attention outputs before o_proj."""
        return out

    def needs_weights(self, p: Pass, layer: int) -> bool:
        """Whether ``after_attention`` needs the full attention weights for this layer."""
        return False

    def after_attention(self, p: Pass, layer: int, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, weights: torch.Tensor | None) -> None:
        """key/value are the rows' cache (kv heads, not repeated; in decode views, so an in-place
        write changes the cache); weights are (rows, heads, q_len, kv_len) when :meth:`needs_weights`
        said so, else None."""

    def edit_logits(self, p: Pass, logits: torch.Tensor) -> torch.Tensor:
        """logits: (rows, vocab) float32 or wider; the main row's are the column's next-token logits."""
        return logits

    # ---- trace -----------------------------------------------------------------------------
    def trace_arrays(self) -> dict[str, np.ndarray]:
        """Arrays this method adds to the trace (stored under ``NAME/KEY``)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "params": dict(self.params)}
