"""Checks and conversions of everything a person (or an API client) sends, with messages for them.

Every function raises :class:`InputError` with a sentence meant for the user; the callbacks turn it
into ``gr.Error``. Nothing here touches Gradio, so it is tested directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from halviz.methods import METHODS, check_compatible
from halviz.methods.base import Method

MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 40_000_000  # our own per-call limit, checked from the header before decoding
MAX_PROMPT_CHARS = 1000
MAX_NEW_TOKENS = 512
MAX_MODEL_NAME_CHARS = 300
MAX_TRACE_UNPACKED_BYTES = 256 * 2**20  # an uploaded trace may expand to this much (LLaVA-7B × 512 steps ≈ 60 MB)
MAX_TRACE_MEMBERS = 512


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
        rgb, note = _to_rgb(_check_size(source, max_pixels))
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
        picture = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputError(f"{name} is far too large to decode safely; the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{name} is not an image this app can read; use PNG, JPEG, WebP, GIF, BMP or TIFF.") from None
    _check_size(picture, max_pixels, name)
    notes = []
    frames = getattr(picture, "n_frames", 1)
    try:
        if frames > 1:
            picture.seek(0)
            notes.append(f"first frame of {frames}")
        picture.load()
        picture = ImageOps.exif_transpose(picture) or picture
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


def _check_size(picture: Image.Image, max_pixels: int, name: str = "The image") -> Image.Image:
    width, height = picture.size
    if width < 1 or height < 1:
        raise InputError(f"{name} has no pixels.")
    if width * height > max_pixels:
        raise InputError(f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels; "
                         f"the limit is {max_pixels / 1e6:.0f}. Please downscale it.")
    return picture


def _to_rgb(picture: Image.Image) -> tuple[Image.Image, str]:
    """RGB for any mode; transparency is flattened onto white, high bit depths scaled to 8 bits."""
    mode = picture.mode
    if mode == "RGB":
        return picture.copy(), ""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas, f"{mode} with transparency flattened onto white"
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(picture, dtype=np.float64)
        if mode.startswith("I;16"):
            scaled = values / 257.0
        else:  # 32-bit integer or float: stretch the image's own range
            low, high = np.nanmin(values), np.nanmax(values)
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB"), f"{mode} scaled to 8-bit grayscale"
    return picture.convert("RGB"), ("" if mode in ("L", "1", "P") else f"converted from {mode}")


def check_prompt(prompt: Any) -> str:
    text = "" if prompt is None else str(prompt)
    if not text.strip():
        raise InputError("The prompt is empty; write a question or instruction about the image.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return text.strip()


def check_max_new_tokens(value: Any, limit: int = MAX_NEW_TOKENS) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"Max new tokens must be a whole number from 1 to {limit}, not {value!r}.") from None
    if not math.isfinite(number) or number != int(number) or not 1 <= number <= limit:
        raise InputError(f"Max new tokens must be a whole number from 1 to {limit}, not {value!r}.")
    return int(number)


def check_methods(names: Any, registry: Mapping[str, type[Method]] = METHODS) -> list[str]:
    """The picked method names in registry order, each once."""
    if isinstance(names, str):
        names = [n for n in names.replace(";", ",").split(",") if n.strip()]
    if not names:
        raise InputError("Pick at least one decoding method to run.")
    if not isinstance(names, Sequence):
        raise InputError("Methods must be a list of method names.")
    cleaned = [str(n).strip() for n in names]
    unknown = [n for n in cleaned if n not in registry]
    if unknown:
        raise InputError(f"Unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(registry)}.")
    return [name for name in registry if name in cleaned]


def parse_settings(text: Any) -> dict[str, dict[str, Any]]:
    """Knob values as JSON text: ``{"prunehal": {"r": 0.4}}``; empty means every default."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"The method settings are not valid JSON: {exc.msg}.") from None
    else:
        value = text
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise InputError('Method settings must look like {"method": {"knob": value}}.')
    return {str(k): dict(v) for k, v in value.items()}


def build_stacks(names: Sequence[str], settings: Mapping[str, Mapping[str, Any]],
                 registry: Mapping[str, type[Method]] = METHODS) -> list[list[Method]]:
    """One method stack per column; knob values are checked here, before any model work."""
    stray = sorted(set(settings) - set(registry))
    if stray:
        raise InputError(f"Settings given for unknown method {', '.join(map(repr, stray))}.")
    stacks = []
    for name in names:
        try:  # built from ``registry`` (not the global list) so an app can offer its own methods
            stack = [] if name == "vanilla" else [registry[name](**dict(settings.get(name, {})))]
            check_compatible(stack)
            stacks.append(stack)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{registry[name].title or name}: {exc}.") from None
    return stacks


def check_model_name(name: Any, default: str) -> str:
    text = str(name or "").strip() or default
    if len(text) > MAX_MODEL_NAME_CHARS or any(ord(c) < 32 for c in text):
        raise InputError("That model name is not a hub id or a folder path.")
    return text


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
