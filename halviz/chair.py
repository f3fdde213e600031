"""CHAIR from the command line.

    python -m halviz.chair --captions CAPS.json --ground-truth GT.json [--json PATH]

CAPS.json: [{"image_id": ..., "caption": "..."}, ...]
GT.json:   {"IMAGE_ID": ["object", ...], ...}  (names go through the COCO synonyms; "men" works)

Prints the metrics x100 (Len in words) and, with --json, writes them as fractions plus the
per-caption mentions. Beside CHAIR (which counts a loop's every repeat as new mentions) it reports
Looping, the share of captions that end in a loop, and Rep-4, their mean seq-rep-4 (see
halviz.hallucination.repetition); per caption, the loop (where it starts, its block, how many copies)
and the repetition rate. Object lists carry no counts, so over-counted mentions are not checked here.
Any input problem prints one line naming the file to stderr, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from halviz.hallucination import ChairResult, Loop, canonicalise_objects, chair_metrics
from halviz.hallucination.ground_truth import GroundTruthError, read_json

USAGE_ERROR = 2


class InputError(Exception):
    """A problem with an input or output file; the message names the file."""


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except GroundTruthError as error:
        raise InputError(str(error)) from None


def _is_image_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_captions(path: Path) -> list[tuple[int | str, str]]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {{\"image_id\", \"caption\"}} objects")
    captions = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"{path}: item {index} is not an object")
        for key in ("image_id", "caption"):
            if key not in record:
                raise InputError(f"{path}: item {index} is missing key {key!r}")
        if not _is_image_id(record["image_id"]):
            raise InputError(f"{path}: item {index} image_id must be a string or an integer")
        if not isinstance(record["caption"], str):
            raise InputError(f"{path}: item {index} caption must be a string")
        captions.append((record["image_id"], record["caption"]))
    return captions


def read_ground_truth(path: Path) -> tuple[dict[str, frozenset[str]], list[str]]:
    """image id (as a string, as JSON keys are) -> canonical objects, and unknown names."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object mapping image_id to a list of objects")
    truths: dict[str, frozenset[str]] = {}
    unknown: list[str] = []
    for image_id, names in data.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise InputError(f"{path}: objects of image {image_id!r} must be a list of strings")
        truths[image_id], missed = canonicalise_objects(names)
        unknown.extend(missed)
    return truths, unknown


def loop_json(loop: Loop | None) -> dict[str, Any] | None:
    """Where a caption's loop starts (a character offset), its block and how many copies it holds."""
    if loop is None:
        return None
    return {"start_char": loop.start_char, "block": loop.block, "copies": loop.copies}


def result_json(result: ChairResult, image_ids: list[int | str]) -> dict[str, Any]:
    return {
        "chair_s": result.chair_s,
        "chair_i": result.chair_i,
        "recall": result.recall,
        "precision": result.precision,
        "f1": result.f1,
        "len": result.len,
        "looping": result.looping,
        "repetition": result.repetition,
        "per_caption": [
            {"image_id": image_id, "mentions": list(item.mentions),
             "hallucinated": list(item.hallucinated), "loop": loop_json(item.loop),
             "repetition": item.repetition}
            for image_id, item in zip(image_ids, result.per_caption)
        ],
    }


def format_table(result: ChairResult, captions: int) -> str:
    rows = [("CHAIR_S", result.chair_s), ("CHAIR_I", result.chair_i), ("Recall", result.recall),
            ("Precision", result.precision), ("F1", result.f1)]
    lines = [f"{'metric':<10} {'value':>6}"]
    lines += [f"{name:<10} {100 * value:>6.1f}" for name, value in rows]
    lines.append(f"{'Len':<10} {result.len:>6.1f}")
    lines.append(f"{'Looping':<10} {100 * result.looping:>6.1f}")
    lines.append(f"{'Rep-4':<10} {100 * result.repetition:>6.1f}")
    lines.append(f"({captions} captions; CHAIR/Recall/Precision/F1/Looping/Rep-4 x100, Len in words; "
                 "CHAIR counts a loop's repeats as new mentions, Looping says how many captions loop)")
    return "\n".join(lines)


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside `path`, then rename: no half-written file on failure."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise InputError(f"{path}: cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write: {error.strerror or error}") from None


def run(captions_path: Path, ground_truth_path: Path, json_path: Path | None) -> None:
    captions = read_captions(captions_path)
    truths, unknown = read_ground_truth(ground_truth_path)
    missing = [image_id for image_id, _ in captions if str(image_id) not in truths]
    if missing:
        shown = ", ".join(repr(image_id) for image_id in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"{ground_truth_path}: no ground truth for image_id {shown}{more} "
                         f"(used in {captions_path})")
    if unknown:
        print(f"warning: {ground_truth_path}: ignored names with no COCO object: "
              f"{sorted(set(unknown))}", file=sys.stderr)

    result = chair_metrics([caption for _, caption in captions],
                           [truths[str(image_id)] for image_id, _ in captions])
    if json_path is not None:
        write_json_atomically(json_path, result_json(result, [i for i, _ in captions]))
    print(format_table(result, len(captions)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halviz.chair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=Path, required=True, metavar="CAPS.json")
    parser.add_argument("--ground-truth", type=Path, required=True, metavar="GT.json")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the metrics here")
    args = parser.parse_args(argv)
    try:
        run(args.captions, args.ground_truth, args.json)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
