"""The model families halviz supports, one file each, found through ``REGISTRY``.

Adding a family = its file, one line below, its fixture folder in ``halviz/models/configs/<hub-id>/``
and one case in ``tests/test_families.py``. The first family whose ``accepts`` says yes is used.
"""

from __future__ import annotations

from importlib import import_module

from halviz.models.families.base import (DEFAULT_PROMPT, Family, Fixture, Grid, ImageLayout, raw_text_config,
                                         text_config)

# "module:Class", imported on first use (a family's transformers classes load only when asked for).
REGISTRY = (
    "halviz.models.families.llava:Llava15",
    "halviz.models.families.llava:LlavaInterleave",
    "halviz.models.families.smolvlm:SmolVLM",
    "halviz.models.families.qwen2_5_vl:Qwen2_5_VL",
    "halviz.models.families.llava_onevision:LlavaOnevision",
)

__all__ = ["DEFAULT_PROMPT", "Family", "Fixture", "Grid", "ImageLayout", "REGISTRY", "families", "family_for_config",
           "family_named", "family_for_hub_id", "raw_text_config", "text_config"]


def families() -> list[type[Family]]:
    out = []
    for entry in REGISTRY:
        module, name = entry.split(":")
        out.append(getattr(import_module(module), name))
    return out


def family_for_config(config: dict) -> type[Family] | None:
    """The family that accepts a ``config.json`` dict, or None."""
    return next((f for f in families() if f.accepts(config)), None)


def family_named(name: str) -> type[Family]:
    for family in families():
        if family.family == name:
            return family
    raise KeyError(f"no model family {name!r}")


def family_for_hub_id(hub_id: str) -> type[Family]:
    """The family that offers ``hub_id`` (its stored fixture), else the one accepting its stored config."""
    for family in families():
        if hub_id in family.hub_ids:
            return family
    found = family_for_config(Fixture.load(hub_id).config)
    if found is None:
        raise KeyError(f"no model family accepts {hub_id!r}")
    return found


def supported() -> str:
    """A sentence naming every family, for error messages."""
    return ", ".join(f.title for f in families())
