"""Stage 1 of the toy recipe: the vision tower alone, per-patch classification on decorrelated scenes.

Objects are drawn independently of each other (no prior pairs) and any of them may be small and
faint, so the tower learns what each patch shows and nothing about what tends to appear together:
the co-occurrence prior is left to the decoder, where the decoding methods can reach it. The tower
is frozen afterwards, as LLaVA freezes its encoder.
"""

from __future__ import annotations

import numpy as np
import torch

from halviz.toy.scenes import CLASS_NAMES, IMAGE_SIZE, Scene, WorldConfig, generate_scene

# Independent placement and faint variants of every class.
DECORRELATED = WorldConfig(min_objects=1, max_objects=5, faint_any_rate=0.2)
NUM_PATCH_CLASSES = len(CLASS_NAMES) + 1  # 0 = background
MIN_PIXELS = 6  # a patch counts as showing an object when at least this many pixels are drawn in its colour


def patch_labels(scene: Scene, patch: int) -> np.ndarray:
    """(rows·cols,) class index + 1 of the object covering most of each patch (0: background).

    Glyphs are drawn in one exact colour on a noisy background, so the drawn pixels are found by
    colour equality (what tests/test_toy.py checks for every scene)."""
    pixels = np.asarray(scene.image).astype(np.int16)
    grid = IMAGE_SIZE // patch
    counts = np.zeros((len(scene.objects) + 1, grid, grid), dtype=np.int32)
    for i, obj in enumerate(scene.objects, start=1):
        drawn = np.all(pixels == np.array(obj.rgb, dtype=np.int16), axis=-1)
        counts[i] = drawn.reshape(grid, patch, grid, patch).sum((1, 3))
    counts[0] = MIN_PIXELS - 1  # background wins unless an object reaches MIN_PIXELS
    winner = counts.argmax(0)
    classes = np.array([0] + [CLASS_NAMES.index(o.name) + 1 for o in scene.objects])
    return classes[winner].reshape(-1)


class PatchHead(torch.nn.Module):
    """Reads the layer LLaVA feeds the projector (the last encoder layer, CLS dropped)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.out = torch.nn.Linear(hidden, NUM_PATCH_CLASSES)

    def forward(self, vision_tower, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
        return self.out(self.norm(hidden))


def vision_batch(rng: np.random.Generator, n: int, image_processor, patch: int):
    scenes = [generate_scene(rng, DECORRELATED, apply_prior=False) for _ in range(n)]
    pixels = image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"]
    labels = torch.from_numpy(np.stack([patch_labels(s, patch) for s in scenes]))
    return pixels, labels


def patch_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Patch accuracy and the accuracy on object patches only (most patches are background)."""
    pred = logits.argmax(-1)
    obj = labels > 0
    return {"patch_acc": round(float((pred == labels).float().mean()), 4),
            "object_patch_acc": round(float((pred[obj] == labels[obj]).float().mean()), 4) if obj.any() else None}
