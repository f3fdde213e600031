"""The models the app offers and a small cache of loaded ones, owned by the app object."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from halviz.models import LoadedModel, load_model

DEFAULT_MODELS: tuple[tuple[str, str], ...] = (
    ("toy", "toy: the bundled 1 M-parameter LLaVA of the toy world (offline)"),
    ("llava-hf/llava-interleave-qwen-0.5b-hf", "llava-hf/llava-interleave-qwen-0.5b-hf (hub, ~1 GB)"),
    ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf (hub, ~14 GB, GPU advised)"),
)


class ModelCache:
    """Loads models on demand and keeps the most recent ``capacity`` of them.

    One lock guards loading so two requests never load the same (possibly 14 GB) model twice; a
    decode keeps its own reference, so evicting a model never breaks a run in progress.
    """

    def __init__(self, loader: Callable[[str], LoadedModel] = load_model, capacity: int = 2):
        self._loader = loader
        self._capacity = max(1, capacity)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        """The loaded model; raises ``ModelLoadError`` with a user-facing message."""
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loaded = self._loader(name)
            self._models[name] = loaded
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
            return loaded

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._models)


def model_choices(models: Sequence[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, value) pairs for the dropdown from ids or (id, label) pairs."""
    return [(m[1], m[0]) if isinstance(m, tuple) else (m, m) for m in models]
