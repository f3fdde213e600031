"""Issue 28: limits keyed on the client, not on the session hash a client mints for free.

One app on 127.0.0.1 with ``HALVIZ_TRUSTED_PROXIES=1``; attackers and the victim are told apart by
the ``X-Forwarded-For`` entry they arrive with (each test's attacker has its own address, so one
test's spent quota does not touch another's). Everything goes through the public HTTP surface:
Gradio's queue protocol (``RawSession``), ``/gradio_api/call/compare`` and ``/gradio_api/upload``.
The limits are smaller than the defaults so that every test is a few seconds."""

import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import replace

import httpx
import pytest

from tools.hostile import RawSession
from tools.stress import EXAMPLES, PROMPT
from halviz.ui.fairness import Limits

LIMITS = Limits(sessions_per_client=30, state_sessions=70, uploads_per_client=6, upload_bytes_per_client=3_500_000,
                upload_folder_bytes=12_000_000)
VICTIM = "198.51.100.10"
LONG = 200  # tokens of an attacker's comparison: it holds a worker for a few seconds


@pytest.fixture(scope="module")
def app(serve, toy, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HALVIZ_TRUSTED_PROXIES", "1")
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))  # its own upload folder
        with serve(models=["toy"], default_model="toy", loader=lambda name: toy, preload=[], update_every_s=0,
                   limits=LIMITS) as (demo, url):
            yield demo, url


def session(app, address: str, session_hash: str | None = None) -> RawSession:
    demo, url = app
    raw = RawSession(url, demo, session_hash=session_hash, timeout_s=120)
    raw.http.headers["X-Forwarded-For"] = f"203.0.113.250, {address}"  # the left entry is the client's lie
    return raw


def join(app, address: str, fn: str, data: list, session_hash: str | None = None) -> httpx.Response:
    """Join the queue and walk away (fire and forget): the join's answer only."""
    demo, url = app
    raw = session(app, address, session_hash or uuid.uuid4().hex[:11])
    try:
        body = {"data": data, "fn_index": raw.fn_index(fn), "session_hash": raw.session, "event_data": None,
                "trigger_id": None}
        return raw.http.post(f"{raw.base}/queue/join", content=json.dumps(body),
                             headers={"content-type": "application/json"})
    finally:
        raw.close()


def compare_args(raw: RawSession, tokens: int) -> list:
    return [raw.upload(EXAMPLES / "toy-scene.png"), PROMPT, ["vanilla"], tokens, "", "toy", "", None]


def drain(app, timeout_s: float = 120) -> None:
    """Wait until the queue is empty and no worker runs (the attackers' events finished)."""
    demo, _ = app
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(demo._queue) == 0 and not any(demo._queue.active_jobs):
            return
        time.sleep(0.1)
    raise AssertionError("the queue did not drain")


def detail(response: httpx.Response) -> str:
    try:
        found = response.json().get("detail")
    except ValueError:
        return response.text
    return "; ".join(d.get("message", "") for d in found) if isinstance(found, list) else str(found)


# ---- (a) sessions ----------------------------------------------------------------------------------

def test_invented_sessions_do_not_wipe_another_visitors_state(app):
    demo, _ = app
    victim = session(app, VICTIM)
    try:
        assert victim.compare(tokens=4).ok
        assert victim.call("show_first", [None, None]).ok  # the page's follow-up: the debugger shows the run
        started = time.perf_counter()
        codes = [join(app, "203.0.113.1", "truth_note", [None, ""]).status_code for _ in range(120)]
        flood_s = time.perf_counter() - started
        # A second and a third address fill the holder past its capacity (70).
        for address in ("203.0.113.2", "203.0.113.3"):
            codes += [join(app, address, "truth_note", [None, ""]).status_code for _ in range(30)]
        holder, guard = demo.app.state_holder, demo.client_guard
        assert codes[:120].count(200) == LIMITS.sessions_per_client  # the first 30 of the 120, then refusals
        assert codes[:120].count(429) == 120 - LIMITS.sessions_per_client
        assert len(holder.session_data) <= LIMITS.state_sessions
        assert victim.session in holder.session_data  # the heaviest clients' oldest sessions went instead
        click = victim.call("show", [None, "vanilla"])  # the debugger's trace picker
        assert click.ok, click.message
        print(f"\n120 invented sessions from one address: {codes[:120].count(429)} refused (429) in {flood_s:.1f} s; "
              f"holder {len(holder.session_data)}/{LIMITS.state_sessions}; victim's click {click.seconds:.2f} s")
        refused = join(app, "203.0.113.1", "truth_note", [None, ""])
        assert refused.status_code == 429 and "sessions in the last hour" in detail(refused)
    finally:
        victim.close()


# ---- (b) the queue ---------------------------------------------------------------------------------

def test_fire_and_forget_comparisons_from_fresh_sessions_leave_the_queue_to_others(app):
    attacker = session(app, "203.0.113.20")
    image = attacker.upload(EXAMPLES / "toy-scene.png")
    attacker.close()
    args = [image, PROMPT, ["vanilla"], LONG, "", "toy", "", None]
    answers = [join(app, "203.0.113.20", "compare", args) for _ in range(18)]
    codes = [a.status_code for a in answers]
    assert codes.count(200) == LIMITS.decodes_per_client, codes
    assert codes.count(422) == 18 - LIMITS.decodes_per_client, codes
    assert "comparisons or re-runs" in detail(next(a for a in answers if a.status_code == 422))
    # And cheap events of any kind: at most events_per_client of them wait or run.
    cheap = [join(app, "203.0.113.20", "truth_note", [None, ""]).status_code for _ in range(18)]
    assert 503 not in codes + cheap
    victim = session(app, VICTIM)
    try:
        reply = victim.compare(tokens=4)
        assert reply.ok, reply.message
        assert reply.data[-1]["vanilla"]["tokens"] == 4
        drain(app)
        alone = victim.compare(tokens=4)
        print(f"\nvictim's 4-token comparison behind 4 of the attacker's {LONG}-token ones: {reply.seconds:.1f} s "
              f"(alone: {alone.seconds:.1f} s); attacker: {codes.count(422)} of 18 comparisons and "
              f"cheap events answered {dict(Counter(cheap))}")
    finally:
        victim.close()
        drain(app)


# ---- (c) uploads -----------------------------------------------------------------------------------

def upload(app, address: str, size: int) -> httpx.Response:
    _, url = app
    with httpx.Client(headers={"X-Forwarded-For": address}, timeout=60) as http:
        return http.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": ("blob.bin", b"\0" * size)})


def test_uploads_past_a_clients_quota_are_refused_while_anothers_work(app):
    sizes = [1_000_000] * 3 + [1_000_000]  # 3.5 MB an hour: the fourth megabyte is refused
    codes = [upload(app, "203.0.113.30", size).status_code for size in sizes]
    assert codes == [200, 200, 200, 429], codes
    refused = upload(app, "203.0.113.30", 1000)  # small files still fit the bytes...
    assert refused.status_code == 200
    many = [upload(app, "203.0.113.31", 10).status_code for _ in range(LIMITS.uploads_per_client + 2)]
    assert many.count(429) == 2, many  # ...and the count is a limit of its own
    assert "uploaded 6 files" in upload(app, "203.0.113.31", 10).text
    assert upload(app, VICTIM, 500_000).status_code == 200


def test_the_upload_folder_has_a_total_quota(app):
    demo, _ = app
    guard = demo.client_guard
    drain(app)  # no comparison is writing trace files meanwhile
    guard._folder = (-1e9, 0)  # measure now
    used = guard.folder_bytes()
    room = LIMITS.upload_folder_bytes - used
    addresses = [f"203.0.113.{40 + i}" for i in range(8)]
    codes = []
    for address in addresses:  # each address within its own quota; together past the folder's
        codes.append(upload(app, address, 2_000_000).status_code)
    # Each upload is booked at its Content-Length (a little over 2 MB) until the folder is measured again.
    assert room // 2_000_000 - 1 <= codes.count(200) <= room // 2_000_000, (codes, used)
    assert codes[-1] == 413, codes
    full = upload(app, VICTIM, 2_000_000)
    assert full.status_code == 413 and "upload space is full" in full.text


def test_uploads_must_state_their_size_and_other_bodies_are_capped(app):
    _, url = app
    base = url.rstrip("/") + "/gradio_api"
    with httpx.Client(headers={"X-Forwarded-For": "203.0.113.60"}, timeout=60) as http:
        chunked = http.post(f"{base}/upload", content=iter([b"--x\r\n"] * 3),
                            headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 411
        big = http.post(f"{base}/queue/join", content=b"{" + b" " * 2_000_000 + b"}",
                        headers={"content-type": "application/json"})
        assert big.status_code == 413 and "larger than 1 MB" in big.text
        streamed = http.post(f"{base}/queue/join", content=iter([b" " * 600_000] * 3),
                             headers={"content-type": "application/json"})
        assert streamed.status_code == 413


# ---- (d) no session --------------------------------------------------------------------------------

def test_calls_without_a_session_get_one_clients_share(app):
    demo, url = app
    attacker = session(app, "203.0.113.70")
    image = attacker.upload(EXAMPLES / "toy-scene.png")
    attacker.close()
    payload = {"data": [image, PROMPT, ["vanilla"], LONG, "", "toy", ""]}
    with httpx.Client(headers={"X-Forwarded-For": "203.0.113.70"}, timeout=60) as http:
        answers = [http.post(f"{url.rstrip('/')}/gradio_api/call/compare", json=payload) for _ in range(10)]
    codes = [a.status_code for a in answers]
    try:
        assert codes.count(200) == LIMITS.decodes_per_client, codes
        assert codes.count(422) == 10 - LIMITS.decodes_per_client, codes
        assert "comparisons or re-runs" in detail(answers[-1])
        victim = session(app, VICTIM)
        try:
            reply = victim.compare(tokens=2)
            assert reply.ok
            print(f"\n10 /call/compare without a session: {codes.count(422)} refused; victim served in "
                  f"{reply.seconds:.1f} s")
        finally:
            victim.close()
    finally:
        drain(app)


# ---- (e) re-runs -----------------------------------------------------------------------------------

def test_reruns_share_the_comparisons_limit_and_workers(app):
    demo, _ = app
    fns = {fn.name: fn for fn in demo.fns.values() if fn.name in ("compare", "rerun")}
    assert fns["compare"].concurrency_id == fns["rerun"].concurrency_id  # one pool of `concurrency` workers
    pool = demo._queue.event_queue_per_concurrency_id[fns["compare"].concurrency_id]
    assert pool.concurrency_limit == 2
    attacker = session(app, "203.0.113.80")
    image = attacker.upload(EXAMPLES / "toy-scene.png")
    attacker.close()
    args = [image, PROMPT, ["vanilla"], LONG, "", "toy", "", None]
    try:
        held = [join(app, "203.0.113.80", "compare", args).status_code for _ in range(LIMITS.decodes_per_client)]
        assert held == [200] * LIMITS.decodes_per_client
        rerun = join(app, "203.0.113.80", "rerun", [None, "vanilla", None, None, None])
        assert rerun.status_code == 422 and "comparisons or re-runs" in detail(rerun)
        # A session's own limit counts re-runs too: a session with 2 comparisons cannot add a re-run.
        own = uuid.uuid4().hex[:11]
        assert [join(app, "203.0.113.81", "compare", args, own).status_code for _ in range(2)] == [200, 200]
        second = join(app, "203.0.113.81", "rerun", [None, "vanilla", None, None, None], own)
        assert second.status_code == 422 and "You already have 2" in detail(second)
    finally:
        drain(app)


# ---- the key and the log ---------------------------------------------------------------------------

def test_forwarded_addresses_are_ignored_without_trusted_proxies(app):
    """uvicorn would rewrite a loopback peer from X-Forwarded-For on its own; launch_options stops it."""
    demo, _ = app
    guard = demo.client_guard
    guard.trusted_proxies = 0
    try:
        assert upload(app, "192.0.2.99", 10).status_code == 200
        assert "192.0.2.99" not in guard.uploads.entries
        assert "127.0.0.1" in guard.uploads.entries
    finally:
        guard.trusted_proxies = 1


def test_a_refusal_is_one_log_line_and_no_traceback(app, caplog, capfd):
    with caplog.at_level(logging.WARNING, logger="halviz.ui"):
        assert upload(app, "203.0.113.90", 1_000_000).status_code == 200
        refusals = [upload(app, "203.0.113.90", 1_000_000) for _ in range(4)]
        victim = session(app, "198.51.100.20")  # a visitor of its own: VICTIM's uploads are spent by now
        try:
            bad = victim.call("compare", compare_args(victim, 4)[:1] + ["<image>"] + compare_args(victim, 4)[2:])
        finally:
            victim.close()
    assert [r.status_code for r in refusals].count(429) >= 1
    assert not bad.ok
    lines = [r.getMessage() for r in caplog.records if r.name == "halviz.ui" and r.levelno >= logging.WARNING]
    assert sum("upload_bytes_per_client" in line for line in lines) == [r.status_code for r in refusals].count(429)
    assert any(line.startswith("refused: ") for line in lines), lines  # the gr.Error, as one line
    assert all("\n" not in line for line in lines)
    assert "Traceback" not in capfd.readouterr().err


def test_a_lean_session_costs_little_and_tells_a_deep_link_the_same(app):
    """10,000 sessions must be affordable: Gradio's SessionState copies every component's config
    (about 490 KB here); the lean one stores only what the session changed, and says the same."""
    import tracemalloc

    from gradio.state_holder import SessionState

    from halviz.ui.fairness import LeanSessionState

    demo, _ = app
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [LeanSessionState(demo) for _ in range(50)]
        per_session = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_session < 64 * 1024, per_session
    gradios, lean = SessionState(demo), LeanSessionState(demo)
    key = next(k for k, block in demo.blocks.items() if type(block).__name__ == "Markdown")
    for state in (gradios, lean):
        state._update_value_in_config(key, "changed")
    assert sorted(lean.components, key=lambda c: c["id"]) == sorted(gradios.components, key=lambda c: c["id"])
    assert isinstance(demo.app.state_holder[uuid.uuid4().hex], LeanSessionState)


def test_answers_nobody_reads_stop_piling_up(app):
    """Joining and walking away, again and again in one session: its unread answers are bounded and
    its events are stopped like a client that hung up (each streamed update holds every column)."""
    demo, _ = app
    guard, queue = demo.client_guard, demo._queue
    attacker = session(app, "203.0.113.100")
    args = compare_args(attacker, 300)
    attacker.close()
    own = uuid.uuid4().hex[:11]
    before = guard.refusals["unread_messages"]
    guard.limits = replace(LIMITS, unread_messages=30)  # a toy comparison sends about 20 messages
    try:
        for _ in range(3):  # three rounds of the session's two comparisons, nobody reading
            assert [join(app, "203.0.113.100", "compare", args, own).status_code for _ in range(2)] == [200, 200]
            drain(app)
        unread = queue.pending_messages_per_session[own].qsize()
        assert unread <= 30 + 2, unread
        assert guard.refusals["unread_messages"] >= 4  # every comparison after the first one or two
        print(f"\n6 unread 300-token comparisons in one session: {unread} messages kept, "
              f"{guard.refusals['unread_messages'] - before} comparisons stopped")
    finally:
        guard.limits = LIMITS
        drain(app)
