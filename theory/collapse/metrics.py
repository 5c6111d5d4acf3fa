"""Neural-collapse metrics NC1-NC4 and CDNV, streamed over chunks of features.

Definitions (Papyan, Han, Donoho 2020, "Prevalence of neural collapse during the terminal
phase of deep learning training", PNAS 117(40), Sec. 3 and Figs. 3-7), with rows as class
vectors: class means ``mu_c``, global mean ``mu_G``, centred means ``M = mu - mu_G``
(C x d), classifier ``W`` (C x d), bias ``b`` (C,):

* NC1 = tr(Sigma_W Sigma_B^+) / C, Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T,
  Sigma_B = (1/C) M^T M;
* NC2 equinorm = std_c ||M_c|| / mean_c ||M_c|| (same for ||w_c||); equiangularity =
  std_{c<c'} cos(M_c, M_c'); maximal angle = mean_{c<c'} |cos(M_c, M_c') + 1/(C-1)|;
  ETF distance (Zhu et al. 2021, "A Geometric Analysis of Neural Collapse with
  Unconstrained Features", eq. (13)) = || G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F, G = M M^T;
* NC3 = || W/||W||_F - M/||M||_F ||_F^2;
* NC4 = fraction of samples whose prediction argmax_c (W h + b)_c differs from the
  nearest class mean argmin_c ||h - mu_c||;
* CDNV (Galanti, Gyorgy, Hutter 2022, "On the Role of Neural Collapse in Transfer
  Learning", Def. 1) = mean_{c<c'} (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2),
  Var_c = E_{i in c} ||h_i - mu_c||^2 (population variance).

Conventions on which public implementations differ are explicit parameters of
:meth:`CollapseAccumulator.metrics` (see there). The accumulator merges chunks with the
pairwise update of Chan, Golub, LeVeque 1979 ("Updating formulae and a pairwise algorithm
for computing sample variances"), so one pass suffices and memory is O(C d + d^2) for any
number of samples. NC4 needs the final class means and hence a second pass
(:class:`NCCAgreement`).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from limitlab.numerics import arrays
from limitlab.numerics import validation as validate

from . import _kernels

__all__ = ["CollapseAccumulator", "NCCAgreement", "CollapseMetrics", "metrics", "SingleSampleClassWarning"]


class SingleSampleClassWarning(UserWarning):
    """Some classes have one sample: their within-class variability is 0 by construction."""

_NC1_FORMS = ("pinv", "truncated", "trace")
_GLOBAL_MEANS = ("weighted", "unweighted")
_AVERAGES = ("samples", "classes")


def _host(a, name):
    """A host NumPy view of any array-API array; rejects non-arrays and non-finite values later."""
    try:
        out = arrays.to_numpy(a)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from exc
    return np.asarray(out)


def _check_features(features, dim=None, finite=True):
    X = _host(features, "features")
    if X.ndim != 2:
        raise ValueError(f"features: expected shape (N, d), got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"features: expected {dim} columns (dim), got shape {X.shape}")
    if X.dtype.kind not in "fiu":
        raise TypeError(f"features: expected a real numeric array, got dtype {X.dtype}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if finite and not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"features: non-finite value {X[tuple(bad)]!r} at index {tuple(int(i) for i in bad)}")
    return X


def _check_labels(labels, n, num_classes):
    y = _host(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n},) to match features, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"labels: expected integer class indices, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0]
        raise ValueError(f"labels: value {int(bad)} out of range; allowed 0 <= label < num_classes={num_classes}")
    return y.astype(np.intp, copy=False)


def _std(values, ddof):
    # a single value has no spread; with Bessel's correction its std is undefined, report 0
    if values.size <= ddof:
        return 0.0
    return float(np.std(values, ddof=ddof))


@dataclass
class CollapseMetrics:
    """NC1-NC4 and CDNV. Classifier metrics are None when no classifier was given; NC4 is
    None when no second pass was possible. ``conventions`` records the choices made."""

    nc1: float
    nc2_equinorm_means: float
    nc2_equiangular_means: float
    nc2_maxangle_means: float
    nc2_etf_means: float
    cdnv: float
    nc2_equinorm_classifier: Optional[float] = None
    nc2_equiangular_classifier: Optional[float] = None
    nc2_maxangle_classifier: Optional[float] = None
    nc2_etf_classifier: Optional[float] = None
    nc3: Optional[float] = None
    nc4: Optional[float] = None
    conventions: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _angles(V, ddof):
    """Equinorm, equiangularity, maximal-angle and ETF distance of the rows of V (Papyan et al. 2020)."""
    C = V.shape[0]
    norms = np.linalg.norm(V, axis=1)
    if np.any(norms == 0):
        raise ValueError("a centred class mean or classifier row is exactly zero: its angles are undefined")
    U = V / norms[:, None]
    cos = (U @ U.T)[np.triu_indices(C, 1)]
    G = V @ V.T
    etf = (np.eye(C) - np.full((C, C), 1.0 / C)) / np.sqrt(C - 1)
    return (_std(norms, ddof) / float(norms.mean()), _std(cos, ddof), float(np.mean(np.abs(cos + 1.0 / (C - 1)))),
            float(np.linalg.norm(G / np.linalg.norm(G) - etf)))


class CollapseAccumulator:
    """Streaming sufficient statistics of labelled features: per-class counts and means, the
    pooled within-class scatter (d x d) and per-class scatter traces.

    Memory O(C d + d^2) whatever the number of samples (plus one ``chunk_size`` x d work
    buffer in the input dtype, kept between calls). ``update`` takes any array-API array
    (NumPy, torch, cupy, ...; copied to the host) and processes it in blocks of
    ``chunk_size`` rows. Each block is centred on a per-class reference ``r_c`` in the
    input's floating dtype (float32 stays float32 for the block Gram matrix, the expensive
    step): the running class mean, or for a class not seen before its mean in the block.
    With ``Z = X - r[y]``, the Gram matrix ``Z^T Z`` (one BLAS syrk), the class sums ``T``
    and the row norms (both float64, from the same compiled read that forms ``Z``; no
    sort, no per-class loop) give the block's class means
    ``r + T/n_b`` and scatter ``Z^T Z - T^T diag(1/n_b) T`` (the shifted-data formula:
    ``T/n_b`` is the small offset of the block mean from the reference, so nothing
    cancels), merged into float64 totals with Chan et al.'s pairwise formula. The raw-moment
    formula E[hh^T] - mu mu^T would cancel catastrophically near collapse, where the class
    means dwarf the within-class spread.
    """

    def __init__(self, num_classes: int, dim: int, *, chunk_size: int = 16384):
        self.num_classes = validate.integer(num_classes, "num_classes", minimum=2)
        self.dim = validate.integer(dim, "dim", minimum=1)
        self.chunk_size = validate.integer(chunk_size, "chunk_size", minimum=1)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.means = np.zeros((self.num_classes, self.dim))
        self.within_scatter = np.zeros((self.dim, self.dim))
        self.class_scatter = np.zeros(self.num_classes)  # traces: sum_i ||h_i - mu_c||^2 per class
        self._work = None  # chunk_size x dim buffer for the centred block (input dtype)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_work"] = None
        return state

    # -- accumulation ------------------------------------------------------------------
    def update(self, features, labels) -> "CollapseAccumulator":
        X = _check_features(features, self.dim, finite=False)  # finiteness is checked per block, cheaply
        y = _check_labels(labels, X.shape[0], self.num_classes)
        for start in range(0, X.shape[0], self.chunk_size):
            self._update_block(X[start:start + self.chunk_size], y[start:start + self.chunk_size])
        return self

    def _buffer(self, rows, dtype):
        w = self._work
        if w is None or w.dtype != dtype or w.shape[0] < rows:
            w = self._work = np.empty((rows, self.dim), dtype=dtype)
        return w[:rows]

    def _update_block(self, X, y):
        C, d = self.num_classes, self.dim
        n = X.shape[0]
        if n == 0:
            return
        nb = np.bincount(y, minlength=C)
        present = np.flatnonzero(nb)
        Z = self._buffer(n, X.dtype)
        T = np.empty((C, d))
        q = np.empty(n)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # non-finite input is reported below
            # per-class reference: the running mean (float64 -> input dtype), or for a class
            # not seen before its mean in this block (any rounding of the reference is
            # corrected exactly by the class sums of Z below)
            ref = self.means.astype(X.dtype)
            new = present[self.counts[present] == 0]
            if new.size:  # a first read for the new classes' sums (float64), usually only the first block
                _kernels.centre_block(X, y, np.zeros_like(ref), Z, T, q)
                ref[new] = T[new] / nb[new, None]
            # one compiled read of the block: Z = X - ref[y], class sums of Z, row norms
            _kernels.centre_block(X, y, ref, Z, T, q)
            gram = Z.T @ Z  # the expensive step: BLAS syrk in the input dtype
            ss = np.bincount(y, weights=q, minlength=C)
        if not (np.isfinite(T).all() and np.isfinite(gram.diagonal()).all() and np.isfinite(ss).all()):
            _check_features(X)  # locate the non-finite entry for the message
            raise ValueError("features: values overflow the squared-norm accumulation")
        # block statistics relative to the reference, in float64
        Tp = T[present]
        nbp = nb[present].astype(np.float64)
        offset = Tp / nbp[:, None]  # block mean - reference
        # Chan-Golub-LeVeque merge of (counts, means, scatter) with the block's
        na = self.counts[present].astype(np.float64)
        delta = (ref[present].astype(np.float64) - self.means[present]) + offset  # block mean - running mean
        w = na * nbp / (na + nbp)
        # block scatter about its means = Z^T Z - sum_c n_c offset_c offset_c^T; plus the merge term
        A = np.concatenate((Tp / np.sqrt(nbp)[:, None], delta * np.sqrt(w)[:, None]))
        B = np.concatenate((-A[:present.size], A[present.size:]))
        self.within_scatter += gram.astype(np.float64) + B.T @ A
        self.class_scatter[present] += (ss[present] - nbp * np.einsum("ij,ij->i", offset, offset)
                                        + w * np.einsum("ij,ij->i", delta, delta))
        self.means[present] += delta * (nbp / (na + nbp))[:, None]
        self.counts += nb

    def merge(self, other: "CollapseAccumulator") -> "CollapseAccumulator":
        """Add another accumulator's samples (e.g. from another worker) into this one."""
        if not isinstance(other, CollapseAccumulator) or (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError("other: expected a CollapseAccumulator with the same num_classes and dim")
        present = np.flatnonzero(other.counts)
        na = self.counts[present].astype(np.float64)
        nb = other.counts[present].astype(np.float64)
        delta = other.means[present] - self.means[present]
        w = na * nb / (na + nb)
        self.within_scatter += other.within_scatter + (delta * w[:, None]).T @ delta
        self.class_scatter[present] += other.class_scatter[present] + w * np.einsum("ij,ij->i", delta, delta)
        self.means[present] += delta * (nb / (na + nb))[:, None]
        self.counts += other.counts
        return self

    # -- derived statistics ------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def _require_all_classes(self):
        empty = np.flatnonzero(self.counts == 0)
        if empty.size:
            raise ValueError(f"labels: class(es) {empty.tolist()} have no samples; every class of "
                             f"num_classes={self.num_classes} needs at least one")

    def _require_within_samples(self):
        """Within-class variability needs a class with two samples. ValueError when no class has
        two (Sigma_W = 0 and every Var_c = 0 by construction: NC1 = CDNV = 0 would read as
        perfect collapse); SingleSampleClassWarning when some classes have one sample (their
        zero scatter pulls NC1 and CDNV towards collapse)."""
        self._require_all_classes()
        single = np.flatnonzero(self.counts == 1)
        if single.size == self.num_classes:
            raise ValueError(f"labels: every one of the {self.num_classes} classes has a single sample; within-class "
                             "variability (NC1, CDNV) is 0 by construction and says nothing about collapse; "
                             "at least one class needs two or more samples")
        if single.size:
            shown = single[:10].tolist()
            warnings.warn(f"labels: {single.size} class(es) have a single sample ({shown}{'...' if single.size > 10 else ''}); "
                          "their within-class variability is 0 by construction, which biases NC1 and CDNV "
                          "towards collapse", SingleSampleClassWarning, stacklevel=3)

    def global_mean(self, weighting: str = "weighted") -> np.ndarray:
        """``weighted``: mean of all samples (Papyan et al.'s code); ``unweighted``: mean of the class means."""
        validate.choice(weighting, "global_mean", _GLOBAL_MEANS)
        self._require_all_classes()
        if weighting == "weighted":
            return self.counts @ self.means / self.num_samples
        return self.means.mean(axis=0)

    def within_covariance(self) -> np.ndarray:
        """Sigma_W pooled over samples: (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T."""
        self._require_all_classes()
        return self.within_scatter / self.num_samples

    def between_covariance(self, global_mean: str = "weighted") -> np.ndarray:
        """Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T."""
        M = self.means - self.global_mean(global_mean)
        return M.T @ M / self.num_classes

    def nc1(self, form: str = "pinv", *, global_mean: str = "weighted", divide_by_classes: Optional[bool] = None,
            rtol: Optional[float] = None) -> float:
        """NC1 in one of three forms, never negative.

        ``pinv``: tr(Sigma_W Sigma_B^+) with the pseudo-inverse of the symmetric PSD
        Sigma_B, singular values below ``rtol * max`` dropped (``rtol`` defaults to
        NumPy's pinv cut-off ``max(d, d) * eps``); computed from the SVD of the C x d
        centred means, so rounding-negative eigenvalues are never inverted.
        ``truncated``: the same with only the top C-1 components (Papyan et al.'s code,
        scipy ``svds(Sigma_B, k=C-1)``); equal to ``pinv`` when the centred means span C-1
        dimensions (both global means leave rank <= C-1), but it inverts a rounding-level
        eigenvalue, and explodes, when they span fewer.
        ``trace``: tr(Sigma_W) / tr(Sigma_B) (e.g. Tirer, Huang, Niles-Weed 2023).
        ``divide_by_classes`` (default: True for pinv/truncated, Papyan's 1/C; False
        for trace) divides the result by C. Quadratic forms rounding below 0 are clipped.
        ValueError when no class has two samples (Sigma_W = 0 by construction, not by
        collapse); a SingleSampleClassWarning when some classes have one.
        """
        self._require_within_samples()
        return self._nc1(form, global_mean, divide_by_classes, rtol)

    def _nc1(self, form, global_mean, divide_by_classes, rtol=None):
        validate.choice(form, "nc1 form", _NC1_FORMS)
        C = self.num_classes
        if divide_by_classes is None:
            divide_by_classes = form != "trace"
        Sw = self.within_covariance()
        M = self.means - self.global_mean(global_mean)
        if form == "trace":
            tb = float(np.einsum("ij,ij->", M, M)) / C
            if tb == 0:
                raise ValueError("features: all class means coincide, Sigma_B = 0 and NC1 is undefined")
            value = max(float(np.trace(Sw)), 0.0) / tb
        else:
            _, s, Vt = np.linalg.svd(M, full_matrices=False)
            lam = s ** 2 / C  # nonzero eigenvalues of Sigma_B = M^T M / C
            if lam[0] == 0:
                raise ValueError("features: all class means coincide, Sigma_B = 0 and NC1 is undefined")
            if form == "pinv":
                cut = (self.dim * np.finfo(float).eps if rtol is None else rtol) * lam[0]
                keep = lam > cut
            else:
                keep = np.arange(lam.size) < C - 1
            V = Vt[keep]
            quad = np.clip(np.einsum("ij,jk,ik->i", V, Sw, V), 0.0, None)
            value = float(np.sum(quad / lam[keep]))
        return value / C if divide_by_classes else value

    def metrics(self, classifier=None, bias=None, *, nc1: str = "pinv", global_mean: str = "weighted",
                divide_by_classes: Optional[bool] = None, ddof: int = 1, nc4: Optional[float] = None) -> CollapseMetrics:
        """All metrics from the accumulated statistics.

        Conventions: ``nc1`` form (see :meth:`nc1`); ``global_mean`` ``weighted`` (all
        samples, Papyan et al.'s code) or ``unweighted`` (mean of class means; equal for
        balanced classes); ``divide_by_classes`` (Papyan's 1/C in NC1); ``ddof`` of the
        standard deviations in NC2 (1: Bessel-corrected, as torch.std in Papyan et al.'s
        code; 0: numpy's default). ``nc4``: a value from :class:`NCCAgreement` (second pass).
        Classes of one sample: see :meth:`nc1` (ValueError if all, warning if some).
        """
        validate.choice(global_mean, "global_mean", _GLOBAL_MEANS)
        self._require_within_samples()
        return self._metrics(classifier, nc1, global_mean, divide_by_classes, ddof, nc4)

    def _metrics(self, classifier, nc1, global_mean, divide_by_classes, ddof, nc4):
        validate.choice(global_mean, "global_mean", _GLOBAL_MEANS)
        if ddof not in (0, 1):
            raise ValueError(f"ddof={ddof!r}: allowed values are 0 and 1")
        C = self.num_classes
        M = self.means - self.global_mean(global_mean)
        out = dict(nc1=self._nc1(nc1, global_mean, divide_by_classes))
        (out["nc2_equinorm_means"], out["nc2_equiangular_means"], out["nc2_maxangle_means"],
         out["nc2_etf_means"]) = _angles(M, ddof)
        var = self.class_scatter / self.counts
        iu = np.triu_indices(C, 1)
        dist2 = _pair_sq_distances(self.means)
        if np.any(dist2 == 0):
            raise ValueError("features: two class means coincide, CDNV is undefined")
        out["cdnv"] = float(np.mean((var[:, None] + var[None, :])[iu] / (2 * dist2)))
        if classifier is not None:
            W = _check_classifier(classifier, C, self.dim)
            (out["nc2_equinorm_classifier"], out["nc2_equiangular_classifier"], out["nc2_maxangle_classifier"],
             out["nc2_etf_classifier"]) = _angles(W, ddof)
            out["nc3"] = float(np.sum((W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2))
        out["nc4"] = nc4
        conv = dict(nc1=nc1, global_mean=global_mean, ddof=ddof,
                    divide_by_classes=(nc1 != "trace") if divide_by_classes is None else bool(divide_by_classes),
                    within="pooled over samples")
        return CollapseMetrics(**out, conventions=conv)


def _pair_sq_distances(mu):
    """||mu_i - mu_j||^2 for i < j in np.triu_indices order, from explicit differences (no
    |a|^2 + |b|^2 - 2ab cancellation), one row at a time: memory O(C d), not O(C^2 d)."""
    out = []
    for i in range(mu.shape[0] - 1):
        diff = mu[i + 1:] - mu[i]
        out.append(np.einsum("ij,ij->i", diff, diff))
    return np.concatenate(out)


def _check_classifier(classifier, C, d):
    W = _host(classifier, "classifier")
    if W.shape != (C, d):
        raise ValueError(f"classifier: expected shape (num_classes, dim) = ({C}, {d}), got {W.shape}")
    W = W.astype(np.float64)
    if not np.isfinite(W).all():
        raise ValueError("classifier: contains non-finite values")
    return W


class NCCAgreement:
    """Second pass for NC4: counts disagreements between the classifier's prediction
    argmax(W h + b) and the nearest-class-centre rule argmin ||h - mu_c||
    (Papyan et al. 2020, Fig. 7). ``average``: ``samples`` (Papyan) or ``classes``
    (mean of per-class rates, as rhubarbwu/neural-collapse).

    Both rules come from one matrix product per block with the stacked (d x 2C) matrix
    ``[W^T | (mu - g)^T]`` in the input dtype (nearest centre as argmax of
    ``h.(mu_c - g) - g.(mu_c - g) - |mu_c - g|^2/2``, ``g`` the mean of the class means)."""

    def __init__(self, class_means, classifier, bias=None, *, chunk_size: int = 16384):
        mu = _check_features(class_means)
        self.num_classes, self.dim = mu.shape
        self.means = mu.astype(np.float64)
        self.W = _check_classifier(classifier, self.num_classes, self.dim)
        if bias is None:
            self.b = np.zeros(self.num_classes)
        else:
            self.b = _host(bias, "bias").astype(np.float64).reshape(-1)
            if self.b.shape != (self.num_classes,) or not np.isfinite(self.b).all():
                raise ValueError(f"bias: expected {self.num_classes} finite values, got shape {self.b.shape}")
        self.chunk_size = validate.integer(chunk_size, "chunk_size", minimum=1)
        self.mismatch = np.zeros(self.num_classes, dtype=np.int64)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self._stack = None

    def update(self, features, labels) -> "NCCAgreement":
        X = _check_features(features, self.dim, finite=False)
        y = _check_labels(labels, X.shape[0], self.num_classes)
        C = self.num_classes
        S, off = self._stacked(X.dtype)
        rows = min(self.chunk_size, X.shape[0])
        buf = np.empty((rows, 2 * C), dtype=X.dtype)
        mism_buf = np.empty(rows, dtype=np.bool_)
        for s in range(0, X.shape[0], self.chunk_size):
            Xb = X[s:s + self.chunk_size]
            yb = y[s:s + self.chunk_size]
            with np.errstate(invalid="ignore", over="ignore"):
                scores = np.matmul(Xb, S, out=buf[:Xb.shape[0]])  # one GEMM: [W h | M h] for the whole block
                scores += off
            mism = mism_buf[:Xb.shape[0]]
            if _kernels.disagreements(scores, C, mism):  # row-wise argmax of both halves, compiled
                _check_features(Xb)
                raise ValueError("features: values overflow the classifier scores")
            self.mismatch += np.bincount(yb[mism], minlength=C)
            self.counts += np.bincount(yb, minlength=C)
        return self

    def _stacked(self, dtype):
        """(d x 2C) matrix [W^T | M^T] and offsets [b | -g.M_c - |M_c|^2/2], M = mu - g, g the
        mean of the class means: argmax_c (h.M_c - g.M_c - |M_c|^2/2) = argmin_c ||h - mu_c||^2
        (the terms dropped do not depend on c). Centring the means on g keeps the products
        small when the features share a large offset. Offsets are formed in float64."""
        key = np.dtype(dtype)
        if self._stack is None or self._stack[0] != key:
            g = self.means.mean(axis=0)
            M = self.means - g
            off = np.concatenate((self.b, -(M @ g) - 0.5 * np.einsum("ij,ij->i", M, M)))
            S = np.ascontiguousarray(np.concatenate((self.W, M)).T, dtype=key)
            self._stack = (key, S, off.astype(key))
        return self._stack[1], self._stack[2]

    def value(self, average: str = "samples") -> float:
        validate.choice(average, "nc4 average", _AVERAGES)
        if self.counts.sum() == 0:
            raise ValueError("features: no samples were passed to NCCAgreement.update")
        if average == "samples":
            return float(self.mismatch.sum() / self.counts.sum())
        seen = self.counts > 0
        return float(np.mean(self.mismatch[seen] / self.counts[seen]))


def metrics(features, labels=None, classifier=None, bias=None, *, num_classes: Optional[int] = None,
            nc1: str = "pinv", global_mean: str = "weighted", divide_by_classes: Optional[bool] = None,
            ddof: int = 1, nc4_average: str = "samples", chunk_size: int = 16384) -> CollapseMetrics:
    """NC1-NC4 and CDNV of labelled features (Papyan, Han, Donoho 2020; Galanti et al. 2022).

    ``features``: an (N, d) array (any array-API backend) with ``labels`` (N,) integers in
    [0, num_classes); or a callable returning a fresh iterable of ``(features, labels)``
    chunks (called twice when a classifier is given: NC4 needs the final class means), so
    that millions of samples stream in O(C d + d^2) memory. ``classifier`` (C, d) and
    ``bias`` (C,) enable the classifier NC2 metrics, NC3 and NC4. ``num_classes`` defaults
    to max(label) + 1 for arrays and is required for streams. Conventions: see
    :meth:`CollapseAccumulator.metrics`; ``nc4_average``: see :class:`NCCAgreement`.

    Within-class variability needs repeated samples: when no class has two samples the call
    raises ValueError (NC1 = CDNV = 0 by construction would look like perfect collapse);
    when some classes have one sample it warns (``SingleSampleClassWarning``).
    """
    validate.choice(nc4_average, "nc4_average", _AVERAGES)
    if callable(features):
        if labels is not None:
            raise ValueError("labels: must be None when features is a callable yielding (features, labels) chunks")
        if num_classes is None:
            raise ValueError("num_classes: required when features is a stream of chunks")
        stream: Callable = features
    else:
        X = _check_features(features, finite=False)
        if labels is None:
            raise ValueError("labels: required with an array of features")
        if num_classes is None:
            y0 = _host(labels, "labels")
            if y0.size == 0:
                raise ValueError("features: no samples")
            num_classes = int(np.max(y0)) + 1 if y0.dtype.kind in "iu" else None
            if num_classes is None:
                raise TypeError(f"labels: expected integer class indices, got dtype {y0.dtype}")
        y = _check_labels(labels, X.shape[0], num_classes)

        def stream():
            yield X, y

    acc = None
    for Xc, yc in stream():
        Xc = _check_features(Xc, finite=False)
        if acc is None:
            acc = CollapseAccumulator(num_classes, Xc.shape[1], chunk_size=chunk_size)
        acc.update(Xc, yc)
    if acc is None or acc.num_samples == 0:
        raise ValueError("features: no samples")
    acc._require_within_samples()
    nc4 = None
    if classifier is not None:
        agree = NCCAgreement(acc.means, classifier, bias, chunk_size=chunk_size)
        for Xc, yc in stream():
            agree.update(Xc, yc)
        nc4 = agree.value(nc4_average)
    result = acc._metrics(classifier, nc1, global_mean, divide_by_classes, ddof, nc4)  # samples checked above
    result.conventions["nc4_average"] = nc4_average
    return result
