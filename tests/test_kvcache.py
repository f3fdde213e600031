"""The in-place KV cache against transformers' DynamicCache (torch.cat every step): the same tensors
after a prefill, decode steps, a row selection and a write through a returned view."""

import torch
from transformers import DynamicCache

from halviz.engine.kvcache import GrowingCache


def _kv(rows, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 4, generator=g), torch.randn(rows, 2, length, 4, generator=g)


def test_growing_cache_equals_dynamic_cache_and_writes_in_place():
    ours, stock = GrowingCache(spare=3), DynamicCache()
    for cache in (ours, stock):
        for layer in range(2):
            cache.update(*_kv(3, 5, layer), layer)
        cache.batch_select_indices(torch.tensor([2, 0, 0]))  # rows chosen and repeated after the prefill
    buffers = []
    for step in range(6):  # past the spare room once: the buffer grows
        for layer in range(2):
            k, v = ours.update(*_kv(3, 1, 10 + step * 2 + layer), layer)
            want_k, want_v = stock.update(*_kv(3, 1, 10 + step * 2 + layer), layer)
            assert torch.equal(k, want_k) and torch.equal(v, want_v)
            if layer == 0:
                buffers.append(ours.layers[0]._buffers[0].data_ptr())
            k[1, :, -1] = 7.0  # a method writing through the view (KVSmooth) writes the cache
            want_k[1, :, -1] = 7.0
    assert ours.get_seq_length() == stock.get_seq_length() == 11
    for a, b in zip(ours.layers, stock.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # steps wrote into one buffer until its room ran out (3 spare positions), then one new buffer
    assert len(set(buffers)) == 2 and buffers[:3] == [buffers[0]] * 3
