"""Results folders the app may open: those under the folder the operator allows (``halviz app
--results-dir DIR`` or ``$HALVIZ_RESULTS_DIR``), or one uploaded as a zip. Nothing else is read.

Both are untrusted input, bounded as uploaded traces are (``checks.check_trace_upload``): results.json
and samples.jsonl have size and line limits and must have the shape ``halviz eval`` writes; a sample's
``key`` must be a SHA-256 hex digest before it names a file, so ``traces/KEY.npz`` can never leave the
folder; a trace is checked before numpy opens it. A zip is read member by member, never extracted
whole: its names may not climb out (``..``, absolute paths), its members' declared and real sizes are
capped (a zip bomb stops at the cap), and one trace at a time is copied out to a temporary file for the
checks and the replay. Every refusal is an :class:`~halviz.session.checks.InputError` with a sentence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from halviz.evaluation.opening import BENCHMARKS
from halviz.evaluation.results import RESULTS, SAMPLES, Results
from halviz.session import checks
from halviz.session.checks import InputError

RESULTS_DIR_ENV = "HALVIZ_RESULTS_DIR"
MAX_RESULTS_BYTES = 16 * 2**20  # results.json: a few hundred KB for five methods × every benchmark
MAX_SAMPLES_BYTES = 64 * 2**20  # samples.jsonl: POPE's 9,000 questions × 5 methods ≈ 15 MB
MAX_SAMPLE_LINES = 200_000
MAX_ZIP_MEMBERS = 20_000  # two files a trace: 10,000 decodes
MAX_LISTED = 200  # folders listed under the allowed root
KEY = re.compile(r"^[0-9a-f]{64}$")
_NEEDS = {"chair": ("image_id", "caption", "hallucinated"), "pope": ("split", "question_id", "answer", "parsed", "label"),
          "opope": ("split", "question_id", "answer", "parsed", "label")}


@dataclass
class Opened:
    """A results folder the app opened: the results, a name to show, and ``saved(key)``, a context in
    which the sample's checked trace file is at hand (None when not saved)."""

    results: Results
    name: str
    saved: Callable[[str], AbstractContextManager[Path | None]]


def _reader(saved: Callable[[str], AbstractContextManager[Path | None]]) -> Callable[[str], Any]:
    def read(key: str):
        with saved(key) as path:
            return _checked_trace(path) if path is not None else None
    return read


def results_root(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder the operator allows (``$HALVIZ_RESULTS_DIR``), if it is one."""
    value = environ.get(RESULTS_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value and Path(value).expanduser().is_dir() else None


def listed_folders(root: Path | None) -> list[str]:
    """Results folders under ``root`` (itself, its children and grandchildren holding results.json),
    as paths relative to it; none that a link takes outside ``root``."""
    if root is None:
        return []
    found = []
    for depth in ("", "*", "*/*"):
        for candidate in sorted(root.glob(f"{depth}/{RESULTS}" if depth else RESULTS)):
            folder = candidate.parent
            if _inside(folder, root) and (folder / SAMPLES).is_file():
                found.append(folder.relative_to(root).as_posix() or ".")
            if len(found) >= MAX_LISTED:
                return found
    return found


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def open_listed(root: Path | None, name: Any) -> Opened:
    """The listed folder ``name`` (anything else is refused: the client may send any text)."""
    if root is None:
        raise InputError("This server allows no results folders; start it with `halviz app --results-dir DIR`, "
                         "or upload a zip of a results folder.")
    if not isinstance(name, str) or name not in listed_folders(root):
        raise InputError("Choose one of the listed results folders.")
    folder = (root / name).resolve()
    results = _parse(_read_file(folder / RESULTS, MAX_RESULTS_BYTES), _read_file(folder / SAMPLES, MAX_SAMPLES_BYTES),
                     name)
    saved = _folder_traces(folder, root)
    results.folder, results.read_trace = folder, _reader(saved)
    results.local_images = False  # the recorded images folder is not the operator's to open
    return Opened(results, name, saved)


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        raise InputError(f"{path.name} cannot be read on this server.") from None
    if len(data) > limit:
        raise InputError(f"{path.name} is larger than {limit >> 20} MB; this app opens smaller results folders.")
    return data


def _folder_traces(folder: Path, root: Path) -> Callable[[str], AbstractContextManager[Path | None]]:
    @contextmanager
    def saved(key: str) -> Iterator[Path | None]:
        path = folder / "traces" / f"{key}.npz"
        yield path if KEY.match(str(key)) and path.is_file() and _inside(path, root) else None
    return saved


def _checked_trace(path: Path):
    from halviz.trace import Trace, TraceFormatError

    try:
        checks.check_trace_upload(path)
        return Trace.load(path)
    except (InputError, TraceFormatError) as exc:
        raise InputError(f"A saved trace of this results folder cannot be opened: {exc}") from None


# ---- an uploaded zip ------------------------------------------------------------------------------

def open_zip(path: Any) -> Opened:
    """An uploaded zip of a results folder (results.json and samples.jsonl at its top or in one folder,
    traces/ beside them when the evaluation saved them)."""
    file = checks.image_path(path)
    if not file:
        raise InputError("Choose a .zip of a results folder to open.")
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise InputError(f"The zip has {len(members)} entries; the limit is {MAX_ZIP_MEMBERS}.")
            names = {}
            for member in members:
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or "\\" in member.filename or ".." in parts:
                    raise InputError(f"The zip names a file outside itself ({member.filename[:80]!r}); refused.")
                names[member.filename] = member
            prefix = _prefix(names)
            results = _parse(_read_member(archive, names[prefix + RESULTS], MAX_RESULTS_BYTES),
                             _read_member(archive, names[prefix + SAMPLES], MAX_SAMPLES_BYTES),
                             Path(str(file)).name)
    except InputError:
        raise
    except Exception:  # not a zip, damaged, encrypted...
        raise InputError("That file is not a readable zip of a results folder.") from None
    saved = _zip_traces(file, prefix)
    results.folder, results.read_trace = None, _reader(saved)
    results.local_images = False  # a zip's recorded images folder names a path on another machine
    return Opened(results, Path(str(file)).name, saved)


def _prefix(names: Mapping[str, zipfile.ZipInfo]) -> str:
    """Where results.json sits: at the top, or in exactly one folder."""
    tops = sorted(n[: -len(RESULTS)] for n in names if n == RESULTS or n.endswith("/" + RESULTS))
    tops = [t for t in tops if t.count("/") <= 1 and t + SAMPLES in names]
    if len(tops) != 1:
        raise InputError("The zip must hold one results folder: results.json and samples.jsonl (as "
                         "`halviz eval --out DIR` writes them), at its top or in one folder.")
    return tops[0]


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's bytes, stopping at ``limit`` whatever its header declares (a zip bomb ends there)."""
    if member.file_size > limit:
        raise InputError(f"{PurePosixPath(member.filename).name} would unpack to {member.file_size >> 20} MB; "
                         f"the limit is {limit >> 20} MB.")
    with archive.open(member) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{PurePosixPath(member.filename).name} unpacks past {limit >> 20} MB; refused.")
    return data


def _zip_traces(file: str, prefix: str) -> Callable[[str], AbstractContextManager[Path | None]]:
    @contextmanager
    def saved(key: str) -> Iterator[Path | None]:
        if not KEY.match(str(key)):
            yield None
            return
        with _zip_member_file(file, f"{prefix}traces/{key}.npz") as path:
            yield path
    return saved


@contextmanager
def _zip_member_file(file: str, name: str) -> Iterator[Path | None]:
    """One member copied out to a private temporary file (at most the trace limit), deleted afterwards."""
    try:
        archive = zipfile.ZipFile(file)
    except (OSError, zipfile.BadZipFile):
        raise InputError("The uploaded zip is gone from the server (uploads are kept an hour); upload it again.") from None
    folder = tempfile.mkdtemp(prefix="halviz-results-")
    try:
        with archive:
            try:
                member = archive.getinfo(name)
            except KeyError:
                yield None
                return
            target = Path(folder) / "trace.npz"
            target.write_bytes(_read_member(archive, member, checks.MAX_TRACE_UNPACKED_BYTES))
            yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- the two files' shape ---------------------------------------------------------------------------

def _parse(results_bytes: bytes, samples_bytes: bytes, name: str) -> Results:
    try:
        data = json.loads(results_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{name}: results.json is not JSON.") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("baseline"), str):
        raise InputError(f"{name}: results.json is not one `halviz eval --out` wrote (no config or baseline).")
    text = samples_bytes.decode("utf-8", errors="replace").splitlines()
    if len(text) > MAX_SAMPLE_LINES:
        raise InputError(f"{name}: samples.jsonl has {len(text)} lines; the limit is {MAX_SAMPLE_LINES}.")
    samples = []
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"{name}: line {number} of samples.jsonl is not JSON.") from None
        if not _well_formed(sample):
            raise InputError(f"{name}: line {number} of samples.jsonl is not a sample `halviz eval` writes.")
        samples.append(sample)
    if not samples:
        raise InputError(f"{name}: samples.jsonl holds no samples.")
    return Results(None, data, samples)


def _well_formed(sample: Any) -> bool:
    if not isinstance(sample, dict) or sample.get("benchmark") not in BENCHMARKS:
        return False
    if not isinstance(sample.get("method"), str) or not isinstance(sample.get("key"), str):
        return False
    if not all(k in sample for k in _NEEDS[sample["benchmark"]]) or "image_id" not in sample:
        return False
    if sample["benchmark"] == "chair":
        return isinstance(sample["caption"], str) and isinstance(sample["hallucinated"], list)
    return isinstance(sample["answer"], str)
