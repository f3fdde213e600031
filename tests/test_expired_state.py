"""Issue 28: a visitor whose session state is gone (dropped to make room, or expired an hour after
its last use) gets one sentence at the next click, never Gradio's choice check with Python type
names ("Value: 'vanilla' (type: <class 'str'>) is not in the list of choices: []"), and a visitor
who keeps clicking keeps the traces of a comparison run more than an hour ago.

Through the public HTTP surface (Gradio's queue protocol, ``RawSession``) against a launched app,
the victim behind a forwarded address (``HALVIZ_TRUSTED_PROXIES=1``), and at the callback level."""

import datetime

import pytest

from halviz.session.checks import InputError
from halviz.ui.pickers import EXPIRED, SessionDropdown, SessionRadio, SessionSlider
from tools.hostile import RawSession, looks_like_python

from conftest import run_greedy

VICTIM = "198.51.100.28"
GRADIO_WORDS = ("type:", "<class", "not in the list of choices", "greater than maximum", "less than minimum")


@pytest.fixture(scope="module")
def app(serve, toy, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HALVIZ_TRUSTED_PROXIES", "1")
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        with serve(models=["toy"], default_model="toy", loader=lambda name: toy, preload=[],
                   update_every_s=0) as (demo, url):
            yield demo, url


def visitor(app, address: str = VICTIM) -> RawSession:
    demo, url = app
    raw = RawSession(url, demo, timeout_s=120)
    raw.http.headers["X-Forwarded-For"] = f"203.0.113.250, {address}"
    return raw


def with_traces(app) -> RawSession:
    """A visitor whose page shows a comparison in the debugger (the trace picker lists 'vanilla')."""
    raw = visitor(app)
    assert raw.compare(tokens=4).ok
    assert raw.call("show_first", [None, None]).ok
    assert raw.call("show", [None, "vanilla"]).ok
    return raw


def the_sentence(reply) -> str:
    assert not reply.ok, "the click was answered as if the traces were there"
    message = reply.message
    assert "no longer on the server" in message and "run the comparison again" in message, message
    assert not any(word in message for word in GRADIO_WORDS), message
    assert not looks_like_python(message), message
    return message


# What the page sends for each debugger control, its values from the page as it was (a trace, layer 3,
# head 1, step 3): the trace picker, the step/layer/head/view pickers, the head button, a re-run column.
CLICKS = {
    "show": [None, "vanilla"],
    "at_step": [None, "vanilla", 3, "3", "1", None, "tiles in place"],
    "take_head": [None, "vanilla", 3, "3", "1", None],
    "clear_box": [None, "vanilla", 3, "3", "1", None],
    "open_it": [None, None],
}


def drop_session(demo, session: str) -> None:
    """What the state holder does to a session it evicts: its state and its components' configs go."""
    holder = demo.app.state_holder
    with holder.lock:
        del holder.session_data[session]
        holder.time_last_used.pop(session, None)
    demo.client_guard.forget(session)


def age_states(demo, session: str, hours: float) -> None:
    """Pretend the session's States were last written ``hours`` ago."""
    state = demo.app.state_holder.session_data[session]
    then = datetime.datetime.now() - datetime.timedelta(hours=hours)
    state._state_ttl = {key: (ttl, then) for key, (ttl, _) in state._state_ttl.items()}


# ---- through HTTP ---------------------------------------------------------------------------------

def test_the_pickers_render_as_gradios_own(app):
    demo, _ = app
    types = {c["props"].get("elem_id"): c["type"] for c in demo.config["components"]}
    assert types["hv-trace-choice"] == "radio"
    assert types["hv-layer"] == types["hv-head"] == types["hv-view"] == "dropdown"
    assert types["hv-step"] == "slider"


@pytest.mark.parametrize("click", list(CLICKS))
def test_a_dropped_session_gets_the_sentence_at_every_debugger_click(app, click):
    demo, _ = app
    raw = with_traces(app)
    try:
        drop_session(demo, raw.session)
        message = the_sentence(raw.call(click, CLICKS[click]))
        print(f"\n{click} after the session was dropped: {message}")
        assert raw.compare(tokens=2).ok  # and running the comparison again works
        assert raw.call("show", [None, "vanilla"]).ok
    finally:
        raw.close()


def test_an_expired_session_gets_the_sentence(app):
    """Gradio's own expiry: the States go, the components' configs (the picker's choices) stay."""
    demo, _ = app
    raw = with_traces(app)
    try:
        age_states(demo, raw.session, hours=2)
        demo.app.state_holder.delete_all_expired_state()
        for click, data in CLICKS.items():
            the_sentence(raw.call(click, data))
    finally:
        raw.close()


def test_a_visitor_who_keeps_clicking_keeps_an_old_comparison(app):
    """The hour counts from the session's last event, not from the comparison that wrote the traces."""
    demo, _ = app
    raw = with_traces(app)
    try:
        age_states(demo, raw.session, hours=2)  # the comparison ran two hours ago…
        assert raw.call("at_step", CLICKS["at_step"]).ok  # …and the visitor clicks now
        demo.app.state_holder.delete_all_expired_state()
        click = raw.call("show", [None, "vanilla"])
        assert click.ok, click.message
    finally:
        raw.close()


def test_odd_picker_values_of_a_live_session_draw_the_means(app):
    """The pickers no longer refuse values outside the session's choices; the callback reads a layer or
    head outside the model as the mean, a step past the end as the last step."""
    raw = with_traces(app)
    try:
        for layer, head, step in (("999", "77", 10**6), ("-1", "x", -5), ({"a": 1}, ["b"], "c")):
            reply = raw.call("at_step", [None, "vanilla", step, layer, head, None, "nowhere"])
            assert reply.ok, (layer, head, step, reply.message)
        reply = raw.call("show", [None, "not-a-trace"])  # an unknown trace: the first one, as before
        assert reply.ok, reply.message
    finally:
        raw.close()


# ---- the callbacks ----------------------------------------------------------------------------------

def test_the_panel_says_the_sentence_when_the_runs_are_gone(controller):
    ctl, gr = controller
    panel = ctl.ui.panel
    for call in (lambda: panel.show(None, "vanilla"), lambda: panel.show({}, "vanilla", 3),
                 lambda: panel.at_step(None, "vanilla", 3, "3", "1"),
                 lambda: panel.whatif_view({}, "vanilla", 3, "3", "1")):
        with pytest.raises(InputError, match="no longer on the server"):
            call()
    for call in (lambda: ctl._entry(None, "vanilla"), lambda: ctl.open_whatif(0)(None, None),
                 lambda: ctl._rerun_request({}, "vanilla", None)):
        with pytest.raises(gr.Error) as refused:
            call()
        assert "no longer on the server" in refused.value.message
    empty = panel.show(None, None)  # nothing named, nothing held: the empty debugger, no refusal
    assert empty[panel.empty].visible is True
    assert panel.at_step(None, None, 0, "mean", "mean") == {}


def test_the_panel_reads_odd_layers_and_heads_as_the_mean(controller):
    ctl, _ = controller
    panel = ctl.ui.panel
    runs = run_greedy(ctl, tokens=4)
    mean = panel.at_step(runs, "vanilla", 2, "mean", "mean")
    odd = panel.at_step(runs, "vanilla", 2, "999", "-3")
    assert odd[panel.step_info] == mean[panel.step_info]
    assert odd[panel.head].value == "mean"


def test_the_session_pickers_pass_unoffered_values_to_the_callback():
    radio, dropdown = SessionRadio(choices=[], render=False), SessionDropdown(choices=["mean"], render=False)
    slider = SessionSlider(0, 1, value=0, step=1, render=False)
    assert radio.preprocess("vanilla") == "vanilla" and dropdown.preprocess("3") == "3"
    assert radio.preprocess({"a": 1}) is None and dropdown.preprocess(["x"]) is None
    assert radio.preprocess("x" * 10_000) == "x" * 200
    assert slider.preprocess(7) == 7 and slider.preprocess(float("nan")) is None and slider.preprocess("7") is None
    assert (radio.get_block_name(), dropdown.get_block_name(), slider.get_block_name()) == ("radio", "dropdown",
                                                                                          "slider")
    assert radio.get_config()["name"] == "radio"
    assert "hour" in EXPIRED and "run the comparison again" in EXPIRED
