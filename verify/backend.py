"""Array backends for the Monte Carlo engine: one array-API code path, several libraries.

``get_backend("auto")`` picks PyTorch on a CUDA device, else CuPy on a CUDA device, else
NumPy on the CPU. ``"numpy"``, ``"torch"`` (CUDA when present, else CPU), ``"cupy"`` and
``"array-api-strict"`` (the portability test backend: CI has no GPU) can be asked for by
name. Every backend draws its Gaussian numbers from per-network streams, so a network's
weights do not depend on how networks are batched; streams differ between backends
(NumPy and array-api-strict share NumPy's).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from limitlab.numerics import arrays

__all__ = ["Backend", "get_backend", "BACKENDS", "available_backends"]

BACKENDS = ("auto", "numpy", "torch", "cupy", "array-api-strict")


@dataclass
class Backend:
    """An array namespace on one device, with Gaussian sampling and host transfer."""

    name: str
    xp: object
    device: object = None
    device_name: str = "cpu"
    dtype: object = None
    _mod: object = field(default=None, repr=False)

    # -- arrays -------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """A host array (or nested list) as an array of this backend, on its device."""
        dtype = dtype or self.dtype
        if self.name == "torch":
            import torch

            return torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)
        if self.name == "cupy":
            return self._mod.asarray(np.asarray(a), dtype=dtype)
        if self.name == "array-api-strict":
            return self.xp.asarray(np.asarray(a, dtype=np.float64 if dtype == self.xp.float64 else np.float32),
                                   dtype=dtype)
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return arrays.to_numpy(a)

    def batch_budget(self) -> int:
        """Bytes one batch of networks may use: 256 MB on the host (cache-friendly, leaves room
        for the caller), 30% of the free memory of a CUDA device."""
        if self.name == "torch" and str(self.device).startswith("cuda"):
            import torch

            return int(0.3 * torch.cuda.mem_get_info(self.device)[0])
        if self.name == "cupy":
            return int(0.3 * self._mod.cuda.runtime.memGetInfo()[0])
        return 256 * 2 ** 20

    def synchronize(self):
        """Wait for queued device work (for timings)."""
        if self.name == "torch" and self.device is not None and str(self.device).startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
        elif self.name == "cupy":
            self._mod.cuda.get_current_stream().synchronize()

    # -- random numbers -----------------------------------------------------------------
    def normals(self, seeds: Sequence[int], count: int):
        """Array (len(seeds), count) of standard normals; row i from the stream seeded by seeds[i]."""
        B = len(seeds)
        if self.name in ("numpy", "array-api-strict"):
            out = np.empty((B, count), dtype=np.float64)
            for i, s in enumerate(seeds):
                np.random.default_rng(int(s)).standard_normal(out=out[i])
            if self.name == "numpy":
                return out if self.dtype in (None, np.float64) else out.astype(self.dtype)
            return self.asarray(out)
        if self.name == "torch":
            import torch

            out = torch.empty((B, count), dtype=self.dtype, device=self.device)
            for i, s in enumerate(seeds):
                g = torch.Generator(device=self.device)
                g.manual_seed(int(s) % (2 ** 63 - 1))
                out[i].normal_(generator=g)
            return out
        if self.name == "cupy":
            cp = self._mod
            out = cp.empty((B, count), dtype=self.dtype)
            for i, s in enumerate(seeds):
                out[i] = cp.random.RandomState(int(s) % (2 ** 32 - 1)).standard_normal(count, dtype=self.dtype)
            return out
        raise AssertionError(self.name)  # pragma: no cover

    def describe(self) -> dict:
        """What the report records about this backend."""
        dt = getattr(self.dtype, "__name__", None) or str(self.dtype).rsplit(".", 1)[-1]
        info = {"backend": self.name, "device": self.device_name, "dtype": dt,
                "cpu": platform.processor() or platform.machine()}
        mod = self._mod
        if mod is not None and hasattr(mod, "__version__"):
            info["library_version"] = str(mod.__version__)
        return info


def _has_cuda_torch() -> bool:
    try:
        import torch
    except Exception:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken driver
        return False


def _has_cuda_cupy() -> bool:
    try:
        import cupy
    except Exception:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def available_backends() -> list:
    """Backends that can be constructed on this machine (``auto`` always can)."""
    out = ["auto", "numpy"]
    try:
        import torch  # noqa: F401

        out.append("torch")
    except Exception:
        pass
    if _has_cuda_cupy():
        out.append("cupy")
    try:
        import array_api_strict  # noqa: F401

        out.append("array-api-strict")
    except Exception:
        pass
    return out


def get_backend(name: str = "auto", dtype: str = "float64", device: Optional[str] = None) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`) with floating dtype ``dtype``."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    name = name.lower()
    if name == "auto":
        name = "torch" if _has_cuda_torch() else "cupy" if _has_cuda_cupy() else "numpy"
    import array_api_compat

    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend("numpy", xp, "cpu", "cpu", getattr(np, dtype), np)
    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            raise ValueError("backend: 'torch' requested but PyTorch is not installed "
                             "(pip install limitlab[gpu-torch])") from exc
        import array_api_compat.torch as xp

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dname = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        return Backend("torch", xp, dev, dname, getattr(torch, dtype), torch)
    if name == "cupy":
        if not _has_cuda_cupy():
            raise ValueError("backend: 'cupy' requested but CuPy with a CUDA device is not available "
                             "(pip install limitlab[gpu-cupy])")
        import array_api_compat.cupy as xp
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        dname = props["name"].decode() if isinstance(props.get("name"), bytes) else str(props.get("name"))
        return Backend("cupy", xp, dev, dname, getattr(cupy, dtype), cupy)
    try:
        import array_api_strict as xp
    except ImportError as exc:
        raise ValueError("backend: 'array-api-strict' requested but it is not installed") from exc
    del array_api_compat
    return Backend("array-api-strict", xp, None, "cpu", getattr(xp, dtype), xp)
