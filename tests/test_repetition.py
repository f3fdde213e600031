"""Loop detection and seq-rep-4 (halviz.hallucination.repetition) against hand-worked captions."""

from __future__ import annotations

import pytest

from halviz.hallucination.repetition import (
    caption_units,
    find_loop,
    find_loop_in_units,
    periodic_tail_start,
    repetition_rate,
    step_of_char,
)

KNIFE_LOOP = "a big gray knife ." + " next to a big gray knife" * 10


def test_the_measured_knife_loop():
    # units: a big gray knife . | next to a big gray knife ×10 -> 5 + 60 = 65 units.
    loop = find_loop(KNIFE_LOOP)
    assert loop is not None
    assert (loop.start, loop.period, loop.copies) == (5, 6, 10.0)  # "." stops the tail going further back
    assert loop.block == "next to a big gray knife"
    assert KNIFE_LOOP[loop.start_char:].startswith("next to") and loop.start_char == 19
    assert loop.repeat_char == 19 + len("next to a big gray knife ")
    # 62 4-grams; distinct: 5 starting before the tail + 6 in the tail, one of which ("a big gray
    # knife") already started at unit 0 -> 10; seq-rep-4 = 1 - 10/62.
    assert repetition_rate(KNIFE_LOOP) == pytest.approx(1 - 10 / 62)


@pytest.mark.parametrize("caption", [
    "a cat and a dog and a cat",  # period 6 fits, but the tail (8 units) is not two copies (12)
    "a cat sat . a cat sat",  # one copy and most of a second: 7 units < 2 x 4
    "very very",  # two copies, but only 2 units < MIN_LOOP_UNITS
    "a big red cup above a small yellow spoon . a big gray knife . three things in all .",
    "a cat a cat a cat . a dog",  # repeats in the middle, not at the end
    "",
])
def test_captions_that_do_not_loop(caption):
    assert find_loop(caption) is None


def test_near_misses_by_hand():
    # "a cat and a dog and a cat": 8 units, 5 distinct 4-grams of 5.
    assert repetition_rate("a cat and a dog and a cat") == 0.0
    # "a cat a cat a cat . a dog": 9 units, 6 4-grams, "a cat a cat" twice -> 1/6.
    assert repetition_rate("a cat a cat a cat . a dog") == pytest.approx(1 / 6)
    assert repetition_rate("a cat") == 0.0  # fewer than 4 units: no 4-gram


@pytest.mark.parametrize("caption, start, period, copies", [
    ("a cat sat . a cat sat .", 0, 4, 2.0),  # exactly two copies
    ("a cat a cat a", 0, 2, 2.5),  # the last copy may be cut short (max_new_tokens)
    ("ha ha ha ha", 0, 1, 4.0),  # periods 1 and 2 both start at 0: the smaller wins
    ("The cat. The cat. the cat.", 0, 3, 3.0),  # compared lowercased
    ("two dogs run . run . run", 2, 2, 2.5),  # the tail reaches back to the first "run", not to "dogs"
])
def test_loops_by_hand(caption, start, period, copies):
    loop = find_loop(caption)
    assert loop is not None and (loop.start, loop.period, loop.copies) == (start, period, copies)


def test_periodic_tail_start_by_hand():
    words = "x a b a b a".split()
    assert periodic_tail_start(words, 2) == 1  # "a b a b a"
    assert periodic_tail_start(words, 1) == 5  # nothing repeats with period 1: just the last unit
    assert find_loop_in_units(words) == (1, 2)


def test_units_keep_offsets_and_split_punctuation():
    units = caption_units("A hot-dog, two!")
    assert [(u.start, u.end, u.text) for u in units] == [
        (0, 1, "a"), (2, 9, "hot-dog"), (9, 10, ","), (11, 14, "two"), (14, 15, "!")]


def test_step_of_char_maps_a_character_to_its_decoding_step():
    pieces = ["a", " cat", "", " a"]
    assert [step_of_char(pieces, c) for c in (0, 1, 4, 5, 6)] == [0, 1, 1, 3, 3]
    assert step_of_char(pieces, 7) is None
