"""Every model family against its real checkpoint's configuration (issue 16).

Each case builds a random checkpoint from the files stored in ``halviz/models/configs/<hub-id>/``
(the real config.json with the text tower cut to a layer or two, the real preprocessing and chat
template, a stand-in tokenizer with the real special tokens at their real ids), saves it and loads it
through :func:`halviz.models.load_model`. Then, per family:

- it loads as its family, with the real head counts, vocabulary and special ids;
- the image-token count, the grids and every patch's pixel box equal a hand computation from the
  processor's documented resize / crop / pad, on a square and a non-square upload;
- halviz's greedy tokens equal transformers' own ``generate`` (SDPA, float64) for 16 tokens;
- every method alone, and the largest stack the registry allows, run to the end;
- every method that can be switched off gives vanilla's tokens when it is.

Adding a family = one ``Case`` in ``CASES`` (its hand geometry below it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from halviz.engine.batch import BatchDecoder
from halviz.engine.recorder import RecordOptions
from halviz.methods import METHODS, REGISTRY, check_compatible, method_class
from halviz.models import load_model
from halviz.models.families import Fixture, families, family_for_config, family_for_hub_id, raw_text_config
from halviz.models.families.base import stored_hub_ids
from family_hand_grids import hand_onevision, hand_qwen, hand_smolvlm

PROMPT = "Please describe this image in detail."
GENERATE_TOKENS = 16
METHOD_TOKENS = 3


@dataclass(frozen=True)
class Expected:
    """What the hand computation says about one upload."""

    image_tokens: int  # tokens the vision encoder fills (all grids, plus any outside a grid)
    grids: list[tuple[int, int, np.ndarray]]  # (rows, cols, boxes (rows, cols, 4)) in layout order


@dataclass(frozen=True)
class Case:
    hub_id: str
    image_token: str  # the placeholder the prompt repeats once per vision feature
    grids: Callable[[int, int], Expected]  # (width, height) -> hand-computed layout
    uploads: tuple[tuple[int, int], ...]  # (width, height): a square and a non-square one at least
    text_layers: int = 1
    # Text-tower sizes replaced for speed (only where a full-width tower would not fit the suite's time).
    text_overrides: dict = field(default_factory=dict)
    init_std: float = 0.2  # peaked random attention: greedy tokens vary, so a wrong position shows


def boxes_from_edges(x_edges: np.ndarray, y_edges: np.ndarray) -> np.ndarray:
    """(rows, cols, 4) boxes from column edges x (cols + 1) and row edges y (rows + 1)."""
    rows, cols = len(y_edges) - 1, len(x_edges) - 1
    boxes = np.empty((rows, cols, 4))
    boxes[..., 0], boxes[..., 2] = x_edges[None, :-1], x_edges[None, 1:]
    boxes[..., 1], boxes[..., 3] = y_edges[:-1, None], y_edges[1:, None]
    return boxes


def llava15_grid(width: int, height: int) -> Expected:
    """CLIPImageProcessor as llava-1.5-7b-hf configures it: resize the short side to 336 (the long side to
    int(336 · long / short)), centre-crop 336 × 336 (offset (new − 336) // 2), cut 14-pixel patches: 24 × 24;
    the CLS token is dropped ('default' strategy), so 576 tokens. A crop pixel p maps back to
    (p + offset) · original / resized."""
    short, long = min(width, height), max(width, height)
    new_long = int(336 * long / short)
    new_w, new_h = (new_long, 336) if width >= height else (336, new_long)
    left, top = (new_w - 336) // 2, (new_h - 336) // 2
    edges = np.arange(25) * 14.0
    x = (edges + left) * width / new_w
    y = (edges + top) * height / new_h
    return Expected(576, [(24, 24, boxes_from_edges(x, y))])


def interleave_grid(width: int, height: int) -> Expected:
    """SiglipImageProcessor (so400m-384): squash to 384 × 384 whatever the aspect, 14-pixel patches with no
    padding: 27 × 27 = 729 tokens cover the first 378 pixels of each side (the last 6 are never seen)."""
    edges = np.arange(28) * 14.0
    return Expected(729, [(27, 27, boxes_from_edges(edges * width / 384, edges * height / 384))])


def _expected(hand: Callable) -> Callable[[int, int], Expected]:
    """A hand computation of tests/family_hand_grids.py as this file's Expected."""
    def grids(width: int, height: int) -> Expected:
        n, found = hand(width, height)
        return Expected(n, [(r, c, np.asarray(b, dtype=np.float64)) for r, c, b in found])
    return grids


CASES = [
    # LLaVA-1.5-7B's text tower narrowed 4× (4096 → 1024 wide, 11008 → 2752 feed-forward, 32 heads of 32):
    # at full width one layer takes ~85 s and 10 GB here. Its vision tower, projector input, vocabulary,
    # special ids, processor and template are the real ones; the benchmarks build it at full width.
    Case("llava-hf/llava-1.5-7b-hf", "<image>", llava15_grid, ((336, 336), (500, 375), (300, 640)),
         text_overrides={"hidden_size": 1024, "intermediate_size": 2752}),
    Case("llava-hf/llava-interleave-qwen-0.5b-hf", "<image>", interleave_grid, ((384, 384), (500, 333))),
    # SmolVLM enlarges every upload to 2048 on its long side: a square one is 16 tiles + the global view
    # (1088 tokens); the decode runs on the last, very wide upload (4 tiles + global, 320 tokens).
    Case("HuggingFaceTB/SmolVLM-256M-Instruct", "<image>", _expected(hand_smolvlm), ((448, 448), (640, 480), (2000, 100))),
    # Qwen2.5-VL-3B's decoder narrowed 4× (2048 -> 512 wide with 4 heads, head_dim 128 so M-RoPE's sections
    # stay [16, 24, 24]; 11008 -> 2752 feed-forward): at full width its 151936×2048 embedding alone is
    # 311 M parameters. Vocabulary, special ids, vision tower width, processor and template are the real ones.
    Case("Qwen/Qwen2.5-VL-3B-Instruct", "<|image_pad|>", _expected(hand_qwen), ((448, 448), (500, 333), (224, 160)),
         text_overrides={"hidden_size": 512, "intermediate_size": 2752, "num_attention_heads": 4}),
    # OneVision: 729 base tokens plus the unpadded tile grid with a newline per row; the decode runs on the
    # last, flat upload (one tile, 3 rows of 27 kept: 813 tokens) to stay fast.
    Case("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "<image>", _expected(hand_onevision),
         ((384, 384), (1600, 300), (384, 48))),
]
IDS = [c.hub_id.split("/")[-1] for c in CASES]


def _fixture(case: Case) -> Fixture:
    fixture = Fixture.load(case.hub_id)
    if case.text_overrides:
        config = dict(fixture.config)
        if "text_config" in config:
            config["text_config"] = {**config["text_config"], **case.text_overrides}
        else:
            config.update(case.text_overrides)
        fixture = replace(fixture, config=config)
    return fixture


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def built(request, tmp_path_factory):
    """(case, family class, checkpoint folder, the model loaded in float64)."""
    case = request.param
    family = family_for_hub_id(case.hub_id)
    folder = family.build_fixture(_fixture(case), tmp_path_factory.mktemp(IDS[CASES.index(case)]),
                                  text_layers=case.text_layers, init_std=case.init_std)
    return case, family, folder, load_model(str(folder), device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def built_f32(built):
    """The same checkpoint in float32: the method runs only need to run, and float32 is twice as fast."""
    case, family, folder, _ = built
    return case, family, folder, load_model(str(folder), device="cpu", dtype=torch.float32)


def upload(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


def test_every_offered_hub_id_has_a_case_and_a_fixture():
    offered = {hub for family in families() for hub in family.hub_ids}
    assert offered <= {c.hub_id for c in CASES}
    for hub in offered:
        assert (Fixture.load(hub).folder / "SOURCES.md").is_file()
    for hub in stored_hub_ids():  # no stored checkpoint is left without a family that offers it
        assert hub in offered and family_for_config(Fixture.load(hub).config) is family_for_hub_id(hub), hub


def test_loads_as_its_family_with_the_real_sizes_and_ids(built):
    case, family, _, loaded = built
    fixture = _fixture(case)
    assert type(loaded.adapter) is family and case.hub_id in family.hub_ids
    assert family.accepts(Fixture.load(case.hub_id).config)
    assert sum(f.accepts(Fixture.load(case.hub_id).config) for f in families()) == 1
    text = raw_text_config(loaded.model.config.to_dict())
    real = raw_text_config(fixture.config)
    heads = real.get("num_attention_heads", 32)
    assert (loaded.adapter.num_layers, loaded.adapter.num_heads) == (case.text_layers, heads)
    assert loaded.adapter.num_kv_heads == real.get("num_key_value_heads", heads)
    assert text["vocab_size"] == real["vocab_size"]
    assert loaded.model.get_input_embeddings().weight.shape[0] == real["vocab_size"]
    tokenizer = loaded.processor.tokenizer
    for token, i in fixture.special_ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == i, token
    assert loaded.adapter.eos_token_ids >= {fixture.special_ids[fixture.role("eos_token")]}


@pytest.mark.parametrize("which", [0, 1, 2])
def test_image_tokens_grids_and_patch_boxes_match_the_hand_computation(built, which):
    case, _, _, loaded = built
    if which >= len(case.uploads):
        pytest.skip("no such upload for this family")
    width, height = case.uploads[which]
    inputs, layout = loaded.adapter.prepare(upload(width, height), PROMPT, loaded.device, loaded.dtype)
    expected = case.grids(width, height)
    ids = inputs["input_ids"][0]
    placeholder = loaded.processor.tokenizer.convert_tokens_to_ids(case.image_token)
    assert list(layout.positions) == torch.nonzero(ids == placeholder).flatten().tolist()
    assert len(layout.positions) == expected.image_tokens
    assert layout.image_size == (width, height)
    assert [(g.rows, g.cols) for g in layout.grids] == [(r, c) for r, c, _ in expected.grids]
    seen = []
    for grid, (_, _, boxes) in zip(layout.grids, expected.grids):
        np.testing.assert_allclose(grid.boxes, np.clip(boxes, 0, [width, height, width, height]), atol=1e-3)
        seen += grid.index
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(len(layout.positions)))


def test_greedy_tokens_equal_transformers_generate(built):
    case, family, folder, loaded = built
    image = upload(*case.uploads[-1])
    decoder = BatchDecoder(loaded, image, PROMPT, [[]], max_new_tokens=GENERATE_TOKENS)
    decoder.run_to_end()
    ours = decoder.columns[0].generated
    stock = family.model_class().from_pretrained(str(folder), dtype=torch.float64, attn_implementation="sdpa").eval()
    inputs, _ = loaded.adapter.prepare(image, PROMPT, loaded.device, loaded.dtype)
    with torch.inference_mode():
        out = stock.generate(**inputs, max_new_tokens=GENERATE_TOKENS, do_sample=False)
    theirs = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(set(theirs)) > 3  # the random model does not repeat one token: positions and masks matter
    assert ours == theirs[: len(ours)] and len(ours) in (len(theirs), GENERATE_TOKENS)


def largest_stack() -> list[str]:
    """Every mitigation method, in registry order, that stacks with the ones before it."""
    names: list[str] = []
    for name in METHODS:
        if name == "vanilla":
            continue
        try:
            check_compatible([method_class(n)() for n in [*names, name]])
        except ValueError:
            continue
        names.append(name)
    return names


# Methods that need more than the fixtures' one decoder layer: their column must refuse with a sentence.
NEEDS_TWO_LAYERS = {"cai": "CAI needs at least 2 decoder layers"}  # reads one layer's lens, tilts the next


def test_every_method_alone_and_the_largest_stack_run(built_f32):
    case, _, _, loaded = built_f32
    alone = [n for n in REGISTRY if n != "vanilla"]
    stack = [n for n in largest_stack() if n not in NEEDS_TWO_LAYERS]  # CAI's stacks: tests/test_cai.py
    assert len(stack) >= 3
    stacks = [[method_class(n)() for n in [name]] for name in alone] + [[method_class(n)() for n in stack]]
    decoder = BatchDecoder(loaded, upload(*case.uploads[-1]), PROMPT, stacks, max_new_tokens=METHOD_TOKENS,
                           stop_at_eos=False)
    traces = decoder.run_to_end()
    for name, column, trace in zip([*alone, "+".join(stack)], decoder.columns, traces):
        if name in NEEDS_TWO_LAYERS and loaded.adapter.num_layers < 2:
            assert column.finish == "error" and NEEDS_TWO_LAYERS[name] in str(column.error), (name, column.error)
            assert trace.num_steps == 0  # its trace is empty, not a crash
            continue
        assert column.error is None, f"{name}: {column.error!r}"
        assert column.finish == "length" and len(column.generated) == METHOD_TOKENS, name
        assert trace.meta["family"] == loaded.adapter.family
        assert trace.arrays["image_attn"].shape[-1] == len(decoder.layout.positions)


# Knob values that make each method do nothing (methods without such a setting are absent).
OFF = {
    "prunehal": {"t": 0},
    "vasparse": {"keep_ratio": 1.0, "alpha": 0.0, "sink_beta": 0.0},
    "vhr": {"alpha": 1.0},
    "kvsmooth": {"lambda_ref": 0.0, "radius": 0.0},
    "vcd": {"alpha": 0.0},
    "var": {"p": 0.0},
    "scale_heads": {"scale": 1.0},
}


def test_methods_switched_off_give_vanilla_tokens(built_f32):
    case, _, _, loaded = built_f32
    names = [n for n in OFF if n in REGISTRY]
    stacks = [[]] + [[method_class(n)(**OFF[n])] for n in names]
    decoder = BatchDecoder(loaded, upload(*case.uploads[-1]), PROMPT, stacks, max_new_tokens=6, stop_at_eos=False,
                           record=RecordOptions(enabled=False))  # tokens only: recording would change none
    decoder.run_to_end()
    vanilla = decoder.columns[0].generated
    assert len(vanilla) == 6
    for name, column in zip(names, decoder.columns[1:]):
        assert column.error is None, f"{name}: {column.error!r}"
        assert column.generated == vanilla, name
