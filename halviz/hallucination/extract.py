"""Find COCO object mentions in free text, with character offsets into the original string.

Pipeline (CHAIR's `caption_to_words`, methods.md section 6): tokenise, lowercase, singularise,
merge two-word phrases greedily left to right, drop "seat" when "toilet" also occurs, then keep
the words on a synonym line and map them to their canonical COCO name.

How this differs from the standard script (NLTK `word_tokenize` + `pos_tag` + WordNet
lemmatiser), which needs NLTK data that is not available offline:

- Singularisation uses `inflect` and treats every token as a noun. The script lemmatises each
  word with its POS tag, so verb forms become base verbs: "skiing" -> "ski" (skis),
  "skateboarding" -> "skateboard", "biking" -> "bike" (bicycle) count as objects there and not
  here. Conversely a verb such as "ties" or "seats" is singularised like a noun here; WordNet's
  verb lemma ("tie", "seat") is the same word, so such cases agree.
- Words already in the vocabulary are not singularised ("bus", "skis", "people", "scissors"),
  because inflect also strips the "s" of singular nouns ("bus" -> "bu", "tennis" -> "tenni").
  Irregular plurals inflect knows ("mice", "knives", "geese", "oxen", "children") are handled.
- Tokens are runs of letters/digits; a hyphen joins runs into one token ("hot-dog", "t-shirt"),
  as NLTK keeps hyphenated words whole, and an apostrophe splits ("man's" -> "man", "s").
- Two tokens merge into a phrase only when just whitespace separates them, as NLTK's
  punctuation tokens keep "hot, dog" apart.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from halviz.hallucination.vocabulary import (
    KNOWN_WORDS,
    SEAT_WORD,
    SYNONYM_TO_CANONICAL,
    TOILET_WORD,
    TWO_WORD_PHRASES,
)

if TYPE_CHECKING:
    import inflect

# Letters/digits (not "_"), optionally joined by hyphens. Matching on the original string keeps
# offsets exact even where lowercasing would change the length (e.g. "İ").
_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_WHITESPACE_ONLY = re.compile(r"\s+")


@dataclass(frozen=True)
class Mention:
    """One object mention: `text[start:end] == surface`, which maps to COCO `canonical`."""

    start: int
    end: int
    surface: str
    canonical: str


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    word: str  # lowercased and singularised


@functools.lru_cache(maxsize=1)
def _inflect_engine() -> inflect.engine:
    import inflect  # imported on first use: it takes over a second, which a CLI error need not pay

    return inflect.engine()


@functools.lru_cache(maxsize=65536)
def singularise(word: str) -> str:
    """Lowercase `word` and singularise it as a noun; vocabulary words are kept as they are."""
    lowered = word.lower()
    if lowered in KNOWN_WORDS or not (lowered.isascii() and lowered.isalpha()):
        return lowered  # only plain ASCII words can singularise into a vocabulary word
    try:
        singular = _inflect_engine().singular_noun(lowered)
    except Exception:  # inflect has raised on odd input in the past; a caption must never crash
        return lowered
    return singular if isinstance(singular, str) and singular else lowered


def _tokens(text: str) -> list[_Token]:
    return [
        _Token(match.start(), match.end(), singularise(match.group()))
        for match in _TOKEN.finditer(text)
    ]


def count_words(text: str) -> int:
    """Caption length in words, as CHAIR's Len reports it (punctuation is not a word)."""
    return sum(1 for _ in _TOKEN.finditer(text))


def _merge_phrases(text: str, tokens: list[_Token]) -> list[_Token]:
    """Greedy left-to-right merge of two-word phrases into one unit spanning both words."""
    merged: list[_Token] = []
    i = 0
    while i < len(tokens):
        first = tokens[i]
        if i + 1 < len(tokens):
            second = tokens[i + 1]
            phrase = TWO_WORD_PHRASES.get(f"{first.word} {second.word}")
            if phrase is not None and _WHITESPACE_ONLY.fullmatch(text[first.end:second.start]):
                merged.append(_Token(first.start, second.end, phrase))
                i += 2
                continue
        merged.append(first)
        i += 1
    return merged


def extract_mentions(text: str) -> list[Mention]:
    """All COCO object mentions in `text`, in order, repeats included. Never raises on a str."""
    units = _merge_phrases(text, _tokens(text))
    words = {unit.word for unit in units}
    drop_seat = TOILET_WORD in words and SEAT_WORD in words
    mentions: list[Mention] = []
    for unit in units:
        if drop_seat and unit.word == SEAT_WORD:
            continue
        canonical = SYNONYM_TO_CANONICAL.get(unit.word)
        if canonical is not None:
            mentions.append(Mention(unit.start, unit.end, text[unit.start:unit.end], canonical))
    return mentions
