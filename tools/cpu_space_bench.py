"""What a free CPU Space can show: real architectures at their CPU image budget, timed at app level.

    python -m tools.cpu_space_bench [--models smolvlm-256m,interleave-0.5b] [--tokens 32] [--rounds 1]

For each model: a random checkpoint of the real architecture (``halviz.models.real_geometry``, as
``halviz bench`` builds it) is saved to a temporary folder, the app is launched in this process with
that folder as its only model (loaded and warmed at start-up, as a Space does), and ``/compare`` is
called with no image budget, so the device's default applies (on a CPU: the cheapest the model's
processor offers). Printed per model: the budget and its image tokens, seconds from Compare to the
first caption words on the page, and seconds for 5 columns x N tokens end to end (with the tokens
each column really produced: random weights may meet EOS early). Minimum over rounds.

The first words are the first update that carries tokens; they count only if checked: after 0 s and
before the end, the status line says token 1, and every card's text in that update is its column's
first token as the saved trace recorded it. Random weights may begin with tokens that render as
nothing, so the first visible text is printed too, with the token it came at.
Also printed, from the last round: when the page said the vision tower and the prompt started
(the status phases), and the trace's step times (step 0: the vision tower and the prefill, then one
decode round per step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tools.appbench import EXAMPLES, METHODS, PROMPT

MODELS = {"smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct", "interleave-0.5b": "interleave-0.5b"}
IMAGE = "coffee.jpg"  # a photo: the budget matters for photos (toy scenes are small)
GOALS = {"smolvlm-256m": (5.0, 20.0), "interleave-0.5b": (None, 60.0)}  # (first words, 5 columns end to end)


PHASES = {"image": "Encoding the picture", "prompt": "Reading the prompt"}  # the status line's phases


def _cards(outputs) -> list[str]:
    """The caption cards' texts in a streamed /compare update, in column order (the client gets no
    State outputs, so the cards are found by their value: HighlightedText's list of token/class pairs,
    empty for a card whose text is still empty)."""
    cards = []
    for value in outputs:
        items = value.get("value") if isinstance(value, dict) else value
        if isinstance(items, list) and all(isinstance(c, dict) and "token" in c for c in items):
            cards.append("".join(str(c["token"]) for c in items))
    return cards


def _tokens_shown(status: str) -> int | None:
    """How many tokens the status line says each column has: k of "token k of at most N"; -1 once done."""
    found = re.search(r"· token (\d+) of at most", status)
    return int(found.group(1)) if found else -1 if re.match(r"(✓|⚠) Done", status) else None


def _traces(outputs) -> list:
    """The traces the last update offers for download (in-process, their server paths are local)."""
    from halviz.trace import Trace

    files = next((v for v in reversed(outputs) if isinstance(v, list) and v and isinstance(v[0], dict)
                  and "path" in v[0]), [])
    return [Trace.load(f["path"]) for f in files if str(f["path"]).endswith(".npz")]


def _compare(client, model: str, image: Path, tokens: int) -> dict:
    from gradio_client import handle_file

    started = time.perf_counter()
    first, shown, seen, visible, phases = None, None, None, None, {}
    job = client.submit(handle_file(str(image)), PROMPT, list(METHODS), tokens, "", model, "", api_name="/compare")
    last = None
    for outputs in job:
        now = time.perf_counter() - started
        last = outputs
        status = outputs[0] if outputs and isinstance(outputs[0], str) else ""
        for phase, words in PHASES.items():
            if status.startswith(words):
                phases.setdefault(phase, now)
        count = _tokens_shown(status)
        if count is None:
            continue
        cards = _cards(outputs)
        if first is None:  # the first update that carries tokens: the first words
            first, shown, seen = now, count, cards
        if visible is None and any(c.strip() for c in cards):  # random weights may begin with empty tokens
            visible = (now, count)
    if not job.status().success:
        job.result()  # raises the server's message
    total = time.perf_counter() - started
    summary = last[-1] if last and isinstance(last[-1], dict) else {}
    traces = _traces(last or [])
    # The reading counts only if that update was the first token's, shown between Compare and the end.
    firsts = [t.texts[0] if t.num_steps else "" for t in traces]
    checked = first is not None and 0 < first < total and shown == 1 and seen == firsts
    if first is not None and not checked:
        print(f"  first-words reading rejected: at {first:.2f} s of {total:.2f} s the page showed token {shown} "
              f"with cards {seen}; the traces' first tokens are {firsts}", flush=True)
    step_ms = traces[0].arrays["step_ms"].tolist() if traces else []
    return {"first": first if checked else None, "first_texts": firsts, "visible": visible, "total": total,
            "summary": summary, "phases": phases, "step_ms": step_ms}


def bench(name: str, tokens: int, rounds: int) -> dict:
    from gradio_client import Client

    from halviz.models.real_geometry import save_real_geometry
    from halviz.session.resolution import family_for_key, resolve_budget
    from halviz.ui import build_app, launch_options, shutdown
    from tools.stress import free_port

    image = next(p for p in (EXAMPLES / IMAGE, *sorted(EXAMPLES.glob("*.jpg"))) if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = str(save_real_geometry(MODELS[name], Path(tmp) / name))
        built = time.perf_counter() - started
        started = time.perf_counter()
        demo = build_app(models=[folder], default_model=folder, preload=[folder])
        startup = time.perf_counter() - started
        family = family_for_key(folder)
        budget = resolve_budget(family, None, "cpu")
        loaded = demo.halviz.cache.get(folder)
        from PIL import Image

        picture = Image.open(image)
        plan = loaded.adapter.with_budget(budget).image_plan(*picture.size)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                                **launch_options())
        try:
            client = Client(url, verbose=False, download_files=False)
            runs = [_compare(client, folder, image, tokens) for _ in range(rounds)]
        finally:
            shutdown(demo)
    firsts = [r["first"] for r in runs if r["first"] is not None]
    summary = runs[-1]["summary"]
    produced = {m: int(s.get("tokens", 0)) for m, s in summary.items() if isinstance(s, dict)}
    step_ms = runs[-1]["step_ms"]
    visible = runs[-1]["visible"]
    return {"model": name, "budget": budget, "image": image.name, "image_size": list(picture.size),
            "image_tokens": plan.tokens, "plan": plan.describe(), "columns": len(METHODS), "tokens": tokens,
            "build_s": round(built, 1), "startup_s": round(startup, 1),
            "first_words_s": round(min(firsts), 2) if firsts else None,
            "end_to_end_s": round(min(r["total"] for r in runs), 2), "tokens_per_column": produced,
            "first_token_texts": runs[-1]["first_texts"],
            "first_visible_text_s": None if visible is None else round(visible[0], 2),
            "first_visible_at_token": None if visible is None else visible[1],
            "phases_s": {k: round(v, 2) for k, v in runs[-1]["phases"].items()},
            "prefill_ms": round(step_ms[0], 1) if step_ms else None,
            "decode_ms_per_round": round(sum(step_ms[1:]) / len(step_ms[1:]), 1) if step_ms[1:] else None,
            "threads": os.environ.get("OMP_NUM_THREADS", "?"), "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cpu_space_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for name in args.models.split(","):
        result = bench(name.strip(), args.tokens, args.rounds)
        results.append(result)
        first_goal, total_goal = GOALS.get(result["model"], (None, None))
        first = result["first_words_s"]
        print(f"{result['model']} at budget {result['budget']!r}: {result['plan']} "
              f"({result['image']} {result['image_size'][0]}x{result['image_size'][1]})\n"
              f"  first caption words   {first if first is not None else 'none':>7} s"
              + (f"   (goal <= {first_goal:g})" if first_goal else "") + "\n"
              f"  {result['columns']} columns x {args.tokens} tokens {result['end_to_end_s']:7.2f} s"
              + (f"   (goal <= {total_goal:g})" if total_goal else "") + "\n"
              f"  tokens per column     {result['tokens_per_column']}\n"
              f"  first tokens' texts   {result['first_token_texts']} (checked: the page showed them as token 1)\n"
              f"  first visible text    {result['first_visible_text_s']} s (token {result['first_visible_at_token']}"
              f" on the status line; -1: the last update)\n"
              f"  page phases (s after Compare) {result['phases_s']}\n"
              f"  trace step_ms: step 0 (vision tower + prefill) {result['prefill_ms']} ms, "
              f"decode {result['decode_ms_per_round']} ms per round (5 columns)\n"
              f"  start-up (load+warm)  {result['startup_s']:7.1f} s; OMP_NUM_THREADS={result['threads']}, "
              f"load average {tuple(round(v, 2) for v in result['load'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
