"""Lists of index pairs as one knob value: ``"row:col,row:col"`` for patches, ``"layer:head,…"`` for heads.

A knob holds one string (settings travel as flat JSON), so the interventions take a set of patches or
heads as text. :func:`pairs_parser` gives the knob's parser: it refuses anything but comma-separated
``a:b`` pairs of small non-negative integers, bounded in length, and returns the canonical form
(sorted, without repeats), so the value a trace records is the set that acted. Whether a pair lies on
the model's grid or among its heads is checked by the method at ``setup``, once the model is known.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MAX_PAIRS_CHARS = 16_384  # a 40×40 grid listed in full fits (so at most ~2,700 pairs); requests are capped lower
MAX_INDEX = 1023  # as the box knobs' range
_PAIR = re.compile(r"\s*(\d{1,4})\s*:\s*(\d{1,4})\s*")


def parse_pairs(text: str, what: str, example: str) -> tuple[tuple[int, int], ...]:
    """``"1:2, 0:3"`` → ((0, 3), (1, 2)); "" → (); anything else raises ValueError naming ``what``."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text like {example!r}, not {type(text).__name__}")
    if len(text) > MAX_PAIRS_CHARS:
        raise ValueError(f"{what} has {len(text)} characters; the limit is {MAX_PAIRS_CHARS}")
    if not text.strip():
        return ()
    pairs = set()
    for item in text.split(","):
        match = _PAIR.fullmatch(item)
        if match is None:
            shown = item.strip()[:20] or "an empty entry"
            raise ValueError(f"{what} must look like {example!r} (whole numbers a:b, commas between); "
                             f"{shown!r} is not a pair")
        a, b = int(match.group(1)), int(match.group(2))
        if a > MAX_INDEX or b > MAX_INDEX:
            raise ValueError(f"{what}: {a}:{b} is out of range (each number at most {MAX_INDEX})")
        pairs.add((a, b))
    return tuple(sorted(pairs))


def format_pairs(pairs: Iterable[tuple[int, int]]) -> str:
    """The canonical knob value of ``pairs``: sorted, no repeats, ``"a:b,a:b"``."""
    return ",".join(f"{int(a)}:{int(b)}" for a, b in sorted(set(pairs)))


def pairs_parser(what: str, example: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        return format_pairs(parse_pairs(text, what, example))

    return parse
