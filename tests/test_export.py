"""halviz.export writes valid PNG, SVG and PDF files of the size asked for, says what is missing when
it cannot, and docs/api.md lists every debugger panel function with its real argument order."""

import importlib
import inspect
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

import halviz
from halviz.trace import Trace
from halviz.viz import image_files

ROOT = Path(__file__).resolve().parents[1]
needs_browser = pytest.mark.skipif(
    importlib.util.find_spec("kaleido") is None or image_files.find_browser() is None,
    reason="figure export needs kaleido and a Chrome/Chromium (tests/run.sh installs both)")


def small_figure() -> go.Figure:
    fig = go.Figure(go.Heatmap(z=np.arange(12).reshape(3, 4)))
    fig.update_layout(title="a heatmap", height=300)
    return fig


@needs_browser
def test_png_svg_and_pdf_are_valid_files_of_the_size_asked_for(tmp_path):
    fig = small_figure()
    png = halviz.export(fig, tmp_path / "figure.png", width=420, height=260, scale=2)
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (840, 520)
        assert len(set(image.convert("RGB").getdata())) > 10  # something was drawn, not a blank page
    svg = halviz.export(fig, tmp_path / "figure.svg", width=420, height=260)
    root = ElementTree.parse(svg).getroot()
    assert root.tag.endswith("svg") and (float(root.get("width")), float(root.get("height"))) == (420, 260)
    pdf = halviz.export(fig, tmp_path / "sub" / "figure.PDF")  # the figure's own height, plotly's width
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:]
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    width, height = image_files.figure_size(fig)  # CSS pixels at 96 per inch; a PDF counts 72 points per inch
    assert box and (round(float(box[1])), round(float(box[2]))) == (round(width * 0.75), round(height * 0.75))


@needs_browser
def test_a_panel_of_a_real_trace_exports(tmp_path, toy):
    comparison = halviz.compare(ROOT / "halviz" / "assets" / "examples" / "toy-knife-no-fork.png", model=toy, max_new_tokens=6)
    fig = halviz.viz.entropy_figure(comparison["vanilla"].trace, layer="mean", step=2)
    path = halviz.export(fig, tmp_path / "entropy.png")
    with Image.open(path) as image:
        assert image.size == image_files.figure_size(fig)


def test_without_a_browser_the_error_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("kaleido")
    monkeypatch.setattr(image_files, "find_browser", lambda: None)
    with pytest.raises(image_files.ExportError, match="Chrome or Chromium.*apt-get install chromium.*BROWSER_PATH"):
        halviz.export(small_figure(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_suffix_chooses_the_format_and_a_figure_is_required(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        halviz.export(small_figure(), tmp_path / "figure.jpg")
    with pytest.raises(TypeError, match="nothing to draw"):
        halviz.export(None, tmp_path / "figure.png")


def test_find_browser_prefers_browser_path(tmp_path, monkeypatch):
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert image_files.find_browser() == str(fake)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "missing"))
    assert image_files.find_browser() != str(tmp_path / "missing")


def test_the_api_docs_list_each_panel_function_with_its_argument_order():
    rows = re.findall(r"^\| [^|]+ \| `(halviz\.viz[\w.]*)\.(\w+)` \| `([^`]*)` \|$",
                      (ROOT / "docs" / "api.md").read_text(), flags=re.M)
    assert len(rows) >= 20, rows
    for module, name, arguments in rows:
        function = getattr(importlib.import_module(module), name)
        documented = [a.strip() for a in arguments.split(",")]
        assert documented == list(inspect.signature(function).parameters), (module, name)
    drawn = {"attention_overlay", "candidates_figure", "entropy_figure", "segment_share_figure", "top_keys_figure"}
    assert drawn <= {name for _, name, _ in rows}
    for panel in importlib.import_module("halviz.viz.panels").PANELS:  # every method panel's functions
        for figure in panel.figures:
            inner = getattr(figure.draw, "__name__", "")
            assert inner == "<lambda>" or inner in {name for _, name, _ in rows} or inner.startswith("_"), inner


def test_export_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, halviz; halviz.export; "
            "assert 'torch' not in sys.modules and 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_a_trace_type_is_reexported():
    assert halviz.Trace is Trace



@needs_browser
def test_the_page_saves_a_steps_figures_as_valid_images_of_the_drawn_size(controller, tmp_path):
    """The debugger's "Save figures" callback: one zip holding every figure the page draws at that step
    and layer, each a valid image at the size the page draws it; SVG as asked; a stale zip is hidden."""
    import zipfile

    from conftest import run_greedy
    from halviz.ui.errors import file_paths
    from halviz.viz import lens
    from halviz.viz.step_view import step_figures

    controller, gr = controller
    runs = run_greedy(controller, tokens=4)
    panel = controller.ui.panel
    update = controller.save_figures(runs, "vanilla", 2, "1", "mean", "primary", "png")[panel.figure_files]
    (archive,) = file_paths(update.value)
    assert update.visible and controller.app.files.owns(archive)
    expected = {name: fig for name, fig in step_figures(runs["vanilla"].trace, 2, 1).items() if fig is not None}
    assert {"overlay", "candidates", "entropy", "shares", "top_keys"} <= set(expected)  # greedy has no mask
    trace = runs["vanilla"].trace  # the logit lens too, as the page draws it (no other column: alone)
    expected.update(lens=lens.lens_heatmap_figure(trace, 2, None, ("Greedy", "")),
                    lens_words=lens.lens_words_figure(trace, 2, None, ("Greedy", "")))
    with zipfile.ZipFile(archive) as files:
        assert len(files.namelist()) == len(expected)
        for name, fig in expected.items():
            (member,) = [m for m in files.namelist() if m.endswith(f"-step2-{name}.png")]
            files.extract(member, tmp_path)
            with Image.open(tmp_path / member) as image:
                image.verify()
            with Image.open(tmp_path / member) as image:
                assert image.format == "PNG" and image.size == image_files.figure_size(fig)
    (archive,) = file_paths(controller.save_figures(runs, "vanilla", 2, "1", "mean", "primary", "svg")[panel.figure_files].value)
    with zipfile.ZipFile(archive) as files:
        assert len(files.namelist()) == len(expected)
        assert all(ElementTree.fromstring(files.read(m)).tag.endswith("svg") for m in files.namelist())
    # Moving the step hides the zip: a file on the page is always of the view shown.
    assert panel.at_step(runs, "vanilla", 3, "1", "mean")[panel.figure_files].visible is False
    with pytest.raises(gr.Error, match="first"):
        controller.save_figures({}, None, 2, "1", "mean", "primary", "png")


def test_a_format_the_page_does_not_offer_is_one_sentence(tmp_path):
    from halviz.session.checks import InputError
    from halviz.session.figure_files import write_step_figures

    with pytest.raises(InputError, match="Figures are saved as PNG, SVG, PDF, not 'gif'"):
        write_step_figures(None, 0, "mean", "mean", fmt="GIF", folder=tmp_path)  # checked before any drawing
    assert list(tmp_path.iterdir()) == []
