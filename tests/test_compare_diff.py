"""The comparison columns: the original-vs-intervention diff (against solo decodes compared by hand), and
what each caption card shows (loops, over-counted mentions, CHAIR's blind spots, the batch's speed)."""

from types import SimpleNamespace

import pytest

from halviz.engine.decode import Decoder
from halviz.hallucination import GroundTruth, ground_truth_from_text
from halviz.methods import build_stack
from halviz.session import results as compare
from halviz.session.results import column_result, decode_rounds, first_divergence, with_divergence


def test_first_divergence_by_hand():
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert first_divergence([1, 2, 3], [9]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) is None  # a prefix: nothing differs yet
    assert first_divergence([], [1]) is None


def test_columns_are_diffed_against_the_first(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    stacks = [[], build_stack(["scale_heads"], {"scale_heads": {"head": -1, "scale": 0.0, "first_layer": 1}}), []]
    final = list(decode_rounds(loaded, photo, "Describe.", stacks, 8, update_every_s=0))[-1]
    solo = []
    for stack in stacks:
        dec = Decoder(loaded, photo, "Describe.", [type(m)(**m.params) for m in stack], max_new_tokens=8)
        dec.run_to_end()
        solo.append(dec.token_ids)
    assert final.tokens == solo
    expected = next(i for i, (a, b) in enumerate(zip(solo[0], solo[1])) if a != b)  # the silenced heads do act
    results = with_divergence([column_result(n, n.title(), t, 1.0, f, None) for n, t, f in
                               zip(("vanilla", "scaled", "again"), final.texts, final.finish)], final.tokens)
    assert results[0].baseline is None and results[1].baseline == "Vanilla"
    assert results[1].diverges_at == expected and results[2].diverges_at is None
    assert f"differs from Vanilla from step {expected}" in results[1].summary_markdown()
    assert "same tokens as Vanilla so far" in results[2].summary_markdown()
    assert results[1].summary_json()["first_divergence_step"] == expected


# ---- the caption card: loops, over-counting, what CHAIR cannot see, speed --------------------------

KNIFE_PIECES = ["a", " big", " gray", " knife", " ."] + [" next", " to", " a", " big", " gray", " knife"] * 10
ONE_KNIFE = GroundTruth(frozenset({"knife"}), "toy scene", "exact", counts={"knife": 1})


def test_a_looping_caption_leads_with_its_loop_and_does_not_pile_up_correct_mentions():
    result = column_result("kvsmooth", "KVSmooth", KNIFE_PIECES, 1.0, "length", ONE_KNIFE)
    clean = column_result("vanilla", "Greedy", ["a big gray knife ."], 1.0, "eos", ONE_KNIFE)
    # Before: 11 correct mentions, CHAIRᵢ 0 %, nothing else said. Now: 1 correct, 1 over the scene's
    # one knife, 9 in the loop's repeats (shown, not counted), and the loop comes first on the card.
    assert result.counts == {"correct": 1, "hallucinated": 0, "unverified": 0}
    assert (result.in_loop, result.over_counted, result.loops_from) == (9, {"knife": 1}, 5)
    card = result.summary_markdown()
    assert card.index("loops from token 5") < card.index("CHAIRᵢ")
    assert "“next to a big gray knife” ×10.0" in card and "repetition 84%" in card
    assert "CHAIRᵢ 0% ⚠ before the loop only; 1 over-counted" in card
    assert "+9 in the loop, not counted" in card
    assert "loops" not in clean.summary_markdown() and "⚠" not in clean.summary_markdown()
    summary = result.summary_json()
    assert (summary["loops_from_step"], summary["repetition_rate"], summary["mentions_in_loop"],
            summary["over_counted"]) == (5, 0.839, 9, {"knife": 1})
    assert clean.summary_json()["loops_from_step"] is None and clean.summary_json()["over_counted"] == {}
    assert [label for _, label in result.spans if label].count("in loop") == 9


def test_the_loop_is_located_in_decoding_steps_not_characters():
    pieces = ["two", " dogs", " and", " run", " .", " run", " .", " run"]  # the loop starts at " run", char 13
    assert column_result("v", "V", pieces, 1.0, "length", None).loops_from == 3


def test_a_duplicated_object_on_a_one_clock_scene_is_flagged_only_where_counts_are_known():
    pieces = ["a big black clock next to a small black clock ."]
    exact = GroundTruth(frozenset({"clock"}), "toy scene", "exact", counts={"clock": 1})
    counted = column_result("v", "V", pieces, 1.0, "eos", exact)
    assert counted.counts["correct"] == 1 and counted.over_counted == {"clock": 1}
    assert "+1 over-counted" in counted.summary_markdown()  # a plain plus: the fullwidth one drew as a box
    assert ("clock", "over-counted") in counted.spans
    typed, _ = ground_truth_from_text("clock")  # a typed list gives no counts: none are invented
    unknown = column_result("v", "V", pieces, 1.0, "eos", typed)
    assert unknown.counts["correct"] == 2 and unknown.over_counted is None
    assert "No counts in this ground truth" in unknown.summary_markdown()
    assert unknown.summary_json()["over_counted"] is None


def test_every_scored_card_says_what_chair_cannot_see():
    truth, _ = ground_truth_from_text("cat")
    card = column_result("v", "V", ["A cat and a dog."], 1.0, "eos", truth).summary_markdown()
    for blind_spot in ("recall", "counts", "colours and sizes", "repetition"):
        assert blind_spot in card
    assert "CHAIR" not in column_result("v", "V", ["A cat."], 1.0, "eos", None).summary_markdown()


class _FakeBatch:
    """A batch whose prefill takes 300 ms and every decode round 10 ms; column 0 ends after 3 tokens,
    column 1 after 10, as a short caption and a loop that runs to max_new_tokens do."""

    lengths = (3, 10)

    def __init__(self, *args, **kwargs):
        self.columns = [SimpleNamespace(finish=None, error=None) for _ in self.lengths]
        self.steps = [[] for _ in self.lengths]

    def __iter__(self):
        for round_index in range(max(self.lengths)):
            ms = 300.0 if round_index == 0 else 10.0
            steps = [SimpleNamespace(index=round_index, token_id=7, text=" x", elapsed_ms=ms)
                     if round_index < n else None for n in self.lengths]
            for column, n in zip(self.columns, self.lengths):
                if round_index == n - 1:
                    column.finish = "eos"
            yield steps


def test_columns_of_one_batch_report_one_decode_rate(monkeypatch):
    # Before: each column divided its tokens by its own rounds, prefill included: 3 / 0.32 s = 9 tok/s
    # beside 10 / 0.39 s = 26 tok/s, a speed difference between methods that share every forward.
    monkeypatch.setattr(compare, "BatchDecoder", _FakeBatch)
    monkeypatch.setattr(compare, "safe_trace", lambda *args: None)
    final = list(compare.decode_rounds(None, None, "Describe.", [[], []], 10, update_every_s=0))[-1]
    results = [column_result(n, n, t, s, f, None)
               for n, t, s, f in zip(("a", "b"), final.texts, final.compute_s, final.finish)]
    assert [r.tokens for r in results] == [3, 10]
    assert [r.tokens_per_s for r in results] == pytest.approx([100.0, 100.0])  # 1 token per 10 ms round
    assert final.prefill_s == pytest.approx(0.3)
    assert "tok/s (shared batch)" in results[0].summary_markdown()


def test_the_first_words_stream_the_moment_the_prefill_gives_them(tiny_models, photo):
    """However long the update interval, the round that ends the prefill (every column's first token) is
    streamed at once, before the decode goes on; the next update comes only at the end."""
    stacks = [build_stack(["vanilla"], {}), build_stack(["vcd"], {})]
    updates = list(decode_rounds(tiny_models["llava-1.5"], photo, "Describe.", stacks, 4, update_every_s=1e9))
    assert [[len(t) for t in u.texts] for u in updates[:1]] == [[1, 1]]
    assert all(f is None for f in updates[0].finish) and updates[0].traces is None
    assert len(updates) == 2 and all(f is not None for f in updates[-1].finish)
