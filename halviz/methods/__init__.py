"""Decoding methods and interventions: one module each, discovered through ``REGISTRY``.

``METHODS`` are greedy decoding and the papers' mitigation methods (what the benchmarks, CHAIR and
the toy probe evaluate); ``INTERVENTIONS`` are the debugger's "what if" edits (remove the sink,
mask patches, scale heads). ``REGISTRY`` = both, and its order is the stacking order: in a stack
each method acts at a hook point after the ones before it (PruneHal's masks, VASparse's logit
edits, VHR's heads, KVSmooth's K/V, VCD's contrast, VAR's redistribution, CAI's gated tilt and
contrast, then the interventions).
It is written here once; :func:`build_stack` applies it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from halviz.methods.base import HOOK_POINTS, Knob, Method, Stream
from halviz.methods.cai import CAI
from halviz.methods.kvsmooth import KVSmooth
from halviz.methods.mask_patches import MaskPatches
from halviz.methods.prunehal import PruneHal
from halviz.methods.remove_sink import RemoveSink
from halviz.methods.scale_heads import ScaleHeads
from halviz.methods.vanilla import Vanilla
from halviz.methods.var import VAR
from halviz.methods.vasparse import VASparse
from halviz.methods.vcd import VCD
from halviz.methods.vhr import VHR

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Vanilla, PruneHal, VASparse, VHR, KVSmooth, VCD, VAR, CAI)}
INTERVENTIONS: dict[str, type[Method]] = {cls.name: cls for cls in (RemoveSink, MaskPatches, ScaleHeads)}
REGISTRY: dict[str, type[Method]] = {**METHODS, **INTERVENTIONS}


def method_class(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}") from None


def build_stack(names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Method]:
    """Instantiate the methods of one decode (``vanilla`` contributes nothing) and check they can stack."""
    params = params or {}
    rank = {name: i for i, name in enumerate(REGISTRY)}
    ordered = sorted((n for n in names if n != "vanilla"), key=lambda n: rank.get(n, len(rank)))
    stack = [method_class(n)(**dict(params.get(n, {}))) for n in ordered]
    check_compatible(stack)
    return stack


def check_compatible(stack: Sequence[Method]) -> None:
    """Refuse combinations that cannot work together, with a reason."""
    names = [m.name for m in stack]
    if len(set(names)) != len(names):
        raise ValueError("a method can appear only once in a stack")
    for method in stack:
        for other in stack:
            if other is not method and other.name in getattr(method, "incompatible_with", ()):
                raise ValueError(f"{method.title} cannot be combined with {other.title}: "
                                 f"{method.incompatible_with[other.name]}")


__all__ = ["HOOK_POINTS", "INTERVENTIONS", "Knob", "METHODS", "Method", "REGISTRY", "Stream", "build_stack", "check_compatible", "method_class"]
