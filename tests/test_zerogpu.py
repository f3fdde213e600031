"""Issue 15: the app under ZeroGPU's process model, with a stand-in ``spaces`` (tests/standins/spaces).

``python app.py`` runs in a subprocess that imports the stand-in, so the comparison is decoded in a
worker forked from the server; arguments and yields are pickled and torch objects are refused at
the boundary. A comparison must stream and finish through it, a cancelled one must free its worker,
and the default model must have been loaded and warmed before the first request.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from tools.stress import free_port
from halviz.session.decoding import gpu_seconds

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "halviz" / "assets" / "examples" / "toy-cup-no-spoon.png"
PROMPT = "Please describe this image in detail."


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def zerogpu_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zerogpu")
    log, port = folder / "spaces.jsonl", free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "standins"), str(ROOT)]),
               SPACES_STANDIN_LOG=str(log), GRADIO_TEMP_DIR=str(folder / "cache"), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start: " + (process.stdout.read() if process.poll() is not None else ""))
        served_at = time.time()
        yield {"url": url, "log": log, "pid": process.pid, "served_at": served_at}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_default_model_is_loaded_and_warmed_before_serving(zerogpu_app):
    warm = [e for e in _events(zerogpu_app["log"]) if e["event"] == "call" and e["time"] < zerogpu_app["served_at"]]
    assert warm, "no decode ran through spaces.GPU before the app served"
    assert warm[0]["parent_pid"] == zerogpu_app["pid"] and warm[0]["pid"] != zerogpu_app["pid"]


def test_a_comparison_streams_and_finishes_in_a_forked_worker(zerogpu_app):
    client = Client(zerogpu_app["url"], verbose=False)
    methods, tokens = ["vanilla", "vhr"], 12
    before = len(_events(zerogpu_app["log"]))
    job = client.submit(handle_file(str(SCENE)), PROMPT, methods, tokens, "", "toy", "", api_name="/compare")
    outputs = list(job)
    assert job.status().success
    summaries = [o[-1] for o in outputs if o and isinstance(o[-1], dict) and set(methods) <= set(o[-1])]
    assert len(summaries) >= 2, "the captions did not stream"
    final = job.outputs()[-1][-1]
    for method in methods:
        assert final[method]["tokens"] >= 1 and final[method]["caption"].strip()
        assert "error" not in final[method]
    events = _events(zerogpu_app["log"])[before:]
    calls = [e for e in events if e["event"] == "call"]
    ends = [e for e in events if e["event"] == "ended"]
    assert len(calls) == 1 and calls[0]["pid"] != zerogpu_app["pid"] and calls[0]["parent_pid"] == zerogpu_app["pid"]
    assert calls[0]["duration"] == gpu_seconds(len(methods), tokens)  # asked for what this request needs
    assert [e["how"] for e in ends] == ["end"]


def test_a_cancelled_comparison_frees_its_worker(zerogpu_app):
    client = Client(zerogpu_app["url"], verbose=False)
    before = len(_events(zerogpu_app["log"]))
    job = client.submit(handle_file(str(SCENE)), PROMPT, ["vanilla", "prunehal", "vasparse", "vhr", "kvsmooth"], 200,
                        "", "toy", "", api_name="/compare")
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 2 and not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.done(), "the run ended before it could be cancelled"
    job.cancel()
    ended = []
    while not ended and time.monotonic() < deadline:
        ended = [e for e in _events(zerogpu_app["log"])[before:] if e["event"] == "ended"]
        time.sleep(0.1)
    assert ended and ended[0]["how"] in ("cancelled", "stopped") and ended[0]["exitcode"] is not None
    # and the next visitor gets a worker as usual
    result = client.predict(handle_file(str(SCENE)), PROMPT, ["vanilla"], 4, "", "toy", "", api_name="/compare")
    assert result[-1]["vanilla"]["tokens"] >= 1
