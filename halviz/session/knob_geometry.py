"""Knob values checked against the loaded model's geometry before anything is decoded: layers, heads
and the image grid. A knob's own range (``Knob.minimum``/``maximum``) fits every model; whether layer 7
or head 1023 exists depends on the model, and a range that selects no layer would silently change
nothing while the column claims the method ran. Each problem is one sentence for the user.
Nothing here touches Gradio, so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halviz.methods.base import Method
from halviz.methods.index_pairs import parse_pairs


@dataclass(frozen=True)
class Geometry:
    layers: int
    heads: int
    grid: tuple[int, int] | None = None  # rows, cols of the primary image grid (None: not worked out)

    @property
    def layer_text(self) -> str:
        return f"This model has layers 0–{self.layers - 1}"


def check_stacks(stacks: Iterable[Sequence[Method]], geometry: Geometry) -> None:
    """Raise ValueError with one sentence for the first knob that does not fit ``geometry``."""
    for stack in stacks:
        for method in stack:
            problem = knob_problem(method.name, method.params, geometry)
            if problem:
                raise ValueError(f"{method.title or method.name}: {problem}")


def needs_grid(stacks: Iterable[Sequence[Method]]) -> bool:
    """Whether a knob refers to the image grid (so the caller works out the grid for the check)."""
    return any(m.name == "mask_patches" for stack in stacks for m in stack)


def knob_problem(name: str, params: Mapping[str, Any], g: Geometry) -> str | None:
    """What is wrong with ``params`` of method ``name`` on a model of geometry ``g`` (None: nothing)."""
    if name == "scale_heads" and params.get("heads"):
        return _pairs_problem(params["heads"], "heads", (g.layers, g.heads),
                              f"not in this model (layers 0–{g.layers - 1}, heads 0–{g.heads - 1})")
    if name == "scale_heads":
        head = int(params.get("head", 0))
        if head >= g.heads:
            return f"This model has heads 0–{g.heads - 1}; head {head} is not one of them."
    if name == "vasparse":
        first = int(params.get("first_layer", -1))
        if first >= g.layers:
            return f"{g.layer_text}; the first layer {first} is past the last."
        return None
    if name == "vhr":
        count = int(params.get("last_layers", -1))
        if count == 0:
            return "Last layers must be at least 1 (or −1 for the paper's share of the layers); 0 scales no head."
        if count > g.layers:
            return f"This model has {g.layers} layers; Last layers {count} asks for more."
        return None
    if name == "cai":
        if g.layers < 2:
            return f"CAI needs at least 2 decoder layers (it reads one layer's logit lens and tilts the next); this model has {g.layers}."
        start = int(params.get("start_layer", -1))
        if start > g.layers - 2:  # ℓ_s is checked, the layers after it tilted: the last layer cannot be ℓ_s
            return (f"{g.layer_text}; the start layer {start} leaves no later layer to tilt: set it to at most "
                    f"{g.layers - 2} (or −1 for the paper's share).")
        return None
    if "first_layer" in params and "last_layer" in params:
        problem = _layer_range_problem(int(params["first_layer"]), int(params["last_layer"]), g)
        if problem:
            return problem
    if name == "mask_patches" and g.grid is not None:
        rows, cols = g.grid
        if params.get("patches"):
            where = f"outside this image's {rows}×{cols} grid (rows 0–{rows - 1}, columns 0–{cols - 1})"
            return _pairs_problem(params["patches"], "patches", (rows, cols), where)
        for what, first, last, count in (("row", params.get("first_row", 0), params.get("last_row", -1), rows),
                                         ("column", params.get("first_col", 0), params.get("last_col", -1), cols)):
            problem = _range_problem(what, int(first), int(last), count,
                                     f"This image's grid has {what}s 0–{count - 1}")
            if problem:
                return problem
    return None


def _layer_range_problem(first: int, last: int, g: Geometry) -> str | None:
    return _range_problem("layer", first, last, g.layers, g.layer_text)


def _range_problem(what: str, first: int, last: int, count: int, has: str) -> str | None:
    """first..last (−1 = the last, −k the k-th from the end) within 0..count−1 and not empty."""
    if first > count - 1:
        return f"{has}; the first {what} {first} is past the last."
    if last > count - 1:
        return f"{has}; the last {what} {last} is past the last."
    resolved = count + last if last < 0 else last
    if resolved < 0:
        return f"{has}; the last {what} {last} counts back past {what} 0."
    if first > resolved:
        counted = f" ({last} counts from the end)" if last < 0 else ""
        return (f"{has}; the first {what} {first} comes after the last {what} {resolved}{counted}, so nothing "
                f"would change: set the first {what} to at most {resolved}.")
    return None


def _pairs_problem(text: str, what: str, sizes: tuple[int, int], where: str) -> str | None:
    try:
        pairs = parse_pairs(str(text), what, "0:0")
    except ValueError as exc:
        return f"{exc}."
    outside = [f"{a}:{b}" for a, b in pairs if a >= sizes[0] or b >= sizes[1]]
    if outside:
        shown = ", ".join(outside[:5]) + ("…" if len(outside) > 5 else "")
        one = {"heads": "Head", "patches": "Patch"}.get(what, what)
        return f"{one} {shown} is {where}." if len(outside) == 1 else f"{what.capitalize()} {shown} are {where}."
    return None
