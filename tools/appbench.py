"""The app's own cost: ``/compare`` wall time against the engine's time for the same decodes.

    python -m tools.appbench [--model toy] [--tokens 32] [--rounds 3] [--json PATH]

Launches the app in this process (warmed at start-up, as ``app.py`` does), then times, in one run:
the first ``/compare`` after start-up, warm ``/compare`` calls, and the engine alone decoding the same
columns (one :class:`~halviz.engine.batch.BatchDecoder`, the stacks the app builds, recording on).
Prints the ratios: app / engine (goal ≤ 1.2) and first / warm (goal ≤ 1.5). Minimum over rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples"
IMAGE = "toy-scene.png"
PROMPT = "Describe the image."
METHODS = ("vanilla", "prunehal", "vasparse", "vhr", "kvsmooth")


def _compare(client, model: str, tokens: int) -> float:
    from gradio_client import handle_file

    started = time.perf_counter()
    job = client.submit(handle_file(str(EXAMPLES / IMAGE)), PROMPT, list(METHODS), tokens, "", model, "",
                        api_name="/compare")
    for _ in job:
        pass
    if not job.status().success:
        job.result()  # raises the server's message
    return time.perf_counter() - started


def _engine(app, model: str, tokens: int) -> float:
    """The same columns as the app decodes them (its per-model defaults), by the engine alone."""
    from halviz.engine.batch import BatchDecoder
    from halviz.session.checks import build_stacks
    from halviz.session.model_defaults import model_defaults

    key = app.policy.check(model, app.default_model)
    loaded = app.cache.get(key)
    settings = model_defaults(key, app.registry).merged({}, list(METHODS))
    stacks = build_stacks(list(METHODS), settings, app.registry)
    image = Image.open(EXAMPLES / IMAGE).convert("RGB")
    started = time.perf_counter()
    BatchDecoder(loaded, image, PROMPT, stacks, tokens).run_to_end()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.appbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update-every", type=float, default=None,
                        help="seconds between streamed caption updates (default: the app's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from gradio_client import Client

    from tools.stress import free_port
    from halviz.ui import build_app, launch_options, shutdown

    started = time.perf_counter()
    throttle = {} if args.update_every is None else {"update_every_s": args.update_every}
    demo = build_app(models=[args.model], default_model=args.model, preload=[args.model], **throttle)
    startup = time.perf_counter() - started
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options())
    try:
        client = Client(url, verbose=False, download_files=False)  # a browser fetches trace files only on click
        first = _compare(client, args.model, args.tokens)
        warm, engine = [], []
        for _ in range(args.rounds):
            warm.append(_compare(client, args.model, args.tokens))
            engine.append(_engine(demo.halviz, args.model, args.tokens))
    finally:
        shutdown(demo)
    result = {"model": args.model, "tokens": args.tokens, "columns": len(METHODS), "rounds": args.rounds,
              "startup_s": round(startup, 3), "first_s": round(first, 3), "warm_s": round(min(warm), 3),
              "engine_s": round(min(engine), 3)}
    result["app_over_engine"] = round(result["warm_s"] / result["engine_s"], 3)
    result["first_over_warm"] = round(result["first_s"] / result["warm_s"], 3)
    print(f"{args.model}: {len(METHODS)} columns x {args.tokens} tokens, min of {args.rounds} rounds\n"
          f"  start-up (load + warm)   {startup:7.2f} s\n"
          f"  first /compare           {first:7.2f} s\n"
          f"  warm /compare            {result['warm_s']:7.2f} s\n"
          f"  engine alone             {result['engine_s']:7.2f} s\n"
          f"  app / engine             {result['app_over_engine']:7.2f} x   (goal <= 1.2)\n"
          f"  first / warm             {result['first_over_warm']:7.2f} x   (goal <= 1.5)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
