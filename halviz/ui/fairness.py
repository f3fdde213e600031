"""Per-session fairness in Gradio's queue: one client cannot fill it.

Gradio's queue has a global ``max_size`` and per-event ``concurrency_limit``s, but nothing per
session, so one API client could take every slot and the next person got "Queue is full". This
wraps the queue's ``push`` (the one place every event joins it) and refuses a session's new event
when it already has ``limits[fn]`` events of that function, or ``per_session`` events in all,
waiting or running. The refusal is Gradio's own validation answer (HTTP 422): gradio_client raises
``ValidationError`` with the sentence, the page shows it.

The count runs in the server's event loop from the queue's own lists plus pushes still in
progress, so simultaneous joins from one session cannot slip past it. It keys on Gradio's session
hash; a client that invents a new session per request is held only by ``max_size``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import gradio as gr


def pending_events(queue, session: str) -> Counter:
    """Function id → this session's events waiting in or running on ``queue``."""
    counts: Counter = Counter()
    waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    running = [e for job in queue.active_jobs if job for e in job]
    for event in waiting + running:
        if event.session_hash == session:
            counts[event.fn._id] += 1
    return counts


def limit_per_session(demo: gr.Blocks, limits: Mapping[int, tuple[int, str]], per_session: int,
                      message_all: str) -> None:
    """Install the limits on ``demo``'s queue. ``limits``: function id → (most, refusal sentence)."""
    queue = demo._queue
    original = queue.push
    in_progress: Counter = Counter()  # (session, fn id) → pushes not yet returned

    async def push(body, request, username):
        session, fn_id = body.session_hash, body.fn_index
        if session is None or fn_id is None:
            return await original(body=body, request=request, username=username)
        held = pending_events(queue, session)
        for (owner, fn), count in in_progress.items():
            if owner == session:
                held[fn] += count
        refusal = None
        if fn_id in limits and held[fn_id] >= limits[fn_id][0]:
            refusal = limits[fn_id][1]
        elif sum(held.values()) >= per_session:
            refusal = message_all
        if refusal is not None:
            return False, [{"__type__": "validate", "is_valid": False, "message": refusal}], "validator_error"
        in_progress[session, fn_id] += 1
        try:
            return await original(body=body, request=request, username=username)
        finally:
            in_progress[session, fn_id] -= 1
            if not in_progress[session, fn_id]:
                del in_progress[session, fn_id]

    queue.push = push
