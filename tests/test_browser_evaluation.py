"""Issue 26 in a real browser (Debian's chromium via Playwright, the bundled toy model): a toy
evaluation with saved traces opens in the Evaluation view, its table shows the intervals and p-values,
and a click on a "fixed by VCD" sample shows that image's two columns (the baseline's and VCD's) with
the debugger below. Screenshots at 1024 and 1440 px go to screenshots/ (git-ignored)."""

import os
from pathlib import Path

import pytest

from halviz import eval as heval
from halviz.evaluation.results import Results
from halviz.session.results_folders import RESULTS_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "screenshots"
# 12 toy scenes, 24 tokens: vanilla names a cup on heldout-8 that is not there, VCD does not
EVAL = ["--model", "toy", "--methods", "vanilla,vcd", "--num-images", "12", "--max-new-tokens", "24",
        "--benchmarks", "chair", "--bootstrap", "50", "--no-progress", "--save-traces"]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    assert heval.main([*EVAL, "--out", str(root / "toy-vcd")]) == 0
    return root


@pytest.fixture(scope="module")
def app_url(serve, results_dir):
    from halviz.models import TOY_MODEL_DIR

    if not (TOY_MODEL_DIR / "config.json").is_file():
        pytest.skip("the bundled toy model is not there")
    before = os.environ.get(RESULTS_DIR_ENV)
    os.environ[RESULTS_DIR_ENV] = str(results_dir)  # what `halviz app --results-dir` sets
    try:
        with serve(models=["toy"], default_model="toy") as (_, url):
            yield url
    finally:
        if before is None:
            os.environ.pop(RESULTS_DIR_ENV, None)
        else:
            os.environ[RESULTS_DIR_ENV] = before


def test_a_fixed_by_vcd_sample_opens_as_its_two_columns(app_url, open_page, results_dir):
    fixed = Results.load(results_dir / "toy-vcd").discordant("vcd", "fixed", "chair")
    assert fixed, "these settings give a sample VCD fixes"
    pair = fixed[0]
    with open_page(app_url) as page:
        page.locator("#hv-eval").get_by_text("Evaluation: open a results folder").click()
        page.click("#hv-eval-open")  # the one listed folder is chosen already
        page.wait_for_selector("#hv-eval-table table", timeout=60_000)
        table = page.locator("#hv-eval-table").inner_text()
        assert "CHAIR" in table and "[" in table and "vcd" in table  # values with their intervals, and p
        page.wait_for_selector(f"#hv-eval-status:has-text('{len(fixed)} sample(s) fixed by vcd')", timeout=30_000)
        cell = page.locator("#hv-eval-samples [role=gridcell]").filter(has_text=pair.sample_id).first
        cell.wait_for(timeout=30_000)
        cell.click()
        page.wait_for_selector("#hv-status:has-text('Opened')", timeout=60_000)
        for column, line in ((0, pair.baseline), (1, pair.other)):
            caption = page.locator(f"#hv-caption-{column}")
            assert caption.is_visible()
            assert " ".join(caption.inner_text().split()) == " ".join(line["caption"].split())
        assert not page.locator("#hv-caption-2").is_visible()
        assert page.locator("#hv-debugger-body").is_visible()
        assert page.locator(".toast-body.error").count() == 0
        for width in (1024, 1440):
            page.set_viewport_size({"width": width, "height": 1000})
            page.wait_for_timeout(600)
            SCREENSHOTS.mkdir(exist_ok=True)
            page.locator("#hv-eval").screenshot(path=str(SCREENSHOTS / f"evaluation-{width}.png"))
            page.locator("#hv-columns").screenshot(path=str(SCREENSHOTS / f"evaluation-columns-{width}.png"))
