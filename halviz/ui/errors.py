"""How a callback's failure reaches the page: one short escaped sentence (``gr.Error``), never a
stack trace; the details go to the server log."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import gradio as gr
import numpy as np

from halviz.session import checks
from halviz.session.escaping import html_text, markdown_text


log = logging.getLogger("halviz.ui")
MAX_ERROR_CHARS = 400


def ui_error(message: str, title: str = "Error") -> gr.Error:
    """A ``gr.Error`` whose sentence is shown literally: toasts render HTML, so it is escaped; the
    plain sentence stays on ``.plain`` for the Markdown status line."""
    error = gr.Error(html_text(_short(message), MAX_ERROR_CHARS), title=title)
    error.plain = message
    return error


def session_of(request: gr.Request | None) -> str:
    """Who asked: Gradio's session hash (one per browser tab or API client)."""
    return str(getattr(request, "session_hash", None) or "")


def _number(value, default: float) -> float:
    """``value`` as a finite number, else ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def user_errors(fn: Callable) -> Callable:
    """Turn unexpected exceptions of a (non-generator) callback into a short ``gr.Error``; the
    exception itself goes to the server log only."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except checks.InputError as exc:
            raise ui_error(str(exc)) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise ui_error("Something went wrong on the server; please try again.", title="Error") from None
    return wrapped


def file_paths(files) -> list[str]:
    """The paths of a File component's value as the page sends it (FileData dicts, paths, or None)."""
    if not isinstance(files, (list, tuple)):
        files = [files] if files else []
    return [p for p in (checks.image_path(f) for f in files) if p]


def rerun_refused(message: str) -> gr.Error:
    return ui_error(message, title="Cannot re-run this column")


def refused_status(reason: str, shown: bool) -> str:
    """The status line when a comparison is refused: why, and whose captions are still on the page."""
    kept = " The columns below still show the previous comparison." if shown else ""
    return f"✗ Not run: {markdown_text(reason)}{kept}"
