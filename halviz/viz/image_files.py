"""Figures to files: :func:`export` writes a plotly figure as PNG, SVG or PDF, chosen by the suffix.

Plotly renders static images through Kaleido (≥ 1), which drives a Chrome or Chromium already on
the machine (Kaleido's own browser download is not used). :func:`export` finds one (``$BROWSER_PATH``,
then ``chromium``/``google-chrome`` on the PATH, then the usual install paths) and points Kaleido at
it, so a Debian ``apt-get install chromium`` is all a machine needs besides ``pip install``.
No torch: this module loads with :mod:`halviz.viz` alone.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
BROWSER_ENV = "BROWSER_PATH"  # what choreographer (Kaleido's browser driver) reads first
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/snap/bin/chromium",
                 "/usr/bin/google-chrome", "/opt/google/chrome/chrome",
                 "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                 "/Applications/Chromium.app/Contents/MacOS/Chromium")
DEFAULT_WIDTH, DEFAULT_HEIGHT = 700, 500  # plotly's own defaults for a figure that sets no size
_env_lock = threading.Lock()


class ExportError(RuntimeError):
    """A figure could not be written; the message says what to install or change."""


def find_browser() -> str | None:
    """The Chrome/Chromium executable Kaleido should drive, or None when there is none."""
    named = os.environ.get(BROWSER_ENV)
    if named and os.path.isfile(named) and os.access(named, os.X_OK):
        return named
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in BROWSER_PATHS if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def figure_size(fig: go.Figure, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """The size in CSS pixels a figure is written at: the arguments, else the figure's layout, else
    plotly's defaults (a PNG has ``scale`` times as many pixels each way)."""
    return (int(width or fig.layout.width or DEFAULT_WIDTH), int(height or fig.layout.height or DEFAULT_HEIGHT))


def export(fig: go.Figure, path: str | os.PathLike, width: int | None = None, height: int | None = None,
           scale: float = 1) -> Path:
    """Write ``fig`` to ``path`` as PNG, SVG or PDF (by its suffix) at ``width`` × ``height`` CSS
    pixels (default: the figure's own size, else 700 × 500); a PNG gets ``scale`` × as many pixels.
    Returns the path written. Raises :class:`ExportError` when Kaleido or a browser is missing."""
    return export_many([(fig, path)], width, height, scale)[0]


def export_many(figures: list[tuple[go.Figure, str | os.PathLike]], width: int | None = None,
                height: int | None = None, scale: float = 1) -> list[Path]:
    """:func:`export` for several ``(figure, path)`` pairs, rendered by one browser session (starting
    the browser costs more than drawing a figure)."""
    targets = [Path(path) for _, path in figures]
    for fig, target in zip((f for f, _ in figures), targets):
        if FORMATS.get(target.suffix.lower()) is None:
            raise ValueError(f"{target.name}: export writes .png, .svg or .pdf files, chosen by the suffix.")
        if not isinstance(fig, go.Figure):
            raise TypeError(f"export takes a plotly figure (a halviz.viz function's result), not {type(fig).__name__}"
                            + (": that panel has nothing to draw for this trace" if fig is None else ""))
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ExportError("Writing PNG, SVG or PDF needs the kaleido package: pip install 'kaleido>=1'.") from None
    browser = find_browser()
    if browser is None:
        raise ExportError("Writing PNG, SVG or PDF needs Chrome or Chromium, and none was found: install one "
                          "(Debian/Ubuntu: apt-get install chromium) or set BROWSER_PATH to its executable.")
    sizes = [figure_size(fig, width, height) for fig, _ in figures]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    with _env_lock:  # Kaleido's driver reads the variable when it starts the browser, within this call
        before = os.environ.get(BROWSER_ENV)
        os.environ[BROWSER_ENV] = browser
        try:
            if len(figures) == 1:
                (w, h), (fig, _) = sizes[0], figures[0]
                fig.write_image(str(targets[0]), format=FORMATS[targets[0].suffix.lower()], width=w, height=h,
                                scale=scale)
            else:
                pio.write_images([fig for fig, _ in figures], [str(t) for t in targets],
                                 format=[FORMATS[t.suffix.lower()] for t in targets],
                                 width=[w for w, _ in sizes], height=[h for _, h in sizes], scale=scale)
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            raise ExportError(f"Kaleido could not write {targets[0].name} with the browser at {browser}: "
                              f"{type(exc).__name__}: {exc}") from exc
        finally:
            if before is None:
                os.environ.pop(BROWSER_ENV, None)
            else:
                os.environ[BROWSER_ENV] = before
    return targets
