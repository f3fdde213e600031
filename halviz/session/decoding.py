"""The one function that crosses ZeroGPU's process boundary, and how long it may hold the GPU.

On a ZeroGPU Space, ``spaces.GPU`` runs the decorated function in a worker forked from the app
process: what the app loaded at start-up (the model cache) is inherited, but every argument and
every yielded value is pickled across. So the decorated function takes a model key, the image as
an array, method names and knob values, and yields :class:`~halviz.session.results.Progress` (text,
numbers, numpy traces), never a model, a tensor or a method object. Everywhere else (no ``spaces``
package) it is a plain call in the same process.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from halviz.methods.base import Method
from halviz.session.results import Progress, decode_rounds
from halviz.session.checks import build_stacks
from halviz.session.resolution import budgeted

SECONDS_PER_COLUMN_TOKEN_ENV = "HALVIZ_GPU_SECONDS_PER_TOKEN"
MAX_SECONDS_ENV = "HALVIZ_GPU_MAX_SECONDS"
# One column-token of LLaVA-1.5-7B with recording, plus the extra passes of VHR and VASparse, with
# room to spare; `python -m halviz.gpubench` measures the real figure on a GPU.
DEFAULT_SECONDS_PER_COLUMN_TOKEN = 0.06
STARTUP_SECONDS = 10  # prefill, trace building, the worker's own start
DEFAULT_MAX_SECONDS = 300


def _env_float(name: str, default: float, environ: Mapping[str, str]) -> float:
    try:
        value = float(environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def gpu_seconds(columns: int, max_new_tokens: int, environ: Mapping[str, str] = os.environ) -> int:
    """The ZeroGPU ``duration`` for one comparison: it grows with columns × tokens, within a cap.

    A shorter duration gets a visitor through ZeroGPU's queue sooner, so it is not a constant.
    """
    per_token = _env_float(SECONDS_PER_COLUMN_TOKEN_ENV, DEFAULT_SECONDS_PER_COLUMN_TOKEN, environ)
    cap = _env_float(MAX_SECONDS_ENV, DEFAULT_MAX_SECONDS, environ)
    return int(min(cap, STARTUP_SECONDS + math.ceil(columns * max_new_tokens * per_token)))


def _duration(model_key, image, prompt, names, settings, max_new_tokens, update_every_s, image_budget=None,
              phases=False) -> int:
    return gpu_seconds(len(names), max_new_tokens)


def _decode_by_key(cache, registry: Mapping[str, type[Method]], model_key: str, image: np.ndarray, prompt: str,
                   names: Sequence[str], settings: Mapping[str, Mapping[str, Any]], max_new_tokens: int,
                   update_every_s: float, image_budget: str | None = None, phases: bool = False) -> Iterator[Progress]:
    # In a forked worker the cache is a copy: read it without its lock, which another thread of the
    # parent may have held at the moment of the fork.
    loaded = budgeted(cache.peek(model_key) or cache.get(model_key), image_budget)
    stacks = build_stacks(names, settings, registry)
    yield from decode_rounds(loaded, Image.fromarray(image), prompt, stacks, max_new_tokens, update_every_s,
                             phases=phases)


def _stack_duration(model_key, image, prompt, stacks, max_new_tokens, update_every_s, system=None,
                    image_budget=None) -> int:
    return gpu_seconds(len(stacks), max_new_tokens)


def build_spec_stacks(stacks: Sequence[Sequence[tuple[str, Mapping[str, Any]]]],
                      registry: Mapping[str, type[Method]]) -> list[list[Method]]:
    """Method stacks from plain ``[(name, knobs), ...]`` per column (``vanilla`` adds nothing)."""
    return [[registry[name](**dict(params)) for name, params in stack if name != "vanilla"] for stack in stacks]


def _decode_stacks_by_key(cache, registry: Mapping[str, type[Method]], model_key: str, image: np.ndarray,
                          prompt: str, stacks: Sequence[Sequence[tuple[str, Mapping[str, Any]]]],
                          max_new_tokens: int, update_every_s: float, system: str | None = None,
                          image_budget: str | None = None) -> Iterator[Progress]:
    # A column decoded again keeps the image budget it was recorded at (None: the device's default).
    loaded = budgeted(cache.peek(model_key) or cache.get(model_key), image_budget)
    yield from decode_rounds(loaded, Image.fromarray(image), prompt, build_spec_stacks(stacks, registry),
                             max_new_tokens, update_every_s, system)


def gpu_stack_decoder(cache, registry: Mapping[str, type[Method]]):
    """Like :func:`gpu_decoder`, for columns given as whole stacks of plain ``(name, knobs)`` pairs
    (the debugger's "re-run with this intervention": a column's own stack plus the intervention; an
    evaluation's sample decoded again with its recorded stacks and ``system`` message)."""
    task = functools.partial(_decode_stacks_by_key, cache, dict(registry))
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return task
    return spaces.GPU(duration=_stack_duration)(task)


def gpu_decoder(cache, registry: Mapping[str, type[Method]]):
    """``fn(model_key, image_array, prompt, names, settings, max_new_tokens, update_every_s, image_budget=None,
    phases=False)`` yielding Progress (``image_budget`` None: the device's default; ``phases``: also the
    steps before the first token, see :func:`decode_rounds`), wrapped in ``spaces.GPU`` when the ``spaces``
    package is importable."""
    task = functools.partial(_decode_by_key, cache, dict(registry))
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return task
    return spaces.GPU(duration=_duration)(task)
