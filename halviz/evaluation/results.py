"""Scoring a finished job into ``results.json`` and ``samples.jsonl``, and reading them back.

``results.json``::

    {"config": {every setting, "halviz_version"}, "baseline": METHOD,
     "chair": {"n", "methods": {M: {metric: {"value", "ci": [lo, hi]}, "over_counted", "partner_rate"?}},
               "vs_baseline": {M: {"mcnemar": {"only_base", "only_other", "p"}, "diff": {metric: {"diff", "ci"}}}}},
     "pope"/"opope": {SPLIT: {"n", "parser", "methods": {M: {metric: {"value", "ci"}, "parsers": {P: {metric: value}},
                                                          "disagree_with_official": {P: count}}},
                              "vs_baseline": {M: {...}}}},
     "timing": {M: {"tokens", "seconds", "ms_per_token"}}}

Metrics are fractions (tables multiply by 100; CHAIR's Len is in words). Intervals are seeded 95 %
percentile bootstraps over images (CHAIR) or questions (POPE). McNemar: CHAIR on "the caption
hallucinates", POPE on "the answer is right"; ``diff`` = method − baseline on the same resamples.
``timing`` is kept apart: it is the only part that differs between identical runs.

``samples.jsonl``: one line per image × method (``benchmark: "chair"``: image_id, method, caption,
correct, hallucinated, truth, counts on toy scenes) and per question × method (``"pope"``/``"opope"``:
split, question_id, image_id, method, answer, parsed, label), in the job's order; ``key`` names the
decode (its cache line, and with ``--save-traces`` its trace ``traces/KEY.npz``) and ``prompt`` the
text it answered. :class:`Results` reads a folder back, lists the samples a method changed against
the baseline and opens one as a :class:`~halviz.api.Comparison` (``evaluation/opening.py``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from halviz.chair import write_json_atomically
from halviz.evaluation.jobs import Job
from halviz.evaluation.parsers import DEFAULT_PARSER, PARSERS, disagreements, parse
from halviz.evaluation.pope import write_jsonl
from halviz.evaluation.stats import (CHAIR_METRICS, DEFAULT_BOOTSTRAP, POPE_METRICS, estimate, mcnemar,
                                     paired_difference, pope_components)
from halviz.hallucination import chair_metrics, extract_mentions

RESULTS = "results.json"
SAMPLES = "samples.jsonl"


def halviz_version() -> str:
    """The checkout's commit (``git describe``), or "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _chair_components(result, truths) -> dict[str, np.ndarray]:
    rows = result.per_caption
    return {
        "hallucinates": np.array([bool(c.hallucinated) for c in rows]),
        "hallucinated_mentions": np.array([len(c.hallucinated) for c in rows]),
        "mentions": np.array([len(c.mentions) for c in rows]),
        "distinct_correct": np.array([len(set(c.mentions) & t) for c, t in zip(rows, truths)]),
        "distinct_mentioned": np.array([len(set(c.mentions)) for c in rows]),
        "truth": np.array([len(t) for t in truths]),
        "words": np.array([c.words for c in rows]),
        "loops": np.array([c.loop is not None for c in rows]),
        "repetition": np.array([c.repetition for c in rows]),
    }


def _vs_baseline(base_components, components, metrics, base_binary, binary, n_boot, seed) -> dict[str, Any]:
    return {"mcnemar": mcnemar(base_binary, binary),
            "diff": paired_difference(base_components, components, metrics, n_boot, seed)}


def score_job(job: Job, records: dict[str, dict[str, Any]], parser: str = DEFAULT_PARSER,
              n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results without config, samples) from the finished records of every unit of ``job``."""
    missing = [k for k in job.plan.units if k not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} decodes of this job are not finished")
    text = {k: records[k]["text"] for k in job.plan.units}
    base = job.methods[0]
    out: dict[str, Any] = {"baseline": base}
    samples: list[dict[str, Any]] = []
    if job.chair:
        truths = [item.objects for item in job.chair]
        counts = [item.counts for item in job.chair]
        section: dict[str, Any] = {"n": len(job.chair), "methods": {}, "vs_baseline": {}}
        comps = {}
        for method in job.methods:
            captions = [text[item.keys[method]] for item in job.chair]
            result = chair_metrics(captions, truths, counts)
            comps[method] = _chair_components(result, truths)
            row = estimate(comps[method], CHAIR_METRICS, n_boot, seed)
            for name in CHAIR_METRICS:  # the point values are chair_metrics' own (the old table's figures)
                row[name]["value"] = float(getattr(result, name))
            row["over_counted"] = result.over_counted
            if job.partner is not None:
                row["partner_rate"] = sum(any(m.canonical == job.partner for m in extract_mentions(c))
                                          for c in captions) / len(captions)
            section["methods"][method] = row
            for item, caption, per in zip(job.chair, captions, result.per_caption):
                line = {"benchmark": "chair", "image_id": item.image_id, "method": method, "caption": caption,
                        "correct": sorted(set(per.mentions) & item.objects),
                        "hallucinated": sorted(set(per.hallucinated)), "key": item.keys[method],
                        "prompt": records[item.keys[method]].get("prompt"), "truth": sorted(item.objects)}
                if item.counts is not None:  # the toy's exact counts: the debugger checks over-counting with them
                    line["counts"] = dict(sorted(item.counts.items()))
                samples.append(line)
        for method in job.methods[1:]:
            section["vs_baseline"][method] = _vs_baseline(comps[base], comps[method], CHAIR_METRICS,
                                                          comps[base]["hallucinates"], comps[method]["hallucinates"],
                                                          n_boot, seed)
        out["chair"] = section
    for bench in ("pope", "opope"):
        if bench not in job.benchmarks or not job.pope:
            continue
        out[bench] = {}
        for split, items in job.pope.items():
            labels = [item.question.label for item in items]
            section = {"n": len(items), "parser": parser if bench == "pope" else "mentioned-in-caption",
                       "methods": {}, "vs_baseline": {}}
            comps, correct = {}, {}
            for method in job.methods:
                if bench == "pope":
                    answers = [text[item.keys[method]] for item in items]
                    parsed = [parse(parser, a, l) for a, l in zip(answers, labels)]
                else:
                    answers = [text[item.caption_keys[method]] for item in items]
                    parsed = ["yes" if item.object is not None and any(
                        m.canonical == item.object for m in extract_mentions(a)) else "no"
                        for item, a in zip(items, answers)]
                comps[method] = pope_components(parsed, labels)
                correct[method] = comps[method]["correct"]
                row = estimate(comps[method], POPE_METRICS, n_boot, seed)
                if bench == "pope":
                    row["parsers"] = {}
                    for other in PARSERS:
                        readings = [parse(other, a, l) for a, l in zip(answers, labels)]
                        point = estimate(pope_components(readings, labels), POPE_METRICS, 0, seed)
                        row["parsers"][other] = {k: v["value"] for k, v in point.items()}
                    row["disagree_with_official"] = disagreements(answers, labels)
                section["methods"][method] = row
                for item, a, p in zip(items, answers, parsed):
                    line = {"benchmark": bench, "split": split, "question_id": item.question.question_id,
                            "image_id": item.question.image, "method": method, "answer": a, "parsed": p,
                            "label": item.question.label,
                            "key": (item.keys if bench == "pope" else item.caption_keys)[method]}
                    line["prompt"] = records[line["key"]].get("prompt")  # what to decode again without traces
                    if bench == "opope":
                        line["object"] = item.object
                    samples.append(line)
            for method in job.methods[1:]:
                section["vs_baseline"][method] = _vs_baseline(comps[base], comps[method], POPE_METRICS,
                                                              correct[base], correct[method], n_boot, seed)
            out[bench][split] = section
    timing = {}
    for method in job.methods:
        keys = {k for k, u in job.plan.units.items() if u.method == method}
        tokens = sum(records[k]["tokens"] for k in keys)
        seconds = sum(records[k]["seconds"] for k in keys)
        timing[method] = {"tokens": tokens, "seconds": seconds, "ms_per_token": 1e3 * seconds / max(tokens, 1)}
    out["timing"] = timing
    return out, samples


def write_results(out_dir: Path, config: dict[str, Any], scored: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / SAMPLES, samples)
    write_json_atomically(out_dir / RESULTS, {"config": config, **scored})


def legacy_rows(scored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The old ``halviz.eval --json`` rows (fractions) from the CHAIR section, timing added."""
    rows = {}
    for method, row in scored.get("chair", {}).get("methods", {}).items():
        flat = {k: row[k]["value"] for k in CHAIR_METRICS}
        flat.update(over_counted=row["over_counted"], ms_per_token=scored["timing"][method]["ms_per_token"],
                    captions=scored["chair"]["n"])
        if "partner_rate" in row:
            flat["partner_rate"] = row["partner_rate"]
        rows[method] = flat
    return rows


def _ci(row, key, scale=100.0) -> str:
    value, (lo, hi) = row[key]["value"], row[key]["ci"]
    return f"{scale * value:.1f} [{scale * lo:.1f},{scale * hi:.1f}]"


def format_intervals(scored: dict[str, Any]) -> str:
    """Every section's table with its 95 % intervals and the paired McNemar p against the baseline."""
    lines = []
    base = scored["baseline"]
    if "chair" in scored:
        s = scored["chair"]
        lines.append(f"CHAIR, n={s['n']} images, 95% bootstrap intervals, McNemar p on 'hallucinates' vs {base}:")
        lines.append(f"{'method':<14}{'CHAIR_s':>20}{'CHAIR_i':>20}{'Recall':>20}{'F1':>20}{'p':>8}")
        for m, row in s["methods"].items():
            p = s["vs_baseline"].get(m, {}).get("mcnemar", {}).get("p")
            lines.append(f"{m:<14}" + "".join(f"{_ci(row, k):>20}" for k in ("chair_s", "chair_i", "recall", "f1"))
                         + (f"{p:8.3f}" if p is not None else f"{'-':>8}"))
    for bench in ("pope", "opope"):
        for split, s in scored.get(bench, {}).items():
            name = "POPE" if bench == "pope" else "OPOPE (yes iff the object is mentioned in the description)"
            lines.append(f"{name} {split}, n={s['n']} questions, parser {s['parser']}, McNemar p on 'right' vs {base}:")
            head = f"{'method':<14}{'Acc':>20}{'Prec':>8}{'Rec':>8}{'F1':>20}{'Yes%':>8}{'p':>8}"
            lines.append(head + (f"{'differ v/h/e':>14}" if bench == "pope" else ""))
            for m, row in s["methods"].items():
                p = s["vs_baseline"].get(m, {}).get("mcnemar", {}).get("p")
                line = (f"{m:<14}{_ci(row, 'accuracy'):>20}{100 * row['precision']['value']:8.1f}"
                        f"{100 * row['recall']['value']:8.1f}{_ci(row, 'f1'):>20}{100 * row['yes_ratio']['value']:8.1f}"
                        + (f"{p:8.3f}" if p is not None else f"{'-':>8}"))
                if bench == "pope":
                    d = row["disagree_with_official"]
                    line += f"{d.get('vcd', 0):>6}/{d.get('halc', 0)}/{d.get('exact', 0)}"
                lines.append(line)
    return "\n".join(lines)


def table_rows(scored: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark (and POPE split) and method: its metrics (``{"value", "ci"}``), the paired
    McNemar p against the baseline and the differences with their intervals (None for the baseline)."""
    rows = []
    sections = [("chair", None, scored["chair"])] if "chair" in scored else []
    sections += [(bench, split, s) for bench in ("pope", "opope") for split, s in scored.get(bench, {}).items()]
    for bench, split, section in sections:
        metrics = CHAIR_METRICS if bench == "chair" else POPE_METRICS
        for method, row in section["methods"].items():
            against = section["vs_baseline"].get(method)
            rows.append({"benchmark": bench, "split": split, "n": section["n"], "method": method,
                         **{k: row[k] for k in metrics if k in row},
                         "p": against["mcnemar"]["p"] if against else None,
                         "diff": against["diff"] if against else None})
    return rows


class ResultsError(ValueError):
    """A results folder that cannot be read; the message names the file and what is wrong."""


def _trace_in(folder: Path):
    def read(key: str):
        from halviz.trace import Trace

        path = folder / "traces" / f"{key}.npz"
        return Trace.load(path) if path.is_file() else None
    return read


@dataclass
class Results:
    """A results folder read back: the table, the per-sample lines, what changed against the baseline,
    and each changed sample opened as a :class:`~halviz.api.Comparison` (``halviz.open_results(DIR)``)."""

    folder: Path | None
    data: dict[str, Any]
    samples: list[dict[str, Any]]
    # key -> the saved trace, or None; the app passes one that checks untrusted files first
    read_trace: Callable[[str], Any] | None = None
    local_images: bool = True  # may read the recorded images folder (the app says no: not its files to open)
    _scenes: dict = field(default_factory=dict, repr=False)  # toy scenes regenerated once per folder

    @classmethod
    def load(cls, folder: str | Path) -> "Results":
        folder = Path(folder)
        try:
            data = json.loads((folder / RESULTS).read_text(encoding="utf-8"))
            with open(folder / SAMPLES, encoding="utf-8") as handle:
                samples = [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError as exc:
            raise ResultsError(f"{folder}: no {Path(exc.filename).name} here; give the folder `halviz eval --out` "
                               "wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{folder}: results.json or samples.jsonl is not readable ({exc})") from None
        return cls(folder, data, samples, _trace_in(folder))

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def baseline(self) -> str:
        return self.data["baseline"]

    @property
    def methods(self) -> list[str]:
        """Every method, the baseline first (the evaluation's order)."""
        return list(dict.fromkeys(s["method"] for s in self.samples)) or [self.baseline]

    @property
    def benchmarks(self) -> list[str]:
        return [b for b in ("chair", "pope", "opope") if b in self.data]

    @property
    def table(self) -> str:
        """Every section's table with its 95 % intervals and McNemar p, as ``halviz eval`` prints it."""
        return format_intervals(self.data)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return table_rows(self.data)

    def trace(self, sample: dict[str, Any]):
        """The saved trace of a sample line (``--save-traces``), as a :class:`~halviz.trace.Trace`; None if not saved."""
        reader = self.read_trace or (_trace_in(self.folder) if self.folder is not None else None)
        return reader(sample["key"]) if reader is not None else None

    def discordant(self, method: str, kind: str | None = None, benchmark: str | None = None,
                   split: str | None = None):
        """The samples ``method`` fixed (baseline wrong, method right), broke (the reverse) or changed
        (its caption or answer differs) against the baseline, as :class:`~halviz.evaluation.opening.Pair`
        s. ``kind`` None: ``{"fixed": [...], "broken": [...], "changed": [...]}``. CHAIR: "right" = no
        hallucinated object; POPE/OPOPE: the parsed answer equals the label. ``benchmark`` None: all."""
        from halviz.evaluation.opening import KINDS, discordant_pairs

        if method not in self.methods:
            raise ValueError(f"{method!r} is not a method of this evaluation ({', '.join(self.methods)})")
        if kind is None:
            return {k: discordant_pairs(self.samples, self.baseline, method, k, benchmark, split) for k in KINDS}
        return discordant_pairs(self.samples, self.baseline, method, kind, benchmark, split)

    def open(self, sample, method: str | None = None, *, model=None, decode: bool | None = None):
        """``sample`` (a pair from :meth:`discordant`, or a line of :attr:`samples`) as a comparison of the
        baseline and ``method`` (default: the pair's or the line's) on its image: replayed from the saved
        traces when both are there (no model needed), else decoded again with the recorded settings (model,
        prompt, max tokens, knobs, system message; ``model`` overrides the recorded one, e.g. a
        ``halviz.load_model`` result). ``decode=False`` refuses to decode, ``True`` always decodes."""
        from halviz.evaluation import opening

        pair = sample if isinstance(sample, opening.Pair) and method in (None, sample.method) else \
            opening.pair_of(self.samples, self.baseline, sample.other if isinstance(sample, opening.Pair) else sample,
                            method)
        methods = [self.baseline, pair.method]
        lines = {self.baseline: pair.baseline, pair.method: pair.other}
        truth = opening.ground_truth(self.config, pair.other, self._scenes)
        image = self.picture(pair)
        traces = {} if decode else {m: self.trace(lines[m]) for m in methods}
        if all(traces.get(m) is not None for m in methods):
            prompt = str(traces[pair.method].meta.get("prompt", ""))
            return opening.comparison_from_traces(traces, methods, image=image, truth=truth,
                                                  model=str(traces[pair.method].meta.get("model", "")), prompt=prompt,
                                                  max_new_tokens=int(traces[pair.method].meta.get("max_new_tokens", 0)),
                                                  notice="replayed from the saved traces")
        if decode is False:
            raise opening.OpenError("the traces of this sample were not saved (run `halviz eval` with "
                                    "--save-traces) and decoding was refused")
        if image is None:
            raise opening.OpenError(f"the picture {pair.image_id} is not on this machine (the evaluation read it "
                                    f"from {self.config.get('images')}) and its traces were not saved")
        return _decode_pair(self.config, pair, image, truth, model)

    def picture(self, pair):
        """The sample's picture: a toy scene regenerated from the seed, else the file in the recorded
        images folder if it is on this machine; None otherwise."""
        from halviz.evaluation import opening

        scene = opening.toy_scene_of(self.config, pair.other, self._scenes)
        if scene is not None:
            return scene[0]
        folder = self.config.get("images")
        if not self.local_images or not folder or str(folder).startswith("toy:"):
            return None
        path = Path(folder) / pair.image_id
        try:
            from PIL import Image

            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError):
            return None


def _decode_pair(config, pair, image, truth, model):
    """The pair's two columns decoded again as rows of one batch, through the service the app and
    ``halviz.compare`` share (its model cache, the ZeroGPU-safe decode call)."""
    from halviz import api
    from halviz.evaluation import opening
    from halviz.session.service import NEVER

    plan = opening.setting(config, pair)
    service, key = api._service(model if model is not None else plan.model)
    loaded = service.load(key)
    methods = [pair.baseline["method"], pair.method]
    last = None
    for last in service.decode_stacks(key, np.asarray(image.convert("RGB")), plan.prompt,
                                      [plan.stacks[m] for m in methods], plan.max_new_tokens, NEVER,
                                      system=plan.system):
        pass
    if last is None or last.traces is None or any(t is None for t in last.traces):
        errors = [f for f in (last.finish if last else []) if f and f.startswith("error")]
        raise opening.OpenError(f"decoding this sample failed: {'; '.join(errors) or 'no trace came back'}")
    traces = dict(zip(methods, last.traces))
    differs = opening.differs_from_recorded(pair, traces)
    notice = "decoded again with the recorded settings" + (
        f"; {', '.join(differs)} now {'differ' if len(differs) > 1 else 'differs'} from the recorded text" if differs else "")
    from halviz.models.loading import public_name

    return opening.comparison_from_traces(traces, methods, image=image, truth=truth, model=public_name(loaded.name),
                                          prompt=plan.prompt, max_new_tokens=plan.max_new_tokens, notice=notice)


def open_results(folder: str | Path) -> Results:
    """A results folder ``halviz eval --out DIR`` wrote, read back (see :class:`Results`)."""
    return Results.load(folder)
