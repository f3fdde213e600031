"""Example images with their object lists, and where a ground truth comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from halviz.hallucination import TRUST_LEVELS, GroundTruth, ground_truth_from_text, parse_object_list
from halviz.hallucination.ground_truth import one_of_each
from halviz.toy.recognise import recognise_scene
from halviz.toy.scenes import IMAGE_SIZE
from halviz.session.escaping import markdown_text
from halviz.session.checks import file_digest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"


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


@dataclass(frozen=True)
class ImageTruth:
    """The ground truth that belongs to one picture: what the box is set to when that picture is put in."""

    objects: str  # the text for the ground-truth box ("" for a picture nobody knows)
    source: str
    trust: str
    one_of_each: bool = False  # a toy scene: the world draws every class at most once, so counts are known


RECOGNISED_SOURCE = "recognised from the pixels: a toy scene (every glyph class has its own flat colour)"
MAX_RECOGNISED_BYTES = 256 * 2**10  # a generator PNG is ~20 KB; larger files are not read at all


def image_truth(path: str | Path | None, examples: list[Example], digest: str | None = None,
                picture: Image.Image | None = None) -> ImageTruth | None:
    """The picture's own ground truth: an example's list (by the file's digest), else a toy scene's
    exact objects read from its pixels, else None (an upload nobody knows: the box is emptied).
    ``digest`` and ``picture`` skip reading the file again when the caller has them."""
    if digest is None and path:
        try:
            digest = file_digest(path)
        except OSError:
            return None
    for example in examples:
        if digest and example.digest == digest:  # the toy world's examples are its exact ones
            return ImageTruth(example.objects, example.source, example.trust, example.trust == "exact")
    names = _recognised(path, picture)
    if names is None:
        return None
    return ImageTruth(", ".join(names), RECOGNISED_SOURCE, "exact", one_of_each=True)


def _recognised(path: str | Path | None, picture: Image.Image | None) -> list[str] | None:
    """``recognise_scene`` on a small PNG only: reading the header alone decides (a few hundred bytes)."""
    try:
        if picture is None:
            if not path or Path(path).stat().st_size > MAX_RECOGNISED_BYTES:
                return None
            with Image.open(path, formats=("PNG",)) as opened:
                if opened.size != (IMAGE_SIZE, IMAGE_SIZE) or getattr(opened, "is_animated", False):
                    return None
                picture = opened.convert("RGB")
        return recognise_scene(picture)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def resolve_truth(text: str | None, own: ImageTruth | None) -> TruthInfo:
    """The picture's own list (with its source and trust) when the box holds it untouched;
    otherwise what the user typed, trusted as "user". The box is set to the picture's own list
    whenever the picture changes, so text that differs from it was typed."""
    text = (text or "").strip()
    if not text:
        return TruthInfo(None, [])
    objects, unknown = parse_object_list(text)
    if own is not None and text == own.objects.strip():
        counts = one_of_each(objects) if own.one_of_each else None
        return TruthInfo(GroundTruth(objects, own.source, own.trust, counts), unknown)
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
