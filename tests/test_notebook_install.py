"""The notebooks' install cell, run as written in a fresh venv, installs jaxeff from this checkout.

The cell is taken from a built notebook (so it is the exact text Colab runs) and executed with
the new venv's python and ``JAXEFF_PIP_SOURCE`` = the repository root. pip gets ``--no-deps`` and
no build isolation through its environment variables (no downloads: the dependencies are made
visible afterwards by a ``.pth`` line pointing at the test interpreter's site-packages, appended
after the venv's own, so the import must find the freshly installed copy of jaxeff first).
"""
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(NB_DIR))
import build  # noqa: E402  (notebooks/build.py)

sys.path.remove(str(NB_DIR))


def _install_cell(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    src = next(c["source"] for c in nb["cells"] if c["cell_type"] == "code")
    return "".join(src) if isinstance(src, list) else src


def test_install_source_is_one_setting_and_documented():
    cells = {_install_cell(p) for p in sorted(NB_DIR.glob("*.ipynb"))}
    assert cells == {build.INSTALL_CELL}, "every notebook must start with build.INSTALL_CELL"
    assert f'os.environ.get("JAXEFF_PIP_SOURCE", "{build.PIP_SOURCE}")' in build.INSTALL_CELL
    for doc in (ROOT / "README.md", NB_DIR / "README.md"):
        text = doc.read_text()
        assert build.PIP_SOURCE in text and "JAXEFF_PIP_SOURCE" in text, doc
    # the source appears nowhere else in the package, notebook sources or build script
    for p in list((ROOT / "jaxeff").rglob("*.py")) + list((NB_DIR / "src").glob("*.py")):
        assert build.PIP_SOURCE not in p.read_text(), p
    assert build.Path(build.__file__).read_text().count(build.PIP_SOURCE) == 1


def test_install_cell_installs_from_local_checkout(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    cell = tmp_path / "install_cell.py"
    cell.write_text(_install_cell(NB_DIR / "getting_started.ipynb") + "\nprint('SIZE', SIZE)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    # the build backend (setuptools>=68, which needs no `wheel`) from this interpreter, first on the
    # path; a directory holding only setuptools, so that jaxeff and its dependencies stay invisible
    import setuptools

    tools = tmp_path / "buildtools"
    tools.mkdir()
    st = Path(setuptools.__file__).parent
    for p in [st, *st.parent.glob(f"setuptools-{setuptools.__version__}.dist-info")]:
        (tools / p.name).symlink_to(p)
    env["PYTHONPATH"] = str(tools)
    # keep setuptools' build/ and *.egg-info out of the checkout
    cfg = tmp_path / "setuptools_build.cfg"
    cfg.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n[egg_info]\negg_base = {tmp_path}\n")
    env["DIST_EXTRA_CONFIG"] = str(cfg)

    def artefacts():
        return {p.name: p.stat().st_mtime_ns for p in [ROOT / "build", *ROOT.glob("*.egg-info")] if p.exists()}

    before = artefacts()
    env.update(JAXEFF_PIP_SOURCE=str(ROOT), JAXEFF_NOTEBOOK_SIZE="test", PIP_NO_DEPS="1",
               PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([str(py), str(cell)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SIZE test" in r.stdout
    assert artefacts() == before, "the install wrote build/ or *.egg-info into the checkout"
    # the dependencies (jax, ...) from this interpreter, after the venv's own site-packages
    (pure,) = {Path(p) for p in subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.split()}
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (pure / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    env.pop("PYTHONPATH")
    probe = "import jaxeff, jax.numpy as jnp; print(jaxeff.__file__); print(float(jnp.arange(3.0).sum()))"
    r = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    where, total = r.stdout.split()[-2:]
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the installed copy, not the checkout
    assert float(total) == 3.0
    # a second run of the cell is a no-op: jaxeff is importable, pip is not called
    env["JAXEFF_PIP_SOURCE"] = str(tmp_path / "does-not-exist")
    r = subprocess.run([str(py), str(cell)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
