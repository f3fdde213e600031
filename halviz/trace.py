"""Step and Trace: what a decode produced, as plain numpy arrays plus JSON metadata.

A trace is saved as ``NAME.npz`` (arrays, with the metadata embedded so the file stands alone)
and ``NAME.json`` (the same metadata, human-readable). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halviz.engine.recorder import StepRecord

FORMAT = "halviz-trace/1"
_META_KEY = "__meta__"
_STEP_ARRAYS = ("image_attn", "entropy", "segment_share", "top_key_pos", "top_key_attn", "head_image_attn")
MAX_TRACE_BYTES = 512 * 2**20  # refuse to open anything larger: a trace of LLaVA-7B at 512 steps is ~60 MB


class TraceFormatError(ValueError):
    """The file is not a halviz trace (or is damaged)."""


@dataclass(frozen=True)
class Step:
    """One generated token and the reduced attention recorded while predicting it."""

    index: int
    token_id: int
    text: str  # what this token adds to the caption (may be "" while a character is incomplete)
    top_ids: np.ndarray  # (K,) int32, the K most likely next tokens after all methods
    top_probs: np.ndarray  # (K,) float32
    record: StepRecord | None
    elapsed_ms: float
    is_eos: bool


@dataclass
class Trace:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_steps(cls, meta: dict[str, Any], steps: list[Step], extras: dict[str, np.ndarray]) -> "Trace":
        arrays: dict[str, np.ndarray] = {
            "token_ids": np.array([s.token_id for s in steps], dtype=np.int64),
            "top_ids": np.array([s.top_ids for s in steps], dtype=np.int32).reshape(len(steps), -1),
            "top_probs": np.array([s.top_probs for s in steps], dtype=np.float32).reshape(len(steps), -1),
            "step_ms": np.array([s.elapsed_ms for s in steps], dtype=np.float32),
        }
        records = [s.record for s in steps if s.record is not None]
        if records and len(records) == len(steps):
            for name in _STEP_ARRAYS:
                arrays[name] = np.stack([getattr(r, name) for r in records])
        for key, value in extras.items():
            arrays[f"method/{key}"] = np.asarray(value)
        meta = dict(meta, format=FORMAT, texts=[s.text for s in steps], num_steps=len(steps))
        return cls(meta, arrays)

    # ---- views ---------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.meta["num_steps"])

    @property
    def texts(self) -> list[str]:
        return list(self.meta["texts"])

    @property
    def caption(self) -> str:
        return "".join(self.meta["texts"])

    @property
    def has_attention(self) -> bool:
        return "image_attn" in self.arrays

    def method_array(self, method: str, key: str) -> np.ndarray | None:
        return self.arrays.get(f"method/{method}/{key}")

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``path`` with suffixes .npz and .json; both appear complete or not at all."""
        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
        meta_text = json.dumps(self.meta, indent=1, ensure_ascii=False)
        payload = dict(self.arrays)
        payload[_META_KEY] = np.frombuffer(meta_text.encode("utf-8"), dtype=np.uint8)
        npz_path, json_path = base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")
        _atomic_write(npz_path, lambda f: np.savez_compressed(f, **payload))
        _atomic_write(json_path, lambda f: f.write(meta_text.encode("utf-8")))
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Load a trace from its .npz (the .json beside it is not needed). Pickles are refused."""
        path = Path(path)
        if path.suffix == ".json":
            path = path.with_suffix(".npz")
        try:
            if path.stat().st_size > MAX_TRACE_BYTES:
                raise TraceFormatError(f"{path.name} is larger than {MAX_TRACE_BYTES >> 20} MB")
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except TraceFormatError:
            raise
        except FileNotFoundError:
            raise TraceFormatError(f"{path.name} does not exist") from None
        except Exception as exc:  # zip, npy-header and pickle-refusal errors all mean the same to a user
            raise TraceFormatError(f"{path.name} is not a halviz trace ({type(exc).__name__}: {exc})") from None
        return cls.from_arrays(arrays, path.name)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], origin: str = "trace") -> "Trace":
        raw = arrays.pop(_META_KEY, None)
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise TraceFormatError(f"{origin} has no halviz metadata")
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceFormatError(f"{origin} has damaged metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TraceFormatError(f"{origin} is not a {FORMAT} file")
        _validate(meta, arrays, origin)
        return cls(meta, arrays)


def _validate(meta: dict, arrays: dict[str, np.ndarray], origin: str) -> None:
    """Check the shapes the viewers rely on, so a crafted file fails here and not inside a plot."""
    try:
        steps = int(meta["num_steps"])
        if len(meta["texts"]) != steps or arrays["token_ids"].shape != (steps,):
            raise ValueError("step count does not match the token list")
        if "image_attn" in arrays:
            layers, rows, cols = int(meta["num_layers"]), int(meta["grid"][0]), int(meta["grid"][1])
            if arrays["image_attn"].shape != (steps, layers, rows * cols):
                raise ValueError(f"image_attn has shape {arrays['image_attn'].shape}")
            if arrays["entropy"].shape != (steps, layers):
                raise ValueError(f"entropy has shape {arrays['entropy'].shape}")
        for name, array in arrays.items():
            if array.dtype.kind not in "biuf":
                raise ValueError(f"array {name} has dtype {array.dtype}")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise TraceFormatError(f"{origin} is inconsistent: {exc}") from None


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
