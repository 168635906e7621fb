"""How library code tells ``cr.compile`` about calls that change state.

``cr.compile`` records a training step once and then replays it without running
the step's Python. Ops (everything that goes through :func:`chainrule.ops.apply`)
and ``backward()`` are recorded by the engine itself. Everything else a step may
do that changes state outside the graph -- ``optimizer.step()``,
``zero_grad()``, ``scheduler.step()``, gradient clipping, in-place tensor
updates such as ``ema.mul_(0.99)``, random draws such as a Dropout mask, a
data-parallel gradient all-reduce -- *declares itself* with the
:func:`effect` decorator. During a capture the decorated call is run as usual
and recorded; every replay calls it again, on the same objects, with the
step's new values where the step passed values it computed. Nothing inside a
declared call is recorded: it is replayed as one unit, reading its objects'
state live (learning rates, momentum buffers, parameter groups added later).

Outside a capture the decorator costs one attribute check per call.

A state change that is *not* declared (an attribute set, a list appended to,
an array written with NumPy) is seen by the capture, which then refuses to
replay the step and says what changed and where: see ``docs/compile.md``.

Examples
--------
A component that must run after the gradients are complete, on every step
(for example an all-reduce of the gradients across processes), declares the
call; the replay performs it at the same point of the step:

>>> from chainrule.capture import effect
>>> class GradientAverager:
...     def __init__(self, params):
...         self.params = list(params)
...     @effect(touches=lambda self: self.params)
...     def average(self):
...         for p in self.params:
...             if p.grad is not None:
...                 p.grad.data *= 0.5
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["effect", "Effect"]

# The engine's thread-local mode (grad mode, the capture in progress), set by
# chainrule.tensor when it loads; this module imports nothing of chainrule so
# that any module, tensor.py included, can use the decorator.
_mode: Any = None


class Effect:
    """What :func:`effect` knows about a declared call (kept on the wrapper as
    ``__effect__``).

    Attributes
    ----------
    fn : callable
        The undecorated function; a replay calls it directly.
    name : str
        ``module.qualname``, used in messages.
    touches : callable or None
        ``touches(*args, **kwargs)`` -> the objects the call may change (Tensors,
        optimizers, schedulers, generators, any object whose attributes it sets).
        A failed verification puts them back as they were. Default: the first
        argument (``self`` for a method), or the Tensors in it when it is a list.
    refuse : callable or None
        ``refuse(*args, **kwargs)`` -> a reason (str) when this particular call
        cannot be replayed (``optimizer.step(closure)``), else None.
    owns : callable or None
        ``owns(*args, **kwargs)`` -> the objects whose state the call reads live
        every time it runs (an optimizer's learning rates): the replay's guards
        leave them alone, so changing them between steps does not force a new
        capture. Default: what ``touches`` returns.
    """

    __slots__ = ("fn", "name", "touches", "refuse", "owns")

    def __init__(self, fn: Callable, touches: Callable | None, refuse: Callable | None,
                 owns: Callable | None = None) -> None:
        self.fn = fn
        self.name = f"{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"
        self.touches = touches
        self.refuse = refuse
        self.owns = owns

    def touched(self, args: tuple, kwargs: dict) -> list[Any]:
        """The objects this call may change (restored by a failed verification)."""
        if self.touches is not None:
            return _as_list(self.touches(*args, **kwargs))
        if not args:
            return []
        first = args[0]
        if isinstance(first, (list, tuple)):
            return list(first)
        return [first]

    def owned(self, args: tuple, kwargs: dict) -> list[Any]:
        """The objects this call reads live (left out of the replay's guards)."""
        if self.owns is not None:
            return _as_list(self.owns(*args, **kwargs))
        return self.touched(args, kwargs)

    def __repr__(self) -> str:
        return f"<effect {self.name}>"


def _as_list(out: Any) -> list[Any]:
    if out is None:
        return []
    if isinstance(out, (list, tuple, set)) or _is_iterator(out):
        return list(out)
    return [out]


def _is_iterator(x: Any) -> bool:
    return hasattr(x, "__next__") and hasattr(x, "__iter__")


def effect(fn: Callable | None = None, *, touches: Callable[..., Iterable[Any] | Any] | None = None,
           refuse: Callable[..., str | None] | None = None,
           owns: Callable[..., Iterable[Any] | Any] | None = None) -> Any:
    """Declare ``fn`` a state-changing call that a compiled step performs again on
    every replay.

    Parameters
    ----------
    fn : callable
        The function or method (use ``@effect`` or ``@effect(touches=...)``).
    touches : callable, optional
        ``touches(*args, **kwargs)`` returns the objects the call changes, so
        that a failed verification can restore them (default: the first
        argument).
    refuse : callable, optional
        ``refuse(*args, **kwargs)`` returns a reason string when a given call
        cannot be replayed; the capture then runs the step eagerly and says why.
    owns : callable, optional
        ``owns(*args, **kwargs)`` returns the objects whose settings the call
        reads when it runs, so that the replay's guards do not watch them
        (default: what ``touches`` returns). An optimizer's step owns the
        optimizer: its learning rate may change between steps without a new
        capture.

    Rules for the declared function, which the replay relies on:

    * it reads the state it needs when it is called (a replay calls it again
      with the same objects; arguments that are values the step computed are
      passed afresh);
    * whatever it returns that the step uses must be a Tensor or an array (it
      becomes a value of the replay), ``None``, or one of its arguments;
    * it must not call back into the step's Python.

    Iterators passed to it (``model.parameters()``) are turned into lists once,
    at capture: the module guards recapture the step if the model changes.
    """

    def wrap(f: Callable) -> Callable:
        spec = Effect(f, touches, refuse, owns)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _mode.tracer
            if tracer is None:
                return f(*args, **kwargs)
            return tracer.effect(spec, args, kwargs)

        wrapper.__effect__ = spec  # type: ignore[attr-defined]  # a marker on the function
        return wrapper

    return wrap if fn is None else wrap(fn)
