"""halviz: a visual debugger for hallucination in multimodal LLMs, as a web app and a Python library.

    import halviz
    comparison = halviz.compare(halviz.EXAMPLES_DIR / "toy-knife-no-fork.png", methods=["vanilla", "vcd"])
    comparison["vcd"].caption, comparison["vcd"].hallucinated
    fig = halviz.viz.entropy_figure(comparison["vcd"].trace)
    halviz.export(fig, "entropy.png")

The names below are imported on first use, so ``import halviz`` loads neither torch nor Gradio.
See docs/api.md.
"""

from __future__ import annotations

import importlib
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"  # the example pictures, installed with halviz

# public name → (module, attribute)
_LAZY = {
    "compare": ("halviz.api", "compare"),
    "Comparison": ("halviz.api", "Comparison"),
    "Column": ("halviz.api", "Column"),
    "load_trace": ("halviz.api", "load_trace"),
    "open_results": ("halviz.evaluation.results", "open_results"),
    "Results": ("halviz.evaluation.results", "Results"),
    "export": ("halviz.viz.image_files", "export"),
    "ExportError": ("halviz.viz.image_files", "ExportError"),
    "load_model": ("halviz.models.loading", "load_model"),
    "REGISTRY": ("halviz.methods", "REGISTRY"),
    "Trace": ("halviz.trace", "Trace"),
    "InputError": ("halviz.session.checks", "InputError"),
    "ModelUnavailable": ("halviz.session.service", "ModelUnavailable"),
}

__all__ = sorted([*_LAZY, "EXAMPLES_DIR"])


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name == "viz":  # ``halviz.viz.entropy_figure(...)`` after a bare ``import halviz``
        return importlib.import_module("halviz.viz")
    raise AttributeError(f"module 'halviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "viz"])
