"""Packed text-only sequences for the base-LM stage: ``BOS cap EOS cap EOS …`` cut to a fixed
length, so BOS is the only token every sequence shares at a fixed position (where a sink can form)."""

from __future__ import annotations

import numpy as np
import torch


def pack_rows(pool: list[list[int]], rng: np.random.Generator, batch: int, length: int,
              bos: int, eos: int) -> torch.Tensor:
    """`batch` rows of `length` tokens: BOS, then tokenised captions drawn from `pool`, EOS-separated."""
    rows = []
    for _ in range(batch):
        row = [bos]
        while len(row) < length:
            row += pool[int(rng.integers(len(pool)))] + [eos]
        rows.append(row[:length])
    return torch.tensor(rows)
