"""`python -m halviz.chair` end to end, through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The hand-computed set of tests/test_hallucination.py, with GT objects written as synonyms
# and plurals ("men", "horses", "hot dogs", "birds") that the CLI must map to COCO names.
CAPTIONS = [
    {"image_id": 1, "caption": "A man rides a horse next to two dogs."},
    {"image_id": 2, "caption": "A dog and a dog chase a frisbee near a man."},
    {"image_id": "3", "caption": "Hot dogs and a cat and a cat on a bench."},
    {"image_id": 4, "caption": "A blue sky over the sea."},
]
GROUND_TRUTH = {
    "1": ["men", "horses"],
    "2": ["dog", "person", "Frisbee", "car"],
    "3": ["hot dogs", "bench"],
    "4": ["boat", "birds"],
    "5": ["cat"],  # an image with no caption is fine
}


def run_chair(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "halviz.chair", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    return write(tmp_path / "caps.json", CAPTIONS), write(tmp_path / "gt.json", GROUND_TRUTH)


def test_cli_prints_table_and_writes_fractions(tmp_path, inputs):
    captions, truth = inputs
    out = tmp_path / "chair.json"
    result = run_chair("--captions", captions, "--ground-truth", truth, "--json", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Hand values (see test_chair_metrics_match_a_hand_computation): CHAIR_S 1/2, CHAIR_I 3/11,
    # Recall 7/10, Precision 7/9, F1 14/19, Len 37/4.
    rows = dict(line.split() for line in result.stdout.splitlines()[1:6])
    assert rows == {"CHAIR_S": "50.0", "CHAIR_I": "27.3", "Recall": "70.0",
                    "Precision": "77.8", "F1": "73.7"}
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["chair_s"] == pytest.approx(1 / 2, rel=1e-12)
    assert report["chair_i"] == pytest.approx(3 / 11, rel=1e-12)
    assert report["recall"] == pytest.approx(7 / 10, rel=1e-12)
    assert report["precision"] == pytest.approx(7 / 9, rel=1e-12)
    assert report["f1"] == pytest.approx(14 / 19, rel=1e-12)
    assert report["len"] == pytest.approx(37 / 4, rel=1e-12)
    no_loop = {"loop": None, "repetition": 0.0}  # no caption repeats a 4-gram
    assert report["per_caption"] == [
        {"image_id": 1, "mentions": ["person", "horse", "dog"], "hallucinated": ["dog"], **no_loop},
        {"image_id": 2, "mentions": ["dog", "dog", "frisbee", "person"], "hallucinated": [], **no_loop},
        {"image_id": "3", "mentions": ["hot dog", "cat", "cat", "bench"],
         "hallucinated": ["cat", "cat"], **no_loop},
        {"image_id": 4, "mentions": [], "hallucinated": [], **no_loop},
    ]
    assert (report["looping"], report["repetition"]) == (0.0, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.json", "chair.json", "gt.json"]


def test_cli_reports_a_looping_caption_that_chair_scores_zero(tmp_path):
    # The measured defect: a knife loop scores CHAIR 0 (11 correct mentions); a clean caption of the
    # same scene too. Looping (1 of 2 captions) and Rep-4 (1 - 10/62 for the loop, see
    # tests/test_repetition.py, 0 for the other; mean 26/62 = 41.9 %) tell them apart.
    loop = "a big gray knife ." + " next to a big gray knife" * 10
    captions = write(tmp_path / "caps.json", [{"image_id": 1, "caption": loop},
                                              {"image_id": 2, "caption": "a big gray knife ."}])
    truth = write(tmp_path / "gt.json", {"1": ["knife"], "2": ["knife"]})
    out = tmp_path / "chair.json"
    result = run_chair("--captions", captions, "--ground-truth", truth, "--json", out)
    assert result.returncode == 0, result.stderr
    rows = dict(line.split() for line in result.stdout.splitlines()[1:9])
    assert (rows["CHAIR_I"], rows["Looping"], rows["Rep-4"]) == ("0.0", "50.0", "41.9")
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["looping"] == 0.5 and report["repetition"] == pytest.approx(26 / 62)
    assert report["per_caption"][0]["loop"] == {"start_char": 19, "block": "next to a big gray knife",
                                                "copies": 10.0}
    assert report["per_caption"][1]["loop"] is None


def test_cli_without_json_writes_nothing(tmp_path, inputs):
    result = run_chair("--captions", inputs[0], "--ground-truth", inputs[1])
    assert result.returncode == 0, result.stderr
    assert "CHAIR_S" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.json", "gt.json"]


def test_cli_warns_about_unknown_ground_truth_names(tmp_path):
    captions = write(tmp_path / "caps.json", [{"image_id": 1, "caption": "A dog."}])
    truth = write(tmp_path / "gt.json", {"1": ["dog", "unicorn"]})
    result = run_chair("--captions", captions, "--ground-truth", truth)
    assert result.returncode == 0
    assert "unicorn" in result.stderr and "gt.json" in result.stderr


def _caption_file_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    invalid = tmp / "invalid.json"
    invalid.write_text("[{", encoding="utf-8")
    return {
        "missing file": (tmp / "absent.json", "file not found"),
        "invalid JSON": (invalid, "invalid JSON"),
        "not a list": (write(tmp / "dict.json", {"image_id": 1}), "expected a JSON list"),
        "missing caption": (write(tmp / "nocap.json", [{"image_id": 1}]), "missing key 'caption'"),
        "missing image_id": (write(tmp / "noid.json", [{"caption": "a"}]),
                             "missing key 'image_id'"),
        "caption not str": (write(tmp / "intcap.json", [{"image_id": 1, "caption": 7}]),
                            "caption must be a string"),
        "image_id a list": (write(tmp / "listid.json", [{"image_id": [1], "caption": "a"}]),
                            "image_id must be"),
        "item not object": (write(tmp / "item.json", ["a dog"]), "item 0 is not an object"),
    }


@pytest.mark.parametrize("case", ["missing file", "invalid JSON", "not a list", "missing caption",
                                  "missing image_id", "caption not str", "image_id a list",
                                  "item not object"])
def test_bad_captions_file_exits_2_and_writes_nothing(tmp_path, inputs, case):
    bad, problem = _caption_file_cases(tmp_path)[case]
    out = tmp_path / "out.json"
    result = run_chair("--captions", bad, "--ground-truth", inputs[1], "--json", out)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bad.name in lines[0] and problem in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]


@pytest.mark.parametrize(
    ("truth", "problem"),
    [
        (["dog"], "expected a JSON object"),
        ({"1": "dog"}, "must be a list of strings"),
        ({"1": ["dog", 3]}, "must be a list of strings"),
    ],
)
def test_bad_ground_truth_file_exits_2_and_writes_nothing(tmp_path, inputs, truth, problem):
    bad = write(tmp_path / "bad_gt.json", truth)
    out = tmp_path / "out.json"
    result = run_chair("--captions", inputs[0], "--ground-truth", bad, "--json", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad_gt.json" in lines[0] and problem in lines[0]
    assert not out.exists()


def test_caption_image_id_missing_from_ground_truth_exits_2(tmp_path, inputs):
    partial = write(tmp_path / "partial_gt.json", {"1": ["person"], "2": ["dog"]})
    out = tmp_path / "out.json"
    result = run_chair("--captions", inputs[0], "--ground-truth", partial, "--json", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "partial_gt.json" in lines[0] and "'3'" in lines[0] and "4" in lines[0]
    assert not out.exists()


def test_unwritable_json_path_exits_2(tmp_path, inputs):
    out = tmp_path / "no_such_dir" / "out.json"
    result = run_chair("--captions", inputs[0], "--ground-truth", inputs[1], "--json", out)
    assert result.returncode == 2
    assert "out.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.parent.exists()


def test_missing_required_argument_exits_2(inputs):
    result = run_chair("--captions", inputs[0])
    assert result.returncode == 2
    assert "--ground-truth" in result.stderr
