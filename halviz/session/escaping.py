"""Strings from users and files, made inert for the page.

Gradio renders Markdown outputs and error toasts as HTML. Its sanitiser removes scripts but keeps
images, links and forms, so a prompt, a model name or a replayed trace's metadata could make the
browser fetch outside URLs or show a form. Every such string goes through one of these functions
where it is put into Markdown or a toast; text components (captions, dropdowns, JSON) need nothing.
"""

from __future__ import annotations

import html
import re

# Every ASCII punctuation character: CommonMark lets each be backslash-escaped, which turns
# links, images, emphasis, code spans, tables, autolinks and raw HTML into plain text.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
MAX_SHOWN_CHARS = 400


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_text(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as literal text inside Markdown: one line, every punctuation mark escaped."""
    text = shorten(" ".join(str(value).split()), limit)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def html_text(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as literal text inside HTML (error toasts): ``&``, ``<`` and ``>`` escaped.

    Quotes stay as they are (they only matter inside attributes), so API clients still read
    ``'name'`` in messages."""
    return html.escape(shorten(str(value), limit), quote=False)
