"""Evaluation at scale: a torchrun run equals one process; a killed run resumes without decoding twice;
results.json and samples.jsonl say what each number is made of."""

import json
import os
import subprocess
import sys

import pytest

from halviz import eval as heval
from halviz.evaluation import harness
from halviz.evaluation.results import Results

ARGS = ["--model", "toy", "--methods", "vanilla,prunehal,vcd", "--num-images", "4", "--max-new-tokens", "12",
        "--benchmarks", "chair,pope,opope", "--pope-n", "3", "--pope-max-new-tokens", "6", "--bootstrap", "200",
        "--no-progress"]


def _files(folder):
    results = json.loads((folder / "results.json").read_text())
    results.pop("timing")
    # git describe --dirty: other work in the same checkout may change it between two runs
    results["config"].pop("halviz_version")
    samples = sorted((folder / "samples.jsonl").read_text().splitlines())
    return results, samples


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert heval.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_results_files_hold_every_setting_and_sample(single):
    results, samples = _files(single)
    config = results["config"]
    for key in ("model", "source", "dtype", "methods", "max_new_tokens", "prompt", "system",
                "params", "pope", "bootstrap", "seed"):
        assert key in config
    assert results["baseline"] == "vanilla"
    assert json.loads((single / "results.json").read_text())["config"]["halviz_version"] != ""
    chair = results["chair"]["methods"]["vanilla"]
    for metric in ("chair_s", "chair_i", "recall", "precision", "f1", "len", "looping", "repetition"):
        lo, hi = chair[metric]["ci"]
        assert lo <= chair[metric]["value"] <= hi
    assert set(results["chair"]["vs_baseline"]) == {"prunehal", "vcd"}
    assert 0 <= results["chair"]["vs_baseline"]["vcd"]["mcnemar"]["p"] <= 1
    for split in ("random", "popular", "adversarial"):
        row = results["pope"][split]["methods"]["vcd"]
        assert set(row["parsers"]) == {"official", "vcd", "halc", "exact"}
        assert results["pope"][split]["n"] == 18 and results["opope"][split]["n"] == 18
    lines = [json.loads(s) for s in samples]
    chair_lines = [l for l in lines if l["benchmark"] == "chair"]
    assert len(chair_lines) == 4 * 3 and set(chair_lines[0]) >= {"image_id", "method", "caption", "correct", "hallucinated"}
    pope_lines = [l for l in lines if l["benchmark"] == "pope"]
    assert len(pope_lines) == 3 * 18 * 3
    assert set(pope_lines[0]) >= {"question_id", "method", "answer", "parsed", "label"}
    # the Python results object reads them back and lists what changed against the baseline
    res = Results.load(single)
    changed = res.discordant("vcd", benchmark="opope", split="adversarial")
    assert set(changed) == {"fixed", "broken", "changed"}
    for pair in changed["fixed"]:
        assert pair.other["parsed"] == pair.other["label"] != pair.baseline["parsed"]


def test_a_killed_run_resumes_without_decoding_any_finished_sample_twice(single, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    assert heval.main([*ARGS, "--out", str(out), "--stop-after", "7"]) == 3  # stopped mid-way
    first = [json.loads(l) for l in (out / "cache" / "rank-0.jsonl").read_text().splitlines()]
    assert 7 <= len(first) < 40
    with open(out / "cache" / "rank-0.jsonl", "a") as handle:  # a kill in the middle of a write
        handle.write('{"key": "half-writ')
    decoded = []
    real = harness.decode_group

    def counting(loaded, plan, units, batch):
        decoded.extend(u.key for u in units)
        return real(loaded, plan, units, batch)

    monkeypatch.setattr(harness, "decode_group", counting)
    assert heval.main([*ARGS, "--out", str(out)]) == 0
    done_before = {r["key"] for r in first}
    assert decoded and not set(decoded) & done_before  # nothing finished was decoded again
    keys = [json.loads(l)["key"] for l in (out / "cache" / "rank-0.jsonl").read_text().splitlines()
            if l.startswith('{"key": "') and l.endswith("}")]
    assert len(keys) == len(set(keys)) == len(done_before) + len(decoded)
    assert _files(out) == _files(single)  # the same results as an uninterrupted run
    decoded.clear()
    assert heval.main([*ARGS, "--out", str(out)]) == 0
    assert decoded == []  # everything is done: a third run decodes nothing


def test_two_torchrun_processes_equal_one_process(single, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "halviz.eval", *ARGS, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted(p.name for p in (out / "cache").iterdir())
    assert ranks == ["rank-0.jsonl", "rank-1.jsonl"]
    assert all((out / "cache" / r).read_text().strip() for r in ranks)  # both ranks decoded a share
    assert _files(out) == _files(single)
    # Without --out the ranks share rank 0's temporary cache folder. CHAIR alone shows it (POPE would only
    # repeat the same gathering): rank 0 reports every image's caption and the one-process figures.
    plain = subprocess.run([*cmd[:-2], "--benchmarks", "chair", "--json", str(tmp_path / "plain.json")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    rows = json.loads((tmp_path / "plain.json").read_text())["methods"]
    want = json.loads((single / "results.json").read_text())["chair"]["methods"]
    assert set(rows) == set(want)
    for method, row in rows.items():
        assert row["captions"] == 4, method  # --num-images: rank 1's share reached rank 0
        for metric in ("chair_s", "chair_i", "recall", "precision", "f1", "len"):
            assert row[metric] == pytest.approx(want[method][metric]["value"], rel=1e-9), (method, metric)


def test_pope_presets_list_their_sources_and_guesses(capsys):
    assert heval.main(["--list-presets"]) == 0
    table = capsys.readouterr().out
    for name in ("pope-llava", "pope-vcd", "pope-halc", "vhr"):
        assert f"| {name} |" in table
    assert "| pope-vcd | --pope-suffix |  Please answer this question with one word. |" in table
    args = heval.parse_args(["--preset", "pope-halc", "--pope-max-new-tokens", "8"])
    assert args.pope_parser == "halc" and args.pope_max_new_tokens == 8 and args.benchmarks == "pope"
    assert args.pope_template.startswith("Find evidence first and then answer: is there a {}")


@pytest.mark.parametrize("mode", [["--batch-images", "3"], ["--no-batch"]])
def test_batching_never_changes_a_sample(single, tmp_path, mode):
    """Several images' rows in one batch, or one decode at a time: the same samples and metrics."""
    out = tmp_path / "mode"
    assert heval.main([*ARGS, "--out", str(out), *mode]) == 0
    got, want = _files(out), _files(single)
    assert got[1] == want[1]
    for results in (got[0], want[0]):
        results.pop("config")
    assert got[0] == want[0]


def test_released_pope_files_with_a_folder_of_images(tiny_model_dirs, tmp_path):
    import numpy as np
    from PIL import Image

    from halviz.evaluation.pope import Question, write_questions

    images = tmp_path / "val2014"
    images.mkdir()
    rng = np.random.default_rng(3)
    for name in ("COCO_1.jpg", "COCO_2.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / name)
    questions = [Question(1, "COCO_1.jpg", "Is there a dog in the image?", "yes"),
                 Question(2, "COCO_1.jpg", "Is there an umbrella in the image?", "no"),
                 Question(3, "COCO_2.jpg", "Is there a dog in the image?", "no")]
    write_questions(tmp_path / "coco_pope_random.json", questions)
    out = tmp_path / "out"
    code = heval.main(["--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla,prunehal", "--benchmarks",
                       "pope", "--images", str(images), "--pope-questions", str(tmp_path / "coco_pope_random.json"),
                       "--pope-max-new-tokens", "2", "--bootstrap", "50", "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pope"]["random"]["n"] == 3 and "chair" not in results
    lines = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {l["question_id"] for l in lines} == {1, 2, 3}


def test_save_traces_keeps_one_replayable_trace_per_decode(tmp_path):
    out = tmp_path / "traced"
    args = ["--model", "toy", "--methods", "vanilla,vhr", "--num-images", "2", "--max-new-tokens", "8",
            "--bootstrap", "20", "--no-progress", "--out", str(out), "--save-traces"]
    assert heval.main(args) == 0
    res = Results.load(out)
    for line in res.samples:
        trace = res.trace(line)
        assert trace.caption == line["caption"] and trace.has_attention
    (out / "traces" / f"{res.samples[0]['key']}.npz").unlink()  # a lost trace is decoded again on resume
    assert heval.main(args) == 0
    assert res.trace(res.samples[0]).caption == res.samples[0]["caption"]
