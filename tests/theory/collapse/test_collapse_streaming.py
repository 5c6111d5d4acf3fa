"""The streamed accumulator (shifted-data centring, one syrk and sparse class sums per block)
and the stacked single-GEMM NC4 pass against the straightforward formulas: the previous
algorithm (sort each block by class, centre it on its own class means, Chan-merge), written
out here, and float64/long-double brute force."""
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from limitlab.theory.collapse import CollapseAccumulator, NCCAgreement, metrics


class _SortCentreAccumulator:
    """Reference: each block sorted by class and centred on its own class means (computed from
    the block alone), merged with Chan, Golub, LeVeque 1979. All in float64."""

    def __init__(self, C, d):
        self.counts = np.zeros(C, dtype=np.int64)
        self.means = np.zeros((C, d))
        self.within_scatter = np.zeros((d, d))
        self.class_scatter = np.zeros(C)

    def update(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        for c in np.unique(y):
            Xc = X[y == c]
            nb, m = len(Xc), Xc.mean(axis=0)
            R = Xc - m
            na = self.counts[c]
            delta = m - self.means[c]
            w = na * nb / (na + nb)
            self.within_scatter += R.T @ R + w * np.outer(delta, delta)
            self.class_scatter[c] += np.sum(R * R) + w * delta @ delta
            self.means[c] += delta * nb / (na + nb)
            self.counts[c] += nb
        return self


def _blocks(seed, C, d, N, offset):
    rng = np.random.default_rng(seed)
    # class c appears only after a while for some classes (new classes mid-stream),
    # and some blocks miss classes entirely
    y = np.sort(rng.integers(0, C, N)) if seed % 2 else rng.integers(0, C, N)
    mu = 2 * rng.standard_normal((C, d)) + offset * rng.standard_normal(d)
    X = mu[y] + rng.standard_normal((N, d))
    return X, y


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), C=st.integers(2, 9), d=st.integers(1, 12), N=st.integers(20, 300),
       chunk=st.integers(1, 120), offset=st.sampled_from([0.0, 10.0, 1e4]))
def test_streamed_statistics_equal_the_sort_and_centre_formula(seed, C, d, N, chunk, offset):
    X, y = _blocks(seed, C, d, N, offset)
    acc = CollapseAccumulator(C, d, chunk_size=chunk)
    ref = _SortCentreAccumulator(C, d)
    for s in range(0, N, 37):  # data-loader chunks of 37 rows, split again into blocks of `chunk`
        acc.update(X[s:s + 37], y[s:s + 37])
        ref.update(X[s:s + 37], y[s:s + 37])
    np.testing.assert_array_equal(acc.counts, ref.counts)
    # float64 throughout: both equal the exact statistics to rounding. A residual x - mu is
    # rounded at eps |x| (|x| up to `scale`, the spread is 1), so the scatters carry a
    # relative error of order eps * scale on top of the accumulation's ~1e-14
    scale = np.abs(X).max()
    tol = 1e-12 + 8 * np.finfo(float).eps * scale
    np.testing.assert_allclose(acc.means, ref.means, rtol=0, atol=1e-13 * scale)
    sw = np.abs(ref.within_scatter).max()
    np.testing.assert_allclose(acc.within_scatter, ref.within_scatter, rtol=0, atol=tol * sw)
    np.testing.assert_allclose(acc.class_scatter, ref.class_scatter, rtol=tol)


def _exact_within(X, y, C):
    XL = X.astype(np.longdouble)
    S = np.zeros((X.shape[1],) * 2, dtype=np.longdouble)
    mus = []
    for c in range(C):
        R = XL[y == c] - XL[y == c].mean(axis=0)
        S += R.T @ R
        mus.append(XL[y == c].mean(axis=0))
    return S.astype(np.float64), np.array(mus, dtype=np.float64)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_float32_streaming_is_accurate_when_means_dwarf_the_spread(offset):
    # near collapse the class means are far larger than the within-class spread: raw moments
    # E[hh^T] - mu mu^T in float32 would lose (|mu|/sigma)^2 ~ 1e8 of relative accuracy here.
    # Each block's Gram matrix of its centred rows (n = 4096, float32 syrk) carries a relative
    # error of order sqrt(n) * eps32 ~ 4e-6 (eps32 = 1.2e-7, random-walk accumulation), and
    # the float64 merge adds nothing at that level: tolerance 5e-6 relative to ||Sigma_W||_F
    # (measured 5e-8 .. 7e-7; the previous sort-and-reduceat code, which summed the raw
    # features in float32, reached 2.8e-5 at offset 1e4).
    rng = np.random.default_rng(11)
    C, d, N = 10, 32, 20000
    y = rng.integers(0, C, N)
    mu = 100 * rng.standard_normal((C, d)) + offset * rng.standard_normal(d)
    X32 = (mu[y] + rng.standard_normal((N, d))).astype(np.float32)
    S, mus = _exact_within(X32.astype(np.float64), y, C)
    acc = CollapseAccumulator(C, d, chunk_size=4096).update(X32, y)
    assert np.linalg.norm(acc.within_scatter - S) <= 5e-6 * np.linalg.norm(S)
    # class means: within a few float32 ulps of |mu|
    assert np.abs(acc.means - mus).max() <= 4 * np.finfo(np.float32).eps * np.abs(mus).max()


def test_nearest_centre_scores_survive_a_large_common_offset_in_float32():
    # argmin ||h - mu_c||^2 via h.mu_c - |mu_c|^2/2 in float32 rounds at eps32 |h| |mu| ~ 6e-8 * 1e8:
    # the uncentred form misclassifies ~4% of these samples. With the means centred on their
    # mean g (h.(mu_c - g) - g.(mu_c - g) - |mu_c - g|^2/2) the float32 rule equals the
    # float64 one on every sample (the smallest float64 gap between the two nearest squared
    # distances is ~16, the float32 rounding of the centred scores ~1e-1).
    rng = np.random.default_rng(2)
    C, d, N = 10, 64, 20000
    mu = rng.standard_normal((C, d))
    y = rng.integers(0, C, N)
    X32 = (mu[y] + rng.standard_normal((N, d)) + 1e4 * rng.standard_normal(d) / 8).astype(np.float32)
    X64 = X32.astype(np.float64)
    means = np.array([X64[y == c].mean(axis=0) for c in range(C)])
    exact = np.argmin(((X64[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    S, off = NCCAgreement(means, means)._stacked(np.float32)
    assert S.dtype == np.float32 and S.shape == (d, 2 * C)
    np.testing.assert_array_equal(np.argmax(X32 @ S[:, C:] + off[C:], axis=1), exact)
    # and through the public path: NC4 of float32 features equals the float64 value
    W = mu + 0.5 * rng.standard_normal((C, d))
    b = -W @ X64.mean(axis=0)  # remove the offset's logit shift so both rules matter
    assert metrics(X32, y, W, b).nc4 == metrics(X64, y, W, b).nc4


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), C=st.integers(2, 8), chunk=st.integers(1, 200))
def test_stacked_nc4_pass_equals_brute_force(seed, C, chunk):
    rng = np.random.default_rng(seed)
    d, N = 6, 250
    y = rng.integers(0, C, N)
    X = rng.standard_normal((C, d))[y] + 0.8 * rng.standard_normal((N, d))
    means = rng.standard_normal((C, d))
    W, b = rng.standard_normal((C, d)), rng.standard_normal(C)
    agree = NCCAgreement(means, W, b, chunk_size=chunk)
    for s in range(0, N, 64):
        agree.update(X[s:s + 64], y[s:s + 64])
    pred = np.argmax(X @ W.T + b, axis=1)
    ncc = np.argmin(((X[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(agree.mismatch, np.bincount(y[pred != ncc], minlength=C))
    np.testing.assert_array_equal(agree.counts, np.bincount(y, minlength=C))


def test_non_finite_scores_in_the_nc4_pass_are_reported():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    y = np.arange(50) % 3
    agree = NCCAgreement(rng.standard_normal((3, 3)), rng.standard_normal((3, 3)))
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        agree.update(X, y)
    with pytest.raises(ValueError, match="overflow"):
        agree.update(np.full((4, 3), 1e308), np.arange(4) % 3)


def test_accumulator_pickles_without_its_work_buffer():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((100, 5)), np.arange(100) % 3
    acc = CollapseAccumulator(3, 5).update(X, y)
    assert acc._work is not None
    clone = pickle.loads(pickle.dumps(acc))
    assert clone._work is None
    clone.update(X, y)
    acc.update(X, y)
    np.testing.assert_array_equal(clone.within_scatter, acc.within_scatter)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_and_fortran_ordered_features_give_the_same_statistics(dtype):
    rng = np.random.default_rng(5)
    big = rng.standard_normal((120, 10)).astype(dtype)
    y = np.arange(120) % 4
    X = np.ascontiguousarray(big[:, ::2])
    ref = CollapseAccumulator(4, 5, chunk_size=50).update(X, y)
    for other in (big[:, ::2], np.asfortranarray(X)):
        acc = CollapseAccumulator(4, 5, chunk_size=50).update(other, y)
        np.testing.assert_array_equal(acc.within_scatter, ref.within_scatter)
        np.testing.assert_array_equal(acc.means, ref.means)
