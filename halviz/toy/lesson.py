"""The attention-sink lesson's facts, read from the traces the class just decoded (no Gradio).

Four steps on the toy model's "knife without fork" scene: Greedy names a fork that is not there;
the sink panel at that word shows where the attention went; removing the sink shows what the model
does without it; hiding the knife's patches shows what triggered the fork. Every sentence that
states a number computes it from the trace shown, so a retrained toy model cannot make it lie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from halviz.toy.recognise import locate_objects
from halviz.trace import Trace

EXAMPLE_FILE = "toy-knife-no-fork.png"
TRIGGER, PARTNER = "knife", "fork"  # the scene holds the trigger; the learnt prior names the partner


@dataclass(frozen=True)
class LessonStep:
    title: str  # the button
    sentence: str  # what to do and where to look
    target: str  # the element id the page scrolls to


STEPS = (
    LessonStep("1 · See the fork hallucinated",
               "This scene holds a clock and a knife, and no fork. Press ▶ Compare: Greedy writes its caption; "
               "a mention in red is an object that is not in the scene.", "hv-run"),
    LessonStep("2 · Open the sink panel at the fork",
               "The debugger is open at the step that wrote “fork”. The attention-sink panel shows each layer's "
               "attention split between BOS (the first token), the image, the prompt and the caption.", "hv-shares"),
    LessonStep("3 · Remove the sink",
               "“Remove sink” decodes the same scene while no query may attend to BOS. Press ▶ Compare and read "
               "the whole caption, not only the fork: what does a model that parks its attention on BOS do "
               "without it?", "hv-run"),
    LessonStep("4 · Hide the knife's patches",
               "The patches that cover the knife are chosen on the map (blue outlines): the text may no longer "
               "read them. Press ↻ Re-run with this intervention: is the fork still named?", "hv-rerun"),
)


def step_naming(trace: Trace, word: str = PARTNER) -> int | None:
    """The step whose token holds the first letter of ``word``'s first occurrence in the caption (the
    step whose query began writing it), or None when the caption never names it."""
    found = "".join(trace.texts).lower().find(word.lower())
    if found == -1:
        return None
    end = 0
    for step, text in enumerate(trace.texts):
        end += len(text)
        if found < end:
            return step
    return None


def sink_sentence(trace: Trace, step: int) -> str:
    """Where the attention of the query at ``step`` went, from the recorded segment shares: BOS's and
    the image's share per layer, and the layers in which BOS takes more than half."""
    segments = list(trace.meta.get("segments") or [])
    if "segment_share" not in trace.arrays or "bos" not in segments or "image" not in segments:
        return "This trace has no recorded attention shares."
    shares = np.asarray(trace.arrays["segment_share"][step], dtype=np.float64)  # (layers, segments)
    bos, image = shares[:, segments.index("bos")], shares[:, segments.index("image")]
    per_layer = ", ".join(f"L{l} {b:.0%}" for l, b in enumerate(bos))
    sink_layers = [l for l, b in enumerate(bos) if b > 0.5]
    most = (f"BOS takes more than half of the attention in layer{'s' if len(sink_layers) > 1 else ''} "
            f"{', '.join(map(str, sink_layers))}" if sink_layers else "BOS takes less than half in every layer")
    return (f"At step {step} (“{trace.texts[step].strip()}”) BOS gets {per_layer} of the attention; {most}, "
            f"while the image gets {image.mean():.0%} on average over the layers. BOS carries no information "
            "about the scene: that is the attention sink.")


def patches_covering(trace: Trace, picture: Image.Image, name: str = TRIGGER) -> frozenset[tuple[int, int]]:
    """The (row, col) grid patches whose pixel boxes overlap object ``name`` in ``picture`` (the picture
    the trace was decoded on, at its own size), or an empty set when the object is not found."""
    boxes = locate_objects(picture)
    if not boxes or name not in boxes:
        return frozenset()
    x0, y0, x1, y1 = boxes[name]
    rows, cols = (int(v) for v in trace.meta["grid"])
    patch_boxes = np.asarray(trace.meta["patch_boxes"], dtype=np.float64)[: rows * cols]
    # A patch box is [left, top, right, bottom) in pixels; the object box is inclusive.
    hit = ((patch_boxes[:, 0] <= x1) & (patch_boxes[:, 2] > x0) & (patch_boxes[:, 1] <= y1) & (patch_boxes[:, 3] > y0))
    return frozenset((int(i) // cols, int(i) % cols) for i in np.flatnonzero(hit))
