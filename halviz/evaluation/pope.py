"""POPE (Li et al., EMNLP 2023) as released: split construction, the toy world's exact splits, JSONL I/O.

Construction follows the released ``main.py``/``utils.py`` of AoiDragon/POPE (read in this session;
written anew here, not copied):

- keep the images whose ground truth holds at least ``per_image`` (3) objects; sample ``n`` (500);
- per image, for each of its first 3 objects (in the ground truth's order) one "yes" question on it,
  followed by one "no" question on a negative: an object name not in the image and not yet asked
  about for this image;
- negatives: ``random`` = uniform over the object names of the sampled set; ``popular`` = the most
  frequent names of the sampled set, in order; ``adversarial`` = the names co-occurring most often
  with the positive object in the sampled set, in order; both fall back to random when their list
  runs out;
- template "Is there a {} in the image?", "an" before a vowel; question ids 1.. per split.

Where halviz differs, on purpose: the released code draws from Python's *unseeded* global ``random``
(its files cannot be regenerated); halviz uses one ``random.Random(seed)`` for the image sample and
then the random, popular and adversarial splits in that order (the released order of calls). The
released code turns the template's every "a" into "an" (``template.replace("a", "an")``, which would
also give "imange"); its released files read "an umbrella in the image", so halviz changes the
article only. Ties in the popular and co-occurrence rankings keep first appearance in the sample
(Python's stable sort, as released). COCO objects are instance category names in the order their
first annotation appears in the file (the released segmentation file's order is not documented).

The toy world's splits (:func:`toy_splits`) know every scene's objects exactly; the vocabulary is the
16 glyph classes, and "adversarial" first asks about the planted partner of the positive object
(``halviz.toy.scenes.PRIOR_PAIRS``, either direction), the co-occurrence the toy model was trained
to expect, then falls back to POPE's co-occurrence ranking and to random.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

TEMPLATE = "Is there a {} in the image?"
SPLITS = ("random", "popular", "adversarial")
PER_IMAGE = 3
VOWELS = ("a", "e", "i", "o", "u")


class PopeError(ValueError):
    """A problem with a POPE input; the message names the file."""


@dataclass(frozen=True)
class Question:
    question_id: int
    image: str
    text: str
    label: str  # "yes" | "no"
    object: str | None = None  # the object asked about (known when halviz built the split)

    def json(self) -> dict[str, Any]:
        return {"question_id": self.question_id, "image": self.image, "text": self.text, "label": self.label}


def question_text(name: str, template: str = TEMPLATE) -> str:
    """The template with the object; its article "a" becomes "an" before a vowel."""
    if name[:1].lower() in VOWELS:
        template = template.replace(" a {}", " an {}")
    return template.format(name)


def _ranked(counts: Counter) -> list[str]:
    return [name for name, _ in sorted(counts.items(), key=lambda item: item[1], reverse=True)]


def build_splits(images: Sequence[tuple[str, Sequence[str]]], n: int = 500, seed: int = 0,
                 splits: Sequence[str] = SPLITS, template: str = TEMPLATE, per_image: int = PER_IMAGE,
                 vocabulary: Sequence[str] | None = None, partners: dict[str, list[str]] | None = None,
                 rng: random.Random | None = None) -> dict[str, list[Question]]:
    """POPE's splits from (image, distinct objects in order) pairs. ``vocabulary`` (default: the names of
    the sampled set, as released) is what random negatives draw from; ``partners`` puts names first in
    an object's adversarial list (the toy world's planted pairs)."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown POPE split {unknown}; known: {', '.join(SPLITS)}")
    eligible = [(image, list(dict.fromkeys(objects))) for image, objects in images]
    eligible = [(image, objects) for image, objects in eligible if len(objects) >= per_image]
    if len(eligible) < n:
        raise ValueError(f"only {len(eligible)} images hold at least {per_image} objects; {n} were asked for")
    rng = rng or random.Random(seed)
    chosen = rng.sample(eligible, n)
    counts = Counter(name for _, objects in chosen for name in objects)
    names = list(vocabulary) if vocabulary is not None else list(counts)
    popular = _ranked(counts)
    co_occur: dict[str, Counter] = {}
    for _, objects in chosen:
        for name in objects:
            co_occur.setdefault(name, Counter()).update(o for o in objects if o != name)
    adversarial = {name: _ranked(c) for name, c in co_occur.items()}
    out: dict[str, list[Question]] = {}
    for split in SPLITS:  # always in the released order, so a split's questions do not depend on the others asked
        questions: list[Question] = []
        for image, objects in chosen:
            asked: list[str] = []
            for positive in objects[:per_image]:
                asked.append(positive)
                questions.append(Question(len(questions) + 1, image, question_text(positive, template), "yes", positive))
                if split == "popular":
                    ranked = popular
                elif split == "adversarial":
                    ranked = list((partners or {}).get(positive, [])) + adversarial.get(positive, [])
                else:
                    ranked = []
                negative = next((c for c in ranked if c not in asked and c not in objects), None)
                if negative is None:
                    free = [c for c in names if c not in asked and c not in objects]
                    if not free:
                        raise ValueError(f"{image}: no object name is left for a negative question")
                    while negative is None:  # the released rejection loop, from the seeded generator
                        pick = rng.choice(names)
                        negative = pick if pick not in asked and pick not in objects else None
                asked.append(negative)
                questions.append(Question(len(questions) + 1, image, question_text(negative, template), "no", negative))
        if split in splits:
            out[split] = questions
    return out


# ---- COCO-format instances ------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise PopeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PopeError(f"{path}: not readable JSON ({exc})") from None


def coco_image_objects(path: Path) -> list[tuple[str, list[str]]]:
    """(file name, distinct category names in first-annotation order) per image of a COCO instances file."""
    data = _load_json(Path(path))
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise PopeError(f"{path}: expected COCO instances with 'images', 'annotations' and 'categories' lists")
    try:
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        objects: dict[Any, list[str]] = {i: [] for i in files}
        for ann in data["annotations"]:
            name = names[ann["category_id"]]
            listed = objects[ann["image_id"]]
            if name not in listed:
                listed.append(name)
    except (KeyError, TypeError) as exc:
        raise PopeError(f"{path}: malformed COCO entry (missing or unknown {exc})") from None
    return [(files[i], objs) for i, objs in objects.items()]


def coco_splits(annotations: Path, n: int = 500, seed: int = 0, splits: Sequence[str] = SPLITS,
                template: str = TEMPLATE, images: Path | None = None) -> dict[str, list[Question]]:
    """POPE's splits from a COCO instances file (optionally only the images present in ``images``)."""
    pairs = coco_image_objects(annotations)
    if images is not None:
        present = {p.name for p in Path(images).iterdir()} if Path(images).is_dir() else set()
        pairs = [(f, o) for f, o in pairs if f in present]
    try:
        return build_splits(pairs, n, seed, splits, template)
    except ValueError as exc:
        raise PopeError(f"{annotations}: {exc}") from None


# ---- the toy world --------------------------------------------------------------------------------

TOY_PREFIX = "toy-pope-"


def toy_scenes(n: int, seed: int = 0):
    """The first ``n`` held-out-stream scenes with at least three objects: ids ``toy-pope-{i}``."""
    import numpy as np

    from halviz.toy import scenes

    rng = np.random.default_rng([scenes.HELDOUT_SEED + seed, 7])
    found = []
    while len(found) < n:
        scene = scenes.generate_scene(rng)
        if len(scene.names) >= PER_IMAGE:
            found.append(scene)
    return {f"{TOY_PREFIX}{i}": s for i, s in enumerate(found)}


def toy_splits(n: int, seed: int = 0, splits: Sequence[str] = SPLITS, template: str = TEMPLATE):
    """(scenes by id, POPE splits) on ``n`` toy scenes: exact labels; adversarial = the planted partner first."""
    from halviz.toy.scenes import CLASS_NAMES, PRIOR_PAIRS

    found = toy_scenes(n, seed)
    partners: dict[str, list[str]] = {}
    for a, b in PRIOR_PAIRS:
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    pairs = [(image, [o.name for o in scene.objects]) for image, scene in found.items()]
    return found, build_splits(pairs, n, seed, splits, template, vocabulary=CLASS_NAMES, partners=partners)


# ---- JSONL ----------------------------------------------------------------------------------------

def _jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise PopeError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    except FileNotFoundError:
        raise PopeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PopeError(f"{path}: not readable ({exc})") from None


def read_questions(path: Path) -> list[Question]:
    """POPE's own JSONL (released files, RePOPE's corrected labels): question_id, image, text, label."""
    questions, seen = [], set()
    for number, record in _jsonl(Path(path)):
        if not isinstance(record, dict) or any(k not in record for k in ("question_id", "image", "text", "label")):
            raise PopeError(f"{path}: line {number} needs question_id, image, text and label")
        label = str(record["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise PopeError(f"{path}: line {number} label must be yes or no, not {record['label']!r}")
        if record["question_id"] in seen:
            raise PopeError(f"{path}: line {number} repeats question_id {record['question_id']!r}")
        seen.add(record["question_id"])
        questions.append(Question(record["question_id"], str(record["image"]), str(record["text"]), label))
    if not questions:
        raise PopeError(f"{path}: no questions")
    return questions


def read_answers(path: Path) -> dict[Any, str]:
    """question_id -> answer text (key ``text``, or ``answer`` as POPE's own evaluate.py reads)."""
    answers: dict[Any, str] = {}
    for number, record in _jsonl(Path(path)):
        text = record.get("text", record.get("answer")) if isinstance(record, dict) else None
        if not isinstance(record, dict) or "question_id" not in record or not isinstance(text, str):
            raise PopeError(f"{path}: line {number} needs question_id and a text (or answer) string")
        answers[record["question_id"]] = text
    return answers


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object a line, written beside ``path`` and renamed into place."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_questions(path: Path, questions: Sequence[Question]) -> None:
    write_jsonl(path, (q.json() for q in questions))
