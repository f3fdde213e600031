"""Seeded procedural scenes: 96×96 images of 2–5 glyph objects with their exact object lists.

Every class is a distinct shape in a distinct colour and carries a COCO category name, so a
caption's object mentions can be checked against the scene exactly. A few (trigger, partner)
pairs co-occur on purpose (the partner is present ~90% of the time when its trigger is, and
sometimes drawn small and faint) so that a model trained on this world picks up a language prior
that names the partner even when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive pixel bounds of the drawn glyph
RGB = tuple[int, int, int]
Seedish = int | np.random.Generator

IMAGE_SIZE = 96


@dataclass(frozen=True)
class GlyphClass:
    name: str  # exact COCO category name
    colour: str  # colour word used in captions
    rgb: RGB
    draw: Callable[[ImageDraw.ImageDraw, Box], None]  # draws the shape in fill=255 on a mask


# ---- glyph shapes: each draws into box (x0, y0, x1, y1) on an "L" mask with value 255 ----

def _cup(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    body_right = x0 + int(0.72 * w)
    d.polygon([(x0, y0 + h * 0.15), (body_right, y0 + h * 0.15),
               (body_right - w * 0.1, y1), (x0 + w * 0.1, y1)], fill=255)
    d.arc([body_right - w * 0.2, y0 + h * 0.3, x1, y0 + h * 0.75], -90, 90, fill=255,
          width=max(2, w // 8))


def _bowl(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    h = y1 - y0
    d.pieslice([x0, y0 - h * 0.6, x1, y1], 0, 180, fill=255)


def _spoon(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.ellipse([x0 + w * 0.15, y0, x1 - w * 0.15, y0 + h * 0.45], fill=255)
    cx = (x0 + x1) / 2
    d.rectangle([cx - max(1, w * 0.08), y0 + h * 0.4, cx + max(1, w * 0.08), y1], fill=255)


def _banana(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.arc([x0, y0 - h * 0.8, x1, y1], 20, 160, fill=255, width=max(3, h // 3))


def _apple(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.ellipse([x0, y0 + h * 0.2, x1, y1], fill=255)
    cx = (x0 + x1) / 2
    d.rectangle([cx - 1, y0, cx + 1, y0 + h * 0.25], fill=255)


def _bottle(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle([x0 + w * 0.2, y0 + h * 0.35, x1 - w * 0.2, y1], fill=255)
    d.rectangle([x0 + w * 0.4, y0, x1 - w * 0.4, y0 + h * 0.4], fill=255)


def _fork(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    t = max(1, round(w * 0.08))
    d.rectangle([cx - t, y0 + h * 0.4, cx + t, y1], fill=255)
    d.rectangle([x0 + w * 0.15, y0 + h * 0.35, x1 - w * 0.15, y0 + h * 0.45], fill=255)
    for px in (x0 + w * 0.15, cx - t, x1 - w * 0.15 - 2 * t):
        d.rectangle([px, y0, px + 2 * t, y0 + h * 0.45], fill=255)


def _car(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle([x0, y0 + h * 0.4, x1, y0 + h * 0.8], fill=255)
    d.rectangle([x0 + w * 0.25, y0 + h * 0.1, x1 - w * 0.25, y0 + h * 0.45], fill=255)
    r = h * 0.18
    for wx in (x0 + w * 0.25, x1 - w * 0.25):
        d.ellipse([wx - r, y1 - 2 * r, wx + r, y1], fill=255)


def _bird(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    lw = max(2, w // 7)
    d.line([(x0, y0 + h * 0.2), (cx, y0 + h * 0.7)], fill=255, width=lw)
    d.line([(cx, y0 + h * 0.7), (x1, y0 + h * 0.2)], fill=255, width=lw)
    d.ellipse([cx - w * 0.12, y0 + h * 0.55, cx + w * 0.12, y1], fill=255)


def _umbrella(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.pieslice([x0, y0, x1, y0 + h * 0.9], 180, 360, fill=255)
    cx = (x0 + x1) / 2
    d.rectangle([cx - 1, y0 + h * 0.4, cx + 1, y1], fill=255)


def _kite(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = x0 + w * 0.45
    d.polygon([(cx, y0), (x0 + w * 0.9, y0 + h * 0.35), (cx, y0 + h * 0.75),
               (x0, y0 + h * 0.35)], fill=255)
    d.line([(cx, y0 + h * 0.75), (x1, y1)], fill=255, width=1)


def _vase(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0 + w * 0.3, y0), (x1 - w * 0.3, y0), (x1 - w * 0.35, y0 + h * 0.2),
               (x1, y0 + h * 0.6), (x1 - w * 0.25, y1), (x0 + w * 0.25, y1),
               (x0, y0 + h * 0.6), (x0 + w * 0.35, y0 + h * 0.2)], fill=255)


def _boat(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.polygon([(x0, y0 + h * 0.65), (x1, y0 + h * 0.65), (x1 - w * 0.2, y1),
               (x0 + w * 0.2, y1)], fill=255)
    cx = (x0 + x1) / 2
    d.polygon([(cx, y0), (cx, y0 + h * 0.6), (x0 + w * 0.1, y0 + h * 0.6)], fill=255)
    d.rectangle([cx, y0, cx + 1, y0 + h * 0.65], fill=255)


def _book(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    h = y1 - y0
    d.rectangle([x0, y0 + h * 0.2, x1, y1 - h * 0.2], fill=255)


def _knife(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    d.polygon([(cx, y0), (cx + w * 0.2, y0 + h * 0.2), (cx + w * 0.2, y0 + h * 0.62),
               (cx - w * 0.2, y0 + h * 0.62)], fill=255)
    d.rectangle([cx - w * 0.12, y0 + h * 0.62, cx + w * 0.12, y1], fill=255)


def _clock(d: ImageDraw.ImageDraw, b: Box) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse([x0, y0, x1, y1], outline=255, width=max(2, w // 8))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    d.line([(cx, cy), (cx, y0 + w * 0.25)], fill=255, width=2)
    d.line([(cx, cy), (x1 - w * 0.3, cy)], fill=255, width=2)


CLASSES: tuple[GlyphClass, ...] = (
    GlyphClass("cup", "red", (215, 35, 35), _cup),
    GlyphClass("bowl", "amber", (240, 125, 0), _bowl),  # not "orange": that is a COCO object
    GlyphClass("spoon", "yellow", (225, 185, 0), _spoon),
    GlyphClass("banana", "olive", (125, 130, 0), _banana),
    GlyphClass("apple", "green", (30, 150, 50), _apple),
    GlyphClass("bottle", "teal", (0, 110, 110), _bottle),
    GlyphClass("fork", "cyan", (0, 190, 225), _fork),
    GlyphClass("car", "blue", (40, 90, 240), _car),
    GlyphClass("bird", "navy", (20, 25, 110), _bird),
    GlyphClass("umbrella", "purple", (130, 40, 185), _umbrella),
    GlyphClass("kite", "magenta", (225, 0, 160), _kite),
    GlyphClass("vase", "pink", (250, 150, 200), _vase),
    GlyphClass("boat", "brown", (125, 75, 25), _boat),
    GlyphClass("book", "maroon", (105, 0, 35), _book),
    GlyphClass("knife", "gray", (115, 115, 120), _knife),
    GlyphClass("clock", "black", (15, 15, 15), _clock),
)
CLASS_BY_NAME: dict[str, GlyphClass] = {c.name: c for c in CLASSES}
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)

# (trigger, partner): the partner follows its trigger in training far more often than chance.
PRIOR_PAIRS: tuple[tuple[str, str], ...] = (("knife", "fork"), ("cup", "spoon"), ("boat", "bird"))


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the scene distribution; the defaults are the training distribution."""

    min_objects: int = 2
    max_objects: int = 5
    min_size: int = 14
    max_size: int = 28
    small_below: int = 20  # glyphs whose longer side is below this are captioned "small"
    partner_rate: float = 0.9  # P(partner present | trigger present)
    faint_rate: float = 0.35  # P(partner drawn small and faint | both present)
    faint_size: tuple[int, int] = (10, 14)
    faint_strength: tuple[float, float] = (0.35, 0.6)  # colour mix towards the background
    faint_any_rate: float = 0.0  # P(any object drawn small and faint); the vision stage's decorrelated world
    background: RGB = (212, 208, 198)
    background_jitter: int = 10
    noise: int = 6
    pairs: tuple[tuple[str, str], ...] = PRIOR_PAIRS


@dataclass(frozen=True)
class SceneObject:
    name: str
    box: Box  # tight bounds of the drawn pixels, inclusive
    colour: str  # the class colour word
    size: str  # "small" or "big"
    rgb: RGB  # the exact colour drawn (faint objects are mixed towards the background)
    faint: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {o.name for o in self.objects}


def _rng(seed: Seedish) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _choose_classes(rng: np.random.Generator, world: WorldConfig, n_objects: int | None,
                    include: Sequence[str], exclude: Sequence[str],
                    apply_prior: bool) -> list[str]:
    k = n_objects or int(rng.integers(world.min_objects, world.max_objects + 1))
    k = max(k, len(include))
    chosen = list(include)
    pool = [c for c in CLASS_NAMES if c not in chosen and c not in exclude]
    chosen += [str(c) for c in rng.choice(pool, size=k - len(chosen), replace=False)]
    if not apply_prior:
        return chosen
    for trigger, partner in world.pairs:
        if trigger not in chosen or partner in chosen or partner in exclude:
            continue
        if rng.random() >= world.partner_rate:
            continue
        protected = set(include) | {t for t, _ in world.pairs if t in chosen}
        if len(chosen) < world.max_objects:
            chosen.append(partner)
        else:
            replaceable = [i for i, c in enumerate(chosen) if c not in protected]
            if replaceable:
                chosen[int(rng.choice(replaceable))] = partner
    # Partners already chosen by chance but whose trigger is absent stay; the pair skew only
    # ever adds a partner to its trigger.
    return chosen


def _place(rng: np.random.Generator, sizes: list[int], margin: int = 3,
           tries: int = 400) -> list[Box] | None:
    boxes: list[Box] = []
    for s in sizes:
        for _ in range(tries):
            w = s
            h = s
            x0 = int(rng.integers(2, IMAGE_SIZE - 2 - w))
            y0 = int(rng.integers(2, IMAGE_SIZE - 2 - h))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            if all(box[0] > b[2] + margin or box[2] < b[0] - margin or
                   box[1] > b[3] + margin or box[3] < b[1] - margin for b in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def generate_scene(seed: Seedish, world: WorldConfig = WorldConfig(), *,
                   n_objects: int | None = None, include: Sequence[str] = (),
                   exclude: Sequence[str] = (), apply_prior: bool = True) -> Scene:
    """One scene. `include`/`exclude` force classes in or out (for held-out probe sets);
    `apply_prior=False` draws classes uniformly, without the pair co-occurrence skew."""
    rng = _rng(seed)
    names = _choose_classes(rng, world, n_objects, include, exclude, apply_prior)
    partners_with_trigger = {p for t, p in world.pairs if t in names and p in names}
    faint = [(n in partners_with_trigger and rng.random() < world.faint_rate)
             or (world.faint_any_rate > 0 and rng.random() < world.faint_any_rate) for n in names]

    bg = np.array(world.background) + rng.integers(-world.background_jitter,
                                                   world.background_jitter + 1, size=3)
    pixels = bg[None, None, :] + rng.integers(-world.noise, world.noise + 1,
                                              size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    canvas = np.clip(pixels, 0, 255).astype(np.uint8)

    for _ in range(20):
        sizes = [int(rng.integers(world.faint_size[0], world.faint_size[1] + 1)) if f else
                 int(rng.integers(world.min_size, world.max_size + 1)) for f in faint]
        boxes = _place(rng, sizes)
        if boxes is not None:
            break
        world = replace(world, max_size=max(world.min_size, world.max_size - 2))
    else:  # pragma: no cover - 5 glyphs of ≤ 28 px always fit in 96×96 within a few tries
        raise RuntimeError("could not place the scene's objects")

    objects: list[SceneObject] = []
    for name, box, is_faint in zip(names, boxes, faint):
        cls = CLASS_BY_NAME[name]
        mask_img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        cls.draw(ImageDraw.Draw(mask_img), box)
        mask = np.asarray(mask_img) > 0
        rgb = np.array(cls.rgb, dtype=float)
        if is_faint:
            strength = rng.uniform(*world.faint_strength)
            rgb = strength * rgb + (1 - strength) * bg
        rgb_t: RGB = tuple(int(round(v)) for v in np.clip(rgb, 0, 255))  # type: ignore[assignment]
        canvas[mask] = rgb_t
        ys, xs = np.nonzero(mask)
        tight: Box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        longer = max(tight[2] - tight[0], tight[3] - tight[1]) + 1
        objects.append(SceneObject(name=name, box=tight, colour=cls.colour,
                                   size="small" if longer < world.small_below else "big",
                                   rgb=rgb_t, faint=is_faint))
    return Scene(image=Image.fromarray(canvas, "RGB"), objects=objects)


# ---- named held-out sets (seeds far from the training stream, which uses small seeds) ----

HELDOUT_SEED = 1_000_003


def heldout(n: int, seed: int = HELDOUT_SEED, world: WorldConfig = WorldConfig()) -> list[Scene]:
    """Scenes from the training distribution, from a seed stream training never uses."""
    rng = np.random.default_rng([seed, 0])
    return [generate_scene(rng, world) for _ in range(n)]


def _pair_index(pair: tuple[str, str], world: WorldConfig) -> int:
    if tuple(pair) not in world.pairs:
        raise ValueError(f"{pair} is not one of the prior pairs {world.pairs}")
    return world.pairs.index(tuple(pair))  # type: ignore[arg-type]


def broken_pair(pair: tuple[str, str], n: int, seed: int = HELDOUT_SEED,
                world: WorldConfig = WorldConfig()) -> list[Scene]:
    """Trigger present, partner absent: a partner mention is a prior-driven hallucination."""
    trigger, partner = pair
    rng = np.random.default_rng([seed, 1, _pair_index(pair, world)])
    return [generate_scene(rng, world, include=(trigger,), exclude=(partner,)) for _ in range(n)]


def control(pair: tuple[str, str], n: int, seed: int = HELDOUT_SEED,
            world: WorldConfig = WorldConfig()) -> list[Scene]:
    """Neither trigger nor partner present: the base rate of naming the partner."""
    trigger, partner = pair
    rng = np.random.default_rng([seed, 2, _pair_index(pair, world)])
    return [generate_scene(rng, world, exclude=(trigger, partner)) for _ in range(n)]


# ---- recognising the toy world (the app warns when a toy model is shown anything else) ----

def looks_like_toy_scene(image: Image.Image, world: WorldConfig = WorldConfig()) -> bool:
    """True when `image` looks drawn by `generate_scene`: square, mostly the world's noisy
    background, and the rest glyph colours (possibly mixed towards the background, as faint glyphs
    and resized edges are). Photos fail on the background test alone."""
    width, height = image.size
    if min(width, height) < 16 or abs(width - height) > 0.05 * max(width, height):
        return False
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=float).reshape(-1, 3)
    tolerance = world.background_jitter + world.noise + 4
    bg = np.median(pixels, axis=0)
    if np.abs(bg - np.array(world.background)).max() > tolerance:
        return False
    is_bg = np.abs(pixels - bg).max(axis=1) <= world.noise + 4
    if is_bg.mean() < 0.5:
        return False
    rest = pixels[~is_bg] - bg  # (n, 3) offsets from the background
    if len(rest) == 0:
        return True
    colours = np.array([c.rgb for c in CLASSES], dtype=float) - bg  # (16, 3)
    # Best mix s·colour + (1−s)·background per class; residual distance of the pixel to that line.
    s = np.clip(rest @ colours.T / (colours ** 2).sum(1), 0.0, 1.0)  # (n, 16)
    residual = np.linalg.norm(rest[:, None, :] - s[..., None] * colours[None], axis=-1).min(axis=1)
    return bool((residual <= 3 * world.noise + 6).mean() >= 0.9)
