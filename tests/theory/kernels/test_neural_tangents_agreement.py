"""Agreement with neural-tangents 0.6.5 (fixtures made by tests/fixtures/make_neural_tangents_fixtures.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from limitlab.theory.kernels import MLP

FIX = np.load(Path(__file__).parents[2] / "fixtures" / "neural_tangents_kernels.npz")
CASES = json.loads(str(FIX["cases"]))


def _model(case):
    return MLP(case["depth"], _activation(case), weight_var=case["weight_var"], bias_var=case["bias_var"],
               parametrization=case["parametrization"], width=case["width"])


def _activation(case):
    from limitlab.theory import activations

    return activations.get(case["activation"], **case["params"])


@pytest.mark.parametrize("case", CASES, ids=[f"{c['activation']}{c['params'] or ''}-L{c['depth']}-{c['parametrization']}"
                                             for c in CASES])
def test_kernels_match_neural_tangents_to_1e10(case):
    m = _model(case)
    k12 = m.kernels(FIX["X1"], FIX["X2"])
    k11 = m.kernels(FIX["X1"])
    key = case["key"]
    off = ~np.eye(k11.nngp.shape[0], dtype=bool)
    for ours, theirs in [(k12.nngp, FIX[f"{key}_nngp12"]), (k12.ntk, FIX[f"{key}_ntk12"]),
                         (k11.nngp[off], FIX[f"{key}_nngp11"][off]), (k11.ntk[off], FIX[f"{key}_ntk11"][off])]:
        scale = np.max(np.abs(theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * scale)
    # On the diagonal neural-tangents takes arctan2(sqrt(q*q - c*c), c) of a rounding-level
    # difference, which costs it ~1e-8 (ours is exact there: see test_diagonal_is_the_length_map);
    # agreement there is to its accuracy. For sign the error compounds through depth (a 1e-8
    # angle becomes 1e-4 a layer later), while E[sign(u)^2] = 1 makes ours exactly w + b.
    if case["activation"] == "sign":
        return
    for ours, theirs in [(k11.nngp, FIX[f"{key}_nngp11"]), (k11.ntk, FIX[f"{key}_ntk11"])]:
        np.testing.assert_allclose(np.diag(ours), np.diag(theirs), rtol=1e-7)
