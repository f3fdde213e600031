"""The package installs with what it needs at run time: the toy model and the examples ship inside
it, and the `halviz` command is its entry point."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_toy_model_the_examples_and_the_command(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel, = tmp_path.glob("halviz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"halviz/assets/toy-llava/config.json", "halviz/assets/toy-llava/model.safetensors",
            "halviz/assets/examples/examples.json", "halviz/assets/examples/toy-knife-no-fork.png",
            "halviz/viz/panels/vhr.py", "halviz/session/service.py", "halviz/toy/recipe/train.py"} <= names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)  # harnesses stay out of the package
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "halviz = halviz.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
