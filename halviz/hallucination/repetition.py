"""Where a caption starts looping, and how much of it repeats itself.

Greedy decoding that falls into a loop repeats one block of text until ``max_new_tokens``
("… next to a big gray knife next to a big gray knife next to …"). CHAIR counts every copy of the
block as new mentions, so a looping caption can score CHAIR_I 0 %. This module finds the loop, so
that callers can say so and stop counting at it.

Units: a caption is cut into words and single punctuation marks (``caption_units``), lowercased
for comparison; each unit keeps its character offsets, so a caller holding per-token text can map a
unit to the decoding step that produced it.

Loop rule: the caption *ends* in a loop of period p from unit k when every unit from k on equals
the unit p places later (``units[i] == units[i + p]`` for ``k <= i < n - p``), the periodic tail
holds at least ``MIN_COPIES`` full copies of its block (``n - k >= 2p``) and at least
``MIN_LOOP_UNITS`` units (so "very very" is not a loop, "a cat a cat" is). ``loops_from`` is the
smallest such k over every p (ties: the smallest p). ``units[k:k + p]`` is the block: its first copy
is content, every later copy is the loop's repetition. Only the end of a caption is examined: a
decode that loops never leaves the loop, and a repeat in the middle is not a loop (repetition
rate still sees it).

Repetition rate: seq-rep-4 (Welleck et al., ICLR 2020, "Neural text generation with unlikelihood
training"): the share of the caption's 4-grams of units that occurred earlier in it,
``1 - distinct 4-grams / 4-grams``; 0.0 for captions of fewer than 4 units.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MIN_COPIES = 2
MIN_LOOP_UNITS = 4
REPETITION_NGRAM = 4

# A word (letters/digits, hyphen-joined as in extract.py) or one punctuation mark.
_UNIT = re.compile(r"[^\W_]+(?:-[^\W_]+)*|[^\w\s]|_")


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    text: str  # lowercased


@dataclass(frozen=True)
class Loop:
    """A caption's looping tail: ``units[start:start + period]`` repeated to the end."""

    start: int  # unit index where the periodic tail begins (``loops_from``)
    period: int  # units per copy of the block
    copies: float  # how many copies of the block the tail holds (the last may be cut short)
    start_char: int  # character offset of the tail's first unit
    repeat_char: int  # character offset of the block's second copy: text from here on only repeats
    block: str  # one copy of the block, as written in the caption


def caption_units(text: str) -> list[Unit]:
    """Words and punctuation marks of ``text``, lowercased, with their character offsets."""
    return [Unit(m.start(), m.end(), m.group().lower()) for m in _UNIT.finditer(text)]


def periodic_tail_start(words: Sequence[str], period: int) -> int:
    """The smallest k such that ``words[k:]`` has the given period (``len(words) - period`` at worst)."""
    k = len(words) - period
    while k > 0 and words[k - 1] == words[k - 1 + period]:
        k -= 1
    return max(k, 0)


def find_loop_in_units(words: Sequence[str]) -> tuple[int, int] | None:
    """``(loops_from, period)`` of the looping tail of ``words`` by the module's rule, or None."""
    n = len(words)
    best: tuple[int, int] | None = None
    for period in range(1, n // MIN_COPIES + 1):
        start = periodic_tail_start(words, period)
        tail = n - start
        if tail < MIN_COPIES * period or tail < MIN_LOOP_UNITS:
            continue
        if best is None or start < best[0]:
            best = (start, period)
    return best


def find_loop(text: str) -> Loop | None:
    """The loop ``text`` ends in, or None when it does not loop."""
    units = caption_units(text)
    found = find_loop_in_units([u.text for u in units])
    if found is None:
        return None
    start, period = found
    first, last = units[start], units[start + period - 1]
    return Loop(start=start, period=period, copies=(len(units) - start) / period, start_char=first.start,
                repeat_char=units[start + period].start, block=text[first.start:last.end])


def repetition_rate(text: str, n: int = REPETITION_NGRAM) -> float:
    """seq-rep-n of ``text``'s units: the share of its n-grams that occurred earlier in it."""
    words = [u.text for u in caption_units(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def step_of_char(pieces: Sequence[str], char: int) -> int | None:
    """The index of the piece (a decoding step's text) that holds character ``char`` of their join."""
    end = 0
    for index, piece in enumerate(pieces):
        end += len(piece)
        if char < end:
            return index
    return None
