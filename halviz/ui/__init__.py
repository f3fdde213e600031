"""Gradio wiring: layout, callbacks and input checks. No tensors here; figures come from ``halviz.viz``."""

from halviz.ui.app import build_app, launch_options, shutdown

__all__ = ["build_app", "launch_options", "shutdown"]
