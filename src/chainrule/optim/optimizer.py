"""The optimizer base class: parameter groups, state, and the zero_grad check.

Subclasses implement ``_update(group, params)`` with PyTorch's update rule for
one group. The base class owns what every optimizer shares:

* ``param_groups``: a list of dicts, each with its own hyperparameters and a
  ``"params"`` list; ``defaults`` fill in what a group does not set;
* ``state``: per-parameter buffers (momentum, moment estimates, step count);
* ``state_dict()`` / ``load_state_dict()`` in PyTorch's layout, with
  parameters referred to by their index, arrays as ndarrays and everything
  else plain numbers, so a checkpoint can keep the arrays in safetensors and
  the rest in JSON and resume bit for bit;
* the forgotten-``zero_grad`` check (see :class:`GradNotZeroedWarning`).

Updates are written in place into ``param.data`` with ``out=`` ufuncs into
reusable scratch buffers, so a step allocates nothing after the first one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..capture import effect
from ..nn.module import STEP_MARK, zero_grad_params
from ..tensor import Tensor, _bump, enable_grad

__all__ = ["Optimizer", "GradNotZeroedWarning"]


class GradNotZeroedWarning(UserWarning):
    """``step()`` found gradients that backward() added to since the last step.

    Silence it with ``optimizer.warn_unzeroed_grad = False`` or
    ``warnings.filterwarnings("ignore", category=cr.optim.GradNotZeroedWarning)``.
    """


def _check_number(name: str, v: Any, who: str, lo: float = 0.0, hi: float | None = None,
                  hi_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{who}: {name} must be a number, got {v!r}")
    if not v >= lo or (hi is not None and (v >= hi if hi_open else v > hi)):
        rng = f"[{lo}, {hi})" if hi_open else (f"[{lo}, {hi}]" if hi is not None else f">= {lo}")
        raise ValueError(f"{who}: invalid {name} {v!r}; it must be {rng}")


def _params(opt: Optimizer) -> list[Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


class Optimizer:
    """Base class of all optimizers.

    Parameters
    ----------
    params : iterable of Tensors, or of dicts
        The tensors to optimise (``model.parameters()``), or parameter groups:
        ``[{"params": [...], "lr": 0.1}, {"params": [...]}]``.
    defaults : dict
        Hyperparameters for groups that do not set them.

    >>> opt = cr.optim.SGD(model.parameters(), lr=0.1)
    >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    # cr.compile: this object's settings are read by its own (declared) methods,
    # live on every replay, so the replay's guards do not watch them; only the
    # structure of param_groups (which parameters, in which groups) is guarded,
    # as a step may list them (clip_grad_norm_ over the optimizer's parameters)
    _compile_live_state = True
    _compile_structure = ("param_groups",)

    #: warn once when step() sees gradients that were never zeroed
    warn_unzeroed_grad: bool = True

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        self._scratch: dict[tuple[str, int], np.ndarray] = {}
        self._views: dict[tuple, np.ndarray] = {}  # (shape, dtype, k) -> view of _scratch
        self._warned = False
        if isinstance(params, Tensor):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Tensors (e.g. "
                "model.parameters()), got a single Tensor; wrap it in a list: [w]"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ----- groups ---------------------------------------------------------

    def _validate(self, group: dict[str, Any]) -> None:
        """Check a group's hyperparameters (subclasses extend)."""
        _check_number("lr", group["lr"], type(self).__name__)

    @effect
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (e.g. when unfreezing)."""
        who = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{who}.add_param_group: expected a dict, got {type(param_group)}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError(f"{who}.add_param_group: the group has no 'params'")
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{who}: parameter {i} is a {type(p).__name__}, not a Tensor")
            if not p.is_leaf:
                raise ValueError(
                    f"{who}: parameter {i} was computed by an op ({p.op}); an optimizer can "
                    "only update leaf tensors (create them with requires_grad=True)"
                )
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{who}: a parameter appears twice in the same group")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError(f"{who}: some parameters appear in more than one group")
        group["params"] = params
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._validate(group)
        self.param_groups.append(group)

    # ----- gradients ------------------------------------------------------

    @effect(touches=lambda self, set_to_none=True: _params(self),
            owns=lambda self, set_to_none=True: [self, *_params(self)])
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (to None by default, as in PyTorch)."""
        for g in self.param_groups:
            zero_grad_params(g["params"], set_to_none)

    def _check_stale_grads(self) -> None:
        stale = 0
        for group in self.param_groups:
            for p in group["params"]:
                g = p._grad
                if g is not None:
                    mark = g.__dict__.get(STEP_MARK)
                    if mark is not None and mark != g._version:
                        stale += 1
        if stale:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}.step(): the gradients of {stale} parameter(s) still "
                "hold the previous step's gradient plus the new one. backward() ADDS into "
                ".grad (gradient accumulation), so without zeroing, every step uses the sum "
                "of all past gradients. Call optimizer.zero_grad() (or model.zero_grad()) "
                "before each backward(). If you accumulate across steps on purpose, set "
                "optimizer.warn_unzeroed_grad = False or filter "
                "chainrule.optim.GradNotZeroedWarning.",
                GradNotZeroedWarning,
                stacklevel=3,
            )

    @effect(touches=lambda self, closure=None: [self, *_params(self)],
            refuse=lambda self, closure=None: None if closure is None else (
                f"{type(self).__name__}.step(closure) re-runs the step's Python inside it"))
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()``'s value if given.

        ``closure`` re-evaluates the model and returns the loss (it is called
        with gradients enabled before the update).
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        if self.warn_unzeroed_grad and not self._warned:
            self._check_stale_grads()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """One group's part of :meth:`step` (a compiled step's replay calls it too)."""
        params = [p for p in group["params"] if p._grad is not None]
        if params:
            self._update(group, params)
        for p in params:
            _bump(p)  # graphs recorded with the old values must not backpropagate
            g = p._grad
            g.__dict__[STEP_MARK] = g._version

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        raise NotImplementedError

    def _buf(self, like: np.ndarray, k: int) -> np.ndarray:
        """Scratch array ``k`` with ``like``'s shape and dtype, reused across steps.

        All parameters share one flat buffer per (dtype, k), as large as the
        largest of them. The shaped view for each parameter shape is made
        once and kept: building it (slice, reshape) every step would cost
        more than the update of a small parameter.
        """
        key = (like.shape, like.dtype, k)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._new_view(like, k)
        return view

    def _new_view(self, like: np.ndarray, k: int) -> np.ndarray:
        key = (like.dtype.str, k)
        buf = self._scratch.get(key)
        n = like.size
        if buf is None or buf.size < n:
            buf = self._scratch[key] = np.empty(n, dtype=like.dtype)
            # forget the views into the smaller buffer this one replaces
            self._views = {v: a for v, a in self._views.items() if v[1:] != (like.dtype, k)}
        return buf[:n].reshape(like.shape)

    def _l2(self, g: np.ndarray, w: np.ndarray, wd: float) -> np.ndarray:
        """``g + wd * w`` (weight decay as an L2 term in the gradient), in scratch
        buffer 1; ``g`` itself when ``wd`` is 0."""
        if wd == 0:
            return g
        t = self._buf(w, 1)
        np.multiply(w, wd, out=t)
        np.add(g, t, out=t)
        return t

    def _grad(self, p: Tensor, maximize: bool) -> np.ndarray:
        grad = p._grad
        assert grad is not None  # step() updates only the parameters that have one
        g = grad.data
        if g.shape != p.data.shape:
            raise ValueError(
                f"{type(self).__name__}: gradient shape {g.shape} does not match the "
                f"parameter's shape {p.data.shape}"
            )
        if maximize:
            out = self._buf(g, 0)
            np.negative(g, out=out)
            return out
        return g

    # ----- state ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: ``{"state": {index: {name: array|number}},
        "param_groups": [{hyperparameters..., "params": [indices]}]}``.

        Parameters are numbered in group order. Arrays are copies.
        """
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
                           "params": ids})
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {
                    k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                }
        return {"state": state, "param_groups": groups}

    @effect
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and buffers saved by :meth:`state_dict`.

        The optimizer must have been built over parameters of the same shapes
        in the same order. Keys of ``"state"`` may be ints or strings (JSON).
        """
        who = f"{type(self).__name__}.load_state_dict"
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{who}: the saved state has {len(groups)} parameter group(s), this "
                f"optimizer has {len(self.param_groups)}"
            )
        by_index: dict[int, Tensor] = {}
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{who}: group {i} has {len(saved['params'])} parameter(s) in the saved "
                    f"state but {len(mine['params'])} here"
                )
            for idx, p in zip(saved["params"], mine["params"]):
                by_index[int(idx)] = p
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, s in state_dict["state"].items():
            p = by_index.get(int(key))
            if p is None:
                raise ValueError(f"{who}: state for parameter index {key} matches no parameter")
            entry = {}
            for k, v in s.items():
                if isinstance(v, Tensor):
                    v = v.data
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    if v.shape != p.data.shape:
                        raise ValueError(
                            f"{who}: state '{k}' of parameter {key} has shape {v.shape}, "
                            f"the parameter has shape {p.data.shape}"
                        )
                    v = v.astype(p.data.dtype, copy=True)
                elif isinstance(v, np.ndarray):
                    v = v.item()
                entry[k] = v
            new_state[p] = entry
        for saved, mine in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = tuple(v) if isinstance(v, list) else copy.deepcopy(v)
            self._validate(mine)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"

