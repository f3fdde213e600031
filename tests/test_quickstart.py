"""examples/quickstart.ipynb and its script twin examples/quickstart.py hold the same cells, and the
script runs: a comparison on the toy model, two panels, one figure exported, the traces saved.

The notebook is not executed through nbclient: that needs a Jupyter kernel (ipykernel with pyzmq,
tornado, debugpy, jupyter_client, nbformat with jsonschema: about ten packages more) for what the
script twin checks as well, since the two are held cell for cell equal here."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
SCRIPT = ROOT / "examples" / "quickstart.py"


def script_cells(text: str) -> list[tuple[str, str]]:
    """``(cell_type, source)`` per ``# %%`` cell of a script (markdown cells as ``# `` comment lines)."""
    cells = []
    for chunk in text.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if header.strip() == "[markdown]":
            cells.append(("markdown", "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                                                for line in body.splitlines())))
        else:
            cells.append(("code", body))
    return cells


def notebook_cells(notebook: dict) -> list[tuple[str, str]]:
    return [(cell["cell_type"], "".join(cell["source"]).strip("\n")) for cell in notebook["cells"]]


def notebook_from_script(text: str) -> dict:
    """The notebook as it is stored (python -c 'from tests.test_quickstart import write; write()')."""
    def cell(kind: str, source: str) -> dict:
        lines = source.splitlines(keepends=True)
        base = {"cell_type": kind, "metadata": {}, "source": lines}
        return {**base, "execution_count": None, "outputs": []} if kind == "code" else base
    return {"cells": [cell(k, s) for k, s in script_cells(text)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write() -> None:
    NOTEBOOK.write_text(json.dumps(notebook_from_script(SCRIPT.read_text()), indent=1, ensure_ascii=False) + "\n")


def test_the_notebook_and_its_script_twin_hold_the_same_cells():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    assert notebook_cells(notebook) == script_cells(SCRIPT.read_text()), "regenerate: see notebook_from_script"
    assert all(not cell.get("outputs") for cell in notebook["cells"] if cell["cell_type"] == "code")


def test_the_script_twin_runs_compares_draws_and_exports(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HALVIZ_QUICKSTART_OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT / "examples", env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "VCD" in out and "Greedy" in out and "hallucinated ['fork']" in out, out
    assert "saved" in out and len(list((tmp_path / "traces").glob("*.npz"))) == 2, out
    if "no export:" not in out:  # without a browser the script says why and goes on
        from PIL import Image

        with Image.open(tmp_path / "fork-attention.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
