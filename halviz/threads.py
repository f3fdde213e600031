"""How many CPU threads torch uses in the command-line tools and the API.

torch's default is one thread per core. On a shared machine (a CI runner, a 2-vCPU Space, a laptop
running the app beside a benchmark) that oversubscribes the cores: measured on a loaded 2-core
machine, ``halviz eval`` ran 2.7× and the toy probe 4.3× slower with the default than with one
thread. So the default is half the cores this process may use (at least 1, at most 8), unless
``OMP_NUM_THREADS`` says otherwise; every tool takes ``--threads N`` to choose.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

MAX_DEFAULT = 8


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(environ: Mapping[str, str] = os.environ, cores: int | None = None) -> int:
    """``OMP_NUM_THREADS`` when it is a positive whole number, else half the usable cores in 1..8."""
    try:
        chosen = int(environ.get("OMP_NUM_THREADS", ""))
        if chosen > 0:
            return chosen
    except ValueError:
        pass
    return max(1, min(MAX_DEFAULT, (usable_cores() if cores is None else cores) // 2))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads for torch (default: $OMP_NUM_THREADS, else half the cores, here "
                             f"{default_threads()})")


def use_threads(threads: int | None = None) -> int:
    """Set torch's thread count (``threads``, else the default) and return it."""
    import torch

    count = max(1, int(threads or default_threads()))
    torch.set_num_threads(count)
    return count
