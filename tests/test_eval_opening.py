"""From a results folder to a Comparison: the discordant lists against hand-worked samples, a replay
equal to the saved traces, and a decode with the recorded settings equal to the recorded text."""

import json

import numpy as np
import pytest

import halviz
from halviz import eval as heval
from halviz.evaluation.opening import OpenError, discordant_pairs
from halviz.evaluation.results import Results
from halviz.trace import Trace

# vcd against vanilla on a toy CHAIR run where vanilla hallucinates on heldout-8 and vcd does not
EVAL = ["--model", "toy", "--methods", "vanilla,vcd", "--num-images", "12", "--max-new-tokens", "24",
        "--benchmarks", "chair,pope", "--pope-n", "1", "--pope-splits", "adversarial", "--pope-max-new-tokens", "4",
        "--bootstrap", "50", "--no-progress", "--save-traces"]


def chair(image, method, caption, hallucinated):
    return {"benchmark": "chair", "image_id": image, "method": method, "caption": caption, "correct": [],
            "hallucinated": hallucinated, "key": f"{image}-{method}"}


def pope(qid, method, answer, parsed, label, split="random"):
    return {"benchmark": "pope", "split": split, "question_id": qid, "image_id": "img", "method": method,
            "answer": answer, "parsed": parsed, "label": label, "key": f"{qid}-{method}"}


HAND = [
    chair("a", "base", "a cat and a dog", ["dog"]), chair("a", "x", "a cat", []),            # fixed, changed
    chair("b", "base", "a cup", []), chair("b", "x", "a cup and a fork", ["fork"]),          # broken, changed
    chair("c", "base", "a cup and a fork", ["fork"]), chair("c", "x", "a fork", ["fork"]),   # changed only
    chair("d", "base", "a cup", []), chair("d", "x", "a cup", []),                           # same
    pope(1, "base", "Yes.", "yes", "no"), pope(1, "x", "No.", "no", "no"),                   # fixed, changed
    pope(2, "base", "No.", "no", "no"), pope(2, "x", "Yes, there is.", "yes", "no"),         # broken, changed
    pope(3, "base", "Yes.", "yes", "yes"), pope(3, "x", "Yes, a cup.", "yes", "yes"),        # changed only
    pope(3, "base", "No.", "no", "yes", split="popular"), pope(3, "x", "Yes.", "yes", "yes", split="popular"),
]


@pytest.mark.parametrize("kind, bench, split, expected", [
    ("fixed", "chair", None, ["a"]), ("broken", "chair", None, ["b"]), ("changed", "chair", None, ["a", "b", "c"]),
    ("fixed", "pope", None, ["random/1", "popular/3"]), ("fixed", "pope", "random", ["random/1"]),
    ("broken", "pope", None, ["random/2"]), ("changed", "pope", "random", ["random/1", "random/2", "random/3"]),
    ("fixed", None, None, ["a", "random/1", "popular/3"]),
])
def test_discordant_lists_match_hand_worked_samples(kind, bench, split, expected):
    pairs = discordant_pairs(HAND, "base", "x", kind, bench, split)
    assert [p.sample_id for p in pairs] == expected
    for p in pairs:  # each pair holds the baseline's line and the method's line of one sample
        assert p.baseline["method"] == "base" and p.other["method"] == "x" and p.kind == kind


def test_discordant_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="kind must be one of"):
        discordant_pairs(HAND, "base", "x", "improved")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-eval")
    assert heval.main([*EVAL, "--out", str(out)]) == 0
    return out


def test_the_results_object_lists_and_counts_like_results_json(folder):
    res = halviz.open_results(folder)
    assert res.methods == ["vanilla", "vcd"] and res.baseline == "vanilla"
    assert "CHAIR, n=12 images" in res.table
    # McNemar counts the same discordant pairs, on "the caption hallucinates"
    mcnemar = res.data["chair"]["vs_baseline"]["vcd"]["mcnemar"]
    assert len(res.discordant("vcd", "fixed", "chair")) == mcnemar["only_base"] == 1
    assert len(res.discordant("vcd", "broken", "chair")) == mcnemar["only_other"]
    row = next(r for r in res.rows if r["benchmark"] == "chair" and r["method"] == "vcd")
    assert row["p"] == mcnemar["p"] and row["chair_s"] == res.data["chair"]["methods"]["vcd"]["chair_s"]


def test_a_fixed_sample_replays_from_its_saved_traces(folder):
    res = Results.load(folder)
    fixed = res.discordant("vcd", "fixed", "chair")
    assert fixed, "these settings should give a sample vcd fixes"
    pair = fixed[0]
    comparison = res.open(pair)
    assert list(comparison) == ["vanilla", "vcd"] and comparison.notice == "replayed from the saved traces"
    for method, line in (("vanilla", pair.baseline), ("vcd", pair.other)):
        saved = Trace.load(folder / "traces" / f"{line['key']}.npz")
        column = comparison[method]
        assert column.caption == saved.caption == line["caption"]
        assert set(saved.arrays) == set(column.trace.arrays)
        for name, array in saved.arrays.items():
            np.testing.assert_array_equal(column.trace.arrays[name], array)
        # the labels are the evaluation's: the scene's exact objects, regenerated from the seed
        assert column.hallucinated == line["hallucinated"]
        assert sorted(column.correct) == line["correct"]
    assert comparison.image is not None and comparison.ground_truth == pair.other["truth"]


def test_without_traces_the_pair_is_decoded_with_the_recorded_settings(folder):
    res = Results.load(folder)
    pair = res.discordant("vcd", "fixed", "chair")[0]
    decoded = res.open(pair, decode=True)
    assert decoded.notice == "decoded again with the recorded settings"
    replayed = res.open(pair)
    for method in ("vanilla", "vcd"):
        np.testing.assert_array_equal(decoded[method].trace.arrays["token_ids"],
                                      replayed[method].trace.arrays["token_ids"])
    assert decoded[1].result.diverges_at == replayed[1].result.diverges_at


def test_a_pope_line_opens_on_its_question(folder):
    res = Results.load(folder)
    line = next(s for s in res.samples if s["benchmark"] == "pope" and s["method"] == "vanilla")
    comparison = res.open(line, "vcd")
    assert comparison.prompt == line["prompt"] and comparison["vanilla"].caption == line["answer"]


def test_bad_requests_say_why(folder, tmp_path):
    res = Results.load(folder)
    line = res.samples[0]
    with pytest.raises(OpenError, match="is the baseline"):
        res.open(line)
    (tmp_path / "traces").mkdir()
    (tmp_path / "results.json").write_text((folder / "results.json").read_text())
    (tmp_path / "samples.jsonl").write_text((folder / "samples.jsonl").read_text())
    bare = Results.load(tmp_path)  # no traces: refuses to decode when told not to
    with pytest.raises(OpenError, match="--save-traces"):
        bare.open(bare.discordant("vcd", "fixed", "chair")[0], decode=False)
    with pytest.raises(ValueError, match="not a method"):
        bare.discordant("vhr")
    with pytest.raises(Exception, match="no samples.jsonl"):
        (tmp_path / "samples.jsonl").unlink()
        Results.load(tmp_path)
    assert json.loads((folder / "results.json").read_text())["config"]["save_traces"] is True


def test_a_zipped_folder_replays_the_same_traces(folder, tmp_path):
    """The app's upload path: the zip is read member by member, each trace checked before it loads."""
    import shutil

    from halviz.session.results_folders import open_zip

    archive = shutil.make_archive(str(tmp_path / "run"), "zip", folder.parent, folder.name)
    opened = open_zip(archive)
    pair = opened.results.discordant("vcd", "fixed", "chair")[0]
    comparison = opened.results.open(pair, decode=False)
    for method, line in (("vanilla", pair.baseline), ("vcd", pair.other)):
        saved = Trace.load(folder / "traces" / f"{line['key']}.npz")
        for name, array in saved.arrays.items():
            np.testing.assert_array_equal(comparison[method].trace.arrays[name], array)


def test_the_api_docs_example_runs(tmp_path, monkeypatch, capsys):
    """docs/api.md's "Open an evaluation's results" block, run as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    section = text.split("## Open an evaluation's results", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "CHAIR heldout-8 · vanilla hallucinated cup; vcd nothing" in out
    assert "['cup'] [] replayed from the saved traces" in out


def test_a_replayed_card_states_the_recorded_decode_rate_or_none():
    """A replayed column's speed comes from its own step times (the decode rounds' mean, prefill left
    out, as the live card computes it), never a made-up figure; without step times the card says so."""
    import numpy as np

    from halviz.evaluation.opening import recorded_compute_s
    from halviz.session.results import column_result
    from halviz.trace import Trace

    timed = Trace({"texts": ["a", " b", " c"], "num_steps": 3}, {"step_ms": np.array([100.0, 10.0, 30.0], np.float32)})
    result = column_result("vanilla", "Greedy", timed.texts, recorded_compute_s(timed), "eos", None)
    assert result.tokens_per_s == pytest.approx(3 / (3 * 0.020))  # 50 tokens/s: 20 ms per decode round
    untimed = Trace({"texts": ["a"], "num_steps": 1}, {"step_ms": np.array([100.0], np.float32)})
    result = column_result("vanilla", "Greedy", untimed.texts, recorded_compute_s(untimed), "eos", None)
    assert result.tokens_per_s is None and "no timing recorded" in result.summary_markdown()
    assert result.summary_json()["tokens_per_s"] is None
