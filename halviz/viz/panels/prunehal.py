"""One method's debugger panel: its figures, where they sit and how to read them (see
:mod:`halviz.viz.panels`)."""

from __future__ import annotations

from halviz.viz.common import NOT_WHY
from halviz.viz.method_figures import prunehal_figure
from halviz.viz.panels.base import Figure, MethodPanel

PANEL = MethodPanel(
    method="prunehal", title="PruneHal: when it pruned",
    figures=(Figure("hv-prunehal", lambda trace, step: prunehal_figure(trace, step)),),
    help=('A layer votes when its attention to the kept image tokens falls below √r × its running mean; a '
          'majority (or the forced step) prunes the least-attended image tokens, but only while the budget '
          'of t prunes (the forced one included) lasts. The title says when it ran out: majorities after '
          'that step prune nothing. ' + NOT_WHY),
    present=lambda trace: prunehal_figure(trace) is not None,
)
