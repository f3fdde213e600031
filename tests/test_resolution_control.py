"""The Resolution control's wiring without a browser: its choices per model, its place in the settings
JSON that /compare reads (and the service's reading of it), and its note before Compare."""

import json

import gradio as gr

from halviz.methods import REGISTRY
from halviz.session.examples import EXAMPLES_DIR
from halviz.session.model_defaults import ModelDefaults
from halviz.session.resolution import budget_from_settings
from halviz.session.checks import parse_settings
from halviz.ui import resolution as control
from halviz.ui.knobs import MethodSettings

SMOL = "HuggingFaceTB/SmolVLM-256M-Instruct"


def test_choices_follow_the_model_and_start_at_the_device_default():
    assert [v for _, v in control.choices(SMOL)] == ["", "global", "2x2", "3x3", "default"]
    assert control.choices(SMOL)[0][0] == "default on this CPU (global)"
    toy = control.choices("toy")
    assert [v for _, v in toy] == ["", "default"] and "fixed" in toy[1][0]
    update = control.for_model(SMOL)
    assert update["value"] == "" and [v for _, v in update["choices"]][1] == "global"


def test_the_budget_rides_in_the_settings_json_and_the_service_reads_it_back():
    with gr.Blocks():
        knobs = MethodSettings.build(REGISTRY, ["vanilla"], ModelDefaults())
        dropdown = gr.Dropdown(choices=control.choices(SMOL), value="")
    knobs.components.append(("image", "budget", dropdown))
    shown = ModelDefaults().shown(REGISTRY)
    values = [shown[m][k] for m, k, _ in knobs.components[:-1]]
    assert knobs.settings_json(shown, *values, "") == ""  # the device's default adds nothing
    text = knobs.settings_json(shown, *values, "2x2")
    assert json.loads(text) == {"image": {"budget": "2x2"}}
    parsed = parse_settings(text)
    assert budget_from_settings(parsed) == "2x2" and parsed == {}
    updates = knobs.for_model(ModelDefaults(SMOL), shown, *values, "2x2")
    assert updates[-1]["value"] == "" and len(updates) == 1 + len(knobs.notes) + len(knobs.components)


def test_the_note_gives_the_pictures_tokens_and_grid_before_compare():
    class App:  # what preview reads of the app: its policy and its model cache
        default_model = "toy"

        class policy:
            @staticmethod
            def check(name, default):
                return name or default

        class cache:
            @staticmethod
            def peek(key):
                return None

    previews = control.resolution.Previews()
    photo = str(next(EXAMPLES_DIR.glob("*.jpg")))
    text = control.preview(App, previews, photo, SMOL, "")
    assert text.startswith("**64 image tokens, 8 × 8 grid** at **global** (the default on this CPU)")
    assert "image tokens, grids global 8 × 8 + tiles" in control.preview(App, previews, {"path": photo}, SMOL, "3x3")
    assert "Add a picture" in control.preview(App, previews, None, SMOL, "")
