"""Per-model method defaults and the toy model's photo notice, through the app's API (gradio_client
against an app launched on 127.0.0.1, as in test_app.py) and its knob callbacks. The tuned/plain
folders and their app come from conftest (defaults_folders, defaults_app), shared with the browser test."""

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.models import TOY_MODEL_DIR, load_model
from halviz.trace import Trace
from halviz.session.escaping import markdown_text

EXAMPLES = Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples"
PHOTO = EXAMPLES / "coffee.jpg"
TOY_SCENE = EXAMPLES / "toy-cup-no-spoon.png"
PROMPT = "Describe the picture."
STORED = {"prunehal": {"r": 0.8, "t": 2}, "vasparse": {"alpha": 1.0}}
PAPER = {"prunehal": {"r": 0.4, "t": 3}, "vasparse": {"alpha": 0.1}}


@pytest.fixture(scope="module")
def folders(defaults_folders):
    """(tuned, plain): conftest's one tiny checkpoint, with and without a method_defaults.json."""
    assert defaults_folders.stored == STORED  # what this module's expectations are written against
    return defaults_folders.tuned, defaults_folders.plain


@pytest.fixture(scope="module")
def client(defaults_app):
    """The app offering both folders, the tuned one first; shared with test_browser_defaults."""
    return Client(defaults_app[1], verbose=False)


def compare(client, model, methods, settings="", image=PHOTO, tokens=3):
    return client.predict(handle_file(str(image)), PROMPT, list(methods), tokens, "cup", model, settings,
                          api_name="/compare")


def ran_with(outputs) -> dict[str, dict]:
    """The knob values each column's method ran with, read from the trace files the run returned."""
    params = {}
    for path in (f for f in outputs[-2] if f.endswith(".npz")):
        for described in Trace.load(path).meta["methods"]:
            params[described["name"]] = described["params"]
    return params


def test_compare_api_runs_with_the_models_stored_defaults(client, folders):
    tuned, plain = folders
    outputs = compare(client, tuned, ["prunehal", "vasparse"])
    params = ran_with(outputs)
    for method, knobs in STORED.items():
        assert {k: params[method][k] for k in knobs} == knobs
    # The captions are those of a decode built by hand with exactly these knob values.
    loaded = load_model(tuned)
    for method in STORED:
        expected = Decoder(loaded, Image.open(PHOTO), PROMPT, build_stack([method], STORED), 3).run_to_end()
        assert outputs[-1][method]["caption"] == expected.caption
    # A model without the file (like every hub model) runs the papers' defaults.
    params = ran_with(compare(client, plain, ["prunehal", "vasparse"]))
    for method, knobs in PAPER.items():
        assert {k: params[method][k] for k in knobs} == knobs
    assert METHODS["prunehal"](**{}).params["r"] == PAPER["prunehal"]["r"]  # the papers' values, as declared


def test_explicit_settings_override_the_model_defaults_knob_by_knob(client, folders):
    tuned, plain = folders
    params = ran_with(compare(client, tuned, ["prunehal"], json.dumps({"prunehal": {"t": 1}})))
    assert params["prunehal"]["t"] == 1 and params["prunehal"]["r"] == STORED["prunehal"]["r"]
    params = ran_with(compare(client, plain, ["prunehal"], json.dumps({"prunehal": {"t": 1}})))
    assert params["prunehal"]["t"] == 1 and params["prunehal"]["r"] == PAPER["prunehal"]["r"]


def components_by(config: dict, **match) -> list[dict]:
    return [c for c in config["components"] if all(c.get("props", {}).get(k) == v for k, v in match.items())]


def test_the_page_marks_the_models_defaults_with_the_paper_values(client):
    config = client.config  # the page's own configuration, as the browser receives it
    (ratio,) = components_by(config, label="Keep ratio r")
    assert ratio["props"]["value"] == 0.8
    assert "default for this model: 0.8" in ratio["props"]["info"] and "paper default: 0.4" in ratio["props"]["info"]
    (forced,) = components_by(config, label="Forced prune at step")  # not stored: the paper's, unmarked
    assert forced["props"]["value"] == 2 and "default for this model" not in (forced["props"]["info"] or "")
    (note,) = components_by(config, elem_id="hv-defaults-prunehal")
    assert "Defaults for this model" in note["props"]["value"] and "paper 0.4" in note["props"]["value"]
    assert "a hand\\-written test value" in note["props"]["value"]


def test_switching_models_moves_untouched_knobs_and_keeps_the_users(folders, client):
    """The picker's callback: untouched knobs follow the new model's defaults, a value the user set stays,
    and the settings the page then sends hold only the user's values, which /compare completes."""
    from halviz.ui.app import _layout
    from halviz.ui.controller import Controller, HalvizApp

    tuned, plain = folders
    app = HalvizApp([tuned, plain], tuned, load_model, [], METHODS, allow_local=True)
    with gr.Blocks():
        controller = Controller(app, _layout(app))
    ui = controller.ui
    knobs = ui.knobs
    shown = ui.knob_defaults.value
    values = [c.value for _, _, c in knobs.components]
    assert knobs.settings_json(shown, *values) == ""  # nothing set: the server fills in the model's defaults
    where = {(m, k): i for i, (m, k, _) in enumerate(knobs.components)}
    values[where["prunehal", "t"]] = 1  # the user sets t; r stays at this model's 0.8
    updates = controller.knobs_for_model(plain, shown, *values)
    new_shown, components = updates[0], updates[1 + len(knobs.notes):]
    assert components[where["prunehal", "r"]]["value"] == PAPER["prunehal"]["r"]
    assert components[where["vasparse", "alpha"]]["value"] == PAPER["vasparse"]["alpha"]
    assert "value" not in components[where["prunehal", "t"]]  # the user's value is left alone
    assert "default for this model" not in (components[where["prunehal", "r"]]["info"] or "")
    values[where["prunehal", "r"]] = components[where["prunehal", "r"]]["value"]
    values[where["vasparse", "alpha"]] = components[where["vasparse", "alpha"]]["value"]
    settings = knobs.settings_json(new_shown, *values)
    assert json.loads(settings) == {"prunehal": {"t": 1}}
    params = ran_with(compare(client, plain, ["prunehal"], settings))
    assert params["prunehal"]["t"] == 1 and params["prunehal"]["r"] == PAPER["prunehal"]["r"]
    # And back: untouched knobs return to the stored values, marked.
    back = controller.knobs_for_model(tuned, new_shown, *values)[1 + len(knobs.notes):]
    assert back[where["prunehal", "r"]]["value"] == STORED["prunehal"]["r"]
    assert "default for this model: 0.8" in back[where["prunehal", "r"]]["info"]
    # A name the app refuses shows the papers' defaults rather than an error.
    refused = controller.knobs_for_model("/nowhere/at/all", new_shown, *values)
    assert refused[0]["prunehal"]["r"] == PAPER["prunehal"]["r"]


# ---- the toy model and photos ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_client(serve):
    if not (TOY_MODEL_DIR / "config.json").is_file():
        pytest.skip("the bundled toy model is missing")
    with serve(models=["toy", "llava-hf/llava-interleave-qwen-0.5b-hf"], default_model="toy", update_every_s=0,
               allow_local=True) as (_, url):
        yield Client(url, verbose=False)


def test_a_photo_given_to_the_toy_model_gets_a_notice_and_still_runs(toy_client):
    outputs = compare(toy_client, "toy", ["vanilla"], image=PHOTO, tokens=2)
    status = outputs[0]
    assert "not a toy scene" in status and "glyph world" in status
    assert markdown_text("llava-hf/llava-interleave-qwen-0.5b-hf") in status  # the real model the app offers
    assert outputs[-1]["vanilla"]["tokens"] == 2 and status.startswith("✓ Done")
    scene = compare(toy_client, "toy", ["vanilla"], image=TOY_SCENE, tokens=2)
    assert "not a toy scene" not in scene[0] and scene[0].startswith("✓ Done")


def test_the_toy_models_stored_defaults_reach_its_runs(toy_client):
    record = json.loads((TOY_MODEL_DIR / "method_defaults.json").read_text()) \
        if (TOY_MODEL_DIR / "method_defaults.json").is_file() else {"methods": {}}
    stored = record["methods"].get("vasparse", {})
    params = ran_with(compare(toy_client, "toy", ["vasparse"], image=TOY_SCENE, tokens=2))["vasparse"]
    expected = {k.name: stored.get(k.name, k.default) for k in METHODS["vasparse"].knobs}
    assert {k: params[k] for k in expected} == expected


def test_defaults_chosen_on_other_weights_are_flagged(folders, tmp_path):
    from halviz.methods.defaults import weights_sha256
    from halviz.ui.knobs import defaults_note
    from halviz.session.model_defaults import model_defaults

    tuned, _ = folders
    copy = shutil.copytree(tuned, tmp_path / "copy")
    record = json.loads((copy / "method_defaults.json").read_text())
    for fingerprint, stale in ((weights_sha256(copy), False), ("0" * 64, True)):
        record["model_sha256"] = fingerprint
        (copy / "method_defaults.json").write_text(json.dumps(record))
        defaults = model_defaults(str(copy), METHODS)
        assert defaults.values == STORED and defaults.stale is stale
        assert ("other weights" in defaults_note(METHODS["prunehal"], defaults)) is stale
