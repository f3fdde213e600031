"""Example images with their object lists, and where a ground truth comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from halviz.hallucination import TRUST_LEVELS, GroundTruth, ground_truth_from_text, parse_object_list
from halviz.ui.escaping import markdown_text
from halviz.ui.inputs import file_digest

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"


@dataclass(frozen=True)
class Example:
    path: Path
    title: str
    objects: str  # the text put in the ground-truth box
    source: str
    trust: str
    digest: str
    opening: bool = False  # shown when the page opens (see ui.app._opening_example)


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The examples listed in ``examples.json`` whose files exist; a broken list gives no examples."""
    try:
        entries = json.loads((folder / "examples.json").read_text(encoding="utf-8"))["examples"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    examples = []
    for entry in entries:
        path = folder / str(entry.get("file", ""))
        if not path.is_file() or entry.get("trust") not in TRUST_LEVELS:
            continue
        examples.append(Example(path, str(entry.get("title", path.stem)), str(entry.get("objects", "")),
                                str(entry.get("source", "")), str(entry["trust"]), file_digest(path),
                                bool(entry.get("opening", False))))
    return examples


@dataclass(frozen=True)
class TruthInfo:
    truth: GroundTruth | None  # None: no objects given, every mention is "unverified"
    unknown: list[str]


def resolve_truth(text: str | None, image_digest: str, examples: list[Example]) -> TruthInfo:
    """The example's own list (with its source and trust) when the image and the text are an
    example's, untouched; otherwise what the user typed, trusted as "user"."""
    text = (text or "").strip()
    if not text:
        return TruthInfo(None, [])
    for example in examples:
        if example.digest == image_digest and text == example.objects.strip():
            objects, unknown = parse_object_list(text)
            return TruthInfo(GroundTruth(objects, example.source, example.trust), unknown)
    truth, unknown = ground_truth_from_text(text)
    return TruthInfo(truth, unknown)


def truth_markdown(info: TruthInfo) -> str:
    """Where the ground truth comes from, in Markdown; the user's words are escaped."""
    if info.truth is None:
        return ("**Ground truth:** none given, so every object mention is marked *unverified*. "
                "List the objects in the picture to mark mentions correct or hallucinated.")
    names = markdown_text(", ".join(sorted(info.truth.objects)) or "no COCO objects")
    text = (f"**Ground truth:** {names}  \n**Source:** {markdown_text(info.truth.source)} · "
            f"**trust:** {markdown_text(info.truth.trust)}")
    if info.unknown:
        text += f"  \n⚠️ Not COCO object names, ignored: {markdown_text(', '.join(info.unknown))}"
    return text
