"""Reading a toy scene's objects back from its pixels, so an uploaded toy scene gets its exact
ground truth (not the last example's) without any file beside it.

The generator paints every glyph in one flat colour (its class colour, or for a faint glyph that
colour mixed towards the background) over a noisy background, and draws each class at most once.
So a glyph is a run of identically coloured pixels far from the background, and its class is the
one whose background-to-colour line passes through that colour. This reads the generator's own
PNGs exactly (tested on held-out, broken-pair and control scenes); a resized or recompressed copy
has no flat colours left and is not read (the caller then leaves the ground truth empty).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from halviz.toy.scenes import CLASS_BY_NAME, CLASSES, IMAGE_SIZE, WorldConfig, looks_like_toy_scene

# A glyph's smallest drawn area: the faint partners are 10 px boxes, and the thinnest glyph (the
# knife) still paints well over this; background noise rarely repeats one exact colour this often.
MIN_GLYPH_PIXELS = 12
# How far (RGB distance) a flat colour may sit from its class's background-to-colour line: the
# generator rounds the mix to whole values and the background estimate is a median of noise.
MAX_RESIDUAL = 12.0
MIN_MIX = 0.25  # faint glyphs are mixed at 0.35–0.6 of their colour; below this is background


def locate_objects(image: Image.Image, world: WorldConfig = WorldConfig()) -> dict[str, tuple[int, int, int, int]] | None:
    """Each recognised object's pixel box (x0, y0, x1, y1 inclusive), or None as ``recognise_scene``."""
    names = recognise_scene(image, world)
    if names is None:
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    boxes = {}
    for name in names:
        line = np.array(CLASS_BY_NAME[name].rgb, dtype=float) - background
        offset = pixels - background
        mix = np.clip(offset @ line / (line ** 2).sum(), 0.0, 1.0)
        residual = np.linalg.norm(offset - mix[..., None] * line, axis=-1)
        far = np.abs(offset).max(axis=-1) > world.noise + 4
        ys, xs = np.nonzero(far & (residual <= MAX_RESIDUAL) & (mix >= MIN_MIX))
        boxes[name] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return boxes


def recognise_scene(image: Image.Image, world: WorldConfig = WorldConfig()) -> list[str] | None:
    """The object names drawn in a toy scene at the generator's own size (96×96), in class order,
    or None when ``image`` is not such a scene (a photo, a resized or recompressed scene)."""
    if image.size != (IMAGE_SIZE, IMAGE_SIZE) or not looks_like_toy_scene(image, world):
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 3)
    background = np.median(pixels, axis=0)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    far = np.abs(colours - background).max(axis=1) > world.noise + 4
    flat = colours[far & (counts >= MIN_GLYPH_PIXELS)].astype(float) - background
    if len(flat) == 0:
        return []
    lines = np.array([c.rgb for c in CLASSES], dtype=float) - background  # (classes, 3)
    mix = np.clip(flat @ lines.T / (lines ** 2).sum(1), 0.0, 1.0)  # (colours, classes)
    residual = np.linalg.norm(flat[:, None, :] - mix[..., None] * lines[None], axis=-1)
    best = residual.argmin(axis=1)
    found = set()
    for row, cls in enumerate(best):
        if residual[row, cls] > MAX_RESIDUAL or mix[row, cls] < MIN_MIX:
            return None  # a flat colour that is no glyph of this world: not the generator's picture
        found.add(int(cls))
    return [CLASSES[i].name for i in sorted(found)]
