"""Reliability of the served app: a failing method stays in its column, concurrent clients get exactly
their alone-results, Stop and disconnects free the worker and leave no files, and 100 runs neither
grow memory nor leave files behind. One app on 127.0.0.1 with the bundled toy model (conftest's toy_app)."""

import gc
import logging
import threading
from pathlib import Path

import pytest
from PIL import Image

from halviz.engine.decode import Decoder
from halviz.methods import build_stack
from tools.stress import (
    CONCURRENT,
    EXAMPLES,
    LONG,
    PROMPT,
    FaultyMethod,
    Request,
    _trace_files,
    cancel_mid_stream,
    disconnect_mid_stream,
    files_under,
    fingerprint,
    rss_mb,
    seconds_until_idle,
    submit_and_wait,
)
from halviz.ui.app import DEFAULT_CONCURRENCY, concurrency_from_env
from halviz.session.results import decode_rounds
from halviz.session.state import RunEntry, TraceFiles

# 50 runs: 6× past every per-session bound the soak checks (8 trace folders). RSS may grow at most
# LEAK_MB_PER_RUN a run from run 10 on (50 MB over 90 runs before, the same per-run bound; measured here:
# ~0.13 MB a run of allocator drift, ±3 MB of noise): a steady leak past 0.55 MB a run fails both.
SOAK_RUNS = 50
LEAK_MB_PER_RUN = 0.55
SOAK_TOKENS = 4  # enough for PruneHal's forced prune (step 2) in every run; the soak counts runs, not tokens


@pytest.fixture(scope="module")
def app(toy_app):
    """conftest's LocalApp serving the toy model (the toy itself is conftest's ``toy``), shared with test_fuzz."""
    return toy_app


@pytest.fixture(scope="module")
def alone(app):
    """Each concurrent request's result when it has the server to itself."""
    client = app.client()
    results = []
    for request in CONCURRENT:
        timed = submit_and_wait(client, request, app.model)
        assert timed.error is None, timed.error
        results.append(fingerprint(timed.outputs))
    return results


def picture(name="toy-scene.png"):
    return Image.open(EXAMPLES / name)


# ---- fault isolation -------------------------------------------------------------------------------

def test_a_raising_method_ends_only_its_own_column(toy, caplog):
    stacks = [[], [FaultyMethod(fail_at=3)], build_stack(["prunehal"])]
    with caplog.at_level(logging.ERROR, logger="halviz"):
        final = list(decode_rounds(toy, picture(), PROMPT, stacks, 10, update_every_s=0))[-1]
    assert final.finish[1] == "error: RuntimeError: deliberate failure at step 3"
    assert len(final.texts[1]) == 3  # the steps before the fault are kept
    assert final.traces[1].meta["finish_reason"].startswith("error:")
    for column, names in ((0, ["vanilla"]), (2, ["prunehal"])):
        expected = Decoder(toy, picture(), PROMPT, build_stack(names), 10).run_to_end()
        assert "".join(final.texts[column]) == expected.caption
        assert final.finish[column] == expected.meta["finish_reason"]
        assert final.traces[column].arrays["token_ids"].tolist() == expected.arrays["token_ids"].tolist()
    assert "Traceback" in caplog.text  # the stack trace goes to the server log


def test_every_column_failing_still_ends_the_run(toy):
    updates = list(decode_rounds(toy, picture(), PROMPT, [[FaultyMethod(fail_at=0)]] * 2, 5, update_every_s=0))
    assert [f.startswith("error:") for f in updates[-1].finish] == [True, True]


def test_fault_reaches_the_api_as_a_column_error_and_the_next_run_works(app, alone):
    client = app.client()
    faulty = submit_and_wait(client, Request("toy-scene.png", ("vanilla", "faulty"), settings='{"faulty": {"fail_at": 4}}'),
                             app.model)
    assert faulty.error is None, faulty.error
    summary = faulty.outputs[-1]
    assert summary["faulty"]["finish_reason"] == "error: RuntimeError: deliberate failure at step 4"
    assert summary["faulty"]["error"] == "RuntimeError: deliberate failure at step 4"
    assert summary["faulty"]["tokens"] == 4 and "Traceback" not in str(faulty.outputs)
    alone_vanilla = fingerprint(submit_and_wait(client, Request("toy-scene.png", ("vanilla",)), app.model).outputs)
    assert {k: v for k, v in summary["vanilla"].items() if k != "tokens_per_s"} == alone_vanilla["columns"]["vanilla"]
    status = faulty.outputs[0]
    assert "failed" in status and "Traceback" not in status
    assert fingerprint(submit_and_wait(client, CONCURRENT[0], app.model).outputs) == alone[0]


# ---- concurrency -------------------------------------------------------------------------------------

def test_concurrency_setting():
    assert concurrency_from_env({}) == DEFAULT_CONCURRENCY == 2
    assert concurrency_from_env({"HALVIZ_CONCURRENCY": "3"}) == 3
    assert concurrency_from_env({"HALVIZ_CONCURRENCY": "0"}) == 1
    assert concurrency_from_env({"HALVIZ_CONCURRENCY": "lots"}) == DEFAULT_CONCURRENCY


def test_engine_threads_sharing_one_model_match_sequential_runs(toy):
    names = [["vanilla"], ["prunehal"], ["vasparse"], ["vhr"]]
    sequential = [Decoder(toy, picture(), PROMPT, build_stack(n), 12).run_to_end() for n in names]
    results: dict[int, object] = {}

    def decode(i):
        results[i] = Decoder(toy, picture(), PROMPT, build_stack(names[i]), 12).run_to_end()

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(sequential):
        assert results[i].arrays["token_ids"].tolist() == expected.arrays["token_ids"].tolist()
        assert (results[i].arrays["image_attn"] == expected.arrays["image_attn"]).all()


def test_four_concurrent_clients_each_get_their_alone_result(app, alone):
    from concurrent.futures import ThreadPoolExecutor

    queue = app.demo._queue
    assert queue.default_concurrency_limit == DEFAULT_CONCURRENCY
    running: list[int] = []
    watching = threading.Event()

    def watch():  # how many jobs the server runs at once
        while not watching.is_set():
            running.append(sum(len(jobs) for jobs in queue.active_jobs if jobs))
            watching.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [app.client() for _ in CONCURRENT]
    try:
        with ThreadPoolExecutor(len(CONCURRENT)) as pool:
            timed = list(pool.map(lambda pair: submit_and_wait(pair[0], pair[1], app.model),
                                  zip(clients, CONCURRENT)))
    finally:
        watching.set()
        watcher.join()
    assert max(running) == DEFAULT_CONCURRENCY  # runs really overlapped, and never more than the limit
    assert [t.error for t in timed] == [None] * len(CONCURRENT)
    assert [fingerprint(t.outputs) for t in timed] == alone
    assert all(fp["traces"] and all(t["image_attn_sha1"] for t in fp["traces"].values()) for fp in alone)


# ---- cancellation ------------------------------------------------------------------------------------



@pytest.mark.parametrize("stop", [cancel_mid_stream, disconnect_mid_stream])
def test_a_stopped_run_frees_its_worker_and_leaves_no_files(app, alone, stop):
    traces = _trace_files(app.demo)
    before = files_under(traces.root)
    assert stop(app, LONG)
    assert seconds_until_idle(app, timeout_s=10) < 3
    assert files_under(traces.root) == before
    client = app.client()
    assert fingerprint(submit_and_wait(client, CONCURRENT[1], app.model).outputs) == alone[1]


# ---- soak and files ---------------------------------------------------------------------------------

def test_trace_files_keep_a_bounded_number_of_folders(tmp_path, toy):
    files = TraceFiles(parent=tmp_path, per_owner=3, max_owners=2)
    trace = Decoder(toy, picture(), PROMPT, [], 2).run_to_end()
    runs = {"vanilla": RunEntry("vanilla", "Greedy", trace, None, None)}
    theirs = files.save(runs, owner="b")
    saved = [files.save(runs, owner="a") for _ in range(7)]
    assert len(list(files.root.iterdir())) == 4  # a's newest 3, and b's one: a never evicts b
    assert all(Path(p).exists() for p in saved[-1] + theirs) and not any(Path(p).exists() for p in saved[0])
    files.save(runs, owner="c")  # a third session: the one that saved least recently (b) loses its files
    assert not any(Path(p).exists() for p in theirs) and all(Path(p).exists() for p in saved[-1])
    root = files.root
    del files
    gc.collect()
    assert not root.exists()  # the folder goes with its owner


def test_soak_memory_and_files_stay_bounded(app):
    client = app.client()
    traces = _trace_files(app.demo)
    request = Request("toy-cup-no-spoon.png", ("prunehal",), tokens=SOAK_TOKENS)
    rss, errors = [], []
    for _ in range(SOAK_RUNS):
        timed = submit_and_wait(client, request, app.model)
        errors += [timed.error] if timed.error else []
        rss.append(rss_mb())
    assert errors == []
    growth = rss[-1] - rss[9]
    assert growth < LEAK_MB_PER_RUN * (SOAK_RUNS - 10), f"RSS grew {growth:.1f} MB from run 10 to run {SOAK_RUNS}"
    mine = traces.folders(owner=client.session_hash)
    assert len(mine) == traces.per_owner  # this session's oldest went first; other sessions' stay
    assert sorted(traces.root.iterdir()) == sorted(traces.folders())  # nothing on disk the bookkeeping forgot
    assert sum(files_under(folder) for folder in mine) == traces.per_owner * 2 * len(request.methods)
