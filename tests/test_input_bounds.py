"""Issue 28 (B1, B2): every image decode and conversion has a cost bound. The bombs are built here: a
TIFF of 180,000 pages, a 16-bit 40 MP PNG of under 100 KB, a 40 MP float TIFF, a 40000×1 strip. The
bounds are counts (frames touched) and traced memory, with only generous time bounds as sanity checks."""

import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from halviz.session import checks as inputs
from halviz.session.checks import MODEL_PIXELS, load_image, model_size

MB = 2**20


def many_page_tiff(path: Path, pages: int) -> Path:
    """A little-endian TIFF of ``pages`` 1×1 grey pages (about 90 bytes a page), every page's IFD
    pointing at the same pixel byte: Pillow's ``n_frames`` walks all of them."""
    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (279, 4, 1)]
    size = 2 + 12 * len(entries) + 4
    ifd = [struct.pack("<H", len(entries))]
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd.append(struct.pack("<HHI", tag, kind, 1) + packed)
    body = b"".join(ifd)
    out = [b"II*\x00", struct.pack("<I", 9), b"\x80"]
    for page in range(pages):
        following = 9 + (page + 1) * size if page + 1 < pages else 0
        out += [body, struct.pack("<I", following)]
    path.write_bytes(b"".join(out))
    return path


def png16_bomb(path: Path, width: int = 8000, height: int = 5000) -> Path:
    """A 16-bit grayscale PNG of width × height (40 MP) whose rows all repeat: under 100 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" + b"\x12\x34" * width
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def float_tiff_bomb(path: Path, width: int = 8000, height: int = 5000) -> Path:
    values = np.repeat(np.float32([[0.0] * (width // 2) + [1.0] * (width - width // 2)]), height, axis=0)
    Image.fromarray(values, "F").save(path, compression="tiff_adobe_deflate")
    return path


def traced_peak(fn):
    """(result, peak bytes Python and numpy allocated while ``fn`` ran)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_tiff_of_180000_pages_touches_two_frames(tmp_path, monkeypatch):
    path = many_page_tiff(tmp_path / "pages.tif", 180_000)
    assert path.stat().st_size < inputs.MAX_IMAGE_BYTES  # a legal upload
    touched = []
    real_seek = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek",
                        lambda self, frame: (touched.append(frame), real_seek(self, frame))[1])
    started = time.perf_counter()
    loaded = load_image(str(path))
    assert time.perf_counter() - started < 20  # sanity only: was 160–230 s; the bound is the count below
    assert set(touched) <= {0, 1}, f"frames touched: {sorted(set(touched))[:10]}…"
    assert loaded.note == "first frame of an animated image"  # no count: counting walks every page
    assert loaded.image.size == (1, 1)


def test_a_16_bit_40_mp_png_costs_bounded_memory(tmp_path):
    path = png16_bomb(tmp_path / "deep.png")
    assert path.stat().st_size < 100_000
    loaded, peak = traced_peak(lambda: load_image(str(path)))
    # Was 1.2 GB of float64 copies; now one float32 copy of at most MODEL_PIXELS (21 MB) and its cast.
    assert peak < 80 * MB, f"{peak / MB:.0f} MB"
    assert loaded.image.width * loaded.image.height <= MODEL_PIXELS
    assert loaded.image.size == model_size(8000, 5000)
    assert np.asarray(loaded.image)[5, 5].tolist() == [round(0x1234 / 257)] * 3  # 16 → 8 bits, not stretched
    assert "I;16 scaled to 8-bit grayscale" in loaded.note


def test_a_40_mp_float_tiff_costs_bounded_memory(tmp_path):
    path = float_tiff_bomb(tmp_path / "float.tif")
    assert path.stat().st_size < inputs.MAX_IMAGE_BYTES
    loaded, peak = traced_peak(lambda: load_image(str(path)))
    assert peak < 100 * MB, f"{peak / MB:.0f} MB"  # was 1.2 GB
    assert loaded.image.width * loaded.image.height <= MODEL_PIXELS
    row = np.asarray(loaded.image)[10, :, 0]
    assert row[0] == 0 and row[-1] == 255  # the image's own range stretched to 0–255
    assert "F scaled to 8-bit grayscale" in loaded.note


def test_non_finite_floats_do_not_spoil_the_stretch():
    values = np.float32([[0.0, 1.0, np.nan, np.inf, -np.inf, 0.5]])
    rgb, _ = inputs._to_rgb(Image.fromarray(values, "F"))
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 255, 0, 0, 0, 127]


def test_a_40000_by_1_strip_is_cheap(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (40_000, 1), (200, 10, 10)).save(path)
    loaded, peak = traced_peak(lambda: load_image(str(path)))
    assert peak < 5 * MB and loaded.image.size == (40_000, 1)


def test_large_uploads_are_kept_at_the_size_a_processor_needs(tmp_path):
    """A 24 MP JPEG is decoded at reduced scale (draft) and kept at most MODEL_PIXELS, aspect kept;
    its EXIF orientation still applies after the shrink."""
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (6000, 4000), (30, 120, 200)).save(path, exif=exif, quality=50)
    loaded, peak = traced_peak(lambda: load_image(str(path)))
    width, height = loaded.image.size
    assert width * height <= MODEL_PIXELS and height > width
    assert abs(height / width - 1.5) < 0.01
    assert min(model_size(6000, 4000)) >= 336 and max(model_size(6000, 4000)) >= 2304  # every processor's input
    # An already decoded picture handed over as such is shrunk the same way.
    assert load_image(Image.new("RGBA", (5000, 2000))).image.size == model_size(5000, 2000)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "P", "RGBA", "CMYK", "LA", "1"])
def test_every_mode_is_shrunk_and_converted(mode):
    picture = Image.new(mode, (3000, 2000))
    rgb, _ = inputs._to_rgb(inputs._downscaled(picture))
    assert rgb.mode == "RGB" and rgb.size == model_size(3000, 2000)


def test_model_size_keeps_small_pictures_and_the_aspect_of_large_ones():
    assert model_size(640, 480) == (640, 480)
    assert model_size(40_000, 1) == (40_000, 1)
    w, h = model_size(8000, 5000)
    assert w * h <= MODEL_PIXELS and abs(w / h - 1.6) < 0.01


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_image(str(path))
    assert loaded.note == "first frame of an animated image"
    assert tuple(np.asarray(loaded.image)[0, 0]) == (255, 0, 0)


def test_the_rerun_source_is_kept_at_the_size_a_processor_needs(controller, tmp_path):
    """What a session keeps for re-runs (``RunEntry.source``) is the shrunk copy, not the 24 MP upload."""
    ctl, _ = controller
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (6000, 4000), (90, 140, 60)).save(path, quality=50)
    last = None
    for last in ctl.compare(str(path), "Describe the image.", ["vanilla"], 2, "", "toy", "", {}):
        pass
    source = last[ctl.ui.runs]["vanilla"].source
    assert source.size == model_size(6000, 4000) and source.width * source.height <= MODEL_PIXELS
    assert last[ctl.ui.runs]["vanilla"].trace.meta["image_size"] == list(source.size)
