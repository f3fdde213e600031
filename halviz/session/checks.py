"""Checks and conversions of everything a person (or an API client) sends, with messages for them.

Every function raises :class:`InputError` with a sentence meant for the user; the callbacks turn it
into ``gr.Error``. Nothing here touches Gradio, so it is tested directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from halviz.methods import REGISTRY, check_compatible
from halviz.methods.base import Method

MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 40_000_000  # our own per-call limit, checked from the header before decoding
# The most pixels any model's processor uses (LLaVA-OneVision's largest anyres canvas, 2304×2304; SmolVLM
# resizes to a 2048 longest edge, Qwen2.5-VL to at most 802,816 px from the aspect ratio alone, LLaVA-1.5 to
# 336): a larger upload is shrunk to this many pixels, aspect kept, before any conversion, and that copy is
# what the model sees and what a re-run decodes again.
MODEL_PIXELS = 2304 * 2304
MAX_PROMPT_CHARS = 1000  # a cheap first cut; the real limit is MAX_PROMPT_TOKENS of the chosen model
MAX_PROMPT_TOKENS = 256
MAX_NEW_TOKENS = 512
MAX_REQUEST_TOKENS = 1024  # new tokens × columns one request may decode (5 methods × 204, 2 × 512)
MAX_MODEL_NAME_CHARS = 300
MAX_SETTINGS_CHARS = 10_000
MAX_TRACE_UNPACKED_BYTES = 128 * 2**20  # an uploaded trace may expand to this much (LLaVA-7B × 512 steps ≈ 60 MB)
MAX_TRACE_MEMBERS = 512
DEFLATE_MAX_RATIO = 1032  # deflate never compresses better than this: a smaller PNG cannot hold its pixels
# Formats read, and how the message names them; anything else (EPS, PSD, ICO…) is refused unread.
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "AVIF": "AVIF", "GIF": "GIF",
                 "BMP": "BMP", "TIFF": "TIFF"}
# Special tokens of common chat formats, refused before any model is loaded; the chosen model's own
# special tokens are checked once its tokenizer is at hand (``check_prompt_tokens``).
GENERIC_SPECIAL_TOKENS = re.compile(r"</?(?:s|pad|unk|mask|image|video|bos|eos)>|<\|[^<>|\s]{1,64}\|>")


class InputError(ValueError):
    """Something the user sent cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True)
class ImageInput:
    image: Image.Image  # RGB
    name: str
    digest: str  # sha1 of the file's bytes: recognises the bundled examples
    note: str = ""  # what was converted, if anything


def image_path(source: Any) -> str | None:
    """The file path inside whatever Gradio or gradio_client handed over (FileData dict, str, Path)."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Mapping):
        path = source.get("path")
        return str(path) if path else None
    path = getattr(source, "path", None)
    return str(path) if path else None


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def load_image(source: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInput:
    """Open an uploaded image safely and convert it to RGB.

    Sizes are checked from the header before any pixel is decoded; PIL's global decompression-bomb
    limit is left alone (ours is stricter and per call). Animated images give their first frame;
    CMYK, 16-bit, float, palette, grayscale and transparent images are converted, not refused.
    """
    if isinstance(source, Image.Image):
        rgb, note = _to_rgb(_downscaled(_check_size(source, max_pixels)))
        return ImageInput(rgb, "image", "", note)
    path = image_path(source)
    if not path:
        raise InputError("Upload an image first (or pick one of the examples).")
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError:
        raise InputError("The uploaded image could not be read; please upload it again.") from None
    if size > MAX_IMAGE_BYTES:
        raise InputError(f"The image file is {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES >> 20} MB.")
    if size == 0:
        raise InputError("The uploaded file is empty.")
    data = file.read_bytes()
    name = Path(str(source.get("orig_name") or file.name) if isinstance(source, Mapping) else file.name).name
    try:
        picture = Image.open(io.BytesIO(data), formats=readable_formats())
    except Image.DecompressionBombError:
        raise InputError(f"{name} is far too large to decode safely; the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{name} is not an image this app can read; use {format_names()}.") from None
    _check_size(picture, max_pixels, name)
    if picture.format == "PNG" and len(data) * DEFLATE_MAX_RATIO < _png_raw_bytes(data):
        raise InputError(f"{name} is damaged or truncated: the file is far too small for "
                         f"{picture.width}×{picture.height} pixels.")
    notes = []
    try:
        # ``is_animated`` looks at most one frame ahead; ``n_frames`` would walk every page of a TIFF
        # (superlinear in their number), so the count is never asked for.
        if getattr(picture, "is_animated", False):
            picture.seek(0)
            notes.append("first frame of an animated image")
        _draft(picture)
        picture.load()
        turn = _ORIENTATIONS.get(picture.getexif().get(0x0112, 1))  # read before the copy drops the tags
        picture = _downscaled(picture)
        picture = picture.transpose(turn) if turn is not None else picture
    except Image.DecompressionBombError:
        raise InputError(f"{name} is too large to decode safely.") from None
    except Exception:  # truncated or corrupt pixel data: PIL raises OSError, ValueError, SyntaxError...
        raise InputError(f"{name} is damaged or truncated and cannot be decoded.") from None
    try:
        rgb, note = _to_rgb(picture)
    except (ValueError, OSError):
        raise InputError(f"{name} uses the colour mode {picture.mode}, which cannot be converted to RGB.") from None
    notes += [note] if note else []
    return ImageInput(rgb, name, hashlib.sha1(data).hexdigest(), "; ".join(notes))


def readable_formats() -> tuple[str, ...]:
    """The Pillow formats this app opens (AVIF only when Pillow was built with it)."""
    return tuple(f for f in IMAGE_FORMATS if f != "AVIF" or features.check("avif"))


def format_names() -> str:
    names = [IMAGE_FORMATS[f] for f in readable_formats()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _png_raw_bytes(data: bytes) -> int:
    """Bytes of filtered scanlines the IHDR promises (width, height, bit depth, colour type)."""
    if len(data) < 26:
        return 0
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, channels = data[24], {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(data[25], 1)
    return height * (1 + math.ceil(width * channels * depth / 8))


def _check_size(picture: Image.Image, max_pixels: int, name: str = "The image") -> Image.Image:
    width, height = picture.size
    if width < 1 or height < 1:
        raise InputError(f"{name} has no pixels.")
    if width * height > max_pixels:
        raise InputError(f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels; "
                         f"the limit is {max_pixels / 1e6:.0f}. Please downscale it.")
    return picture


_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}  # EXIF orientation → the transposition that undoes it


def model_size(width: int, height: int, most: int = MODEL_PIXELS) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, to at most ``most`` pixels (unchanged if within)."""
    if width * height <= most:
        return width, height
    scale = math.sqrt(most / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _draft(picture: Image.Image) -> None:
    """A JPEG larger than any model needs is decoded at 1/2, 1/4 or 1/8 scale (never below MODEL_PIXELS)."""
    size = model_size(*picture.size)
    if picture.format == "JPEG" and size != picture.size:
        picture.draft(None, size)


def _downscaled(picture: Image.Image, most: int = MODEL_PIXELS) -> Image.Image:
    """``picture`` shrunk to at most ``most`` pixels in its own mode (16-bit by integer block means in
    float32, which Pillow cannot resize); the picture itself when it is small enough. Every later
    conversion works on this copy, so its cost is bounded by ``most``, not by the upload."""
    size = model_size(*picture.size, most)
    if size == picture.size:
        return picture
    if picture.mode.startswith("I;16"):
        # Block means by whole factors (at least the target size, under 4× its pixels), a strip of about
        # 1 M pixels at a time, then Pillow's float resize to the exact size.
        fy, fx = max(1, picture.height // size[1]), max(1, picture.width // size[0])
        rows, cols = picture.height // fy, picture.width // fx
        means = np.empty((rows, cols), np.float32)
        band = max(1, 2**20 // max(cols * fx * fy, 1))
        for top in range(0, rows, band):
            strip = np.asarray(picture.crop((0, top * fy, cols * fx, min(top + band, rows) * fy)))
            means[top:top + band] = strip.reshape(-1, fy, cols, fx).mean(axis=(1, 3), dtype=np.float32)
        small = Image.fromarray(means, "F").resize(size, Image.Resampling.BOX)
        del means
        return Image.fromarray(np.clip(np.rint(np.asarray(small)), 0, 65535).astype(np.uint16))  # I;16 again
    # Box means for numbers (no ringing past the image's own range, which I and F are stretched to).
    resample = {"1": Image.Resampling.NEAREST, "P": Image.Resampling.NEAREST, "PA": Image.Resampling.NEAREST,
                "I": Image.Resampling.BOX, "F": Image.Resampling.BOX}.get(picture.mode, Image.Resampling.LANCZOS)
    return picture.resize(size, resample, reducing_gap=None if resample != Image.Resampling.LANCZOS else 3.0)


def _to_rgb(picture: Image.Image) -> tuple[Image.Image, str]:
    """RGB for any mode; transparency is flattened onto white, high bit depths scaled to 8 bits.
    Arithmetic is float32 (callers pass a copy of at most MODEL_PIXELS pixels: see ``_downscaled``)."""
    mode = picture.mode
    if mode == "RGB":
        return picture.copy(), ""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas, f"{mode} with transparency flattened onto white"
    if mode.startswith("I;16"):
        values = np.asarray(picture)  # uint16: integer arithmetic, 65535 → 255
        gray = Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8), "L")
        return gray.convert("RGB"), f"{mode} scaled to 8-bit grayscale"
    if mode in ("I", "F"):  # 32-bit integer or float: stretch the image's own (finite) range
        values = np.asarray(picture, dtype=np.float32)
        finite = np.isfinite(values)
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
        scaled = np.zeros(values.shape, np.float32)
        if high > low:
            np.subtract(values, low, out=scaled, where=finite)
            scaled *= np.float32(255.0 / (high - low))
        gray = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB"), f"{mode} scaled to 8-bit grayscale"
    return picture.convert("RGB"), ("" if mode in ("L", "1", "P") else f"converted from {mode}")


def check_prompt(prompt: Any) -> str:
    text = "" if prompt is None else str(prompt)
    if not text.strip():
        raise InputError("The prompt is empty; write a question or instruction about the image.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
    check_text_characters(text, "The prompt")
    found = GENERIC_SPECIAL_TOKENS.search(text)
    if found:
        raise InputError(special_token_message(found.group()))
    return text.strip()


def check_text_characters(text: str, what: str) -> None:
    """Lone UTF-16 surrogates (possible through JSON) cannot be encoded, tokenized or shown."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise InputError(f"{what} contains an invalid character (a lone surrogate); please retype it.")


def special_token_message(token: str) -> str:
    return f"The prompt contains “{token}”, a special token of the model; please remove it."


def check_prompt_tokens(prompt: str, tokenizer, sequence_tokens: int, context: int | None,
                        max_new_tokens: int) -> None:
    """The chosen model's limits: none of its special tokens, at most MAX_PROMPT_TOKENS of its tokens,
    and the whole sequence (chat text, image tokens, prompt) plus the new tokens within its context.
    ``sequence_tokens`` is the length of the model input this prompt and image make."""
    special = sorted({str(t) for t in getattr(tokenizer, "all_special_tokens", []) if str(t).strip()} |
                     {str(t.content) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                      if getattr(t, "special", False) and str(t.content).strip()}, key=len, reverse=True)
    for token in special:
        if token in prompt:
            raise InputError(special_token_message(token))
    count = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if count > MAX_PROMPT_TOKENS:
        raise InputError(f"The prompt is {count} tokens long for this model; the limit is {MAX_PROMPT_TOKENS}.")
    if context and sequence_tokens + max_new_tokens > context:
        room = context - sequence_tokens
        if room < 1:
            raise InputError(f"The image and prompt take {sequence_tokens} tokens, more than this model's "
                             f"context of {context}; shorten the prompt.")
        raise InputError(f"The image and prompt take {sequence_tokens} of this model's {context} tokens of context, "
                         f"so at most {room} new tokens fit; lower Max new tokens to {room} or shorten the prompt.")


def check_request_size(columns: int, max_new_tokens: int, limit: int = MAX_REQUEST_TOKENS) -> None:
    """One request's decoding work is bounded: new tokens × columns."""
    if columns * max_new_tokens > limit:
        most = limit // max(columns, 1)
        raise InputError(f"{columns} methods × {max_new_tokens} new tokens is more than one request may decode "
                         f"({limit} tokens in all); lower Max new tokens to {most} or pick fewer methods.")


def check_max_new_tokens(value: Any, limit: int = MAX_NEW_TOKENS) -> int:
    if isinstance(value, bool):  # True is an int to Python, not a token count to a person
        raise InputError(f"Max new tokens must be a whole number from 1 to {limit}, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"Max new tokens must be a whole number from 1 to {limit}, not {value!r}.") from None
    if not math.isfinite(number) or number != int(number) or not 1 <= number <= limit:
        raise InputError(f"Max new tokens must be a whole number from 1 to {limit}, not {value!r}.")
    return int(number)


STACK_SEPARATOR = "+"


def stack_parts(name: str) -> list[str]:
    """The methods of one column: ``"prunehal+vhr"`` → ``["prunehal", "vhr"]``; a plain name alone."""
    return [part.strip() for part in name.split(STACK_SEPARATOR)]


def check_methods(names: Any, registry: Mapping[str, type[Method]] = REGISTRY,
                  max_columns: int | None = None) -> list[str]:
    """The picked columns: single methods in registry order, each once, then stacks (``"prunehal+vhr"``:
    one column decoding several methods together, as ``halviz eval`` names them; ``("prunehal", "vhr")``
    from Python), each written in registry order, once, in the order given."""
    if isinstance(names, str):
        names = [n for n in names.replace(";", ",").split(",") if n.strip()]
    if not names:
        raise InputError("Pick at least one decoding method to run.")
    if not isinstance(names, Sequence):
        raise InputError("Methods must be a list of method names.")
    cleaned = [STACK_SEPARATOR.join(map(str, n)) if isinstance(n, (list, tuple)) else str(n).strip() for n in names]
    unknown = sorted({part for n in cleaned for part in stack_parts(n) if part not in registry})
    if unknown:
        raise InputError(f"Unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(registry)} "
                         f"(or stack several with '+', e.g. 'prunehal+vhr').")
    singles = [name for name in registry if name in cleaned]
    stacks: list[str] = []
    for name in (n for n in cleaned if STACK_SEPARATOR in n):
        parts = stack_parts(name)
        if "vanilla" in parts or len(set(parts)) != len(parts):
            raise InputError(f"The stack {name!r} must name different methods, without vanilla (greedy decoding "
                             "is what every method starts from).")
        ordered = STACK_SEPARATOR.join(m for m in registry if m in parts)  # the stacking order is the registry's
        if ordered not in stacks and ordered not in singles:
            stacks.append(ordered)
    columns = singles + stacks
    if max_columns is not None and len(columns) > max_columns:
        raise InputError(f"{len(columns)} columns are more than a comparison shows ({max_columns}); pick fewer.")
    return columns


def parse_settings(text: Any) -> dict[str, dict[str, Any]]:
    """Knob values as JSON text: ``{"prunehal": {"r": 0.4}}``; empty means every default."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, str):
        if len(text) > MAX_SETTINGS_CHARS:
            raise InputError(f"The method settings have {len(text)} characters; the limit is {MAX_SETTINGS_CHARS}.")
        try:
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_short_int)
        except json.JSONDecodeError as exc:
            raise InputError(f"The method settings are not valid JSON: {exc.msg}.") from None
        except RecursionError:
            raise InputError('Method settings are nested far too deeply; they look like {"method": {"knob": value}}.') from None
    else:
        value = text
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise InputError('Method settings must look like {"method": {"knob": value}}.')
    for knobs in value.values():
        for knob, setting in knobs.items():
            if not isinstance(setting, (bool, int, float, str)) and setting is not None:
                raise InputError(f"The setting {str(knob)[:40]!r} must be a number, text or true/false.")
    return {str(k): dict(v) for k, v in value.items()}


def _no_constant(name: str):
    raise InputError(f"The method settings hold {name}, which is not a number a knob can take.")


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:  # past any knob's range, and Python refuses > 4300 digits anyway
        raise InputError(f"The method settings hold a {len(text)}-digit number, which is too large for any knob.")
    return int(text)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InputError(f"The method settings hold {text[:20]}, which is too large for any knob.")
    return number


def build_stacks(names: Sequence[str], settings: Mapping[str, Mapping[str, Any]],
                 registry: Mapping[str, type[Method]] = REGISTRY) -> list[list[Method]]:
    """One method stack per column; knob values are checked here, before any model work."""
    stray = sorted(set(settings) - set(registry))
    if stray:
        raise InputError(f"Settings given for unknown method {', '.join(map(repr, stray))}.")
    stacks = []
    for name in names:
        title = column_title(name, registry)
        try:  # built from ``registry`` (not the global list) so an app can offer its own methods
            stack = [registry[part](**dict(settings.get(part, {}))) for part in stack_parts(name) if part != "vanilla"]
            check_compatible(stack)
            stacks.append(stack)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{title}: {exc}.") from None
        except (OverflowError, ArithmeticError):  # e.g. an integer knob given 1e308
            raise InputError(f"{title}: a knob value is far too large.") from None
    return stacks


def column_title(name: str, registry: Mapping[str, type[Method]] = REGISTRY) -> str:
    """A column's title: its method's, or a stack's titles joined ("PruneHal + VHR")."""
    return " + ".join(registry[part].title or part for part in stack_parts(name))


def check_trace_upload(path: str | Path, max_unpacked: int | None = None) -> None:
    """Refuse an uploaded .npz before numpy opens it: not a zip, too many members, members that would
    unpack to more than ``max_unpacked`` bytes (a zip bomb), or arrays whose headers declare object
    dtypes or shapes too large. Sizes come from the zip directory and the .npy headers only."""
    name = Path(path).name
    max_unpacked = MAX_TRACE_UNPACKED_BYTES if max_unpacked is None else max_unpacked
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_TRACE_MEMBERS:
                raise InputError(f"{name} has {len(members)} entries; a halviz trace has far fewer.")
            unpacked = sum(m.file_size for m in members)
            if unpacked > max_unpacked:
                raise InputError(f"{name} would unpack to {unpacked / 2**20:.0f} MB; "
                                 f"the limit is {max_unpacked >> 20} MB.")
            for member in members:
                with archive.open(member) as stream:
                    _check_npy_header(stream, member, name)
    except InputError:
        raise
    except Exception:  # bad zip, damaged deflate stream (zlib.error), encrypted member, bad header...
        raise InputError(f"{name} is not a halviz trace (.npz written by this app).") from None


def _check_npy_header(stream, member: zipfile.ZipInfo, name: str) -> None:
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise InputError(f"{name} uses a .npy format version this app does not write.")
    shape, _, dtype = readers[version](stream, max_header_size=10_000)
    if dtype.hasobject:
        raise InputError(f"{name} contains Python objects ({member.filename}); halviz traces never do.")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > member.file_size:  # the header claims more data than the entry holds
        raise InputError(f"{name} is damaged: {member.filename} declares {declared} bytes but holds fewer.")
