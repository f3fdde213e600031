"""The layer knobs the interventions share: first..last, with −1 meaning the last layer (−k: the k-th from the end)."""

from __future__ import annotations

from halviz.methods.base import Knob


def layer_knobs(what: str) -> tuple[Knob, Knob]:
    return (Knob("first_layer", "First layer", 0, 0, 255, 1, help=f"first decoder layer (0-indexed) that {what}"),
            Knob("last_layer", "Last layer (−1 = last)", -1, -1, 255, 1, help=f"last decoder layer that {what}"))


def chosen_layers(num_layers: int, first: int, last: int) -> frozenset[int]:
    """Layers first..last (−1 = the model's last layer, −2 the one before), clipped to the model's depth."""
    last = num_layers + last if last < 0 else min(last, num_layers - 1)
    return frozenset(range(min(first, num_layers), last + 1))
