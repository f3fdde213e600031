"""Compatibility names: the bound family of a loaded model used to be called its adapter.

Families live in :mod:`halviz.models.families` (one file each); ``LoadedModel.adapter`` is an
instance of one of them.
"""

from __future__ import annotations

from halviz.models.families import DEFAULT_PROMPT, Family, ImageLayout, family_for_config
from halviz.models.families.llava import Llava as LlavaAdapter

__all__ = ["DEFAULT_PROMPT", "Family", "ImageLayout", "LlavaAdapter", "adapter_for"]


def adapter_for(model, processor) -> Family:
    """The family accepting ``model``'s config, bound to ``model`` and ``processor``."""
    family = family_for_config(model.config.to_dict())
    if family is None:
        raise ValueError(f"no halviz model family for model_type={model.config.model_type!r}")
    return family(model, processor)
