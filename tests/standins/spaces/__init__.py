"""A stand-in for the ``spaces`` package's ZeroGPU decorator, for tests: its process model without a GPU.

What it copies from ``spaces`` 0.51 (``spaces/zero/wrappers.py``): the decorated function runs in a
worker forked from the app process (so what the app loaded at start-up is inherited); the arguments
are pickled on the way in and every yielded value on the way out; ``duration`` may be a number or a
callable that receives the call's own arguments; closing the caller's generator (a cancelled
request) sets a stop event that the worker checks after each yield, and it then closes the task's
generator. What it adds, to make tests strict: torch modules and tensors refuse to cross the
boundary (a model or a CUDA tensor in an argument or a yield is a bug on ZeroGPU), and each call
appends a JSON line to ``$SPACES_STANDIN_LOG`` (duration asked, worker pid, how it ended).
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import multiprocessing
import os
import pickle
import time

_FORK = multiprocessing.get_context("fork")
_POLL_S = 0.05


class _BoundaryPickler(pickle.Pickler):
    def reducer_override(self, obj):
        try:
            import torch
        except ImportError:
            return NotImplemented
        if isinstance(obj, (torch.nn.Module, torch.Tensor)):
            raise pickle.PicklingError(f"a {type(obj).__name__} crossed the ZeroGPU process boundary")
        return NotImplemented


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _BoundaryPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _log(**event) -> None:
    path = os.environ.get("SPACES_STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


def _name(task) -> str:
    return getattr(task, "__name__", None) or getattr(getattr(task, "func", None), "__name__", type(task).__name__)


def _worker(task, payload: bytes, conn, stop) -> None:
    args, kwargs = pickle.loads(payload)
    try:
        if inspect.isgeneratorfunction(task):
            generator = task(*args, **kwargs)
            for value in generator:
                if stop.is_set():
                    generator.close()
                    conn.send_bytes(pickle.dumps(("stopped", None)))
                    return
                conn.send_bytes(pickle.dumps(("value", _dumps(value))))
        else:
            conn.send_bytes(pickle.dumps(("value", _dumps(task(*args, **kwargs)))))
        conn.send_bytes(pickle.dumps(("end", None)))
    except BaseException as exc:  # everything reaches the caller as ZeroGPU reports it: a class name
        conn.send_bytes(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))


def _error(text: str) -> Exception:
    try:
        import gradio as gr
        return gr.Error(f"ZeroGPU worker error: {text}")
    except ImportError:
        return RuntimeError(f"ZeroGPU worker error: {text}")


def _run(task, duration, args, kwargs):
    asked = duration(*args, **kwargs) if callable(duration) else (60 if duration is None else duration)
    if not isinstance(asked, (int, float)) or isinstance(asked, bool) or not 0 < asked <= 3600:
        raise ValueError(f"duration must be a positive number of seconds, got {asked!r}")
    payload = _dumps((args, kwargs))  # refuses what cannot cross, before any worker starts
    parent, child = _FORK.Pipe(duplex=False)
    stop = _FORK.Event()
    process = _FORK.Process(target=_worker, args=(task, payload, child, stop), daemon=True)
    process.start()
    child.close()
    _log(event="call", task=_name(task), duration=asked, pid=process.pid, parent_pid=os.getpid())
    ended = "cancelled"
    try:
        while True:
            if not parent.poll(_POLL_S):
                if not process.is_alive() and not parent.poll(0):
                    ended = "died"
                    raise _error("the worker died")
                continue
            kind, body = pickle.loads(parent.recv_bytes())
            if kind == "value":
                yield pickle.loads(body)
            elif kind == "error":
                ended = "error"
                raise _error(body)
            else:
                ended = kind  # "end" or "stopped"
                return
    finally:
        stop.set()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()
        _log(event="ended", task=_name(task), how=ended, pid=process.pid, exitcode=process.exitcode)


def GPU(task=None, *, duration=None, size=None, **_ignored):
    """``@spaces.GPU``, ``@spaces.GPU(duration=...)`` as on ZeroGPU."""
    if task is None or not callable(task):
        if task is not None:
            duration = task
        return functools.partial(GPU, duration=duration, size=size)
    if inspect.isgeneratorfunction(task):
        @functools.wraps(task)
        def generator_handler(*args, **kwargs):
            yield from _run(task, duration, args, kwargs)
        return generator_handler

    @functools.wraps(task)
    def handler(*args, **kwargs):
        run = _run(task, duration, args, kwargs)
        try:
            return next(run)
        finally:
            run.close()
    return handler
