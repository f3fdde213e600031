"""One method's debugger panel: its figures, where they sit and how to read them (see
:mod:`halviz.viz.panels`)."""

from __future__ import annotations

from halviz.viz.common import NOT_WHY
from halviz.viz.method_data import var_record
from halviz.viz.panels.base import Figure, MethodPanel
from halviz.viz.var_figures import var_heads_figure, var_moved_figure, var_sinks_figure

PANEL = MethodPanel(
    method="var", title="VAR: sink tokens and the heads it redistributed",
    figures=(Figure("hv-var-sinks", lambda trace, step: var_sinks_figure(trace), per_step=False,
                    help=('Each row is one layer, each column one prompt token. A coloured cell is a token VAR counts as a '
                          'sink in that layer: its hidden state entering the layer (RMS-normalised) has a massive value in '
                          'one of the dimensions where the first token is massive. Purple = BOS, blue = an image token (a '
                          'visual sink), orange = other text. Grey rows are layers VAR leaves alone. Sinks are found from '
                          'activations, not from attention: a row with no visual sink means no head in that layer is '
                          'changed.')),
             Figure("hv-var-heads", var_heads_figure, row=1,
                    help=('Each cell is one head at this step. Outlined (blue) heads are image-centric: they give the image'
                          ' at least the floor of their attention, and at least ρ of that goes to image tokens that are not'
                          ' sinks. Only these heads are changed, and only in layers that have a visual sink. ' + NOT_WHY)),
             Figure("hv-var-moved", var_moved_figure, row=1,
                    help=("Each bar is one image-centric head at this step: the share of the query's attention (0–1) that "
                          'VAR took from the sink tokens (BOS included) and gave to the other image tokens, in proportion '
                          "to what they already had. It is p times the sinks' weight in that head's row. " + NOT_WHY))),
    present=lambda trace: var_record(trace) is not None,
)
