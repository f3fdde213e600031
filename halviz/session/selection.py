"""What the person chose in the debugger (patches, a head, the sink) and the intervention it makes.

Plain data, no Gradio: the callbacks keep a :class:`Selection` in the session and turn it into the
knobs of the intervention methods (``mask_patches``, ``scale_heads``, ``remove_sink``). The selection
is a set of patches and a set of heads: a click toggles one patch (or, in box mode, fills the smallest
box holding every patch chosen and the one clicked) and one head. A patch set that is a full box
becomes the box knobs, any other the ``patches`` list; one head becomes ``head`` and its layer, several
the ``heads`` list. What is outlined is what is masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from halviz.methods.index_pairs import format_pairs, parse_pairs

Pair = tuple[int, int]
Spec = tuple[str, dict[str, Any]]  # (method name, knob values): a method as plain data


@dataclass(frozen=True)
class Selection:
    """Everything chosen for one intervention. Grid rows/columns and layers are 0-indexed, inclusive."""

    patches: frozenset[Pair] = frozenset()  # (row, col) of the patches to mask
    heads: frozenset[Pair] = frozenset()  # (layer, head) of the heads to scale
    head_scale: float = 0.0  # what the heads' outputs are multiplied by (0 silences them)
    sink: bool = False  # mask the BOS column
    first_layer: int = 0  # the layers the patch mask and the sink removal act in (−1 = the last)
    last_layer: int = -1
    inspected: tuple[int, int] | None = None  # the patch shown in the patch → token view

    @property
    def empty(self) -> bool:
        return not self.patches and not self.heads and not self.sink

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """(first row, last row, first col, last col) when the patches fill exactly that box, else None."""
        return full_box(self.patches)

    def toggled_patch(self, row: int, col: int) -> "Selection":
        """Patch (row, col) added to the patches to mask, or taken out if it was there; it is inspected."""
        return replace(self, patches=self.patches ^ {(int(row), int(col))}, inspected=(int(row), int(col)))

    def with_patch(self, row: int, col: int) -> "Selection":
        """Box mode: every patch of the smallest box holding the chosen patches and (row, col); inspected."""
        rows = [r for r, _ in self.patches] + [int(row)]
        cols = [c for _, c in self.patches] + [int(col)]
        box = frozenset((r, c) for r in range(min(rows), max(rows) + 1) for c in range(min(cols), max(cols) + 1))
        return replace(self, patches=box, inspected=(int(row), int(col)))

    def toggled_head(self, layer: int, head: int) -> "Selection":
        return replace(self, heads=self.heads ^ {(int(layer), int(head))})

    def with_head(self, layer: int, head: int) -> "Selection":
        return replace(self, heads=self.heads | {(int(layer), int(head))})


def full_box(patches: frozenset[Pair]) -> tuple[int, int, int, int] | None:
    """The box (r0, r1, c0, c1) that ``patches`` fill exactly; None for an empty or ragged set."""
    if not patches:
        return None
    rows, cols = [r for r, _ in patches], [c for _, c in patches]
    r0, r1, c0, c1 = min(rows), max(rows), min(cols), max(cols)
    return (r0, r1, c0, c1) if len(patches) == (r1 - r0 + 1) * (c1 - c0 + 1) else None


def box_patches(r0: int, r1: int, c0: int, c1: int) -> frozenset[Pair]:
    return frozenset((r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1))


def pairs_text(pairs, fmt: str, limit: int = 6) -> str:
    """The first ``limit`` pairs in order, e.g. "L1·H2, L3·H0, … (5 in all)"."""
    ordered = sorted(pairs)
    shown = ", ".join(fmt.format(*pair) for pair in ordered[:limit])
    return shown + (f", … ({len(ordered)} in all)" if len(ordered) > limit else "")


def as_selection(value: Any) -> Selection:
    """The session's selection (anything else, e.g. a fresh state, is an empty one)."""
    return value if isinstance(value, Selection) else Selection()


def intervention_specs(selection: Selection) -> list[Spec]:
    """The intervention methods and knobs that the selection asks for (empty when nothing is chosen)."""
    specs: list[Spec] = []
    if selection.sink:
        specs.append(("remove_sink", {"tokens": 1, "first_layer": selection.first_layer,
                                      "last_layer": selection.last_layer}))
    layers = {"first_layer": selection.first_layer, "last_layer": selection.last_layer}
    if selection.box is not None:  # a full box: the box knobs, as traces before the patch list read
        r0, r1, c0, c1 = selection.box
        specs.append(("mask_patches", {"first_row": r0, "last_row": r1, "first_col": c0, "last_col": c1, **layers}))
    elif selection.patches:
        specs.append(("mask_patches", {"patches": format_pairs(selection.patches), **layers}))
    if len(selection.heads) == 1:
        ((layer, head),) = selection.heads
        specs.append(("scale_heads", {"head": head, "scale": float(selection.head_scale),
                                      "first_layer": layer, "last_layer": layer}))
    elif selection.heads:
        specs.append(("scale_heads", {"heads": format_pairs(selection.heads), "scale": float(selection.head_scale)}))
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
    count = len(selection.patches)
    of = f" of the {grid[0]}×{grid[1]} grid" if grid else ""
    if selection.box is not None:
        r0, r1, c0, c1 = selection.box
        parts.append(f"mask **{count} patch{'es' if count != 1 else ''}**: rows {r0}–{r1}, columns {c0}–{c1}{of}, "
                     f"hidden from the text {where}")
    elif selection.patches:
        listed = pairs_text(selection.patches, "r{}·c{}")
        parts.append(f"mask **{count} patches**{of} ({listed}), hidden from the text {where}")
    verb = "silence" if selection.head_scale == 0 else f"scale by {selection.head_scale:g}"
    if len(selection.heads) == 1:
        ((layer, head),) = selection.heads
        parts.append(f"{verb} **head {head} of layer {layer}**")
    elif selection.heads:
        parts.append(f"{verb} **{len(selection.heads)} heads**: {pairs_text(selection.heads, 'L{}·H{}')}")
    if selection.sink:
        parts.append(f"remove the **sink** (no query may attend to BOS) {where}")
    if not parts:
        return ("Nothing chosen yet: click patches on the map, cells of the head map, or tick “remove the sink”. "
                "A second click on a patch or a head takes it out again.")
    return "; ".join(parts)  # numbers only: nothing here comes from a user or a file


def short_title(selection: Selection) -> str:
    """A column title for the intervention, e.g. "mask r2–4 c1–3 + silence L2·H5"."""
    parts = []
    if selection.sink:
        parts.append("no sink")
    if selection.box is not None:
        r0, r1, c0, c1 = selection.box
        parts.append(f"mask r{r0}–{r1} c{c0}–{c1}")
    elif selection.patches:
        count = len(selection.patches)
        parts.append(f"mask {pairs_text(selection.patches, 'r{}c{}', 3)}" if count <= 3 else f"mask {count} patches")
    verb = "silence" if selection.head_scale == 0 else f"×{selection.head_scale:g}"
    if selection.heads:
        parts.append(f"{verb} {pairs_text(selection.heads, 'L{}·H{}', 3)}")
    return " + ".join(parts)


def selection_of(methods_meta: Sequence[Mapping[str, Any]] | None, grid: tuple[int, int]) -> Selection:
    """The selection that a trace's own interventions amount to (what the pickers show when a re-run
    column is opened), as far as a selection can say it: patches of the primary grid, heads one by one
    (a head in a single layer, or a list), BOS alone."""
    rows, cols = grid
    selection = Selection()
    try:
        params = {m["name"]: dict(m.get("params") or {}) for m in methods_meta or [] if isinstance(m, Mapping)}
        mask, heads, sink = params.get("mask_patches"), params.get("scale_heads"), params.get("remove_sink")
        if mask is not None and rows > 0 and cols > 0:
            if mask.get("patches"):
                chosen = frozenset(p for p in parse_pairs(mask["patches"], "patches", "") if p[0] < rows and p[1] < cols)
            else:
                r1 = rows - 1 if int(mask["last_row"]) < 0 else min(int(mask["last_row"]), rows - 1)
                c1 = cols - 1 if int(mask["last_col"]) < 0 else min(int(mask["last_col"]), cols - 1)
                r0, c0 = min(int(mask["first_row"]), r1), min(int(mask["first_col"]), c1)
                chosen = box_patches(r0, r1, c0, c1)
            selection = replace(selection, patches=chosen, first_layer=int(mask["first_layer"]),
                                last_layer=int(mask["last_layer"]))
        if heads is not None and heads.get("heads"):
            selection = replace(selection, heads=frozenset(parse_pairs(heads["heads"], "heads", "")),
                                head_scale=float(heads["scale"]))
        elif heads is not None and int(heads["head"]) >= 0 and int(heads["first_layer"]) == int(heads["last_layer"]) >= 0:
            selection = replace(selection, heads=frozenset({(int(heads["first_layer"]), int(heads["head"]))}),
                                head_scale=float(heads["scale"]))
        if sink is not None and int(sink["tokens"]) == 1:
            selection = replace(selection, sink=True)
            if mask is None:
                selection = replace(selection, first_layer=int(sink["first_layer"]), last_layer=int(sink["last_layer"]))
    except (KeyError, TypeError, ValueError):  # a trace from elsewhere with odd settings: nothing chosen
        return Selection()
    return selection
