"""Image-token budgets: each family's budgeted processor against a processor transformers builds with
that very setting from the stored config, the token count and grids predicted without running
anything against what the processor made, the per-device default, the request checks, and a real
decode at a reduced budget recording its budget and drawing its grids."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from halviz.models.families.base import DEFAULT_BUDGET, Fixture, processor_fields
from halviz.session import resolution
from halviz.session.checks import InputError
from halviz.session.model_defaults import default_image_budget
from test_family_geometry import bind, ramp

SMOL = "HuggingFaceTB/SmolVLM-256M-Instruct"
QWEN = "Qwen/Qwen2.5-VL-3B-Instruct"
ONEVISION = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
UPLOADS = [(640, 480), (200, 700), (37, 23), (1600, 300)]


def smolvlm_reference(fixture: Fixture, budget: str):
    """Idefics3's own processor, built with the setting the budget names."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor
    from halviz.models.families.standin import standin_tokenizer

    fields = processor_fields(fixture.preprocessor)
    if budget == "global":
        fields["do_image_splitting"] = False
    elif budget != DEFAULT_BUDGET:
        fields["size"] = {"longest_edge": int(budget[0]) * 512}
    return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**fields), tokenizer=standin_tokenizer(fixture),
                             chat_template=fixture.chat_template, image_seq_len=fixture.processor["image_seq_len"])


def qwen_reference(fixture: Fixture, budget: str):
    from transformers import Qwen2VLImageProcessorPil
    from halviz.models.families.qwen2_5_vl import MAX_PIXELS, image_only_processor
    from halviz.models.families.standin import standin_tokenizer

    fields = processor_fields(fixture.preprocessor)
    most = MAX_PIXELS if budget == DEFAULT_BUDGET else int(budget) * 28 * 28
    image_processor = Qwen2VLImageProcessorPil(**{k: v for k, v in fields.items() if k not in ("min_pixels", "max_pixels")},
                                               size={"shortest_edge": fields["min_pixels"], "longest_edge": most})
    return image_only_processor(image_processor, standin_tokenizer(fixture), fixture.chat_template)


def onevision_reference(fixture: Fixture, budget: str):
    from halviz.models.families.llava_onevision import LlavaOnevision, image_only_processor
    from halviz.models.families.standin import standin_tokenizer

    options = dict(fixture.processor)
    options.pop("processor_class", None)
    if budget != DEFAULT_BUDGET:
        options["vision_aspect_ratio"] = budget
    return image_only_processor(LlavaOnevision.image_processor(fixture.preprocessor), standin_tokenizer(fixture),
                                fixture.chat_template, **options)


def family_of(hub_id: str):
    from halviz.models.families import family_for_hub_id

    family = family_for_hub_id(hub_id)
    fixture = Fixture.load(hub_id)
    return bind(family, fixture, family.fixture_processor(fixture)), fixture


CASES = [(SMOL, smolvlm_reference), (QWEN, qwen_reference), (ONEVISION, onevision_reference)]


@pytest.mark.parametrize("hub_id,reference", CASES, ids=["smolvlm", "qwen", "onevision"])
def test_budgeted_processor_equals_transformers_at_that_setting(hub_id, reference):
    bound, fixture = family_of(hub_id)
    assert bound.budgets[-1] == DEFAULT_BUDGET and len(bound.budgets) >= 3
    tokens_seen = {}
    for budget in bound.budgets:
        family = bound.with_budget(budget)
        assert family.budget == budget and bound.budget == DEFAULT_BUDGET  # the shared instance never changes
        real = reference(fixture, budget)
        for size in UPLOADS:
            image = ramp(*size)
            inputs, layout = family.prepare(image, "describe", torch.device("cpu"), torch.float32)
            want = real(text=family.chat_text("describe"), images=image, return_tensors="pt")
            assert torch.equal(inputs["input_ids"], want["input_ids"]), (budget, size)
            assert torch.equal(inputs["pixel_values"], want["pixel_values"].float()), (budget, size)
            plan = family.image_plan(*size)  # predicted without the processor's call
            assert plan.tokens == len(layout.positions) == int((want["input_ids"][0] == family.image_token_id).sum())
            assert plan.grids == tuple((g.name, g.rows, g.cols) for g in layout.grids)
            tokens_seen.setdefault(budget, []).append(plan.tokens)
    # Cheapest first: a budget never gives more tokens than the next one, for any upload.
    counts = np.array([tokens_seen[b] for b in bound.budgets])
    assert (np.diff(counts, axis=0) >= 0).all()


def test_smolvlm_global_budget_is_the_512_view_alone():
    bound, _ = family_of(SMOL)
    plan = bound.with_budget("min").image_plan(640, 480)
    assert (plan.tokens, plan.grids) == (64, (("image", 8, 8),))
    assert bound.with_budget("2x2").image_plan(640, 480).tokens == (4 + 1) * 64
    assert bound.image_plan(640, 480).describe() == "832 image tokens, grids global 8 × 8 + tiles 3×4 24 × 32"


def test_fixed_families_say_they_are_fixed_and_plan_their_one_grid(tmp_path):
    from halviz.models.families.llava import LlavaInterleave, Llava15

    for family, hub_id, side in [(Llava15, "llava-hf/llava-1.5-7b-hf", 24),
                                 (LlavaInterleave, "llava-hf/llava-interleave-qwen-0.5b-hf", 27)]:
        assert family.budgets == (DEFAULT_BUDGET,)
        assert family.budget_name("min") == DEFAULT_BUDGET
        with pytest.raises(ValueError, match="fixed"):
            family.budget_name("global")
        fixture = Fixture.load(hub_id)
        _, processor = family.fixture_parts(fixture)
        bound = bind(family, fixture, processor)
        _, layout = bound.prepare(ramp(500, 333), "describe", torch.device("cpu"), torch.float32)
        plan = bound.image_plan(500, 333)
        assert plan.tokens == len(layout.positions) == side * side
        assert plan.grids == (("image", layout.rows, layout.cols),)


def test_default_per_device_and_request_checks():
    from halviz.models.families.smolvlm import SmolVLM
    from halviz.models.families.llava import LlavaInterleave

    assert default_image_budget(SmolVLM, "cpu") == "global"
    assert default_image_budget(SmolVLM, "cuda") == DEFAULT_BUDGET
    assert default_image_budget(LlavaInterleave, "cpu") == DEFAULT_BUDGET
    assert resolution.resolve_budget(SmolVLM, None, "cpu") == "global"
    assert resolution.resolve_budget(SmolVLM, " 3X3 ", "cuda") == "3x3"
    for bad in ("tiny", 7, "", "x" * 100):
        with pytest.raises(InputError, match="budget"):
            resolution.check_budget(SmolVLM, bad)
    settings = {"image": {"budget": "min"}, "vhr": {"k": 1}}
    assert resolution.budget_from_settings(settings) == "min" and settings == {"vhr": {"k": 1}}
    with pytest.raises(InputError, match="only \"budget\""):
        resolution.budget_from_settings({"image": {"tiles": 2}})
    assert resolution.family_for_key(SMOL) is SmolVLM
    assert resolution.family_for_key("toy").family == "llava-1.5"


def test_preview_text_before_decoding():
    preview = resolution.Previews()
    family = preview.family(SMOL)
    assert family is not None and preview.family(SMOL) is family  # bound once
    assert resolution.preview_text(family, (640, 480), None, "cpu").startswith(
        "**64 image tokens, 8 × 8 grid** at **global** (the default on this CPU)")
    assert "320 image tokens" in resolution.preview_text(family, (640, 480), "2x2", "cpu")
    assert "no image budget" in resolution.preview_text(family, (640, 480), "huge", "cpu")
    from halviz.models import load_model

    loaded = load_model("toy")  # the toy's real processor decides its grid
    _, layout = loaded.adapter.prepare(ramp(100, 100), "describe", torch.device("cpu"), torch.float32)
    shown = resolution.preview_text(preview.family("toy"), (100, 100), None, "cpu")
    assert f"**{len(layout.positions)} image tokens, {layout.rows} × {layout.cols} grid**" in shown and "fixed" in shown


@pytest.fixture(scope="module")
def smol_checkpoint(tmp_path_factory):
    from halviz.models import load_model
    from halviz.models.families.smolvlm import SmolVLM

    folder = SmolVLM.build_fixture(Fixture.load(SMOL), tmp_path_factory.mktemp("smol"), text_layers=1)
    return load_model(str(folder), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("budget,grids", [("global", [(8, 8)]), ("2x2", [(8, 8), (16, 16)])])
def test_decode_at_a_budget_records_it_and_every_grid_view_draws(smol_checkpoint, tmp_path, budget, grids):
    """A real (random, one-layer) SmolVLM decoded at a reduced budget: the trace says the budget, holds
    as many image tokens as planned, and the patch map draws every view cell by cell: each cell shows
    the recorded attention on the image token whose box (in the trace) holds the cell's centre."""
    import plotly.graph_objects as go

    from halviz import viz
    from halviz.session.results import decode_rounds
    from halviz.trace import Trace

    loaded = resolution.budgeted(smol_checkpoint, budget)
    assert loaded.adapter.budget == budget and smol_checkpoint.adapter.budget == DEFAULT_BUDGET
    progress = list(decode_rounds(loaded, ramp(640, 480), "describe", [[]], 3, 0.0))[-1]
    progress.traces[0].save(tmp_path / "t")
    trace = Trace.load(tmp_path / "t.npz")  # through the format checks, as the debugger reads it
    assert trace.meta["image_budget"] == budget
    assert len(trace.meta["image_positions"]) == loaded.adapter.image_plan(640, 480).tokens
    listed = trace.meta.get("grids") or [{"name": "image", "grid": trace.meta["grid"],
                                          "index": list(range(len(trace.meta["image_positions"]))),
                                          "patch_boxes": trace.meta["patch_boxes"]}]
    assert [tuple(g["grid"]) for g in listed] == grids
    views = [value for _, value in viz.view_choices(trace)]
    assert len(views) == (1 if len(grids) == 1 else len(grids) + 1)  # primary, the tiles, tiles in place
    expected = trace.arrays["image_attn"][1, 0].astype(np.float64)
    for view in views:
        drawn = [t for t in viz.attention_overlay(trace, 1, layer=0, view=view).data if isinstance(t, go.Heatmap)]
        assert drawn, view
        for heatmap in drawn:
            grid = next(g for g in listed if heatmap.hovertemplate.startswith(g["name"] + ":")) if len(listed) > 1 \
                else listed[0]
            boxes = np.asarray(grid["patch_boxes"])
            z = np.asarray(heatmap.z, dtype=np.float64)
            xs, ys = np.asarray(heatmap.x, dtype=np.float64), np.asarray(heatmap.y, dtype=np.float64)
            assert z.shape == (len(ys) - 1, len(xs) - 1)
            for r in range(z.shape[0]):
                for c in range(z.shape[1]):
                    x, y = (xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2
                    inside = np.flatnonzero((boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3]))
                    assert len(inside) == 1, (view, r, c)
                    assert z[r, c] == pytest.approx(expected[grid["index"][inside[0]]], rel=1e-3, abs=1e-6)


def test_a_column_decoded_again_keeps_its_recorded_budget(smol_checkpoint):
    """The debugger's re-run (and an evaluation sample decoded again) goes through the stack decoder: at
    the budget the column was recorded at, not the device's default (which would change the image tokens)."""
    from halviz.methods import METHODS
    from halviz.session.decoding import gpu_stack_decoder

    class OneModel:
        def peek(self, key):
            return smol_checkpoint

    decode = gpu_stack_decoder(OneModel(), METHODS)
    image = np.asarray(ramp(640, 480))
    for budget in ("2x2", "global"):
        last = list(decode("smol", image, "describe", [[("vanilla", {})]], 2, 0.0, image_budget=budget))[-1]
        trace = last.traces[0]
        assert trace.meta["image_budget"] == budget
        assert len(trace.meta["image_positions"]) == resolution.budgeted(smol_checkpoint, budget).adapter \
            .image_plan(640, 480).tokens
