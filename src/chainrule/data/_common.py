"""Small pieces shared by the data modules: the error type, array conversion,
random generators and wrapping arrays as tensors."""

from __future__ import annotations

import importlib
import numbers
from typing import Any

import numpy as np

from ..tensor import Tensor

SeedLike = int | np.random.Generator | None


class DataFormatError(ValueError):
    """A data file is not what it claims to be (bad header, wrong size, bad row).

    The message names the file, what was expected and what was found.
    """


def as_array(a: Any) -> np.ndarray:
    """A NumPy view of ``a`` following the package dtype rule.

    Tensors give their ``.data`` and ndarrays keep their dtype; anything else
    (lists, Python scalars) goes through ``np.asarray``, and the float64 that
    Python floats turn into becomes float32, as in :func:`chainrule.tensor`.
    """
    if isinstance(a, Tensor):
        return a.data
    if isinstance(a, np.ndarray):
        return a
    arr = np.asarray(a)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


def wrap(arr: np.ndarray) -> Tensor:
    """A constant Tensor around ``arr`` without another copy.

    Batches are fresh arrays (fancy indexing copies), so sharing is safe.
    """
    return Tensor._const(arr)


def check_seed(seed: Any, where: str) -> None:
    if seed is None or isinstance(seed, np.random.Generator):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(
            f"{where}: seed must be None, a non-negative int or a numpy Generator, "
            f"got {seed!r}"
        )


def global_generator() -> np.random.Generator:
    """chainrule's global generator when ``chainrule.random`` exists (so that
    ``cr.random.seed(...)`` also fixes data order), else a fresh NumPy one."""
    try:
        mod = importlib.import_module("chainrule.random")
    except ImportError:
        return np.random.default_rng()
    get = getattr(mod, "default_generator", None)
    gen = get() if callable(get) else None
    return gen if isinstance(gen, np.random.Generator) else np.random.default_rng()


def make_rng(seed: SeedLike, where: str = "seed") -> np.random.Generator:
    """A Generator from ``seed``: an int seeds a new one, a Generator is used
    as is (and advanced), None means the global generator."""
    check_seed(seed, where)
    if seed is None:
        return global_generator()
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(int(seed))
