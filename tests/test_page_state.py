"""Issue 24 (1, 4, 6): what the page says stays true of what it shows. The callbacks are called
directly on the toy model (conftest's ``controller``); the browser test drives the same sequences."""

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_greedy
from halviz.session.examples import EXAMPLES_DIR, load_examples

ROOT = Path(__file__).resolve().parents[1]


def example(name: str):
    return next(e for e in load_examples(EXAMPLES_DIR) if e.path.name == name)


def test_a_new_picture_replaces_the_last_examples_ground_truth(controller, tmp_path):
    """The measured sequence: the knife example, then another picture. The box and its note follow the
    picture; nobody typed, so nothing says "typed by the user"."""
    ctl, _ = controller
    ui = ctl.ui
    knife = example("toy-knife-no-fork.png")
    first = ctl.image_changed(str(knife.path), [], {}, None)
    assert first[ui.truth] == "clock, knife" and "toy scene generator" in first[ui.truth_note]
    cat = example("chelsea.jpg")
    second = ctl.image_changed(str(cat.path), [], {}, None)
    assert second[ui.truth] == "cat" and "typed by the user" not in second[ui.truth_note]
    stranger = tmp_path / "stranger.png"
    Image.open(cat.path).crop((10, 10, 200, 150)).save(stranger)
    third = ctl.image_changed(str(stranger), ["vanilla"], {}, None)
    assert third[ui.truth] == "" and "none given" in third[ui.truth_note]
    assert "captions below are of the previous picture" in third[ui.status]
    cleared = ctl.image_changed(None, [], {}, None)
    assert cleared[ui.truth] == "" and ui.status not in cleared  # no run shown: nothing to warn about
    # What the comparison then uses agrees with the note: the knife's list on the cat is the user's word.
    request = ctl.app.check(str(cat.path), "Describe.", ["vanilla"], 4, knife.objects, "toy", "")
    assert request.truth.truth.trust == "user"
    assert request.truth.truth.counts is None  # nobody counted what the user typed
    request = ctl.app.check(str(knife.path), "Describe.", ["vanilla"], 4, knife.objects, "toy", "")
    assert request.truth.truth.trust == "exact" and request.truth.truth.counts == {"clock": 1, "knife": 1}


def test_a_refused_comparison_says_so_beside_the_old_captions(controller):
    ctl, gr = controller
    runs = run_greedy(ctl, tokens=2)
    updates = ctl.compare(None, "Describe.", ["vanilla"], 4, "", "toy", "", runs)
    status = next(updates)[ctl.ui.status]
    assert status.startswith("✗ Not run:") and "Upload an image" in status
    assert "still show the previous comparison" in status
    with pytest.raises(gr.Error, match="Upload an image"):
        next(updates)
    fresh = ctl.compare(None, "Describe.", ["vanilla"], 4, "", "toy", "", {})
    assert "previous comparison" not in next(fresh)[ctl.ui.status]


def test_stop_after_a_finished_run_keeps_its_done_line(controller):
    ctl, gr = controller
    scene = example("toy-cup-no-spoon.png")
    last = None
    for last in ctl.compare(str(scene.path), "Describe.", ["vanilla"], 3, scene.objects, "toy", "", {}):
        pass
    assert last[ctl.ui.status].startswith("✓ Done")
    after = ctl.stop(last[ctl.ui.runs], ["vanilla"], last[ctl.ui.live])
    assert list(after) == [ctl.ui.status] and after[ctl.ui.status] == gr.skip()  # an update that changes nothing
    unfinished = [r.__class__(**{**r.__dict__, "finish": None}) for r in last[ctl.ui.live]]
    assert ctl.stop(last[ctl.ui.runs], ["vanilla"], unfinished)[ctl.ui.status].startswith("■ Stopped")


def test_a_replayed_trace_cannot_be_rerun_and_finds_its_picture(controller, tmp_path):
    ctl, _ = controller
    panel = ctl.ui.panel
    runs = run_greedy(ctl, tokens=3)
    npz, meta = runs["vanilla"].trace.save(tmp_path / "saved")
    scene = example("toy-cup-no-spoon.png")
    replayed = ctl.replay(str(npz), None, {})
    entry = replayed[ctl.ui.runs]["upload:saved.npz"]
    assert entry.image is None
    assert replayed[panel.whatif.rerun].interactive is False and "Compare" in replayed[panel.whatif.status]
    other = ctl.image_changed(str(example("toy-scene.png").path), [], replayed[ctl.ui.runs], entry.key)
    assert ctl.ui.runs not in other  # not the picture it was recorded on: drawn without one
    same = ctl.image_changed(str(scene.path), [], replayed[ctl.ui.runs], entry.key)
    assert same[ctl.ui.runs][entry.key].image is not None and same[panel.choice].value == entry.key
    live = panel.show(runs, "vanilla")
    assert live[panel.whatif.rerun].interactive is True and live[panel.whatif.status] == ""


def test_the_debugger_says_what_to_do_before_there_is_a_trace(controller):
    ctl, _ = controller
    panel = ctl.ui.panel
    empty = panel.show({}, None)
    assert empty[panel.empty].visible is True and empty[panel.body].visible is False
    shown = panel.show(run_greedy(ctl, tokens=2), "vanilla")
    assert shown[panel.empty].visible is False and shown[panel.body].visible is True


def test_downloads_name_model_column_and_time_and_hold_no_server_path(controller):
    ctl, _ = controller
    runs = run_greedy(ctl, tokens=2)
    paths = ctl.app.files.save(runs)
    names = [Path(p).name for p in paths]
    assert all(n.startswith("halviz-toy-vanilla-") for n in names), names
    meta = json.loads(Path(next(p for p in paths if p.endswith(".json"))).read_text())
    text = json.dumps(meta)
    assert str(ROOT) not in text and "/assets/" not in text and meta["model"] == "toy", meta["source"]
    assert ctl.app.files.owns(paths[0]) and not ctl.app.files.owns(str(ROOT / "README.md"))


def test_the_offline_hub_advice_names_only_what_the_page_allows(controller):
    from halviz.models import ModelLoadError

    ctl, gr = controller
    def offline(name):
        error = ModelLoadError("not cached; use the bundled 'toy' model or a local folder")
        error.offline = True
        raise error
    from halviz.session.model_cache import ModelCache

    kept, ctl.app.cache = ctl.app.cache, ModelCache(offline)
    try:
        with pytest.raises(gr.Error) as refused:
            ctl.app.load("llava-hf/llava-1.5-7b-hf")
    finally:
        ctl.app.cache = kept
    assert "toy model" in refused.value.plain and "folder" not in refused.value.plain


def test_a_fourth_rerun_says_which_column_it_replaces_and_reruns_are_downloadable(controller):
    from halviz.session.selection import Selection

    ctl, _ = controller
    whatif = ctl.ui.panel.whatif
    runs = run_greedy(ctl, tokens=2)
    first_files = ctl.app.files.save({"vanilla": runs["vanilla"]})
    shown, files = [], first_files
    for _ in range(4):
        last = None
        for last in ctl.rerun(runs, "vanilla", Selection(sink=True), shown, files):
            pass
        runs, shown, files = last[ctl.ui.runs], last[ctl.ui.whatif], last[ctl.ui.trace_files]
    assert len(shown) == 3 and "replaces the oldest re-run column" in last[whatif.status]
    assert set(first_files) <= set(files) and any("whatif" in Path(f).name for f in files)
    # A path the client made up is never served back.
    last = None
    for last in ctl.rerun(runs, "vanilla", Selection(sink=True), shown, [str(ROOT / "README.md")]):
        pass
    assert str(ROOT / "README.md") not in last[ctl.ui.trace_files]


def test_the_session_layer_imports_without_gradio():
    """halviz.session is what the app, the API and the CLIs share: it must not need Gradio."""
    import subprocess
    import sys

    modules = sorted(p.stem for p in (ROOT / "halviz" / "session").glob("*.py") if p.stem != "__init__")
    code = (f"import sys; import {', '.join('halviz.session.' + m for m in modules)}; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'gradio']; assert not bad, bad[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
