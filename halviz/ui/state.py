"""What a browser session keeps between events: the recorded traces, never a model or a tensor."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
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
    """Trace files written for download, one folder per save, in one private folder.

    At most ``max_folders`` folders are kept (the oldest go first) and none older than ``keep_s``,
    so a long-running server's disk use is bounded; the whole folder goes when the app object does.
    """

    def __init__(self, parent: str | Path | None = None, keep_s: float = 3600, max_folders: int = 64):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="halviz-traces-", dir=parent))
        self.keep_s = keep_s
        self.max_folders = max(1, max_folders)
        self._folders: deque[tuple[float, Path]] = deque()
        self._lock = threading.Lock()
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def save(self, runs: Runs) -> list[str]:
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        paths: list[str] = []
        for entry in runs.values():
            stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in entry.key)
            npz, meta = entry.trace.save(folder / f"halviz-trace-{stem}")
            paths += [str(npz), str(meta)]
        with self._lock:
            self._folders.append((time.time(), folder))
            stale = self._evict()
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return paths

    def folders(self) -> list[Path]:
        with self._lock:
            return [folder for _, folder in self._folders]

    def close(self) -> None:
        """Delete every file written (also done automatically when this object is collected)."""
        self._cleanup()

    def _evict(self) -> list[Path]:
        cutoff = time.time() - self.keep_s
        stale = []
        while self._folders and (len(self._folders) > self.max_folders or self._folders[0][0] < cutoff):
            stale.append(self._folders.popleft()[1])
        return stale
