"""Stage checkpoints for the toy recipe: model, optimiser, data-stream and torch RNG states, step,
history and elapsed time in one file, written atomically so an interrupted run can resume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

LAST = "last.pt"


def save(ckpt_dir: Path, state: dict, keep_as: str | None = None) -> None:
    """Write `state` to ckpt_dir/last.pt (and a copy named `keep_as`, e.g. at a stage's end)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / (LAST + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / LAST)
    if keep_as:
        torch.save(state, ckpt_dir / keep_as)


def load(ckpt_dir: Path) -> dict | None:
    path = ckpt_dir / LAST
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def restore_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
