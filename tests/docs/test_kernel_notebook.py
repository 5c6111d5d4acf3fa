"""The ReLU arc-cosine notebook is what its generator makes (it is executed, with the other
notebooks, by tests/docs/test_notebooks.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

HERE = Path(__file__).parents[2] / "docs" / "notebooks"


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def test_relu_arccos_notebook_matches_its_generator(tmp_path):
    out = tmp_path / "generated.ipynb"
    subprocess.run([sys.executable, str(HERE / "make_relu_arccos_notebook.py"), str(out)], check=True)
    generated = nbformat.read(out, as_version=4)
    committed = nbformat.read(HERE / "relu_arccos_kernel.ipynb", as_version=4)
    assert _cells(committed) == _cells(generated), "rerun docs/notebooks/make_relu_arccos_notebook.py"
    assert committed.metadata["kernelspec"] == generated.metadata["kernelspec"]
    assert all(not c.get("outputs") for c in committed.cells)  # committed without outputs, as generated
