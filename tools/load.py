"""``python -m tools.stress --load`` (or ``python -m tools.load``): polite visitors beside one hostile
client, against the app on 127.0.0.1 with ``HALVIZ_TRUSTED_PROXIES=1`` and the default limits.

Each polite client has its own forwarded address and does a few rounds of what a visitor does: one
comparison, the debugger's follow-up (the first trace drawn) and one click on it (a step), with a
short pause between rounds. Each runs its rounds alone first (one client at a time, nobody else on
the server), then all of them together beside a hostile client that uses every attack of
``tools.hostile`` and ``tests/test_client_limits.py`` from one address at once: comparisons that
hold the workers (its share, read to the end, again and again), more comparisons joined and walked
away from, new sessions per request, calls without a session, and uploads past its quota.

The check: every polite request is served, each client's time under attack (its requests' latencies,
pauses excluded) is within ``LIMIT_RATIO`` × its time when the polite clients are alone on the server
(all of them at once, without the hostile one), and its captions equal its solo run's. Each client's
time by itself (one client on the server) is printed beside: on a small machine the polite clients
slow each other down too, and that is not the attack's doing. Bounded: a fixed number of requests
per attack, a deadline for the whole run, loopback only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from tools.hostile import RawSession
from tools.stress import EXAMPLES, PROMPT, free_port

LIMIT_RATIO = 3.0
HOSTILE = "203.0.113.66"  # TEST-NET-3: the attacker's forwarded address
POLITE = "198.51.100.{}"  # TEST-NET-2: one address per polite client


@dataclass(frozen=True)
class LoadPlan:
    polite: int = 6  # polite clients
    rounds: int = 3  # comparison + debugger per client
    tokens: int = 8  # per polite comparison
    pause_s: float = 2.0  # between a client's rounds (when the clients run at once)
    stagger_s: float = 0.5  # between the clients' arrivals
    hostile_tokens: int = 160  # per hostile comparison (its holders read them to the end)
    holders: int = 4  # hostile sessions that each keep one comparison running or waiting
    walk_aways: int = 24  # comparisons joined and abandoned, from new sessions
    no_session_calls: int = 8  # POST /gradio_api/call/compare without a session
    invented_sessions: int = 320  # cheap events, each from a new session (past the 300 an hour)
    uploads: int = 320  # small uploads (past the 300 an hour)
    deadline_s: float = 400.0  # the whole run


QUICK = LoadPlan(polite=3, rounds=2, tokens=4, pause_s=0.5, stagger_s=0.3, hostile_tokens=60, holders=4, walk_aways=8,
                 no_session_calls=4, invented_sessions=40, uploads=20, deadline_s=240.0)


@dataclass
class Visit:
    seconds: float = 0.0  # latencies of its requests, pauses excluded
    captions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    by_request: Counter = field(default_factory=Counter)  # event → seconds

    def took(self, fn: str, seconds: float) -> None:
        self.seconds += seconds
        self.by_request[fn] += seconds


def polite_client(url: str, demo, index: int, plan: LoadPlan) -> Visit:
    """One visitor's rounds: compare, the debugger's follow-up, one step clicked."""
    raw = RawSession(url, demo, timeout_s=plan.deadline_s)
    raw.http.headers["X-Forwarded-For"] = POLITE.format(10 + index)
    visit = Visit()
    try:
        for round_ in range(plan.rounds):
            if round_:
                time.sleep(plan.pause_s)
            compared = raw.compare(tokens=plan.tokens)
            visit.took("compare", compared.seconds)
            if not compared.ok:
                visit.failures.append(f"compare: {compared.message[:120]}")
                continue
            summary = compared.data[-1]["vanilla"]
            visit.captions.append(f"{summary['caption']} [{summary['tokens']} tokens, {summary['finish_reason']}]")
            for fn, data in (("show_first", [None, None]),
                             ("at_step", [None, "vanilla", min(2, plan.tokens - 1), "mean", "mean", None, None])):
                reply = raw.call(fn, data)
                visit.took(fn, reply.seconds)
                if not reply.ok:
                    visit.failures.append(f"{fn}: {reply.message[:120]}")
    finally:
        raw.close()
    return visit


# ---- the hostile client -------------------------------------------------------------------------------

class Hostile:
    """Every attack at once from one address, until ``stop`` is set (each attack is bounded too)."""

    def __init__(self, url: str, demo, plan: LoadPlan):
        self.url, self.demo, self.plan = url.rstrip("/"), demo, plan
        self.stop = threading.Event()
        self.answers: Counter = Counter()  # (attack, HTTP status or "ok"/"refused") → count
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.image: dict | None = None

    def count(self, attack: str, outcome: Any) -> None:
        with self.lock:
            self.answers[attack, str(outcome)] += 1

    def http(self) -> httpx.Client:
        return httpx.Client(headers={"X-Forwarded-For": HOSTILE}, timeout=self.plan.deadline_s)

    def session(self) -> RawSession:
        raw = RawSession(self.url, self.demo, timeout_s=self.plan.deadline_s)
        raw.http.headers["X-Forwarded-For"] = HOSTILE
        return raw

    def start(self) -> None:
        raw = self.session()
        self.image = raw.upload(EXAMPLES / "toy-scene.png")
        raw.close()
        attacks: list[Callable[[], None]] = [self.hold] * self.plan.holders + [
            self.walk_away, self.no_session, self.invent_sessions, self.upload_past_quota]
        self.threads = [threading.Thread(target=a, daemon=True) for a in attacks]
        for thread in self.threads:
            thread.start()

    def finish(self, timeout_s: float = 120) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout_s)

    def compare_args(self, tokens: int) -> list:
        return [self.image, PROMPT, ["vanilla"], tokens, "", "toy", "", None]

    def hold(self) -> None:
        """Its share of the workers, again and again: one long comparison at a time per session."""
        raw = self.session()
        try:
            while not self.stop.is_set():
                reply = raw.call("compare", self.compare_args(self.plan.hostile_tokens))
                self.count("hold the workers", "served" if reply.ok else reply.status)
                if not reply.ok:
                    time.sleep(0.2)
        finally:
            raw.close()

    def join(self, http: httpx.Client, fn: str, data: list, session: str | None = None) -> httpx.Response:
        index = next(i for i, f in self.demo.fns.items() if f.name == fn or f.api_name == fn)
        body = {"data": data, "fn_index": index, "session_hash": session or uuid.uuid4().hex[:11],
                "event_data": None, "trigger_id": None}
        return http.post(f"{self.url}/gradio_api/queue/join", content=json.dumps(body),
                         headers={"content-type": "application/json"})

    def walk_away(self) -> None:
        """Comparisons from new sessions, joined and never read (Gradio's queue flood)."""
        with self.http() as http:
            for _ in range(self.plan.walk_aways):
                if self.stop.is_set():
                    break
                self.count("walk-away comparisons", self.join(http, "compare",
                                                              self.compare_args(self.plan.hostile_tokens)).status_code)
                time.sleep(0.1)

    def no_session(self) -> None:
        payload = {"data": self.compare_args(self.plan.hostile_tokens)[:-1]}
        with self.http() as http:
            for _ in range(self.plan.no_session_calls):
                if self.stop.is_set():
                    break
                answer = http.post(f"{self.url}/gradio_api/call/compare", json=payload)
                self.count("calls without a session", answer.status_code)
                time.sleep(0.2)

    def invent_sessions(self) -> None:
        with self.http() as http:
            for _ in range(self.plan.invented_sessions):
                if self.stop.is_set():
                    break
                self.count("invented sessions", self.join(http, "truth_note", [None, ""]).status_code)

    def upload_past_quota(self) -> None:
        with self.http() as http:
            for _ in range(self.plan.uploads):
                if self.stop.is_set():
                    break
                answer = http.post(f"{self.url}/gradio_api/upload", files={"files": ("x.bin", b"\0" * 2048)})
                self.count("uploads", answer.status_code)

    def figures(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for (attack, outcome), n in sorted(self.answers.items()):
            found.setdefault(attack, {})[outcome] = n
        return found


# ---- the run --------------------------------------------------------------------------------------------

def launched(loader=None, limits=None):
    """The app (toy model, default limits unless given) on a free loopback port, trusting one proxy hop."""
    from halviz.models import load_model
    from halviz.ui import build_app, launch_options

    previous = os.environ.get("HALVIZ_TRUSTED_PROXIES")
    os.environ["HALVIZ_TRUSTED_PROXIES"] = "1"
    try:
        demo = build_app(models=["toy"], default_model="toy", loader=loader or load_model, preload=[],
                         update_every_s=0, limits=limits)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **launch_options())
    finally:
        if previous is None:
            os.environ.pop("HALVIZ_TRUSTED_PROXIES", None)
        else:
            os.environ["HALVIZ_TRUSTED_PROXIES"] = previous
    return demo, url


def drain(demo, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(demo._queue) == 0 and not any(demo._queue.active_jobs):
            return
        time.sleep(0.1)


def visitors(url: str, demo, plan: LoadPlan, started: float) -> list[Visit | None]:
    """The polite clients at once (arriving ``stagger_s`` apart); None for one past the deadline."""
    results: list[Visit | None] = [None] * plan.polite

    def visit(i: int) -> None:
        time.sleep(i * plan.stagger_s)
        results[i] = polite_client(url, demo, i, plan)

    threads = [threading.Thread(target=visit, args=(i,), daemon=True) for i in range(plan.polite)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, plan.deadline_s - (time.perf_counter() - started)))
    return results


def run_load(plan: LoadPlan = LoadPlan(), loader=None, limits=None, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Solo runs, then the polite clients together beside the hostile one; the figures and the checks."""
    from halviz.ui import shutdown

    started = time.perf_counter()
    demo, url = launched(loader, limits)
    try:
        polite_client(url, demo, plan.polite + 1, LoadPlan(rounds=1, tokens=plan.tokens))  # warm the model
        solo = []
        for i in range(plan.polite):
            solo.append(polite_client(url, demo, i, replace(plan, pause_s=0.0)))
            log(f"client {i} alone: {solo[-1].seconds:.2f} s")
        together = visitors(url, demo, plan, started)
        log(f"the polite clients alone (at once): {[round(v.seconds, 2) if v else None for v in together]}")
        hostile = Hostile(url, demo, plan)
        hostile.start()
        time.sleep(1.0)  # the attack is under way before the visitors arrive
        attacked_at = time.perf_counter()
        results = visitors(url, demo, plan, started)
        polite_wall = time.perf_counter() - attacked_at
        hostile.finish()
        drain(demo)
        refusals = dict(demo.client_guard.refusals)
    finally:
        shutdown(demo)
    clients = []
    for i, (alone, crowd, attacked) in enumerate(zip(solo, together, results)):
        crowd = crowd or Visit(failures=["did not finish before the deadline"])
        attacked = attacked or Visit(failures=["did not finish before the deadline"])
        ratio = attacked.seconds / crowd.seconds if crowd.seconds else float("inf")
        clients.append({"client": i, "by_itself_s": round(alone.seconds, 2), "alone_s": round(crowd.seconds, 2),
                        "under_attack_s": round(attacked.seconds, 2), "ratio": round(ratio, 2),
                        "ratio_to_by_itself": round(attacked.seconds / alone.seconds, 2) if alone.seconds else None,
                        "captions_equal_solo": attacked.captions == alone.captions == crowd.captions,
                        "under_attack_by_request_s": {k: round(v, 2) for k, v in attacked.by_request.items()},
                        "failures": alone.failures + crowd.failures + attacked.failures})
    checks = {
        "every_polite_request_served": all(not c["failures"] for c in clients),
        f"within_{LIMIT_RATIO:g}x_alone": all(c["ratio"] <= LIMIT_RATIO for c in clients),
        "captions_equal_solo_runs": all(c["captions_equal_solo"] for c in clients),
        "hostile_refused": sum(n for attack in hostile.figures().values()
                               for outcome, n in attack.items() if outcome in ("422", "429", "413")) > 0,
    }
    return {"plan": plan.__dict__, "clients": clients, "polite_wall_s": round(polite_wall, 1),
            "hostile_answers": hostile.figures(), "refusals_logged": refusals, "checks": checks,
            "seconds": round(time.perf_counter() - started, 1)}


def print_figures(figures: dict[str, Any], out=print) -> None:
    plan = figures["plan"]
    out(f"{plan['polite']} polite clients × {plan['rounds']} rounds (a {plan['tokens']}-token comparison, the "
        f"debugger, a step; {plan['pause_s']:g} s between rounds) beside one hostile client; times are the "
        "requests' latencies, pauses excluded")
    out(f"{'client':>6} {'by itself s':>11} {'alone s':>8} {'attacked s':>10} {'ratio':>6} {'÷ by itself':>11}"
        "  captions = solo")
    for c in figures["clients"]:
        out(f"{c['client']:>6} {c['by_itself_s']:>11.2f} {c['alone_s']:>8.2f} {c['under_attack_s']:>10.2f} "
            f"{c['ratio']:>6.2f} {c['ratio_to_by_itself']:>11.2f}  {c['captions_equal_solo']}"
            + (f"  failures: {c['failures']}" if c["failures"] else ""))
    out("alone: the polite clients at once, no hostile client; by itself: one client on the server; "
        "ratio: attacked / alone")
    out("hostile client's answers (HTTP status, or served):")
    for attack, outcomes in figures["hostile_answers"].items():
        out(f"  {attack}: {outcomes}")
    out(f"refusals logged by the server: {figures['refusals_logged']}")
    out(f"checks: {figures['checks']}  ({figures['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 clients × 2 rounds, shorter attacks")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("halviz").setLevel(logging.CRITICAL)  # the refusals are expected
    figures = run_load(QUICK if args.quick else LoadPlan())
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
