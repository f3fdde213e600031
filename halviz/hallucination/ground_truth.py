"""Where the objects really in an image come from, and how far to trust them.

Trust levels: "exact" (the toy world drew them), "annotation" (COCO files), "user" (typed by the
user), "estimated" (an object detector). Object names are always canonical COCO names.

How many of each object there are is known only where a source says so (``GroundTruth.counts``):
the toy world draws each object class at most once, so its scenes know every count; COCO lists,
typed lists and detectors give none here, and none is invented for them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from halviz.hallucination.extract import extract_mentions
from halviz.hallucination.vocabulary import SYNONYM_TO_CANONICAL

Trust = Literal["exact", "annotation", "user", "estimated"]
TRUST_LEVELS: tuple[str, ...] = get_args(Trust)

# Items of a typed object list are separated by commas, semicolons, newlines or " and ".
_ITEM_SEPARATOR = re.compile(r"[,;\n]+|\band\b", re.IGNORECASE)


class GroundTruthError(ValueError):
    """A ground-truth file is missing, unreadable or malformed; the message names the file."""


class GroundTruthUnavailable(RuntimeError):
    """No ground truth can be produced here (e.g. no local detector weights); says why."""


@dataclass(frozen=True)
class GroundTruth:
    """The objects present in one image, where they came from, and how far to trust them.

    Names are canonical COCO names for COCO sources; the toy world may use its own names.
    """

    objects: frozenset[str]
    source: str
    trust: Trust
    # How many of each object the image holds, where the source knows (None: unknown, the default,
    # so ground truths made or saved before counts existed mean what they meant). Not hashed: a dict.
    counts: Mapping[str, int] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.trust not in TRUST_LEVELS:
            raise ValueError(f"trust must be one of {TRUST_LEVELS}, got {self.trust!r}")
        if isinstance(self.objects, str) or not all(isinstance(o, str) for o in self.objects):
            raise TypeError("objects must be a collection of canonical object names (str)")
        # Accept any collection of names but store the immutable set the field promises.
        object.__setattr__(self, "objects", frozenset(self.objects))
        if self.counts is not None:
            object.__setattr__(self, "counts", checked_counts(self.counts, self.objects))

    def count(self, name: str) -> int | None:
        """How many ``name`` objects the image holds; None where the source does not say."""
        return None if self.counts is None else self.counts.get(name, 0)


def checked_counts(counts: Mapping[str, int], objects: frozenset[str]) -> dict[str, int]:
    """``counts`` as a new dict, after checking it gives a count >= 1 to every object and nothing else."""
    if not isinstance(counts, Mapping):
        raise TypeError("counts must map object names to how many there are")
    if set(counts) != objects:
        raise ValueError(f"counts must name exactly the objects {sorted(objects)}, got {sorted(counts)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts.values()):
        raise ValueError("every count must be an integer >= 1")
    return dict(counts)


def one_of_each(objects: Iterable[str]) -> dict[str, int]:
    """Counts for a toy scene's object list: the toy world draws each object class at most once."""
    return dict.fromkeys(objects, 1)


def canonicalise_objects(names: Iterable[str]) -> tuple[frozenset[str], list[str]]:
    """Map object names ("men", "Frisbee", "tv") to canonical COCO names.

    Each name is read like a caption fragment, so "two men" and "a toilet seat" work. Returns the
    objects found and, in input order, the stripped names in which no COCO object was found.
    """
    objects: set[str] = set()
    unknown: list[str] = []
    for name in names:
        item = name.strip()
        if not item:
            continue
        exact = SYNONYM_TO_CANONICAL.get(item.lower())
        found = {exact} if exact else {m.canonical for m in extract_mentions(item)}
        if found:
            objects |= found
        else:
            unknown.append(item)
    return frozenset(objects), unknown


def parse_object_list(text: str) -> tuple[frozenset[str], list[str]]:
    """Parse free text such as "two men, a dog; Frisbee" into ({"person", "dog", "frisbee"}, []).

    Items are split at commas, semicolons, newlines and the word "and"; items with no COCO
    object in them come back as the second value (e.g. ["unicorn"]) so the user can fix them.
    """
    return canonicalise_objects(_ITEM_SEPARATOR.split(text))


def ground_truth_from_text(text: str) -> tuple[GroundTruth, list[str]]:
    """A "user" GroundTruth from typed text, plus the items that were not understood."""
    objects, unknown = parse_object_list(text)
    return GroundTruth(objects, source="typed by the user", trust="user"), unknown


# --- COCO annotation files -------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Parse a JSON file; any problem raises GroundTruthError naming the file."""
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise GroundTruthError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GroundTruthError(f"{path}: cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise GroundTruthError(f"{path}: invalid JSON: {error}") from None


def _records(data: Any, key: str, path: Path, required: Mapping[str, type | tuple[type, ...]]
             ) -> list[dict[str, Any]]:
    """`data[key]` as a list of dicts, each with the `required` fields of the given types."""
    if not isinstance(data, dict):
        raise GroundTruthError(f"{path}: expected a JSON object at top level, got "
                               f"{type(data).__name__}")
    if key not in data:
        raise GroundTruthError(f"{path}: missing key {key!r}")
    records = data[key]
    if not isinstance(records, list):
        raise GroundTruthError(f"{path}: {key!r} must be a list, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise GroundTruthError(f"{path}: {key}[{index}] must be an object")
        for field, expected in required.items():
            if field not in record:
                raise GroundTruthError(f"{path}: {key}[{index}] is missing key {field!r}")
            value = record[field]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise GroundTruthError(
                    f"{path}: {key}[{index}].{field} has wrong type {type(value).__name__}")
    return records


_ID = (int, str)


def _file_names(data: Any, path: Path) -> dict[int | str, str]:
    """image id -> file_name from the optional "images" list."""
    if isinstance(data, dict) and "images" in data:
        images = _records(data, "images", path, {"id": _ID, "file_name": str})
        return {image["id"]: image["file_name"] for image in images}
    return {}


def load_coco_annotations(
    instances_path: str | Path, captions_path: str | Path | None = None
) -> dict[int | str, GroundTruth]:
    """Per-image ground truth from COCO-format JSON, keyed by image id and by file_name.

    Objects are the instance labels (category id -> name -> canonical name) plus, when a
    captions file is given, the objects mentioned in the reference captions (as CHAIR does).
    Every image listed under "images" gets an entry, even with no objects.
    """
    instances_path = Path(instances_path)
    instances = read_json(instances_path)
    categories = _records(instances, "categories", instances_path, {"id": _ID, "name": str})
    annotations = _records(instances, "annotations", instances_path,
                           {"image_id": _ID, "category_id": _ID})

    category_names: dict[int | str, str] = {}
    for category in categories:
        canonical = SYNONYM_TO_CANONICAL.get(category["name"].strip().lower())
        if canonical is None:
            raise GroundTruthError(f"{instances_path}: category {category['name']!r} "
                                   f"(id {category['id']}) is not a COCO object name")
        category_names[category["id"]] = canonical

    file_names = _file_names(instances, instances_path)
    objects: dict[int | str, set[str]] = {image_id: set() for image_id in file_names}
    for index, annotation in enumerate(annotations):
        if annotation["category_id"] not in category_names:
            raise GroundTruthError(f"{instances_path}: annotations[{index}] has unknown "
                                   f"category_id {annotation['category_id']!r}")
        objects.setdefault(annotation["image_id"], set()).add(
            category_names[annotation["category_id"]])

    sources = [instances_path.name]
    if captions_path is not None:
        captions_path = Path(captions_path)
        captions = read_json(captions_path)
        caption_records = _records(captions, "annotations", captions_path,
                                   {"image_id": _ID, "caption": str})
        for image_id, file_name in _file_names(captions, captions_path).items():
            file_names.setdefault(image_id, file_name)
            objects.setdefault(image_id, set())
        for record in caption_records:
            objects.setdefault(record["image_id"], set()).update(
                mention.canonical for mention in extract_mentions(record["caption"]))
        sources.append(captions_path.name)

    source = "COCO annotations: " + " + ".join(sources)
    truths: dict[int | str, GroundTruth] = {}
    for image_id, names in objects.items():
        truth = GroundTruth(frozenset(names), source=source, trust="annotation")
        truths[image_id] = truth
        if image_id in file_names:
            truths[file_names[image_id]] = truth
    return truths


# --- Object detector -------------------------------------------------------------------------


def detector_ground_truth(
    image: Any, model_path: str | Path | None = None, threshold: float = 0.7
) -> GroundTruth:
    """Objects an object-detection model (e.g. DETR with COCO labels) finds in `image`.

    `image` is a PIL image, a numpy HxWxC array or an image file path. The model loads only
    from the local folder `model_path` (there is no Hugging Face Hub access); without one this
    raises GroundTruthUnavailable saying why. Detected labels outside COCO are ignored.
    """
    if model_path is None:
        raise GroundTruthUnavailable(
            "no object detector available: give the path of a local folder holding a "
            "transformers object-detection model (e.g. DETR with COCO labels); weights are "
            "never downloaded because there is no Hugging Face Hub access here")
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise GroundTruthUnavailable(
            f"no object detector at {folder}: expected a local model folder with config.json "
            "(weights are never downloaded from the Hugging Face Hub)")

    from transformers import pipeline  # heavy import, only when a detector is really used

    try:
        detector = pipeline("object-detection", model=str(folder), local_files_only=True)
    except Exception as error:  # transformers raises many types; all mean "cannot load it"
        raise GroundTruthUnavailable(
            f"cannot load the object detector at {folder}: {error}") from error

    if not isinstance(image, (str, Path)) and not hasattr(image, "convert"):
        from PIL import Image

        image = Image.fromarray(image)
    detections = detector(str(image) if isinstance(image, Path) else image, threshold=threshold)
    objects = {
        canonical
        for detection in detections
        if (canonical := SYNONYM_TO_CANONICAL.get(str(detection["label"]).strip().lower()))
    }
    return GroundTruth(frozenset(objects), source=f"detector {folder.name} (score >= "
                       f"{threshold})", trust="estimated")
