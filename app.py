"""halviz: a visual debugger for hallucination in multimodal LLMs. Builds the Gradio app and launches it
(the same as ``halviz app``; Spaces runs this file)."""

from halviz.ui.serve import build, serve

demo = build()  # the default model is ready before the first visitor

if __name__ == "__main__":
    serve(demo)
