"""The attention-sink lesson: its facts against hand-worked answers and the recorded trace, and its four
steps through the app's callbacks on the bundled toy model (the browser test walks the same steps)."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from halviz.toy.lesson import EXAMPLE_FILE, STEPS, patches_covering, sink_sentence, step_naming
from halviz.session.examples import EXAMPLES_DIR


def fake_trace(texts, **meta):
    return SimpleNamespace(texts=texts, meta=meta, arrays={})


def test_the_step_naming_a_word_is_the_step_whose_token_begins_it():
    assert step_naming(fake_trace([" a", " small", " cyan", " fork", " ."])) == 3
    assert step_naming(fake_trace([" a", " small", " fo", "rk", " ."])) == 2  # split over two tokens: the first
    assert step_naming(fake_trace([" a", " knife", " .", " forks"])) == 3
    assert step_naming(fake_trace([" a", " knife", " ."])) is None


def test_patches_covering_an_object_by_hand():
    """A 12×12 grid of 8 px patches on a 96 px scene; the knife example's knife spans x 59–69, y 3–26
    (read from the generator's own record of that scene), i.e. columns 7–8 and rows 0–3."""
    grid = [[c * 8.0, r * 8.0, c * 8.0 + 8, r * 8.0 + 8] for r in range(12) for c in range(12)]
    trace = fake_trace([], grid=[12, 12], patch_boxes=grid)
    picture = Image.open(EXAMPLES_DIR / EXAMPLE_FILE).convert("RGB")
    assert patches_covering(trace, picture, "knife") == {(r, c) for r in range(4) for c in (7, 8)}
    assert patches_covering(trace, picture, "fork") == frozenset()  # not in the scene


def test_the_sink_sentence_states_the_recorded_shares():
    shares = np.zeros((3, 4, 5), dtype=np.float32)  # steps, layers, segments
    shares[2, :, 0] = [0.1, 0.3, 0.62, 0.9]  # BOS
    shares[2, :, 2] = [0.8, 0.5, 0.2, 0.02]  # image
    trace = SimpleNamespace(texts=[" a", " b", " fork"], arrays={"segment_share": shares},
                            meta={"segments": ["bos", "system", "image", "prompt", "generated"]})
    sentence = sink_sentence(trace, 2)
    assert "L0 10%, L1 30%, L2 62%, L3 90%" in sentence and "more than half of the attention in layers 2, 3" in sentence
    assert "the image gets 38% on average" in sentence and "“fork”" in sentence


def test_the_four_steps_through_the_callbacks(controller):
    from halviz.ui.lesson import Lesson, LessonPanel

    ctl, gr = controller
    ui = ctl.ui
    lesson = Lesson(ctl, LessonPanel(note=gr.Markdown(), buttons=[]))
    assert lesson.available
    before = lesson.sink_at_the_fork({})
    assert "First do step 1" in before[lesson.panel.note]

    one = lesson.see_the_fork()
    assert one[ui.methods] == ["vanilla"] and one[ui.image].endswith(EXAMPLE_FILE) and one[ui.model] == "toy"
    last = None
    for last in ctl.compare(one[ui.image], one[ui.prompt], one[ui.methods], one[ui.max_tokens], "clock, knife",
                            one[ui.model], "", {}):
        pass
    runs = last[ui.runs]
    greedy = runs["vanilla"].trace
    fork = step_naming(greedy)
    assert fork is not None, greedy.caption  # the shipped toy model names the absent fork here

    two = lesson.sink_at_the_fork(runs)
    assert two[ui.panel.step].value == fork and two[ui.panel.choice].value == "vanilla"
    assert "BOS gets" in two[lesson.panel.note]

    three = lesson.remove_the_sink()
    assert three[ui.methods] == ["vanilla", "remove_sink"]

    four = lesson.hide_the_knife(runs)
    chosen = four[ui.panel.whatif.selection]
    assert chosen.patches == {(r, c) for r in range(4) for c in (7, 8)}
    assert "8 patches cover the knife" in four[lesson.panel.note]
    last = None
    for last in ctl.rerun(runs, "vanilla", chosen, [], None):
        pass
    hidden = last[ui.runs][last[ui.whatif][0]["key"]].trace
    assert step_naming(hidden, "knife") is None  # the text no longer reads the knife
    assert len(STEPS) == 4
