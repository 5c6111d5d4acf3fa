"""Limiting NNGP and NTK of fully connected networks, in neural-tangents' conventions.

``MLP(depth=L)`` is ``stax.serial(*[Dense(n, W_std, b_std), act] * L, Dense(1, W_std, b_std))``
with ``weight_var = W_std**2`` and ``bias_var = b_std**2``. The recursion (Lee et al. 2018,
eq. 4; Jacot et al. 2018, Thm. 1; Novak et al. 2020, Neural Tangents, App. C):

    K^1 = w_0 x.x'/d + b_0,                      Theta^1 = K^1
    K^{l+1} = w_l E[phi(u) phi(v)] + b_l,         Kdot^{l+1} = w_l E[phi'(u) phi'(v)]
    Theta^{l+1} = K^{l+1} + Kdot^{l+1} Theta^l,   (u, v) ~ N(0, K^l restricted to {x, x'})

In the standard parametrization (Sohl-Dickstein et al. 2020; neural-tangents ``Dense(...,
parameterization="standard")``) the NNGP is the same and the NTK is

    Theta^1 = x.x' + beta,   Theta^{l+1} = n_l E[phi phi] + beta + w_l E[phi' phi'] Theta^l,

with n_l the hidden width and beta = 1 when the layer has a bias (``bias_var`` not None,
even 0.0: a bias initialised at zero is still trained), 0 without one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numba as nb
import numpy as np
import sympy as sp

from limitlab.numerics import arrays, gaussian, recursion
from limitlab.numerics import validation as validate
from limitlab.theory import activations as _act
from limitlab.theory.kernels.dual import Dual

__all__ = ["MLP", "Kernels"]

Number = Union[int, float]
_COMPILED: dict = {}
# the largest pre-activation variance at any layer: the kernel maps multiply up to three
# variances (gelu's q1 q2 delta), which float64 holds below 1e308
Q_MAX = 1e100
_SOURCES = "".join(hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()[:12] for m in (_act, recursion))


class Kernels(NamedTuple):
    nngp: Optional[np.ndarray]
    ntk: Optional[np.ndarray]


def _per_layer(value, name: str, n: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    vals = np.atleast_1d(np.asarray(value, dtype=float)) if not isinstance(value, str) else None
    if vals is None or vals.ndim != 1 or vals.size not in (1, n):
        raise ValueError(f"{name}: expected a number or a sequence of {n} numbers (one per Dense layer), got {value!r}")
    if not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError(f"{name}: variances must be finite and >= 0, got {value!r}")
    return np.ascontiguousarray(np.broadcast_to(vals, (n,)), dtype=float)


class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()


def _std_to_var(std, name: str):
    """neural-tangents' W_std / b_std (a standard deviation, or one per layer) as a variance."""
    if std is None:
        return None
    vals = np.asarray(std, dtype=float) if not isinstance(std, str) else None
    if vals is None or vals.ndim > 1 or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError(f"{name}: a standard deviation must be a finite number >= 0 or one per Dense layer, "
                         f"got {std!r}")
    return vals ** 2 if vals.ndim else float(vals) ** 2


def check_get(get) -> tuple:
    """``get`` as a tuple of kernel names ('nngp', 'ntk'; a single name allowed)."""
    if isinstance(get, str):
        get = (get,)
    bad = set(get) - {"nngp", "ntk"}
    if bad or not get:
        raise ValueError(f"get: allowed values are 'nngp' and 'ntk', got {tuple(get)!r}")
    return tuple(get)


def _check_inputs(X, name: str) -> np.ndarray:
    try:
        X = np.asarray(X)
    except Exception as exc:  # pragma: no cover - exotic array types
        raise TypeError(f"{name}: expected an array of shape (N, d), got {type(X).__name__}") from exc
    if np.iscomplexobj(X):
        raise TypeError(f"{name}: expected a real array of shape (N, d), got dtype {X.dtype} (complex inputs "
                        "have no kernel here; their imaginary part would be silently dropped)")
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"{name}: expected a numeric array of shape (N, d), got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, d), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, d) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
    return X


@dataclass(frozen=True, eq=False)
class MLP:
    """A fully connected network of ``depth`` hidden layers and a scalar readout.

    Args:
        depth: number of hidden Dense->activation layers (>= 1).
        activation: a name (``limitlab.theory.activations.available()``), a sympy expression
            in one symbol, or an Activation.
        weight_var, bias_var: W_std**2 and b_std**2, a number or one per Dense layer
            (depth + 1 values). ``bias_var=None`` means no bias.
        parametrization: ``"ntk"`` (default) or ``"standard"``.
        width: hidden width n_l (a number or one per hidden layer); only the standard
            parametrization's NTK depends on it.
        W_std, b_std, parameterization: neural-tangents' spellings (keyword only):
            ``weight_var = W_std**2``, ``bias_var = b_std**2`` (``b_std=None``: no bias) and
            ``parameterization`` for ``parametrization``. Giving both spellings of one thing
            is a ValueError.
    """

    depth: int
    activation: object = "relu"
    weight_var: object = _UNSET
    bias_var: object = _UNSET
    parametrization: str = _UNSET
    width: object = None
    W_std: object = field(default=_UNSET, kw_only=True, repr=False)
    b_std: object = field(default=_UNSET, kw_only=True, repr=False)
    parameterization: str = field(default=_UNSET, kw_only=True, repr=False)

    def __post_init__(self):
        validate.integer(self.depth, "depth", minimum=1)
        object.__setattr__(self, "activation", _act.get(self.activation))
        # neural-tangents' spellings: W_std, b_std (standard deviations) and parameterization
        for ours, theirs, square, default in (("weight_var", "W_std", True, 1.0), ("bias_var", "b_std", True, 0.0),
                                              ("parametrization", "parameterization", False, "ntk")):
            mine, alias = getattr(self, ours), getattr(self, theirs)
            if mine is not _UNSET and alias is not _UNSET:
                raise ValueError(f"{ours}, {theirs}: give one of the two spellings, got {ours}={mine!r} and "
                                 f"{theirs}={alias!r}" + (f" ({ours} = {theirs}**2)" if square else ""))
            if alias is not _UNSET:
                mine = _std_to_var(alias, theirs) if square else alias
            object.__setattr__(self, ours, default if mine is _UNSET else mine)
            # resolved into ours: unset again, so dataclasses.replace(net, weight_var=...) works
            object.__setattr__(self, theirs, _UNSET)
            if theirs == "parameterization" and alias is not _UNSET and alias not in ("ntk", "standard"):
                raise ValueError(f"parameterization: must be 'ntk' or 'standard', got {alias!r}")
        if self.parametrization not in ("ntk", "standard"):
            raise ValueError(f"parametrization: must be 'ntk' or 'standard', got {self.parametrization!r}")
        n = self.depth + 1
        object.__setattr__(self, "_w", _per_layer(self.weight_var, "weight_var", n))
        b = _per_layer(self.bias_var, "bias_var", n, allow_none=True)
        object.__setattr__(self, "_b", np.zeros(n) if b is None else b)
        object.__setattr__(self, "_beta", np.zeros(n) if b is None else np.ones(n))
        if self.width is not None:
            wd = _per_layer(self.width, "width", self.depth)
            if np.any(wd < 1):
                raise ValueError(f"width: hidden widths must be >= 1, got {self.width!r}")
            object.__setattr__(self, "_widths", wd)
        else:
            object.__setattr__(self, "_widths", None)

    # ------------------------------------------------------------------ numerics
    @property
    def dual(self) -> Dual:
        return Dual(self.activation)

    def kernels(self, X1, X2=None, get: Sequence[str] = ("nngp", "ntk"), dtype=None, chunks=None) -> Kernels:
        """NNGP and NTK between the rows of X1 and X2 (X2=None: X1 with itself, symmetric).

        ``chunks`` (a tile size, a pair, or "auto"): lazy dask arrays of tiles instead
        (:func:`limitlab.theory.kernels.scale.lazy_kernels`; store them with ``write_kernels``).

        ``dtype=None`` follows the inputs' precision: float32 (or float16) inputs give float32
        kernels, anything else float64. Either way everything is computed in float64 (the
        inputs upcast exactly) and rounded once at the end: a float32 Gram matrix would put
        errors of 1e-4 into the ReLU NTK of near-parallel inputs (the angle's sensitivity), 1000
        times float32's rounding. A float32 result therefore peaks at the float64 matrix plus
        its float32 copy.
        """
        if chunks is not None:
            from limitlab.theory.kernels.scale import lazy_kernels
            return lazy_kernels(self, X1, X2, get=get, chunks=chunks, dtype=dtype)
        get = check_get(get)
        X1 = _check_inputs(X1, "X1")
        symmetric = X2 is None
        X2 = X1 if symmetric else _check_inputs(X2, "X2")
        if dtype is None:
            low = all(X.dtype in (np.float32, np.float16) for X in (X1, X2))
            dtype = np.float32 if low else np.float64
        dtype = validate.dtype(dtype, "dtype", (np.float64, np.float32))
        if X1.shape[1] != X2.shape[1]:
            raise ValueError(f"X2: feature dimension {X2.shape[1]} does not match X1's {X1.shape[1]}")
        want_k, want_th = "nngp" in get, "ntk" in get
        if want_th and self.parametrization == "standard" and self._widths is None:
            raise ValueError("width: the standard parametrization's NTK depends on the hidden width; pass width=n")
        widths = self._widths if self._widths is not None else np.ones(self.depth)
        out_dtype, dtype = dtype, np.dtype(np.float64)
        X1 = np.ascontiguousarray(X1, dtype=dtype)
        X2 = X1 if symmetric else np.ascontiguousarray(X2, dtype=dtype)
        d = X1.shape[1]
        closed = self.activation.has_closed_form
        # the compiled recursion reads only the upper triangle of a symmetric Gram matrix
        G = _gram(X1, X2, dtype, upper_only=closed and symmetric)
        # the diagonal variances come from the very Gram entries the recursion reads, so
        # that c == q holds exactly there (an ulp apart, arccos would turn it into 1e-8)
        g1 = np.diagonal(G).astype(np.float64) if symmetric else np.einsum("ij,ij->i", X1, X1, dtype=np.float64)
        g2 = g1 if symmetric else np.einsum("ij,ij->i", X2, X2, dtype=np.float64)
        if closed:
            out = self._closed_kernels(G, g1, g2, 1.0 / d, widths, symmetric, want_k, want_th, dtype)
        else:
            out = self._numerical_kernels(G, g1, g2, 1.0 / d, widths, symmetric, want_k, want_th, dtype)
        if out_dtype != np.float64:
            out = Kernels(*(None if K is None else K.astype(out_dtype) for K in out))
        return out

    def nngp(self, X1, X2=None, dtype=None) -> np.ndarray:
        return self.kernels(X1, X2, get=("nngp",), dtype=dtype).nngp

    def ntk(self, X1, X2=None, dtype=None) -> np.ndarray:
        return self.kernels(X1, X2, get=("ntk",), dtype=dtype).ntk

    def _compiled(self):
        act = self.activation
        key = (act.name, act.params, sp.srepr(act.expr))
        if key not in _COMPILED:
            A, Adot = act.closed_dual()
            # the disk key covers the code that writes the map (the closed forms, the rewriting
            # in recursion), so editing either regenerates it
            _COMPILED[key] = recursion.compile_dual_recursion(
                A, Adot, cache_key=hashlib.sha256((repr(key) + _SOURCES).encode()).hexdigest()[:20])
        return _COMPILED[key]

    def _closed_kernels(self, G, g1, g2, inv_dim, widths, symmetric, want_k, want_th, dtype):
        mod = self._compiled()
        L = self.depth
        w, b = self._w, self._b
        s1 = np.sqrt(_check_range(mod.diagonal(g1, inv_dim, w, b, L), "X1", self.activation))
        s2 = s1 if symmetric else np.sqrt(_check_range(mod.diagonal(g2, inv_dim, w, b, L), "X2", self.activation))
        # Theta^1 = x0 g + y0 and Theta^{l+1} = u_l A + v_l + w_l Adot Theta^l in both parametrizations
        if self.parametrization == "standard":
            x0, y0, u, v = 1.0, self._beta[0], widths.astype(float), self._beta[1:]
        else:
            x0, y0, u, v = w[0] * inv_dim, b[0], w[1:], b[1:]
        # the Gram buffer becomes the first requested output: its row is read before written
        out_th = G if want_th else None
        out_k = (G if not want_th else np.empty_like(G)) if want_k else None
        dummy = np.empty((0, 0), dtype=G.dtype)
        # rows go to threads in chunks of 8 as they free up, not in one static half each: a
        # core taken away for a moment by another process then delays one chunk, not the call
        with nb.parallel_chunksize(8):
            bad = mod.recursion(G, s1, s2, inv_dim, w, b, x0, y0, np.ascontiguousarray(u), np.ascontiguousarray(v),
                                out_k if want_k else dummy, out_th if want_th else dummy, want_k, want_th, symmetric)
        if symmetric:
            for out in (out_k, out_th):
                if out is not None:
                    arrays.mirror_upper(out)
        if bad.size or not (np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))):
            rows = bad[:5].tolist()
            raise ValueError(
                f"X1: the {self.activation.name} kernel map is not finite for rows {rows}"
                f"{' ...' if bad.size > 5 else ''}; an input of zero variance at some layer (a zero "
                "row without bias) has no defined kernel for this activation; use bias_var > 0")
        return Kernels(out_k, out_th)

    def _numerical_kernels(self, G, g1, g2, inv_dim, widths, symmetric, want_k, want_th, dtype):
        act = self.activation
        phi, dphi = (lambda t: act(t)), (lambda t: act.derivative(t))
        w, b, beta = self._w, self._b, self._beta
        standard = self.parametrization == "standard"

        def diag(g, name):
            q = [w[0] * g * inv_dim + b[0]]
            for l in range(1, self.depth):
                if np.any(q[-1] > Q_MAX):
                    break
                m2 = gaussian.interpolated(lambda qs: gaussian.expect(lambda t: phi(t) ** 2, qs, act.kinks)[:, None],
                                           q[-1])[0][:, 0]
                q.append(w[l] * m2 + b[l])
            return _check_range(np.array(q), name, act)

        qs1 = diag(g1, "X1")
        qs2 = qs1 if symmetric else diag(g2, "X2")
        G = G.astype(np.float64, copy=False)
        k = w[0] * G * inv_dim + b[0]
        th = (G + beta[0]) if standard else k.copy()
        for l in range(self.depth):
            A, Adot = gaussian.mehler_dual(phi, dphi, qs1[l], qs2[l], k, act.kinks, symmetric=symmetric,
                                           want=(True, want_th))
            knew = w[l + 1] * A + b[l + 1]
            if want_th:
                th = (widths[l] * A + beta[l + 1] if standard else knew) + w[l + 1] * Adot * th
            k = knew
        return Kernels(k.astype(dtype, copy=False) if want_k else None,
                       th.astype(dtype, copy=False) if want_th else None)

    # ------------------------------------------------------------------ symbolic
    @cached_property
    def symbols(self):
        """Input Gram symbols: g11 = x.x/d, g22 = x'.x'/d, g12 = x.x'/d."""
        return sp.symbols("g11 g22 g12", positive=True)

    def recursion(self) -> list:
        """The layer recursion as sympy equations (indexed symbols K, Kdot, Theta)."""
        l = sp.Symbol("l", integer=True, positive=True)
        K, Kd, Th = sp.IndexedBase("K"), sp.IndexedBase("Kdot"), sp.IndexedBase("Theta")
        w, b = sp.symbols("sigma_w^2 sigma_b^2", nonnegative=True)
        x, xp = sp.symbols("x x'")
        d = sp.Symbol("d", positive=True)
        E = sp.Function("E")
        dual = self.dual
        return [
            sp.Eq(K[1], w * sp.Symbol("x\\cdot x'") / d + b),
            sp.Eq(K[l + 1], w * dual.nngp + b),
            sp.Eq(Kd[l + 1], w * dual.derivative),
            sp.Eq(Th[1], K[1]),
            sp.Eq(Th[l + 1], K[l + 1] + Kd[l + 1] * Th[l]),
        ]

    def symbolic(self, depth: Optional[int] = None):
        """(NNGP, NTK) as explicit sympy expressions of (g11, g22, g12) for small depth."""
        depth = self.depth if depth is None else depth
        if not self.activation.has_closed_form:
            raise ValueError(f"activation: {self.activation.name} has no closed-form kernel map; "
                             "use MLP.recursion() and Dual.integral / Dual.series for its symbolic form")
        A, Adot = self.activation.closed_dual()
        w = [sp.nsimplify(v) for v in self._w]
        b = [sp.nsimplify(v) for v in self._b]
        g11, g22, g12 = self.symbols
        if self.parametrization == "standard":
            raise NotImplementedError("parametrization: symbolic() covers the 'ntk' parametrization")
        k11, k22, k12 = (w[0] * g + b[0] for g in (g11, g22, g12))
        th = k12
        sub = lambda e, a, bb, cc: e.subs({_act.q1: a, _act.q2: bb, _act.c: cc}, simultaneous=True)  # noqa: E731
        for l in range(depth):
            a12, ad12 = sub(A, k11, k22, k12), sub(Adot, k11, k22, k12)
            k11n = w[l + 1] * sp.simplify(sub(A, k11, k11, k11)) + b[l + 1]
            k22n = w[l + 1] * sp.simplify(sub(A, k22, k22, k22)) + b[l + 1]
            k12 = w[l + 1] * a12 + b[l + 1]
            th = k12 + w[l + 1] * ad12 * th
            k11, k22 = k11n, k22n
        return k12, th


def _check_range(q, name, act):
    """q[l, i], the pre-activation variances of every layer, if all are <= Q_MAX; else a
    ValueError naming the input, the layer and the limit."""
    q = np.asarray(q)
    bad = q > Q_MAX  # inf too; NaN (zero variance where the map divides by it) is reported later
    if bad.any():
        l, i = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}: row {i} has pre-activation variance {q[l, i]:.3g} at layer {l + 1} ({act.name}); kernels are "
            f"computed for variances up to Q_MAX = {Q_MAX:.0e} (float64 products of three variances overflow beyond); "
            "rescale the inputs or the weight variances")
    return q


def _gram(X1, X2, dtype, block: int = 4096, upper_only: bool = False):
    """X1 X2^T by BLAS in row blocks written straight into the output (no temporaries).

    ``upper_only`` (X2 is X1): only the upper triangle is set (:func:`arrays.upper_gram`).
    """
    if upper_only:
        return arrays.upper_gram(X1)
    G = np.empty((X1.shape[0], X2.shape[0]), dtype=dtype)
    for s in range(0, X1.shape[0], block):
        np.matmul(X1[s:s + block], X2.T, out=G[s:s + block])
    return G
