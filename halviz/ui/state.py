"""What a browser session keeps between events: the recorded traces, never a model or a tensor."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from halviz.hallucination import TRUST_LEVELS, GroundTruth
from halviz.trace import Trace

DISPLAY_SIDE = 512  # pictures kept for drawing are downscaled; patch boxes stay in original pixels


@dataclass
class RunEntry:
    """One column's result (or an uploaded trace), ready for the debugger."""

    key: str
    title: str
    trace: Trace
    image: Image.Image | None
    truth: GroundTruth | None


Runs = dict[str, RunEntry]


def display_copy(image: Image.Image) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return copy


def truth_to_meta(truth: GroundTruth | None) -> dict | None:
    if truth is None:
        return None
    return {"objects": sorted(truth.objects), "source": truth.source, "trust": truth.trust}


def truth_from_meta(meta: dict) -> GroundTruth | None:
    """The ground truth a saved trace carries (written by this app), if any and well-formed."""
    value = meta.get("ground_truth")
    try:
        if isinstance(value, dict) and value.get("trust") in TRUST_LEVELS:
            return GroundTruth(frozenset(str(o) for o in value["objects"]), str(value["source"]), value["trust"])
    except (KeyError, TypeError, ValueError):
        pass
    return None


class TraceFiles:
    """Trace files written for download, in one private folder; folders older than ``keep_s`` are removed."""

    def __init__(self, keep_s: float = 3 * 3600):
        self.root = Path(tempfile.mkdtemp(prefix="halviz-traces-"))
        self.keep_s = keep_s
        self._lock = threading.Lock()

    def save(self, runs: Runs) -> list[str]:
        self._sweep()
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        paths: list[str] = []
        for entry in runs.values():
            stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in entry.key)
            npz, meta = entry.trace.save(folder / f"halviz-trace-{stem}")
            paths += [str(npz), str(meta)]
        return paths

    def _sweep(self) -> None:
        with self._lock:
            cutoff = time.time() - self.keep_s
            for folder in self.root.iterdir():
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
