"""The debugger's method panels on the page: one hidden column per registered panel
(:data:`halviz.viz.panels.PANELS`), shown when the chosen trace holds that method's record."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from halviz.trace import Trace
from halviz.viz.panels import Figure, MethodPanel
from halviz.ui.style import sized_plot


def how_to_read(text: str) -> gr.Markdown:
    return gr.Markdown(f"<div class='hv-help'><b>How to read this.</b> {text}</div>")


@dataclass
class MethodBox:
    panel: MethodPanel
    box: gr.Column
    plots: list[tuple[Figure, gr.Plot]]

    @classmethod
    def build(cls, panel: MethodPanel) -> "MethodBox":
        plots = []
        with gr.Column(visible=False, elem_id=f"hv-{panel.method}-box") as box:
            gr.Markdown(f"### {panel.title}", elem_classes=["hv-subsection"])
            for row in panel.rows():
                if len(row) == 1:
                    plots.append((row[0], cls._plot(row[0])))
                    continue
                with gr.Row(equal_height=False):
                    for figure in row:
                        with gr.Column():
                            plots.append((figure, cls._plot(figure)))
            if panel.help:
                how_to_read(panel.help)
        return cls(panel, box, plots)

    @staticmethod
    def _plot(figure: Figure) -> gr.Plot:
        plot = gr.Plot(show_label=False, elem_id=figure.elem_id)
        if figure.help:
            how_to_read(figure.help)
        return plot

    def plot(self, elem_id: str) -> gr.Plot:
        return next(plot for figure, plot in self.plots if figure.elem_id == elem_id)

    @property
    def trace_outputs(self) -> list:
        """What changes with the trace: the column and the figures drawn once per trace."""
        return [self.box, *(plot for figure, plot in self.plots if not figure.per_step)]

    @property
    def step_outputs(self) -> list:
        return [plot for figure, plot in self.plots if figure.per_step]

    def show(self, trace: Trace) -> dict:
        shown = self.panel.shown_for(trace)
        updates = {self.box: gr.Column(visible=shown)}
        for figure, plot in self.plots:
            if not figure.per_step:
                updates[plot] = sized_plot(figure.figure(trace) if shown else None)
        return updates

    def at_step(self, trace: Trace, step: int) -> dict:
        return {plot: sized_plot(figure.figure(trace, step)) for figure, plot in self.plots if figure.per_step}
