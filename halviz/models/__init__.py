from halviz.models.families import DEFAULT_PROMPT, ImageLayout
from halviz.models.loading import TOY_MODEL_DIR, LoadedModel, ModelLoadError, load_model

__all__ = ["DEFAULT_PROMPT", "ImageLayout", "LoadedModel", "ModelLoadError", "TOY_MODEL_DIR", "load_model"]
