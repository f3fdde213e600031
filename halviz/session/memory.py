"""Give freed memory back to the operating system after each run.

Decodes allocate and free many short-lived tensors from Gradio's worker threads; glibc keeps the
freed pages in per-thread arenas, so resident memory creeps up run after run although nothing
is leaked. ``malloc_trim(0)`` returns those pages. Elsewhere (macOS, musl) only gc runs.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys


@functools.lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
