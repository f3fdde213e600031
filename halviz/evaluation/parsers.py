"""POPE answer parsers: the official rule and the readings in circulation, which disagree.

Each parser maps a free-text answer to ``"yes"``, ``"no"`` or ``None`` (no reading). Sources:

- ``official`` (default): the POPE repository's ``evaluate.py`` (AoiDragon/POPE, read in this
  session), copied verbatim into LLaVA's ``llava/eval/eval_pope.py``: keep the text before the first
  ``.``, drop commas, split on spaces; "no" if a word is exactly ``No``, ``no`` or ``not``, else
  "yes". So "Nope", "NO." and "I don't think so" read as yes.
- ``vcd``: VCD's ``experiments/eval/eval_pope.py`` (DAMO-NLP-SG/VCD, read in this session). It
  lowercases and strips the answer and then looks at the *label*: on a "yes" question the answer
  counts as yes iff it contains the substring ``yes``; on a "no" question it counts as no iff it
  contains ``no`` (so "not", "nothing", "know", "nope" are no). The reading therefore depends on
  the label: "maybe" is a no on a yes question and a yes on a no question. :func:`parse_vcd` takes
  the label for this reason.
- ``halc``: HALC's / VASparse's reading as evaluation.md states it (their code was not read in this
  session): words ``No``, ``not``, ``no``, ``NO``, or any word ending in ``n't`` mean no. The
  first-sentence cut and the comma removal are assumed from the official script they derive from.
- ``exact``: lmms-eval's exact match: the lowercased, stripped answer must be ``yes`` or ``no``;
  anything else has no reading (None), which counts as not-yes and as wrong.
"""

from __future__ import annotations

from typing import Callable

YES, NO = "yes", "no"


def _first_sentence_words(text: str) -> list[str]:
    if "." in text:
        text = text.split(".")[0]
    return text.replace(",", "").split(" ")


def parse_official(text: str, label: str | None = None) -> str:
    words = _first_sentence_words(text)
    return NO if ("No" in words or "not" in words or "no" in words) else YES


def parse_halc(text: str, label: str | None = None) -> str:
    words = _first_sentence_words(text)
    negative = {"No", "not", "no", "NO"}
    return NO if any(w in negative or w.endswith("n't") for w in words) else YES


def parse_vcd(text: str, label: str | None = None) -> str:
    """VCD's reading; it needs the question's label (see the module docstring)."""
    if label not in (YES, NO):
        raise ValueError("VCD's parser reads the answer against the label: give label='yes' or 'no'")
    answer = text.lower().strip()
    if label == YES:
        return YES if YES in answer else NO
    return NO if NO in answer else YES


def parse_exact(text: str, label: str | None = None) -> str | None:
    answer = text.lower().strip()
    return answer if answer in (YES, NO) else None


PARSERS: dict[str, Callable[[str, str | None], str | None]] = {
    "official": parse_official,
    "vcd": parse_vcd,
    "halc": parse_halc,
    "exact": parse_exact,
}
DEFAULT_PARSER = "official"


def parse(name: str, text: str, label: str | None = None) -> str | None:
    try:
        parser = PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown POPE parser {name!r}; known: {', '.join(PARSERS)}") from None
    return parser(text, label)


def disagreements(answers: list[str], labels: list[str], parsers: list[str] | None = None,
                  against: str = DEFAULT_PARSER) -> dict[str, int]:
    """How many answers each parser reads differently from ``against`` (the official one)."""
    names = parsers or [p for p in PARSERS if p != against]
    base = [parse(against, a, l) for a, l in zip(answers, labels)]
    return {name: sum(parse(name, a, l) != b for a, l, b in zip(answers, labels, base)) for name in names}
