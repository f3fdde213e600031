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
correct, hallucinated) and per question × method (``"pope"``/``"opope"``: split, question_id,
image_id, method, answer, parsed, label), in the job's order; ``key`` names the decode (its cache
line, and with ``--save-traces`` its trace ``traces/KEY.npz``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                samples.append({"benchmark": "chair", "image_id": item.image_id, "method": method, "caption": caption,
                                "correct": sorted(set(per.mentions) & item.objects),
                                "hallucinated": sorted(set(per.hallucinated)), "key": item.keys[method]})
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


@dataclass
class Results:
    """A results folder read back: the table, the per-sample lines, and what changed against the baseline."""

    folder: Path
    data: dict[str, Any]
    samples: list[dict[str, Any]]

    @classmethod
    def load(cls, folder: Path) -> "Results":
        folder = Path(folder)
        data = json.loads((folder / RESULTS).read_text(encoding="utf-8"))
        with open(folder / SAMPLES, encoding="utf-8") as handle:
            samples = [json.loads(line) for line in handle if line.strip()]
        return cls(folder, data, samples)

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def baseline(self) -> str:
        return self.data["baseline"]

    def trace(self, sample: dict[str, Any]):
        """The saved trace of a sample line (``--save-traces``), as a :class:`~halviz.trace.Trace`."""
        from halviz.trace import Trace

        return Trace.load(self.folder / "traces" / f"{sample['key']}.npz")

    def discordant(self, method: str, benchmark: str = "chair", split: str | None = None) -> dict[str, list[dict]]:
        """Samples ``method`` fixed (baseline wrong, method right) and broke (the reverse) against the baseline.
        CHAIR: "right" = no hallucinated object; POPE/OPOPE: the parsed answer equals the label."""
        def ok(line):
            return not line["hallucinated"] if benchmark == "chair" else line["parsed"] == line["label"]

        def ident(line):
            return line["image_id"] if benchmark == "chair" else (line["split"], line["question_id"])

        lines = [s for s in self.samples if s["benchmark"] == benchmark and (split is None or s.get("split") == split)]
        base = {ident(s): s for s in lines if s["method"] == self.baseline}
        fixed, broken = [], []
        for s in lines:
            if s["method"] != method or ident(s) not in base:
                continue
            b = base[ident(s)]
            if ok(s) and not ok(b):
                fixed.append({"baseline": b, "method": s})
            elif ok(b) and not ok(s):
                broken.append({"baseline": b, "method": s})
        return {"fixed": fixed, "broken": broken}
