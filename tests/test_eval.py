"""halviz.eval: the table equals CHAIR computed independently on the same captions."""

import json

import numpy as np
import pytest
from PIL import Image

from halviz import eval as heval
from halviz.engine.decode import Decoder
from halviz.hallucination import chair_metrics
from halviz.toy import scenes


def test_eval_on_toy_scenes_matches_independent_chair(tiny_model_dirs, tiny_models, tmp_path):
    out = tmp_path / "eval.json"
    code = heval.main(["--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla", "--n", "3",
                       "--max-new-tokens", "4", "--json", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["n"] == 3 and result["config"]["max_new_tokens"] == 4
    sample = scenes.heldout(3, seed=0)
    captions = [Decoder(tiny_models["llava-1.5"], s.image, max_new_tokens=4).run_to_end().caption for s in sample]
    # Toy scenes know their counts (each class drawn at most once): over-counting is measured.
    expected = chair_metrics(captions, [frozenset(s.names) for s in sample],
                             [dict.fromkeys(s.names, 1) for s in sample])
    row = result["methods"]["vanilla"]
    for key in ("chair_s", "chair_i", "recall", "precision", "f1", "len", "looping", "repetition", "over_counted"):
        assert row[key] == pytest.approx(getattr(expected, key))
        assert 0 <= row[key] <= (1 if key != "len" else 1e9)
    assert row["ms_per_token"] > 0


def test_eval_table_puts_looping_and_repetition_beside_chair():
    # Two methods with the same CHAIR; the second loops. Hand rows, as evaluate() writes them.
    base = {"chair_s": 0.5, "chair_i": 0.1, "recall": 0.8, "precision": 0.9, "f1": 0.85, "len": 12.0,
            "ms_per_token": 2.0, "captions": 4}
    rows = {"vanilla": {**base, "looping": 0.0, "repetition": 0.0, "over_counted": 0.0},
            "kvsmooth": {**base, "looping": 0.75, "repetition": 0.42, "over_counted": 0.125},
            "photos": {**base, "looping": 0.25, "repetition": 0.05, "over_counted": None}}
    lines = heval.format_table(rows).splitlines()
    assert lines[0].split() == ["method", "CHAIR_s", "CHAIR_i", "Recall", "Prec", "F1", "Len", "Loop%", "Rep-4",
                                "Over", "ms/tok"]
    assert lines[1].split()[7:10] == ["0.0", "0.0", "0.0"]
    assert lines[2].split()[7:10] == ["75.0", "42.0", "12.5"]
    assert lines[3].split()[7:10] == ["25.0", "5.0", "-"]  # counts unknown: not measured


def test_eval_on_a_coco_folder(tiny_model_dirs, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / name)
    instances = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 2, "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    out = tmp_path / "coco.json"
    code = heval.main(["--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla", "--n", "5",
                       "--max-new-tokens", "3", "--images", str(images), "--annotations",
                       str(tmp_path / "instances.json"), "--json", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    assert code == 0 and report["config"]["n"] == 2
    assert report["methods"]["vanilla"]["over_counted"] is None  # COCO lists: no counts, none invented


@pytest.mark.parametrize("args", [
    ["--methods", "nonsense"],
    ["--scenes", "broken:knife"],
    ["--param", "vanilla"],
    ["--images", "/nonexistent"],
])
def test_eval_bad_arguments_exit_2_and_write_nothing(tiny_model_dirs, tmp_path, args, capsys):
    out = tmp_path / "never.json"
    code = heval.main(["--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla", "--n", "1",
                       "--json", str(out), "--no-progress", *args])
    assert code == 2 and not out.exists()
    assert "halviz.eval:" in capsys.readouterr().err


def test_eval_bad_annotation_file_names_the_file(tiny_model_dirs, tmp_path, capsys):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": 3}')
    code = heval.main(["--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla", "--images", str(tmp_path),
                       "--annotations", str(bad), "--no-progress"])
    assert code == 2 and "instances.json" in capsys.readouterr().err
