"""The Resolution control: the image-token budget, chosen beside the model, with the image tokens and
grid the picture will get, updated before Compare. Gradio wiring only; what a family offers and what
an upload becomes live in :mod:`halviz.session.resolution`.

The dropdown rides in the settings JSON as ``{"image": {"budget": ...}}`` (a knob of the pseudo-method
``image`` in :class:`halviz.ui.knobs.MethodSettings`), so ``/compare`` needs no new input; its empty
value means the device's default and adds nothing to the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from halviz.models.loading import default_device
from halviz.session import resolution
from halviz.session.resolution import SETTINGS_KEY
from halviz.ui.errors import user_errors

DEVICE_DEFAULT = ""  # the dropdown's value for "the device's default"


def choices(key: str) -> list[tuple[str, str]]:
    """The dropdown's (label, value) pairs for model ``key``: the device's default first."""
    family = resolution.family_for_key(key) if key else None
    device = default_device().type
    default = resolution.resolve_budget(family, None, device) if family is not None else "default"
    return [(f"default on this {device.upper()} ({default})", DEVICE_DEFAULT), *resolution.budget_choices(family)]


@dataclass
class ResolutionControl:
    dropdown: gr.Dropdown
    note: gr.Markdown

    @property
    def knob(self) -> tuple[str, str, gr.Dropdown]:
        """The dropdown as a knob of the settings JSON (``MethodSettings.components``)."""
        return SETTINGS_KEY, "budget", self.dropdown

    @classmethod
    def build(cls, app, image: gr.Image, model: gr.Dropdown) -> "ResolutionControl":
        dropdown = gr.Dropdown(choices=choices(app.default_model), value=DEVICE_DEFAULT, label="Resolution",
                               info="image tokens the picture becomes (fewer: faster, coarser)",
                               elem_id="hv-resolution")
        note = gr.Markdown(elem_classes=["hv-note"], elem_id="hv-resolution-note", latex_delimiters=[])
        control = cls(dropdown, note)
        previews = resolution.Previews()

        def describe(picture, name, budget) -> str:
            return preview(app, previews, picture, name, budget)

        for event in (image.change, model.change, dropdown.change):
            event(user_errors(describe), inputs=[image, model, dropdown], outputs=note, queue=False,
                  api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        return control


def preview(app, previews: resolution.Previews, picture, name, budget) -> str:
    """The note's text: the tokens and grid ``picture`` gets at ``budget`` on model ``name``."""
    try:
        key = app.policy.check(name, app.default_model)
    except Exception:  # noqa: BLE001 - a refused model name: Compare says why
        return ""
    family = previews.family(key, app.cache.peek(key))
    size = None
    path = picture.get("path") if isinstance(picture, dict) else picture
    if isinstance(path, str) and path:
        try:
            with Image.open(path) as opened:
                size = opened.size
        except Exception:  # noqa: BLE001 - an unreadable picture: Compare says why
            size = None
    return resolution.preview_text(family, size, budget or None, default_device().type)


def for_model(key: str):
    """The dropdown's update when the model changes: that model's budgets, back to the device's default."""
    return gr.update(choices=choices(key), value=DEVICE_DEFAULT)
