"""Which comparison is each owner's latest, so a re-run of an older one never writes over it.

A re-run decodes for seconds; if its owner presses Compare meanwhile, the re-run's updates (the runs it
copied when it started, its what-if column) are stale. The comparison takes a new id here when it
starts; the re-run notes the id it started under and drops its updates once that is no longer the
owner's latest. Owned by the app object; bounded (the owners who compared least recently are forgotten).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict


class LatestRuns:
    def __init__(self, most: int = 100_000):
        self.most = max(1, most)
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, owner: str) -> str:
        """A new comparison of ``owner``: its id, which replaces the last."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self._ids[owner] = run_id
            self._ids.move_to_end(owner)
            while len(self._ids) > self.most:
                self._ids.popitem(last=False)
        return run_id

    def current(self, owner: str) -> str | None:
        with self._lock:
            return self._ids.get(owner)
