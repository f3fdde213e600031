"""One byte budget for everything the sessions hold: run traces, replayed traces, re-run sources and
display pictures (``RunEntry`` objects in Gradio's per-session state).

Every entry that enters a session's state is held here with its owner (the session or client key)
and its size: the trace's arrays, an estimate of its metadata, and its pictures, each picture counted
once however many columns share it. When the total passes the limit, entries are dropped, least
recently used first, starting with the owner that adds (so a visitor who floods the server loses
their own oldest work before anyone else's); the entries of the request being served are never dropped
by it. Dropping frees the arrays and pictures in place and marks the entry, which stays in its
session's state as a stub (its title and caption, so the page keeps its choices); the next click on
it raises :data:`DROPPED` as one sentence.

Entries a session lets go (a new comparison, an expired session) leave the ledger by themselves
(weak references). Nothing here touches Gradio; the app object owns one budget (no global state).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image

from halviz.trace import Trace
from halviz.session.checks import InputError
from halviz.session.state import RunEntry

log = logging.getLogger("halviz.session")
DEFAULT_BUDGET_BYTES = 2 * 2**30
BUDGET_ENV = "HALVIZ_MEMORY_BUDGET_MB"
META_FACTOR = 7  # bytes of Python objects per byte of the metadata's JSON: measured 5.2 (ints) to 6.8 (short strings)
DROPPED = ("This trace was dropped to free memory for other visitors; run the comparison again "
           "(or replay its file) to see it.")
# What a dropped entry's stub keeps of its metadata: enough for titles, captions and the what-if columns.
STUB_META = ("format", "texts", "num_steps", "num_layers", "num_heads", "grid", "methods", "max_new_tokens",
             "prompt", "finish_reason", "model", "family", "image_digest", "ground_truth", "image_size")


def budget_from_env(default: int = DEFAULT_BUDGET_BYTES) -> int:
    """``HALVIZ_MEMORY_BUDGET_MB`` in bytes (at least 64 MB), else ``default``."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    try:
        return max(64, int(text)) * 2**20 if text else default
    except ValueError:
        log.warning("%s=%r is not a whole number of megabytes; using %d MB", BUDGET_ENV, text, default >> 20)
        return default


def picture_bytes(picture: Image.Image | None) -> int:
    if picture is None:
        return 0
    return picture.width * picture.height * max(len(picture.getbands()), 1)


def trace_bytes(trace: Trace) -> int:
    """The arrays, and the metadata's Python objects estimated from its JSON size."""
    try:
        meta = len(json.dumps(trace.meta, default=str))
    except (TypeError, ValueError):
        meta = 0
    return trace.nbytes() + META_FACTOR * meta


def check_kept(entry: RunEntry) -> RunEntry:
    """``entry`` if it still holds its trace (and marks it used now); else the sentence for its owner."""
    if getattr(entry, "dropped", False):
        raise InputError(DROPPED)
    entry.used = time.monotonic()
    return entry


def drop_entry(entry: RunEntry) -> None:
    """Free the entry's arrays and pictures in place; what stays is a stub that says it was dropped."""
    meta = {k: entry.trace.meta[k] for k in STUB_META if k in entry.trace.meta}
    entry.trace = Trace(meta, {})
    entry.image = entry.source = None
    entry.dropped = True


@dataclass
class _Held:
    owner: str
    ref: weakref.ref
    nbytes: int
    pictures: tuple[int, ...] = field(default_factory=tuple)


class MemoryBudget:
    """The ledger of held entries, and the eviction that keeps it within ``limit`` bytes."""

    def __init__(self, limit: int = DEFAULT_BUDGET_BYTES, clock=time.monotonic):
        self.limit = int(limit)
        self.clock = clock
        self.used = 0
        self.dropped = 0  # entries dropped so far (for the log and the stress figures)
        self._held: dict[int, _Held] = {}
        self._pictures: dict[int, list[int]] = {}  # id → [bytes, holders]; a picture is counted once
        self._gone: deque[int] = deque()  # entries collected since (weakref callbacks only append here)
        self._lock = threading.RLock()

    # ---- holding -------------------------------------------------------------------------------
    def hold(self, owner: str, entries: Iterable[RunEntry], replacing: Iterable[RunEntry] = ()) -> list[RunEntry]:
        """Count ``entries`` (new to the ledger) as ``owner``'s, forget ``replacing`` (entries the same
        request made before and that these replace), then drop what must go to fit the limit. Returns
        the dropped entries."""
        entries = [e for e in entries if e is not None]
        with self._lock:
            self._drain()
            for old in replacing:
                self._forget(id(old), old)
            now = self.clock()
            for entry in entries:
                if getattr(entry, "dropped", False) or self._is_held(entry):
                    continue
                entry.used = now
                self._add(owner, entry)
            return self._evict(owner, {id(e) for e in entries})

    def total(self) -> int:
        """Bytes held now."""
        with self._lock:
            self._drain()
            return self.used

    def owner_bytes(self, owner: str) -> int:
        with self._lock:
            self._drain()
            return sum(h.nbytes for h in self._held.values() if h.owner == owner) + sum(
                self._pictures[p][0] for p in {p for h in self._held.values() if h.owner == owner for p in h.pictures}
                if p in self._pictures)

    def __len__(self) -> int:
        return len(self._held)

    # ---- internals -------------------------------------------------------------------------------
    def _is_held(self, entry: RunEntry) -> bool:
        held = self._held.get(id(entry))
        return held is not None and held.ref() is entry

    def _add(self, owner: str, entry: RunEntry) -> None:
        key = id(entry)
        pictures = []
        for picture in {id(p): p for p in (entry.image, entry.source) if p is not None}.values():
            slot = self._pictures.setdefault(id(picture), [picture_bytes(picture), 0])
            if slot[1] == 0:
                self.used += slot[0]
            slot[1] += 1
            pictures.append(id(picture))
        nbytes = trace_bytes(entry.trace)
        self.used += nbytes
        self._held[key] = _Held(owner, weakref.ref(entry, lambda _, key=key: self._collected(key)), nbytes,
                                tuple(pictures))

    def _collected(self, key: int) -> None:
        """The entry left every session (weakref callback): its bytes are free. Only noted here (a
        callback may run inside any allocation, even while the ledger is being walked)."""
        self._gone.append(key)

    def _drain(self) -> None:
        while self._gone:
            key = self._gone.popleft()
            held = self._held.get(key)
            if held is not None and held.ref() is None:
                self._forget(key, None)

    def _forget(self, key: int, entry: RunEntry | None) -> None:
        held = self._held.get(key)
        if held is None or (entry is not None and held.ref() is not entry):
            return
        del self._held[key]
        self.used -= held.nbytes
        for picture in held.pictures:
            slot = self._pictures.get(picture)
            if slot is None:
                continue
            slot[1] -= 1
            if slot[1] <= 0:
                self.used -= slot[0]
                del self._pictures[picture]

    def _evict(self, owner: str, protected: set[int]) -> list[RunEntry]:
        dropped = []
        while self.used > self.limit:
            self._drain()
            if self.used <= self.limit:
                break
            alive = [(key, held, held.ref()) for key, held in self._held.items() if key not in protected]
            alive = [(key, held, entry) for key, held, entry in alive if entry is not None]
            if not alive:
                break  # only this request's own entries are left: they stay (one request over the limit)
            mine = [item for item in alive if item[1].owner == owner]
            key, held, entry = min(mine or alive, key=lambda item: getattr(item[2], "used", 0.0))
            self._forget(key, entry)
            drop_entry(entry)
            dropped.append(entry)
            self.dropped += 1
        if dropped:
            log.info("memory budget: dropped %d entries to stay within %d MB; %d MB held", len(dropped),
                     self.limit >> 20, self.used >> 20)
        return dropped
