"""``python -m tools.stress``: reliability scenarios against the app on 127.0.0.1 (toy model).

Launches the app in-process on a free loopback port and drives it through ``gradio_client``:
concurrent clients (each result must equal its alone-run), Stop/cancel and a client that
disconnects mid-stream, a method that raises (only its column fails), and a soak of N runs
(RSS growth, files left behind). Then a hostile user's attacks (``tools.hostile``): crafted trace
files, special tokens and overlong prompts, knob bombs, model-box probes of server paths, many
uploads, another session's Stop events, one client filling the queue, a slow model load next to
the loaded one, and ``python app.py`` stopped with SIGTERM. Bounded in requests and time; loopback
only; it stops by itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from halviz.methods import METHODS
from halviz.methods.base import Knob, Method

EXAMPLES = Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples"
PROMPT = "Describe the picture."
TIME_LIMIT_S = 540  # the whole command never runs longer than this
RSS_GROWTH_LIMIT_MB = 50  # from soak run 10 to the last


class FaultyMethod(Method):
    """A method that raises at a chosen step: the fault the app must contain to one column."""

    name = "faulty"
    title = "Faulty (test)"
    summary = "Raises RuntimeError at a chosen step; only for reliability tests."
    knobs = (Knob("fail_at", "Fail at step", 2, 0, 10_000, 1),)
    hook_points: ClassVar[frozenset[str]] = frozenset({"logits"})

    def edit_logits(self, p, logits):
        if p.step >= self.params["fail_at"]:
            raise RuntimeError(f"deliberate failure at step {p.step}")
        return logits


def stress_registry() -> dict[str, type[Method]]:
    return {**METHODS, FaultyMethod.name: FaultyMethod}


# ---- the app under test ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalApp:
    """The app launched in this process on 127.0.0.1; ``close()`` stops it."""

    def __init__(self, loader: Callable | None = None, model: str = "toy", concurrency: int | None = None,
                 models: Sequence[str] | None = None, allow_local: bool = False):
        from halviz.models import load_model
        from halviz.ui import build_app, launch_options

        self.model = model
        self.demo = build_app(models=list(models or [model]), default_model=model, loader=loader or load_model,
                              registry=stress_registry(), update_every_s=0, concurrency=concurrency,
                              allow_local=allow_local)
        _, self.url, _ = self.demo.launch(server_name="127.0.0.1", server_port=free_port(),
                                          prevent_thread_lock=True, quiet=True, **launch_options())
        self.downloads = Path(tempfile.mkdtemp(prefix="halviz-stress-downloads-"))
        # Every client of the harness is its own visitor, as separate browsers are: each arrives with its own
        # address in X-Forwarded-For, and the app trusts one proxy hop (as on a Space).
        self.demo.client_guard.trusted_proxies = 1
        self.clients_made = 0

    def client(self, address: str | None = None):
        """A gradio_client for a new visitor (a fresh address unless ``address`` names one)."""
        from gradio_client import Client

        self.clients_made += 1
        address = address or f"198.18.{self.clients_made // 250}.{self.clients_made % 250 + 1}"
        return Client(self.url, verbose=False, download_files=str(self.downloads),
                      headers={"X-Forwarded-For": address})

    def close(self) -> None:
        from halviz.ui import shutdown

        shutdown(self.demo)
        shutil.rmtree(self.downloads, ignore_errors=True)


def _trace_files(demo):
    """The app's TraceFiles."""
    return demo.halviz.files


def _trace_root(demo) -> Path:
    return _trace_files(demo).root


def files_under(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ---- requests and what identifies their results -----------------------------------------------------

@dataclass(frozen=True)
class Request:
    image: str
    methods: tuple[str, ...]
    tokens: int = 12
    truth: str = ""
    settings: str = ""

    def args(self, model: str) -> list:
        from gradio_client import handle_file

        return [handle_file(str(EXAMPLES / self.image)), PROMPT, list(self.methods), self.tokens, self.truth,
                model, self.settings]


def fingerprint(outputs: Sequence[Any]) -> dict[str, Any]:
    """What must not depend on other traffic: per column caption, tokens, finish and mention labels,
    and per trace file its token ids and a checksum of image_attn."""
    from halviz.trace import Trace

    summary = outputs[-1]
    columns = {m: {k: v for k, v in s.items() if k != "tokens_per_s"} for m, s in summary.items()}
    traces = {}
    for path in [p for p in (outputs[-2] or []) if str(p).endswith(".npz")]:
        trace = Trace.load(path)
        attn = trace.arrays.get("image_attn")
        # Download names carry the time of the run (halviz-toy-vanilla-20261207-101502.npz): key by the rest.
        traces[re.sub(r"-\d{8}-\d{6}(?=\.npz$)", "", Path(path).name)] = {
            "token_ids": trace.arrays["token_ids"].tolist(),
            "image_attn_sha1": hashlib.sha1(np.ascontiguousarray(attn).tobytes()).hexdigest() if attn is not None else None,
        }
    return {"columns": columns, "traces": traces}


@dataclass
class Timed:
    outputs: Any = None
    error: str | None = None
    first_update_s: float | None = None  # from submit to the first streamed update: queue wait
    total_s: float = 0.0


def submit_and_wait(client, request: Request, model: str, timeout_s: float = 120) -> Timed:
    started = time.perf_counter()
    job = client.submit(*request.args(model), api_name="/compare")
    result = Timed()
    try:
        for _ in job:
            if result.first_update_s is None:
                result.first_update_s = time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                job.cancel()
                raise TimeoutError(f"no answer in {timeout_s} s")
        result.outputs = job.outputs()[-1] if job.outputs() else None
        if not job.status().success:
            result.error = "failed"
            result.outputs = None
            try:
                job.result()
            except Exception as exc:  # the gr.Error message the server sent
                result.error = str(exc)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.total_s = time.perf_counter() - started
    return result


# ---- scenarios ----------------------------------------------------------------------------------------

# 2 × 320 tokens take several seconds on the toy model (its context of 512 holds ~170 prompt tokens + 320).
LONG = Request("toy-scene.png", ("vanilla", "vasparse"), tokens=320)
CONCURRENT = (
    Request("toy-scene.png", ("vanilla",)),
    Request("toy-cup-no-spoon.png", ("vanilla", "prunehal")),
    Request("chelsea.jpg", ("vasparse",), truth="cat"),
    Request("toy-boat-no-bird.png", ("vhr", "kvsmooth")),
)


@dataclass
class Report:
    requests: int = 0
    served: int = 0
    errors: Counter = field(default_factory=Counter)
    checks: dict[str, bool] = field(default_factory=dict)
    queue_waits: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    idle_after_s: dict[str, float] = field(default_factory=dict)  # worker freed this long after a stop
    hostile: dict[str, Any] = field(default_factory=dict)  # issue 12's attacks: what each got
    seconds: float = 0.0

    def record(self, timed: Timed, expect_error: bool = False) -> None:
        self.requests += 1
        if timed.first_update_s is not None:
            self.queue_waits.append(timed.first_update_s)
        if timed.error is None:
            self.served += 1
        elif not expect_error:
            self.errors[_error_kind(timed.error)] += 1

    def summary(self) -> dict[str, Any]:
        growth = self.rss_mb[-1] - self.rss_mb[min(9, len(self.rss_mb) - 1)] if self.rss_mb else 0.0
        return {
            "requests": self.requests, "served": self.served, "errors_by_kind": dict(self.errors),
            "checks": self.checks, "soak_runs": len(self.rss_mb),
            "rss_growth_mb_run10_to_last": round(growth, 1),
            "rss_mb_first_last": [round(self.rss_mb[0], 1), round(self.rss_mb[-1], 1)] if self.rss_mb else [],
            "max_queue_wait_s": round(max(self.queue_waits, default=0.0), 3),
            "worker_idle_after_stop_s": {k: round(v, 2) for k, v in self.idle_after_s.items()},
            "files": self.files, "hostile": self.hostile, "seconds": round(self.seconds, 1),
        }


def _error_kind(message: str) -> str:
    return message.split(":", 1)[0][:60] or "unknown"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def alone_results(app: LocalApp, requests: Sequence[Request], report: Report) -> list[dict]:
    client = app.client()
    results = []
    for request in requests:
        timed = submit_and_wait(client, request, app.model)
        report.record(timed)
        results.append(fingerprint(timed.outputs) if timed.outputs else {"error": timed.error})
    return results


def run_concurrently(app: LocalApp, requests: Sequence[Request], report: Report) -> list[dict]:
    clients = [app.client() for _ in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        timed = list(pool.map(lambda pair: submit_and_wait(pair[0], pair[1], app.model), zip(clients, requests)))
    for t in timed:
        report.record(t)
    return [fingerprint(t.outputs) if t.outputs else {"error": t.error} for t in timed]


def cancel_mid_stream(app: LocalApp, request: Request, after_updates: int = 3, timeout_s: float = 60) -> bool:
    """Submit, read a few streamed updates, cancel like the Stop button; True if it stopped early."""
    client = app.client()
    job = client.submit(*request.args(app.model), api_name="/compare")
    started = time.perf_counter()
    while len(job.outputs()) < after_updates and not job.done() and time.perf_counter() - started < timeout_s:
        time.sleep(0.01)
    finished_early = not job.done()
    job.cancel()
    while not job.done() and time.perf_counter() - started < timeout_s:
        time.sleep(0.02)
    return finished_early and job.done()


def disconnect_mid_stream(app: LocalApp, request: Request, after_messages: int = 4, timeout_s: float = 30) -> bool:
    """A raw HTTP client that joins the queue, reads a few stream messages and hangs up."""
    import uuid

    import httpx

    session = uuid.uuid4().hex[:10]
    base = app.url.rstrip("/") + "/gradio_api"
    fn_index = next(i for i, fn in app.demo.fns.items() if fn.api_name == "compare")
    with httpx.Client(timeout=timeout_s) as http:
        image = EXAMPLES / request.image
        with image.open("rb") as f:
            uploaded = http.post(f"{base}/upload", files={"files": (image.name, f)}).json()[0]
        data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": image.name}, PROMPT,
                list(request.methods), request.tokens, request.truth, app.model, request.settings, None]
        http.post(f"{base}/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                               "event_data": None, "trigger_id": None}).raise_for_status()
        seen = 0
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and '"process_generating"' in line:
                    seen += 1
                    if seen >= after_messages:
                        break  # leaving the block closes the connection mid-stream
    return seen >= after_messages


def seconds_until_idle(app: LocalApp, timeout_s: float = 30) -> float:
    """Seconds until the queue has no running or waiting job (a stuck worker keeps one); inf on timeout."""
    queue = app.demo._queue
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        busy = any(job_set for job_set in queue.active_jobs) or any(
            q.queue for q in queue.event_queue_per_concurrency_id.values())
        if not busy:
            return time.perf_counter() - started
        time.sleep(0.02)
    return float("inf")


def hostile_scenarios(app: LocalApp, report: "Report", log: Callable[[str], None]) -> None:
    """Issue 12's attacks against the running app (see ``tools.hostile``)."""
    from PIL import Image

    from tools import hostile
    from halviz.engine.decode import Decoder
    from halviz.models import load_model
    from halviz.session.state import MAX_SESSION_UPLOADS

    folder = Path(tempfile.mkdtemp(prefix="halviz-stress-traces-"))
    try:
        good, _ = Decoder(load_model("toy"), Image.open(EXAMPLES / "toy-scene.png"), PROMPT, [], 3).run_to_end().save(
            folder / "good")
        figures = hostile.run_hostile(app, good, folder, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report.hostile.update(figures)
    report.checks["trace_bombs_refused_politely"] = all(v["refused"] for v in figures["trace_bombs"].values())
    report.checks["prompt_and_knob_attacks_refused_politely"] = all(figures["prompt_attacks"].values())
    report.checks["model_box_same_answer_for_every_path"] = figures["model_box_same_answer_for_every_path"]
    report.checks["uploaded_traces_bounded_per_session"] = figures["uploads_kept_of_12"] == MAX_SESSION_UPLOADS
    report.checks["foreign_stops_keep_downloads"] = figures["download_after_70_foreign_stops"] == 200
    fill = hostile.fill_the_queue(app, submissions=18)
    report.hostile["queue_fill"] = {"submitted": fill.submitted, "refused": fill.refused,
                                    "other_client_served": fill.other_served}
    report.checks["one_client_cannot_fill_the_queue"] = fill.other_served and fill.refused >= fill.submitted - 4
    log(f"queue fill: {fill.refused} of {fill.submitted} refused, another client served: {fill.other_served}")


def slow_and_shutdown_scenarios(report: "Report", log: Callable[[str], None]) -> None:
    """A slow model load next to requests for the loaded one, and ``python app.py`` stopped with SIGTERM."""
    from tools import hostile
    from halviz.models import load_model

    loader = hostile.GatedLoader(load_model("toy"), "llava-hf/llava-1.5-7b-hf", timeout_s=30)
    app = LocalApp(loader=loader, models=["toy", loader.slow_name])
    try:
        submit_and_wait(app.client(), Request("toy-scene.png", ("vanilla",), tokens=4), app.model)  # toy loaded
        slow = hostile.slow_load_scenario(app, loader)
    finally:
        app.close()
    report.hostile["loaded_model_request_during_a_slow_load_s"] = round(slow.loaded_model_s, 2)
    report.checks["loaded_model_not_blocked_by_a_load"] = slow.error is None and slow.other_load_released
    log(f"slow load: a request for the loaded model took {slow.loaded_model_s:.2f} s while another model loaded")
    shutdown = hostile.sigterm_scenario()
    report.hostile["sigterm"] = {"exit_code": shutdown.exit_code, "seconds_to_exit": round(shutdown.seconds_to_exit, 2),
                                 "trace_dirs_before": shutdown.trace_dirs_before,
                                 "trace_dirs_after": shutdown.trace_dirs_after}
    report.checks["sigterm_deletes_the_trace_folder"] = (shutdown.started and shutdown.exit_code is not None
                                                         and shutdown.trace_dirs_before == 1
                                                         and shutdown.trace_dirs_after == 0)
    log(f"SIGTERM: exit {shutdown.exit_code} after {shutdown.seconds_to_exit:.1f} s, trace folders "
        f"{shutdown.trace_dirs_before} → {shutdown.trace_dirs_after}")


def run_scenarios(runs: int = 100, quick: bool = False, soak_tokens: int = 12,
                  log: Callable[[str], None] = print, hostile: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    deadline = started + TIME_LIMIT_S
    report = Report()
    gradio_cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    stray_before = set(Path(tempfile.gettempdir()).glob("halviz-traces-*"))
    cache_before = files_under(gradio_cache)
    app = LocalApp()
    try:
        traces = _trace_root(app.demo)
        requests = CONCURRENT[:2] if quick else CONCURRENT
        log(f"app on {app.url}; alone-runs of {len(requests)} requests…")
        alone = alone_results(app, requests, report)

        together = run_concurrently(app, requests, report)
        report.checks["concurrent_equal_alone"] = together == alone
        log(f"concurrent ×{len(requests)}: equal to alone-runs: {together == alone}")

        # a stopped run must free its worker at once.
        long_request = LONG
        folders = len(list(traces.iterdir()))
        report.checks["cancel_stopped_early"] = cancel_mid_stream(app, long_request)
        report.requests += 1
        report.idle_after_s["cancel"] = seconds_until_idle(app)
        report.checks["disconnect_read_stream"] = disconnect_mid_stream(app, long_request)
        report.requests += 1
        report.idle_after_s["disconnect"] = seconds_until_idle(app)
        report.checks["worker_freed_within_2s"] = max(report.idle_after_s.values()) < 2.0
        report.checks["no_files_from_stopped_runs"] = len(list(traces.iterdir())) == folders
        after = alone_results(app, requests[:1], report)
        report.checks["next_run_equals_alone_after_cancel"] = after == alone[:1]
        log(f"cancel/disconnect: {report.checks}")

        client = app.client()
        faulty = submit_and_wait(client, Request("toy-scene.png", ("vanilla", "faulty"), tokens=8), app.model)
        report.record(faulty)
        summary = faulty.outputs[-1] if faulty.outputs else {}
        vanilla_alone = fingerprint(submit_and_wait(client, Request("toy-scene.png", ("vanilla",), tokens=8),
                                                    app.model).outputs)
        report.requests += 1
        report.served += 1
        report.checks["fault_isolated"] = (
            str(summary.get("faulty", {}).get("finish_reason", "")).startswith("error: RuntimeError")
            and summary.get("vanilla") == vanilla_alone["columns"]["vanilla"] | {"tokens_per_s": summary["vanilla"]["tokens_per_s"]}
        ) if summary else False
        again = alone_results(app, requests[:1], report)
        report.checks["next_run_equals_alone_after_fault"] = again == alone[:1]
        log(f"fault: isolated {report.checks['fault_isolated']}")

        soak = Request("toy-cup-no-spoon.png", ("vanilla", "prunehal"), tokens=soak_tokens)
        soak_runs = min(runs, 20) if quick else runs
        for i in range(soak_runs):
            if time.perf_counter() > deadline:
                log(f"time limit reached after {i} soak runs")
                break
            report.record(submit_and_wait(client, soak, app.model))
            report.rss_mb.append(rss_mb())
        log(f"soak: {len(report.rss_mb)} runs, RSS {report.rss_mb[0]:.0f} → {report.rss_mb[-1]:.0f} MB")
        report.files = {
            "trace_folders_kept": len(list(traces.iterdir())),
            "trace_files_kept": files_under(traces),
            "gradio_cache_new_files_while_running": files_under(gradio_cache) - cache_before,
        }
        if hostile:
            hostile_scenarios(app, report, log)
    finally:
        app.close()
    if hostile:
        slow_and_shutdown_scenarios(report, log)
    report.files["trace_files_left_after_close"] = files_under(traces)
    report.files["gradio_cache_new_files_after_close"] = files_under(gradio_cache) - cache_before
    report.files["halviz_trace_dirs_left_in_tmp"] = len(
        set(Path(tempfile.gettempdir()).glob("halviz-traces-*")) - stray_before)
    report.seconds = time.perf_counter() - started
    return report.summary()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="soak runs (default 100)")
    parser.add_argument("--quick", action="store_true", help="2 concurrent clients, at most 20 soak runs")
    parser.add_argument("--no-hostile", action="store_true",
                        help="skip the hostile-user attacks (trace bombs, queue filling, slow loads, SIGTERM…)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--load", action="store_true",
                        help="only the load test: polite clients beside one hostile client (tools.load; "
                             "with --quick, 3 clients)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.load:
        from tools import load

        return load.main((["--quick"] if args.quick else []) + (["--json", str(args.json)] if args.json else []))
    logging.basicConfig(level=logging.CRITICAL)  # the deliberate fault's stack trace is expected
    logging.getLogger("halviz").setLevel(logging.CRITICAL)
    summary = run_scenarios(runs=max(10, args.runs), quick=args.quick, hostile=not args.no_hostile)
    for key, value in summary.items():
        print(f"{key:>32}: {value}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    ok = (all(summary["checks"].values()) and not summary["errors_by_kind"]
          and summary["rss_growth_mb_run10_to_last"] < RSS_GROWTH_LIMIT_MB)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
