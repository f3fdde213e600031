"""The sharded, resumable runner: decode what is missing, one append-only fsync'd JSONL per rank.

A job is a list of :class:`Unit` s, one decode each (one image, one prompt, one method stack). Each
unit has a content key: a SHA-256 of everything that determines its output (the model's source and
dtype and device type, the image's RGB pixels, the prompt, the system message, the method stack with
every knob, max_new_tokens; greedy decoding). Two benchmarks asking the same thing (POPE's "yes"
questions recur across the three splits; CHAIR and OPOPE share a caption) decode it once.

Sharding is by image: images are numbered in the plan's order and image ``i`` belongs to rank
``i % world_size``; all units of one image decode on its rank, and the method columns of one
(image, prompt) decode as rows of one batch (:class:`~halviz.engine.batch.BatchDecoder`, whose
columns equal their solo runs). Every finished batch is appended to ``cache/rank-{r}.jsonl`` and
fsync'd. On start every rank reads *all* ``cache/rank-*.jsonl`` files, so a restart with the same
arguments and any number of processes decodes only the missing keys; a half-written last line (a
kill mid-write) is ignored and the unit decoded again. Rank 0 merges after a barrier.

Under ``torchrun`` (or ``accelerate launch``: the same ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
variables) the process group is gloo (only barriers pass through it); each rank takes
``cuda:LOCAL_RANK`` when GPUs exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image
from tqdm import tqdm

from halviz.engine.batch import MAX_COLUMNS, BatchDecoder
from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.methods import build_stack

CACHE_DIR = "cache"


def parse_stack(method: str) -> list[str]:
    """'vanilla', 'vhr' or a stack 'prunehal+vhr' -> the names it stacks."""
    return [m.strip() for m in method.split("+") if m.strip()]


def make_stack(method: str, params: dict[str, dict[str, Any]]):
    return build_stack(parse_stack(method), params)


def image_digest(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Unit:
    """One decode of the job."""

    key: str
    image_id: str
    method: str
    prompt: str
    max_new_tokens: int


@dataclass
class Plan:
    """Every unit of a job, the images they read, and the settings common to all decodes."""

    model_id: dict[str, str]
    system: str | None
    params: dict[str, dict[str, Any]]
    traces: Path | None = None  # --save-traces: each decode's compact trace as traces/<key>.npz/.json
    images: dict[str, Image.Image] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)  # key -> unit, in first-asked order
    _digests: dict[str, str] = field(default_factory=dict)

    def add_image(self, image_id: str, image: Image.Image) -> None:
        if image_id not in self.images:
            self.images[image_id] = image
            self._digests[image_id] = image_digest(image)

    def ask(self, image_id: str, method: str, prompt: str, max_new_tokens: int) -> str:
        """The key of this decode (added once however often it is asked)."""
        stack = [m.describe() for m in make_stack(method, self.params)]
        content = {"model": self.model_id, "image": self._digests[image_id], "prompt": prompt,
                   "system": self.system, "methods": stack, "max_new_tokens": int(max_new_tokens),
                   "decoding": "greedy"}
        key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
        self.units.setdefault(key, Unit(key, image_id, method, prompt, int(max_new_tokens)))
        return key


def model_identity(loaded) -> dict[str, str]:
    return {"source": str(loaded.source), "dtype": str(loaded.dtype).replace("torch.", ""),
            "device": loaded.device.type}


# ---- the per-rank cache ---------------------------------------------------------------------------

def read_cache(out: Path) -> dict[str, dict[str, Any]]:
    """Every finished record of every rank file under ``out/cache``, by key (first kept)."""
    done: dict[str, dict[str, Any]] = {}
    folder = Path(out) / CACHE_DIR
    for path in sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    continue  # a half-written last line: that unit is decoded again
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "key" in record:
                    done.setdefault(record["key"], record)
    return done


class CacheWriter:
    """Appends records to this rank's file: one write and one fsync per finished batch."""

    def __init__(self, out: Path, rank: int):
        folder = Path(out) / CACHE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank-{rank}.jsonl"
        self.handle = open(self.path, "a+b")
        self.handle.seek(0, os.SEEK_END)
        if self.handle.tell():  # a kill mid-line left no newline: end that line so ours stay whole
            self.handle.seek(-1, os.SEEK_END)
            if self.handle.read(1) != b"\n":
                self.handle.write(b"\n")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        self.handle.write(data)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


# ---- decoding -------------------------------------------------------------------------------------

def decode_group(loaded, plan: Plan, units: Sequence[Unit], batch: str = "columns") -> list[dict[str, Any]]:
    """Decode ``units`` (of one image, or of several with ``batch="images"``) and return their records.

    ``solo``: one decode at a time (the loop before the harness). ``columns``: the method columns of one
    (image, prompt) as rows of one batch. ``images``: every (image, prompt) of the units whose prompts
    have equal token length as rows of one batch (:func:`halviz.engine.multi.decode_requests`). All three
    give the same tokens (each column equals its solo run)."""
    records = []
    record = RecordOptions(enabled=plan.traces is not None)
    if batch == "solo":
        for unit in units:
            decoder = Decoder(loaded, plan.images[unit.image_id], unit.prompt, make_stack(unit.method, plan.params),
                              unit.max_new_tokens, record=record, system=plan.system)
            t0 = time.perf_counter()
            trace = decoder.run_to_end()
            records.append(_record(unit, trace, time.perf_counter() - t0, plan.traces))
        return records
    groups: dict[tuple[str, str, int], list[Unit]] = {}
    for unit in units:
        groups.setdefault((unit.image_id, unit.prompt, unit.max_new_tokens), []).append(unit)
    if batch == "columns":
        for (image_id, prompt, max_new_tokens), members in groups.items():
            for start in range(0, len(members), MAX_COLUMNS):
                chunk = members[start:start + MAX_COLUMNS]
                decoder = BatchDecoder(loaded, plan.images[image_id], prompt,
                                       [make_stack(u.method, plan.params) for u in chunk], max_new_tokens,
                                       record=record, system=plan.system)
                t0 = time.perf_counter()
                traces = decoder.run_to_end()
                records += _records(chunk, traces, decoder.columns, time.perf_counter() - t0, plan.traces)
        return records
    if batch != "images":
        raise ValueError(f"unknown batch mode {batch!r}")
    from halviz.engine.multi import MAX_MULTI_COLUMNS, Request, decode_requests

    by_tokens: dict[int, list[tuple[tuple[str, str, int], list[Unit]]]] = {}
    for key, members in groups.items():
        by_tokens.setdefault(key[2], []).append((key, members))
    for max_new_tokens, entries in by_tokens.items():
        requests = [Request(plan.images[image_id], prompt, [make_stack(u.method, plan.params) for u in members])
                    for (image_id, prompt, _), members in entries]
        t0 = time.perf_counter()
        results = decode_requests(loaded, requests, max_new_tokens, record=record, system=plan.system,
                                  max_columns=MAX_MULTI_COLUMNS)
        spent = time.perf_counter() - t0
        flat = [(u, trace, column) for (_, members), pairs in zip(entries, results) for u, (trace, column) in zip(members, pairs)]
        records += _records([f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat], spent, plan.traces)
    return records


def _records(units, traces, columns, seconds: float, traces_dir: Path | None = None) -> list[dict[str, Any]]:
    """Records of a batch; its time shared in proportion to each column's tokens."""
    total = max(sum(t.num_steps for t in traces), 1)
    out = []
    for unit, column, trace in zip(units, columns, traces):
        if column.error is not None:
            raise RuntimeError(f"{unit.method} failed on {unit.image_id}: {column.error}") from column.error
        out.append(_record(unit, trace, seconds * trace.num_steps / total, traces_dir))
    return out


def _record(unit: Unit, trace, seconds: float, traces_dir: Path | None = None) -> dict[str, Any]:
    """The cache line of a finished decode; with ``traces_dir`` its trace is saved first (a line means a trace)."""
    if traces_dir is not None:
        traces_dir.mkdir(parents=True, exist_ok=True)
        trace.save(traces_dir / unit.key)
    return {"key": unit.key, "image_id": unit.image_id, "method": unit.method, "prompt": unit.prompt,
            "text": trace.caption, "tokens": trace.num_steps, "finish": trace.meta.get("finish_reason"),
            "seconds": seconds}


class Stopped(Exception):
    """Raised after ``stop_after`` decodes: a deliberate interruption (tests, ``--stop-after``)."""


@dataclass
class RunStats:
    decoded: int = 0
    reused: int = 0
    seconds: float = 0.0


def run_plan(loaded, plan: Plan, out: Path, rank: int = 0, world: int = 1, batch: str = "columns",
             progress: bool = True, stop_after: int | None = None, batch_images: int = 1) -> RunStats:
    """Decode this rank's missing units and append them to its cache file, ``batch_images`` images at a time
    (``batch="images"``: their units as rows of shared batches; each finished group fsync'd)."""
    done = read_cache(out)
    if plan.traces is not None:  # --save-traces: a decode whose trace is missing is not done
        done = {k: r for k, r in done.items() if (plan.traces / f"{k}.npz").exists()}
    order = list(dict.fromkeys(u.image_id for u in plan.units.values()))
    mine = [image_id for i, image_id in enumerate(order) if i % world == rank]
    by_image: dict[str, list[Unit]] = {}
    for unit in plan.units.values():
        by_image.setdefault(unit.image_id, []).append(unit)
    stats = RunStats()
    writer = CacheWriter(out, rank)
    t0 = time.perf_counter()
    try:
        step = max(1, batch_images) if batch == "images" else 1
        bar = tqdm(total=len(mine), desc=f"decoding (rank {rank}/{world})", disable=not progress or rank != 0,
                   unit="image")
        for start in range(0, len(mine), step):
            chunk = mine[start:start + step]
            pending = [u for image_id in chunk for u in by_image[image_id] if u.key not in done]
            stats.reused += sum(len(by_image[i]) for i in chunk) - len(pending)
            if pending:
                records = decode_group(loaded, plan, pending, batch)
                writer.append(records)
                stats.decoded += len(records)
            bar.update(len(chunk))
            if stop_after is not None and stats.decoded >= stop_after:
                raise Stopped(f"stopped after {stats.decoded} decodes")
        bar.close()
    finally:
        writer.close()
        stats.seconds = time.perf_counter() - t0
    return stats


# ---- processes ------------------------------------------------------------------------------------

@dataclass
class Processes:
    rank: int
    world: int
    local_rank: int
    group: bool  # a torch.distributed group was started here

    def barrier(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def share(self, value):
        """Rank 0's ``value`` on every rank (a picklable object through the gloo group)."""
        if not self.group:
            return value
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()


def start_processes() -> Processes:
    """This process's rank from torchrun's / accelerate's environment; a gloo group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world <= 1:
        return Processes(0, 1, 0, False)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Processes(rank, world, local, True)


def device_for(processes: Processes):
    """cuda:LOCAL_RANK when GPUs exist (one device per rank), else the CPU; None: the loader's default."""
    import torch

    if torch.cuda.is_available():
        return torch.device(f"cuda:{processes.local_rank % torch.cuda.device_count()}")
    return torch.device("cpu") if processes.world > 1 else None
