"""Hostile input: fuzzed text fields, broken image bytes and crafted trace files. Whatever arrives,
the callbacks answer with a finished run or a short ``gr.Error`` sentence (never a stack trace), the
server keeps serving, and a trace upload never unpickles anything."""

import io
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from halviz.engine.decode import Decoder
from halviz.methods import METHODS
from halviz.models import load_model
from tools.stress import EXAMPLES, PROMPT
from halviz.session import checks as inputs
from halviz.ui.app import _layout
from halviz.ui.controller import Controller, HalvizApp
from halviz.session.examples import load_examples

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TOY_SCENE = EXAMPLES / "toy-scene.png"
KNOBS = sorted({k.name for cls in METHODS.values() for k in cls.knobs} | {"zzz"})


@pytest.fixture(scope="module")
def controller(toy):
    def loader(name):  # the toy for "toy"; anything else goes to the real loader (offline in tests)
        return toy if name == "toy" else load_model(name)

    app = HalvizApp(["toy"], "toy", loader, load_examples(EXAMPLES), METHODS, update_every_s=1.0)
    with gr.Blocks():
        return Controller(app, _layout(app))


def assert_user_message(error: gr.Error) -> None:
    text = str(error.message)
    assert text and len(text) <= 600, text
    assert "Traceback" not in text and 'File "' not in text, text


def run(controller, image=str(TOY_SCENE), prompt=PROMPT, methods=("vanilla",), tokens=2, truth="",
        model="toy", settings_text="", decode=True):
    """Drive /compare's callback; True if it finished, False if it refused with a gr.Error."""
    updates = controller.compare(image, prompt, methods, tokens, truth, model, settings_text, {})
    try:
        for _ in updates if decode else [next(updates)]:
            pass
    except gr.Error as error:
        assert_user_message(error)
        return False
    finally:
        updates.close()
    return True


# ---- text fields -------------------------------------------------------------------------------------

texts = st.one_of(st.text(max_size=80), st.text(min_size=990, max_size=1100), st.none(),
                  st.integers(), st.floats(allow_nan=True), st.lists(st.text(max_size=5), max_size=3))
knob_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**12),
                        st.text(max_size=6), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
settings_json = st.builds(json.dumps, st.dictionaries(
    st.sampled_from([*METHODS, "nope"]), st.dictionaries(st.sampled_from(KNOBS), knob_values, max_size=3),
    max_size=3))


HOSTILE_FIELDS = {
    "prompt": texts,
    "truth": texts,
    "model": st.one_of(st.just(""), st.text(max_size=40), st.just("../../etc"), st.just("/"), st.integers()),
    "settings_text": st.one_of(settings_json, st.text(max_size=40), st.just("[1, 2]"), st.just('{"vanilla": 3}')),
    "methods": st.one_of(st.lists(st.sampled_from([*METHODS, "", "nope", "__init__"]), max_size=3),
                         st.text(max_size=20), st.none()),
    "tokens": st.one_of(st.integers(-3, 3), st.integers(513, 10**15), st.floats(allow_nan=True),
                        st.text(max_size=4), st.none()),
}


@FUZZ
@given(data=st.data(), fields=st.sets(st.sampled_from(sorted(HOSTILE_FIELDS)), min_size=1, max_size=2))
def test_fuzzed_text_fields_finish_or_refuse_politely(controller, data, fields):
    # One or two hostile fields at a time, the rest valid, so that both outcomes are reached.
    values = {name: data.draw(HOSTILE_FIELDS[name], label=name) for name in sorted(fields)}
    event("finished" if run(controller, **values) else "refused")


def test_a_plain_request_still_finishes(controller):
    assert run(controller)


# ---- image bytes ------------------------------------------------------------------------------------

def png_bytes(size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def claiming(data: bytes, width: int, height: int) -> bytes:
    data = bytearray(data)
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


VALID = png_bytes()
JPEG = (EXAMPLES / "chelsea.jpg").read_bytes()
broken_images = st.one_of(
    st.binary(max_size=3000),
    st.integers(0, len(VALID)).map(lambda n: VALID[:n]),
    st.integers(0, len(JPEG) - 1).map(lambda n: JPEG[:n]),
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)).map(
        lambda p: VALID[:p[0]] + bytes([p[1]]) + VALID[p[0] + 1:]),
    st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).map(lambda wh: claiming(VALID, *wh)),
    st.sampled_from([b"GIF89a" + b"\xff" * 40, b"BM" + b"\0" * 60, b"II*\0" + b"\xff" * 30,
                     b"RIFF\x10\0\0\0WEBPVP8 ", b"%PDF-1.4", b"\x89PNG\r\n\x1a\n"]),
)


@FUZZ
@given(data=broken_images, suffix=st.sampled_from([".png", ".jpg", ".gif", ".webp", ".tif", ""]))
def test_broken_image_bytes_are_refused_or_read(controller, tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("img") / f"upload{suffix}"
    path.write_bytes(data)
    event("read" if run(controller, image=str(path), decode=False) else "refused")  # the checks only: they run before any model work


def test_an_oversized_file_is_refused_by_size(controller, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_IMAGE_BYTES", 1000)
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes((200, 200)))
    with pytest.raises(gr.Error, match="the limit is"):
        for _ in controller.compare(str(path), PROMPT, ["vanilla"], 2, "", "toy", "", {}):
            pass


def test_hostile_requests_through_the_server_leave_it_serving(toy_app, tmp_path):
    from gradio_client import handle_file

    client = toy_app.client()
    cases = [b"", b"\0" * 100, JPEG[:2000], claiming(VALID, 60000, 60000), VALID[:-10]]
    for i, data in enumerate(cases):
        path = tmp_path / f"case{i}.png"
        path.write_bytes(data)
        try:  # PIL reads some damaged files (a PNG missing its end): refused or read are both fine
            assert client.predict(handle_file(str(path)), PROMPT, ["vanilla"], 2, "", "toy", "",
                                  api_name="/compare")[-1]["vanilla"]["tokens"] == 2
        except Exception as failure:
            assert "Traceback" not in str(failure) and 'File "' not in str(failure)
        with pytest.raises(Exception) as refusal:
            client.predict(handle_file(str(TOY_SCENE)), "\0" * 2000, ["nope"], "x", None, "\n", "{",
                           api_name="/compare")
        assert "prompt has 2000 characters" in str(refusal.value) and "Traceback" not in str(refusal.value)
    summary = client.predict(handle_file(str(TOY_SCENE)), PROMPT, ["vanilla"], 2, "", "toy", "",
                             api_name="/compare")[-1]
    assert summary["vanilla"]["tokens"] == 2


# ---- trace uploads ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_trace(toy, tmp_path_factory):
    trace = Decoder(toy, Image.open(TOY_SCENE), PROMPT, [], 3).run_to_end()
    npz, _ = trace.save(tmp_path_factory.mktemp("trace") / "good")
    return npz


def replay(controller, path: Path):
    return controller.replay({"path": str(path), "orig_name": path.name}, None, {})


def refused(controller, path: Path, match: str) -> None:
    with pytest.raises(gr.Error, match=match) as failure:
        replay(controller, path)
    assert_user_message(failure.value)


class LeavesAMark:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    mark: Path

    def __reduce__(self):
        return (Path.touch, (self.mark,))


def test_a_good_trace_replays(controller, good_trace):
    assert list(replay(controller, good_trace)[controller.ui.runs]) == ["upload:good.npz"]


def test_object_arrays_are_refused_and_never_unpickled(controller, good_trace, tmp_path):
    marker = tmp_path / "unpickled"
    bomb = LeavesAMark()
    bomb.mark = marker
    with np.load(good_trace) as data:
        arrays = {k: data[k] for k in data.files}
    payload = np.empty(1, dtype=object)
    payload[0] = bomb
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays, token_ids_extra=payload)
    refused(controller, path, "Python objects")
    (tmp_path / "meta_only.npz").write_bytes(path.read_bytes())
    assert not marker.exists()
    raw = tmp_path / "raw-pickle.npz"  # a bare pickle renamed to .npz
    raw.write_bytes(pickle.dumps(bomb))
    refused(controller, raw, "not a halviz trace")
    assert not marker.exists()


def test_declared_shapes_larger_than_the_data_are_refused(controller, tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image_attn.npy", header.getvalue() + b"\0" * 64)
    refused(controller, path, "declares")


def test_a_zip_bomb_is_refused_before_unpacking(controller, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_TRACE_UNPACKED_BYTES", 2**20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, token_ids=np.zeros(2**19, dtype=np.int64))  # 4 MB of zeros, a few KB packed
    assert path.stat().st_size < 50_000
    refused(controller, path, "would unpack to")


def test_wrong_shapes_are_refused(controller, good_trace, tmp_path):
    with np.load(good_trace) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["image_attn"] = arrays["image_attn"][:, :, :-1]
    path = tmp_path / "bent.npz"
    np.savez_compressed(path, **arrays)
    refused(controller, path, "inconsistent")


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000), st.just(b"PK\x03\x04" + b"\0" * 100), st.just(b"PK\x05\x06" + b"\0" * 18)))
def test_arbitrary_bytes_are_not_a_trace(controller, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("t") / "x.npz"
    path.write_bytes(data)
    refused(controller, path, "trace")


@FUZZ
@given(cut=st.integers(0, 4000), flip=st.integers(0, 255))
def test_damaged_traces_are_refused_or_replayed(controller, good_trace, tmp_path_factory, cut, flip):
    data = bytearray(good_trace.read_bytes())
    if cut < len(data):
        data[cut] ^= flip or 1
    path = tmp_path_factory.mktemp("t") / "damaged.npz"
    path.write_bytes(bytes(data[: len(data) - cut % 7]))
    try:
        replay(controller, path)
    except gr.Error as error:
        assert_user_message(error)
