import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).parents[3] / "docs" / "notebooks" / "collapse.ipynb"


@pytest.mark.slow
def test_collapse_notebook_executes_headless():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "minority angle" in text and "collapsed" in text
