"""Execute every notebook top to bottom at test size (JAXEFF_NOTEBOOK_SIZE=test)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_notebooks_exist_and_match_sources():
    assert NOTEBOOKS, "no notebooks found"
    r = subprocess.run([sys.executable, str(NB_DIR / "build.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _run_notebook(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "pip" in first_code.source, "the first code cell must install jaxeff (Colab-ready)"
    env_size = os.environ.get("JAXEFF_NOTEBOOK_SIZE")
    os.environ["JAXEFF_NOTEBOOK_SIZE"] = "test"
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        if env_size is None:
            os.environ.pop("JAXEFF_NOTEBOOK_SIZE", None)
        else:
            os.environ["JAXEFF_NOTEBOOK_SIZE"] = env_size
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


# One test class per notebook: the suite's xdist scheduling (--dist loadscope) hands each class to
# whichever worker is free, so the notebooks (tens of seconds each) run on both workers.
def _notebook_class(path):
    def test_runs(self, tmp_path):
        _run_notebook(path, tmp_path)

    name = "TestNotebook_" + path.stem
    return name, type(name, (), {"test_runs": test_runs, "__doc__": f"notebooks/{path.name} runs top to bottom."})


for _p in NOTEBOOKS:
    _name, _cls = _notebook_class(_p)
    globals()[_name] = _cls
