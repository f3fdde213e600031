"""Ragged prefill: short rows ride in the room after a longer row instead of being padded.

The prefill's *logical* rows (a main row per column or shared, one per extra stream) are what hooks,
the recorder and the cache see: every row right-padded to the longest, ``n``. A text-only row (VHR's
stream: the prompt without its image) is much shorter than ``n``; padded, it costs a full row of
matmuls on a compute-bound CPU. So the model runs *physical* rows: each text-only row is appended
after another row (``[main row | text row | padding]``), every segment with its own positions, and
the attention function keeps the segments apart with a block-diagonal causal mask. Around each layer's
attention the logical layout is rebuilt from the physical tensors (gathers; small next to the model's
matmuls), so hooks and the recorder see exactly what they saw with padded rows; after the prefill the
cache is gathered into logical rows, so the decode never sees the packing.

Only text-only rows are packed: the rows holding the image keep their order, which is the order in
which the model places the encoded images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def pack_rows(lengths: list[int], packable: list[bool]) -> list[list[int]] | None:
    """Physical rows (logical row indices, in order within each) that run fewest token slots, or None
    when packing saves nothing. Unpackable rows keep their own physical row, in their order; packable
    rows go, longest first, into the first physical row with room (first fit decreasing), trying every
    physical length from the longest row up to the longest row plus all packable rows."""
    n = max(lengths)
    short = sorted((i for i, p in enumerate(packable) if p), key=lambda i: -lengths[i])
    if not short:
        return None
    best, best_cost = None, len(lengths) * n
    candidates = sorted({n + sum(lengths[i] for i in short[:k]) for k in range(len(short) + 1)})
    for width in candidates:
        bins = [[i] for i, p in enumerate(packable) if not p]
        used = [lengths[b[0]] for b in bins]
        for i in short:
            slot = next((j for j, u in enumerate(used) if u + lengths[i] <= width), None)
            if slot is None:
                bins.append([i])
                used.append(lengths[i])
            else:
                bins[slot].append(i)
                used[slot] += lengths[i]
        cost = len(bins) * max(used)
        if cost < best_cost:
            best, best_cost = bins, cost
    return best


@dataclass
class Packing:
    """Where each logical prefill row (right-padded to ``n``) lies in the physical batch (``P`` × ``N``)."""

    lengths: torch.Tensor  # (B,) logical rows' real lengths
    n: int  # logical row length (the longest row)
    rows: int  # P
    width: int  # N
    gather: torch.Tensor  # (B*n,) flat physical slot of every logical slot (padding: a real slot, masked)
    real_src: torch.Tensor  # flat logical slots that hold a token
    real_dst: torch.Tensor  # their flat physical slots
    segment: torch.Tensor  # (P, N) logical row of every physical slot, -1 for padding
    _masks: dict = field(default_factory=dict)

    @classmethod
    def build(cls, lengths: list[int], bins: list[list[int]], device) -> "Packing":
        n, rows = max(lengths), len(bins)
        width = max(sum(lengths[i] for i in b) for b in bins)
        start = [0] * len(lengths)  # flat physical slot of each logical row's first token
        segment = torch.full((rows, width), -1, dtype=torch.long)
        for p, members in enumerate(bins):
            offset = 0
            for i in members:
                start[i] = p * width + offset
                segment[p, offset:offset + lengths[i]] = i
                offset += lengths[i]
        t = torch.arange(n)
        lens = torch.tensor(lengths)
        starts = torch.tensor(start)
        real = t[None] < lens[:, None]  # (B, n)
        # a padding slot reads its row's first token: a real, finite value that the mask hides
        gather = starts[:, None] + torch.where(real, t[None], 0)
        real_src = torch.nonzero(real.reshape(-1)).squeeze(1)
        return cls(lens.to(device), n, rows, width, gather.reshape(-1).to(device), real_src.to(device),
                   gather.reshape(-1)[real_src].to(device), segment.to(device))

    # ---- inputs and outputs of the physical forward ----------------------------------------------
    def to_physical(self, logical: torch.Tensor, fill) -> torch.Tensor:
        """(..., B, n) → (..., P, N); padding slots hold ``fill``."""
        lead = logical.shape[:-2]
        flat = logical.reshape(*lead, -1)
        out = flat.new_full((*lead, self.rows * self.width), fill)
        out[..., self.real_dst] = flat[..., self.real_src]
        return out.reshape(*lead, self.rows, self.width)

    def attention_mask(self) -> torch.Tensor:
        """(P, N) 1 on the tokens, 0 on the padding: the mask the model is given."""
        return (self.segment >= 0).long()

    def logits_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(columns to keep, each logical row's index into them): the last real token of every row."""
        last = self.gather.view(-1, self.n)[torch.arange(len(self.lengths), device=self.lengths.device),
                                            self.lengths - 1]
        row, col = last // self.width, last % self.width
        keep, where = torch.unique(col, return_inverse=True)
        return keep, row * len(keep) + where

    # ---- what the attention function needs ------------------------------------------------------
    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Physical (P, H, N, D) → logical (B, H, n, D)."""
        flat = x.transpose(1, 2).reshape(self.rows * self.width, *x.shape[1:2], x.shape[-1])
        return flat[self.gather].view(-1, self.n, x.shape[1], x.shape[-1]).transpose(1, 2)

    def unpack_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Physical (P, N, d) → logical (B, n, d)."""
        return hidden.reshape(self.rows * self.width, -1)[self.gather].view(-1, self.n, hidden.shape[-1])

    def pack(self, out: torch.Tensor) -> torch.Tensor:
        """Logical attention output (B, n, H, D) → physical (P, N, H, D); padding slots are zero."""
        flat = out.reshape(-1, *out.shape[2:])
        phys = flat.new_zeros(self.rows * self.width, *out.shape[2:])
        phys[self.real_dst] = flat[self.real_src]
        return phys.view(self.rows, self.width, *out.shape[2:])

    def logical_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, n, n) additive mask of the logical rows: causal, padding keys hidden."""
        key = ("logical", dtype)
        if key not in self._masks:
            t = torch.arange(self.n, device=self.lengths.device)
            allowed = (t[None, :] <= t[:, None])[None] & (t[None, None, :] < self.lengths[:, None, None])
            self._masks[key] = _additive(allowed[:, None], dtype)
        return self._masks[key]

    def physical_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(P, 1, N, N) additive mask of the physical rows: causal within each segment only (a padding
        slot sees itself, so no row of the softmax is empty)."""
        key = ("physical", dtype)
        if key not in self._masks:
            s = self.segment
            t = torch.arange(self.width, device=s.device)
            same = s[:, :, None] == s[:, None, :]
            causal = t[None, :] <= t[:, None]
            allowed = same & causal[None] & ((s[:, :, None] >= 0) | (t[:, None] == t[None, :])[None])
            self._masks[key] = _additive(allowed[:, None], dtype)
        return self._masks[key]

    def cache_index(self, logical_rows: torch.Tensor) -> torch.Tensor:
        """(R*n,) flat physical slots that make logical rows ``logical_rows`` the cache's rows."""
        return self.gather.view(-1, self.n)[logical_rows].reshape(-1)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's lowest value elsewhere (as transformers' eager mask)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
