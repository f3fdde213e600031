"""Shared pieces of every figure: colours, token strings, what a layer/head choice averages."""

from __future__ import annotations

import base64
import io
import re
from typing import Literal, Union

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from halviz.trace import Trace

NOT_WHY = "Attention shows where the model looked, not why it answered."  # said under every attention figure

Choice = Union[int, Literal["mean"]]  # a layer or head index, or "mean" over all of them

SEGMENT_NAMES = {"bos": "BOS token", "system": "system text", "image": "image tokens",
                 "prompt": "prompt text", "generated": "generated text"}
SEGMENT_COLOURS = {"bos": "#7c3aed", "system": "#94a3b8", "image": "#0ea5e9",
                   "prompt": "#f59e0b", "generated": "#10b981"}
LABEL_COLOURS = {"correct": "#16a34a", "hallucinated": "#dc2626", "unverified": "#a16207"}
# Transparent at zero so the photo shows through where the model did not look.
ATTENTION_SCALE = [[0.0, "rgba(255,237,160,0)"], [0.3, "rgba(254,178,76,0.25)"],
                   [0.65, "rgba(240,59,32,0.5)"], [1.0, "rgba(128,0,38,0.8)"]]
FONT = dict(family="Inter, ui-sans-serif, system-ui, sans-serif", size=12, color="#1f2937")

_BYTE_LEVEL = {"Ġ": " ", "Ċ": "\n", "▁": " ", "ĉ": "\t"}


def escape(text: str) -> str:
    """Plotly reads labels as a subset of HTML: "</s>" or "<image>" must not become tags."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def readable(token: str) -> str:
    """A tokenizer piece as a person reads it (byte-level/sentencepiece spaces shown as ␣, newlines as
    ↵), escaped for plotly."""
    for raw, plain in _BYTE_LEVEL.items():
        token = token.replace(raw, plain)
    return escape(token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")) or "∅"


def step_token(trace: Trace, step: int) -> str:
    """The text generated at ``step``, quoted, or a marker for the end token / an incomplete character."""
    texts = trace.texts
    if not 0 <= step < len(texts):
        return "?"
    if texts[step]:
        return "“" + escape(texts[step].replace("\n", "↵")) + "”"
    last_eos = step == len(texts) - 1 and trace.meta.get("finish_reason") == "eos"
    return "⟨end of text⟩" if last_eos else "⟨part of a character⟩"


def key_label(trace: Trace, position: int) -> str:
    """What sits at sequence ``position``: a prompt token, an image patch, or a generated token."""
    meta = trace.meta
    prompt_len = int(meta.get("prompt_len", 0))
    image_positions = meta.get("image_positions") or []
    if image_positions and image_positions[0] <= position <= image_positions[-1]:
        cols = int(meta["grid"][1])
        if "grid_index" not in meta:  # one grid holding every image token, contiguous
            row, col = divmod(position - image_positions[0], cols)
            return f"image r{row} c{col}"
        if position in image_positions:
            token = image_positions.index(position)
            for grid in meta.get("grids") or []:
                if token in grid.get("index", []):
                    row, col = divmod(grid["index"].index(token), int(grid["grid"][1]))
                    return f"{grid.get('name', 'image')} r{row} c{col}"
            return f"image token {token}"
    if position < prompt_len:
        tokens = meta.get("prompt_tokens") or []
        token = readable(tokens[position]) if position < len(tokens) else "?"
        return f"{token} @{position}"
    generated = position - prompt_len
    texts = trace.texts
    piece = readable(texts[generated]) if 0 <= generated < len(texts) else "?"
    return f"{piece} (gen {generated})"


def num_layers(trace: Trace) -> int:
    return int(trace.meta.get("num_layers", 0))


def num_heads(trace: Trace) -> int:
    return int(trace.meta.get("num_heads", 0))


def layer_text(trace: Trace, layer: Choice) -> str:
    total = num_layers(trace)
    return f"mean of all {total} layers" if layer == "mean" else f"layer {layer} of 0–{total - 1}"


def head_text(trace: Trace, head: Choice) -> str:
    return f"mean of {num_heads(trace)} heads" if head == "mean" else f"head {head}"


def clamp_step(trace: Trace, step: int) -> int:
    return int(min(max(int(step), 0), max(trace.num_steps - 1, 0)))


# Plotly titles never wrap: a line longer than its panel is cut at the edge. On a 1024 px page the
# debugger's half-row panels are about 430 px wide, the overlay's column about 540 px, a full row about
# 990 px; these counts of visible characters (13 px title font, 11 px subtitles) fit each, and
# base_layout breaks every title line to its panel's.
PANEL_CHARS = {"half": (56, 70), "column": (72, 88), "full": (120, 140)}
TITLE_CHARS, SUBTITLE_CHARS = PANEL_CHARS["half"]
SUBTITLE_OPEN, SUBTITLE_CLOSE = "<span style='font-size:11px'>", "</span>"
_TAG = re.compile(r"<[^>]*>")
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


def visible_length(text: str) -> int:
    """Characters a reader sees in a plotly label: tags dropped, each entity one character."""
    return len(_ENTITY.sub("x", _TAG.sub("", text)))


def _wrap(text: str, width: int, separator: str = " ") -> list[str]:
    """``text`` broken at ``separator`` (then at spaces, for a piece still too long) into lines of at most
    ``width`` visible characters where possible."""
    pieces = text.split(separator)
    if separator != " ":
        pieces = [line for piece in pieces for line in
                  (_wrap(piece, width) if visible_length(piece) > width else [piece])]
    lines: list[str] = []
    for piece in pieces:
        if lines and visible_length(lines[-1]) + len(separator) + visible_length(piece) <= width:
            lines[-1] += separator + piece
        else:
            lines.append(piece)
    return lines


def fit_title(title: str, panel: str = "half", main: bool = True) -> str:
    """Every line of ``title`` broken to its ``panel``'s width in visible characters (PANEL_CHARS);
    subtitles break at " · " first. ``main=False`` leaves the 13 px lines as they are. Tags other than a
    whole-line subtitle span never hold a space, so breaking at spaces never splits one."""
    title_chars, subtitle_chars = PANEL_CHARS[panel]
    out: list[str] = []
    for line in title.split("<br>"):
        if line.startswith(SUBTITLE_OPEN) and line.endswith(SUBTITLE_CLOSE):
            inner = line[len(SUBTITLE_OPEN):-len(SUBTITLE_CLOSE)]
            out += [SUBTITLE_OPEN + part + SUBTITLE_CLOSE for part in _wrap(inner, subtitle_chars, " · ")]
        else:
            out += _wrap(line, title_chars) if main else [line]
    return "<br>".join(out)


def subtitle(parts: list[str], max_chars: int = SUBTITLE_CHARS) -> str:
    """Small second title lines: ``parts`` joined by " · ", broken into lines (plotly titles never wrap)."""
    lines: list[str] = []
    for part in (p for p in parts if p):
        if lines and visible_length(lines[-1]) + 3 + visible_length(part) <= min(max_chars, SUBTITLE_CHARS):
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "".join(f"<br>{SUBTITLE_OPEN}{line}{SUBTITLE_CLOSE}" for line in lines)


def base_layout(fig: go.Figure, title: str, height: int, panel: str = "half", fit_main: bool = True,
                **extra) -> go.Figure:
    """House style; the title's lines are fitted to the width of the ``panel`` the figure is shown in
    (:func:`fit_title`), and the top margin and height grow with them, so subtitles never overlap the plot
    nor squeeze it."""
    fitted = fit_title(title, panel, fit_main)
    added = 15 * (fitted.count("<br>") - title.count("<br>"))  # lines the fitting added: the plot keeps its room
    title, height = fitted, height + added
    margin = dict(l=10, r=10, t=0, b=10)
    asked = extra.pop("margin", {})
    margin.update(asked)
    if "t" in asked:
        margin["t"] += added
    margin["t"] = max(margin["t"], 24 + 15 * (title.count("<br>") + 1)) if title else max(margin["t"], 10)
    settings = dict(template="plotly_white", paper_bgcolor="white")
    settings.update(extra)
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", y=1 - 10 / max(height, 100), yref="container",
                   yanchor="top", font=dict(size=13)),
        height=height, font=FONT, margin=margin, **settings)
    return fig


def message_figure(text: str, height: int = 220) -> go.Figure:
    """A figure that only says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=13, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, "", height)


def image_data_uri(image: Image.Image, max_side: int = 448) -> tuple[str, int, int]:
    """A small JPEG of ``image`` as a data URI, with its width and height: keeps the figure light
    enough to resend on every step."""
    picture = image.convert("RGB")
    if max(picture.size) < 256:  # tiny pictures (toy scenes): enlarge with sharp pixels, not blur
        factor = max(1, 384 // max(picture.size))
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    scale = max_side / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, picture.width, picture.height


def finite_max(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def index_ranges(values) -> str:
    """[1, 18, 19, 20] → "1, 18–20"."""
    ordered = sorted({int(v) for v in values})
    parts: list[str] = []
    start = None
    for i, v in enumerate(ordered):
        start = v if start is None else start
        if i == len(ordered) - 1 or ordered[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}–{v}")
            start = None
    return ", ".join(parts)


def position_segments(trace: Trace, positions) -> list[str]:
    """The segment (bos, system, image, prompt, generated) of each sequence position."""
    meta = trace.meta
    prompt_len = int(meta.get("prompt_len", 0))
    names = list(meta.get("segments") or [])
    ids = list(meta.get("segment_ids_prompt") or [])
    image = meta.get("image_positions") or []
    out = []
    for p in (int(v) for v in positions):
        if p >= prompt_len:
            out.append("generated")
        elif p < len(ids) and 0 <= int(ids[p]) < len(names):
            out.append(str(names[int(ids[p])]))
        elif image and image[0] <= p <= image[-1]:
            out.append("image")
        else:  # a trace without segment ids: BOS first, the rest prompt text
            out.append("bos" if p == 0 else "prompt")
    return out
