"""What a method's debugger panel is: a list of figures of a trace, laid out in rows, with how to read
them. Plain data (no Gradio): the debugger draws every registered panel in one loop, and a notebook
can call the same ``draw`` functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go

from halviz.trace import Trace

Draw = Callable[[Trace, int], "go.Figure | None"]  # (trace, step) -> the figure, None when not recorded


@dataclass(frozen=True)
class Figure:
    elem_id: str  # the plot's id on the page (tests and CSS find it by this)
    draw: Draw
    per_step: bool = True  # redrawn when the step changes; False: drawn once per trace
    row: int = 0  # figures of one row sit side by side, rows top to bottom
    help: str = ""  # how to read this figure (HTML), under it; the panel's own help goes under all

    def figure(self, trace: Trace, step: int = 0) -> go.Figure | None:
        return self.draw(trace, step)


@dataclass(frozen=True)
class MethodPanel:
    method: str  # the method's registry name (halviz.methods.REGISTRY)
    title: str  # the panel's heading
    figures: tuple[Figure, ...]
    help: str = ""  # how to read the panel (HTML), under its figures
    present: Callable[[Trace], bool] | None = None  # whether the trace holds this method's record

    def shown_for(self, trace: Trace) -> bool:
        """Whether to show the panel for ``trace`` (default: any of its figures has something to draw)."""
        if self.present is not None:
            return bool(self.present(trace))
        return any(f.figure(trace, 0) is not None for f in self.figures)

    def rows(self) -> list[list[Figure]]:
        rows: dict[int, list[Figure]] = {}
        for figure in self.figures:
            rows.setdefault(figure.row, []).append(figure)
        return [rows[r] for r in sorted(rows)]
