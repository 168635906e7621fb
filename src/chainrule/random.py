"""One global random-number generator for everything random in chainrule.

Weight initialisation, :class:`~chainrule.nn.Dropout` and anything else that
draws random numbers use :func:`default_generator` unless they are handed a
``generator=`` (any ``numpy.random.Generator``). Seeding it with
:func:`manual_seed` makes a run repeat bit for bit:

>>> import chainrule as cr
>>> cr.manual_seed(0); a = cr.nn.Linear(3, 2).weight.numpy().copy()
>>> cr.manual_seed(0); b = cr.nn.Linear(3, 2).weight.numpy().copy()
>>> (a == b).all()
True

As in PyTorch, the generator starts from a fixed seed, so a fresh process is
reproducible even without ``manual_seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .capture import effect

__all__ = ["manual_seed", "default_generator", "initial_seed", "get_state", "set_state", "seed"]

_DEFAULT_SEED = 0x5EED_C4A1
_initial = [_DEFAULT_SEED]
# One object for the life of the process: manual_seed re-seeds it in place, so
# code that kept a reference (a layer, a data loader) follows the new seed.
_GENERATOR = np.random.Generator(np.random.PCG64(_DEFAULT_SEED))


def default_generator() -> np.random.Generator:
    """The global ``numpy.random.Generator`` (the same object for the whole process)."""
    return _GENERATOR


@effect(touches=lambda seed: _GENERATOR)
def manual_seed(seed: int) -> np.random.Generator:
    """Re-seed the global generator; returns it.

    Parameters
    ----------
    seed : int
        A non-negative integer.

    >>> cr.manual_seed(42)  # doctest: +ELLIPSIS
    Generator(PCG64) at ...
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative integer, got {seed!r}")
    _GENERATOR.bit_generator.state = np.random.PCG64(int(seed)).state
    _initial[0] = int(seed)
    return _GENERATOR


@effect(touches=lambda: _GENERATOR,
        refuse=lambda: "cr.random.seed() seeds from fresh OS entropy, so no two runs agree")
def seed() -> int:
    """Seed the global generator from OS entropy; returns the seed used."""
    entropy = np.random.SeedSequence().entropy
    assert isinstance(entropy, int)  # drawn from the OS when none is given
    s = entropy % (2**63)
    manual_seed(s)
    return s


def initial_seed() -> int:
    """The seed last given to :func:`manual_seed` (or the built-in default)."""
    return _initial[0]


def get_state() -> dict[str, Any]:
    """The generator's state as a JSON-serialisable dict (for checkpoints)."""
    return dict(_GENERATOR.bit_generator.state)


@effect(touches=lambda state: _GENERATOR)
def set_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`get_state`."""
    _GENERATOR.bit_generator.state = state


def _resolve(generator: np.random.Generator | None) -> np.random.Generator:
    """``generator`` if given, else the global one."""
    return _GENERATOR if generator is None else generator
