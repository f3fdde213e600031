"""halviz: a visual debugger for hallucination in multimodal LLMs. Builds the Gradio app and launches it."""

import signal

from halviz.ui import build_app, launch_options, shutdown
from halviz.ui.app import preload_from_env

demo = build_app(preload=preload_from_env())  # the default model is ready before the first visitor

if __name__ == "__main__":
    # Spaces (and most process managers) stop apps with SIGTERM: handle it like Ctrl-C, so the
    # server closes and the trace folder is deleted on the way out, exactly as with SIGINT.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(**launch_options())
    except KeyboardInterrupt:
        pass
    finally:
        shutdown(demo)
