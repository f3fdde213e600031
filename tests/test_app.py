"""The app in-process on 127.0.0.1, driven through gradio_client: /compare streams, matches the
engine, and answers every kind of bad input with an error while it keeps serving."""

import io
import json
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from halviz.engine.decode import Decoder
from tools.hostile import looks_like_python
from halviz.methods import build_stack
from halviz.models import load_model
from halviz.trace import Trace
from halviz.session.checks import InputError, load_image

EXAMPLES = Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples"
PHOTO = EXAMPLES / "chelsea.jpg"
PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs):
    return str(tiny_model_dirs["llava-1.5"])


@pytest.fixture(scope="module")
def server(model_dir, serve):
    # update_every_s=0: one streamed update per round of tokens, so the stream is observable.
    # The operator's switch for local folders is on here: these tests load a tiny checkpoint from disk.
    with serve(models=[model_dir, "llava-hf/llava-1.5-7b-hf"], default_model=model_dir, update_every_s=0,
               allow_local=True) as launched:
        yield launched


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


class Api:
    """/compare with sensible defaults, so each test names only what it changes."""

    def __init__(self, client: Client, model_dir: str):
        self.client, self.model_dir = client, model_dir

    def compare(self, image=PHOTO, prompt=PROMPT, methods=("vanilla",), tokens=2, truth="cat", model=None,
                settings=""):
        image = handle_file(str(image)) if image is not None else None
        return self.client.predict(image, prompt, list(methods), tokens, truth, model or self.model_dir, settings,
                                   api_name="/compare")


@pytest.fixture(scope="module")
def api(client, model_dir) -> Api:
    return Api(client, model_dir)


# ---- images crafted to be awkward ------------------------------------------------------------------

def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A 1×1 PNG whose header claims ``width``×``height`` (a decompression bomb's calling card)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def png_with_short_data(path: Path, width: int, height: int) -> Path:
    """A well-formed PNG (valid chunks and CRCs, complete zlib stream) that claims ``width``×``height``
    but holds 100 rows: Pillow decodes it without complaint and fills the rest with black."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = (b"\0" + b"\xff" * (width * 3)) * 100
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


def awkward_images(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    files = {}
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    files["animated.gif"] = folder / "animated.gif"
    frames[0].save(files["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["cmyk.jpg"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk.jpg"])
    files["16bit.png"] = folder / "16bit.png"
    Image.fromarray((rng.integers(0, 65535, (40, 60))).astype(np.uint16)).save(files["16bit.png"])
    files["rgba.png"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)]), "RGBA").save(files["rgba.png"])
    files["palette.png"] = folder / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette.png"], transparency=0)
    files["gray.png"] = folder / "gray.png"
    Image.fromarray(rgb[..., 0], "L").save(files["gray.png"])
    files["float.tif"] = folder / "float.tif"
    Image.fromarray(rng.random((40, 60)).astype(np.float32), "F").save(files["float.tif"])
    return files


def test_awkward_images_are_converted_not_refused(tmp_path):
    for name, path in awkward_images(tmp_path).items():
        loaded = load_image({"path": str(path), "orig_name": name})
        assert loaded.image.mode == "RGB" and loaded.image.size == (60, 40), name
        assert np.asarray(loaded.image).std() > 0, name
    assert "first frame of an animated image" in load_image(str(tmp_path / "animated.gif")).note
    # Transparent pixels are flattened onto white, not black.
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(clear)
    assert np.asarray(load_image(str(clear)).image).min() == 255


# ---- the API ---------------------------------------------------------------------------------------

def test_compare_api_lists_the_inputs_and_ends_with_the_json(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]
    names = [p["parameter_name"] for p in info["parameters"]]
    assert names[:6] == ["image", "prompt", "methods", "max_new_tokens", "ground_truth", "model"]
    assert info["returns"][-1]["component"] == "Json"


def test_compare_streams_in_order_and_matches_the_engine(client, model_dir):
    methods = ["vanilla", "prunehal"]
    job = client.submit(handle_file(str(PHOTO)), PROMPT, methods, 10, "cat", model_dir, "", api_name="/compare")
    updates = [json_summary for *_, json_summary in job]
    assert job.status().success
    captions = [u for u in updates if u and set(methods) <= set(u)]
    assert len(captions) >= 3, f"expected several streamed updates, got {len(captions)}"
    for earlier, later in zip(captions, captions[1:]):  # each update extends the last
        for method in methods:
            assert later[method]["caption"].startswith(earlier[method]["caption"])
            assert later[method]["tokens"] >= earlier[method]["tokens"]
    final = job.outputs()[-1][-1]
    loaded = load_model(model_dir)
    picture = Image.open(PHOTO)
    for method in methods:
        expected = Decoder(loaded, picture, PROMPT, build_stack([method]), 10).run_to_end()
        assert final[method]["caption"] == expected.caption
        assert final[method]["tokens"] == expected.num_steps
        assert final[method]["finish_reason"] == expected.meta["finish_reason"]
        assert set(final[method]) >= {"caption", "correct", "hallucinated", "unverified", "tokens_per_s"}
        assert final[method]["tokens_per_s"] > 0


def test_columns_label_mentions_against_the_ground_truth():
    from halviz.hallucination import ground_truth_from_text
    from halviz.session.results import column_result

    truth, _ = ground_truth_from_text("cat")
    result = column_result("vanilla", "Greedy", ["A", " cat", " and", " two", " dogs", " and", " a", " cat", "."],
                           0.5, "eos", truth)
    assert result.objects == {"correct": ["cat"], "hallucinated": ["dog"], "unverified": []}
    assert result.counts == {"correct": 2, "hallucinated": 1, "unverified": 0}
    assert ("dogs", "hallucinated") in result.spans and result.summary_json()["tokens_per_s"] == 18.0
    assert "CHAIRᵢ 33%" in result.summary_markdown()
    unchecked = column_result("vanilla", "Greedy", ["A cat"], 1.0, None, None)
    assert unchecked.objects["unverified"] == ["cat"] and "CHAIR" not in unchecked.summary_markdown()


def test_example_lists_keep_their_source_until_edited():
    from halviz.session.examples import image_truth, load_examples, resolve_truth

    examples = load_examples(EXAMPLES)
    assert {e.trust for e in examples} == {"exact", "annotation"} and len(examples) >= 6
    toy = next(e for e in examples if e.trust == "exact")
    own = image_truth(toy.path, examples)
    assert own.objects == toy.objects
    info = resolve_truth(toy.objects, own)
    assert info.truth.trust == "exact" and "toy scene generator" in info.truth.source
    edited = resolve_truth(toy.objects + ", unicorn", own)
    assert edited.truth.trust == "user" and edited.unknown == ["unicorn"]
    assert resolve_truth(toy.objects, None).truth.trust == "user"  # a picture nobody knows: the text was typed
    assert resolve_truth("  ", own).truth is None


def test_every_picture_brings_its_own_ground_truth(tmp_path):
    """Issue 24 (1): an example's file gives its list; the same toy scene saved anew is read from its
    pixels (exact); a photo nobody listed, or a toy scene resized, gives nothing (the box is emptied)."""
    from halviz.toy.scenes import broken_pair
    from halviz.session.examples import RECOGNISED_SOURCE, image_truth, load_examples

    examples = load_examples(EXAMPLES)
    photo = next(e for e in examples if e.trust == "annotation")
    assert image_truth(photo.path, examples).objects == photo.objects
    scene = broken_pair(("knife", "fork"), 3)[2]
    fresh = tmp_path / "scene.png"
    scene.image.save(fresh)
    own = image_truth(fresh, examples)
    assert own.source == RECOGNISED_SOURCE and own.trust == "exact"
    assert set(own.objects.split(", ")) == scene.names
    unknown = tmp_path / "cat-cropped.png"
    Image.open(photo.path).crop((0, 0, 96, 96)).save(unknown)
    assert image_truth(unknown, examples) is None
    resized = tmp_path / "scene-big.png"
    scene.image.resize((192, 192)).save(resized)
    assert image_truth(resized, examples) is None


def test_toy_scenes_are_read_back_exactly_from_their_pixels():
    """The recogniser against the generator's own object lists, on every set the app and probe draw
    from (faint partners included), and never on a photo."""
    from halviz.toy.recognise import recognise_scene
    from halviz.toy.scenes import PRIOR_PAIRS, broken_pair, control, heldout

    scenes = heldout(150) + [s for pair in PRIOR_PAIRS for s in broken_pair(pair, 30) + control(pair, 20)]
    faint = sum(o.faint for s in scenes for o in s.objects)
    assert faint > 10  # the hard case is in the set
    wrong = [(sorted(s.names), recognise_scene(s.image)) for s in scenes
             if set(recognise_scene(s.image) or ["<none>"]) != s.names]
    assert wrong == []
    for example in EXAMPLES.glob("*.jpg"):
        assert recognise_scene(Image.open(example).convert("RGB").resize((96, 96))) is None


BAD_REQUESTS = {
    "no image": (dict(image=None), "Upload an image"),
    "not an image": (dict(image="TEXT"), "not an image"),
    "truncated image": (dict(image="TRUNCATED"), "damaged"),
    "decompression bomb": (dict(image="BOMB"), "too large"),
    "too many pixels": (dict(image="HUGE"), "megapixels"),
    "empty prompt": (dict(prompt="   "), "prompt is empty"),
    "overlong prompt": (dict(prompt="x" * 1001), "limit is 1000"),
    "zero tokens": (dict(tokens=0), "Max new tokens"),
    "too many tokens": (dict(tokens=100000), "Max new tokens"),
    "fractional tokens": (dict(tokens=2.5), "Max new tokens"),
    "no method": (dict(methods=[]), "at least one"),
    "unknown method": (dict(methods=["nope"]), "Unknown method"),
    "knob out of range": (dict(methods=["prunehal"], settings=json.dumps({"prunehal": {"r": 5}})), "PruneHal"),
    "knob not a number": (dict(methods=["prunehal"], settings=json.dumps({"prunehal": {"t": "many"}})), "number"),
    "unknown knob": (dict(methods=["prunehal"], settings=json.dumps({"prunehal": {"zzz": 1}})), "no knob"),
    "settings not JSON": (dict(settings="{oops"), "not valid JSON"),
    "unknown model id": (dict(model="not a model"), "does not offer that model"),
    "model id not offered": (dict(model="someone/else"), "does not offer that model"),
    "model offline": (dict(model="llava-hf/llava-1.5-7b-hf"), "cannot be reached"),
    "model folder without config": (dict(model="EMPTY_DIR"), "no config.json"),  # local folders are on here
    "True as a token count": (dict(tokens=True), "Max new tokens"),
    "special token": (dict(prompt="Describe <image> twice."), "special token"),
    "infinite integer knob": (dict(methods=["prunehal"], settings='{"prunehal": {"t": 1e999}}'), "too large"),
    "Infinity as a knob": (dict(methods=["prunehal"], settings='{"prunehal": {"t": Infinity}}'), "Infinity"),
    "deeply nested knobs": (dict(methods=["prunehal"], settings='{"prunehal": {"t": ' + "[" * 3000 + "]" * 3000 + "}}"),
                            "nested far too deeply"),
    "truncated 40 megapixels": (dict(image="SHORT_PNG"), "damaged or truncated"),
    "avif listed": (dict(image="NOT_AVIF"), "AVIF"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gives_an_error_and_the_server_keeps_serving(api, tmp_path, case):
    kwargs, message = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    stand_ins = {
        "TEXT": lambda: _write(tmp_path / "notes.png", b"this is not a picture"),
        "TRUNCATED": lambda: _write(tmp_path / "cut.jpg", PHOTO.read_bytes()[:3000]),
        "BOMB": lambda: png_claiming_size(tmp_path / "bomb.png", 40000, 40000),
        "HUGE": lambda: png_claiming_size(tmp_path / "huge.png", 8000, 8000),
        "EMPTY_DIR": lambda: tmp_path,
        "SHORT_PNG": lambda: png_with_short_data(tmp_path / "short.png", 6000, 6600),
        "NOT_AVIF": lambda: _write(tmp_path / "x.avif", b"\0\0\0\x1cftypavif" + b"\0" * 40),
    }
    for key in ("image", "model"):
        if kwargs.get(key) in stand_ins:
            kwargs[key] = str(stand_ins[kwargs[key]]())
    with pytest.raises(Exception) as failure:
        api.compare(**kwargs)
    text = str(failure.value)
    assert message.lower() in text.lower(), text
    assert not looks_like_python(text), text
    assert api.compare()[-1]["vanilla"]["tokens"] == 2  # the next good request succeeds


@pytest.mark.parametrize("name", ["animated.gif", "cmyk.jpg", "16bit.png", "palette.png"])
def test_awkward_images_run_through_the_api(api, tmp_path, name):
    path = awkward_images(tmp_path)[name]
    assert api.compare(image=path)[-1]["vanilla"]["tokens"] == 2


def test_refusals_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not an image"):
        load_image(str(_write(tmp_path / "x.webp", b"RIFF0000WEBPjunk")))
    with pytest.raises(InputError, match="empty"):
        load_image(str(_write(tmp_path / "empty.png", b"")))


# ---- trace files -------------------------------------------------------------------------------------

def test_trace_files_come_back_with_their_ground_truth(api):
    outputs = api.compare(methods=["vanilla", "prunehal"], tokens=3)
    files = outputs[-2]
    npz = [f for f in files if f.endswith(".npz")]
    assert len(npz) == 2 and len([f for f in files if f.endswith(".json")]) == 2
    trace = Trace.load(npz[0])
    assert trace.num_steps == 3 and trace.meta["ground_truth"]["objects"] == ["cat"]
    assert trace.meta["vocab_strings"]  # candidate tokens can be named without the tokenizer


def test_replay_refuses_a_bad_file_with_a_clear_error(tmp_path, model_dir):
    from halviz.ui.app import _layout
    from halviz.ui.controller import Controller, HalvizApp
    from halviz.session.examples import load_examples
    from halviz.methods import METHODS

    app = HalvizApp([model_dir], model_dir, load_model, load_examples(EXAMPLES), METHODS)
    with gr.Blocks():
        controller = Controller(app, _layout(app))
    bad = _write(tmp_path / "bad.npz", b"PK not really a zip")
    with pytest.raises(gr.Error, match="Could not open the trace"):
        controller.replay({"path": str(bad), "orig_name": "bad.npz"}, None, {})
    with pytest.raises(gr.Error, match="Choose a .npz"):
        controller.replay(None, None, {})
    trace = Decoder(load_model(model_dir), Image.open(PHOTO), PROMPT, [], 1).run_to_end()  # one step
    npz, _ = trace.save(tmp_path / "one")
    updates = controller.replay({"path": str(npz), "orig_name": "one.npz"}, None, {})
    runs = updates[controller.ui.runs]
    assert list(runs) == ["upload:one.npz"] and runs["upload:one.npz"].image is None
    slider = updates[controller.ui.panel.step]
    assert slider.interactive is False  # a one-step trace: no slider with maximum == minimum


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_model_cache_loads_each_model_once_under_concurrency():
    import threading
    import time as clock

    from halviz.session.model_cache import ModelCache

    calls = []

    def slow_loader(name):
        calls.append(name)
        clock.sleep(0.05)
        return object()

    cache = ModelCache(slow_loader, capacity=1)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"] and len({id(r) for r in results}) == 1
    cache.get("b")  # capacity 1: "a" is evicted and would load again
    assert cache.loaded_names() == ["b"]


def test_an_avif_photo_is_accepted(api, tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow cannot read AVIF, so the message rightly leaves it out")
    path = tmp_path / "photo.avif"
    Image.open(PHOTO).save(path, "AVIF")
    assert api.compare(image=path)[-1]["vanilla"]["tokens"] == 2


def test_one_key_per_model_however_it_is_typed(server, api, model_dir):
    """A folder with a trailing slash, or reached through "..", is the model already loaded."""
    demo, _ = server
    cache = demo.halviz.cache
    api.compare()
    before = cache.loaded_names()
    parent = Path(model_dir).parent
    for spelling in (model_dir + "/", f"{parent}/../{parent.name}/{Path(model_dir).name}", model_dir + "//"):
        assert api.compare(model=spelling)[-1]["vanilla"]["tokens"] == 2
    assert cache.loaded_names() == before == [str(Path(model_dir).resolve())]


def test_the_model_box_does_not_reveal_server_paths_without_the_switch(model_dir, tmp_path):
    """With local folders off (the default), every path gets the same sentence, existing or not."""
    from halviz.ui.controller import HalvizApp
    from halviz.session.checks import InputError
    from halviz.methods import METHODS

    app = HalvizApp(["toy"], "toy", load_model, [], METHODS)
    answers = set()
    for path in ("/etc", "/nonexistent", str(tmp_path), model_dir, "../..", "~root"):
        with pytest.raises(InputError) as refusal:
            app.policy.check(path, "toy")
        answers.add(str(refusal.value))
    assert len(answers) == 1 and "does not offer that model" in answers.pop()
    for alias in ("TOY", " toy-llava ", "Toy"):
        assert app.policy.check(alias, "toy") == "toy"
