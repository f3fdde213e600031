"""The app opens only the results folders the operator allows, or an uploaded zip, bounded like traces:
size and line limits, no path climbing out of the zip or the folder, zip bombs stop at the cap, and
every refusal is one sentence (InputError)."""

import json
import zipfile

import pytest

from halviz.session import results_folders as folders
from halviz.session.checks import InputError

KEY = "a" * 64
CONFIG = {"config": {"model": "toy", "images": "toy:heldout", "methods": {"vanilla": [], "vcd": []}},
          "baseline": "vanilla"}


def lines(*methods):
    return "".join(json.dumps({"benchmark": "chair", "image_id": "heldout-0", "method": m, "caption": "a cup",
                               "correct": ["cup"], "hallucinated": [], "key": KEY}) + "\n" for m in methods)


def folder(path, samples=None):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(CONFIG))
    (path / "samples.jsonl").write_text(samples if samples is not None else lines("vanilla", "vcd"))
    return path


def test_only_folders_under_the_root_are_listed_and_opened(tmp_path):
    root = tmp_path / "root"
    folder(root / "a")
    folder(root / "group" / "b")
    folder(tmp_path / "outside")
    (root / "link").symlink_to(tmp_path / "outside")  # a link out of the root is not listed
    assert folders.listed_folders(root.resolve()) == ["a", "group/b"]
    opened = folders.open_listed(root.resolve(), "group/b")
    assert opened.results.methods == ["vanilla", "vcd"] and opened.results.local_images is False
    for name in ("../outside", "link", str(tmp_path / "outside"), None):
        with pytest.raises(InputError, match="listed results folders"):
            folders.open_listed(root.resolve(), name)
    with pytest.raises(InputError, match="allows no results folders"):
        folders.open_listed(None, "a")


def test_a_sample_key_never_names_a_file_outside_traces(tmp_path):
    root = tmp_path / "root"
    folder(root / "a")
    opened = folders.open_listed(root.resolve(), "a")
    with opened.saved("../../results") as path:
        assert path is None
    with opened.saved(KEY) as path:  # well-formed but not saved
        assert path is None


def make_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_an_uploaded_zip_opens_from_its_top_or_one_folder(tmp_path):
    for prefix in ("", "run/"):
        z = make_zip(tmp_path / f"r{len(prefix)}.zip", {prefix + "results.json": json.dumps(CONFIG),
                                                         prefix + "samples.jsonl": lines("vanilla", "vcd")})
        opened = folders.open_zip({"path": str(z)})
        assert opened.results.baseline == "vanilla" and len(opened.results.samples) == 2


@pytest.mark.parametrize("members, says", [
    ({"../results.json": "{}", "samples.jsonl": ""}, "outside itself"),
    ({"/etc/results.json": "{}"}, "outside itself"),
    ({"results.json": json.dumps(CONFIG)}, "must hold one results folder"),
    ({"results.json": "[1, 2]", "samples.jsonl": lines("vanilla")}, "not one `halviz eval --out` wrote"),
    ({"results.json": json.dumps(CONFIG), "samples.jsonl": '{"benchmark": "chair"}\n'}, "line 1 of samples.jsonl"),
    ({"results.json": json.dumps(CONFIG), "samples.jsonl": "not json\n"}, "line 1 of samples.jsonl is not JSON"),
])
def test_bad_zips_are_refused_with_a_sentence(tmp_path, members, says):
    with pytest.raises(InputError, match=says):
        folders.open_zip(str(make_zip(tmp_path / "bad.zip", members)))


def test_a_zip_bomb_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "MAX_SAMPLES_BYTES", 1 << 20)
    bomb = make_zip(tmp_path / "bomb.zip", {"results.json": json.dumps(CONFIG), "samples.jsonl": " " * (8 << 20)})
    assert bomb.stat().st_size < 64 << 10  # 8 MB of spaces deflate to a few KB
    with pytest.raises(InputError, match="the limit is 1 MB"):
        folders.open_zip(str(bomb))


def test_not_a_zip_is_one_sentence(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK not really")
    with pytest.raises(InputError, match="not a readable zip"):
        folders.open_zip(str(tmp_path / "x.zip"))
    with pytest.raises(InputError, match="Choose a .zip"):
        folders.open_zip(None)
