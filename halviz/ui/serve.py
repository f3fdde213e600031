"""Serve the app: ``halviz app`` (or ``python app.py``, which Spaces runs)."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from halviz.session.results_folders import RESULTS_DIR_ENV
from halviz.ui.app import build_app, launch_options, preload_from_env, shutdown


def build() -> gr.Blocks:
    """The app with its default model loaded and warmed before the first visitor."""
    return build_app(preload=preload_from_env())


def serve(demo: gr.Blocks, **launch) -> None:
    """Launch ``demo`` until Ctrl-C or SIGTERM (Spaces and most process managers stop apps with it),
    then close the server and delete the trace folder, the same way for both."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(**launch_options(), **launch)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown(demo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halviz app", description="Serve the halviz web app.")
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 127.0.0.1 "
                                                     "or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or "
                                                               "$GRADIO_SERVER_PORT)")
    parser.add_argument("--results-dir", default=None,
                        help="a folder of evaluation results (halviz eval --out) the Evaluation view may open: "
                             "the folders under it are listed, nothing outside it is read (default: "
                             "$HALVIZ_RESULTS_DIR, else none; uploaded zips work either way)")
    args = parser.parse_args(argv)
    if args.results_dir is not None:  # read by the Evaluation view when the page is built
        os.environ[RESULTS_DIR_ENV] = str(Path(args.results_dir).expanduser().resolve())
    launch = {k: v for k, v in (("server_name", args.host), ("server_port", args.port)) if v is not None}
    serve(build(), **launch)
    return 0
