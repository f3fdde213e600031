"""``@spaces.GPU`` around model work on Hugging Face ZeroGPU; a no-op everywhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)
GPU_SECONDS = 120  # the longest a single comparison may hold a ZeroGPU slice


def gpu_task(fn: F) -> F:
    """Wrap ``fn`` with ``spaces.GPU`` when the ``spaces`` package is importable (i.e. on Spaces).

    The wrapped function must return or yield CPU data only: on ZeroGPU it runs in a worker process.
    """
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=GPU_SECONDS)(fn)
