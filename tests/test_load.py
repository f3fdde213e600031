"""Issue 28's load test, small: polite clients (each its own forwarded address, HALVIZ_TRUSTED_PROXIES=1)
beside one hostile client using every attack at once; the polite ones are all served, with the
captions of their solo runs, within 3× their time without the attacker. And the fair choice of the
next event that makes it so: one client never holds every decode worker."""

from types import SimpleNamespace

import pytest

from halviz.ui.fairness import ClientGuard, Limits, fair_workers
from tools.load import LIMIT_RATIO, LoadPlan, print_figures, run_load

TINY = LoadPlan(polite=2, rounds=2, tokens=3, pause_s=0.3, stagger_s=0.2, hostile_tokens=40, holders=4,
                walk_aways=6, no_session_calls=3, invented_sessions=12, uploads=8, deadline_s=200.0)


def test_polite_clients_beside_a_hostile_one(toy):
    figures = run_load(TINY, loader=lambda name: toy, log=lambda line: None)
    print_figures(figures, out=lambda line: print(line))
    assert figures["checks"]["every_polite_request_served"], figures["clients"]
    assert figures["checks"]["captions_equal_solo_runs"], figures["clients"]
    assert figures["checks"][f"within_{LIMIT_RATIO:g}x_alone"], figures["clients"]
    answers = figures["hostile_answers"]
    # Calls without a session count against the hostile client: refused while its share is held by its other
    # comparisons (a call that arrives in a moment when one just finished is served, as any client's would be).
    assert "422" in answers["calls without a session"] and set(answers["calls without a session"]) <= {"200", "422"}
    assert "422" in answers["walk-away comparisons"]
    assert figures["refusals_logged"].get("decodes_per_client", 0) > 0


# ---- the fair choice, on a stand-in queue ------------------------------------------------------------

def event(client: str, fn):
    request = SimpleNamespace(client=SimpleNamespace(host=client), headers=SimpleNamespace(getlist=lambda _: []))
    return SimpleNamespace(request=request, fn=fn, session_hash=client)


def queue_with(waiting, running, limit=2):
    fn = SimpleNamespace(concurrency_id="decode", batch=False, max_batch_size=1)
    pool = SimpleNamespace(queue=[event(c, fn) for c in waiting], concurrency_limit=limit,
                           current_concurrency=len(running))
    queue = SimpleNamespace(event_queue_per_concurrency_id={"decode": pool},
                            active_jobs=[[event(c, fn)] for c in running] + [None] * 4,
                            get_events=lambda: pytest.fail("Gradio's own choice was used"))
    return SimpleNamespace(_queue=queue), pool


@pytest.mark.parametrize("waiting, running, chosen", [
    (["10.0.0.1", "10.0.0.1", "10.0.0.2"], [], "10.0.0.1"),  # nobody runs: first come
    (["10.0.0.1", "10.0.0.1", "10.0.0.2"], ["10.0.0.1"], "10.0.0.2"),  # the attacker holds one worker
    (["10.0.0.1", "10.0.0.3", "10.0.0.2"], ["10.0.0.2"], "10.0.0.1"),  # fewest running, then first come
])
def test_the_next_event_is_the_earliest_of_the_client_running_fewest(waiting, running, chosen):
    demo, pool = queue_with(waiting, running)
    fair_workers(demo, ClientGuard(Limits()))
    events, batch, pool_id = demo._queue.get_events()
    assert events[0].request.client.host == chosen and pool_id == "decode" and not batch
    assert len(pool.queue) == len(waiting) - 1


def test_one_client_never_holds_the_last_worker_of_a_pool():
    demo, pool = queue_with(["10.0.0.1", "10.0.0.1"], ["10.0.0.1"])
    fair_workers(demo, ClientGuard(Limits()))
    assert demo._queue.get_events() is None  # the second worker waits for someone else
    assert len(pool.queue) == 2
    single, _ = queue_with(["10.0.0.1"], [], limit=1)  # a pool of one is shared by taking turns
    fair_workers(single, ClientGuard(Limits()))
    assert single._queue.get_events()[0][0].request.client.host == "10.0.0.1"
