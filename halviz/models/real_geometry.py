"""Random checkpoints with a real model's exact architecture, for the benchmarks (CPU and GPU).

Built from the fixture folders in ``configs/<hub-id>/`` by the model's family (see
:meth:`halviz.models.families.base.Family.fixture_parts`): random weights, the checkpoint's real
preprocessing, and a stand-in tokenizer with the checkpoint's special tokens at their real ids.
Here ``layers`` cuts both towers (the vision tower keeps at least the layers its feature layer reads).
"""

from __future__ import annotations

from pathlib import Path

import torch

from halviz.models.families import Fixture, family_for_hub_id
from halviz.models.families.standin import cut_text_layers, drop_dtypes, random_model

GEOMETRIES = {"7b": "llava-hf/llava-1.5-7b-hf", "interleave-0.5b": "llava-hf/llava-interleave-qwen-0.5b-hf"}


def hub_id(name: str) -> str:
    """A short bench name of ``GEOMETRIES``, or any hub id with a stored fixture."""
    return GEOMETRIES.get(name, name)


def real_geometry_config(name: str, layers: int | None = None) -> dict:
    """The LLaVA checkpoint's config.json as a dict; ``layers`` cuts both towers (every other size is kept)."""
    config = drop_dtypes(Fixture.load(hub_id(name)).config)
    if layers is not None:
        config = cut_text_layers(config, layers)
        # The vision feature layer (-1 or -2) must still exist.
        config["vision_config"]["num_hidden_layers"] = max(layers, -config["vision_feature_layer"])
    return config


def build_real_geometry_model(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                              layers: int | None = None, seed: int = 0):
    """(model, processor): random weights of the real architecture, allocated straight on ``device``;
    ``layers`` cuts both towers (None: the whole checkpoint)."""
    fixture = Fixture.load(hub_id(name))
    family = family_for_hub_id(fixture.hub_id)
    config, processor = family.fixture_parts(fixture, layers or 1, layers)
    if layers is None:  # the checkpoint's own config, uncut (its config class reads the hub's config.json)
        config = type(config)(**drop_dtypes(fixture.config))
    model = random_model(family.model_class(), config, device, dtype, seed, fixture.generation)
    return model, processor


def save_real_geometry(name: str, folder: str | Path, layers: int | None = None, seed: int = 0) -> Path:
    """Build on the CPU in float32 and save as a checkpoint folder that ``load_model`` reads."""
    folder = Path(folder)
    model, processor = build_real_geometry_model(name, "cpu", torch.float32, layers, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
