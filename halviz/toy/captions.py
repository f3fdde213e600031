"""The caption grammar of the toy world.

A caption walks the objects in a partly random order and describes them two at a time with a
spatial relation: "a big red cup above a small yellow spoon . a big gray knife ." Size and
relation are read off the drawn geometry, so every word but the order is grounded. A partner is
moved right behind its trigger most of the time, which is what turns co-occurrence into a
next-mention language prior. A caption closes with a count of what it named ("three things in
all ."), which the decoder can read off its own words: the caption's last tokens need no look at
the image, as real captioners' closing summaries need little (meant for the probe's D1 decay; on the
shipped model the image attention still does not decay by that measure, see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halviz.toy.scenes import PRIOR_PAIRS, Scene, SceneObject, Seedish, _rng

SYSTEM_LINE = "A chat between a curious human and an artificial intelligence assistant."
DEFAULT_PROMPT = "Please describe this image in detail."
TRAIN_PROMPTS: tuple[str, ...] = (
    DEFAULT_PROMPT,
    "Please help me describe the image in detail.",
    "Describe the image.",
    "What is in this picture?",
)


@dataclass(frozen=True)
class GrammarConfig:
    spatial_order_rate: float = 0.5  # else a random order: position is not confounded with class
    partner_follows_rate: float = 0.8  # P(partner mentioned right after its trigger)
    pairs: tuple[tuple[str, str], ...] = PRIOR_PAIRS
    count_sentence: bool = True  # close with "N things in all ." (N = the objects named)


COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _mention_order(objects: list[SceneObject], rng: np.random.Generator,
                   grammar: GrammarConfig) -> list[SceneObject]:
    if rng.random() < grammar.spatial_order_rate:
        order = sorted(objects, key=lambda o: (o.centre[0], o.centre[1]))
    else:
        order = [objects[i] for i in rng.permutation(len(objects))]
    for trigger, partner in grammar.pairs:
        names = [o.name for o in order]
        if trigger in names and partner in names and rng.random() < grammar.partner_follows_rate:
            p = order.pop(names.index(partner))
            order.insert([o.name for o in order].index(trigger) + 1, p)
    return order


def _phrase(o: SceneObject) -> str:
    return f"a {o.size} {o.colour} {o.name}"


def _relation(a: SceneObject, b: SceneObject) -> str:
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(by - ay) > abs(bx - ax):
        return "above" if ay < by else "below"
    return "next to"


def caption_for(scene: Scene, seed: Seedish, grammar: GrammarConfig = GrammarConfig()) -> str:
    """A caption of the scene: sentences of one or two objects, ' .'-terminated."""
    rng = _rng(seed)
    order = _mention_order(list(scene.objects), rng, grammar)
    sentences = []
    for i in range(0, len(order), 2):
        pair = order[i:i + 2]
        if len(pair) == 2:
            sentences.append(f"{_phrase(pair[0])} {_relation(pair[0], pair[1])} {_phrase(pair[1])} .")
        else:
            sentences.append(f"{_phrase(pair[0])} .")
    if grammar.count_sentence and order:
        n = len(order)
        sentences.append(f"{COUNT_WORDS[n] if n < len(COUNT_WORDS) else n} thing{'s' if n != 1 else ''} in all .")
    return " ".join(sentences)
