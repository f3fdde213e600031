"""What the person chose in the debugger (patches, a head, the sink) and the intervention it makes.

Plain data, no Gradio: the callbacks keep a :class:`Selection` in the session and turn it into the
knobs of the intervention methods (``mask_patches``, ``scale_heads``, ``remove_sink``). Those methods
take one box of patches and one head (or every head) per stack, so the selection is exactly that: a
click grows the box to the smallest one holding every patch clicked, and what is outlined is what
is masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

Spec = tuple[str, dict[str, Any]]  # (method name, knob values): a method as plain data


@dataclass(frozen=True)
class Selection:
    """Everything chosen for one intervention. Grid rows/columns and layers are 0-indexed, inclusive."""

    box: tuple[int, int, int, int] | None = None  # (first row, last row, first col, last col)
    head: tuple[int, int] | None = None  # (layer, head)
    head_scale: float = 0.0  # what the head's output is multiplied by (0 silences it)
    sink: bool = False  # mask the BOS column
    first_layer: int = 0  # the layers the patch mask and the sink removal act in (−1 = the last)
    last_layer: int = -1
    inspected: tuple[int, int] | None = None  # the patch shown in the patch → token view

    @property
    def empty(self) -> bool:
        return self.box is None and self.head is None and not self.sink

    def with_patch(self, row: int, col: int) -> "Selection":
        """The box grown to hold patch (row, col) (a 1×1 box when there was none); the patch is inspected."""
        if self.box is None:
            box = (row, row, col, col)
        else:
            r0, r1, c0, c1 = self.box
            box = (min(r0, row), max(r1, row), min(c0, col), max(c1, col))
        return replace(self, box=box, inspected=(row, col))


def as_selection(value: Any) -> Selection:
    """The session's selection (anything else, e.g. a fresh state, is an empty one)."""
    return value if isinstance(value, Selection) else Selection()


def intervention_specs(selection: Selection) -> list[Spec]:
    """The intervention methods and knobs that the selection asks for (empty when nothing is chosen)."""
    specs: list[Spec] = []
    if selection.sink:
        specs.append(("remove_sink", {"tokens": 1, "first_layer": selection.first_layer,
                                      "last_layer": selection.last_layer}))
    if selection.box is not None:
        r0, r1, c0, c1 = selection.box
        specs.append(("mask_patches", {"first_row": r0, "last_row": r1, "first_col": c0, "last_col": c1,
                                       "first_layer": selection.first_layer, "last_layer": selection.last_layer}))
    if selection.head is not None:
        layer, head = selection.head
        specs.append(("scale_heads", {"head": head, "scale": float(selection.head_scale),
                                      "first_layer": layer, "last_layer": layer}))
    return specs


def stack_specs(methods_meta: Sequence[Mapping[str, Any]] | None) -> list[Spec]:
    """A trace's method stack (``meta["methods"]``, each ``describe()``) back as specs."""
    specs: list[Spec] = []
    for method in methods_meta or []:
        if not isinstance(method, Mapping) or not isinstance(method.get("name"), str):
            raise ValueError("the trace does not say which methods made it")
        params = method.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError("the trace's method settings are damaged")
        specs.append((method["name"], dict(params)))
    return specs


def with_intervention(original: Sequence[Spec], intervention: Sequence[Spec], order: Sequence[str]) -> list[Spec]:
    """The original stack plus the intervention, in the registry's stacking ``order``; an intervention
    already in the original stack takes the new knobs (a method appears once per stack)."""
    merged = {name: dict(params) for name, params in original}
    for name, params in intervention:
        merged[name] = dict(params)
    rank = {name: i for i, name in enumerate(order)}
    unknown = [n for n in merged if n not in rank]
    if unknown:
        raise ValueError(f"this app has no method {', '.join(map(repr, unknown))}")
    return sorted(merged.items(), key=lambda item: rank[item[0]])


def layers_text(selection: Selection) -> str:
    first, last = selection.first_layer, selection.last_layer
    if first == 0 and last < 0:
        return "in every layer"
    return f"in layers {first}–{'last' if last < 0 else last}" if last != first else f"in layer {first}"


def describe(selection: Selection, grid: tuple[int, int] | None = None) -> str:
    """The selection in words (Markdown), as the page shows it."""
    parts = []
    where = layers_text(selection)
    if selection.box is not None:
        r0, r1, c0, c1 = selection.box
        count = (r1 - r0 + 1) * (c1 - c0 + 1)
        of = f" of the {grid[0]}×{grid[1]} grid" if grid else ""
        parts.append(f"mask **{count} patch{'es' if count != 1 else ''}**: rows {r0}–{r1}, columns {c0}–{c1}{of}, "
                     f"hidden from the text {where}")
    if selection.head is not None:
        layer, head = selection.head
        verb = "silence" if selection.head_scale == 0 else f"scale by {selection.head_scale:g}"
        parts.append(f"{verb} **head {head} of layer {layer}**")
    if selection.sink:
        parts.append(f"remove the **sink** (no query may attend to BOS) {where}")
    if not parts:
        return "Nothing chosen yet: click patches on the map, a cell of the head map, or tick “remove the sink”."
    return "; ".join(parts)  # numbers only: nothing here comes from a user or a file


def short_title(selection: Selection) -> str:
    """A column title for the intervention, e.g. "mask r2–4 c1–3 + silence L2·H5"."""
    parts = []
    if selection.sink:
        parts.append("no sink")
    if selection.box is not None:
        r0, r1, c0, c1 = selection.box
        parts.append(f"mask r{r0}–{r1} c{c0}–{c1}")
    if selection.head is not None:
        verb = "silence" if selection.head_scale == 0 else f"×{selection.head_scale:g}"
        parts.append(f"{verb} L{selection.head[0]}·H{selection.head[1]}")
    return " + ".join(parts)


def selection_of(methods_meta: Sequence[Mapping[str, Any]] | None, grid: tuple[int, int]) -> Selection:
    """The selection that a trace's own interventions amount to (what the pickers show when a re-run
    column is opened), as far as a selection can say it: one box, one head in one layer, BOS alone."""
    rows, cols = grid
    selection = Selection()
    try:
        params = {m["name"]: dict(m.get("params") or {}) for m in methods_meta or [] if isinstance(m, Mapping)}
        mask, heads, sink = params.get("mask_patches"), params.get("scale_heads"), params.get("remove_sink")
        if mask is not None and rows > 0 and cols > 0:
            r1 = rows - 1 if int(mask["last_row"]) < 0 else min(int(mask["last_row"]), rows - 1)
            c1 = cols - 1 if int(mask["last_col"]) < 0 else min(int(mask["last_col"]), cols - 1)
            r0, c0 = min(int(mask["first_row"]), r1), min(int(mask["first_col"]), c1)
            selection = replace(selection, box=(r0, r1, c0, c1), first_layer=int(mask["first_layer"]),
                                last_layer=int(mask["last_layer"]))
        if heads is not None and int(heads["head"]) >= 0 and int(heads["first_layer"]) == int(heads["last_layer"]) >= 0:
            selection = replace(selection, head=(int(heads["first_layer"]), int(heads["head"])),
                                head_scale=float(heads["scale"]))
        if sink is not None and int(sink["tokens"]) == 1:
            selection = replace(selection, sink=True)
            if mask is None:
                selection = replace(selection, first_layer=int(sink["first_layer"]), last_layer=int(sink["last_layer"]))
    except (KeyError, TypeError, ValueError):  # a trace from elsewhere with odd settings: nothing chosen
        return Selection()
    return selection
