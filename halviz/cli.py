"""The ``halviz`` command: one subcommand per tool, each the same as ``python -m <its module>``.

Subcommands are imported only when run, so ``halviz --help`` answers at once (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# name → (module whose main(argv) runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("halviz.ui.serve", "serve the web app (the same as python app.py)"),
    "eval": ("halviz.eval", "CHAIR (and POPE) of decoding methods on COCO images or toy scenes"),
    "chair": ("halviz.chair", "score captions you already have with CHAIR"),
    "bench": ("halviz.bench", "speed and trace size of every method at a model's real geometry"),
    "gpubench": ("halviz.gpubench", "the GPU benchmark (needs a CUDA device)"),
    "probe": ("halviz.toy.recipe.probe", "the toy model's measured claims (sink, decline, prior, methods)"),
    "risk-study": ("halviz.toy.recipe.risk_study", "which trace signal marks hallucinated mentions (ROC AUC on the toy)"),
    "train": ("halviz.toy.recipe.train", "train the toy model from scratch (the recipe)"),
    "tune": ("halviz.toy.recipe.tune", "choose the toy model's method defaults on its tuning split"),
    "toy-eval": ("halviz.toy.recipe.evaluate", "CHAIR and the prior-pair rates of the toy model"),
    "pick-examples": ("halviz.toy.recipe.pick_examples", "re-pick the toy 'X without Y' examples by their rule"),
}
OPTIONAL = {"pope": ("halviz.pope", "build POPE splits and score yes/no answers")}


def available() -> dict[str, tuple[str, str]]:
    """The subcommands whose modules are installed (optional ones only when present)."""
    found = dict(COMMANDS)
    for name, (module, text) in OPTIONAL.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, text)
    return found


def parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14} {text}" for name, (_, text) in commands.items())
    top = argparse.ArgumentParser(
        prog="halviz", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="halviz: a visual debugger for hallucination in multimodal LLMs.",
        epilog=f"subcommands:\n{listing}\n\n'halviz SUBCOMMAND --help' shows a subcommand's options; "
               "each is also 'python -m MODULE'.")
    top.add_argument("command", choices=sorted(commands), metavar="SUBCOMMAND", help="what to run (see below)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    if not argv or argv[0] in ("-h", "--help"):
        parser(commands).print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        parser(commands).error(f"unknown subcommand {name!r}; choose from {', '.join(sorted(commands))}")
    module = importlib.import_module(commands[name][0])
    sys.argv = [f"halviz {name}", *rest]  # so each tool's own --help names the command as typed
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
