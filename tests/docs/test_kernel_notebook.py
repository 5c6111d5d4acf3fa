"""The kernels notebook executes end to end (its cells assert the derivation matches)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).parents[2] / "docs" / "notebooks" / "relu_arccos_kernel.ipynb"


def test_relu_arccos_notebook_runs(tmp_path):
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "relu_arccos.png").exists()
