"""Where each image token's patch lies in the uploaded image.

The processor resizes, crops or pads the upload before the vision tower cuts it into a grid of
patches. To draw attention over the user's own picture we invert those steps for every patch.
Rounding follows transformers' processors to within a pixel, which is finer than any patch.
"""

from __future__ import annotations

import numpy as np


def _size_field(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def processed_frame(image_processor, width: int, height: int) -> tuple[float, float, float, float, float, float]:
    """Return (pad_left, pad_top, scale_x, scale_y, crop_left, crop_top) mapping original → model pixels.

    model_x = (orig_x + pad_left) * scale_x - crop_left, and likewise for y.
    """
    pad_left = pad_top = 0.0
    w, h = float(width), float(height)
    if getattr(image_processor, "do_pad", False):  # LLaVA "pad" aspect: centre the image on a square
        side = max(w, h)
        pad_left, pad_top = (side - w) / 2, (side - h) / 2
        w = h = side
    scale_x = scale_y = 1.0
    new_w, new_h = w, h
    size = getattr(image_processor, "size", None)
    if getattr(image_processor, "do_resize", True) and size is not None:
        shortest = _size_field(size, "shortest_edge")
        if shortest:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = float(shortest), float(int(shortest * long / short))
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_w, new_h = float(_size_field(size, "width")), float(_size_field(size, "height"))
        scale_x, scale_y = new_w / w, new_h / h
    crop_left = crop_top = 0.0
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        crop_left = float(int((new_w - _size_field(crop, "width")) // 2))
        crop_top = float(int((new_h - _size_field(crop, "height")) // 2))
    return pad_left, pad_top, scale_x, scale_y, crop_left, crop_top


def patch_boxes(image_processor, width: int, height: int, rows: int, cols: int, patch: int) -> np.ndarray:
    """Boxes (rows, cols, 4) as x0, y0, x1, y1 in the original image, clipped to it.

    A patch that lies wholly in padding gets an empty box (x0 == x1 or y0 == y1).
    """
    pad_left, pad_top, sx, sy, crop_left, crop_top = processed_frame(image_processor, width, height)
    c = np.arange(cols, dtype=np.float64)
    r = np.arange(rows, dtype=np.float64)
    x0 = (c * patch + crop_left) / sx - pad_left
    x1 = ((c + 1) * patch + crop_left) / sx - pad_left
    y0 = (r * patch + crop_top) / sy - pad_top
    y1 = ((r + 1) * patch + crop_top) / sy - pad_top
    boxes = np.empty((rows, cols, 4), dtype=np.float32)
    boxes[..., 0] = np.clip(x0, 0, width)[None, :]
    boxes[..., 2] = np.clip(x1, 0, width)[None, :]
    boxes[..., 1] = np.clip(y0, 0, height)[:, None]
    boxes[..., 3] = np.clip(y1, 0, height)[:, None]
    return boxes
