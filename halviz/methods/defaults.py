"""Per-model method defaults: knob values chosen for one checkpoint, stored beside its weights.

The papers' defaults were set for LLaVA-1.5 (32 layers, 576 image tokens on 24×24); on a small
model some leave nothing to act on (PruneHal r = 0.4, t = 3 keeps 9 of the toy's 144 image
tokens). A model folder may therefore carry ``method_defaults.json``, written by
``python -m halviz.toy.recipe.tune`` for the toy model::

    {"methods": {"prunehal": {"r": 0.8, "t": 2}, ...},   # only the knobs that differ
     "model_sha256": "...",                               # the weights they were chosen on
     "chosen_by": {...}, "grid": {...}}                   # how, with which command

:func:`defaults_for` gives the ``methods`` part, checked against the registry's knobs;
:func:`defaults_problems` says what it had to leave out and whether the weights changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from halviz.methods import METHODS

DEFAULTS_FILE = "method_defaults.json"
WEIGHTS_FILE = "model.safetensors"


def weights_sha256(model_dir: str | Path) -> str | None:
    """Fingerprint of a folder's weights (None when it has no ``model.safetensors``)."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_defaults_record(model_dir: str | Path) -> dict | None:
    """The whole stored record, or None when the folder has none (a hub id has none)."""
    path = Path(model_dir) / DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("methods"), dict):
        raise ValueError(f"{path} has no 'methods' object")
    return record


def _checked(record: dict) -> tuple[dict[str, dict[str, Any]], list[str]]:
    defaults: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for method, knobs in record["methods"].items():
        cls = METHODS.get(method)
        if cls is None:
            problems.append(f"unknown method {method!r} left out")
            continue
        declared = {k.name: k for k in cls.knobs}
        for name, value in (knobs or {}).items():
            knob = declared.get(name)
            if knob is None:
                problems.append(f"{method} has no knob {name!r}; left out")
                continue
            try:
                defaults.setdefault(method, {})[name] = knob.coerce(value)
            except ValueError as exc:
                problems.append(f"{method}.{name}: {exc}; left out")
    return defaults, problems


def defaults_for(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{method: {knob: value}}`` stored for this model folder; empty when it stores none.

    Entries that no longer match a method's knobs are left out (see :func:`defaults_problems`).
    """
    record = read_defaults_record(model_dir)
    return {} if record is None else _checked(record)[0]


def defaults_problems(model_dir: str | Path) -> list[str]:
    """What :func:`defaults_for` left out, and whether the weights differ from the tuned ones."""
    record = read_defaults_record(model_dir)
    if record is None:
        return []
    problems = _checked(record)[1]
    tuned_on = record.get("model_sha256")
    if tuned_on is not None and tuned_on != weights_sha256(model_dir):
        problems.append("the defaults were chosen on other weights than this folder holds; rerun the tuning")
    return problems
