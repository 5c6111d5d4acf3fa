"""Backend selection and per-network random streams."""
import numpy as np
import pytest

from limitlab.verify.backend import BACKENDS, available_backends, get_backend


def test_auto_is_numpy_without_a_gpu_and_describes_itself():
    b = get_backend("auto")
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        assert b.name in ("numpy", "cupy")
    d = b.describe()
    assert d["backend"] == b.name and d["dtype"] == "float64"
    assert "auto" in available_backends() and "numpy" in available_backends()


def test_unknown_backend_and_dtype_are_rejected_naming_the_choices():
    with pytest.raises(ValueError, match="backend.*numpy"):
        get_backend("jax")
    with pytest.raises(ValueError, match="dtype"):
        get_backend("numpy", dtype="float16")
    assert set(BACKENDS) >= {"auto", "numpy", "torch", "cupy"}


def test_normals_rows_depend_only_on_their_seed():
    b = get_backend("numpy")
    a = b.normals([5, 6, 7], 1000)
    c = b.normals([6], 1000)
    np.testing.assert_array_equal(a[1], c[0])
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.05


def test_array_api_strict_backend_shares_numpys_streams():
    pytest.importorskip("array_api_strict")
    s = get_backend("array-api-strict")
    a = s.to_numpy(s.normals([1, 2], 10))
    np.testing.assert_array_equal(a, get_backend("numpy").normals([1, 2], 10))
    x = s.asarray(np.ones((2, 2)))
    assert "array_api_strict" in type(x).__module__
