"""docs/adding-a-method.md's example runs as written: its method decodes the toy model with the edit
the page describes, and its panel appears in the debugger through the registry alone."""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def doc_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """The page's two Python blocks as modules: the method and its panel."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, "the page has one method block and one panel block"
    made = []
    for name, code in zip(("doc_image_temperature", "doc_image_temperature_panel"), blocks):
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(code, f"{DOC.name}:{name}", "exec"), module.__dict__)
        made.append(module)
    return made[0], made[1]


@pytest.fixture(scope="module")
def example():
    method, panel = doc_modules()
    yield method.ImageTemperature, panel.PANEL
    sys.modules.pop("doc_image_temperature", None)
    sys.modules.pop("doc_image_temperature_panel", None)


def test_the_edit_divides_only_the_texts_logits_to_the_image(example):
    cls, _ = example
    method = cls(temperature=4.0)
    column = types.SimpleNamespace(image_index=torch.tensor([1, 2]))
    method.setup(column)
    scores = torch.arange(2 * 1 * 5 * 5, dtype=torch.float64).reshape(2, 1, 5, 5)  # rows, heads, q, kv
    p = types.SimpleNamespace(main_layout=[1])
    edited = method.edit_scores(p, 3, scores, None)
    expected = scores.clone()
    expected[1, :, 3:, 1:3] /= 4.0  # queries 3 and 4 read after the image (positions 1-2); row 0 untouched
    torch.testing.assert_close(edited, expected)


def test_the_example_decodes_and_its_panel_is_drawn(example, toy, monkeypatch):
    import gradio as gr

    from halviz.engine.decode import Decoder
    from halviz.session.state import RunEntry
    from halviz.ui import debugger
    from halviz.viz.panels import PANELS

    cls, panel = example
    picture = Image.open(Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples" / "toy-knife-no-fork.png")
    plain = Decoder(toy, picture.convert("RGB"), "Describe the image.", [], 8).run_to_end()
    same = Decoder(toy, picture.convert("RGB"), "Describe the image.", [cls(temperature=1.0)], 8).run_to_end()
    assert same.caption == plain.caption  # T = 1 changes nothing
    hot = Decoder(toy, picture.convert("RGB"), "Describe the image.", [cls(temperature=8.0)], 8).run_to_end()
    shares = hot.arrays["method/image_temperature/image_share"]
    assert len(shares) >= 1 and np.all((shares >= 0) & (shares <= 1))
    monkeypatch.setattr(debugger, "PANELS", (*PANELS, panel))
    with gr.Blocks():
        built = debugger.DebuggerPanel.build()
    box = built.method_box("image_temperature")
    runs = {"hot": RunEntry("hot", "Image temperature", hot, None, None),
            "plain": RunEntry("plain", "Greedy", plain, None, None)}
    shown = built.show(runs, "hot", 1)
    assert shown[box.box].visible is True and "step 1 in blue" in str(shown[box.plot("hv-image-temperature")].value)
    assert built.show(runs, "plain")[box.box].visible is False
