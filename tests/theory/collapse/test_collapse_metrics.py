"""NC metrics against brute-force formulas written out here (Papyan, Han, Donoho 2020)."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from scipy.sparse.linalg import svds

from limitlab.theory.collapse import CollapseAccumulator, metrics, simplex_etf


def _data(seed, C=4, d=7, n=(30, 20, 25, 12), noise=0.5):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n[:C])])
    rng.shuffle(y)
    mu = 2 * rng.standard_normal((C, d))
    X = mu[y] + noise * rng.standard_normal((y.size, d))
    W = mu + 0.3 * rng.standard_normal((C, d))
    b = 0.1 * rng.standard_normal(C)
    return X, y, W, b


def _brute(X, y, W, b, weighted=True, ddof=1):
    C = W.shape[0]
    N = len(y)
    mus = np.array([X[y == c].mean(0) for c in range(C)])
    mG = X.mean(0) if weighted else mus.mean(0)
    M = mus - mG
    Sw = sum(np.outer(X[i] - mus[y[i]], X[i] - mus[y[i]]) for i in range(N)) / N
    Sb = sum(np.outer(m, m) for m in M) / C
    out = {"pinv": np.trace(Sw @ np.linalg.pinv(Sb, hermitian=True)) / C}
    U, s, _ = svds(Sb, k=C - 1)
    out["truncated"] = np.trace(Sw @ U @ np.diag(1 / s) @ U.T) / C
    out["trace"] = np.trace(Sw) / np.trace(Sb)
    norms = np.linalg.norm(M, axis=1)
    out["equinorm"] = np.std(norms, ddof=ddof) / np.mean(norms)
    cos = [M[i] @ M[j] / norms[i] / norms[j] for i in range(C) for j in range(i + 1, C)]
    out["equiangular"] = np.std(cos, ddof=ddof)
    out["maxangle"] = np.mean(np.abs(np.array(cos) + 1 / (C - 1)))
    out["nc3"] = np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2
    pred = np.argmax(X @ W.T + b, axis=1)
    ncc = np.array([np.argmin([np.linalg.norm(x - m) for m in mus]) for x in X])
    out["nc4"] = np.mean(pred != ncc)
    var = np.array([np.mean(np.sum((X[y == c] - mus[c]) ** 2, axis=1)) for c in range(C)])
    out["cdnv"] = np.mean([(var[i] + var[j]) / (2 * np.sum((mus[i] - mus[j]) ** 2))
                           for i in range(C) for j in range(i + 1, C)])
    return out


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("ddof", [0, 1])
def test_metrics_match_brute_force_formulas(weighted, ddof):
    X, y, W, b = _data(0)
    ref = _brute(X, y, W, b, weighted, ddof)
    gm = "weighted" if weighted else "unweighted"
    r = metrics(X, y, W, b, global_mean=gm, ddof=ddof, chunk_size=17)
    assert r.nc1 == pytest.approx(ref["pinv"], rel=1e-10)
    assert metrics(X, y, global_mean=gm, nc1="truncated").nc1 == pytest.approx(ref["truncated"], rel=1e-10)
    assert metrics(X, y, global_mean=gm, nc1="trace").nc1 == pytest.approx(ref["trace"], rel=1e-12)
    assert r.nc2_equinorm_means == pytest.approx(ref["equinorm"], rel=1e-10)
    assert r.nc2_equiangular_means == pytest.approx(ref["equiangular"], rel=1e-10)
    assert r.nc2_maxangle_means == pytest.approx(ref["maxangle"], rel=1e-10)
    assert r.nc3 == pytest.approx(ref["nc3"], rel=1e-10)
    assert r.nc4 == pytest.approx(ref["nc4"], abs=0)
    assert r.cdnv == pytest.approx(ref["cdnv"], rel=1e-10)


def test_pinv_drops_the_null_direction_that_rank_c_minus_one_truncation_inverts():
    # collinear class means: Sigma_B has rank 1 < C - 1; keeping C - 1 components (Papyan's
    # svds(k=C-1)) inverts a rounding-level eigenvalue, the pseudo-inverse keeps rank 1
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    v = rng.standard_normal(5)
    noise = rng.standard_normal((60, 5))
    for c in range(3):
        noise[y == c] -= noise[y == c].mean(0)  # class means exactly (1, 2, 3) v
    X = np.array([1.0, 2.0, 3.0])[y, None] * v + noise
    Sw = noise.T @ noise / 60
    u = v / np.linalg.norm(v)
    lam = np.sum(v * v) * (1 + 0 + 1) / 3  # Sigma_B = (1/3) sum_c (c - 2)^2 v v^T
    ref = u @ Sw @ u / lam / 3
    assert metrics(X, y, nc1="pinv").nc1 == pytest.approx(ref, rel=1e-9)
    assert metrics(X, y, nc1="truncated").nc1 > 1e6 * ref


def test_divide_by_classes_is_the_one_over_c_factor():
    X, y, _, _ = _data(2)
    assert metrics(X, y, divide_by_classes=False).nc1 == pytest.approx(4 * metrics(X, y).nc1, rel=1e-14)


@settings(max_examples=25, deadline=None)
@given(C=st.integers(2, 6), extra=st.integers(0, 4), per=st.integers(2, 5), scale=st.floats(0.1, 100.0),
       offset=st.floats(-10, 10), seed=st.integers(0, 2**31))
def test_metrics_vanish_on_exactly_collapsed_features(C, extra, per, scale, offset, seed):
    d = C + extra
    E = simplex_etf(C, d, seed=seed)
    y = np.repeat(np.arange(C), per)
    X = scale * E[y] + offset  # collapsed features around a common offset
    r = metrics(X, y, E, -offset * E.sum(axis=1))  # bias cancels the offset's logit shift
    assert r.nc1 <= 1e-20 and r.cdnv <= 1e-20
    for v in (r.nc2_equinorm_means, r.nc2_maxangle_means, r.nc2_etf_means, r.nc2_equinorm_classifier,
              r.nc2_maxangle_classifier, r.nc2_etf_classifier, r.nc2_equiangular_means):
        assert v <= 1e-12
    assert r.nc3 <= 1e-20
    assert r.nc4 == 0.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.01, 100.0))
def test_metrics_invariant_to_rotation_relabelling_translation_and_scale(seed, scale):
    X, y, W, b = _data(seed % 1000)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    perm = rng.permutation(4)
    inv = np.argsort(perm)
    shift = rng.standard_normal(7)
    base = metrics(X, y, W, b)
    rot = metrics(X @ Q.T, y, W @ Q.T, b)  # h -> Q h, w -> Q w: logits unchanged
    lab = metrics(X, perm[y], W[inv], b[inv])  # class c renamed perm[c]
    # features scaled and translated; classifier scaled, bias adjusted so logits scale
    aff = metrics(scale * X + shift, y, W / scale, b - W @ shift / scale)
    for other in (rot, lab, aff):
        for k, v in base.as_dict().items():
            if k != "conventions":
                assert getattr(other, k) == pytest.approx(v, rel=1e-8, abs=1e-12), k


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), noise=st.sampled_from([0.0, 1e-300, 1e-12, 1e-8, 1.0]),
       C=st.integers(2, 6), form=st.sampled_from(["pinv", "truncated", "trace"]))
def test_nc1_is_never_negative(seed, noise, C, form):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(3 * C) % C)
    X = 1e3 * simplex_etf(C, C + 3, seed=seed)[y] + noise * rng.standard_normal((y.size, C + 3))
    assert metrics(X, y, nc1=form).nc1 >= 0.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), cuts=st.lists(st.integers(0, 87), max_size=6), chunk=st.integers(1, 50))
@example(seed=5501, cuts=[], chunk=1)  # a scatter entry of 9e-4 in a matrix of scale 25
def test_streaming_in_chunks_equals_one_shot(seed, cuts, chunk):
    X, y, W, b = _data(seed % 1000)
    edges = [0] + sorted(cuts) + [len(y)]
    whole = metrics(X, y, W, b, chunk_size=10**6)
    streamed = metrics(lambda: ((X[a:e], y[a:e]) for a, e in zip(edges[:-1], edges[1:])), None, W, b,
                       num_classes=4, chunk_size=chunk)
    for k, v in whole.as_dict().items():
        if k != "conventions":
            assert getattr(streamed, k) == pytest.approx(v, rel=1e-10), k
    # merging two accumulators equals one accumulator over everything
    a, c = CollapseAccumulator(4, 7), CollapseAccumulator(4, 7)
    half = len(y) // 2
    a.update(X[:half], y[:half])
    c.update(X[half:], y[half:])
    both = CollapseAccumulator(4, 7).update(X, y)
    # relative to the matrix's scale: an entry near 0 is a difference of terms of that scale,
    # and any two summation orders differ there by rounding of the terms, not of the entry
    scale = np.abs(both.within_scatter).max()
    np.testing.assert_allclose(a.merge(c).within_scatter, both.within_scatter, rtol=1e-12, atol=1e-13 * scale)


def test_float32_features_agree_with_float64_to_single_precision():
    X, y, W, b = _data(3)
    r64 = metrics(X, y, W, b)
    r32 = metrics(X.astype(np.float32), y, W, b)
    assert r32.nc1 == pytest.approx(r64.nc1, rel=1e-5)
    assert r32.cdnv == pytest.approx(r64.cdnv, rel=1e-5)


def test_array_api_strict_input_is_accepted():
    xps = pytest.importorskip("array_api_strict")
    X, y, W, b = _data(4)
    r = metrics(xps.asarray(X), xps.asarray(y), xps.asarray(W), xps.asarray(b))
    assert r.nc1 == pytest.approx(metrics(X, y, W, b).nc1, rel=1e-14)


def test_class_averaged_nc4_weights_each_class_equally():
    X, y, W, b = _data(5, noise=2.0)
    mus = np.array([X[y == c].mean(0) for c in range(4)])
    pred = np.argmax(X @ W.T + b, axis=1)
    ncc = np.argmin(((X[:, None, :] - mus[None]) ** 2).sum(-1), axis=1)
    per_class = [np.mean((pred != ncc)[y == c]) for c in range(4)]
    assert metrics(X, y, W, b, nc4_average="classes").nc4 == pytest.approx(np.mean(per_class), rel=1e-14)


@pytest.mark.parametrize("mutate, match", [
    (lambda X, y: (X, np.where(y == 0, 9, y)), "labels: value 9 out of range"),
    (lambda X, y: (X, np.where(y == 0, -1, y)), "labels: value -1"),
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y), "non-finite"),
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y), "non-finite"),
    (lambda X, y: (X, y[:-1]), "labels: expected shape"),
    (lambda X, y: (X[:, 0], y), "features: expected shape"),
])
def test_bad_input_raises_a_clear_error(mutate, match):
    X, y, _, _ = _data(6)
    X, y = mutate(X, y)
    with pytest.raises(ValueError, match=match):
        metrics(X, y, num_classes=4)


def test_empty_class_is_rejected():
    X, y, _, _ = _data(7)
    keep = y != 2
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no samples"):
        metrics(X[keep], y[keep], num_classes=4)


def test_classifier_of_wrong_shape_and_bad_conventions_are_rejected():
    X, y, W, _ = _data(8)
    with pytest.raises(ValueError, match="classifier"):
        metrics(X, y, W[:, :3])
    with pytest.raises(ValueError, match="global_mean"):
        metrics(X, y, global_mean="median")
    with pytest.raises(ValueError, match="nc1"):
        metrics(X, y, nc1="inverse")
    with pytest.raises(ValueError, match="ddof"):
        metrics(X, y, ddof=2)
    with pytest.raises(TypeError, match="labels"):
        metrics(X, y + 0.5)


def test_one_sample_per_class_raises_instead_of_reporting_perfect_collapse():
    # the user's case: with one sample per class Sigma_W = 0 by construction, so nc1 = 0 looked like collapse
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4, 6)), np.arange(4)
    with pytest.raises(ValueError, match="single sample"):
        metrics(X, y)
    acc = CollapseAccumulator(4, 6).update(X, y)
    for call in (acc.nc1, acc.metrics):
        with pytest.raises(ValueError, match="every one of the 4 classes has a single sample"):
            call()


def test_some_single_sample_classes_warn_and_still_compute():
    import warnings

    from limitlab.theory.collapse.metrics import SingleSampleClassWarning

    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((7, 5)), np.array([0, 0, 0, 1, 1, 2, 3])
    with pytest.warns(SingleSampleClassWarning, match=r"2 class\(es\) have a single sample \(\[2, 3\]\)") as rec:
        r = metrics(X, y)
    assert len(rec) == 1  # once per call, not once per metric
    # the value is still the definition: tr(Sigma_W Sigma_B^+)/C by dense linear algebra
    mu = np.stack([X[y == c].mean(0) for c in range(4)])
    Sw = sum(np.outer(X[i] - mu[y[i]], X[i] - mu[y[i]]) for i in range(7)) / 7
    M = mu - X.mean(0)
    assert r.nc1 == pytest.approx(np.trace(Sw @ np.linalg.pinv(M.T @ M / 4)) / 4, rel=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics(X[:5], y[:5] % 2)  # two classes of 3 and 2 samples: no warning
