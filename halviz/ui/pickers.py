"""Pickers whose choices (or range) each session sets: the debugger's trace picker, its Layer, Head
and View pickers and its Step slider.

Gradio checks a picked value against the session's own copy of the component. When a session's
state is gone (expired, or dropped to make room), that copy is back to the page's first one (no
traces, "all layers" only, steps 0–1), so the next click on a page that still shows the traces was
refused by Gradio with its type names ("Value: 'vanilla' (type: <class 'str'>) is not in the list of
choices: []"). These subclasses let such a value through (text or a number; anything else becomes
None) and the callback decides: a session with no traces answers :data:`EXPIRED`; a session that has
them treats an unknown trace, layer or head as the debugger always did (the first trace, the mean).

``is_template`` is Gradio's own hook for components that reuse another's front end: the page, the
API and ``gr.load`` see the base component's name (``get_block_name``/``get_block_class``), so each
renders as the plain Radio, Dropdown or Slider.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

EXPIRED = ("This page's traces are no longer on the server (a session's traces are kept for an hour after "
           "its last use, less when the server is crowded); run the comparison again.")
MAX_CHOICE_CHARS = 200  # a value no picker offers is only ever compared, never shown: keep it short


def offered(payload: Any) -> str | None:
    """A picked value that this session's copy does not list: text passes (cut short), else None."""
    return payload[:MAX_CHOICE_CHARS] if isinstance(payload, str) else None


class SessionRadio(gr.Radio):
    """A ``gr.Radio`` (page, API and config alike) whose values need not be in the session's choices."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if payload is None or payload in [value for _, value in self.choices]:
            return super().preprocess(payload)
        return offered(payload)


class SessionDropdown(gr.Dropdown):
    """A single-choice ``gr.Dropdown`` whose values need not be in the session's choices."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if payload is None or self.multiselect or payload in [value for _, value in self.choices]:
            return super().preprocess(payload)
        return offered(payload)


class SessionSlider(gr.Slider):
    """A ``gr.Slider`` whose value need not be within the session's range (the callback clamps it)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if type(payload) not in (int, float) or not math.isfinite(payload):
            return None
        return gr.components.Number.round_to_precision(payload, self.precision)
