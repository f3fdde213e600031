"""The protocol of a model family: everything halviz knows about one kind of checkpoint.

A family file (``halviz/models/families/NAME.py``) defines one :class:`Family` subclass (or a few
that share code) and adds one line to ``REGISTRY`` in ``families/__init__.py``. Nothing outside
``models/families`` is family-specific: ``loading.py`` asks the registry which family accepts a
``config.json``, the engine asks the bound family for inputs, positions and the image layout, and
trace/viz read only the :class:`ImageLayout` the family produced.

Two faces:

* the **class** holds static facts: which configs it accepts (:meth:`Family.accepts`), the
  transformers model class, how to load the processor, and how to build a random test checkpoint
  from the real config stored in ``halviz/models/configs/<hub-id>/`` (:meth:`Family.build_fixture`);
* an **instance** is bound to one loaded model and processor (``LoadedModel.adapter``). It is
  shared by every request on that model, so it holds no per-request state: whatever a prompt needs
  later travels in the ``inputs`` dict that :meth:`Family.prepare` returns.

Positions. The engine passes ``position_ids`` on every forward, taken from the family:
:meth:`Family.prompt_positions` gives a prompt row's positions as (axes, n) (``position_axes`` = 1
for 1-D RoPE, 3 for M-RoPE's temporal/height/width); the engine pads rows, stacks them as
(rows, n) when axes == 1 or (axes, rows, n) otherwise, and continues every row in decode from its
largest prompt position + 1 on all axes (true of 1-D RoPE and of Qwen2-VL/2.5-VL's M-RoPE, whose
text after the image advances all three axes together).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_PROMPT = "Please describe this image in detail."
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # halviz/models/configs/<org>/<name>/


# ---- the image layout --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """One grid of image tokens: a view of the upload (the whole picture, one tile, a thumbnail).

    ``index`` says which entries of :attr:`ImageLayout.positions` are this grid's tokens, in
    row-major order (``rows * cols`` of them); ``boxes`` are their patches in the uploaded image's
    pixels, x0, y0, x1, y1, clipped to it (a patch wholly in padding has an empty box).
    """

    name: str  # "image", "global", "tile r0 c1", ...
    index: tuple[int, ...]
    rows: int
    cols: int
    boxes: np.ndarray  # (rows, cols, 4) float32

    def __post_init__(self):
        if len(self.index) != self.rows * self.cols:
            raise ValueError(f"grid {self.name!r}: {len(self.index)} tokens for {self.rows}×{self.cols}")
        if tuple(self.boxes.shape) != (self.rows, self.cols, 4):
            raise ValueError(f"grid {self.name!r}: boxes of shape {tuple(self.boxes.shape)}")


@dataclass(frozen=True)
class ImageLayout:
    """Where the image sits in one prompt and how its tokens tile the picture.

    ``positions`` are the sequence indices of every token the vision encoder fills, ascending
    (every grid's tokens, and tokens that belong to no grid such as LLaVA-NeXT's row newlines).
    ``grids[0]`` is the primary grid, the one drawn by default (single-grid families: all tokens).
    """

    positions: tuple[int, ...]
    grids: tuple[Grid, ...]
    image_size: tuple[int, int]  # (width, height) of the uploaded image

    @classmethod
    def single(cls, positions, rows: int, cols: int, boxes: np.ndarray, image_size, name: str = "image"):
        """One grid holding every image token, row-major (LLaVA-1.5, LLaVA-interleave)."""
        positions = tuple(int(p) for p in positions)
        return cls(positions, (Grid(name, tuple(range(len(positions))), rows, cols, boxes),), tuple(image_size))

    @property
    def primary(self) -> Grid:
        return self.grids[0]

    # The primary grid's shape and boxes (what single-grid code reads).
    @property
    def rows(self) -> int:
        return self.primary.rows

    @property
    def cols(self) -> int:
        return self.primary.cols

    @property
    def boxes(self) -> np.ndarray:
        return self.primary.boxes

    def grid_positions(self, grid: Grid | None = None) -> np.ndarray:
        """Sequence positions of ``grid``'s tokens (default: the primary), row-major, as (rows, cols)."""
        grid = grid or self.primary
        return np.asarray(self.positions)[list(grid.index)].reshape(grid.rows, grid.cols)


# ---- the image-token budget ------------------------------------------------------------------------------
DEFAULT_BUDGET = "default"  # every family: the checkpoint's own processor setting
CHEAPEST_BUDGET = "min"  # every family: the cheapest setting it offers (an alias of its first budget)


@dataclass(frozen=True)
class ImagePlan:
    """What one upload becomes at one budget, known before the model runs: the image tokens in the
    prompt and every grid's (name, rows, cols), primary first."""

    tokens: int
    grids: tuple[tuple[str, int, int], ...]

    def describe(self) -> str:
        """"N image tokens, R × C grid" (or each grid's shape when there are several)."""
        shapes = [f"{rows} × {cols}" for _, rows, cols in self.grids]
        if len(shapes) == 1:
            return f"{self.tokens} image tokens, {shapes[0]} grid"
        return f"{self.tokens} image tokens, grids " + " + ".join(
            f"{name} {shape}" for (name, _, _), shape in zip(self.grids, shapes))


# ---- the real checkpoint's files, stored as fixtures ---------------------------------------------------
@dataclass(frozen=True)
class Fixture:
    """A hub checkpoint's small files, as stored in ``halviz/models/configs/<org>/<name>/``.

    ``config.json`` (the checkpoint's own, untouched), ``preprocessor_config.json``,
    ``processor_config.json`` (optional), ``chat_template.jinja`` (optional), ``generation_config.json``
    (optional), ``special_tokens.json`` (``{"ids": {token: id, ...}, "bos_token": ..., "eos_token": ...,
    "pad_token": ..., "unk_token": ..., "image_token": ..., "add_bos_token": bool}``, roles optional) and
    ``SOURCES.md`` (where each value comes from).
    """

    hub_id: str
    folder: Path
    config: dict
    preprocessor: dict
    processor: dict
    chat_template: str | None
    special_tokens: dict
    generation: dict = field(default_factory=dict)

    @classmethod
    def load(cls, hub_id: str) -> "Fixture":
        folder = CONFIGS / hub_id
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no stored config for {hub_id!r} in {folder}")

        def read(name: str, default=None):
            path = folder / name
            return json.loads(path.read_text()) if path.is_file() else default

        template = folder / "chat_template.jinja"
        return cls(hub_id, folder, read("config.json"), read("preprocessor_config.json", {}),
                   read("processor_config.json", {}), template.read_text() if template.is_file() else None,
                   read("special_tokens.json", {"ids": {}}), read("generation_config.json", {}))

    @property
    def special_ids(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.special_tokens.get("ids", {}).items()}

    def role(self, name: str) -> str | None:
        """The token playing ``name`` ("bos_token", "eos_token", ...), or None."""
        return self.special_tokens.get(name)


def stored_hub_ids() -> list[str]:
    """Every hub id with a stored fixture folder."""
    return sorted(str(p.parent.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*/config.json"))


# ---- the protocol ------------------------------------------------------------------------------------
class Family:
    """Base class of a model family; subclasses override what differs (see the module docstring)."""

    family: ClassVar[str] = ""  # short name recorded in traces: "llava-1.5", "qwen2.5-vl", ...
    title: ClassVar[str] = ""  # for people: "LLaVA-1.5 (CLIP + Llama)"
    # Checkpoints offered in the model picker, each with a stored fixture: hub id → what the picker says
    # beside it (size, limits). A family sets both, ``hub_ids = tuple(hub_notes)``.
    hub_notes: ClassVar[dict[str, str]] = {}
    hub_ids: ClassVar[tuple[str, ...]] = ()
    position_axes: ClassVar[int] = 1  # 1: position_ids (rows, n); 3: M-RoPE (3, rows, n)
    # Image-token budgets this family offers, cheapest first, ending with DEFAULT_BUDGET (the processor's
    # own setting); a family with one fixed resolution offers the default alone.
    budgets: ClassVar[tuple[str, ...]] = (DEFAULT_BUDGET,)

    # ---- static facts ---------------------------------------------------------------------------
    @classmethod
    def accepts(cls, config: dict) -> bool:
        """Whether this family handles a checkpoint with this ``config.json`` (a plain dict)."""
        raise NotImplementedError

    @classmethod
    def model_class(cls) -> type:
        """The transformers class that loads the checkpoint (imported here, lazily)."""
        raise NotImplementedError

    @classmethod
    def attn_implementation(cls, text_attention: str) -> dict:
        """Our attention function on the language model only; the vision tower keeps SDPA."""
        return {"text_config": text_attention, "vision_config": "sdpa"}

    @classmethod
    def load_processor(cls, source: str, local: bool):
        """The checkpoint's processor. Families whose transformers processor needs torchvision (a video
        processor) build their processor class with an image processor only."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, local_files_only=local)

    @classmethod
    def fixture_parts(cls, fixture: Fixture, text_layers: int = 1, vision_layers: int | None = None):
        """(config, processor) of a random checkpoint of ``fixture``'s real architecture: the text tower cut
        to ``text_layers`` layers, the vision tower to ``vision_layers`` (None: the fewest its feature layer
        needs), every other size, the vocabulary size and every special token id kept; the processor is the
        real preprocessing around a stand-in tokenizer (:func:`halviz.models.families.standin.standin_tokenizer`)."""
        raise NotImplementedError

    @classmethod
    def build_fixture(cls, fixture: Fixture, folder: str | Path, text_layers: int = 1, seed: int = 0,
                      vision_layers: int | None = None, init_std: float | None = None) -> Path:
        """Save that random checkpoint (float32) in ``folder``, where ``load_model`` reads it. ``init_std``
        replaces the weights' initialisation scale (tests use a large one: random attention is then peaked
        and greedy tokens vary, so a wrong position or mask shows)."""
        from halviz.models.families.standin import save_random, set_init_std

        config, processor = cls.fixture_parts(fixture, text_layers, vision_layers)
        if init_std is not None:
            set_init_std(config, init_std)
        return save_random(cls.model_class(), config, processor, folder, seed, fixture.generation)

    # ---- bound to one loaded model ----------------------------------------------------------------
    def __init__(self, model, processor):
        self.model_config = model.config
        self.processor = processor
        text = text_config(model.config)
        self.num_layers = int(text.num_hidden_layers)
        self.num_heads = int(text.num_attention_heads)
        self.num_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // self.num_heads)
        self.context = getattr(text, "max_position_embeddings", None)
        tok = processor.tokenizer
        self.bos_token_id = tok.bos_token_id
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
        self.eos_token_ids = frozenset(int(i) for i in (tok.eos_token_id, *gen_eos) if i is not None)

    # ---- the image-token budget -------------------------------------------------------------------
    budget: str = DEFAULT_BUDGET  # the budget this instance's processor applies
    _unbudgeted: "Family | None" = None  # a budgeted copy's shared instance

    @classmethod
    def budget_name(cls, value: object) -> str:
        """``value`` as one of :attr:`budgets` (``"min"``: the cheapest); ValueError with a sentence if
        this family offers no such budget."""
        name = str(value).strip().lower() if value is not None else DEFAULT_BUDGET
        if name == CHEAPEST_BUDGET:
            return cls.budgets[0]
        if name not in cls.budgets:
            offered = ", ".join(repr(b) for b in cls.budgets)
            fixed = " (its image resolution is fixed)" if cls.budgets == (DEFAULT_BUDGET,) else ""
            raise ValueError(f"{cls.title or cls.family} has no image budget {str(value)[:40]!r}{fixed}; "
                             f"it offers {offered} (or 'min').")
        return name

    @classmethod
    def budget_label(cls, name: str) -> str:
        """What the Resolution control says for budget ``name``."""
        return "fixed (the model's only resolution)" if cls.budgets == (DEFAULT_BUDGET,) else name

    def with_budget(self, value: object) -> "Family":
        """This family bound to the same model with its processor set to budget ``value`` (a copy: the
        shared instance never changes). The default budget returns ``self``."""
        name = self.budget_name(value)
        base = self._unbudgeted or self
        if name == DEFAULT_BUDGET:
            return base
        budgeted = copy.copy(base)
        budgeted.processor = copy.copy(base.processor)
        budgeted.processor.image_processor = copy.copy(base.processor.image_processor)
        budgeted.budget = name
        budgeted._unbudgeted = base
        budgeted._apply_budget(name)
        return budgeted

    def _apply_budget(self, name: str) -> None:
        """Set this (copied) instance's processor to budget ``name``; families with budgets override it."""
        if name != DEFAULT_BUDGET:
            raise ValueError(f"{self.family} has no budget {name!r}")

    def image_plan(self, width: int, height: int) -> ImagePlan:
        """The image tokens and grids a ``width`` × ``height`` upload gets at this instance's budget,
        computed from the processor's rules without running it or the model."""
        raise NotImplementedError

    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """The full prompt string with one image placeholder, in the checkpoint's own chat format.

        The default renders the checkpoint's chat template with the image first in the user turn and
        ``system`` (when given) as a turn of its own."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def prepare(self, image: "Image.Image", prompt: str, device: torch.device, dtype: torch.dtype,
                system: str | None = None) -> tuple[dict, ImageLayout]:
        """Model inputs for one prompt (``input_ids`` (1, n), the processed pixels and whatever else the
        model's forward needs, on ``device``; floating inputs in ``dtype``) and the image layout."""
        raise NotImplementedError

    def text_only_ids(self, input_ids: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
        """The prompt (n,) without its image: what a text-only stream (VHR) reads. Default: the image
        tokens dropped; families with markers around the image (vision start/end) drop those too."""
        keep = torch.ones(input_ids.shape[-1], dtype=torch.bool, device=input_ids.device)
        keep[list(layout.positions)] = False
        return input_ids[..., keep]

    def prompt_positions(self, input_ids: torch.Tensor, inputs: dict | None) -> torch.Tensor:
        """Positions (position_axes, n) of a prompt row ``input_ids`` (n,). ``inputs`` is what
        :meth:`prepare` returned for a row holding the image, None for a text-only row."""
        n = int(input_ids.shape[-1])
        return torch.arange(n, device=input_ids.device).expand(self.position_axes, n)

    def encode_image(self, model, inputs: dict) -> object:
        """The vision tower and projector on ``inputs``' pixels, run once per distinct image."""
        raise NotImplementedError

    def image_inputs(self, encoded: list, inputs: dict) -> dict:
        """Model inputs that place ``encoded[i]`` (an :meth:`encode_image` output) in the i-th batch row
        holding an image (``inputs``: the prompt's :meth:`prepare` output).

        The default suits every transformers model that takes ``mm_encoder_outputs``: one output object
        whose ``pooler_output`` lists the rows' image features in order."""
        if not encoded:
            return {}
        joined = type(encoded[0])(**{k: v for k, v in encoded[0].items()})
        joined.pooler_output = [feature for e in encoded for feature in e.pooler_output]
        return {"mm_encoder_outputs": {"image": joined}}


def processor_fields(preprocessor: dict) -> dict:
    """A ``preprocessor_config.json`` dict without the keys that name classes (not constructor options)."""
    return {k: v for k, v in preprocessor.items() if k not in ("image_processor_type", "processor_class")}


def text_config(config):
    """The language model's config: ``text_config`` where the config nests one, else the config itself
    (flat hub configs such as Qwen2.5-VL's are nested by transformers, but do not rely on it)."""
    return getattr(config, "text_config", None) or config


def raw_text_config(config: dict) -> dict:
    """The same for a plain ``config.json`` dict."""
    return config.get("text_config") or config
