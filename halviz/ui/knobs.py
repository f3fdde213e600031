"""Controls for the methods' knobs, built from the ``Knob`` declarations of the registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from halviz.methods.base import Knob, Method
from halviz.methods.index_pairs import MAX_PAIRS_CHARS
from halviz.session.escaping import markdown_text
from halviz.session.model_defaults import ModelDefaults
from halviz.session.resolution import SETTINGS_KEY
from halviz.ui.resolution import for_model as resolution_for_model

MAX_SLIDER_POSITIONS = 2000  # wider ranges (e.g. seeds) get a number box


def _markdown_safe(text: str) -> str:
    # Gradio renders ``info`` as Markdown: keep "β_cut·max p_θ" from turning into italics.
    return text.replace("_", "\\_").replace("*", "\\*")


def knob_info(knob: Knob, model_value: Any = None) -> str | None:
    """The help under a control; a model's own default is marked, with the paper's beside it."""
    parts = []
    if model_value is not None and model_value != knob.default:
        parts.append(f"**default for this model: {model_value}** (paper default: {knob.default})")
    if knob.help:
        parts.append(_markdown_safe(knob.help))
    return " · ".join(parts) or None


def knob_component(knob: Knob, model_value: Any = None) -> gr.components.Component:
    info = knob_info(knob, model_value)
    value = knob.default if model_value is None else model_value
    if isinstance(knob.default, bool):
        return gr.Checkbox(value=value, label=knob.label, info=info)
    if knob.choices:
        return gr.Dropdown(choices=list(knob.choices), value=str(value), label=knob.label, info=info)
    if isinstance(knob.default, str):  # a text knob (e.g. a list of patches); its parser checks it at run time
        return gr.Textbox(value=str(value), label=knob.label, info=info, max_lines=1, max_length=MAX_PAIRS_CHARS)
    low, high, step = knob.minimum, knob.maximum, knob.step
    whole = isinstance(knob.default, int)
    if low is not None and high is not None and high > low and step and (high - low) / step <= MAX_SLIDER_POSITIONS:
        return gr.Slider(minimum=low, maximum=high, step=step, value=value, label=knob.label, info=info)
    return gr.Number(value=value, label=knob.label, info=info, minimum=low, maximum=high,
                     precision=0 if whole else None, step=step or (1 if whole else 0.01))


def defaults_note(method: type[Method], defaults: ModelDefaults) -> str:
    """One line in a method's accordion naming the knobs whose default this model changes."""
    stored = defaults.values.get(method.name, {})
    changed = [(k, stored[k.name]) for k in method.knobs if k.name in stored and stored[k.name] != k.default]
    if not changed:
        return ""
    listed = ", ".join(f"{markdown_text(k.label)} **{v}** (paper {k.default})" for k, v in changed)
    how = defaults.how.get(method.name)
    source = f"chosen by {markdown_text(how)}; " if how else ""
    command = f"written by {markdown_text(defaults.command)}" if defaults.command else "stored with the model"
    stale = (" ⚠ They were chosen on other weights than this folder now holds; rerun the tuning."
             if defaults.stale else "")
    return (f"**Defaults for this model** ({markdown_text(defaults.model)}): {listed}.{stale} "
            f"<span class='hv-ref'>{source}{command}. Values you set override them knob by knob.</span>")


@dataclass
class MethodSettings:
    """One accordion of knobs per method that has any, and the components in registry order."""

    accordions: dict[str, gr.Accordion]
    components: list[tuple[str, str, gr.components.Component]]  # (method, knob, component)
    notes: dict[str, gr.Markdown]  # per method: which defaults the chosen model changes
    registry: Mapping[str, type[Method]]

    @classmethod
    def build(cls, registry: Mapping[str, type[Method]], selected: list[str],
              defaults: ModelDefaults | None = None) -> "MethodSettings":
        defaults = defaults or ModelDefaults()
        accordions: dict[str, gr.Accordion] = {}
        components: list[tuple[str, str, gr.components.Component]] = []
        notes: dict[str, gr.Markdown] = {}
        for name, method in registry.items():
            if not method.knobs:
                continue
            stored = defaults.values.get(name, {})
            with gr.Accordion(f"⚙ {method.title} settings", open=False, visible=name in selected) as accordion:
                reference = f" <span class='hv-ref'>{method.reference}</span>" if method.reference else ""
                gr.Markdown(f"{method.summary}{reference}", elem_classes=["hv-note"])
                notes[name] = gr.Markdown(defaults_note(method, defaults), elem_classes=["hv-note"],
                                          elem_id=f"hv-defaults-{name}", latex_delimiters=[])
                with gr.Row():
                    for knob in method.knobs:
                        components.append((name, knob.name, knob_component(knob, stored.get(knob.name))))
            accordions[name] = accordion
        return cls(accordions, components, notes, dict(registry))

    def settings_json(self, shown: Mapping[str, Mapping[str, Any]] | None, *values) -> str:
        """The knob values the user set, as the JSON text the run reads (``{"method": {"knob": value}}``):
        only those that differ from the defaults ``shown`` for the chosen model, so the server fills
        in that model's defaults for the rest."""
        shown = shown or ModelDefaults().shown(self.registry)
        settings: dict[str, dict] = {}
        for (method, knob, _), value in zip(self.components, values):
            if method == SETTINGS_KEY and not value:  # the Resolution control at the device's default
                continue
            if value != shown.get(method, {}).get(knob):
                settings.setdefault(method, {})[knob] = value
        return json.dumps(settings) if settings else ""

    def for_model(self, defaults: ModelDefaults, shown: Mapping[str, Mapping[str, Any]] | None, *values) -> list:
        """Updates when the model changes: [new shown defaults, notes..., components...]. A knob still
        at the old model's default moves to the new one; a value the user set stays."""
        old = shown or ModelDefaults().shown(self.registry)
        new = defaults.shown(self.registry)
        updates: list = [new]
        updates += [gr.Markdown(defaults_note(self.registry[name], defaults)) for name in self.notes]
        for (method, name, _), value in zip(self.components, values):
            if method == SETTINGS_KEY:  # the Resolution control (ui/resolution.py): the new model's budgets
                updates.append(resolution_for_model(defaults.model))
                continue
            knob = next(k for k in self.registry[method].knobs if k.name == name)
            untouched = value == old.get(method, {}).get(name)
            info = knob_info(knob, defaults.values.get(method, {}).get(name))
            if untouched:
                shown_value = new[method][name]
                updates.append(gr.update(value=str(shown_value) if knob.choices else shown_value, info=info))
            else:
                updates.append(gr.update(info=info))
        return updates

    def visibility(self, selected: list[str] | None) -> list[gr.Accordion]:
        chosen = set(selected or [])
        return [gr.Accordion(visible=name in chosen) for name in self.accordions]
