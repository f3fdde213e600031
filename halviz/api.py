"""The notebook face of halviz: :func:`compare` returns a :class:`Comparison` with everything on it.

``halviz.compare(image, methods=["vanilla", "vcd"])`` runs the same code path as the web app's
``/compare`` (``session/service.py``: the same checks, the same batched decode, the same labelling),
so for the same inputs its captions and labels are the app's. Each column carries its caption, the
distinct objects per label, its finish reason, the ``/compare`` summary and its :class:`~halviz.trace.Trace`
(token strings, ground truth, the model's public name: everything the debugger draws). Every
debugger panel is a function of that trace in :mod:`halviz.viz`; :func:`halviz.export` writes a
figure to PNG, SVG or PDF.
"""

from __future__ import annotations

import html
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from halviz.hallucination import GroundTruth
from halviz.session import checks
from halviz.session.results import UPDATE_EVERY_S, ColumnResult
from halviz.session.state import RunEntry, download_stem
from halviz.trace import Trace

DEFAULT_MODEL = "toy"
_lock = threading.Lock()
_shared = None  # the process's CompareService: its model cache outlives one call
_threads_chosen = False


@dataclass
class Column:
    """One column of a comparison: one method's caption, its labelled mentions and its trace."""

    method: str  # the method's registry name ("vanilla", "vcd", ...)
    title: str  # its title, as the app's column header shows it
    result: ColumnResult  # what the app's caption card shows (spans, counts, loop, divergence)
    entry: RunEntry | None  # the trace with its picture and ground truth; None until the first checkpoint

    @property
    def caption(self) -> str:
        return self.result.caption

    @property
    def correct(self) -> list[str]:
        """Distinct objects mentioned and in the ground truth (canonical COCO names, first mention first)."""
        return list(self.result.objects["correct"])

    @property
    def hallucinated(self) -> list[str]:
        """Distinct objects mentioned but not in the ground truth."""
        return list(self.result.objects["hallucinated"])

    @property
    def unverified(self) -> list[str]:
        """Distinct objects mentioned that the ground truth cannot judge (all of them without one)."""
        return list(self.result.objects["unverified"])

    @property
    def finish_reason(self) -> str:
        """``eos``, ``length``, ``running``, or ``error: ...`` for a method that raised."""
        return self.result.finish or "running"

    @property
    def error(self) -> str | None:
        return self.result.error

    @property
    def trace(self) -> Trace | None:
        """The recorded trace (None while streaming, before the first checkpoint, or if the column
        failed before it recorded anything)."""
        return self.entry.trace if self.entry is not None else None

    @property
    def summary(self) -> dict[str, Any]:
        """The dict ``/compare``'s JSON holds for this column."""
        return self.result.summary_json()

    @property
    def spans(self) -> list[tuple[str, str | None]]:
        """The caption cut into ``(text, label)`` pieces, as the app highlights it."""
        return list(self.result.spans)

    def __repr__(self) -> str:
        return (f"Column({self.method!r}, caption={self.caption!r}, hallucinated={self.hallucinated!r}, "
                f"finish_reason={self.finish_reason!r})")


class Comparison(Mapping[str, Column]):
    """The columns of one comparison, by method name (``comparison["vcd"]``), by column title or by
    position; iterating gives the method names. ``finished`` is true on the last comparison of a
    stream (and on the plain call's), whose traces are complete."""

    def __init__(self, columns: Sequence[Column], *, model: str, prompt: str, image: Image.Image,
                 truth: GroundTruth | None, unknown: Sequence[str] = (), notice: str = "",
                 max_new_tokens: int = 0, finished: bool = True, image_budget: str = "default"):
        self.columns = list(columns)
        self.image_budget = image_budget  # the image-token budget the model's processor applied
        self.finished = finished  # false on every streamed comparison but the last
        self.model = model  # the model's public name (never a server path)
        self.prompt = prompt
        self.image = image  # the picture as the model saw it (RGB, large ones shrunk as the app does)
        self.truth = truth
        self.unknown = list(unknown)  # ground-truth words that are not COCO object names, ignored
        self.notice = notice
        self.max_new_tokens = max_new_tokens

    def __getitem__(self, key: str | int) -> Column:
        if isinstance(key, int):
            return self.columns[key]
        for column in self.columns:
            if key in (column.method, column.title):
                return column
        raise KeyError(f"{key!r}: this comparison has {', '.join(c.method for c in self.columns)}")

    def __iter__(self) -> Iterator[str]:
        return iter([c.method for c in self.columns])

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def ground_truth(self) -> list[str] | None:
        """The objects the labels were checked against (None: no ground truth, all unverified)."""
        return sorted(self.truth.objects) if self.truth is not None else None

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """``{method: summary}``: the JSON ``/compare`` returns last."""
        return {c.method: c.summary for c in self.columns}

    @property
    def traces(self) -> dict[str, Trace]:
        return {c.method: c.trace for c in self.columns if c.trace is not None}

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write every column's trace as ``.npz`` + ``.json`` into ``folder`` (created if needed),
        named as the app's downloads are (``halviz-MODEL-METHOD-TIME``); returns the paths written.
        :func:`load_trace` reads one back, and the app's "Open a trace" replays it."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        paths: list[Path] = []
        for column in self.columns:
            if column.entry is not None:
                paths += column.entry.trace.save(target / download_stem(column.entry, stamp))
        return paths

    def __repr__(self) -> str:
        lines = [f"Comparison of {len(self)} column(s) on {self.model}, prompt {self.prompt!r}, "
                 f"ground truth {self.ground_truth}"]
        lines += [f"  {c.method}: {c.caption!r} (hallucinated {c.hallucinated}, {c.finish_reason})"
                  for c in self.columns]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colours = {"correct": "#15803d", "hallucinated": "#dc2626", "unverified": "#6b7280"}
        rows = []
        for c in self.columns:
            text = "".join(html.escape(t) if label not in colours else
                           f"<b style='color:{colours[label]}'>{html.escape(t)}</b>" for t, label in c.spans)
            rows.append(f"<tr><td>{html.escape(c.title)}</td><td style='text-align:left'>{text}</td>"
                        f"<td>{html.escape(', '.join(c.hallucinated))}</td><td>{html.escape(c.finish_reason)}</td></tr>")
        truth = html.escape(", ".join(self.ground_truth)) if self.ground_truth is not None else "none"
        return (f"<p>{html.escape(self.model)} · ground truth: {truth}</p><table><tr><th>method</th><th>caption "
                "(<span style='color:#15803d'>correct</span>, <span style='color:#dc2626'>hallucinated</span>, "
                "<span style='color:#6b7280'>unverified</span>)</th><th>hallucinated</th><th>finish</th></tr>"
                + "".join(rows) + "</table>")


def compare(image, prompt: str | None = None, methods: Sequence[str] | str = ("vanilla",), model=DEFAULT_MODEL,
            max_new_tokens: int = 64, ground_truth: Iterable[str] | None = None,
            params: Mapping[str, Mapping[str, Any]] | None = None,
            stream: bool = False, image_budget: str | None = None) -> Comparison | Iterator[Comparison]:
    """Caption ``image`` with each of ``methods`` (decoded together, as rows of one batch) and label
    every object mention against the ground truth, exactly as the app's ``/compare`` does.

    - ``image``: a file path, a PIL image or a numpy array (H×W×3 uint8; floats in 0–1 are scaled).
    - ``prompt``: None for the app's default, "Please describe this image in detail."
    - ``methods``: registry names (``halviz.REGISTRY``); columns come in registry order, as in the app.
      A stack of methods decoded together in one column is ``"prunehal+vhr"`` or ``("prunehal", "vhr")``
      (stacked in registry order; stacks come after the single methods; ``comparison["prunehal+vhr"]``
      or by its title, ``comparison["PruneHal + VHR"]``). ``/compare`` takes the same names.
    - ``model``: ``"toy"`` (the bundled toy LLaVA), a hub id, a local model folder, or a model from
      :func:`halviz.load_model`. Loaded models stay cached (two at most) between calls.
    - ``ground_truth``: a list of object names; None takes the picture's own list the way the app
      fills its ground-truth box (a bundled example's list, found by the file's bytes, or a toy
      scene's objects read from its pixels; nothing for other pictures: every mention is then
      "unverified"); ``[]`` means no ground truth. A list naming the same objects as the picture's
      own list keeps that list's source and trust (and a toy scene's known counts).
    - ``params``: knob values per method, ``{"vcd": {"alpha": 1.0}}``, the same mapping as
      ``/compare``'s settings JSON; knobs left out take the model's stored defaults, else the papers'.
    - ``image_budget``: how many image tokens the picture becomes, one of the model family's budgets
      (SmolVLM ``"global"``, ``"2x2"``, ``"3x3"``; Qwen2.5-VL ``"64"``, ``"256"``; LLaVA-OneVision
      ``"anyres_max_1"``, ``"anyres_max_4"``), ``"min"`` (the cheapest) or ``"default"`` (the checkpoint's
      own); None: the cheapest on a CPU, the checkpoint's own on a GPU. Fixed-resolution families
      (LLaVA-1.5, LLaVA-interleave, the toy) take ``"default"``/``"min"`` only. Also accepted in
      ``params`` as ``{"image": {"budget": ...}}``, as ``/compare``'s settings JSON takes it.
    - ``stream``: return an iterator of the growing comparison instead (about ten a second, as the
      app streams; traces appear at checkpoints and on the last one, whose ``finished`` is true).

    The app's limits apply (at most 512 new tokens, 1024 tokens over all columns). Bad inputs raise
    :class:`halviz.session.checks.InputError` (a ``ValueError``) with the app's sentence; a model
    that cannot load raises :class:`halviz.session.service.ModelUnavailable`. A method that fails
    mid-decode ends its column with ``finish_reason`` ``"error: ..."``, as in the app.
    """
    from halviz.models.families.base import DEFAULT_PROMPT
    from halviz.session.service import NEVER

    service, key = _service(model)
    request = service.check(_image_source(image), DEFAULT_PROMPT if prompt is None else prompt,
                            methods, max_new_tokens, _truth_text(ground_truth), key, params or {}, own_truth=True,
                            image_budget=image_budget)
    loaded = service.load(request.model)
    service.check_for_model(request, loaded)
    if request.notice:
        warnings.warn(re.sub(r"\*\*|⚠ ?", "", request.notice), stacklevel=2)
    from halviz.models.loading import public_name

    run = _columns(service, request, public_name(loaded.name), UPDATE_EVERY_S if stream else NEVER)
    if stream:
        return run
    comparison = None
    for comparison in run:
        pass
    assert comparison is not None  # decode_rounds always yields its last progress
    return comparison


def _columns(service, request, model_name: str, update_every_s: float) -> Iterator[Comparison]:
    entries: dict[str, RunEntry] = {}
    shown = None  # held back one update, so that the last one can say it is the last
    for progress in service.decode_request(request, update_every_s):
        if shown is not None:
            yield shown
        results = service.column_results(request, progress)
        if progress.traces is not None:
            entries = service.entries(request, progress.traces)
        columns = [Column(r.method, r.title, r, entries.get(r.method)) for r in results]
        shown = Comparison(columns, model=model_name, prompt=request.prompt, image=request.image.image,
                           truth=request.truth.truth, unknown=request.truth.unknown, notice=request.notice,
                           max_new_tokens=request.max_new_tokens, finished=False,
                           image_budget=request.image_budget or "default")
    if shown is not None:
        shown.finished = True
        yield shown


def load_trace(path: str | os.PathLike) -> Trace:
    """A trace saved by :meth:`Comparison.save` or downloaded from the app (``.npz``; the ``.json``
    beside it names the same trace). Its ground truth: ``halviz.session.state.truth_from_meta(trace.meta)``."""
    return Trace.load(path)


def _service(model):
    """The service for ``model`` and the key to ask it for: the shared one for a name, a private one
    around a model the caller loaded (``halviz.load_model``)."""
    global _shared
    from halviz.methods import REGISTRY
    from halviz.models.loading import LoadedModel, load_model
    from halviz.session.examples import load_examples
    from halviz.session.service import AnyModel, CompareService

    if isinstance(model, LoadedModel):
        service = CompareService([], model.name, lambda _key: model, load_examples(), REGISTRY,
                                 policy=AnyModel((), True))
        return service, model.name
    if not isinstance(model, (str, os.PathLike)):
        raise checks.InputError("model must be a name (\"toy\", a hub id, a folder) or a model from halviz.load_model.")
    _choose_threads()
    with _lock:
        if _shared is None:
            _shared = CompareService([], DEFAULT_MODEL, load_model, load_examples(), REGISTRY,
                                     policy=AnyModel((), True))
    return _shared, os.fspath(model)


def _choose_threads() -> None:
    """On the first comparison of the process, lower torch's thread count from its default (one per
    core, which oversubscribes a shared machine) to halviz's (``$OMP_NUM_THREADS``, else half the
    cores; halviz/threads.py). A count the caller set with ``torch.set_num_threads`` is kept."""
    global _threads_chosen
    with _lock:
        if _threads_chosen:
            return
        _threads_chosen = True
    import torch

    from halviz.threads import default_threads, usable_cores

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() == usable_cores():
        torch.set_num_threads(default_threads())


def _image_source(image):
    """What ``checks.load_image`` takes: a path as text, a PIL image as it is, an array as a PIL image."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {os.fspath(image)!r}.")
        return str(path)
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
                raise checks.InputError("An image array must hold finite numbers (uint8 0–255, or floats 0–1).")
            array = np.clip(array * (255.0 if array.max(initial=0) <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise checks.InputError(f"An image array must be H×W, H×W×3 or H×W×4, not {array.shape}.")
        return Image.fromarray(array)
    raise checks.InputError(f"image must be a file path, a PIL image or a numpy array, not {type(image).__name__}.")


def _truth_text(ground_truth) -> str | None:
    """The ground-truth box's text for a list of names (None stays None: the picture's own list)."""
    if ground_truth is None:
        return None
    if isinstance(ground_truth, str):  # "cat, cup" works as the box's text does
        return ground_truth
    names = list(ground_truth)
    if not all(isinstance(n, str) for n in names):
        raise checks.InputError("ground_truth must be a list of object names, such as ['cat', 'cup'].")
    return ", ".join(n.strip() for n in names if n.strip())
