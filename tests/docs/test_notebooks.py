"""Every notebook of docs/notebooks/ executes end to end (quick settings: LIMITLAB_QUICK=1),
shows its figures inline, and prints what it promises."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parents[2] / "docs" / "notebooks"


def _text(nb):
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
    return "".join(out)


def _images(nb):
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _relu_arccos(nb, text):
    cells = {c.source.splitlines()[0]: c for c in nb.cells if c.cell_type == "code"}
    difference = cells["difference = sp.simplify(derived.subs(theta, sp.acos(A.c)) - closed)"]
    assert [o["data"]["text/plain"] for o in difference.outputs if "data" in o] == ["0"]
    assert "largest |compiled - derived|" in text


def _collapse(nb, text):
    assert "minority angle" in text and "collapsed" in text


def _double_descent(nb, text):
    assert "max residual" in text and "RF(psi1=1e7)" in text


def _lazy_to_rich(nb, text):
    assert "max |DMFT(gamma0=0) - NTK descent|" in text and "ratio of NTK changes" in text


def _cntk_digits(nb, text):
    assert "CNTK accuracy" in text and "MLP NTK accuracy" in text


def _finite_width(nb, text):
    assert "largest |simulation - theory| / SE" in text and "V_(00)(00)/K_00^2 = 20.0000" in text  # ReLU: 5 L


CHECKS = {"relu_arccos_kernel": (_relu_arccos, 1), "collapse": (_collapse, 1), "finite_width": (_finite_width, 1),
          "double_descent": (_double_descent, 3), "lazy_to_rich": (_lazy_to_rich, 1),
          "cntk_digits": (_cntk_digits, 1)}  # (check, inline figures)


def test_every_notebook_is_checked():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_executes_with_inline_figures(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LIMITLAB_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "%matplotlib inline" in source and "matplotlib.use(" not in source
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    check, figures = CHECKS[name]
    assert _images(nb) == figures
    check(nb, _text(nb))
    assert list(tmp_path.iterdir()) == []  # a notebook writes no files
