"""Batched columns against their solo runs, and the engine's row bookkeeping.

Every column of a comparison must be exactly what it would be alone: in float64 the same tokens,
logits within 1e-9 and the same trace arrays; in float32 the same tokens. Rows are checked against
what the model was really given (batch sizes and position ids seen by the language model).
"""

import numpy as np
import pytest
import torch

from halviz.engine.batch import BatchDecoder
from halviz.engine.decode import Decoder
from halviz.methods import HOOK_POINTS, METHODS, REGISTRY, build_stack
from halviz.methods.base import HOOK_METHODS, Method
from tools.stress import FaultyMethod
from spies import LogitSpy

FAMILIES = ["llava-1.5", "llava-interleave"]
TOKENS = 8
# Every method alone, the heavier readings, and the full stack (small PruneHal r so it really prunes).
COLUMNS = {
    "vanilla": ([], {}),
    "prunehal": (["prunehal"], {"prunehal": {"r": 0.3}}),
    "vasparse": (["vasparse"], {"vasparse": {"alpha": 1.0, "keep_ratio": 0.5}}),
    "vasparse-masked": (["vasparse"], {"vasparse": {"phi": "masked-pass", "alpha": 1.0}}),
    "vhr": (["vhr"], {}),
    "vhr-tvhd": (["vhr"], {"vhr": {"per_step_tvhd": True}}),
    "kvsmooth": (["kvsmooth"], {}),
    "vcd": (["vcd"], {}),
    "all": (["prunehal", "vasparse", "vhr", "kvsmooth"], {"prunehal": {"r": 0.3}, "vhr": {"per_step_tvhd": True}}),
}


def _stack(name):
    names, params = COLUMNS[name]
    return [*build_stack(names, params), LogitSpy()]


def _assert_close_logits(got, want):
    """Same cut-off tokens (−inf from the plausibility cut), finite logits within 1e-9."""
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    assert finite.any() and (got[finite] - want[finite]).abs().max().item() <= 1e-9


def _assert_same_trace(batched, solo):
    assert set(batched.arrays) == set(solo.arrays)
    for key, want in solo.arrays.items():
        if key == "step_ms":
            continue
        got = batched.arrays[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if np.issubdtype(want.dtype, np.floating):
            tol = 1e-3 if want.dtype == np.float16 else 1e-9  # float16 storage may round the other way
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=key)
        else:
            np.testing.assert_array_equal(got, want, err_msg=key)
    assert batched.meta == solo.meta


@pytest.mark.parametrize("family", FAMILIES)
def test_every_column_equals_its_solo_run_float64(tiny_models_f64, photo, family):
    loaded = tiny_models_f64[family]
    names = list(COLUMNS)
    stacks = [_stack(n) for n in names]
    batch = BatchDecoder(loaded, photo, "Describe the image.", stacks, max_new_tokens=TOKENS)
    traces = batch.run_to_end()
    for i, name in enumerate(names):
        assert batch.columns[i].error is None, (name, batch.columns[i].error)
        solo_stack = _stack(name)
        solo = Decoder(loaded, photo, "Describe the image.", solo_stack, max_new_tokens=TOKENS)
        solo_trace = solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids, name
        _assert_close_logits(torch.cat(stacks[i][-1].logits), torch.cat(solo_stack[-1].logits))
        _assert_same_trace(traces[i], solo_trace)
    # the columns really differ from one another: the comparison had power
    assert len({tuple(s.token_id for s in steps) for steps in batch.steps}) >= 3


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_tokens_equal_solo(tiny_models, photo, family):
    loaded = tiny_models[family]
    names = ["vanilla", "prunehal", "vasparse", "vhr", "kvsmooth", "all"]
    batch = BatchDecoder(loaded, photo, "Describe the image.", [_stack(n) for n in names], max_new_tokens=TOKENS)
    batch.run_to_end()
    for i, name in enumerate(names):
        solo = Decoder(loaded, photo, "Describe the image.", _stack(name), max_new_tokens=TOKENS)
        solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids, name


class _ModelInputs:
    """Records what the language model is called with: batch size and position ids per call."""

    def __init__(self, loaded):
        self.calls = []
        self.handle = loaded.model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append((kwargs["inputs_embeds"].shape[0], kwargs["position_ids"].clone(),
                           None if kwargs.get("attention_mask") is None else kwargs["attention_mask"].clone()))

    def close(self):
        self.handle.remove()


def test_columns_that_leave_the_prompt_alone_share_one_prefill_row(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    spy = _ModelInputs(loaded)
    try:
        BatchDecoder(loaded, photo, "Describe.", [[], *[build_stack([n]) for n in ("prunehal", "vasparse", "kvsmooth")]],
                     max_new_tokens=3).run_to_end()
        shared = list(spy.calls)
        spy.calls.clear()
        BatchDecoder(loaded, photo, "Describe.", [[], build_stack(["vhr"])], max_new_tokens=3).run_to_end()
        with_vhr = list(spy.calls)
    finally:
        spy.close()
    assert [c[0] for c in shared] == [1, 4, 4]  # one prefill row expanded to four columns
    # VHR reinforces its prompt: its own main row beside the shared one; its text-only row rides after
    # one of them (a ragged prefill: n + n_text slots, not a third row padded to n)
    assert [c[0] for c in with_vhr] == [2, 2, 2]
    n = shared[0][1].shape[-1]
    n_text = n - _layout_positions(loaded, photo)
    assert with_vhr[0][1].shape[-1] == n + n_text


def test_every_row_gets_its_own_positions(tiny_models, photo):
    """The text-only stream counts its own positions (no image tokens), in the prefill and after."""
    loaded = tiny_models["llava-1.5"]
    spy = _ModelInputs(loaded)
    try:
        batch = BatchDecoder(loaded, photo, "Describe.", [[], build_stack(["vhr"], {"vhr": {"per_step_tvhd": True}})],
                             max_new_tokens=3, stop_at_eos=False)
        batch.run_to_end()
    finally:
        spy.close()
    n = batch.columns[0].prompt_len
    n_text = n - len(batch.layout.positions)
    (rows, positions, mask), *decode = spy.calls
    assert rows == 2  # shared main | VHR text, VHR main (the text row packed after the first main row)
    torch.testing.assert_close(positions[0, n:], torch.arange(n_text))
    torch.testing.assert_close(positions[0, :n], torch.arange(n))
    torch.testing.assert_close(positions[1, :n], torch.arange(n))
    assert mask[0].all() and mask[1, :n].all() and not mask[1, n:].any()
    for step, (rows, positions, mask) in enumerate(decode, start=1):
        assert rows == 3  # vanilla main, VHR main, VHR text (kept for the per-step T-VHD)
        assert positions[:, 0].tolist() == [n + step - 1, n + step - 1, n_text + step - 1]
        assert mask.shape == (3, n + step) and not mask[2, n_text:n].any()


def _layout_positions(loaded, photo):
    return len(BatchDecoder(loaded, photo, "Describe.", [[]], max_new_tokens=1).layout.positions)


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_prefill_equals_the_padded_one_float64(tiny_models_f64, photo, family):
    """Text-only rows packed after longer rows (block-diagonal attention, logical rows rebuilt around
    each layer's attention) give what padding them to full rows gives: tokens, logits, trace arrays,
    for every column: VHR with and without its decoded text stream, and stacked with scores methods."""
    loaded = tiny_models_f64[family]
    names = list(COLUMNS)
    runs = []
    for ragged in (True, False):
        stacks = [_stack(n) for n in names]
        batch = BatchDecoder(loaded, photo, "Describe the image.", stacks, max_new_tokens=TOKENS)
        batch.ragged_prefill = ragged
        runs.append((batch, stacks, batch.run_to_end()))
    (packed, packed_stacks, packed_traces), (padded, padded_stacks, padded_traces) = runs
    for i, name in enumerate(names):
        assert packed.columns[i].error is None and padded.columns[i].error is None, name
        assert [s.token_id for s in packed.steps[i]] == [s.token_id for s in padded.steps[i]], name
        _assert_close_logits(torch.cat(packed_stacks[i][-1].logits), torch.cat(padded_stacks[i][-1].logits))
        _assert_same_trace(packed_traces[i], padded_traces[i])


class StopAt(Method):
    """Forces EOS as the token of a chosen step: its column ends there."""

    name = "stop-at"
    hook_points = frozenset({"logits"})

    def __init__(self, step, eos):
        super().__init__()
        self.step, self.eos = step, eos

    def edit_logits(self, p, logits):
        if p.step == self.step:
            logits = logits.clone()
            logits[:, self.eos] = 1e9
        return logits


def test_columns_end_independently_and_a_raising_method_ends_only_its_own(tiny_models_f64, photo):
    loaded = tiny_models_f64["llava-interleave"]
    eos = min(loaded.adapter.eos_token_ids)
    stacks = [_stack("vanilla"), [StopAt(2, eos), *_stack("prunehal")], [FaultyMethod(fail_at=3)], _stack("vhr-tvhd")]
    batch = BatchDecoder(loaded, photo, "Describe.", stacks, max_new_tokens=TOKENS, stop_at_eos=True)
    batch.run_to_end()
    assert batch.columns[1].finish == "eos" and len(batch.steps[1]) == 3
    assert batch.columns[2].finish == "error" and "deliberate failure at step 3" in str(batch.columns[2].error)
    assert len(batch.steps[2]) == 3  # steps 0..2 were decoded before it raised
    for i, name in ((0, "vanilla"), (3, "vhr-tvhd")):
        solo_stack = _stack(name)
        solo = Decoder(loaded, photo, "Describe.", solo_stack, max_new_tokens=TOKENS)
        solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids
        _assert_close_logits(torch.cat(stacks[i][-1].logits), torch.cat(solo_stack[-1].logits))


class RaiseInAttention(Method):
    """Raises inside the batched forward (at the scores hook) at a chosen step."""

    name = "raise-in-attention"
    hook_points = frozenset({"scores"})

    def wants_scores(self, p, layer):
        return p.decode and p.step >= 2

    def edit_scores(self, p, layer, scores, keys):
        raise RuntimeError(f"deliberate failure inside the forward at step {p.step}")


def test_a_hook_raising_inside_the_forward_ends_only_its_column(tiny_models_f64, photo):
    loaded = tiny_models_f64["llava-1.5"]
    stacks = [_stack("vanilla"), [RaiseInAttention()], _stack("kvsmooth")]
    batch = BatchDecoder(loaded, photo, "Describe.", stacks, max_new_tokens=6, stop_at_eos=False)
    batch.run_to_end()
    assert batch.columns[1].finish == "error" and "inside the forward at step 2" in str(batch.columns[1].error)
    assert len(batch.steps[1]) == 2
    for i, name in ((0, "vanilla"), (2, "kvsmooth")):
        solo_stack = _stack(name)
        solo = Decoder(loaded, photo, "Describe.", solo_stack, max_new_tokens=6, stop_at_eos=False)
        solo.run_to_end()
        assert [s.token_id for s in batch.steps[i]] == solo.token_ids
        _assert_close_logits(torch.cat(stacks[i][-1].logits), torch.cat(solo_stack[-1].logits))


class PrefillMasker(Method):
    """Claims to leave the prompt alone (``edits_prefill`` False) but masks the image in every pass."""

    name = "prefill-masker"
    hook_points = frozenset({"scores"})

    def wants_scores(self, p, layer):
        return True

    def edit_scores(self, p, layer, scores, keys):
        return scores.index_fill(-1, p.column.image_index, float("-inf"))


def test_a_shared_prefill_row_is_never_shown_to_edit_hooks(tiny_models_f64, photo):
    """Sharing is safe by construction: a method that does edit the prompt cannot reach the shared row,
    so the vanilla column beside it stays exactly vanilla."""
    loaded = tiny_models_f64["llava-1.5"]
    stacks = [_stack("vanilla"), [PrefillMasker(), LogitSpy()]]
    batch = BatchDecoder(loaded, photo, "Describe.", stacks, max_new_tokens=4, stop_at_eos=False)
    batch.run_to_end()
    solo_stack = _stack("vanilla")
    solo = Decoder(loaded, photo, "Describe.", solo_stack, max_new_tokens=4, stop_at_eos=False)
    solo.run_to_end()
    _assert_close_logits(torch.cat(stacks[0][-1].logits), torch.cat(solo_stack[-1].logits))
    # its decode steps were masked (the method did act): its logits differ from vanilla's
    assert (torch.cat(stacks[1][-1].logits)[1:] - torch.cat(solo_stack[-1].logits)[1:]).abs().max().item() > 1e-6


class Undeclared(Method):
    """Overrides hooks without declaring them: the engine must never call them."""

    name = "undeclared"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def wants_scores(self, p, layer):
        self.calls += 1
        return True

    def edit_logits(self, p, logits):
        self.calls += 1
        return logits


def test_hooks_are_dispatched_only_where_declared(tiny_models, photo):
    method = Undeclared()
    Decoder(tiny_models["llava-1.5"], photo, methods=[method], max_new_tokens=3).run_to_end()
    assert method.calls == 0


@pytest.mark.parametrize("name", [n for n in REGISTRY if n != "vanilla"])
def test_declared_hook_points_match_the_overridden_hooks(name):
    cls = REGISTRY[name]
    overridden = {point for point in HOOK_POINTS
                  if any(getattr(cls, fn) is not getattr(Method, fn) for fn in HOOK_METHODS[point])}
    assert overridden == set(cls.hook_points)


def test_build_stack_orders_by_the_registry():
    names = list(reversed([n for n in METHODS if n != "vanilla"]))
    assert [m.name for m in build_stack(names)] == [n for n in METHODS if n != "vanilla"]
