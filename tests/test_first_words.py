"""Before the first words: the decoder runs the vision tower when asked (the prefill then reuses its
output, and the decode is unchanged), and decode_rounds and the app's status report the phases in order,
with counts checked against what the decode recorded."""

import pytest
import torch

from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.methods import build_stack
from halviz.session.results import decode_rounds
from test_batch import _assert_same_trace

# VCD: a second image through the tower (its noised copy); VHR: its own main row and a text-only row.
NAMES = ["vanilla", "vcd", "vhr"]
TOKENS = 6


def _stacks():
    return [build_stack([n] if n != "vanilla" else [], {}) for n in NAMES]


def _counting_tower(monkeypatch, adapter) -> list:
    """Count the adapter's vision-tower calls (one entry per call)."""
    calls = []
    encode = adapter.encode_image

    def counted(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(adapter, "encode_image", counted)
    return calls


@pytest.mark.parametrize("family", ["llava-1.5", "llava-interleave"])
def test_encoding_first_leaves_every_column_equal_to_its_solo_run_float64(tiny_models_f64, photo, family,
                                                                           monkeypatch):
    loaded = tiny_models_f64[family]
    calls = _counting_tower(monkeypatch, loaded.adapter)
    decoder = BatchDecoder(loaded, photo, "Describe.", _stacks(), TOKENS)
    work = decoder.prefill_work()
    assert calls == []  # planning runs no model
    decoder.encode_images()
    assert len(calls) == work.images == 2  # the picture and VCD's noised copy
    traces = decoder.run_to_end()
    assert len(calls) == 2  # the prefill reused the encoded images
    assert traces[0].arrays["step_ms"][0] >= decoder._encode_s * 1e3  # step 0 still counts the tower
    for name, batched in zip(NAMES, traces):
        solo = Decoder(loaded, photo, "Describe.", build_stack([name] if name != "vanilla" else [], {}), TOKENS)
        _assert_same_trace(batched, solo.run_to_end())


def test_phases_come_in_order_before_the_first_token_with_the_recorded_counts(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    updates = list(decode_rounds(loaded, photo, "Describe.", _stacks(), TOKENS, update_every_s=1e9, phases=True))
    assert [u.phase for u in updates[:3]] == ["image", "prompt", None]
    assert all(u.phase is None for u in updates[2:])
    assert [len(t) for u in updates[:2] for t in u.texts] == [0] * 2 * len(NAMES)
    assert [len(t) for t in updates[2].texts] == [1] * len(NAMES)  # the next update is the first words
    meta = updates[-1].traces[0].meta
    image_tokens, prompt_tokens = len(meta["image_positions"]), meta["prompt_len"]
    assert f"Encoding the picture: {image_tokens} image tokens (1 view) through the vision tower twice" \
        in updates[0].note
    # Rows: vanilla and VCD share a main row, VCD's noised row, VHR's own main row and its text-only row.
    assert updates[1].note.startswith(
        f"Reading the prompt: {prompt_tokens} tokens ({image_tokens} of them the picture's) in 4 rows")
    plain = list(decode_rounds(loaded, photo, "Describe.", _stacks(), TOKENS, update_every_s=1e9))
    assert all(u.phase is None for u in plain) and len(plain) == len(updates) - 2  # other callers: unchanged
    assert plain[-1].tokens == updates[-1].tokens


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from halviz.models import load_model
    from halviz.models.families.base import Fixture
    from halviz.models.families.smolvlm import SmolVLM

    folder = SmolVLM.build_fixture(Fixture.load("HuggingFaceTB/SmolVLM-256M-Instruct"),
                                   tmp_path_factory.mktemp("smol"), text_layers=1)
    return load_model(str(folder), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("budget,views", [("global", 1), ("2x2", 2 * 2 + 1)])
def test_a_tiled_picture_counts_its_views(smol, budget, views):
    """SmolVLM at 2x2 sends four tiles and the whole picture through the tower; at 'global' one view."""
    from halviz.session import resolution
    from test_family_geometry import ramp

    loaded = resolution.budgeted(smol, budget)
    work = BatchDecoder(loaded, ramp(640, 480), "describe", [[]], 2).prefill_work()
    assert (work.views, work.images, work.rows) == (views, 1, 1)
    assert work.image_tokens == loaded.adapter.image_plan(640, 480).tokens


def test_the_app_status_says_each_phase_before_the_first_words(controller):
    from halviz.session.examples import EXAMPLES_DIR, load_examples

    ctl, _ = controller
    ui = ctl.ui
    scene = next(e for e in load_examples(EXAMPLES_DIR) if e.path.name == "toy-cup-no-spoon.png")
    updates = list(ctl.compare(str(scene.path), "Describe the image.", ["vanilla", "vhr"], 4, scene.objects,
                               "toy", "", {}))
    statuses = [u[ui.status] for u in updates if ui.status in u]
    meta = updates[-1][ui.runs]["vanilla"].trace.meta
    image_tokens, prompt_tokens = len(meta["image_positions"]), meta["prompt_len"]
    expected = ["Loading **", f"Encoding the picture: {image_tokens} image tokens (1 view) through the vision tower…",
                f"Reading the prompt: {prompt_tokens} tokens ({image_tokens} of them the picture's) in 3 rows",
                "token 1 of at most 4", "✓ Done"]
    found = [next(i for i, s in enumerate(statuses) if text in s) for text in expected]
    assert found == sorted(found) and found[:4] == [0, 1, 2, 3], statuses
    phase_updates = [u for u in updates if ui.status in u and "the vision tower" in u[ui.status]
                     or ui.status in u and "Reading the prompt" in u[ui.status]]
    assert [set(u) for u in phase_updates] == [{ui.status}] * 2  # the cards keep "waiting for the model…"
