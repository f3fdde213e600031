"""The methods' debugger panels, one module each; the debugger draws them in this order.

Adding a method's panel: write ``halviz/viz/panels/<method>.py`` with a ``PANEL`` (see ``base.py``) and
add its name to ``PANEL_MODULES``; nothing else in the debugger changes.
"""

from __future__ import annotations

from importlib import import_module

from halviz.viz.panels.base import Figure, MethodPanel

PANEL_MODULES = ("prunehal", "vasparse", "vhr", "var", "cai")  # one entry per method panel, in page order

PANELS: tuple[MethodPanel, ...] = tuple(import_module(f"{__name__}.{name}").PANEL for name in PANEL_MODULES)


def panel_for(method: str) -> MethodPanel | None:
    return next((p for p in PANELS if p.method == method), None)


__all__ = ["Figure", "MethodPanel", "PANELS", "PANEL_MODULES", "panel_for"]
