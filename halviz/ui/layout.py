"""The page's components as the callbacks see them: built by ``ui/app.py``, read by the controller."""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass

import gradio as gr

from halviz.ui.debugger import DebuggerPanel
from halviz.ui.knobs import MethodSettings
from halviz.ui.whatif import WhatIfSlot


@dataclass
class Slot:
    """One pre-created caption column; shown when a run has a method for it."""

    column: gr.Column
    header: gr.Markdown
    caption: gr.HighlightedText
    summary: gr.Markdown


@dataclass
class Layout:
    image: gr.Image
    prompt: gr.Textbox
    methods: gr.CheckboxGroup
    max_tokens: gr.Slider
    truth: gr.Textbox
    model: gr.Dropdown
    settings: gr.Textbox
    knobs: MethodSettings
    truth_note: gr.Markdown
    run: gr.Button
    stop: gr.Button
    status: gr.Markdown
    slots: list[Slot]
    summary_json: gr.JSON
    panel: DebuggerPanel
    trace_files: gr.File
    upload: gr.File
    runs: gr.State  # Runs: the traces the debugger can show
    slot_methods: gr.State  # method name shown in each slot
    live: gr.State  # latest ColumnResults, so Stop can finish the summaries
    knob_defaults: gr.State  # {method: {knob: value}}: the defaults the knobs show for the chosen model
    whatif_slots: list[WhatIfSlot]  # the re-run columns beside the method columns
    whatif: gr.State  # list of {key, summary, step}: what each re-run column shows, oldest first
    lesson: Any = None  # ui.lesson.LessonPanel when the toy model and its knife scene are offered
