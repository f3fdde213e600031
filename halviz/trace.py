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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # an annotation only: trace files and the figures drawn from them need no torch
    from halviz.engine.lens import LensRecord
    from halviz.engine.recorder import StepRecord

FORMAT = "halviz-trace/1"
_META_KEY = "__meta__"
_STEP_ARRAYS = ("image_attn", "entropy", "segment_share", "top_key_pos", "top_key_attn", "head_image_attn")
# The logit lens (engine/lens.py), per step and recorded layer (meta["lens_layers"]): all four or none.
LENS_ARRAYS = {"lens_top_ids": "top_ids", "lens_top_probs": "top_probs", "lens_token_prob": "token_prob",
               "lens_token_rank": "token_rank"}
MAX_TRACE_BYTES = 512 * 2**20  # refuse to open anything larger: a trace of LLaVA-7B at 512 steps is ~60 MB
# Fixed limits on what a trace's metadata may declare, checked before anything is built from it:
# generous for real models (LLaVA-1.5-7B: 32 layers × 32 heads, 24×24 grid, ~600 prompt tokens).
MAX_META_BYTES = 8 * 2**20
MAX_META_DEPTH = 6  # the deepest the engine writes is 4 (methods → params → value)
MAX_META_ITEMS = 400_000  # every list entry, dict entry and scalar, in all
MAX_STEPS = 1024
MAX_LAYERS = 256
MAX_HEADS = 256
MAX_GRID_SIDE = 128
MAX_PROMPT_LEN = 32_768
MAX_TOP_K = 64
MAX_SEGMENTS = 16
MAX_METHODS = 16
MAX_VOCAB_STRINGS = 65_536
MAX_PIECE_CHARS = 256  # one token's text
MAX_TEXT_CHARS = 4_000  # the prompt, names and reasons


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
    lens: LensRecord | None = None  # the logit lens at this step's query, if recorded


@dataclass
class Trace:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_steps(cls, meta: dict[str, Any], steps: list[Step], extras: dict[str, np.ndarray],
                   recorded: dict[str, np.ndarray] | None = None) -> "Trace":
        """``extras``: the methods' own arrays (stored as ``method/<name>``); ``recorded``: the engine's
        arrays that are not per step (``sink_tokens``)."""
        arrays: dict[str, np.ndarray] = {
            "token_ids": np.array([s.token_id for s in steps], dtype=np.int64),
            # (steps, k); a column that ended before its first step (a method refusing its setup) has (0, 0)
            "top_ids": np.array([s.top_ids for s in steps], dtype=np.int32).reshape(len(steps), -1 if steps else 0),
            "top_probs": np.array([s.top_probs for s in steps], dtype=np.float32).reshape(len(steps), -1 if steps else 0),
            "step_ms": np.array([s.elapsed_ms for s in steps], dtype=np.float32),
        }
        records = [s.record for s in steps if s.record is not None]
        if records and len(records) == len(steps):
            for name in _STEP_ARRAYS:
                arrays[name] = np.stack([getattr(r, name) for r in records])
        lenses = [s.lens for s in steps if s.lens is not None]
        if lenses and len(lenses) == len(steps):
            for name, field_name in LENS_ARRAYS.items():
                arrays[name] = np.stack([getattr(r, field_name) for r in lenses])
        for key, value in extras.items():
            arrays[f"method/{key}"] = np.asarray(value)
        arrays.update({key: np.asarray(value) for key, value in (recorded or {}).items()})
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

    @property
    def image_tokens(self) -> int:
        """How many image tokens the arrays over the image hold (every grid's, and tokens in none)."""
        rows, cols = (int(v) for v in self.meta.get("grid", [0, 0]))
        return len(self.meta.get("image_positions") or []) if "grid_index" in self.meta else rows * cols

    def grid_index(self) -> np.ndarray:
        """Indices into the image tokens of the primary grid's patches, row-major (all of them, in order,
        unless the layout has several grids: then ``meta["grid_index"]``)."""
        rows, cols = (int(v) for v in self.meta.get("grid", [0, 0]))
        index = self.meta.get("grid_index")
        return np.asarray(index, dtype=np.int64) if index is not None else np.arange(rows * cols)

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
        except Exception:  # zip, npy-header and pickle-refusal errors all mean the same to a user
            raise TraceFormatError(f"{path.name} is not a halviz trace (damaged, or not written by halviz)") from None
        return cls.from_arrays(arrays, path.name)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], origin: str = "trace") -> "Trace":
        raw = arrays.pop(_META_KEY, None)
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise TraceFormatError(f"{origin} has no halviz metadata")
        if raw.size > MAX_META_BYTES:
            raise TraceFormatError(f"{origin} has {raw.size / 2**20:.0f} MB of metadata; "
                                   f"the limit is {MAX_META_BYTES >> 20} MB")
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TraceFormatError(f"{origin} has damaged metadata (not UTF-8 JSON)") from None
        except (RecursionError, ValueError):  # nested past the parser's depth; huge integers
            raise TraceFormatError(f"{origin} has damaged metadata: nested too deeply or numbers too long") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TraceFormatError(f"{origin} is not a {FORMAT} file")
        _validate(meta, arrays, origin)
        return cls(meta, arrays)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _validate(meta: dict, arrays: dict[str, np.ndarray], origin: str) -> None:
    """Check every count, size and string the viewers rely on, against the arrays and against fixed
    limits, so a crafted file fails here (cheaply) and not inside a plot or a million-entry dropdown."""
    try:
        _check_tree(meta)
        steps = _count(meta, "num_steps", MAX_STEPS)
        layers = _count(meta, "num_layers", MAX_LAYERS)
        heads = _count(meta, "num_heads", MAX_HEADS)
        if "num_kv_heads" in meta:
            _count(meta, "num_kv_heads", max(heads, 1))
        prompt_len = _count(meta, "prompt_len", MAX_PROMPT_LEN) if "prompt_len" in meta else 0
        grid = meta.get("grid", [0, 0])
        if not (isinstance(grid, list) and len(grid) == 2 and all(_is_int(v, MAX_GRID_SIDE) for v in grid)):
            raise ValueError(f"grid must be two whole numbers up to {MAX_GRID_SIDE}")
        n_image = grid[0] * grid[1]
        _strings(meta.get("texts"), "texts", MAX_PIECE_CHARS, exact=steps)
        for key in ("model", "source", "family", "prompt", "finish_reason", "device", "step_semantics", "format",
                    "image_budget"):
            if key in meta and not (isinstance(meta[key], str) and len(meta[key]) <= MAX_TEXT_CHARS):
                raise ValueError(f"{key} must be text of at most {MAX_TEXT_CHARS} characters")
        _strings(meta.get("prompt_tokens", []), "prompt_tokens", MAX_PIECE_CHARS, most=max(prompt_len, 0))
        _strings(meta.get("segments", []), "segments", 40, most=MAX_SEGMENTS)
        if "grid_index" in meta:  # several grids: image_positions holds every grid's tokens (and any in none)
            n_tokens = len(meta.get("image_positions") or [])
            _ints(meta.get("image_positions", []), "image_positions", max(prompt_len, 1), most=MAX_PROMPT_LEN)
            _ints(meta["grid_index"], "grid_index", max(n_tokens, 1), allowed_lengths=(n_image,))
            _check_grids(meta.get("grids", []), n_tokens)
        else:
            n_tokens = n_image
            _ints(meta.get("image_positions", []), "image_positions", max(prompt_len, 1), allowed_lengths=(0, n_image))
        _ints(meta.get("segment_ids_prompt", []), "segment_ids_prompt", MAX_SEGMENTS, most=prompt_len)
        head_layers = meta.get("head_layers", [])
        _ints(head_layers, "head_layers", max(layers, 1), most=layers)
        if len(set(head_layers)) != len(head_layers):
            raise ValueError("head_layers repeats a layer")
        boxes = meta.get("patch_boxes", [])
        if not isinstance(boxes, list) or len(boxes) not in (0, n_image) or not all(
                isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b) for b in boxes):
            raise ValueError("patch_boxes must hold four numbers per image token")
        size = meta.get("image_size", [1, 1])
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v, 10**6) and v > 0 for v in size)):
            raise ValueError("image_size must be two positive whole numbers")
        methods = meta.get("methods", [])
        if not isinstance(methods, list) or len(methods) > MAX_METHODS or not all(
                isinstance(m, dict) and isinstance(m.get("params", {}), dict) for m in methods):
            raise ValueError(f"methods must be a list of at most {MAX_METHODS} method descriptions")
        vocab = meta.get("vocab_strings", {})
        if not isinstance(vocab, dict) or len(vocab) > MAX_VOCAB_STRINGS or not all(
                isinstance(v, str) and len(v) <= MAX_PIECE_CHARS for v in vocab.values()):
            raise ValueError("vocab_strings must map token ids to short texts")
        lens_layers = meta.get("lens_layers", [])
        _ints(lens_layers, "lens_layers", max(layers, 1), most=layers)
        if lens_layers != sorted(set(lens_layers)):
            raise ValueError("lens_layers must name distinct layers in ascending order")
        _check_lens(arrays, steps, len(lens_layers))
        segments = len(meta.get("segments", []))
        _check_arrays(arrays, steps, layers, heads, n_tokens, len(head_layers), segments, prompt_len)
    except KeyError as exc:
        raise TraceFormatError(f"{origin} is inconsistent: it lacks {str(exc.args[0])[:40]!r}") from None
    except ValueError as exc:  # our own sentences (every check above raises ValueError with one)
        raise TraceFormatError(f"{origin} is inconsistent: {exc}") from None
    except (TypeError, IndexError, AttributeError, OverflowError):
        raise TraceFormatError(f"{origin} is inconsistent: its metadata has the wrong types") from None


MAX_GRIDS = 64


def _check_grids(grids: Any, n_tokens: int) -> None:
    """``meta["grids"]``: every view of the upload, each with its indices into the image tokens and its boxes."""
    if not isinstance(grids, list) or len(grids) > MAX_GRIDS:
        raise ValueError(f"grids must be a list of at most {MAX_GRIDS} grids")
    for g in grids:
        shape = g.get("grid") if isinstance(g, dict) else None
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(v, MAX_GRID_SIDE) for v in shape)):
            raise ValueError("each grid needs a grid shape of two whole numbers")
        if not (isinstance(g.get("name", ""), str) and len(g.get("name", "")) <= 80):
            raise ValueError("a grid's name must be short text")
        _ints(g.get("index"), "a grid's index", max(n_tokens, 1), allowed_lengths=(shape[0] * shape[1],))
        boxes = g.get("patch_boxes", [])
        if not isinstance(boxes, list) or len(boxes) not in (0, shape[0] * shape[1]) or not all(
                isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b) for b in boxes):
            raise ValueError("a grid's patch_boxes must hold four numbers per patch")


def _check_arrays(arrays: dict[str, np.ndarray], steps: int, layers: int, heads: int, n_image: int,
                  head_layers: int, segments: int, prompt_len: int) -> None:
    k = arrays["top_ids"].shape[-1] if "top_ids" in arrays else 0
    top_keys = arrays["top_key_pos"].shape[-1] if "top_key_pos" in arrays else 0
    if k > MAX_TOP_K or top_keys > MAX_TOP_K:
        raise ValueError(f"more than {MAX_TOP_K} candidates per step")
    expected = {
        "token_ids": (steps,), "top_ids": (steps, k), "top_probs": (steps, k), "step_ms": (steps,),
        "image_attn": (steps, layers, n_image), "entropy": (steps, layers), "segment_share": (steps, layers, segments),
        "top_key_pos": (steps, layers, top_keys), "top_key_attn": (steps, layers, top_keys),
        "head_image_attn": (steps, head_layers, heads, n_image),
        "sink_tokens": (layers, prompt_len),  # optional (traces before it lack it)
    }
    if "token_ids" not in arrays:
        raise ValueError("the token list is missing")
    # The engine records the attention arrays together (or none); every panel reads its own, so a
    # trace with some of them could not be drawn: name the first one it lacks.
    if any(name in arrays for name in _STEP_ARRAYS):
        needed = _STEP_ARRAYS if head_layers else _STEP_ARRAYS[:-1]  # single heads only where recorded
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(f"it lacks the attention array {missing[0]} (a trace with attention holds "
                             f"{', '.join(needed)})")
    empty_heads = arrays.get("head_image_attn")
    if not head_layers and empty_heads is not None and empty_heads.ndim == 4 and empty_heads.shape[:2] == (steps, 0):
        expected["head_image_attn"] = empty_heads.shape  # none recorded: the engine writes (T, 0, 0, N)
    # A method's own arrays are indexed by steps, layers, heads, image or text positions.
    longest = max(steps, layers, heads, n_image, prompt_len + steps, MAX_TOP_K)
    most_items = max(steps, 1) * max(layers, 1) * max(heads, n_image, prompt_len + steps, MAX_TOP_K)
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"array {name} has dtype {array.dtype}")
        if name in expected:
            if array.shape != expected[name]:
                raise ValueError(f"{name} has shape {array.shape}, expected {expected[name]}")
        elif name in LENS_ARRAYS:
            continue  # _check_lens
        elif name.startswith("method/"):
            if array.ndim > 4 or any(d > longest for d in array.shape) or array.size > most_items:
                raise ValueError(f"{name} has shape {array.shape}, larger than this trace's model and steps")
        else:
            raise ValueError(f"unknown array {name}")


def _check_lens(arrays: dict[str, np.ndarray], steps: int, lens_layers: int) -> None:
    """The logit lens: all four arrays or none, over ``meta["lens_layers"]``, ids and ranks integers,
    probabilities floats (a trace from before the lens has none of them)."""
    present = [name for name in LENS_ARRAYS if name in arrays]
    if not present:
        return
    if len(present) < len(LENS_ARRAYS):
        missing = next(name for name in LENS_ARRAYS if name not in arrays)
        raise ValueError(f"it lacks the logit-lens array {missing} (a trace with a lens holds {', '.join(LENS_ARRAYS)})")
    k = arrays["lens_top_ids"].shape[-1] if arrays["lens_top_ids"].ndim == 3 else -1
    if not 0 < k <= MAX_TOP_K:
        raise ValueError(f"lens_top_ids must hold 1 to {MAX_TOP_K} candidates per step and layer")
    shapes = {"lens_top_ids": (steps, lens_layers, k), "lens_top_probs": (steps, lens_layers, k),
              "lens_token_prob": (steps, lens_layers), "lens_token_rank": (steps, lens_layers)}
    kinds = {"lens_top_ids": "iu", "lens_top_probs": "f", "lens_token_prob": "f", "lens_token_rank": "iu"}
    for name, shape in shapes.items():
        array = arrays[name]
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, expected {shape} (steps x lens_layers"
                             f"{' x candidates' if len(shape) == 3 else ''})")
        if array.dtype.kind not in kinds[name]:
            raise ValueError(f"{name} has dtype {array.dtype}, expected {'integers' if 'i' in kinds[name] else 'floats'}")


def _is_int(value: Any, most: int) -> bool:
    return type(value) is int and 0 <= value <= most  # not bool, not float, not text


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and abs(value) < 1e9


def _count(meta: dict, key: str, most: int) -> int:
    value = meta[key]
    if not _is_int(value, most):
        raise ValueError(f"{key} must be a whole number from 0 to {most}, not {str(value)[:40]!r}")
    return value


def _strings(values: Any, name: str, longest: int, exact: int | None = None, most: int | None = None) -> None:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) <= longest for v in values):
        raise ValueError(f"{name} must be a list of texts of at most {longest} characters")
    if exact is not None and len(values) != exact:
        raise ValueError(f"{name} has {len(values)} entries for {exact} steps")
    if most is not None and len(values) > most:
        raise ValueError(f"{name} has {len(values)} entries, more than {most}")


def _ints(values: Any, name: str, below: int, most: int | None = None, allowed_lengths: tuple | None = None) -> None:
    if not isinstance(values, list) or not all(_is_int(v, below - 1) for v in values):
        raise ValueError(f"{name} must be a list of whole numbers below {below}")
    if most is not None and len(values) > most:
        raise ValueError(f"{name} has {len(values)} entries, more than {most}")
    if allowed_lengths is not None and len(values) not in allowed_lengths:
        raise ValueError(f"{name} has {len(values)} entries, expected {allowed_lengths[-1]}")


def _check_tree(meta: dict) -> None:
    """Bounded nesting, item count and string length, walked without recursion."""
    pending, items = [(meta, 1)], 0
    while pending:
        node, depth = pending.pop()
        items += 1
        if depth > MAX_META_DEPTH or items > MAX_META_ITEMS:
            raise ValueError("the metadata is nested too deeply or holds too many items")
        if isinstance(node, dict):
            if not all(isinstance(k, str) and len(k) <= MAX_PIECE_CHARS for k in node):
                raise ValueError("the metadata has an overlong key")
            pending.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            pending.extend((v, depth + 1) for v in node)
        elif isinstance(node, str) and len(node) > MAX_TEXT_CHARS:
            raise ValueError(f"the metadata holds a text of {len(node)} characters")


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
