"""The models the app offers, which names it accepts, and a small cache of loaded ones."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from halviz.models import LoadedModel, load_model
from halviz.models.families import families
from halviz.models.loading import canonical_model_key, looks_like_path
from halviz.session.checks import MAX_MODEL_NAME_CHARS, InputError

TOY_CHOICE = ("toy", "toy: the bundled 3 M-parameter LLaVA of the toy world, designed BOS sink (offline)")
# The toy, then every hub checkpoint a model family offers (halviz/models/families), with its note.
DEFAULT_MODELS: tuple[tuple[str, str], ...] = (TOY_CHOICE,) + tuple(
    (hub, f"{hub} ({family.hub_notes.get(hub, 'hub')})") for family in families() for hub in family.hub_ids)
MODELS_ENV = "HALVIZ_MODELS"  # comma-separated ids (or folders) the picker offers; the only ones accepted
ALLOW_LOCAL_ENV = "HALVIZ_ALLOW_LOCAL_MODELS"  # "1": any local model folder typed into the box loads


def configured_models(environ: Mapping[str, str] = os.environ) -> list[str | tuple[str, str]]:
    """``$HALVIZ_MODELS`` if set, else the toy and the known hub ids."""
    listed = [m.strip() for m in environ.get(MODELS_ENV, "").split(",") if m.strip()]
    return list(listed) if listed else list(DEFAULT_MODELS)


def local_models_allowed(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ALLOW_LOCAL_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ModelPolicy:
    """Which model names a request may use: the configured ones, and local folders only when the
    operator allows them. A refused name gets the same sentence whether or not such a path exists."""

    allowed: tuple[str, ...]  # canonical keys
    allow_local: bool = False

    @classmethod
    def build(cls, models: Sequence[str | tuple[str, str]], default: str, allow_local: bool) -> "ModelPolicy":
        ids = [m[0] if isinstance(m, tuple) else m for m in models] + [default]
        keys = tuple(dict.fromkeys(canonical_model_key(i, resolve_folders=True) for i in ids))
        return cls(keys, allow_local)

    def check(self, name: object, default: str) -> str:
        """The canonical key of ``name`` (empty: the default), or an ``InputError``."""
        text = str(name if name is not None else "").strip() or default
        if len(text) > MAX_MODEL_NAME_CHARS or any(ord(c) < 32 or "\ud800" <= c <= "\udfff" for c in text):
            raise InputError("That model name is not a hub id or a folder path.")
        key = canonical_model_key(text, resolve_folders=self.allow_local)
        by_lower = {k.lower(): k for k in self.allowed}
        if key.lower() in by_lower:  # hub ids are case-insensitive
            return by_lower[key.lower()]
        if self.allow_local and (looks_like_path(key) or os.path.isdir(key)):
            return key
        offered = ", ".join(self.allowed)
        raise InputError(f"This app does not offer that model; choose one of: {offered}.")


class ModelCache:
    """Loads models on demand and keeps the most recent ``capacity`` of them.

    The lock only guards the bookkeeping, never a load: a request for a loaded model returns at once
    while another model loads. Requests for a model that is loading wait for that one load (a
    14 GB model is never loaded twice at the same time). A failed load is not kept, so the next
    request tries again. A decode keeps its own reference, so evicting a model never breaks a run.
    Keys are canonical (see ``canonical_model_key``): the caller normalises names.
    """

    def __init__(self, loader: Callable[[str], LoadedModel] = load_model, capacity: int = 2):
        self._loader = loader
        self._capacity = max(1, capacity)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        """The loaded model; raises what the loader raised (``ModelLoadError`` with a user-facing message)."""
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            pending = self._loading.get(name)
            owner = pending is None
            if owner:
                pending = self._loading[name] = Future()
        if not owner:
            return pending.result()
        try:
            loaded = self._loader(name)
        except BaseException as exc:
            with self._lock:
                del self._loading[name]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[name]
            self._models[name] = loaded
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
        pending.set_result(loaded)
        return loaded

    def peek(self, name: str) -> LoadedModel | None:
        """The model if it is loaded, without taking the lock (for a forked worker, where the lock
        may have been copied while held) and without loading anything."""
        return self._models.get(name)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._models)


def model_choices(models: Sequence[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, value) pairs for the dropdown from ids or (id, label) pairs."""
    return [(m[1], m[0]) if isinstance(m, tuple) else (m, m) for m in models]
