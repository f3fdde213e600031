"""Controls for the methods' knobs, built from the ``Knob`` declarations of the registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import gradio as gr

from halviz.methods.base import Knob, Method

MAX_SLIDER_POSITIONS = 2000  # wider ranges (e.g. seeds) get a number box


def knob_component(knob: Knob) -> gr.components.Component:
    # Gradio renders ``info`` as Markdown: keep "β_cut·max p_θ" from turning into italics.
    info = knob.help.replace("_", "\\_").replace("*", "\\*") if knob.help else None
    if isinstance(knob.default, bool):
        return gr.Checkbox(value=knob.default, label=knob.label, info=info)
    if knob.choices:
        return gr.Dropdown(choices=list(knob.choices), value=str(knob.default), label=knob.label, info=info)
    low, high, step = knob.minimum, knob.maximum, knob.step
    whole = isinstance(knob.default, int)
    if low is not None and high is not None and high > low and step and (high - low) / step <= MAX_SLIDER_POSITIONS:
        return gr.Slider(minimum=low, maximum=high, step=step, value=knob.default, label=knob.label, info=info)
    return gr.Number(value=knob.default, label=knob.label, info=info, minimum=low, maximum=high,
                     precision=0 if whole else None, step=step or (1 if whole else 0.01))


@dataclass
class MethodSettings:
    """One accordion of knobs per method that has any, and the components in registry order."""

    accordions: dict[str, gr.Accordion]
    components: list[tuple[str, str, gr.components.Component]]  # (method, knob, component)

    @classmethod
    def build(cls, registry: Mapping[str, type[Method]], selected: list[str]) -> "MethodSettings":
        accordions: dict[str, gr.Accordion] = {}
        components: list[tuple[str, str, gr.components.Component]] = []
        for name, method in registry.items():
            if not method.knobs:
                continue
            with gr.Accordion(f"⚙ {method.title} settings", open=False, visible=name in selected) as accordion:
                reference = f" <span class='hv-ref'>{method.reference}</span>" if method.reference else ""
                gr.Markdown(f"{method.summary}{reference}", elem_classes=["hv-note"])
                with gr.Row():
                    for knob in method.knobs:
                        components.append((name, knob.name, knob_component(knob)))
            accordions[name] = accordion
        return cls(accordions, components)

    def settings_json(self, *values) -> str:
        """All knob values as the JSON text the run reads (``{"method": {"knob": value}}``)."""
        settings: dict[str, dict] = {}
        for (method, knob, _), value in zip(self.components, values):
            settings.setdefault(method, {})[knob] = value
        return json.dumps(settings)

    def visibility(self, selected: list[str] | None) -> list[gr.Accordion]:
        chosen = set(selected or [])
        return [gr.Accordion(visible=name in chosen) for name in self.accordions]
