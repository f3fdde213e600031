"""The image-token budget of a request: the budgets a model's family offers, the one a request gets,
and what an upload becomes at it (image tokens and grid) before any model runs.

A budget travels in the settings JSON as ``{"image": {"budget": "global"}}`` (so ``/compare`` and the
API take it without a new argument), or as ``halviz.compare(..., image_budget=...)``. No budget means
the device's default (:func:`halviz.session.model_defaults.default_image_budget`). Gradio-free: the
Resolution control (``ui``) and the request checks (``service``) both read it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from halviz.models import LoadedModel
from halviz.models.families import family_for_config, family_for_hub_id
from halviz.models.families.base import DEFAULT_BUDGET, Family, Fixture
from halviz.session.checks import InputError
from halviz.session.model_defaults import default_image_budget, model_folder

SETTINGS_KEY = "image"  # the settings JSON's entry that is not a method's
MAX_BOUND = 8  # families bound without weights kept for previews (one per model the picker offers)


def budget_from_settings(settings: dict[str, dict[str, Any]]) -> str | None:
    """Take the image entry out of parsed settings (in place): its budget, or None when not given."""
    entry = settings.pop(SETTINGS_KEY, None)
    if entry is None:
        return None
    stray = sorted(set(entry) - {"budget"})
    if stray:
        raise InputError(f'The image settings take only "budget" (such as {{"image": {{"budget": "min"}}}}), '
                         f"not {', '.join(repr(str(k)[:40]) for k in stray)}.")
    value = entry.get("budget")
    if value is not None and not isinstance(value, str):
        raise InputError('The image budget must be a name such as "min" or "default".')
    return value


def family_for_key(key: str) -> type[Family] | None:
    """The family of a canonical model key, from its config alone (None: not known before loading)."""
    folder = model_folder(key)
    try:
        if folder is not None:
            return family_for_config(json.loads((folder / "config.json").read_text()))
        return family_for_hub_id(key)
    except (OSError, ValueError, KeyError):
        return None


def check_budget(family: type[Family] | None, value: object) -> str | None:
    """``value`` as one of ``family``'s budget names (None stays None: the device's default); a family
    not known before loading keeps the value as given, checked once the model is loaded."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        raise InputError('The image budget must be a name such as "min" or "default".')
    if family is None:
        return value.strip().lower()
    try:
        return family.budget_name(value)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def resolve_budget(family: type[Family], value: object, device_type: str) -> str:
    """The budget a request decodes at: ``value`` checked, or the device's default when None."""
    return check_budget(family, value) or default_image_budget(family, device_type)


def budgeted(loaded: LoadedModel, budget: str | None) -> LoadedModel:
    """``loaded`` with its family (and processor) at ``budget`` (None: the device's default). The
    cached model is shared and never changes: the budget lives in a copy of the family."""
    family = loaded.adapter.with_budget(resolve_budget(type(loaded.adapter), budget, loaded.device.type))
    return loaded if family is loaded.adapter else replace(loaded, adapter=family, processor=family.processor)


def budget_choices(family: type[Family] | None) -> list[tuple[str, str]]:
    """(label, name) of every budget ``family`` offers, cheapest first."""
    if family is None:
        return [("the checkpoint's own", DEFAULT_BUDGET)]
    return [(f"{name} · {family.budget_label(name)}" if len(family.budgets) > 1 else family.budget_label(name), name)
            for name in family.budgets]


def bind_without_weights(key: str) -> Family | None:
    """``key``'s family bound to its config and real processor, no weights (a preview's image plan
    needs neither the model nor a forward). None when the files to do it are not here."""
    family = family_for_key(key)
    if family is None:
        return None
    from transformers import AutoConfig, GenerationConfig

    folder = model_folder(key)
    try:
        if folder is not None:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            processor = family.load_processor(str(folder), True)
        else:
            fixture = Fixture.load(key)
            config, processor = family.fixture_parts(fixture)
    except Exception:  # noqa: BLE001 - no preview is better than a failing page; decoding reports the cause
        return None
    return family(SimpleNamespace(config=config, generation_config=GenerationConfig()), processor)


class Previews:
    """Families bound without weights, per model key (the few a page offers; the oldest goes first)."""

    def __init__(self, limit: int = MAX_BOUND):
        self.limit = limit
        self._bound: OrderedDict[str, Family | None] = OrderedDict()

    def family(self, key: str, loaded: LoadedModel | None = None) -> Family | None:
        if loaded is not None:
            return loaded.adapter
        if key not in self._bound:
            self._bound[key] = bind_without_weights(key)
            while len(self._bound) > self.limit:
                self._bound.popitem(last=False)
        return self._bound[key]


def preview_text(family: Family | None, size: tuple[int, int] | None, budget: object, device_type: str) -> str:
    """What the Resolution control says: the image tokens and grid ``size`` (width, height) gets at
    ``budget`` (None: the device's default, said so), computed before decoding."""
    if family is None:
        return "The image budget of this model is known once it is loaded."
    try:
        name = resolve_budget(type(family), budget, device_type)
    except InputError as exc:
        return str(exc)
    chosen = "" if budget is not None else f" (the default on this {device_type.upper()})"
    label = type(family).budget_label(name)
    if size is None:
        return f"**{name}**{chosen}: {label}. Add a picture to see its image tokens and grid."
    plan = family.with_budget(name).image_plan(*size)
    return f"**{plan.describe()}** at **{name}**{chosen}: {label}."
