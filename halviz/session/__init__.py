"""What a comparison needs besides a page: request checks, the decode driver, the model cache, caption
results, what-if selections and per-session state. Gradio-free: the app, the public API and the
command-line tools share it; errors are plain exceptions that each caller words for its user."""
