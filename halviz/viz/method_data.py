"""Read the methods' own trace arrays defensively: a missing or oddly shaped array means "no panel".

Array names follow the method modules (``method/NAME/KEY`` in the trace); a few alternative
spellings are accepted so a renamed key degrades to a hidden panel rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halviz.trace import Trace
from halviz.viz.common import Choice, escape, index_ranges


def method_array(trace: Trace, method: str, *keys: str, ndim: int | None = None) -> np.ndarray | None:
    """The first of ``keys`` that ``method`` recorded (with ``ndim`` dimensions when given)."""
    for key in keys:
        array = trace.method_array(method, key)
        if array is not None and (ndim is None or array.ndim == ndim) and array.size:
            return array
    return None


def token_string(trace: Trace, token_id: int) -> str:
    """The text of a vocabulary id if the app stored it in the trace, else ``#id``."""
    strings = trace.meta.get("vocab_strings") or {}
    text = strings.get(str(int(token_id)))
    return f"#{int(token_id)}" if text is None else escape(text.replace("\n", "↵")) or "∅"


@dataclass(frozen=True)
class KeptMask:
    method: str
    kept: np.ndarray  # (N,) share kept in [0, 1]
    title: str
    details: tuple[str, ...] = ()


def prunehal_mask(trace: Trace, step: int, layer: Choice) -> KeptMask | None:
    """Image tokens PruneHal keeps during ``step``: a prune after step t acts from step t + 1."""
    triggers = method_array(trace, "prunehal", "trigger_steps", ndim=1)
    retained = method_array(trace, "prunehal", "retained", ndim=3)  # (P, L, N)
    n_image = trace.image_tokens
    if triggers is None and trace.method_array("prunehal", "votes") is None:
        return None
    triggers = np.zeros(0, dtype=int) if triggers is None else triggers.astype(int)
    done = int(np.sum(triggers < step))
    if done == 0 or retained is None or retained.shape[0] < done or retained.shape[2] != n_image:
        return KeptMask("prunehal", np.ones(n_image),
                        f"PruneHal at step {step}: all {n_image} image tokens kept", ("no prune has acted yet",))
    current = retained[done - 1].astype(np.float64)  # (L, N)
    if layer == "mean":
        kept, count = current.mean(0), int(round(current.sum(-1).mean()))
        where = "averaged over layers: colour = share of layers keeping each token"
    else:
        kept, count = current[int(layer)], int(current[int(layer)].sum())
        where = f"layer {layer}"
    return KeptMask("prunehal", kept, f"PruneHal at step {step}: {count} of {n_image} image tokens kept",
                    (where, f"after prune {done}, decided at step {int(triggers[done - 1])}"))


def vasparse_mask(trace: Trace, step: int) -> KeptMask | None:
    """First-edition traces only: that VASparse masked image tokens and recorded the share keeping
    each (``kept_image``). The current one never drops image tokens (see :func:`vasparse_selection`)."""
    kept = method_array(trace, "vasparse", "kept_image", "kept", ndim=2)
    if kept is None or step >= kept.shape[0]:
        return None
    layers = method_array(trace, "vasparse", "layers", ndim=1)
    span = f"layers {index_ranges(layers)}" if layers is not None else "its layers"
    row = kept[step].astype(np.float64)
    return KeptMask("vasparse", row, f"VASparse (first-edition trace) at step {step}: {row.mean():.0%} of "
                    "image-token slots kept",
                    (f"colour = share of heads × {span} keeping each token", "the layer picker does not apply"))


@dataclass(frozen=True)
class GeneratedSelection:
    """VASparse's selection over the generated tokens (image and prompt columns are never dropped)."""

    kept: np.ndarray  # (T, T): share of heads × layers keeping generated token j during step t; NaN for j ≥ t
    merged: np.ndarray | None  # (T,): merged (DPC-KNN) columns per head and layer at step t
    layers: np.ndarray | None
    aggregate: str | None  # "dpc-knn" (dropped tokens merged) or "none" (masked), from the trace's meta


def method_params(trace: Trace, method: str) -> dict:
    """The knob values ``method`` ran with, as the trace's meta records them."""
    for described in trace.meta.get("methods") or []:
        if isinstance(described, dict) and described.get("name") == method:
            return dict(described.get("params") or {})
    return {}


def vasparse_selection(trace: Trace) -> GeneratedSelection | None:
    kept = method_array(trace, "vasparse", "kept_generated", ndim=2)
    if kept is None or kept.shape[0] != kept.shape[1]:
        return None
    merged = method_array(trace, "vasparse", "merged_columns", ndim=1)
    if merged is not None and merged.shape[0] != kept.shape[0]:
        merged = None
    aggregate = method_params(trace, "vasparse").get("aggregate")
    return GeneratedSelection(kept.astype(np.float64), None if merged is None else merged.astype(np.float64),
                              method_array(trace, "vasparse", "layers", ndim=1),
                              None if aggregate is None else str(aggregate))


def kept_masks(trace: Trace, step: int, layer: Choice) -> list[KeptMask]:
    masks = [prunehal_mask(trace, step, layer), vasparse_mask(trace, step)]
    return [m for m in masks if m is not None]


def kvsmooth_lambda(trace: Trace) -> np.ndarray | None:
    """λ per (step, layer), NaN where KVSmooth did not smooth."""
    return method_array(trace, "kvsmooth", "lambda", "lam", "lambdas", ndim=2)


def prune_steps(trace: Trace) -> np.ndarray | None:
    return method_array(trace, "prunehal", "trigger_steps", ndim=1)


@dataclass(frozen=True)
class HeadMaps:
    vhd: np.ndarray  # (L, H)
    selected: np.ndarray | None  # (L, H) bool
    outliers: np.ndarray | None  # (L, H) bool
    t_vhd: np.ndarray | None  # (T,)
    layers: np.ndarray | None  # the layers VHR acts on (others hold zeros)


def vhr_maps(trace: Trace) -> HeadMaps | None:
    vhd = method_array(trace, "vhr", "vhd", "VHD", "vhd_raw", ndim=2)
    if vhd is None:
        return None

    def mask(*keys: str) -> np.ndarray | None:
        array = method_array(trace, "vhr", *keys, ndim=2)
        return array.astype(bool) if array is not None and array.shape == vhd.shape else None

    return HeadMaps(
        vhd=vhd.astype(np.float64),
        selected=mask("selected", "selected_heads", "heads", "head_mask"),
        outliers=mask("outlier", "outliers", "filtered", "outlier_mask"),
        t_vhd=method_array(trace, "vhr", "tvhd", "t_vhd", "T_VHD", ndim=1),
        layers=method_array(trace, "vhr", "layers", ndim=1),
    )


@dataclass(frozen=True)
class LogitContrast:
    theta_ids: np.ndarray  # (5,)
    theta_logits: np.ndarray
    phi_ids: np.ndarray | None
    phi_logits: np.ndarray | None


def vasparse_logits(trace: Trace, step: int) -> LogitContrast | None:
    theta_ids = method_array(trace, "vasparse", "theta_top_ids", ndim=2)
    theta = method_array(trace, "vasparse", "theta_top_logits", ndim=2)
    if theta_ids is None or theta is None or step >= len(theta_ids):
        return None
    phi_ids = method_array(trace, "vasparse", "phi_top_ids", ndim=2)
    phi = method_array(trace, "vasparse", "phi_top_logits", ndim=2)
    has_phi = phi_ids is not None and phi is not None and step < len(phi_ids) and (phi_ids[step] >= 0).all()
    return LogitContrast(theta_ids[step], theta[step], phi_ids[step] if has_phi else None,
                         phi[step] if has_phi else None)


@dataclass(frozen=True)
class SinkWeights:
    weights: np.ndarray  # (n_layers, P): W per VASparse layer over every position processed
    positions: np.ndarray  # (P,)
    layers: np.ndarray | None  # the layers of the rows (None: not recorded)


def vasparse_sink(trace: Trace) -> SinkWeights | None:
    """VASparse's sink weights W at the end of the run (or the last checkpoint), over all positions."""
    weights = method_array(trace, "vasparse", "sink_w", ndim=2)
    positions = method_array(trace, "vasparse", "sink_positions", ndim=1)
    if weights is None or positions is None or weights.shape[1] != positions.shape[0]:
        return None
    layers = method_array(trace, "vasparse", "layers", ndim=1)
    if layers is not None and len(layers) != weights.shape[0]:
        layers = None
    return SinkWeights(weights.astype(np.float64), positions.astype(int), layers)


def prunehal_votes(trace: Trace) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """(votes (S, L) bool, attention mass A (S, L), reference Ā (S, L))."""
    votes = method_array(trace, "prunehal", "votes", ndim=2)
    if votes is None:
        return None
    mass = method_array(trace, "prunehal", "mass", ndim=2)
    reference = method_array(trace, "prunehal", "reference", ndim=2)
    same = lambda a: a if a is not None and a.shape == votes.shape else None  # noqa: E731
    return votes.astype(bool), same(mass), same(reference)


@dataclass(frozen=True)
class VarRecord:
    """What VAR recorded: its sink tokens per layer over the prompt and its heads per step."""

    sinks: np.ndarray  # (L, prompt) bool: sink tokens found in each layer's input (prefill)
    heads: np.ndarray  # (T, L, H) bool: image-centric heads at the query predicting step t
    moved: np.ndarray  # (T, L, H) float: attention mass those heads moved from the sinks to the image
    layers: tuple[int, ...]  # the layers VAR searched for sinks and could edit (its first..last knobs)
    p: float | None  # the share of the sinks' attention moved (its knob), when the trace says


def var_layers(num_layers: int, first: int, last: int) -> tuple[int, ...]:
    """VAR's layers first..last, −k counting from the end (``halviz.methods.layer_range.chosen_layers``,
    which imports torch through the methods package)."""
    last = num_layers + last if last < 0 else min(last, num_layers - 1)
    return tuple(range(min(first, num_layers), last + 1))


def var_record(trace: Trace) -> VarRecord | None:
    sinks = method_array(trace, "var", "sinks", ndim=2)
    heads = method_array(trace, "var", "heads", ndim=3)
    moved = method_array(trace, "var", "moved", ndim=3)
    if sinks is None:
        return None
    layers = sinks.shape[0]
    if heads is None or moved is None or heads.shape != moved.shape or heads.shape[1] != layers:
        # no step decided yet (or damaged step arrays): the sinks alone
        heads = moved = np.zeros((0, layers, max(int(trace.meta.get("num_heads", 0)), 0)))
    params = method_params(trace, "var")
    try:
        searched = var_layers(layers, int(params.get("first_layer", 2)), int(params.get("last_layer", -2)))
        p = float(params["p"]) if "p" in params else None
    except (TypeError, ValueError):
        searched, p = tuple(range(layers)), None
    return VarRecord(sinks.astype(bool), heads.astype(bool), moved.astype(np.float64), searched, p)
