"""Limits keyed on the client, so that one anonymous client cannot take a public Space down.

Gradio keys everything on the session hash, which the client chooses (a fresh one per request costs
nothing). Here every limit that protects other visitors is keyed on the client's network address
(:mod:`halviz.ui.client_key`), and a request without a session, or with a new session each time,
gets one client's share and no more:

- **The queue** (``limit_events``): Gradio's queue ``push`` (the one place every queued event
  joins) refuses a new event when its session or its client already has ``decodes_per_*``
  comparisons and re-runs (one limit for both), or ``events_per_*`` events of any kind, waiting or
  running. The refusal is Gradio's own validation answer (HTTP 422, one sentence). Counts come from
  the queue's own lists plus pushes still in progress, in the server's event loop, so simultaneous
  joins cannot slip past. A push without a session gets a fresh session of its client's.
- **Sessions** (``GuardedStateHolder``): a request that would create a session's state is refused
  (HTTP 429) when its client has created ``sessions_per_client`` sessions within the window, before
  anything is stored. When the state holder is full, the least recently used session of the client
  holding the most sessions is dropped, not the least recently used of all.
- **Uploads and request bodies** (``ClientGate``, an ASGI middleware that ``launch_options()``
  installs): ``/gradio_api/upload`` is metered per client (files and bytes per window) and against a
  quota on the size of Gradio's upload folder (HTTP 429 / 413); other requests' bodies are capped.
- **Workers** (``fair_workers``): the queue starts the waiting event of the client running the
  fewest events in that pool (first come among equals), and a client never takes the last
  ``workers_left_to_others`` workers of a pool of several: one client's comparisons, however many,
  hold one of the two decode workers and others' comparisons start on the other at once.
- **The log**: one line per refusal; Gradio's own traceback for every ``gr.Error`` (a refusal,
  not a fault) becomes one line too (``quiet_refusals``), unexpected errors keep theirs.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from copy import copy
from dataclasses import dataclass
from pathlib import Path

import anyio
import gradio as gr
from fastapi import HTTPException
from gradio.state_holder import SessionState, StateHolder
from starlette.responses import PlainTextResponse

from halviz.ui.client_key import client_key, trusted_proxies_from_env

log = logging.getLogger("halviz.ui")
MB = 1 << 20
UPLOAD_PATH = "/gradio_api/upload"
STARTUP_PATH = "/gradio_api/startup-events"  # called by launch() itself; it starts the queue's tasks
FOLDER_SCAN_S = 5.0  # the upload folder's size is measured at most this often (uploads since are added)


@dataclass(frozen=True)
class Limits:
    """Every limit that protects other visitors; per client unless named otherwise."""

    decodes_per_session: int = 2  # comparisons and re-runs waiting or running
    decodes_per_client: int = 4
    events_per_session: int = 8  # events of any kind waiting or running
    events_per_client: int = 8
    sessions_per_client: int = 300  # sessions created per window
    uploads_per_client: int = 300  # files uploaded per window
    upload_bytes_per_client: int = 1024 * MB  # bytes uploaded per window
    upload_folder_bytes: int = 4096 * MB  # Gradio's upload folder in all (uploads, trace files)
    request_bytes: int = 1 * MB  # the body of any request other than an upload
    state_sessions: int = 10_000  # sessions whose state Gradio keeps
    unread_messages: int = 512  # a session's messages nobody reads; past it its events run on as hung up
    workers_left_to_others: int = 1  # of each pool of workers (2 decode workers by default): one client
    # never holds the last ones while it runs others (a pool of one is shared by taking turns)
    window_s: float = 3600.0

    def sentence(self, what: str) -> str:
        """The one-sentence refusal for limit ``what``."""
        hour = "hour" if self.window_s == 3600 else f"{self.window_s:g} s"
        return {
            "decodes_per_session": f"You already have {self.decodes_per_session} comparisons or re-runs running or "
                                   "waiting; wait for one to finish (or stop it) before starting another.",
            "decodes_per_client": f"Your network address already has {self.decodes_per_client} comparisons or "
                                  "re-runs running or waiting; wait for one to finish before starting another.",
            "events_per_session": f"You already have {self.events_per_session} requests running or waiting; "
                                  "wait for them to finish.",
            "events_per_client": f"Your network address already has {self.events_per_client} requests running or "
                                 "waiting; wait for them to finish.",
            "sessions_per_client": f"Your network address opened {self.sessions_per_client} sessions in the last "
                                   f"{hour}, the most allowed; keep using a page that is already open, or try "
                                   "again later.",
            "uploads_per_client": f"Your network address uploaded {self.uploads_per_client} files in the last "
                                  f"{hour}, the most allowed; please try again later.",
            "upload_bytes_per_client": f"This upload would take your network address past "
                                       f"{_size(self.upload_bytes_per_client)} uploaded in the last {hour}, the most "
                                       "allowed; please try again later.",
            "upload_folder_bytes": "The server's upload space is full; please try again in a few minutes.",
            "upload_length": "An upload must state its size (a Content-Length header).",
            "unread_messages": "Nobody is reading this session's answers; its requests were stopped.",
            "request_bytes": f"This request is larger than {_size(self.request_bytes)}, the most the server reads "
                             "outside file uploads.",
        }[what]


def _size(n: int) -> str:
    return f"{n / 1024 ** 3:g} GB" if n >= 1024 ** 3 else f"{n / MB:g} MB"


class Window:
    """Per key, the amounts recorded within the last ``seconds`` (a sliding window)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.entries: dict[str, deque[tuple[float, int]]] = {}

    def totals(self, key: str, now: float) -> tuple[int, int]:
        """(count, summed amount) for ``key`` within the window."""
        entries = self.entries.get(key)
        if not entries:
            return 0, 0
        while entries and entries[0][0] <= now - self.seconds:
            entries.popleft()
        return len(entries), sum(amount for _, amount in entries)

    def add(self, key: str, now: float, amount: int = 1) -> None:
        self.entries.setdefault(key, deque()).append((now, amount))
        if len(self.entries) > 4096:  # forget clients whose window is empty
            for other in [k for k, v in self.entries.items() if not v or v[-1][0] <= now - self.seconds]:
                del self.entries[other]


# The client of the HTTP request being served (set by ClientGate); unset outside requests, e.g. in
# the queue's own tasks, which never create a session on a client's behalf without its push.
current_client: contextvars.ContextVar[str | None] = contextvars.ContextVar("halviz_client", default=None)


class Refused(HTTPException):
    """A limit's refusal as an HTTP answer (429 unless stated)."""

    def __init__(self, sentence: str, status_code: int = 429):
        super().__init__(status_code=status_code, detail=sentence)


class ClientGuard:
    """The per-client books: sessions created and held, uploads, the upload folder's size."""

    def __init__(self, limits: Limits | None = None, trusted_proxies: int | None = None,
                 upload_folder: str | os.PathLike | None = None):
        self.limits = limits or Limits()
        self.trusted_proxies = trusted_proxies_from_env() if trusted_proxies is None else trusted_proxies
        self.upload_folder = Path(upload_folder) if upload_folder else None
        self.lock = threading.RLock()
        self.sessions = Window(self.limits.window_s)
        self.uploads = Window(self.limits.window_s)
        self.owners: dict[str, str] = {}  # session hash → client (sessions held, and admitted ones)
        self.held: Counter = Counter()  # client → sessions it holds in the state holder
        self.holder: StateHolder | None = None
        self.refusals: Counter = Counter()  # limit → refusals so far (for tests and the stress report)
        self._folder = (-1e9, 0)  # (when measured, bytes)
        self._reserved = 0  # upload bytes admitted since the last measurement

    # ---- who ------------------------------------------------------------------------------------------
    def key(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        return client_key(peer, forwarded_for, self.trusted_proxies)

    def key_of_request(self, request) -> str:
        """The client of a Starlette/FastAPI request."""
        peer = request.client.host if request.client else None
        return self.key(peer, request.headers.getlist("x-forwarded-for"))

    def key_of_scope(self, scope: Mapping) -> str:
        peer = (scope.get("client") or (None,))[0]
        forwarded = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        return self.key(peer, forwarded)

    def refuse(self, what: str, client: str, status: int = 429, detail: str = "") -> Refused:
        """Count and log one refusal (one line), and return it as an HTTP answer."""
        self.refusals[what] += 1
        log.warning("refused %s: %s%s", client, what, f" ({detail})" if detail else "")
        return Refused(self.limits.sentence(what), status)

    # ---- sessions -------------------------------------------------------------------------------------
    def attach(self, holder: StateHolder) -> None:
        """Make Gradio's state holder ask this guard before it creates or drops a session."""
        if isinstance(holder, GuardedStateHolder) and holder.guard is self:
            return
        with holder.lock:
            holder.__class__ = GuardedStateHolder
            holder.guard = self
            holder.capacity = self.limits.state_sessions
            for session in holder.session_data:  # created before the guard: nobody's
                self.owners.setdefault(session, "")
                self.held[self.owners[session]] += 1
        self.holder = holder

    def is_new(self, session: str) -> bool:
        holder = self.holder
        return session not in self.owners and (holder is None or session not in holder.session_data)

    def admit_session(self, session: str, client: str) -> None:
        """Book a new session for ``client``, or raise its refusal; nothing is stored when refused."""
        with self.lock:
            if session in self.owners:
                return
            now = time.monotonic()
            count, _ = self.sessions.totals(client, now)
            if count >= self.limits.sessions_per_client:
                raise self.refuse("sessions_per_client", client, detail=f"{count} this window")
            self.sessions.add(client, now)
            self.owners[session] = client

    def created(self, session: str) -> None:
        """The state holder is about to create ``session``: book it (refused if its client is over quota)."""
        with self.lock:
            if session not in self.owners:
                client = current_client.get()
                if client is None:  # re-created by the queue's own task (its push was booked): nobody's
                    self.owners[session] = ""
                else:
                    self.admit_session(session, client)
            self.held[self.owners[session]] += 1

    def forget(self, session: str) -> None:
        """``session`` left the state holder."""
        with self.lock:
            client = self.owners.pop(session, None)
            if client is not None and self.held[client] > 0:
                self.held[client] -= 1
                if not self.held[client]:
                    del self.held[client]

    def unbook(self, session: str) -> None:
        """``session`` was admitted but its event was refused: keep no record (its quota stays spent)."""
        with self.lock:
            holder = self.holder
            if holder is None or session not in holder.session_data:
                self.owners.pop(session, None)

    def eviction(self, sessions: Iterable[str], keep: str | None) -> str | None:
        """The session to drop when the holder is full: the least recently used one of the client that
        holds the most (so one client's flood of sessions pushes out its own, not other people's)."""
        with self.lock:
            most = max(self.held.values(), default=0)
            first = None
            for session in sessions:  # least recently used first
                if session == keep:
                    continue
                first = first or session
                if self.held.get(self.owners.get(session, ""), 0) >= most:
                    return session
            return first

    # ---- uploads and bodies ------------------------------------------------------------------------
    def folder_bytes(self) -> int:
        """Bytes under the upload folder: measured at most every few seconds, plus admitted uploads since."""
        measured_at, size = self._folder
        now = time.monotonic()
        if self.upload_folder is not None and now - measured_at > FOLDER_SCAN_S:
            size = _tree_bytes(self.upload_folder)
            with self.lock:
                self._folder, self._reserved = (now, size), 0
        return size + self._reserved

    def admit_upload(self, client: str, length: int | None) -> None:
        """Book an upload of ``length`` bytes (its Content-Length), or raise its refusal."""
        limits = self.limits
        if length is None:
            raise self.refuse("upload_length", client, status=411)
        used = self.folder_bytes()
        with self.lock:
            now = time.monotonic()
            count, sent = self.uploads.totals(client, now)
            if count >= limits.uploads_per_client:
                raise self.refuse("uploads_per_client", client, detail=f"{count} files this window")
            if sent + length > limits.upload_bytes_per_client:
                raise self.refuse("upload_bytes_per_client", client, detail=f"{sent} + {length} bytes")
            if used + length > limits.upload_folder_bytes:
                raise self.refuse("upload_folder_bytes", client, status=413, detail=f"{used} + {length} bytes")
            self.uploads.add(client, now, length)
            self._reserved += length


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


class LeanSessionState(SessionState):
    """Gradio's ``SessionState`` without its eager copy of every component's config (about 490 KB for
    this app's 291 blocks, ×10,000 sessions); only configs a session changed are stored, the others
    are built when a deep link asks for them (``components``). Same attributes as Gradio 6.31's."""

    def __init__(self, blocks: gr.Blocks):  # noqa: super().__init__ is what this avoids
        self.blocks_config = copy(blocks.default_config)
        self._own_blocks = frozenset(k for k in self.blocks_config.blocks if k in blocks.blocks)
        self.config_values = {}  # block id → config, for blocks whose config this session changed
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600

    @property
    def components(self):
        for key, block in self.blocks_config.blocks.items():
            if key in self.config_values:
                config = self.config_values[key]
            elif key in self._own_blocks:
                config = self.blocks_config.config_for_block(key, [], block)
            else:
                continue
            if config:
                yield config

    def touch(self) -> None:
        """A kept State's time to live counts from now (Gradio counts it from the State's last write): a
        visitor who keeps clicking in the debugger keeps the traces of a comparison run long ago."""
        now = datetime.datetime.now()
        for key, (time_to_live, _) in list(self._state_ttl.items()):
            self._state_ttl[key] = (time_to_live, now)


class GuardedStateHolder(StateHolder):
    """Gradio's ``StateHolder`` (its class swapped in place by ``ClientGuard.attach``): a new session
    is booked with the guard first (and refused when its client is over quota) and is a
    ``LeanSessionState``; when full, the guard chooses which session goes."""

    guard: ClientGuard

    def __getitem__(self, session_id: str):
        if session_id not in self.session_data:
            self.guard.created(session_id)
            self.session_data.setdefault(session_id, LeanSessionState(self.blocks))
        state = super().__getitem__(session_id)  # every event of the session asks for it here
        if isinstance(state, LeanSessionState):
            state.touch()
        return state

    def update(self, session_id: str) -> None:
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            while len(self.session_data) > self.capacity:
                dropped = self.guard.eviction(self.session_data, keep=session_id)
                if dropped is None:
                    break
                del self.session_data[dropped]
                self.time_last_used.pop(dropped, None)
                self.guard.forget(dropped)


# ---- the queue's door -----------------------------------------------------------------------------

def held_events(queue, guard: ClientGuard, session: str, client: str, decode_fns: set[int]) -> dict[str, int]:
    """This session's and this client's events waiting in or running on ``queue``: all, and decodes."""
    counts = Counter()
    waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    running = [e for job in queue.active_jobs if job for e in job]
    for event in waiting + running:
        mine = event.session_hash == session
        ours = mine or guard.key_of_request(event.request) == client
        decode = event.fn._id in decode_fns
        counts["session"] += mine
        counts["client"] += ours
        counts["session_decodes"] += mine and decode
        counts["client_decodes"] += ours and decode
    return counts


def limit_events(demo: gr.Blocks, guard: ClientGuard, decode_fns: Iterable[int]) -> None:
    """Install the queue limits on ``demo``'s queue; ``decode_fns`` (comparisons and re-runs) share one."""
    queue = demo._queue
    original = queue.push
    decode_fns = set(decode_fns)
    limits = guard.limits
    in_progress: Counter = Counter()  # (client, session, decodes?) → pushes not yet returned

    async def push(body, request, username):
        if body.fn_index is None:
            return await original(body=body, request=request, username=username)
        client = guard.key_of_request(request)
        if body.session_hash is None:  # /call/<api> without a session: a new session of this client's
            body.session_hash = uuid.uuid4().hex
        session, decode = body.session_hash, body.fn_index in decode_fns
        new = guard.is_new(session)
        if new:
            guard.admit_session(session, client)  # raises the 429 when over quota
        held = held_events(queue, guard, session, client, decode_fns)
        for (owner, other, decodes), count in in_progress.items():
            ours, mine = owner == client, other == session
            held["session"] += mine * count
            held["client"] += ours * count
            held["session_decodes"] += (mine and decodes) * count
            held["client_decodes"] += (ours and decodes) * count
        refusal = None
        if decode and held["session_decodes"] >= limits.decodes_per_session:
            refusal = "decodes_per_session"
        elif decode and held["client_decodes"] >= limits.decodes_per_client:
            refusal = "decodes_per_client"
        elif held["session"] >= limits.events_per_session:
            refusal = "events_per_session"
        elif held["client"] >= limits.events_per_client:
            refusal = "events_per_client"
        if refusal is not None:
            if new:
                guard.unbook(session)
            sentence = guard.refuse(refusal, client).detail
            return False, [{"__type__": "validate", "is_valid": False, "message": sentence}], "validator_error"
        in_progress[client, session, decode] += 1
        try:
            answer = await original(body=body, request=request, username=username)
            if new and not answer[0]:
                guard.unbook(session)
            return answer
        finally:
            in_progress[client, session, decode] -= 1
            if not in_progress[client, session, decode]:
                del in_progress[client, session, decode]

    queue.push = push
    send = queue.send_message

    def send_message(event, message):
        # An event whose session's answers pile up unread (joined and walked away) is treated like a
        # client that hung up: Gradio stops it, and its messages stop growing the server's memory.
        messages = queue.pending_messages_per_session.get(event.session_hash)
        if event.alive and messages is not None and messages.qsize() >= guard.limits.unread_messages:
            event.alive = False
            guard.refuse("unread_messages", guard.key_of_request(event.request),
                          detail=f"{messages.qsize()} messages, {event.fn.name}")
            return None
        return send(event, message)

    queue.send_message = send_message


def fair_workers(demo: gr.Blocks, guard: ClientGuard) -> None:
    """Replace the queue's choice of the next event (Gradio 6.31: the first waiting event of a pool
    with a free worker) by a fair one: in each pool, the earliest event of the client that runs the
    fewest there, and none from a client that would hold all but ``workers_left_to_others`` of a
    pool's workers. Pools are visited in Gradio's (random) order; batches are formed as Gradio does."""
    queue = demo._queue
    keep_free = guard.limits.workers_left_to_others
    original = queue.get_events

    def client_of(event) -> str:
        request = getattr(event, "request", None)
        return guard.key_of_request(request) if request is not None else f"session:{event.session_hash}"

    def get_events():
        try:
            return fair_choice()
        except Exception:  # never let the queue's loop die of this: Gradio's own choice instead
            log.exception("the fair choice of the next event failed; using Gradio's")
            return original()

    def fair_choice():
        running: dict[str, Counter] = {}
        for job in queue.active_jobs:
            if job:
                running.setdefault(job[0].fn.concurrency_id, Counter())[client_of(job[0])] += 1
        pools = list(queue.event_queue_per_concurrency_id.items())
        random.shuffle(pools)
        for pool_id, pool in pools:
            limit = pool.concurrency_limit
            if not pool.queue or (limit is not None and pool.current_concurrency >= limit):
                continue
            held = running.get(pool_id, Counter())
            most = limit - keep_free if limit is not None and limit > keep_free else None
            waiting = [(held[client], i, event) for i, event in enumerate(pool.queue)
                       for client in (client_of(event),) if most is None or held[client] < most]
            if not waiting:
                continue
            first = min(waiting, key=lambda w: w[:2])[2]
            events = [first]
            if first.fn.batch:
                events += [e for e in pool.queue if e is not first and e.fn == first.fn][:first.fn.max_batch_size - 1]
            for event in events:
                pool.queue.remove(event)
            return events, first.fn.batch, pool_id
        return None

    queue.get_events = get_events


# ---- the HTTP door --------------------------------------------------------------------------------

class ClientGate:
    """ASGI middleware: sets the request's client (``current_client``), attaches the app's guard to
    Gradio's state holder, meters uploads, caps other bodies. Installed through ``launch()``'s
    ``app_kwargs`` by ``launch_options()``; it finds the guard on the Blocks (``demo.client_guard``),
    and lets everything through for Blocks without one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        guard = _guard(scope) if scope["type"] == "http" else None
        if guard is None:
            return await self.app(scope, receive, send)
        client = guard.key_of_scope(scope)
        path = scope.get("path", "").rstrip("/")
        try:
            length = _content_length(scope)
            if path.endswith(UPLOAD_PATH) and scope.get("method") == "POST":
                await anyio.to_thread.run_sync(guard.folder_bytes)  # a walk of the folder, off the event loop
                guard.admit_upload(client, length)
            elif length is not None and length > guard.limits.request_bytes:
                raise guard.refuse("request_bytes", client, status=413, detail=f"{length} bytes to {path}")
            elif length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                receive = await _bounded_body(receive, guard, client, path)
        except Refused as refusal:
            return await PlainTextResponse(refusal.detail, status_code=refusal.status_code)(scope, receive, send)
        if path.endswith(STARTUP_PATH):  # its tasks (the queue's) must not run as this client
            return await self.app(scope, receive, send)
        token = current_client.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            current_client.reset(token)


def _guard(scope) -> ClientGuard | None:
    app = scope.get("app")
    blocks = app.get_blocks() if hasattr(app, "get_blocks") else None
    guard = getattr(blocks, "client_guard", None)
    if guard is not None and guard.holder is not getattr(app, "state_holder", None):
        guard.attach(app.state_holder)
    return guard


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(int(value), 0)
            except ValueError:
                return None
    return None


async def _bounded_body(receive, guard: ClientGuard, client: str, path: str):
    """A body without Content-Length, read here up to the cap (then replayed), or refused."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > guard.limits.request_bytes:
            raise guard.refuse("request_bytes", client, status=413, detail=f"over {size} bytes to {path}")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _replay(messages: list, then=None):
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}
    return receive


# ---- the log --------------------------------------------------------------------------------------

class _QuietTraceback:
    """Stands in for the ``traceback`` module inside Gradio's queue and routes: a ``gr.Error`` being
    handled (a refusal sent to the user) is logged as one line instead of a traceback."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def print_exc(self, *args, **kwargs):
        error = sys.exc_info()[1]
        if isinstance(error, gr.Error):
            message = " ".join(str(getattr(error, "message", error)).split())
            log.warning("refused: %s", message[:300])
            return None
        return self._module.print_exc(*args, **kwargs)


def quiet_refusals() -> None:
    """One log line, not a traceback, for every ``gr.Error`` Gradio catches (idempotent)."""
    import gradio.queueing
    import gradio.routes

    for module in (gradio.queueing, gradio.routes):
        if not isinstance(module.traceback, _QuietTraceback):
            module.traceback = _QuietTraceback(traceback)


def install(demo: gr.Blocks, decode_fns: Iterable[int], limits: Limits | None = None,
            trusted_proxies: int | None = None) -> ClientGuard:
    """Every per-client limit on ``demo`` (after ``demo.queue()``): the queue's door now; the HTTP
    door (sessions, uploads, bodies) once it is launched with ``launch_options()``."""
    guard = ClientGuard(limits, trusted_proxies, upload_folder=demo.GRADIO_CACHE)
    if os.environ.get("SPACE_ID") and not guard.trusted_proxies:
        log.warning("running on a Space without HALVIZ_TRUSTED_PROXIES=1: every visitor counts as one client")
    demo.client_guard = guard
    limit_events(demo, guard, decode_fns)
    fair_workers(demo, guard)
    quiet_refusals()
    return guard
