"""Hand computations of the new families' image grids, from their processors' documented rules only.

Each function takes the upload's (width, height) and returns (number of image tokens, [(rows, cols,
boxes (rows, cols, 4) x0, y0, x1, y1 in upload pixels), ...]) in the family's grid order. Written
from the processors' docstrings and the stored preprocessing values, not from halviz code.
"""

from __future__ import annotations

import math

import numpy as np


def _boxes(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes from column edges ``xs`` and row edges ``ys`` (upload pixels), clipped to the upload."""
    xs, ys = np.clip(xs, 0, width), np.clip(ys, 0, height)
    out = np.zeros((len(ys) - 1, len(xs) - 1, 4), dtype=np.float32)
    out[..., 0], out[..., 2] = xs[:-1][None, :], xs[1:][None, :]
    out[..., 1], out[..., 3] = ys[:-1][:, None], ys[1:][:, None]
    return out


# ---- SmolVLM-256M-Instruct: longest edge 2048, tiles of 512, 16 px patches, pixel shuffle 4 ----------------
def hand_smolvlm(width: int, height: int, longest: int = 2048, tile: int = 512, tokens_per_side: int = 8):
    # 1. longest edge -> 2048 (the other side by the aspect ratio, rounded down, then up to even)
    if width >= height:
        w1, h1 = longest, int(longest / (width / height))
        h1 += h1 % 2
    else:
        h1, w1 = longest, int(longest * (width / height))
        w1 += w1 % 2
    # 2. both sides up to whole tiles (the short one via the aspect ratio first)
    if w1 >= h1:
        w2 = math.ceil(w1 / tile) * tile
        h2 = math.ceil(int(w2 / (w1 / h1)) / tile) * tile
    else:
        h2 = math.ceil(h1 / tile) * tile
        w2 = math.ceil(int(h2 * (w1 / h1)) / tile) * tile
    rows, cols = h2 // tile, w2 // tile
    step = tile / tokens_per_side
    side = tokens_per_side
    global_view = (side, side, _boxes(np.arange(side + 1) * step * width / tile,
                                      np.arange(side + 1) * step * height / tile, width, height))
    n = (rows * cols + 1) * side * side
    if rows * cols == 1 and (w2, h2) == (tile, tile):  # no split: the global view alone
        return side * side, [global_view]
    tiles = (rows * side, cols * side, _boxes(np.arange(cols * side + 1) * step * width / w2,
                                              np.arange(rows * side + 1) * step * height / h2, width, height))
    return n, [global_view, tiles]


# ---- Qwen2.5-VL-3B-Instruct: smart resize to multiples of 28 within [3136, halviz's 1024·28²] -------------
def hand_qwen(width: int, height: int, min_pixels: int = 3136, max_pixels: int = 1024 * 28 * 28, unit: int = 28):
    h, w = round(height / unit) * unit, round(width / unit) * unit
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(unit, math.floor(height / beta / unit) * unit), max(unit, math.floor(width / beta / unit) * unit)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / unit) * unit, math.ceil(width * beta / unit) * unit
    rows, cols = h // unit, w // unit
    boxes = _boxes(np.arange(cols + 1) * unit * width / w, np.arange(rows + 1) * unit * height / h, width, height)
    return rows * cols, [(rows, cols, boxes)]


# ---- LLaVA-OneVision-0.5B: base 384² view + anyres tiles of 384 (SigLIP/14: 27 patches, 378 px seen) ---------
PINPOINTS = [[a, b] for a in range(384, 2305, 384) for b in range(384, 2305, 384)]


def hand_onevision(width: int, height: int, tile: int = 384, patch: int = 14, max_tiles: int = 9):
    side = tile // patch
    # best pinpoint: most of the upload kept after fitting, then least waste
    best, kept_best, waste_best = None, 0, math.inf
    for ph, pw in PINPOINTS:
        s = min(pw / width, ph / height)
        kept = min(int(width * s) * int(height * s), width * height)
        waste = pw * ph - kept
        if kept > kept_best or (kept == kept_best and waste < waste_best):
            best, kept_best, waste_best = (ph, pw), kept, waste
    ph, pw = best
    if pw / width < ph / height:
        new_w, new_h = pw, min(math.ceil(height * pw / width), ph)
    else:
        new_h, new_w = ph, min(math.ceil(width * ph / height), pw)
    off_x, off_y = (pw - new_w) // 2, (ph - new_h) // 2
    fh, fw = ph // tile * side, pw // tile * side  # stitched feature grid before unpadding
    top, left, rows, cols = 0, 0, fh, fw
    if width / height > fw / fh:
        pad = (fh - int(round(height * fw / width, 7))) // 2
        top, rows = pad, fh - 2 * pad
    else:
        pad = (fw - int(round(width * fh / height, 7))) // 2
        left, cols = pad, fw - 2 * pad
    ratio = math.sqrt(rows * cols / (max_tiles * side * side))
    out_rows, out_cols = (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def canvas(f: float, end: bool) -> float:  # feature coordinate -> canvas pixel
        t = max(math.ceil(f / side) - 1, 0) if end else math.floor(f / side)
        return t * tile + (f - t * side) * patch

    fy = [top + r * rows / out_rows for r in range(out_rows + 1)]
    fx = [left + c * cols / out_cols for c in range(out_cols + 1)]
    tiles = np.zeros((out_rows, out_cols, 4), dtype=np.float32)
    for r in range(out_rows):
        for c in range(out_cols):
            x0 = (canvas(fx[c], False) - off_x) * width / new_w
            x1 = (canvas(fx[c + 1], True) - off_x) * width / new_w
            y0 = (canvas(fy[r], False) - off_y) * height / new_h
            y1 = (canvas(fy[r + 1], True) - off_y) * height / new_h
            tiles[r, c] = (np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height))
    base = np.zeros((side, side, 4), dtype=np.float32)
    for r in range(side):
        for c in range(side):
            base[r, c] = (c * patch * width / tile, r * patch * height / tile,
                          (c + 1) * patch * width / tile, (r + 1) * patch * height / tile)
    n = side * side + out_rows * (out_cols + 1)  # every row of the tile grid ends with a newline token
    return n, [(side, side, base), (out_rows, out_cols, tiles)]
