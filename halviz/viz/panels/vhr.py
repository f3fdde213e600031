"""One method's debugger panel: its figures, where they sit and how to read them (see
:mod:`halviz.viz.panels`)."""

from __future__ import annotations

from halviz.viz.heads import tvhd_figure, vhd_figure
from halviz.viz.method_data import vhr_maps
from halviz.viz.panels.base import Figure, MethodPanel


def _vhd(trace, step):
    maps = vhr_maps(trace)
    return vhd_figure(trace, maps) if maps is not None else None


PANEL = MethodPanel(
    method="vhr", title="VHR: vision-sensitive heads",
    figures=(Figure("hv-vhd", _vhd, per_step=False), Figure("hv-tvhd", tvhd_figure)),
    help=('Each cell is one head: how much its output changes when the image is removed from the prompt '
          '(hover for the value). VHR chooses heads only in the layers its rule names (the title lists '
          'them); grey rows are measured but never reinforced. In its layers it multiplies the outlined '
          "heads by α: those above their layer's median VHD once outliers are zeroed, so a layer whose "
          'heads all barely react still gets half of them reinforced. A high VHD says a head reacts to the '
          'image, not that it is right.'),
    present=lambda trace: vhr_maps(trace) is not None,
)
