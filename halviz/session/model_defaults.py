"""Per-model method defaults in the app: the knob values a model folder's ``method_defaults.json``
stores (see :mod:`halviz.methods.defaults`) replace the papers' defaults for that model's runs, and
what a user sets explicitly overrides them knob by knob; and the image-token budget per device. Plain data, no Gradio: the knob controls
(:mod:`halviz.ui.knobs`) and the request checks both read it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halviz.methods.base import Method
from halviz.methods.defaults import WEIGHTS_FILE, defaults_for, read_defaults_record, weights_sha256
from halviz.models.families.base import DEFAULT_BUDGET, Family
from halviz.models.loading import TOY_KEY, TOY_MODEL_DIR

log = logging.getLogger("halviz.session")
MAX_HASHED_BYTES = 256 * 2**20  # weights checked against the file's fingerprint (bigger ones are not read)


@dataclass(frozen=True)
class ModelDefaults:
    """``values[method][knob]``: the model's own defaults (only the knobs it stores)."""

    model: str = ""
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)  # method → how its values were chosen
    command: str = ""  # the command that wrote the file
    stale: bool = False  # the file names other weights than the folder holds (tuned on an older model)

    def shown(self, registry: Mapping[str, type[Method]]) -> dict[str, dict[str, Any]]:
        """Every knob's default for this model: its stored value, else the paper's."""
        return {name: {k.name: self.values.get(name, {}).get(k.name, k.default) for k in cls.knobs}
                for name, cls in registry.items()}

    def merged(self, settings: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``settings`` (what the user set) over this model's defaults, knob by knob, for ``names``."""
        out = {m: dict(v) for m, v in settings.items()}
        for name in {part.strip() for column in names for part in column.split("+")}:  # a stack's methods too
            if name in self.values:
                out[name] = {**self.values[name], **out.get(name, {})}
        return out


def model_folder(key: str) -> Path | None:
    """The folder a canonical model key loads from (None for a hub id: it has no file here)."""
    if key == TOY_KEY:
        return TOY_MODEL_DIR
    path = Path(key)
    return path if path.is_absolute() and path.is_dir() else None


def model_defaults(key: str, registry: Mapping[str, type[Method]]) -> ModelDefaults:
    """The defaults stored with model ``key`` (a canonical key, already allowed by the app's policy),
    restricted to the methods and knobs of ``registry``. An unreadable file is logged and ignored:
    the paper defaults then apply."""
    folder = model_folder(key)
    if folder is None:
        return ModelDefaults(key)
    try:
        stored = defaults_for(folder)
        record = read_defaults_record(folder) or {}
    except ValueError:
        log.exception("ignoring the method defaults of %s", key)
        return ModelDefaults(key)
    values: dict[str, dict[str, Any]] = {}
    for name, knobs in stored.items():
        declared = {k.name for k in getattr(registry.get(name), "knobs", ())}
        kept = {k: v for k, v in knobs.items() if k in declared}
        if kept:
            values[name] = kept
    chosen = record.get("chosen_by") if isinstance(record.get("chosen_by"), dict) else {}
    how = chosen.get("how") if isinstance(chosen.get("how"), dict) else {}
    return ModelDefaults(key, values, {str(k): str(v) for k, v in how.items()}, str(chosen.get("command") or ""),
                         _stale(folder, record.get("model_sha256")))


def _stale(folder: Path, tuned_on: object) -> bool:
    weights = folder / WEIGHTS_FILE
    if not isinstance(tuned_on, str) or not weights.is_file() or weights.stat().st_size > MAX_HASHED_BYTES:
        return False
    return weights_sha256(folder) != tuned_on


def default_image_budget(family: type[Family] | None, device_type: str) -> str:
    """The image-token budget a request gets when it names none: on a CPU the cheapest the model's
    processor offers (a free CPU Space shows the first words in seconds, not minutes); on a GPU the
    checkpoint's own setting (the resolution the model was trained and evaluated at)."""
    if family is None or device_type != "cpu":
        return DEFAULT_BUDGET
    return family.budgets[0]
