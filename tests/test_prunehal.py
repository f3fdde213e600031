"""PruneHal against independent computations: physical cache-row removal, a hand-worked vote
schedule, the kept counts, and vanilla where the method must change nothing."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.methods import METHODS, build_stack
from halviz.methods.base import Method, Stream
from halviz.methods.prunehal import PruneHal, PruneSchedule, kept_count
from spies import LogitSpy

FAMILIES = ["llava-1.5", "llava-interleave"]


class EagerPruneHal(PruneHal):
    """PruneHal whose layers all vote whenever a reference exists: prunes at steps 2, 4, 6, …"""

    def setup(self, run):
        super().setup(run)
        self.schedule.threshold = 1e9


def _arrays(method):
    return method.trace_arrays()


# ---- the rule on scripted numbers ---------------------------------------------------------------

def test_schedule_on_scripted_masses():
    """4 layers, r = 0.25 (sqrt r = 0.5), t = 2, forced prune at step 2; expectations by hand."""
    s = PruneSchedule(num_layers=4, r=0.25, max_prunes=2, forced_step=2)
    # step 1: no past, no votes; the reference becomes A(1) = 1
    v = s.observe(1, [1.0, 1.0, 1.0, 1.0])
    assert not v.votes.any() and not v.trigger and np.isnan(v.reference).all()
    # step 2: Ā = 1, threshold 0.5 → layers 0 and 2 vote (2 of 4 is not a majority) but step 2 forces
    v = s.observe(2, [0.4, 0.6, 0.4, 0.6])
    assert v.votes.tolist() == [True, False, True, False] and v.trigger
    np.testing.assert_array_equal(v.reference, [1.0] * 4)
    # step 3: the reference was reset by the prune: no past again
    v = s.observe(3, [1.0, 0.6, 1.0, 0.6])
    assert not v.votes.any() and not v.trigger
    # step 4: Ā = (1, .6, 1, .6); thresholds (.5, .3, .5, .3); 2 votes of 4: no majority
    v = s.observe(4, [0.45, 0.29, 0.9, 0.5])
    assert v.votes.tolist() == [True, True, False, False] and not v.trigger
    # step 5: Ā = mean of steps 3 and 4 = (.725, .445, .95, .55), thresholds (.3625, .2225, .475, .275):
    # votes F, T, T, T → majority. Had Ā included step 5 itself, the thresholds would be
    # (.317, .182, .383, .217) and only layer 3 would vote (no trigger): the reference is the past.
    v = s.observe(5, [0.45, 0.2, 0.4, 0.2])
    np.testing.assert_allclose(v.reference, [0.725, 0.445, 0.95, 0.55])
    assert v.votes.tolist() == [False, True, True, True] and v.trigger  # 3 of 4: majority
    # steps 6 and 7: after the second prune t = 2 is reached; a unanimous vote no longer triggers
    s.observe(6, [1.0, 1.0, 1.0, 1.0])
    v = s.observe(7, [0.0, 0.0, 0.0, 0.0])
    assert v.votes.all() and not v.trigger and s.prunes == 2


def test_schedule_forced_step_off_and_limit_zero():
    s = PruneSchedule(num_layers=2, r=0.25, max_prunes=3, forced_step=0)
    assert not s.observe(1, [1.0, 1.0]).trigger
    assert not s.observe(2, [0.9, 0.9]).trigger  # no forced prune, no vote
    assert s.observe(3, [0.1, 0.1]).trigger  # Ā = 0.95: both vote
    s = PruneSchedule(num_layers=2, r=0.25, max_prunes=0)
    assert not s.observe(1, [1.0, 1.0]).trigger and not s.observe(2, [0.0, 0.0]).trigger


def test_kept_count_rounding():
    assert [kept_count(0.4, n) for n in (576, 230, 92)] == [230, 92, 37]
    assert kept_count(0.5, 5) == 3  # halves round up, not to even
    assert kept_count(0.01, 37) == 1  # at least one token stays
    assert kept_count(1.0, 576) == 576


# ---- against the model --------------------------------------------------------------------------

def test_kept_counts_on_llava15_layout(tiny_models, photo):
    method = EagerPruneHal()
    Decoder(tiny_models["llava-1.5"], photo, methods=[method], max_new_tokens=9).run_to_end()
    a = _arrays(method)
    assert a["trigger_steps"].tolist() == [2, 4, 6]
    assert a["retained"].shape == (3, 2, 576)
    assert a["retained"].sum(-1).tolist() == [[230, 230], [92, 92], [37, 37]]
    assert np.all(a["retained"][1] <= a["retained"][0]) and np.all(a["retained"][2] <= a["retained"][1])
    counts = a["retained_count"][:, 0].tolist()  # in effect during each step: a prune acts one step later
    assert counts == [576, 576, 576, 230, 230, 92, 92, 37, 37]
    # the two layers rank on their own attention: their retained sets differ
    assert not np.array_equal(a["retained"][0, 0], a["retained"][0, 1])


def test_kept_tokens_are_the_most_attended(tiny_models, photo):
    """The first prune keeps the top 230 of step 2's head-mean attention, recorded independently."""
    method = PruneHal()
    trace = Decoder(tiny_models["llava-1.5"], photo, methods=[method], max_new_tokens=4).run_to_end()
    a = _arrays(method)
    assert a["trigger_steps"].tolist() == [2]
    attn = trace.arrays["image_attn"][2].astype(np.float64)  # (L, 576) head-mean, by the recorder
    for layer in range(2):
        kept = attn[layer][a["retained"][0, layer]]
        dropped = attn[layer][~a["retained"][0, layer]]
        assert kept.min() >= dropped.max() - 1e-3  # float16 storage in the trace
        np.testing.assert_allclose(a["mass"][2, layer], attn[layer].sum(), atol=1e-3)


def _physical_removal_logits(folder, inputs, tokens, image_positions, trigger_steps, retained):
    """Decode teacher-forced with a stock SDPA model whose cache rows are really deleted.

    (SDPA, not eager: stock eager attention takes its softmax in float32 even for float64 models.)
    """
    model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa",
                                                          dtype=torch.float64).eval()
    cache = DynamicCache()
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model(**inputs, past_key_values=cache, use_cache=True)
        logits = [out.logits[0, -1]]
        num_layers = len(cache.layers)
        rows = [list(range(prompt_len)) for _ in range(num_layers)]  # true position of each cached row
        image_positions = np.asarray(image_positions)
        for step in range(1, len(tokens)):
            if step - 1 in trigger_steps:  # the prune decided at step − 1 acts from this step
                prune = list(trigger_steps).index(step - 1)
                fresh = DynamicCache()
                for layer in range(num_layers):
                    gone = set(image_positions[~retained[prune, layer]].tolist())
                    keep = [i for i, p in enumerate(rows[layer]) if p not in gone]
                    index = torch.tensor(keep)
                    fresh.update(cache.layers[layer].keys.index_select(2, index),
                                 cache.layers[layer].values.index_select(2, index), layer)
                    rows[layer] = [rows[layer][i] for i in keep]
                cache = fresh
            position = prompt_len + step - 1
            out = model(input_ids=torch.tensor([[tokens[step - 1]]]), past_key_values=cache, use_cache=True,
                        position_ids=torch.tensor([[position]]))
            for layer in range(num_layers):
                rows[layer].append(position)
            logits.append(out.logits[0, -1])
    return torch.stack(logits), [len(r) for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_masking_equals_physical_removal(tiny_models_f64, tiny_model_dirs, photo, family):
    spy, method = LogitSpy(), EagerPruneHal()
    dec = Decoder(tiny_models_f64[family], photo, methods=[spy, method], max_new_tokens=9)
    dec.run_to_end()
    a = _arrays(method)
    assert a["trigger_steps"].tolist() == [2, 4, 6]
    ours = torch.cat(spy.logits)
    theirs, lengths = _physical_removal_logits(tiny_model_dirs[family], dec.inputs, dec.token_ids,
                                               dec.layout.positions, a["trigger_steps"].tolist(), a["retained"])
    n_img = len(dec.layout.positions)
    assert lengths == [dec.run.prompt_len - n_img + a["retained"][-1, 0].sum() + 8] * len(lengths)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-9
    # and the pruning did change the model: compare with the vanilla logits after the first prune
    vanilla_spy = LogitSpy()
    Decoder(tiny_models_f64[family], photo, methods=[vanilla_spy], max_new_tokens=9).run_to_end()
    vanilla = torch.cat(vanilla_spy.logits)
    assert (ours[3] - vanilla[3]).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_first_token_unchanged(tiny_models, photo, family):
    spy_p, spy_v = LogitSpy(), LogitSpy()
    prune = Decoder(tiny_models[family], photo, methods=[spy_p, PruneHal(r=0.05, forced_step=1)], max_new_tokens=4)
    vanilla = Decoder(tiny_models[family], photo, methods=[spy_v], max_new_tokens=4)
    prune.run_to_end(), vanilla.run_to_end()
    assert prune.token_ids[0] == vanilla.token_ids[0]
    assert torch.equal(spy_p.logits[0], spy_v.logits[0])  # the prefill is the same computation
    assert torch.equal(spy_p.logits[1], spy_v.logits[1])  # the step-1 decision acts from step 2
    assert not torch.equal(spy_p.logits[2], spy_v.logits[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_r_one_is_vanilla(tiny_models, photo, family):
    method = PruneHal(r=1.0)
    ours = Decoder(tiny_models[family], photo, methods=[method], max_new_tokens=12)
    ours.run_to_end()
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=12)
    vanilla.run_to_end()
    assert ours.token_ids == vanilla.token_ids
    assert _arrays(method)["trigger_steps"].tolist()[:1] == [2]  # it did "prune", keeping everything
    assert _arrays(method)["retained"].all()


def test_trace_shapes_and_registry(tiny_models, photo):
    assert METHODS["prunehal"] is PruneHal
    (method,) = build_stack(["vanilla", "prunehal"], {"prunehal": {"r": 0.5, "t": 2}})
    trace = Decoder(tiny_models["llava-interleave"], photo, methods=[method], max_new_tokens=5).run_to_end()
    steps, layers = trace.num_steps, trace.meta["num_layers"]
    for key in ("mass", "reference", "votes", "retained_count"):
        assert trace.arrays[f"method/prunehal/{key}"].shape == (steps, layers)
    assert np.isnan(trace.arrays["method/prunehal/mass"][0]).all()  # the prefill has no signal
    assert trace.arrays["method/prunehal/retained"].shape[1:] == (layers, 64)
    with pytest.raises(ValueError):
        PruneHal(r=0.0)


class ExtraPass(Method):
    """Adds a branch row that mirrors the main row's cache (like a contrast branch)."""

    name = "extra-pass"

    def streams(self):
        return (Stream("extra", mirrors_main=True),)


class ExtraSpy(Method):
    """Keeps the branch row's decode attention logits after PruneHal (before it in the stack) has acted."""

    name = "extra-spy"
    hook_points = frozenset({"scores"})

    def __init__(self):
        super().__init__()
        self.scores = []

    def wants_scores(self, p, layer):
        return p.decode and p.row("extra") is not None

    def edit_scores(self, p, layer, scores, keys):
        self.scores.append((p.step, layer, scores[p.row("extra")].clone()))
        return scores


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_columns_are_masked_in_branch_rows_too(tiny_models, photo, family):
    method, spy = EagerPruneHal(), ExtraSpy()
    dec = Decoder(tiny_models[family], photo, methods=[ExtraPass(), method, spy], max_new_tokens=8)
    dec.run_to_end()
    a = _arrays(method)
    triggers = a["trigger_steps"].tolist()
    assert triggers == [2, 4, 6]
    image = np.asarray(dec.layout.positions)
    checked = 0
    for step, layer, scores in spy.scores:
        done = sum(t < step for t in triggers)  # prunes decided before this step act in it
        if done == 0:
            assert torch.isfinite(scores).all()
            continue
        retained = a["retained"][done - 1, layer]
        assert torch.isneginf(scores[..., image[~retained]]).all()
        assert torch.isfinite(scores[..., image[retained]]).all()
        checked += 1
    assert checked == 5 * dec.run.num_layers  # steps 3..7
