"""A KV cache whose decode steps write in place.

transformers' ``DynamicLayer`` appends a step's key/value with ``torch.cat``: every decode step copies
the whole cache of every layer (profiled: ~20% of a 5-column decode step on CPU, tools/decode_profile.py).
Here each layer's keys and values are views of a buffer with room for the tokens still to come, so a
step writes one entry. The views are what the model, the attention function and the methods see (a
method that writes through them, like KVSmooth's blend, writes the cache). Whoever replaces a layer's
tensors (a batch selection after the prefill, rows leaving the batch) makes the next update copy them
into a fresh buffer once.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose tensors are views of buffers with ``spare`` positions of room."""

    def __init__(self, spare: int = 64):
        super().__init__()
        self.spare = max(1, int(spare))
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.get_seq_length() == 0:  # the prefill: kept as given
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            self._views = None
            return self.keys, self.values
        length, new = self.keys.shape[-2], key_states.shape[-2]
        ours = self._views is not None and self.keys is self._views[0] and self.values is self._views[1]
        if not ours or length + new > self._buffers[0].shape[-2]:
            self._buffers = (self._room(self.keys, length + new), self._room(self.values, length + new))
        kb, vb = self._buffers
        kb[:, :, length:length + new] = key_states
        vb[:, :, length:length + new] = value_states
        self.keys, self.values = kb[:, :, :length + new], vb[:, :, :length + new]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def _room(self, x: torch.Tensor, needed: int) -> torch.Tensor:
        """A buffer for ``needed`` + spare positions holding ``x`` at the start."""
        buffer = x.new_empty(*x.shape[:2], needed + self.spare, x.shape[-1])
        buffer[:, :, :x.shape[-2]] = x
        return buffer


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of :class:`GrowingLayer` s (``spare``: the tokens a decode may still add)."""

    def __init__(self, spare: int = 64):
        Cache.__init__(self, layer_class_to_replicate=partial(GrowingLayer, spare))
