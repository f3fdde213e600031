import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from halviz.models.tiny import TinySpec, save_tiny_llava  # noqa: E402

# LLaVA-1.5 layout (CLIP 336/14 → 576 tokens on 24×24) and LLaVA-interleave (SigLIP + Qwen2 with GQA).
SPECS = {
    "llava-1.5": TinySpec(family="llava-1.5", image_size=336, patch_size=14, heads=4, kv_heads=4, init_std=0.2),
    "llava-interleave": TinySpec(family="llava-interleave", image_size=112, patch_size=14, heads=4, kv_heads=2,
                                 text_layers=3, init_std=0.2),
}


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: save_tiny_llava(spec, root / name) for name, spec in SPECS.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from halviz.models import load_model

    return {name: load_model(str(path), device="cpu") for name, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def tiny_models_f64(tiny_model_dirs):
    """float64 copies: comparisons with stock attention then differ only by ~1e-12 of rounding."""
    import torch
    from halviz.models import load_model

    return {name: load_model(str(path), device="cpu", dtype=torch.float64) for name, path in tiny_model_dirs.items()}


@pytest.fixture
def photo():
    """A deterministic non-square picture with structure, so attention differs between patches."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8))
