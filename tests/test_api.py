"""The Python API (halviz.compare and friends): the same captions and labels as the app's /compare,
the columns a notebook reads, saved traces that load back, and a light ``import halviz``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import halviz
from halviz.session.checks import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "halviz" / "assets" / "examples"
KNIFE = EXAMPLES / "toy-knife-no-fork.png"
CUP = EXAMPLES / "toy-cup-no-spoon.png"
PHOTO = EXAMPLES / "chelsea.jpg"
PROMPT = "Please describe this image in detail."
LABELS = ("caption", "correct", "hallucinated", "unverified", "finish_reason")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def test_import_halviz_loads_neither_torch_nor_gradio(tmp_path):
    code = ("import sys, halviz; names = halviz.__all__; "
            "bad = [m for m in ('torch', 'transformers', 'gradio') if m in sys.modules]; assert not bad, bad; "
            "assert {'compare', 'load_trace', 'export', 'Comparison'} <= set(names), names; "
            "import halviz.viz.image_files; "
            "bad = [m for m in ('torch', 'transformers', 'gradio') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=_env(), timeout=120)


def test_the_issues_one_liner_works_from_another_directory(tmp_path):
    code = (f"import halviz; print(halviz.compare({str(KNIFE)!r}, methods=['vanilla','vcd'], "
            "max_new_tokens=24)['vcd'].caption)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "knife" in done.stdout, done.stdout


# ---- the same inputs through /compare and through halviz.compare ----------------------------------------

CASES = [  # image, methods, tokens, truth as the page's box holds it, the API's ground_truth, settings
    (KNIFE, ["vanilla", "vcd"], 24, "clock, knife", None, {}),
    (CUP, ["vanilla", "var", "remove_sink"], 20, "cup", ["cup"], {"var": {"rho": 0.7}}),
    (CUP, ["vanilla", "prunehal"], 16, "bowl, clock, cup", ["cup", "bowl", "clock"], {"prunehal": {"r": 0.5, "t": 2}}),
    (PHOTO, ["vanilla", "kvsmooth"], 12, "", [], {"kvsmooth": {"queue": 7}}),
    (KNIFE, ["vhr", "vasparse"], 10, "knife, fork, clock", ["knife", "fork", "clock"], {}),
    (KNIFE, ["vanilla", "vhr+prunehal"], 10, "clock, knife", None, {"prunehal": {"r": 0.5}}),  # a stack column
]


@pytest.fixture(scope="module")
def app_url(serve, toy):
    with serve(models=["toy"], default_model="toy", loader=lambda name: toy, preload=[], update_every_s=1.0) as (_, url):
        yield url


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_api_gives_the_apps_captions_and_labels(app_url, case):
    from gradio_client import Client, handle_file

    image, methods, tokens, box, truth, settings = CASES[case]
    outputs = Client(app_url, verbose=False).predict(handle_file(str(image)), PROMPT, methods, tokens, box, "toy",
                                                     json.dumps(settings), api_name="/compare")
    app = outputs[-1]  # the JSON summary per method
    with pytest.warns(UserWarning) if image == PHOTO else _nothing():
        comparison = halviz.compare(image, PROMPT, methods, "toy", tokens, truth, settings)
    assert list(comparison) == list(app), (list(comparison), list(app))
    for name, summary in app.items():
        column = comparison[name]
        for label in LABELS:
            assert getattr(column, label) == summary[label], (name, label)
        assert column.summary["over_counted"] == summary["over_counted"]
        assert column.summary.get("first_divergence_step") == summary.get("first_divergence_step")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- what a notebook reads ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def knife():
    return halviz.compare(KNIFE, methods=["vanilla", "vcd"], max_new_tokens=16)


def test_columns_by_method_title_and_position(knife):
    assert list(knife) == ["vanilla", "vcd"] and len(knife) == 2
    assert knife["vcd"] is knife["VCD"] is knife[1]
    assert knife["vanilla"] is knife["Greedy"]
    with pytest.raises(KeyError, match="vanilla, vcd"):
        knife["var"]
    assert knife.finished and knife.ground_truth == ["clock", "knife"] and knife.model == "toy"
    assert knife.truth.trust == "exact" and knife.truth.counts == {"clock": 1, "knife": 1}
    assert set(knife.summary) == {"vanilla", "vcd"} and knife["vcd"].summary == knife.summary["vcd"]
    assert "vcd" in repr(knife) and "<table>" in knife._repr_html_()


def test_traces_carry_tokens_truth_and_the_public_model_name_and_load_back(knife, tmp_path):
    paths = knife.save(tmp_path / "out")
    assert sorted(p.suffix for p in paths) == [".json", ".json", ".npz", ".npz"]
    assert all(p.name.startswith("halviz-toy-") for p in paths)
    for path in paths:
        if path.suffix == ".json":
            text = path.read_text()
            assert str(ROOT) not in text and "/assets/" not in text
    npz = next(p for p in paths if p.suffix == ".npz" and "-vcd-" in p.name)
    trace = halviz.load_trace(npz)
    column = knife["vcd"]
    assert trace.texts == column.trace.texts and "".join(trace.texts) == column.caption
    assert trace.meta["model"] == "toy" and trace.meta["ground_truth"]["objects"] == ["clock", "knife"]
    assert trace.meta["vocab_strings"] and trace.meta["image_digest"]
    np.testing.assert_array_equal(trace.arrays["token_ids"], column.trace.arrays["token_ids"])


def test_stream_yields_the_growing_comparison_and_ends_as_the_plain_call(knife):
    seen = list(halviz.compare(KNIFE, methods=["vanilla", "vcd"], max_new_tokens=16, stream=True))
    assert len(seen) >= 1 and seen[-1].finished and all(not c.finished for c in seen[:-1])
    lengths = [len(c["vanilla"].caption) for c in seen]
    assert lengths == sorted(lengths)
    for name in knife:
        for label in LABELS:
            assert getattr(seen[-1][name], label) == getattr(knife[name], label)
        assert seen[-1][name].trace is not None


def test_a_pil_image_and_an_array_give_the_same_captions_and_truth(knife):
    picture = Image.open(KNIFE).convert("RGB")
    for image in (picture, np.asarray(picture), np.asarray(picture).astype(np.float32) / 255):
        again = halviz.compare(image, methods=["vanilla", "vcd"], max_new_tokens=16)
        assert again.ground_truth == knife.ground_truth  # a toy scene's objects, read from its pixels
        for name in knife:
            for label in LABELS:
                assert getattr(again[name], label) == getattr(knife[name], label), (type(image), name, label)


def test_ground_truth_none_the_pictures_own_an_empty_list_none_and_a_list_the_users():
    none = halviz.compare(KNIFE, max_new_tokens=4, ground_truth=[])
    assert none.ground_truth is None and none["vanilla"].correct == [] and none.truth is None
    mine = halviz.compare(KNIFE, max_new_tokens=4, ground_truth=["knife", "fork", "wand"])
    assert mine.ground_truth == ["fork", "knife"] and mine.truth.trust == "user" and mine.unknown == ["wand"]
    same = halviz.compare(KNIFE, max_new_tokens=4, ground_truth=["knife", "clock"])
    assert same.truth.trust == "exact" and same.truth.counts == {"clock": 1, "knife": 1}


def test_bad_inputs_raise_the_apps_sentences(tmp_path):
    with pytest.raises(InputError, match="Unknown method 'nope'"):
        halviz.compare(KNIFE, methods=["nope"])
    with pytest.raises(InputError, match="Max new tokens"):
        halviz.compare(KNIFE, max_new_tokens=0)
    with pytest.raises(InputError, match="VCD"):
        halviz.compare(KNIFE, methods=["vcd"], params={"vcd": {"alpha": -5}})
    with pytest.raises(InputError, match="Settings given for unknown method"):
        halviz.compare(KNIFE, params={"nope": {"x": 1}})
    with pytest.raises(FileNotFoundError):
        halviz.compare(tmp_path / "missing.png")
    with pytest.raises(InputError, match="file path, a PIL image or a numpy array"):
        halviz.compare(42)
    with pytest.raises(InputError, match="list of object names"):
        halviz.compare(KNIFE, ground_truth=[1, 2])


def test_a_model_that_cannot_load_raises_model_unavailable(tmp_path):
    with pytest.raises(halviz.ModelUnavailable):
        halviz.compare(KNIFE, model=str(tmp_path))  # an empty folder is no model


def test_a_model_loaded_by_the_caller_is_used_as_it_is(toy, knife):
    again = halviz.compare(KNIFE, methods=["vanilla", "vcd"], max_new_tokens=16, model=toy)
    assert again.model == "toy" and again["vcd"].caption == knife["vcd"].caption


def test_the_first_comparison_chooses_halvizs_thread_count_unless_the_caller_chose(tmp_path):
    code = ("import torch, halviz, halviz.threads as t; torch.set_num_threads(t.usable_cores()); "
            "halviz.compare({knife!r}, max_new_tokens=2); print(torch.get_num_threads(), t.default_threads())")
    env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code.format(knife=str(KNIFE))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got, default = done.stdout.split()[-2:]
    assert got == default, done.stdout


def test_a_stack_is_one_column_decoding_its_methods_together_in_registry_order(toy):
    """``"vhr+prunehal"`` and ``("prunehal", "vhr")`` name one column: PruneHal then VHR (the registry's
    stacking order), the same tokens as the engine decoding that stack; its title joins the titles."""
    from PIL import Image

    from halviz.engine.batch import BatchDecoder
    from halviz.methods import build_stack

    comparison = halviz.compare(KNIFE, methods=["vhr+prunehal", "vanilla", ("vcd", "var")], model=toy,
                                max_new_tokens=8)
    assert list(comparison) == ["vanilla", "prunehal+vhr", "vcd+var"]
    stacked = comparison["PruneHal + VHR"]
    assert stacked is comparison["prunehal+vhr"]
    assert [m["name"] for m in stacked.trace.meta["methods"]] == ["prunehal", "vhr"]
    decoder = BatchDecoder(toy, Image.open(KNIFE), PROMPT, [build_stack(["prunehal", "vhr"], {})], 8)
    for _ in decoder:
        pass
    assert stacked.trace.arrays["token_ids"].tolist() == decoder.trace(0).arrays["token_ids"].tolist()
    with pytest.raises(InputError, match="different methods, without vanilla"):
        halviz.compare(KNIFE, methods=["vanilla+vcd"], model=toy, max_new_tokens=2)
    with pytest.raises(InputError, match="Unknown method 'nope'"):
        halviz.compare(KNIFE, methods=["vcd+nope"], model=toy, max_new_tokens=2)
