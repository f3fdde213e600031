from halviz.models.adapters import DEFAULT_PROMPT, ImageLayout, LlavaAdapter  # noqa: F401 (compatibility)
from halviz.models.loading import TOY_MODEL_DIR, LoadedModel, ModelLoadError, load_model

__all__ = ["DEFAULT_PROMPT", "ImageLayout", "LlavaAdapter", "LoadedModel", "ModelLoadError", "TOY_MODEL_DIR", "load_model"]
