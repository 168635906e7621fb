"""BLAS vector updates for ``SGD(fused=True)``, from the OpenBLAS inside NumPy's wheel.

``y += a * x`` in NumPy is two passes over memory (``t = a * x``, then
``y += t``) on one core. BLAS's ``axpy`` does it in one pass, and OpenBLAS
spreads a long vector over its threads: for the 200,704 weights of a
784 -> 256 layer, about 8 us instead of 28 on this project's two-core
machine. It rounds ``a * x + y`` once (a fused multiply-add), as PyTorch's
fused optimizers do, where the two NumPy passes round twice: results agree
to rounding, not bit for bit.

NumPy has no Python function for ``axpy``, but NumPy's wheels on PyPI carry
OpenBLAS as a shared library (``numpy.libs/libscipy_openblas64_*``) that
exports the CBLAS functions; they are called here through ``ctypes``. The
same library runs NumPy's matrix products, so its thread pool is shared: a
second BLAS (SciPy's own copy, for instance) would bring a second pool whose
idle threads spin on the same cores as the first one's work, which made a
training step 40x slower when we tried it. Each function is checked on a
small vector against NumPy when first loaded; when the library or a symbol
is not there (NumPy built against another BLAS) :func:`available` is False.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from typing import Any

import numpy as np

_TYPES = {"s": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}
# (symbol prefix, suffix, integer type): the ILP64 build in NumPy 2 wheels
# first, then the names older or LP64 builds use
_NAMES = (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
          ("scipy_cblas_", "", ctypes.c_int), ("cblas_", "", ctypes.c_int))

_FUNCS: dict[str, tuple[Any, Any]] | None = None
_WHY = ""
_LOCK = threading.Lock()


def _libraries() -> list[str]:
    root = os.path.dirname(np.__file__)
    found: list[str] = []
    for pattern in (os.path.join(os.path.dirname(root), "numpy.libs", "libscipy_openblas*"),
                    os.path.join(root, ".dylibs", "libscipy_openblas*"),
                    os.path.join(os.path.dirname(root), "numpy.libs", "libopenblas*")):
        found += sorted(glob.glob(pattern))
    return found


def _bind(lib: ctypes.CDLL) -> dict[str, tuple[Any, Any]] | None:
    for prefix, suffix, blasint in _NAMES:
        funcs = {}
        for t, (dtype, real) in _TYPES.items():
            axpy = getattr(lib, f"{prefix}{t}axpy{suffix}", None)
            scal = getattr(lib, f"{prefix}{t}scal{suffix}", None)
            if axpy is None or scal is None:
                break
            axpy.argtypes = [blasint, real, ctypes.c_void_p, blasint, ctypes.c_void_p, blasint]
            axpy.restype = None
            scal.argtypes = [blasint, real, ctypes.c_void_p, blasint]
            scal.restype = None
            funcs[np.dtype(dtype).str] = (axpy, scal)
        if len(funcs) == len(_TYPES) and _works(funcs):
            _bind_matrix(lib, prefix, suffix, blasint)
            return funcs
    return None


# gemm / gemv, for cr.compile's fused update (W -= lr * delta^T a as one product);
# bound with the names axpy was found under, checked like it
_MAT: dict[str, tuple[Any, Any]] = {}
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _bind_matrix(lib: ctypes.CDLL, prefix: str, suffix: str, blasint: Any) -> None:
    found = {}
    for t, (dtype, real) in _TYPES.items():
        gemm = getattr(lib, f"{prefix}{t}gemm{suffix}", None)
        gemv = getattr(lib, f"{prefix}{t}gemv{suffix}", None)
        if gemm is None or gemv is None:
            return
        gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, blasint, blasint, blasint,
                         real, ctypes.c_void_p, blasint, ctypes.c_void_p, blasint, real,
                         ctypes.c_void_p, blasint]
        gemm.restype = None
        gemv.argtypes = [ctypes.c_int, ctypes.c_int, blasint, blasint, real, ctypes.c_void_p,
                         blasint, ctypes.c_void_p, blasint, real, ctypes.c_void_p, blasint]
        gemv.restype = None
        found[np.dtype(dtype).str] = (gemm, gemv)
    for key in found:  # checked against NumPy on small matrices
        rng = np.random.default_rng(0)
        a, b = rng.random((3, 4)).astype(key), rng.random((3, 5)).astype(key)
        c = rng.random((4, 5)).astype(key)
        want = c + 0.5 * (a.T @ b)
        _gemm_at_b(found[key][0], 0.5, a, b, c)
        v = rng.random(4).astype(key)
        want_v = v + 0.5 * (a.T @ np.ones(3, key))
        _gemv_at_1(found[key][1], 0.5, a, np.ones(3, key), v)
        if not (np.allclose(c, want, rtol=1e-5) and np.allclose(v, want_v, rtol=1e-5)):
            return
    _MAT.update(found)


def _gemm_at_b(gemm: Any, alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    # c (m, n) += alpha * a^T (m, k) @ b (k, n), all C-ordered: a is (k, m)
    k, m = a.shape
    n = b.shape[1]
    gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, k, alpha, address(a), m, address(b), n,
         1.0, address(c), n)


def _gemv_at_1(gemv: Any, alpha: float, a: np.ndarray, ones: np.ndarray, y: np.ndarray) -> None:
    # y (m,) += alpha * a^T (m, k) @ ones (k,): a is (k, m)
    k, m = a.shape
    gemv(_ROW_MAJOR, _TRANS, k, m, alpha, address(a), m, address(ones), 1, 1.0,
         address(y), 1)


_char_over = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first element, for a C-contiguous array.

    Through ctypes' view of a writeable buffer (about 0.4 us) rather than
    ``a.ctypes.data`` (about 1.5 us, a new ctypes helper object each time),
    which serves read-only and empty arrays: a training step makes a dozen of
    these calls."""
    try:
        return _addressof(_char_over(a))  # type: ignore[arg-type]  # ndarray exports a buffer
    except (TypeError, ValueError, BufferError):  # read-only, empty or not contiguous
        return int(a.ctypes.data)


def matrix_available() -> bool:
    """Whether :func:`gemm_update` and :func:`gemv_update` can run here."""
    _load()
    return bool(_MAT)


def fits(*arrays: np.ndarray) -> bool:
    """C-contiguous arrays of one BLAS dtype, the last one writeable: what the
    matrix updates below accept."""
    dt = arrays[0].dtype
    return (dt.str in _MAT and all(a.dtype == dt and a.flags.c_contiguous for a in arrays)
            and arrays[-1].flags.writeable)


def gemm_update(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """``c += alpha * a.T @ b`` in place, as one BLAS product with beta = 1
    (``a`` (k, m), ``b`` (k, n), ``c`` (m, n), as :func:`fits` says)."""
    _gemm_at_b(_MAT[c.dtype.str][0], alpha, a, b, c)


def gemv_update(alpha: float, a: np.ndarray, ones: np.ndarray, y: np.ndarray) -> None:
    """``y += alpha * a.T @ ones`` in place (the column sums of ``a``, scaled)."""
    _gemv_at_1(_MAT[y.dtype.str][1], alpha, a, ones, y)


class Axpy:
    """``y += a * x`` into one array ``y`` (as :func:`supports` says) for ``x`` of
    its shape and dtype, C-contiguous, with the ctypes arguments made once: a
    call writes ``a`` and the address of ``x`` into them (one caller at a time).
    The caller keeps ``y`` alive and unchanged in size (its address is kept)."""

    __slots__ = ("fn", "args", "y")

    def __init__(self, y: np.ndarray) -> None:
        self.fn = _table()[y.dtype.str][0]
        blasint, real = self.fn.argtypes[0], self.fn.argtypes[1]
        self.y = y
        self.args = [blasint(y.size), real(0.0), ctypes.c_void_p(), blasint(1),
                     ctypes.c_void_p(address(y)), blasint(1)]

    def __call__(self, a: float, x: np.ndarray) -> None:
        self.at(a, address(x))

    def at(self, a: float, x: int) -> None:
        """The update from the array ``x`` at that address (the caller keeps it alive)."""
        args = self.args
        args[1].value = a
        args[2].value = x
        self.fn(*args)


class LayerUpdate:
    """``c += alpha * a.T @ b`` and ``y += alpha * a.T @ ones`` for one set of
    shapes (``a`` (k, m), ``b`` (k, n), ``c`` (m, n), ``y`` (m,), arrays as
    :func:`fits` says), with the ctypes arguments made once.

    A Linear layer's fused update runs at every replay of a compiled step;
    converting fourteen Python numbers into C arguments at each call costs
    more than the update's arithmetic on a small layer (about 3 us per
    product against 1 us with the arguments kept). A call writes the four
    addresses and alpha into the kept arguments: one caller at a time (a
    compiled step replays under its lock)."""

    __slots__ = ("gemm", "gemv", "gargs", "vargs", "ones", "real", "targets")

    def __init__(self, dtype: np.dtype, k: int, m: int, n: int) -> None:
        self.gemm, self.gemv = _MAT[dtype.str]
        real = self.real = _TYPES["s" if dtype == np.float32 else "d"][1]
        blasint = self.gemm.argtypes[3]
        ptr = ctypes.c_void_p
        self.ones = np.ones(k, dtype)  # kept: its address goes into the arguments once
        self.gargs = [ctypes.c_int(_ROW_MAJOR), ctypes.c_int(_TRANS), ctypes.c_int(_NO_TRANS),
                      blasint(m), blasint(n), blasint(k), real(0.0), ptr(), blasint(m), ptr(),
                      blasint(n), real(1.0), ptr(), blasint(n)]
        self.vargs = [ctypes.c_int(_ROW_MAJOR), ctypes.c_int(_TRANS), blasint(k), blasint(m),
                      real(0.0), ptr(), blasint(m), ptr(address(self.ones)), blasint(1),
                      real(1.0), ptr(), blasint(1)]
        # (c, y) whose addresses the arguments hold: kept alive, so a new array
        # can never take an old one's place unnoticed
        self.targets: tuple[Any, Any] = (None, None)

    def __call__(self, alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray,
                 y: np.ndarray | None) -> None:
        """``c += alpha * a.T @ b``, then (``y`` not None) ``y += alpha * a.T @ 1``."""
        ga, va = self.gargs, self.vargs
        targets = self.targets
        if targets[0] is not c or targets[1] is not y:
            ga[12].value = address(c)
            if y is not None:
                va[10].value = address(y)
            self.targets = (c, y)
        ga[6].value = alpha
        ga[7].value = pa = address(a)
        ga[9].value = address(b)
        self.gemm(*ga)
        if y is not None:
            va[4].value = alpha
            va[5].value = pa
            self.gemv(*va)


def _works(funcs: dict[str, tuple[Any, Any]]) -> bool:
    """The bound functions compute what NumPy computes on a small vector."""
    for key, (axpy, scal) in funcs.items():
        y = np.arange(7, dtype=key)
        x = np.full(7, 0.5, dtype=key)
        axpy(7, 4.0, x.ctypes.data, 1, y.ctypes.data, 1)
        scal(7, 0.5, y.ctypes.data, 1)
        if not np.array_equal(y, (np.arange(7, dtype=key) + 2.0) * 0.5):
            return False
    return True


def _load() -> dict[str, tuple[Any, Any]] | None:
    global _FUNCS, _WHY
    if _FUNCS is None:
        with _LOCK:  # two threads starting at once must both see the finished table
            if _FUNCS is None:
                found: dict[str, tuple[Any, Any]] = {}
                paths = _libraries()
                for path in paths:
                    try:
                        found = _bind(ctypes.CDLL(path)) or {}
                    except OSError:
                        continue
                    if found:
                        break
                if not found:
                    _WHY = ("this NumPy does not carry OpenBLAS as a library chainrule can "
                            f"call (looked for {paths or 'numpy.libs/libscipy_openblas*'})")
                _FUNCS = found
    return _FUNCS or None


def available() -> bool:
    """Whether ``fused=True`` can run its updates with BLAS in this process."""
    return _load() is not None


def require(who: str) -> None:
    """Raise the error that says why ``fused=True`` cannot work here."""
    if not available():
        raise RuntimeError(
            f"{who}(fused=True) runs its updates with the OpenBLAS inside NumPy's wheel, "
            f"and {_WHY}. Install NumPy from PyPI (pip install --force-reinstall numpy) "
            "or pass fused=False"
        )


#: Smaller arrays are updated faster by NumPy's two passes (about 1 us) than
#: through a ctypes call (about 2.5 us with its pointer lookups).
MIN_SIZE = 16384


def supports(y: np.ndarray) -> bool:
    """Whether :func:`axpy` and :func:`scal` should update ``y`` in place: a
    float32/float64, C-contiguous, writeable array of at least MIN_SIZE elements."""
    if y.size < MIN_SIZE:
        return False
    funcs = _load()
    return (funcs is not None and y.dtype.str in funcs and y.flags.c_contiguous
            and y.flags.writeable)


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place, for a ``y`` that :func:`supports` and an ``x`` of its shape."""
    if x.shape != y.shape:
        raise ValueError(f"axpy: x has shape {x.shape}, y has shape {y.shape}")
    x = np.ascontiguousarray(x, dtype=y.dtype)
    _table()[y.dtype.str][0](y.size, a, address(x), 1, address(y), 1)


def axpy_at(n: int, a: float, x: np.ndarray, y: int) -> None:
    """``y += a * x`` for an ``x`` of :func:`supports`'s kind (C-contiguous, its
    dtype the target's) and the target given by its address and size ``n``
    (kept by a caller that updates the same array at every step)."""
    _table()[x.dtype.str][0](n, a, address(x), 1, y, 1)


def scal(a: float, y: np.ndarray) -> None:
    """``y *= a`` in place, for a ``y`` that :func:`supports`."""
    _table()[y.dtype.str][1](y.size, a, address(y), 1)


def _table() -> dict[str, tuple[Any, Any]]:
    funcs = _load()
    if funcs is None:  # callers ask supports() (or require()) first
        raise RuntimeError(f"BLAS updates: no OpenBLAS to call: {_WHY}")
    return funcs
