"""Issue 28 (B5): layer, head and patch knobs are checked against the loaded model (and the image's grid)
before decoding; a knob outside it, or a layer range that selects nothing, is refused with one sentence,
never "error: ValueError: …" in the column or a silent no-op."""

import json

import pytest

from tools.hostile import looks_like_python
from halviz.methods import REGISTRY
from halviz.session.examples import EXAMPLES_DIR
from halviz.session.knob_geometry import Geometry, knob_problem

SCENE = str(EXAMPLES_DIR / "toy-cup-no-spoon.png")
TOY = Geometry(layers=6, heads=6, grid=(8, 8))

REFUSED = [  # method, knob values, what the sentence says
    ("remove_sink", {"first_layer": 7}, "This model has layers 0–5; the first layer 7 is past the last"),
    ("remove_sink", {"first_layer": 4, "last_layer": 2}, "the first layer 4 comes after the last layer 2"),
    ("remove_sink", {"last_layer": 9}, "the last layer 9 is past the last"),
    ("remove_sink", {"first_layer": 5, "last_layer": -3}, "comes after the last layer 3 (-3 counts from the end)"),
    ("mask_patches", {"first_layer": 6}, "This model has layers 0–5"),
    ("mask_patches", {"first_row": 8}, "This image's grid has rows 0–7; the first row 8 is past the last"),
    ("mask_patches", {"last_col": 12}, "the last column 12 is past the last"),
    ("mask_patches", {"patches": "1:1,9:0"}, "Patch 9:0 is outside this image's 8×8 grid"),
    ("scale_heads", {"head": 1023}, "This model has heads 0–5; head 1023 is not one of them"),
    ("scale_heads", {"first_layer": 6}, "the first layer 6 is past the last"),
    ("scale_heads", {"heads": "0:1,6:0,2:9"}, "Heads 2:9, 6:0 are not in this model (layers 0–5, heads 0–5)"),
    ("var", {"first_layer": 5}, "the first layer 5 comes after the last layer 4"),
    ("var", {"last_layer": -7}, "the last layer -7 counts back past layer 0"),
    ("vasparse", {"first_layer": 6}, "the first layer 6 is past the last"),
    ("vhr", {"last_layers": 7}, "This model has 6 layers; Last layers 7 asks for more"),
    ("vhr", {"last_layers": 0}, "0 scales no head"),
    ("cai", {"start_layer": 5}, "the start layer 5 leaves no later layer to tilt: set it to at most 4"),
]


def params(name: str, values: dict) -> dict:
    return {**{k.name: k.default for k in REGISTRY[name].knobs}, **values}


@pytest.mark.parametrize("name, values, sentence", REFUSED)
def test_knobs_outside_the_model_are_named(name, values, sentence):
    assert sentence in (knob_problem(name, params(name, values), TOY) or "")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_methods_defaults_fit_the_toy_model(name):
    assert knob_problem(name, params(name, {}), TOY) is None


def test_ranges_that_fit_are_accepted():
    for name, values in [("remove_sink", {"first_layer": 5}), ("remove_sink", {"first_layer": 0, "last_layer": -6}),
                         ("mask_patches", {"first_row": 7, "last_row": -1, "patches": ""}),
                         ("mask_patches", {"patches": "7:7"}), ("scale_heads", {"head": -1}),
                         ("scale_heads", {"heads": "5:5", "head": 1023}),  # the list wins: head is not used
                         ("vasparse", {"first_layer": 5}), ("vhr", {"last_layers": 6}), ("var", {"first_layer": 4}),
                         ("cai", {"start_layer": 4})]:
        assert knob_problem(name, params(name, values), TOY) is None, (name, values)


def refusal(ctl, gr, method: str, knobs: dict) -> tuple[str, str]:
    """(the status line, the error's text) of a comparison with these knob values on the toy model."""
    updates = ctl.compare(SCENE, "Describe the image.", ["vanilla", method], 3, "", "toy",
                          json.dumps({method: knobs}), {})
    statuses = []
    with pytest.raises(gr.Error) as failure:
        for update in updates:
            statuses.append(update.get(ctl.ui.status, ""))
    return statuses[-1].replace("\\", ""), str(failure.value)  # the status line is Markdown-escaped


@pytest.mark.parametrize("method, knobs, sentence", [
    ("remove_sink", {"first_layer": 9}, "This model has layers 0–5; the first layer 9 is past the last"),
    ("scale_heads", {"head": 1023}, "This model has heads 0–5; head 1023 is not one of them"),
    ("mask_patches", {"first_row": 1000}, "the first row 1000 is past the last"),
    ("mask_patches", {"patches": "0:0,900:900"}, "Patch 900:900 is outside this image's"),
    ("vhr", {"last_layers": 40}, "This model has 6 layers; Last layers 40 asks for more"),
    ("var", {"first_layer": 5, "last_layer": -2}, "comes after the last layer 4"),
    ("vasparse", {"first_layer": 200}, "the first layer 200 is past the last"),
])
def test_the_comparison_refuses_before_decoding(controller, method, knobs, sentence):
    ctl, gr = controller
    status, error = refusal(ctl, gr, method, knobs)
    assert sentence in status and sentence in error
    assert status.startswith("✗") and not looks_like_python(error) and "ValueError" not in status


def test_knobs_that_fit_still_run(controller):
    ctl, _ = controller
    last = None
    for last in ctl.compare(SCENE, "Describe the image.", ["remove_sink", "mask_patches"], 2, "", "toy",
                            json.dumps({"remove_sink": {"first_layer": 5}, "mask_patches": {"patches": "0:0"}}), {}):
        pass
    assert last[ctl.ui.status].startswith("✓ Done")
