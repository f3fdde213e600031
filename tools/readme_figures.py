"""The README's figures that are plots (not page screenshots), drawn from a real toy decode.

    python -m tools.readme_figures        # writes assets/lens.png

The logit lens: the knife scene without a fork, at the step where Greedy writes the planted partner
"fork" (the toy's learnt prior): in which layer that word became the lens's top token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import halviz
from halviz.viz import lens

ROOT = Path(__file__).resolve().parents[1]


def lens_figure(out: Path) -> Path:
    greedy = halviz.compare(halviz.EXAMPLES_DIR / "toy-knife-no-fork.png", model="toy", max_new_tokens=24)["vanilla"]
    step = next(i for i, piece in enumerate(greedy.trace.texts) if piece.strip() == "fork")
    fig = lens.lens_heatmap_figure(greedy.trace, step, None, (greedy.title, ""))
    return halviz.export(fig, out, width=720)


def main() -> int:
    print("written:", lens_figure(ROOT / "assets" / "lens.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
