"""halviz: a visual debugger for hallucination in multimodal LLMs. Builds the Gradio app and launches it."""

from halviz.ui import build_app, launch_options

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
