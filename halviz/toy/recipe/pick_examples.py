"""Choose the app's three "X without Y" toy examples for the shipped model and write them.

    python -m halviz.toy.recipe.pick_examples [--model toy] [--examples halviz/assets/examples] [--dry-run]

For each planted pair, the example is the first scene of its broken-pair set (halviz.eval's
HELDOUT_SEED, never the probe's or the tuning split's) with at most ``max_objects`` objects on which
greedy decoding names the absent partner, so that the example shows the prior the methods act on.
The rule is fixed; which scene it picks depends on the weights, so rerun it with each new model.
Writes ``toy-<trigger>-no-<partner>.png`` and that entry's ``objects`` and ``source`` in
``examples.json`` (other entries are left as they are).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from halviz.models import DEFAULT_PROMPT, load_model
from halviz.toy import scenes as toy_scenes
from halviz.toy.recipe.probe import greedy_caption, names_partner

SEARCH = 100  # broken-pair scenes looked at per pair before giving up


def first_prior_scene(loaded, pair: tuple[str, str], max_objects: int, max_new_tokens: int = 64):
    """(index, scene, caption) of the first small broken-pair scene whose greedy caption names the partner."""
    for index, scene in enumerate(toy_scenes.broken_pair(pair, SEARCH)):
        if len(scene.objects) > max_objects:
            continue
        caption, _ = greedy_caption(loaded, scene.image, DEFAULT_PROMPT, [], max_new_tokens)
        if names_partner(caption.text, pair[1]):
            return index, scene, caption.text
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.toy.recipe.pick_examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--examples", type=Path, default=Path("halviz/assets/examples"))
    parser.add_argument("--max-objects", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="print the choices, write nothing")
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    listing = args.examples / "examples.json"
    entries = json.loads(listing.read_text(encoding="utf-8"))
    by_file = {e["file"]: e for e in entries["examples"]}
    chosen = []  # every pair is searched before anything is written, so a failure leaves the files as they were
    for trigger, partner in toy_scenes.PRIOR_PAIRS:
        found = first_prior_scene(loaded, (trigger, partner), args.max_objects)
        if found is None:
            print(f"{trigger}→{partner}: no scene among the first {SEARCH} names the {partner}", file=sys.stderr)
            return 1
        chosen.append((trigger, partner, *found))
    for trigger, partner, index, scene, caption in chosen:
        name = f"toy-{trigger}-no-{partner}.png"
        print(f"{name}: scene {index}, objects {', '.join(sorted(scene.names))}; greedy: {caption.strip()}")
        if args.dry_run or name not in by_file:
            continue
        scene.image.save(args.examples / name)
        by_file[name]["objects"] = ", ".join(sorted(scene.names))
        by_file[name]["source"] = (
            f"toy scene generator (broken pair {trigger}→{partner}, scene {index}: the first of its kind, from "
            f"scene 0, with at most {args.max_objects} objects on which the shipped model names the absent "
            f"{partner}; python -m halviz.toy.recipe.pick_examples): the objects it drew")
    if not args.dry_run:
        listing.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
