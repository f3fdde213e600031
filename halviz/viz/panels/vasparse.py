"""One method's debugger panel: its figures, where they sit and how to read them (see
:mod:`halviz.viz.panels`)."""

from __future__ import annotations

from halviz.viz.common import NOT_WHY
from halviz.viz.method_figures import vasparse_logits_figure, vasparse_selection_figure, vasparse_sink_figure
from halviz.viz.panels.base import Figure, MethodPanel

PANEL = MethodPanel(
    method="vasparse", title="VASparse: kept generated tokens, contrast and sinks",
    figures=(Figure("hv-vasparse-selection", lambda trace, step: vasparse_selection_figure(trace), per_step=False),
             Figure("hv-vasparse-logits", vasparse_logits_figure),
             Figure("hv-vasparse-sink", lambda trace, step: vasparse_sink_figure(trace), per_step=False, row=1)),
    help=('Heatmap: at every step each head keeps the generated tokens that score highest on (q·K)² plus λ '
          '× how much they looked at the image; the rest are merged by DPC-KNN clustering (knob aggregate) '
          'or masked. Image and prompt tokens are never dropped. ℓ_θ are the logits with this sparse '
          'attention; ℓ_φ is a language prior: by default (knob phi = embedding) the language head applied '
          "to the current token's embedding, with no decoder pass. Tokens that stay likely under ℓ_φ are "
          'pushed down. Bars below: the sink weight W of every position, which the penalty uses to damp '
          'attention to sinks. ' + NOT_WHY),
)
