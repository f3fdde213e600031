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
    expected = chair_metrics(captions, [frozenset(s.names) for s in sample])
    row = result["methods"]["vanilla"]
    for key in ("chair_s", "chair_i", "recall", "precision", "f1", "len"):
        assert row[key] == pytest.approx(getattr(expected, key))
        assert 0 <= row[key] <= (1 if key != "len" else 1e9)
    assert row["ms_per_token"] > 0


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
    assert code == 0 and json.loads(out.read_text())["config"]["n"] == 2


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
