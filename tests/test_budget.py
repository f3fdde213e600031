"""Issue 28 (B3): one byte budget for everything the sessions hold. Least recently used entries go first,
the adding owner's own before anyone else's; pictures shared by columns count once; entries a session
lets go leave the ledger; a dropped entry answers its owner's next click with one sentence."""

import gc
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import run_greedy
from tools.hostile import looks_like_python
from halviz.trace import Trace
from halviz.ui.errors import user_errors
from halviz.session.budget import DROPPED, MemoryBudget, budget_from_env, check_kept, picture_bytes, trace_bytes
from halviz.session.checks import InputError
from halviz.session.selection import Selection
from halviz.session.state import RunEntry

MB = 2**20


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def entry(key: str, megabytes: float = 1.0, image=None, source=None) -> RunEntry:
    arrays = {"image_attn": np.zeros(int(megabytes * MB), np.uint8)}
    return RunEntry(key, key, Trace({"texts": ["a", " cup"], "num_steps": 2}, arrays), image, None, source)


def test_the_adding_owner_loses_its_own_oldest_first():
    budget = MemoryBudget(int(3.5 * MB), clock=Clock())
    a1, a2 = entry("a1"), entry("a2")
    budget.hold("a", [a1])
    budget.hold("a", [a2])
    b1 = entry("b1")
    budget.hold("b", [b1])
    assert budget.total() <= 3.5 * MB and not any(e.dropped for e in (a1, a2, b1))
    b2 = entry("b2")
    assert budget.hold("b", [b2]) == [b1]  # b adds: b's own oldest goes, a keeps its work
    b3, b4 = entry("b3"), entry("b4")
    dropped = budget.hold("b", [b3, b4])  # b's only older entry (b2) is not enough: then the least recent of all
    assert dropped == [b2, a1] and budget.total() <= 3.5 * MB
    assert not b3.dropped and not b4.dropped  # the request's own entries stay


def test_least_recently_used_means_looked_at():
    budget = MemoryBudget(int(2.5 * MB), clock=Clock())
    old, newer = entry("old"), entry("newer")
    budget.hold("a", [old])
    budget.hold("a", [newer])
    check_kept(old)  # the owner looks at the older one again
    assert budget.hold("c", [entry("c")]) == [newer]


def test_a_request_larger_than_the_budget_keeps_its_own_entries():
    budget = MemoryBudget(2 * MB)
    big = entry("big", 3)
    assert budget.hold("a", [big]) == [] and not big.dropped  # over by one request at most


def test_shared_pictures_count_once_and_collected_entries_leave():
    budget = MemoryBudget(100 * MB)
    picture, source = Image.new("RGB", (512, 384)), Image.new("RGB", (2000, 1000))
    columns = [entry(k, 0.5, picture, source) for k in ("vanilla", "vcd", "vhr")]
    budget.hold("a", columns)
    expected = sum(trace_bytes(c.trace) for c in columns) + picture_bytes(picture) + picture_bytes(source)
    assert budget.total() == expected
    assert picture_bytes(source) == 2000 * 1000 * 3
    del columns
    gc.collect()
    assert budget.total() == 0 and len(budget) == 0  # the session let them go


def test_a_later_checkpoint_replaces_the_last_ones_entries():
    budget = MemoryBudget(100 * MB)
    first = [entry("vanilla")]
    budget.hold("a", first)
    second = [entry("vanilla", 2)]
    budget.hold("a", second, replacing=first)
    assert budget.total() == trace_bytes(second[0].trace)


def test_a_dropped_entry_is_a_stub_that_says_so():
    budget = MemoryBudget(MB)
    old = entry("old", 0.8, Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64)))
    budget.hold("a", [old])
    budget.hold("a", [entry("new", 0.8)])
    assert old.dropped and old.trace.arrays == {} and old.image is None and old.source is None
    assert old.trace.texts == ["a", " cup"]  # its caption stays for the page
    with pytest.raises(InputError, match="dropped to free memory"):
        check_kept(old)


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("HALVIZ_MEMORY_BUDGET_MB", "512")
    assert budget_from_env() == 512 * MB
    monkeypatch.setenv("HALVIZ_MEMORY_BUDGET_MB", "lots")
    assert budget_from_env(7) == 7


# ---- through the callbacks ----------------------------------------------------------------------------

def caller(name: str):
    return SimpleNamespace(session_hash=name, client=SimpleNamespace(host="127.0.0.1"), headers={})


def test_another_visitors_pressure_drops_the_idle_sessions_trace_with_a_sentence(controller, monkeypatch, tmp_path):
    ctl, gr = controller
    ui, panel = ctl.ui, ctl.ui.panel
    runs = None
    for last in ctl.compare(str(_scene()), "Describe the image.", ["vanilla"], 3, "", "toy", "", {},
                            caller=caller("victim")):
        runs = last.get(ui.runs, runs)
    held = ctl.app.budget.owner_bytes("victim")
    assert held > 0
    # Another visitor replays a longer trace: more than the budget left, so the idle entry goes.
    npz, _ = longer(runs["vanilla"].trace, 1000).save(tmp_path / "heavy")
    monkeypatch.setattr(ctl.app, "budget", MemoryBudget(held + 1))
    ctl.app.budget.hold("victim", runs.values())
    replayed = ctl.replay(str(npz), None, {}, caller=caller("attacker"))
    assert "upload:heavy.npz" in replayed[ui.runs]
    assert runs["vanilla"].dropped
    # The victim's next clicks: one sentence, never a Python name or Gradio's choice check.
    for click in (lambda: user_errors(ctl.show_first)(runs, ["vanilla"]),  # wired through user_errors
                  lambda: ctl.jump_from_column(0)(runs, ["vanilla"], SimpleNamespace(index=0)),
                  lambda: ctl.take_head(runs, "vanilla", 0, 1, 1, Selection())):
        with pytest.raises(gr.Error) as failure:
            click()
        assert DROPPED in str(failure.value) and not looks_like_python(str(failure.value))
    rerun = ctl.rerun(runs, "vanilla", Selection(sink=True), [], None)
    assert DROPPED in next(rerun)[panel.whatif.status].replace("\\", "")  # Markdown-escaped
    with pytest.raises(gr.Error):
        next(rerun)
    # A new comparison works again.
    fresh = run_greedy(ctl, tokens=2)
    assert not fresh["vanilla"].dropped and ctl.show_first(fresh, ["vanilla"])[panel.choice].value == "vanilla"


ONCE = ("sink_tokens",)  # recorded once per trace, not per step


def longer(trace: Trace, steps: int) -> Trace:
    """``trace`` with its steps repeated up to ``steps`` (a legal trace, larger); arrays that are not per
    step (the prompt's sink tokens per layer) stay as they are."""
    reps = -(-steps // trace.num_steps)
    arrays = {k: v if k in ONCE else np.concatenate([v] * reps)[:steps]
              for k, v in trace.arrays.items() if not k.startswith("method/")}
    return Trace({**trace.meta, "num_steps": steps, "texts": (trace.texts * reps)[:steps]}, arrays)


def _scene():
    from halviz.session.examples import EXAMPLES_DIR

    return EXAMPLES_DIR / "toy-cup-no-spoon.png"
