"""What a browser session keeps between events: the recorded traces, never a model or a tensor."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from halviz.hallucination import TRUST_LEVELS, GroundTruth
from halviz.models.loading import public_name
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
    source: Image.Image | None = None  # the picture as the model sees it (inputs.MODEL_PIXELS): what a re-run decodes
    model: str | None = None  # the model's key in this app (a re-run loads it again)
    dropped: bool = False  # freed by the memory budget (ui/budget.py): only a stub is left
    used: float = 0.0  # when its owner last looked at it (time.monotonic): the budget drops the least recent


Runs = dict[str, RunEntry]


def display_copy(image: Image.Image) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return copy


def truth_to_meta(truth: GroundTruth | None) -> dict | None:
    if truth is None:
        return None
    return {"objects": sorted(truth.objects), "source": truth.source, "trust": truth.trust,
            "counts": dict(truth.counts) if truth.counts is not None else None}


def truth_from_meta(meta: dict) -> GroundTruth | None:
    """The ground truth a saved trace carries (written by this app), if any and well-formed."""
    value = meta.get("ground_truth")
    try:
        if isinstance(value, dict) and value.get("trust") in TRUST_LEVELS:
            return GroundTruth(frozenset(str(o) for o in value["objects"]), str(value["source"]), value["trust"],
                               value.get("counts"))
    except (KeyError, TypeError, ValueError):
        pass
    return None


MAX_SESSION_UPLOAD_BYTES = 128 * 2**20  # replayed traces one session keeps in memory, in all
MAX_SESSION_UPLOADS = 8


def keep_uploads(runs: Runs, prefix: str, max_bytes: int = MAX_SESSION_UPLOAD_BYTES,
                 max_count: int = MAX_SESSION_UPLOADS) -> Runs:
    """``runs`` with this session's oldest uploaded traces (keys starting with ``prefix``) dropped
    until the rest fit ``max_bytes`` and ``max_count``; the newest always stays. Dicts keep insertion
    order, and a re-uploaded name moves to the end, so "oldest" is the order of upload."""
    uploads = [k for k in runs if k.startswith(prefix)]
    sizes = {k: runs[k].trace.nbytes() for k in uploads}
    total = sum(sizes.values())
    dropped = set()
    for key in uploads[:-1]:
        if total <= max_bytes and len(uploads) - len(dropped) <= max_count:
            break
        dropped.add(key)
        total -= sizes[key]
    return {k: v for k, v in runs.items() if k not in dropped}


def download_stem(entry: RunEntry, stamp: str) -> str:
    """A download's file name without suffix: model, column and time, so two runs never share a name
    in a downloads folder (``halviz-toy-llava-vanilla-20261207-101502``)."""
    model = public_name(entry.model) if entry.model else "trace"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in f"halviz-{model}-{entry.key}-{stamp}")


class TraceFiles:
    """Trace files written for download, one folder per save, in one private folder.

    Folders belong to the session that saved them. Each session keeps at most ``per_owner`` folders
    (its own oldest go first), at most ``max_owners`` sessions have files (the one that saved least
    recently loses its files first) and no folder outlives ``keep_s``: disk use is bounded, and one
    session's saves never delete another's downloads while fewer than ``max_owners`` sessions are
    active. The whole folder goes when the app object does.
    """

    def __init__(self, parent: str | Path | None = None, keep_s: float = 3600, per_owner: int = 8,
                 max_owners: int = 128):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="halviz-traces-", dir=parent))
        self.keep_s = keep_s
        self.per_owner = max(1, per_owner)
        self.max_owners = max(1, max_owners)
        self._owners: OrderedDict[str, deque[tuple[float, Path]]] = OrderedDict()  # least recent first
        self._lock = threading.Lock()
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def save(self, runs: Runs, owner: str = "") -> list[str]:
        """The traces of ``runs`` as ``.npz`` + ``.json`` pairs, named for download."""
        stamp = time.strftime("%Y%m%d-%H%M%S")

        def write(folder: Path) -> list[Path]:
            return [path for entry in runs.values() for path in entry.trace.save(folder / download_stem(entry, stamp))]
        return self.write(write, owner)

    def write(self, writer: Callable[[Path], list[Path]], owner: str = "") -> list[str]:
        """Whatever ``writer`` writes into a fresh folder of ``owner``'s (its paths returned), under the
        same bounds as the traces; a writer that raises leaves nothing behind."""
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        try:
            paths = [str(path) for path in writer(folder)]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._owners.setdefault(owner, deque()).append((time.time(), folder))
            self._owners.move_to_end(owner)
            stale = self._evict(owner)
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return paths

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is a file this object wrote (a client may send any path back)."""
        try:
            return Path(path).resolve().is_relative_to(self.root.resolve()) and Path(path).is_file()
        except (OSError, ValueError):
            return False

    def folders(self, owner: str | None = None) -> list[Path]:
        with self._lock:
            return [folder for name, kept in self._owners.items() if owner in (None, name) for _, folder in kept]

    def close(self) -> None:
        """Delete every file written (also done automatically when this object is collected)."""
        self._cleanup()

    def _evict(self, owner: str) -> list[Path]:
        stale = []
        mine = self._owners[owner]
        while len(mine) > self.per_owner:
            stale.append(mine.popleft()[1])
        while len(self._owners) > self.max_owners:
            stale += [folder for _, folder in self._owners.popitem(last=False)[1]]
        cutoff = time.time() - self.keep_s
        for name in list(self._owners):
            kept = self._owners[name]
            while kept and kept[0][0] < cutoff:
                stale.append(kept.popleft()[1])
            if not kept:
                del self._owners[name]
        return stale
