"""What an evaluation asks for, as units of the harness: CHAIR captions, POPE answers, OPOPE captions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from halviz.evaluation.harness import Plan
from halviz.evaluation.pope import PopeError, Question
from halviz.hallucination import extract_mentions


@dataclass
class ChairItem:
    image_id: str
    objects: frozenset[str]
    counts: dict[str, int] | None
    keys: dict[str, str] = field(default_factory=dict)  # method -> unit key


@dataclass
class PopeItem:
    split: str
    question: Question
    object: str | None  # the COCO object the question asks about (halviz's mention extraction)
    keys: dict[str, str] = field(default_factory=dict)  # method -> key of the answer
    caption_keys: dict[str, str] = field(default_factory=dict)  # method -> key of the description (OPOPE)


@dataclass
class Job:
    methods: list[str]
    benchmarks: list[str]
    plan: Plan
    chair: list[ChairItem] = field(default_factory=list)
    pope: dict[str, list[PopeItem]] = field(default_factory=dict)
    partner: str | None = None


def asked_object(question: Question) -> str | None:
    """The object a POPE question names: its known object, else the first COCO mention in its text."""
    source = question.object if question.object is not None else question.text
    mentions = extract_mentions(source)
    return mentions[0].canonical if mentions else None


def pope_prompt(question: Question, suffix: str) -> str:
    return question.text + suffix


def load_folder_image(folder: Path, name: str) -> Image.Image:
    path = Path(folder) / name
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise PopeError(f"{path}: the image of a POPE question is missing") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise PopeError(f"{path}: not a readable image ({exc})") from None


def build_job(plan: Plan, methods: Sequence[str], benchmarks: Sequence[str], *,
              chair_sample: Sequence[tuple[str, Image.Image, frozenset[str], dict[str, int] | None]] = (),
              partner: str | None = None, prompt: str, max_new_tokens: int,
              pope_splits: Mapping[str, Sequence[Question]] | None = None,
              pope_images: Mapping[str, Image.Image] | None = None, pope_folder: Path | None = None,
              pope_suffix: str = "", pope_max_new_tokens: int = 16) -> Job:
    """Units for every (sample, method) the benchmarks need; the plan dedupes identical decodes."""
    job = Job(list(methods), list(benchmarks), plan, partner=partner)
    if "chair" in benchmarks:
        for image_id, image, objects, counts in chair_sample:
            image_id = f"chair:{image_id}"
            plan.add_image(image_id, image)
            item = ChairItem(image_id.removeprefix("chair:"), objects, counts)
            for method in methods:
                item.keys[method] = plan.ask(image_id, method, prompt, max_new_tokens)
            job.chair.append(item)
    if "pope" in benchmarks or "opope" in benchmarks:
        for split, questions in (pope_splits or {}).items():
            items = []
            for q in questions:
                image_id = f"pope:{q.image}"
                if image_id not in plan.images:
                    image = (pope_images or {}).get(q.image)
                    if image is None:
                        if pope_folder is None:
                            raise PopeError(f"no image for POPE question {q.question_id} ({q.image}): give --images")
                        image = load_folder_image(pope_folder, q.image)
                    plan.add_image(image_id, image)
                item = PopeItem(split, q, asked_object(q))
                for method in methods:
                    if "pope" in benchmarks:
                        item.keys[method] = plan.ask(image_id, method, pope_prompt(q, pope_suffix), pope_max_new_tokens)
                    if "opope" in benchmarks:
                        item.caption_keys[method] = plan.ask(image_id, method, prompt, max_new_tokens)
                items.append(item)
            job.pope[split] = items
    return job


def job_summary(job: Job) -> dict[str, Any]:
    return {"chair_images": len(job.chair), "pope_questions": {s: len(v) for s, v in job.pope.items()},
            "decodes": len(job.plan.units), "images": len(job.plan.images)}
