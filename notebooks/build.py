"""Build the Colab notebooks (``notebooks/*.ipynb``) from their sources (``notebooks/src/*.py``).

Sources are plain Python in the "percent" format: ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell whose lines start with ``# ``. Every notebook gets the
same first cell, which installs jaxeff on Colab (and does nothing where jaxeff is installed).

    python notebooks/build.py            # rebuild all
    python notebooks/build.py --check    # fail if an .ipynb is out of date with its source
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"

# The one place the notebooks' install source is set (documented in README.md and
# notebooks/README.md). At run time the environment variable JAXEFF_PIP_SOURCE overrides it with
# anything `pip install` accepts: a local checkout, a wheel, a git URL of a fork.
PIP_SOURCE = "git+https://github.com/jaxeff/jaxeff"

INSTALL_CELL = f"""\
# Colab / fresh machine: install jaxeff (skipped when it is already importable).
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("jaxeff") is None:
    src = os.environ.get("JAXEFF_PIP_SOURCE", "{PIP_SOURCE}")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", src])
# Problem size: "small" (default, minutes on a laptop CPU / Colab), "full" (paper scale,
# use a GPU/TPU runtime) or "test" (seconds; used by the test suite).
SIZE = os.environ.get("JAXEFF_NOTEBOOK_SIZE", "small")
assert SIZE in ("test", "small", "full"), SIZE"""


def parse_cells(text: str) -> list[nbformat.NotebookNode]:
    cells: list[nbformat.NotebookNode] = []
    kind, buf = None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(buf).strip("\n")
        if not body:
            return
        if kind == "markdown":
            lines = [l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        else:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "code"
            buf = []
        else:
            buf.append(line)
    flush()
    return cells


def build_one(src: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    cells = parse_cells(src.read_text())
    # A leading markdown title cell stays first; the install cell follows it.
    head = cells[:1] if cells and cells[0].cell_type == "markdown" else []
    nb.cells = head + [nbformat.v4.new_code_cell(INSTALL_CELL)] + cells[len(head):]
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    p.add_argument("names", nargs="*")
    a = p.parse_args(argv)
    stale = []
    for src in sorted(SRC.glob("*.py")):
        if a.names and src.stem not in a.names:
            continue
        out = HERE / f"{src.stem}.ipynb"
        text = build_one(src)
        if a.check:
            if not out.exists() or out.read_text() != text:
                stale.append(out.name)
        else:
            out.write_text(text)
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
