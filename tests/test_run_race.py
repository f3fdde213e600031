"""Issue 28 (B7): Compare pressed while a re-run decodes. The re-run started under the older comparison
writes nothing once the newer one has started: no stale runs (a click on the new caption opens the new
trace), no what-if column brought back after Compare cleared it. Called at the callback level."""

from conftest import run_greedy
from halviz.session.selection import Selection


def test_a_rerun_never_writes_over_a_newer_comparison(controller):
    ctl, _ = controller
    ui = ctl.ui
    runs = run_greedy(ctl, tokens=2)
    old_trace = runs["vanilla"].trace
    rerun = ctl.rerun(runs, "vanilla", Selection(sink=True), [], None)
    first = next(rerun)  # the column appears, waiting for the model
    assert len(first[ui.whatif]) == 1
    cleared = ctl.clear_whatif()  # Compare is pressed: the re-run columns go…
    assert cleared[ui.whatif] == []
    newer = run_greedy(ctl, tokens=3)  # …and the new comparison runs while the re-run decodes
    assert newer["vanilla"].trace is not old_trace
    late = list(rerun)
    assert late == [], "the re-run wrote over the newer comparison"
    # What the page holds is the newer comparison: its caption opens its own trace.
    shown = ctl.show_first(newer, ["vanilla"])
    assert shown[ui.panel.step].maximum == newer["vanilla"].trace.num_steps - 1


def test_a_rerun_of_the_latest_comparison_still_writes(controller):
    ctl, _ = controller
    runs = run_greedy(ctl, tokens=2)
    last = None
    for last in ctl.rerun(runs, "vanilla", Selection(sink=True), [], None):
        pass
    assert any(k.startswith("whatif:") for k in last[ctl.ui.runs]) and len(last[ctl.ui.whatif]) == 1


def test_each_owner_has_its_own_latest_comparison():
    from halviz.session.runids import LatestRuns

    latest = LatestRuns(most=2)
    a = latest.start("a")
    latest.start("b")
    assert latest.current("a") == a
    assert latest.start("a") != a  # a new comparison of a
    latest.start("c")  # b compared least recently: forgotten
    assert latest.current("b") is None and latest.current("c") is not None
