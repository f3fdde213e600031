import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from halviz.models.tiny import TinySpec, save_tiny_llava  # noqa: E402

# LLaVA-1.5 layout (CLIP 336/14 → 576 tokens on 24×24) and LLaVA-interleave (SigLIP + Qwen2 with GQA).
SPECS = {
    "llava-1.5": TinySpec(family="llava-1.5", image_size=336, patch_size=14, heads=4, kv_heads=4, init_std=0.2),
    "llava-interleave": TinySpec(family="llava-interleave", image_size=112, patch_size=14, heads=4, kv_heads=2,
                                 text_layers=3, init_std=0.2),
}


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: save_tiny_llava(spec, root / name) for name, spec in SPECS.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from halviz.models import load_model

    return {name: load_model(str(path), device="cpu") for name, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def tiny_models_f64(tiny_model_dirs):
    """float64 copies: comparisons with stock attention then differ only by ~1e-12 of rounding."""
    import torch
    from halviz.models import load_model

    return {name: load_model(str(path), device="cpu", dtype=torch.float64) for name, path in tiny_model_dirs.items()}


@pytest.fixture
def photo():
    """A deterministic non-square picture with structure, so attention differs between patches."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8))


# ---- apps and a browser shared between modules -------------------------------------------------------
# Each distinct app configuration is launched once: a module-scoped fixture where one module uses it,
# a session-scoped one here where several do.

@pytest.fixture(scope="session")
def serve():
    """``with serve(**build_app_kwargs) as (demo, url):`` the app on a free port of 127.0.0.1, shut
    down (server stopped, trace folder deleted) when the block ends."""
    from contextlib import contextmanager

    from tools.stress import free_port
    from halviz.ui import build_app, launch_options, shutdown

    @contextmanager
    def launched(**build_kwargs):
        demo = build_app(**build_kwargs)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **launch_options())
        try:
            yield demo, url
        finally:
            shutdown(demo)

    return launched


@pytest.fixture(scope="session")
def toy():
    """The bundled toy model, loaded once; the tests only read it."""
    from halviz.models import load_model

    return load_model("toy")


@pytest.fixture(scope="module")
def controller(toy):
    """The app's callbacks on the bundled toy model, called directly (no server): ``(controller, gr)``."""
    import gradio as gr

    from halviz.ui import build_app
    from halviz.ui.controller import Controller

    demo = build_app(models=["toy"], default_model="toy", loader=lambda name: toy, preload=[])
    found = [getattr(fn.fn, "__self__", None) for fn in demo.fns.values()]
    controller = next(c for c in found if isinstance(c, Controller))
    yield controller, gr
    demo.halviz.files.close()


def run_greedy(controller, tokens=16):
    """Greedy on the cup-without-spoon example through ``Controller.compare``; the session's runs after it."""
    from halviz.session.examples import EXAMPLES_DIR, load_examples

    scene = next(e for e in load_examples(EXAMPLES_DIR) if e.path.name == "toy-cup-no-spoon.png")
    last = None
    for last in controller.compare(str(scene.path), "Describe the image.", ["vanilla"], tokens, scene.objects,
                                   "toy", "", {}):
        pass
    return last[controller.ui.runs]


@pytest.fixture(scope="session")
def toy_app(toy):
    """tools.stress's LocalApp serving the toy model (test_fuzz and test_reliability)."""
    from tools.stress import LocalApp

    served = LocalApp(loader=lambda name: toy)
    try:
        yield served
    finally:
        served.close()


@dataclass(frozen=True)
class DefaultsFolders:
    tuned: str  # holds method_defaults.json with ``stored``
    plain: str  # the same weights without the file
    stored: dict


@pytest.fixture(scope="session")
def defaults_folders(tiny_model_dirs, tmp_path_factory) -> DefaultsFolders:
    """The same tiny checkpoint twice: one folder stores method defaults, the other does not."""
    stored = {"prunehal": {"r": 0.8, "t": 2}, "vasparse": {"alpha": 1.0}}
    root = tmp_path_factory.mktemp("defaults")
    tuned = shutil.copytree(tiny_model_dirs["llava-1.5"], root / "tuned")
    (tuned / "method_defaults.json").write_text(json.dumps({"methods": stored, "chosen_by": {
        "how": {"prunehal": "a hand-written test value"}, "command": "written by the test"}}))
    plain = shutil.copytree(tiny_model_dirs["llava-1.5"], root / "plain")
    assert not (plain / "method_defaults.json").exists()
    return DefaultsFolders(str(tuned.resolve()), str(plain.resolve()), stored)


@pytest.fixture(scope="session")
def defaults_app(serve, defaults_folders):
    """(demo, url) of the app offering both folders, labelled, the tuned one first (test_app_defaults
    through its API, test_browser_defaults in the browser)."""
    tuned, plain = defaults_folders.tuned, defaults_folders.plain
    with serve(models=[(tuned, "tuned tiny"), (plain, "plain tiny")], default_model=tuned,
               allow_local=False) as launched:
        yield launched


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; the browser tests skip without it
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--dns-prefetch-disable"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class SharedBrowser:
    """One chromium for every browser test in a row. It is closed as soon as the next test needs no
    browser (pytest_runtest_teardown below): while Playwright's sync API is active its event loop
    counts as running in this thread, and asyncio.run() would fail in later tests."""

    def __init__(self):
        self._playwright = self._browser = None

    @staticmethod
    def skip_unless_available() -> None:
        pytest.importorskip("playwright.sync_api")
        if not CHROMIUM.exists():
            pytest.skip("Debian's chromium is not installed")

    def get(self):
        if self._browser is None:
            self.skip_unless_available()
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright()
            self._browser = self._playwright.__enter__().chromium.launch(executable_path=str(CHROMIUM),
                                                                           args=BROWSER_ARGS)
        return self._browser

    def close(self):
        if self._browser is not None:
            try:
                self._browser.close()
            finally:
                self._playwright.__exit__(None, None, None)
                self._playwright = self._browser = None


_BROWSER = SharedBrowser()


def keep_on_this_machine(page) -> list[str]:
    """Abort (and list) every request the page makes to a host other than loopback: nothing the page
    shows may fetch from outside, and the test itself never sends traffic off the machine."""
    outside: list[str] = []

    def route(route):
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname in LOOPBACK:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    return outside


@pytest.fixture(scope="session")
def open_page():
    """``with open_page(url) as page:`` a fresh page of the shared chromium on the app at ``url``, once
    its Run button is there; ``page.outside_requests`` lists what it tried to fetch from elsewhere.
    Session-scoped, so it is set up before (and skips without launching) a test module's app."""
    from contextlib import contextmanager

    SharedBrowser.skip_unless_available()

    @contextmanager
    def opened(url: str):
        page = _BROWSER.get().new_page(viewport={"width": 1440, "height": 1000})
        try:
            page.outside_requests = keep_on_this_machine(page)
            page.goto(url)
            page.wait_for_selector("#hv-run", timeout=60_000)
            yield page
        finally:
            page.close()

    return opened


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after the fixtures this test leaves behind are torn down (its pages among them)
    if nextitem is None or "open_page" not in nextitem.fixturenames:
        _BROWSER.close()
