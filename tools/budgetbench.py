"""The server's memory held for sessions, measured: ``python -m tools.budgetbench --sessions 16``.

Many sessions each replay the largest legal trace (1,000 steps, a 128×128 grid, 4 layers: a 130 KB
file that unpacks to 131 MB, just under the 128 MiB upload limit) through ``Controller.replay`` on the
toy app, each session's runs kept alive as Gradio keeps session state. Printed after each replay: the
process's resident memory above the start, and what the memory budget counts. With the budget the
growth stops near the budget; ``--budget-mb 0`` turns it off (the old behaviour: it grows by a trace
per session).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from halviz.trace import FORMAT, Trace

MB = 2**20


def largest_trace(folder: Path, steps: int = 1000, side: int = 128, layers: int = 4) -> Path:
    """The largest trace an upload may be (arrays of zeros: the file is tiny, the arrays are not)."""
    n = side * side
    meta = {"format": FORMAT, "num_steps": steps, "texts": ["a"] * steps, "finish_reason": "length",
            "grid": [side, side], "num_layers": layers, "num_heads": 1, "head_layers": [], "methods": [],
            "model": "largest-legal", "prompt": "Describe the image.", "segments": ["bos", "image", "generated"]}
    arrays = {"token_ids": np.zeros(steps, np.int64), "image_attn": np.zeros((steps, layers, n), np.float16),
              "entropy": np.zeros((steps, layers), np.float32),
              "segment_share": np.zeros((steps, layers, 3), np.float32),
              "top_key_pos": np.zeros((steps, layers, 1), np.int32),
              "top_key_attn": np.zeros((steps, layers, 1), np.float32)}
    npz, _ = Trace(meta, arrays).save(folder / "largest")
    return npz


def resident_mb(field: str = "VmRSS") -> float:
    """Resident memory now (``VmHWM``: its peak so far), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(sessions: int, budget_mb: int) -> dict:
    from halviz.models import load_model
    from halviz.ui import build_app
    from halviz.session.budget import MemoryBudget
    from halviz.ui.controller import Controller
    from halviz.session.memory import release_memory

    toy = load_model("toy")
    demo = build_app(models=["toy"], default_model="toy", loader=lambda name: toy, preload=[])
    ctl = next(c for c in (getattr(fn.fn, "__self__", None) for fn in demo.fns.values()) if isinstance(c, Controller))
    ctl.app.budget = MemoryBudget(budget_mb * MB if budget_mb > 0 else 1 << 62)
    with tempfile.TemporaryDirectory() as folder:
        path = largest_trace(Path(folder))
        print(f"largest legal trace: {path.stat().st_size / 1024:.0f} KB on disk, "
              f"{Trace.load(path).nbytes() / MB:.0f} MB of arrays; budget "
              f"{'off' if budget_mb <= 0 else f'{budget_mb} MB'}")
        release_memory()
        start = resident_mb()
        kept, peak = [], 0.0
        for i in range(sessions):
            caller = SimpleNamespace(session_hash=f"visitor-{i}", headers={}, client=None)
            kept.append(ctl.replay(str(path), None, {}, caller=caller)[ctl.ui.runs])  # the session's state
            release_memory()
            grown = resident_mb() - start
            peak = max(peak, grown)
            counted = ctl.app.budget.total() / MB
            print(f"session {i + 1:3d}: resident +{grown:7.0f} MB · budget counts {counted:7.0f} MB"
                  f" · dropped so far {ctl.app.budget.dropped}", flush=True)
        high_water = resident_mb("VmHWM") - start  # includes the trace being parsed and drawn
    demo.halviz.files.close()
    return {"sessions": sessions, "budget_mb": budget_mb, "held_growth_mb": round(peak),
            "peak_growth_mb": round(high_water), "counted_mb": round(ctl.app.budget.total() / MB)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--budget-mb", type=int, default=512, help="0: no budget (grows per session)")
    args = parser.parse_args(argv)
    print(run(args.sessions, args.budget_mb))


if __name__ == "__main__":
    main()
