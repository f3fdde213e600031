"""From a results folder's sample to the debugger: which samples a method changed against the baseline,
and each one's picture, ground truth and decode settings, opened as a :class:`halviz.api.Comparison`.

Gradio-free: the Python API (:meth:`halviz.evaluation.results.Results.open`) and the app's Evaluation
view (``ui/evaluation_view.py``) share it. A sample is *fixed* by a method when the baseline got it
wrong and the method right, *broken* for the reverse, *changed* when the method's text differs from
the baseline's (whatever the verdict). "Right" is CHAIR's "no hallucinated object" for a caption and
"the parsed answer equals the label" for a POPE or OPOPE question: the same outcome McNemar's test in
``results.json`` counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("fixed", "broken", "changed")
BENCHMARKS = ("chair", "pope", "opope")
TOY_TRUTH_SOURCE = "the toy scene's exact objects (regenerated from the evaluation's seed)"
ANNOTATION_SOURCE = "the evaluation's annotation file (recorded in samples.jsonl)"
_INDEX = re.compile(r"-(\d+)$")


class OpenError(ValueError):
    """A sample cannot be opened; the message says why and what would make it open."""


@dataclass(frozen=True)
class Pair:
    """One sample as the baseline and another method answered it."""

    kind: str  # fixed, broken or changed
    baseline: Mapping[str, Any]  # the baseline's line of samples.jsonl
    other: Mapping[str, Any]  # the method's line

    @property
    def method(self) -> str:
        return self.other["method"]

    @property
    def benchmark(self) -> str:
        return self.other["benchmark"]

    @property
    def image_id(self) -> str:
        return str(self.other["image_id"])

    @property
    def sample_id(self) -> str:
        """The image (CHAIR) or ``split/question`` (POPE, OPOPE) this pair is about."""
        line = self.other
        return str(line["image_id"]) if line["benchmark"] == "chair" else f"{line['split']}/{line['question_id']}"

    def describe(self) -> str:
        """One line for a list: what was asked and what each side said."""
        b, o = self.baseline, self.other
        if self.benchmark == "chair":
            said = (f"{b['method']} hallucinated {', '.join(b['hallucinated']) or 'nothing'}; "
                    f"{o['method']} {', '.join(o['hallucinated']) or 'nothing'}")
        else:
            said = f"label {o['label']}: {b['method']} {b['parsed']}, {o['method']} {o['parsed']}"
        image = f" (image {self.image_id})" if self.image_id != self.sample_id else ""
        return f"{self.benchmark.upper()} {self.sample_id}{image} · {said}"


def is_right(line: Mapping[str, Any]) -> bool:
    return not line["hallucinated"] if line["benchmark"] == "chair" else line["parsed"] == line["label"]


def text_of(line: Mapping[str, Any]) -> str:
    return line["caption"] if line["benchmark"] == "chair" else line["answer"]


def _ident(line: Mapping[str, Any]) -> tuple:
    if line["benchmark"] == "chair":
        return ("chair", None, str(line["image_id"]))
    return (line["benchmark"], line.get("split"), str(line["question_id"]))


def _kind_of(baseline: Mapping[str, Any], other: Mapping[str, Any], kind: str) -> bool:
    if kind == "fixed":
        return is_right(other) and not is_right(baseline)
    if kind == "broken":
        return is_right(baseline) and not is_right(other)
    return text_of(other) != text_of(baseline)


def discordant_pairs(samples: Iterable[Mapping[str, Any]], baseline: str, method: str, kind: str,
                     benchmark: str | None = None, split: str | None = None) -> list[Pair]:
    """Every sample of ``benchmark`` (all when None; ``split`` narrows POPE/OPOPE) that ``method``
    fixed, broke or changed against ``baseline``, in samples.jsonl's order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, not {benchmark!r}")
    chosen = [s for s in samples if (benchmark is None or s["benchmark"] == benchmark)
              and (split is None or s.get("split") == split)]
    base = {_ident(s): s for s in chosen if s["method"] == baseline}
    return [Pair(kind, base[_ident(s)], s) for s in chosen
            if s["method"] == method and _ident(s) in base and _kind_of(base[_ident(s)], s, kind)]


def pair_of(samples: Iterable[Mapping[str, Any]], baseline: str, line: Mapping[str, Any], method: str | None) -> Pair:
    """The pair of a sample line (the baseline's or another method's) and ``method``'s line of the same sample."""
    lines = list(samples)
    target = method or line["method"]
    if target == baseline:
        raise OpenError(f"{baseline} is the baseline; name the method to compare it with")
    found = {s["method"]: s for s in lines if _ident(s) == _ident(line)}
    if baseline not in found or target not in found:
        missing = baseline if baseline not in found else target
        raise OpenError(f"this results folder has no {missing} line for sample {_ident(line)[2]}")
    kinds = [k for k in KINDS[:2] if _kind_of(found[baseline], found[target], k)]
    return Pair(kinds[0] if kinds else "changed", found[baseline], found[target])


# ---- what to decode: prompt, tokens, stacks, picture, ground truth ---------------------------------

@dataclass
class Setting:
    """How the evaluation decoded one sample: what :func:`halviz.session.decoding` needs to do it again."""

    model: str
    prompt: str
    max_new_tokens: int
    system: str | None
    stacks: dict[str, list[tuple[str, dict[str, Any]]]]  # method -> [(registry name, knobs)], as recorded


def setting(config: Mapping[str, Any], pair: Pair) -> Setting:
    line = pair.other
    pope = line["benchmark"] == "pope"
    prompt = line.get("prompt") or (None if pope else config.get("prompt"))
    if not prompt:
        raise OpenError("this results folder does not record the POPE question's text (made before halviz "
                        "wrote it); run the evaluation again, or with --save-traces")
    tokens = (config.get("pope") or {}).get("max_new_tokens") if pope else config.get("max_new_tokens")
    stacks = {}
    for method in (pair.baseline["method"], pair.method):
        described = (config.get("methods") or {}).get(method)
        if not isinstance(described, list):
            raise OpenError(f"results.json does not record the settings of {method}")
        stacks[method] = [(str(m["name"]), dict(m.get("params") or {})) for m in described]
    return Setting(str(config.get("model") or "toy"), str(prompt), int(tokens or 64), config.get("system"), stacks)


def toy_scene_of(config: Mapping[str, Any], line: Mapping[str, Any], cache: dict):
    """The toy scene a sample was decoded on, regenerated from the recorded seed (None for real images)."""
    source = str(config.get("images") or "")
    if not source.startswith("toy:"):
        return None
    match = _INDEX.search(str(line["image_id"]))
    if match is None:
        return None
    seed = int(config.get("seed") or 0)
    if line["benchmark"] == "chair":
        spec, n = source.removeprefix("toy:"), int(config.get("n") or 0)
        if ("chair", spec, n, seed) not in cache:
            from halviz.eval import toy_sample  # the scenes `halviz eval` drew, in its order

            cache[("chair", spec, n, seed)] = {i: (image, objects, counts)
                                               for i, image, objects, counts in toy_sample(spec, n, seed)[0]}
        return cache[("chair", spec, n, seed)].get(str(line["image_id"]))
    n = int((config.get("pope") or {}).get("n_images") or 0)
    if ("pope", n, seed) not in cache:
        from collections import Counter

        from halviz.evaluation.pope import toy_scenes

        cache[("pope", n, seed)] = {i: (s.image, frozenset(s.names), dict(Counter(o.name for o in s.objects)))
                                    for i, s in toy_scenes(n, seed).items()}
    return cache[("pope", n, seed)].get(str(line["image_id"]))


def ground_truth(config: Mapping[str, Any], line: Mapping[str, Any], cache: dict):
    """The sample's ground truth for the caption cards' labels: the toy scene's exact objects, else the
    annotation's list recorded on a CHAIR line; None where unknown (every mention "unverified")."""
    from halviz.hallucination import GroundTruth

    scene = toy_scene_of(config, line, cache)
    if scene is not None:
        return GroundTruth(scene[1], TOY_TRUTH_SOURCE, "exact", scene[2])
    if isinstance(line.get("truth"), list):
        return GroundTruth(frozenset(map(str, line["truth"])), ANNOTATION_SOURCE, "annotation", line.get("counts"))
    return None


def comparison_from_traces(traces: Mapping[str, Any], methods: Sequence[str], *, image, truth, model: str,
                           prompt: str, max_new_tokens: int, notice: str = ""):
    """A :class:`halviz.api.Comparison` of finished traces (saved or just decoded), labelled against
    ``truth`` as the app's caption cards are; each column after the first diffed against the first."""
    from halviz.api import Column, Comparison
    from halviz.methods import REGISTRY
    from halviz.session.results import column_result, with_divergence
    from halviz.session.state import RunEntry, display_copy, truth_to_meta

    picture = display_copy(image) if image is not None else None
    results, tokens, columns = [], [], []
    for method in methods:
        trace = traces[method]
        trace.meta["ground_truth"] = truth_to_meta(truth)  # a saved copy replays with these labels
        title = " + ".join(REGISTRY[m].title or m if m in REGISTRY else m for m in method.split("+"))
        results.append(column_result(method, title, trace.texts, recorded_compute_s(trace),
                                     trace.meta.get("finish_reason"), truth))
        tokens.append([int(t) for t in trace.arrays.get("token_ids", [])])
    results = with_divergence(results, tokens)
    for method, result in zip(methods, results):
        entry = RunEntry(method, result.title, traces[method], picture, truth, image, model)
        columns.append(Column(method, result.title, result, entry))
    return Comparison(columns, model=model, prompt=prompt, image=image, truth=truth, notice=notice,
                      max_new_tokens=max_new_tokens)


def differs_from_recorded(pair: Pair, traces: Mapping[str, Any]) -> list[str]:
    """The methods whose decoded text is not the one the evaluation recorded (a different device,
    dtype or batch composition can change a float32 decode)."""
    return [line["method"] for line in (pair.baseline, pair.other) if traces[line["method"]].caption != text_of(line)]


def recorded_compute_s(trace) -> float | None:
    """The live card's ``compute_s`` from the trace's own step times: its tokens × the mean decode
    round (step 0 is the prefill, left out as the live card leaves it out); None without two steps."""
    step_ms = trace.arrays.get("step_ms")
    if step_ms is None or len(step_ms) < 2:
        return None
    return len(step_ms) * float(step_ms[1:].astype("float64").mean()) / 1e3
