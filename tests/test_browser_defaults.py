"""Per-model defaults in a real browser: the knobs show the chosen model's defaults, a value the user
sets survives a switch of model, and the run uses the user's value over the new model's defaults."""

import pytest


@pytest.fixture(scope="module")
def page(open_page, defaults_app):
    """The app of conftest's defaults_folders (the tuned folder stores prunehal r=0.8, t=2), in the browser."""
    with open_page(defaults_app[1]) as page:
        yield page


def number_box(page, label: str):
    """The number input of the slider labelled ``label``."""
    block = page.locator(".block", has=page.get_by_text(label, exact=True)).last
    return block.locator("input[type=number]").first


def test_knobs_follow_the_model_and_keep_what_the_user_set(page):
    page.get_by_text("⚙ PruneHal settings").click()
    page.get_by_text("default for this model: 0.8").first.wait_for(timeout=20_000)
    assert number_box(page, "Keep ratio r").input_value() == "0.8"
    t = number_box(page, "Max prunes t")
    t.fill("1")
    t.press("Enter")
    model = page.locator("#hv-model input")
    model.click()
    page.get_by_role("option", name="plain tiny").click()
    # r was untouched: it moves to the paper's 0.4, unmarked; t keeps the user's 1.
    page.wait_for_function("""() => [...document.querySelectorAll('input[type=number]')]
        .some(e => e.closest('.block') && e.closest('.block').textContent.includes('Keep ratio r') && e.value === '0.4')""",
                           timeout=20_000)
    assert number_box(page, "Max prunes t").input_value() == "1"
    assert page.get_by_text("default for this model: 0.8").count() == 0
    page.locator("#hv-run").click()
    page.locator("#hv-status").get_by_text("Done").wait_for(timeout=60_000)
    page.locator("#hv-trace-choice").get_by_text("PruneHal").click()
    info = page.locator("#hv-trace-info")
    info.get_by_text("r=").first.wait_for(timeout=30_000)
    text = info.inner_text()
    assert "r=0.4" in text and "t=1" in text, text
    assert not page.outside_requests
