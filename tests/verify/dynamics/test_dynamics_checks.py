"""The dynamics verify checks: registered, runnable at small sizes, and able to reject wrong theories."""
import numpy as np
import pytest

from limitlab.verify import stats
from limitlab.verify.dynamics import checks, training
from limitlab.verify.registry import Context, Measurement, get_check


@pytest.mark.parametrize("name", ["dynamics.ntk-flow", "dynamics.dmft", "dynamics.deep-linear", "dynamics.mup-coord"])
def test_checks_are_registered(name):
    c = get_check(name)
    assert len(c.quick_sizes) >= 2 and c.quick_samples >= 2


def test_deep_linear_check_passes_and_rejects_a_wrong_depth():
    c = get_check("dynamics.deep-linear")
    sizes = (40, 80)
    ms = [c.run(Context(size=n, samples=2, seed=0)) for n in sizes]
    assert stats.verdict(sizes, ms, rate=None).passed
    from limitlab.theory.dynamics import deep_linear as dl
    # the same simulations against the three-matrix theory: a wrong depth fails the level test
    wrong = dl.mode_trajectory(np.array(checks.SAXE_TIMES), checks.SAXE_S, checks.SAXE_U0, 3)
    bad = [[Measurement(m.quantity, wrong[k // 3, k % 3], m.samples) for k, m in enumerate(row)] for row in ms]
    assert not stats.verdict(sizes, bad, rate=None).passed


def test_mup_trainer_converges_to_dmft_as_width_grows():
    from limitlab.theory.dynamics import dmft

    X, y = checks.DMFT_X, checks.DMFT_Y
    r = dmft.two_layer(dmft.input_kernel(X), y, "tanh", 1.0, 10, 0.1, samples=50_000, seed=0)
    errs = []
    for n in (100, 1600):
        fs = training.train_mup_mlp(X, y, 1, "tanh", 1.0, n, 10, 0.1, n_networks=6, seed=0)[0][:, -1]
        errs.append(np.sqrt(np.mean((fs - r.f[-1]) ** 2)))
    # O(N^-1/2): 16x the width, ~4x smaller error
    assert errs[1] < 0.5 * errs[0]


def test_mup_coordinate_growth_is_flat_under_mup_and_grows_under_sp():
    ms = get_check("dynamics.mup-coord").run(Context(size=512, samples=2, seed=0))
    mup, sp = ms
    assert abs(mup.samples.mean()) < 0.25 and sp.samples.mean() > 0.25


def test_coordinate_change_matches_parametrization_classes():
    """Yang & Hu 2021, Thm. 3.5: after one step of muP (feature learning) the last hidden
    pre-activations moved by Theta(1) at every width; in the NTK parametrization (kernel regime)
    by O(n^-1/2): 16x the width, ~4x smaller."""
    X, y = checks._inputs(4, 8, 11)
    mup = [training.coordinate_change(X, y, ([-0.5, 0, 0.5], [0.5, 0.5, 0.5], 0), 0.5, n, 1, n_networks=3,
                                      seed=0).mean() for n in (128, 2048)]
    assert 0.05 < mup[0] < 5 and 0.5 < mup[1] / mup[0] < 2
    from limitlab.theory.dynamics.parametrizations import preset

    ntp = [training.coordinate_change(X, y, preset("ntp", 2), 0.5, n, 1, n_networks=3, seed=0).mean()
           for n in (128, 2048)]
    assert ntp[1] / ntp[0] < 0.4


def test_dmft_check_measures_f_of_t_and_plots_it_against_t():
    c = get_check("dynamics.dmft")
    ms = c.run(Context(size=64, samples=2, seed=0))
    names = [m.quantity for m in ms]
    assert len(names) == 2 * (2 * len(checks.DMFT_RECORD) + 2)
    series = c.plot_series(names)
    assert len(series) == 4 and series[0].xlabel == "t"
    assert list(series[0].x) == pytest.approx([k * checks.DMFT_DT for k in checks.DMFT_RECORD])
    by = {m.quantity: m for m in ms}
    f_th, _ = checks._dmft_theory(0.5)
    for k, q in enumerate(series[0].quantities):  # theory f_0(t) at the recorded steps
        assert by[q].theory == pytest.approx(f_th[k, 0])
    assert c.min_size <= min(c.quick_sizes) and len(c.quick_sizes) >= 3
