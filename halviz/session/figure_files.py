"""The debugger's figures at one step written as image files for a paper or a slide: one zip of
PNG, SVG or PDF files, each figure at the size the page draws it (Gradio-free; the page's
"Save figures" button and a script call the same function)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from halviz.session.checks import InputError
from halviz.session.state import RunEntry, download_stem
from halviz.viz import lens
from halviz.viz.grid_views import PRIMARY
from halviz.viz.image_files import export_many
from halviz.viz.step_view import panel_figures, step_figures

FIGURE_FORMATS = ("png", "svg", "pdf")


def write_step_figures(entry: RunEntry, step: int, layer: int | str, head: int | str, view: str = PRIMARY,
                       fmt: str = "png", folder: Path | str = ".", stamp: str = "",
                       reference: RunEntry | None = None) -> Path:
    """Every figure the debugger shows for ``entry`` at ``step`` (its own panels, the logit lens beside
    ``reference`` when given, and the method panels of this trace) as ``fmt`` files in one zip in
    ``folder``; returns the zip's path. Raises :class:`halviz.viz.image_files.ExportError` when Kaleido
    or a browser is missing."""
    fmt = str(fmt).lower()
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"Figures are saved as {', '.join(FIGURE_FORMATS).upper()}, not {fmt!r}.")
    trace = entry.trace
    figures = {**step_figures(trace, step, layer, head, entry.image, view), **panel_figures(trace, step)}
    if lens.has_lens(trace):  # drawn as the page draws it: beside the reference column, when there is one
        other = reference.trace if reference is not None else None
        names = (entry.title, reference.title if reference is not None else "")
        figures["lens"] = lens.lens_heatmap_figure(trace, step, other, names)
        figures["lens_words"] = lens.lens_words_figure(trace, step, other, names)
    folder = Path(folder)
    stem = f"{download_stem(entry, stamp) if stamp else 'halviz'}-step{step}"
    drawn = [(figure, folder / "figures" / f"{stem}-{name.removeprefix('hv-')}.{fmt}")
             for name, figure in figures.items() if figure is not None]
    written = export_many(drawn)
    archive = folder / f"{stem}-{fmt}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED if fmt == "png" else zipfile.ZIP_DEFLATED) as out:
        for path in written:
            out.write(path, path.name)
    for path in written:
        path.unlink()
    return archive
