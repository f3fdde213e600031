"""The page in a real browser (Debian's chromium via Playwright): pick an example, compare two
methods, move the step slider and see the heatmap change, no error toast, a non-blank screenshot.

Set HALVIZ_README_SCREENSHOT=1 to also write assets/screenshot.png for the README.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "screenshots"  # git-ignored
# The browser (one chromium shared with test_browser_defaults) and its page come from conftest's
# open_page, which skips these tests without Playwright or Debian's chromium.


def toy_model_ready() -> bool:
    from halviz.models import TOY_MODEL_DIR

    return (TOY_MODEL_DIR / "config.json").is_file()


@pytest.fixture(scope="module")
def app_url(tiny_model_dirs, serve):
    # The bundled toy model when it is there (its captions mean something), else a tiny random one.
    model = "toy" if toy_model_ready() else str(tiny_model_dirs["llava-1.5"])
    with serve(models=[model], default_model=model) as (_, url):
        yield url


@pytest.fixture(scope="module")
def page(app_url, open_page):
    with open_page(app_url) as page:
        yield page


def click_example(page, index: int) -> None:
    """Click the ``index``-th example (a table row: its picture beside its name)."""
    page.locator("#hv-examples tbody tr").nth(index).click()


def overlay_title_starts(text: str) -> str:
    """A wait_for_function expression: the heatmap's title starts with ``text``."""
    return ("(() => { const t = document.querySelector('#hv-overlay .gtitle');"
            f" return !!t && t.textContent.startsWith('{text}'); }})()")


def heatmap_values(page) -> list:
    """The z values of the attention heatmap, read from plotly's own figure object in the page."""
    return page.evaluate("""() => {
        const plot = document.querySelector('#hv-overlay .js-plotly-plot');
        const heat = plot && plot.data.find(t => t.type === 'heatmap');
        return heat ? heat.z : null;
    }""")


def test_compare_two_methods_and_scrub_the_steps(page, tmp_path):
    # Pick an example: its object list fills the ground-truth box (toy: cup without spoon; else the coffee photo).
    index, expected = (2, "cup") if toy_model_ready() else (5, "cup")
    click_example(page, index)
    page.wait_for_function(f"document.querySelector('#hv-truth textarea').value.includes('{expected}')")
    page.wait_for_selector("text=trust:")
    checked = page.locator("#hv-methods input[type=checkbox]:checked")
    assert checked.count() == 2  # Greedy and PruneHal by default; compare Greedy with VHR instead
    page.locator("#hv-methods label").filter(has_text="PruneHal").click()
    page.locator("#hv-methods label").filter(has_text="VHR").click()
    page.wait_for_timeout(300)
    assert checked.count() == 2
    page.click("#hv-run")
    page.wait_for_selector("#hv-status:has-text('Done')", timeout=180_000)
    for column in (0, 1):
        assert page.locator(f"#hv-caption-{column}").inner_text().strip(), f"caption {column} is empty"
        assert "tokens" in page.locator(f"#hv-summary-{column}").inner_text()
    page.wait_for_selector("#hv-overlay .js-plotly-plot", timeout=60_000)
    before = heatmap_values(page)
    assert before is not None

    # Move the step slider with the keyboard, as a person would.
    slider = page.locator("#hv-step input[type=range]")
    slider.focus()
    for _ in range(3):
        slider.press("ArrowRight")
    page.wait_for_function(overlay_title_starts("Step 3"), timeout=60_000)
    after = heatmap_values(page)
    assert after != before, "the heatmap did not change with the step"

    # Clicking a caption token jumps to its step.
    page.locator("#hv-debug-caption .token").nth(1).click()
    page.wait_for_function(overlay_title_starts("Step 1"), timeout=60_000)

    # The logit lens at that step (issue 29): layers x steps beside the other column, and each layer's top
    # words by name, the last layer's first one being the word Greedy wrote.
    page.wait_for_function("(() => { const t = document.querySelector('#hv-lens .gtitle');"
                           " return !!t && t.textContent.startsWith('Logit lens') && t.textContent.includes('step 1'); })()",
                           timeout=60_000)
    words = page.evaluate("() => document.querySelector('#hv-lens-words .js-plotly-plot').data[0].customdata")
    written = page.locator("#hv-debug-caption .token").nth(1).inner_text().strip()
    assert words[-1][0].strip() == written, (words[-1], written)

    assert page.locator(".toast-body.error").count() == 0, "an error toast is shown"
    if os.environ.get("HALVIZ_README_SCREENSHOT"):
        readme_screenshot(page)
    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot looks blank"


def test_replay_an_uploaded_trace(page, tmp_path, tiny_model_dirs):
    from halviz.engine.decode import Decoder
    from halviz.models import load_model

    from halviz.methods.cai import CAI

    loaded = load_model(str(tiny_model_dirs["llava-1.5"]))
    # A CAI column (issue 29's method added the new way): its panel appears from the registry alone.
    trace = Decoder(loaded, Image.new("RGB", (64, 48), "gray"), "Describe.", [CAI()], 4).run_to_end()
    npz, _ = trace.save(tmp_path / "replayed")
    page.set_input_files("#hv-trace-upload input[type=file]", str(npz))
    page.wait_for_selector("#hv-trace-choice label:has-text('uploaded: replayed.npz')", timeout=60_000)
    page.wait_for_function(overlay_title_starts("Step 0"), timeout=60_000)
    page.wait_for_selector("#hv-cai-box", state="visible", timeout=60_000)
    page.wait_for_function("(() => { const t = document.querySelector('#hv-cai-gate .gtitle');"
                           " return !!t && t.textContent.length > 0; })()", timeout=60_000)
    shoot_element(page, "cai-panel", "#hv-cai-box")
    assert page.locator(".toast-body.error").count() == 0
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    page.set_input_files("#hv-trace-upload input[type=file]", str(bad))
    page.wait_for_selector(".toast-body.error:has-text('Could not open the trace')", timeout=60_000)


def readme_screenshot(page) -> None:
    """For the README, on the toy model: the knife scene (no fork in it), Greedy beside "Remove sink",
    the debugger at the step that names the fork, and the attention-sink panel below it."""
    click_example(page, 1)
    page.wait_for_function("document.querySelector('#hv-truth textarea').value.includes('knife')")
    page.locator("#hv-methods label").filter(has_text="VHR").click()
    page.locator("#hv-methods label").filter(has_text="Remove sink").click()
    page.wait_for_timeout(300)
    page.click("#hv-run")
    page.wait_for_selector("#hv-status:has-text('Done')", timeout=180_000)
    page.wait_for_selector("#hv-debug-caption .token:has-text('fork')", timeout=30_000)
    page.locator("#hv-debug-caption .token").filter(has_text="fork").first.click()
    page.wait_for_function("(() => { const t = document.querySelector('#hv-overlay .gtitle');"
                           " return !!t && t.textContent.includes('fork'); })()", timeout=60_000)
    page.wait_for_timeout(1500)
    page.set_viewport_size({"width": 1440, "height": 1300})
    top = page.evaluate("document.querySelector('#hv-status').getBoundingClientRect().top + window.scrollY")
    page.evaluate(f"window.scrollTo(0, {top - 12})")
    page.mouse.move(5, 5)  # no hover labels or plot toolbars in the picture
    page.wait_for_timeout(800)
    upper, lower = SCREENSHOTS / "readme-top.png", SCREENSHOTS / "readme-sinks.png"
    page.screenshot(path=str(upper))
    sinks = page.locator("#hv-shares")
    sinks.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    page.wait_for_timeout(800)
    sinks.screenshot(path=str(lower))
    a, b = Image.open(upper).convert("RGB"), Image.open(lower).convert("RGB")
    joined = Image.new("RGB", (a.width, a.height + b.height + 8), "white")
    joined.paste(a, (0, 0))
    joined.paste(b, ((a.width - b.width) // 2, a.height + 8))
    target = ROOT / "assets" / "screenshot.png"
    # A 256-colour palette keeps the file small enough for the repository.
    joined.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(target, optimize=True)
    page.set_viewport_size({"width": 1440, "height": 1000})


def test_html_from_users_and_files_is_shown_as_text_and_fetches_nothing(page, tmp_path, tiny_model_dirs):
    """Issue 12 (2): a replayed trace whose strings hold an image from an outside URL and a password
    form, HTML typed into the ground-truth box, and a special token in the prompt: the page shows
    every string literally, builds no such element, and asks no host but this one for anything."""
    from halviz.engine.decode import Decoder
    from tools.hostile import HTML_STRINGS, html_trace
    from halviz.models import load_model

    page.reload()  # a fresh session: the uploader still holds the refused file of the test before
    page.wait_for_selector("#hv-run", timeout=60_000)
    page.fill("#hv-truth textarea", f"{HTML_STRINGS['image']} {HTML_STRINGS['markdown_image']}")
    page.wait_for_function("document.querySelector('#hv-truth-note').innerText.includes('example.invalid')",
                           timeout=60_000)
    note = page.locator("#hv-truth-note").inner_text()
    assert HTML_STRINGS["image"] in note and HTML_STRINGS["markdown_image"] in note, note

    loaded = load_model(str(tiny_model_dirs["llava-1.5"]))
    trace = Decoder(loaded, Image.new("RGB", (64, 48), "gray"), "Describe.", [], 3).run_to_end()
    good, _ = trace.save(tmp_path / "plain")
    page.set_input_files("#hv-trace-upload input[type=file]", str(html_trace(good, tmp_path / "crafted.npz")))
    page.wait_for_function("document.querySelector('#hv-trace-info').innerText.includes('example.invalid')",
                           timeout=60_000)
    info = page.locator("#hv-trace-info").inner_text()
    for text in (HTML_STRINGS["image"], HTML_STRINGS["form"], HTML_STRINGS["markdown_image"]):
        assert text in info, info

    page.fill("#hv-prompt textarea", "Describe <image> again.")
    page.click("#hv-run")
    page.wait_for_selector(".toast-body.error:has-text('special token')", timeout=60_000)
    assert "“<image>”" in page.locator(".toast-body.error").filter(has_text="special token").first.inner_text()

    page.wait_for_timeout(1000)  # time for any image the page might still try to load
    crafted = page.evaluate("""() => ({
        images: [...document.querySelectorAll('img')].map(i => i.src).filter(s => s.includes('example.invalid')),
        forms: document.querySelectorAll('form').length,
        passwords: document.querySelectorAll('input[type=password]').length,
    })""")
    assert crafted == {"images": [], "forms": 0, "passwords": 0}, crafted
    assert page.outside_requests == [], page.outside_requests


def test_an_intervention_beside_the_original_shows_where_it_diverges(page):
    """Issue 14: Greedy and "Mask patches" (default: the whole grid hidden from the text) as two columns;
    the intervention's caption changes and its summary names the first step that differs."""
    page.reload()  # a fresh session with the default methods
    page.wait_for_selector("#hv-run", timeout=60_000)
    index = 2 if toy_model_ready() else 5
    click_example(page, index)
    page.wait_for_selector("text=trust:")
    page.locator("#hv-methods label").filter(has_text="PruneHal").click()  # off: Greedy stays, alone
    page.locator("#hv-methods label").filter(has_text="Mask patches").click()
    page.wait_for_timeout(300)
    assert page.locator("#hv-methods input[type=checkbox]:checked").count() == 2
    page.click("#hv-run")
    page.wait_for_selector("#hv-status:has-text('Done')", timeout=180_000)
    original, masked = (page.locator(f"#hv-caption-{i}").inner_text().strip() for i in (0, 1))
    assert original and masked and original != masked
    summary = page.locator("#hv-summary-1").inner_text()
    assert "differs from Greedy from step" in summary, summary
    assert "differs from" not in page.locator("#hv-summary-0").inner_text()


def test_click_patches_rerun_and_open_the_new_column_at_its_step(page):
    """Issue 14 in the debugger: click two corner patches on the heatmap (each click toggles one patch; a
    third click takes one out and a fourth puts it back), click two heads on the head map, re-run: a new
    column appears beside Greedy with its diff step, and its button opens the debugger on the new column
    at that step, its patches and heads shown on the pickers."""
    page.reload()
    page.wait_for_selector("#hv-run", timeout=60_000)
    index = 2 if toy_model_ready() else 5
    click_example(page, index)
    page.wait_for_selector("text=trust:")
    page.locator("#hv-methods label").filter(has_text="PruneHal").click()  # Greedy alone
    page.wait_for_timeout(300)
    page.click("#hv-run")
    page.wait_for_selector("#hv-status:has-text('Done')", timeout=180_000)
    from halviz.viz.pickers import head_picker

    page.locator("#hv-patch-picker").scroll_into_view_if_needed()  # the picture loads lazily
    picker = page.locator("#hv-patch-picker img")
    picker.wait_for(timeout=60_000)
    width, height = natural_size(picker)
    selection = page.locator("#hv-selection")
    def selection_says(text: str) -> None:
        page.wait_for_function(f"document.querySelector('#hv-selection').innerText.includes({text!r})",
                               timeout=60_000)

    click_natural(picker, 3, 3)  # the top-left patch
    selection_says("1 patch")
    click_natural(picker, width - 4, height - 4)  # the bottom-right patch: two single patches
    selection_says("2 patches")
    click_natural(picker, width - 4, height - 4)  # again: out
    selection_says("1 patch")
    click_natural(picker, width - 4, height - 4)  # and back in
    selection_says("2 patches")
    text = selection.inner_text()
    assert "r0·c0" in text and "every layer" in text, text
    note = page.locator("#hv-head-note").inner_text()  # "... 6 layers × 6 heads."
    layers, heads = (int(v) for v in re.search(r"(\d+) layers × (\d+) heads", note).groups())
    geometry = head_picker(layers, heads)
    x0, y0, x1, y1 = geometry.cell_box(1, 2)
    click_natural(page.locator("#hv-head-picker img"), (x0 + x1) / 2, (y0 + y1) / 2)
    selection_says("head 2 of layer 1")
    x0, y0, x1, y1 = geometry.cell_box(0, 1)
    click_natural(page.locator("#hv-head-picker img"), (x0 + x1) / 2, (y0 + y1) / 2)
    selection_says("silence 2 heads: L0·H1, L1·H2")
    assert page.locator("#hv-patch-tokens .js-plotly-plot").count() == 1  # the patch → token view is drawn

    page.click("#hv-rerun")
    page.wait_for_selector("#hv-rerun-status:has-text('Re-ran')", timeout=180_000)
    column = page.locator("#hv-whatif-0")
    assert column.is_visible()
    assert "Greedy + mask" in page.locator("#hv-whatif-header-0").inner_text()
    assert page.locator("#hv-whatif-caption-0").inner_text().strip()
    summary = page.locator("#hv-whatif-summary-0").inner_text()
    assert "differs from Greedy from step" in summary, summary
    step = int(summary.split("differs from Greedy from step")[1].split()[0])
    button = page.locator("#hv-whatif-open-0")
    assert f"at step {step}" in button.inner_text()
    button.click()
    page.wait_for_function(overlay_title_starts(f"Step {step}"), timeout=60_000)
    selection_says("2 heads: L0·H1, L1·H2")  # the pickers show the opened column's own interventions
    assert "2 patches" in selection.inner_text()
    assert "↻ Greedy + mask" in page.locator("#hv-trace-choice input:checked + span, "
                                             "#hv-trace-choice label.selected").first.inner_text()
    assert page.locator(".toast-body.error").count() == 0, "an error toast is shown"
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "whatif.png"), full_page=True)


def natural_size(image) -> tuple[int, int]:
    return tuple(image.evaluate("i => [i.naturalWidth, i.naturalHeight]"))


def click_natural(image, x: float, y: float) -> None:
    """Click an <img> at pixel (x, y) of the picture itself, wherever object-fit: contain placed it."""
    box = image.bounding_box()
    width, height = natural_size(image)
    scale = min(box["width"] / width, box["height"] / height)
    image.click(position={"x": (box["width"] - width * scale) / 2 + x * scale,
                          "y": (box["height"] - height * scale) / 2 + y * scale})


def shoot_element(page, name: str, selector: str) -> None:
    """A screenshot of one part of the page, to look at (git-ignored)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page.mouse.move(5, 5)
    page.locator(selector).screenshot(path=str(SCREENSHOTS / f"{name}.png"))
