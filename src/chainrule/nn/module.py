"""``Parameter`` and ``Module``: stateful building blocks found by walking attributes.

A module's parameters are the :class:`Parameter` objects reachable from its
attributes: directly, through sub-modules, or inside lists, tuples and dicts
of them. Nothing has to be registered, so ``state_dict`` comes for free:

>>> class MLP(cr.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.hidden = cr.nn.Linear(4, 8)
...         self.out = cr.nn.Linear(8, 3)
...     def forward(self, x):
...         return self.out(cr.relu(self.hidden(x)))
>>> [name for name, _ in MLP().named_parameters()]
['hidden.weight', 'hidden.bias', 'out.weight', 'out.bias']
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ..capture import effect
from ..tensor import RemovableHandle, Tensor, _bump, _mode, aligned_copy

__all__ = ["Parameter", "Module", "IncompatibleKeys", "zero_grad_params", "state_dict_name"]

# Set on a gradient tensor by optimizer.step() to the gradient's in-place
# version at that moment; zeroing the gradient clears it. If backward() adds
# into a gradient that still carries the mark, nobody zeroed it in between.
STEP_MARK = "_cr_step_version"


class Parameter(Tensor):
    """A tensor that is a learnable parameter of a :class:`Module`.

    Parameters
    ----------
    data : array_like or Tensor
        The initial value (copied, into memory that starts on a 64-byte
        boundary as PyTorch's does: see ``chainrule.tensor.aligned_empty``).
        Python floats become float32.
    requires_grad : bool
        Defaults to True (unlike a plain tensor).

    >>> w = cr.nn.Parameter(np.zeros((3, 2), dtype=np.float32))
    >>> w.requires_grad
    True
    """

    def __init__(self, data: Any = None, requires_grad: bool = True, dtype: Any = None) -> None:
        if data is None:
            data = np.empty((0,), dtype=np.float32)
        super().__init__(data.data if isinstance(data, Tensor) else data,
                         requires_grad=requires_grad, dtype=dtype)
        if _mode.tracer is None:  # (a tensor made inside a traced step keeps the tracer's)
            self.data = aligned_copy(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="Parameter(")
        return f"Parameter({body}, dtype={self.data.dtype}, requires_grad={self.requires_grad})"

    @property
    def name(self) -> str | None:
        """The name given with ``p.name = ...`` / ``p.named(...)``, else the state-dict name.

        A parameter held by a module is named after its place in the
        outermost module that holds it, as in ``state_dict()``: ``"0.weight"``
        for the first layer of a ``Sequential``, ``"hidden.bias"`` for
        ``self.hidden = nn.Linear(...)``. ``cr.explain`` and the drawings
        show it. None for a parameter no module holds.
        """
        d = self.__dict__
        explicit = d.get("_name")
        if explicit is not None:
            return explicit
        # cached until the structure of some module changes (STRUCTURE counts that)
        cached = d.get("_cr_sd_name")
        if cached is None or cached[0] != STRUCTURE[0]:
            cached = d["_cr_sd_name"] = (STRUCTURE[0], state_dict_name(self))
        return cached[1]

    @name.setter
    def name(self, value: str | None) -> None:
        self._set_name(value)  # the same checks as any tensor's name


# Where a parameter or module sits, for state_dict_name: the module that holds
# each Parameter or Module (set by Module.__setattr__). Kept in a table of
# weak references rather than in the modules' own attributes, so that walking
# a module's attributes (parameters(), state_dict()) costs nothing more.
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def _set_owner(child: Any, holder: Module) -> None:
    k = id(child)
    entry = _OWNERS.get(k)
    if entry is not None and entry[0]() is child:
        _OWNERS[k] = (entry[0], weakref.ref(holder))
        return

    def forget(_: Any, k: int = k) -> None:
        e = _OWNERS.get(k)
        if e is not None and e[0]() is None:
            del _OWNERS[k]

    _OWNERS[k] = (weakref.ref(child, forget), weakref.ref(holder))


def _owner(child: Any) -> Module | None:
    entry = _OWNERS.get(id(child))
    if entry is None or entry[0]() is not child:
        return None
    return entry[1]()


def _adopt(module: Module, value: Any) -> None:
    """Note that ``module`` holds ``value`` (one level into lists, tuples, dicts)."""
    items = value.values() if isinstance(value, dict) else (
        value if isinstance(value, (list, tuple)) else (value,))
    for v in items:
        if isinstance(v, (Parameter, Module)):
            _set_owner(v, module)


def _key_in(holder: Module, member: Any) -> str | None:
    for key, v in holder._members():
        if v is member:
            return key
    return None


def state_dict_name(t: Any) -> str | None:
    """The dotted ``state_dict`` name of a parameter (or sub-module) in its outermost module.

    Walks up from the module holding ``t`` to its parents. None when no module
    holds ``t`` (or it was taken out of the module that last held it).

    >>> model = cr.nn.Sequential(cr.nn.Linear(2, 3), cr.nn.ReLU())
    >>> state_dict_name(model[0].weight)
    '0.weight'
    """
    parts: list[str] = []
    seen: set[int] = set()
    node = t
    while True:
        holder = _owner(node)
        if holder is None or id(holder) in seen:
            break
        seen.add(id(holder))
        key = _key_in(holder, node)
        if key is None:  # it no longer holds this one
            break
        parts.append(key)
        node = holder
    return ".".join(reversed(parts)) or None


class _Hook:
    """A registered forward (pre-)hook; compared by identity, so each handle removes its own."""

    __slots__ = ("fn", "with_kwargs")

    def __init__(self, fn: Callable, with_kwargs: bool) -> None:
        self.fn = fn
        self.with_kwargs = with_kwargs


class _ModuleHookHandle(RemovableHandle):
    """Removing a module hook changes what a call of the module does: cr.compile recaptures."""

    __slots__ = ("_module",)

    def __init__(self, hooks: list, fn: Any, module: Module) -> None:
        super().__init__(hooks, fn)
        self._module = weakref.ref(module)

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)
            STRUCTURE[0] += 1
            m = self._module()
            if m is not None:
                m.__dict__["_hooked"] = bool(m._forward_pre_hooks or m._forward_hooks)

    __call__ = remove


@effect
def zero_grad_params(params: Any, set_to_none: bool = True) -> None:
    """Reset the gradients of ``params``: drop them, or fill them with zeros in place."""
    for p in params:
        g = p._grad
        if g is None:
            continue
        if set_to_none:
            p._grad = None
        else:
            g.data.fill(0)
            _bump(g)
            g.__dict__.pop(STEP_MARK, None)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` could not match."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# Bumped whenever a module gains, loses or swaps a sub-module, parameter,
# container of them or a hook: cached state-dict names are made again, and a
# step cr.compile captured re-checks its module guards.
STRUCTURE = [0]

# Counts attribute assignments on modules (a setting, a layer, a parameter, the
# training flag): a compiled step re-checks its module guards only after one.
# Containers changed in place (a list of layers) are checked on every call.
SETTINGS_EPOCH = [0]


class Module:
    """Base class of layers and models: subclass it and define ``forward``.

    Calling the module calls ``forward``. Parameters, sub-modules and buffers
    are found by walking the instance's attributes in the order they were set.

    >>> layer = cr.nn.Linear(2, 3)
    >>> y = layer(cr.ones((5, 2)))      # (5, 2) -> (5, 3)
    """

    training: bool = True
    # forward hooks (register_forward_hook / register_forward_pre_hook); the
    # instance gets its own list on the first registration
    _forward_hooks: list[_Hook] | None = None
    _forward_pre_hooks: list[_Hook] | None = None
    _hooked = False  # some forward (pre-)hook is registered: one check per call

    def __init__(self) -> None:
        self.training = True

    # ----- the forward pass -----------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}.forward is not defined: subclasses of Module "
            "must implement forward(self, ...)"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        SETTINGS_EPOCH[0] += 1
        if isinstance(value, (Tensor, Module, list, tuple, dict)):
            STRUCTURE[0] += 1
            _adopt(self, value)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        SETTINGS_EPOCH[0] += 1
        STRUCTURE[0] += 1
        object.__delattr__(self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _mode.tracer is not None:  # cr.compile guards this module's settings
            _mode.tracer.module(self)
        if self._hooked:
            return self._call_with_hooks(args, kwargs)
        return self.forward(*args, **kwargs)

    def _call_with_hooks(self, args: tuple, kwargs: dict) -> Any:
        for h in list(self._forward_pre_hooks or ()):
            if h.with_kwargs:
                new = h.fn(self, args, kwargs)
                if new is not None:
                    if not (isinstance(new, tuple) and len(new) == 2):
                        raise RuntimeError(
                            f"forward pre-hook {h.fn!r} registered with_kwargs=True must "
                            f"return None or (args, kwargs), got {type(new).__name__}"
                        )
                    args, kwargs = new
            else:
                new = h.fn(self, args)
                if new is not None:
                    args = new if isinstance(new, tuple) else (new,)
        out = self.forward(*args, **kwargs)
        for h in list(self._forward_hooks or ()):
            new = h.fn(self, args, kwargs, out) if h.with_kwargs else h.fn(self, args, out)
            if new is not None:
                out = new
        return out

    def _add_hook(self, attr: str, hook: Callable, prepend: bool, with_kwargs: bool) -> Any:
        if not callable(hook):
            raise TypeError(f"{attr.strip('_')}: expected a callable, got {type(hook).__name__}")
        hooks = self.__dict__.get(attr)
        if hooks is None:  # the instance's own list (not through __setattr__: no bookkeeping)
            hooks = self.__dict__[attr] = []
        entry = _Hook(hook, with_kwargs)
        hooks.insert(0, entry) if prepend else hooks.append(entry)
        self.__dict__["_hooked"] = True
        STRUCTURE[0] += 1  # a step cr.compile captured without this hook must be captured again
        return _ModuleHookHandle(hooks, entry, self)

    def register_forward_pre_hook(
        self, hook: Callable, *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """Call ``hook(module, args)`` before every ``forward``; as in PyTorch.

        The hook may return None (inputs unchanged) or new positional inputs
        (a tuple, or a single value that is wrapped in one). With
        ``with_kwargs=True`` it is ``hook(module, args, kwargs)`` and returns
        None or ``(args, kwargs)``. ``prepend=True`` runs it before the hooks
        already registered. Returns a handle; ``handle.remove()`` takes the
        hook out (the handle is also a context manager).

        >>> handle = layer.register_forward_pre_hook(lambda m, args: print(args[0].shape))
        >>> handle.remove()
        """
        return self._add_hook("_forward_pre_hooks", hook, prepend, with_kwargs)

    def register_forward_hook(
        self, hook: Callable, *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after every ``forward``; as in PyTorch.

        The hook may return None (output unchanged) or a replacement output.
        With ``with_kwargs=True`` it is ``hook(module, args, kwargs, output)``.
        Returns a handle; ``handle.remove()`` takes the hook out.

        A module with hooks is always called through its ``forward``: inside
        ``nn.Sequential`` a hooked Linear or ReLU is not fused into
        ``linear_relu``, and ``fit`` runs the step eagerly rather than
        replaying a compiled one (which would skip the hooks).

        >>> seen = []
        >>> handle = layer.register_forward_hook(lambda m, args, out: seen.append(out.shape))
        >>> with handle:             # removed at the end of the block
        ...     y = layer(x)
        """
        return self._add_hook("_forward_hooks", hook, prepend, with_kwargs)

    def has_forward_hooks(self) -> bool:
        """True when a forward hook or pre-hook is registered on this module."""
        return self._hooked

    # ----- walking the attributes -----------------------------------------

    def _members(self) -> Iterator[tuple[str, Any]]:
        """(name, value) for every Module or Parameter held directly by this module.

        Containers (list, tuple, dict) are looked into one level deep, their
        items named ``attr.0`` / ``attr.key``.
        """
        for name, v in vars(self).items():
            if isinstance(v, (Module, Parameter)):
                yield name, v
            elif isinstance(v, (list, tuple)):
                for i, item in enumerate(v):
                    if isinstance(item, (Module, Parameter)):
                        yield f"{name}.{i}", item
            elif isinstance(v, dict) and name != "_buffers":
                for k, item in v.items():
                    if isinstance(item, (Module, Parameter)):
                        yield f"{name}.{k}", item

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct sub-modules with their names."""
        seen: set[int] = set()
        for name, v in self._members():
            if isinstance(v, Module) and id(v) not in seen:
                seen.add(id(v))
                yield name, v

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every module below it (each once), with dotted names."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:  # depth-first, in attribute order
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _named_tensors(self, dedupe: bool, buffers: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        for mname, m in self.named_modules():
            pre = f"{mname}." if mname else ""
            for name, v in m._members():
                if isinstance(v, Parameter) and not (dedupe and id(v) in seen):
                    seen.add(id(v))
                    yield pre + name, v
            if buffers:
                for name in m.__dict__.get("_buffers", ()):
                    b = getattr(m, name)
                    if b is not None:
                        yield pre + name, b

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two layers appears once."""
        # buffers=False: Parameters only
        yield from self._named_tensors(dedupe=True, buffers=False)  # type: ignore[misc]

    def parameters(self) -> Iterator[Parameter]:
        """Every parameter once, in attribute order (hand this to an optimizer)."""
        for _, p in self.named_parameters():
            yield p

    def register_buffer(self, name: str, value: Any) -> None:
        """Keep a non-learnable array (saved in ``state_dict``) as attribute ``name``."""
        if "_buffers" not in self.__dict__:
            self._buffers: list[str] = []
        if name not in self._buffers:
            self._buffers.append(name)
        setattr(self, name, None if value is None else Tensor(value))

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        for name, b in self._named_tensors(dedupe=False, buffers=True):
            if not isinstance(b, Parameter):
                yield name, b

    # ----- modes and gradients --------------------------------------------

    # touches the modules (restored by a failed verification) but does not own
    # them: their settings stay guarded, as forward reads them
    @effect(touches=lambda self, mode=True: list(self.modules()), owns=lambda self, mode=True: ())
    def train(self, mode: bool = True) -> Module:
        """Switch this module and all below it to training mode (Dropout active)."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        """Switch to evaluation mode (Dropout becomes the identity)."""
        return self.train(False)

    @effect(touches=lambda self, set_to_none=True: list(self.parameters()))
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient (None by default, as in PyTorch)."""
        zero_grad_params(self.parameters(), set_to_none)

    @effect(touches=lambda self, requires_grad=True: list(self.parameters()))
    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def num_parameters(self) -> int:
        """How many scalars the parameters hold in total."""
        return int(sum(p.data.size for p in self.parameters()))

    # ----- state ----------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed by dotted name.

        A shared parameter appears under each of its names (as in PyTorch).

        >>> sd = cr.nn.Linear(2, 3).state_dict()
        >>> {k: v.shape for k, v in sd.items()}
        {'weight': (3, 2), 'bias': (3,)}
        """
        return OrderedDict(
            (name, t.data.copy()) for name, t in self._named_tensors(dedupe=False, buffers=True)
        )

    @effect(touches=lambda self, state_dict, strict=True: [
        t for _, t in self._named_tensors(dedupe=False, buffers=True)])
    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (arrays or Tensors) into the parameters.

        With ``strict=True`` the keys must match exactly; the error lists the
        missing and unexpected ones. Shapes must always match. Values are cast
        to each parameter's dtype. Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(
                f"load_state_dict: expected a mapping of names to arrays, "
                f"got {type(state_dict).__name__}"
            )
        own = OrderedDict(self._named_tensors(dedupe=False, buffers=True))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {missing}")
            if unexpected:
                parts.append(f"unexpected keys: {unexpected}")
            raise KeyError(
                f"load_state_dict: keys do not match {type(self).__name__}'s parameters "
                f"({'; '.join(parts)}); pass strict=False to load the matching ones only"
            )
        values = {}
        for k, t in own.items():  # check every shape before changing anything
            if k not in state_dict:
                continue
            v = state_dict[k]
            arr = np.asarray(v.data if isinstance(v, Tensor) else v)
            if arr.shape != t.data.shape:
                raise ValueError(
                    f"load_state_dict: shape mismatch for '{k}': the checkpoint has "
                    f"shape {arr.shape}, the model's parameter has shape {t.data.shape}"
                )
            values[k] = arr
        for k, arr in values.items():
            t = own[k]
            np.copyto(t.data, arr, casting="unsafe")
            _bump(t)  # graphs recorded with the old values must not backpropagate
        return IncompatibleKeys(missing, unexpected)

    # ----- architecture config --------------------------------------------

    def get_config(self) -> Any:
        """A JSON-serialisable description that :func:`chainrule.nn.build` turns back
        into an equivalent (freshly initialised) module. Built-in layers only."""
        raise NotImplementedError(
            f"get_config: {type(self).__name__} is not a built-in layer, so it has no "
            "config; build the model from built-in layers (nn.Sequential, nn.Linear, ...) "
            "or save its state_dict and rebuild it in code"
        )

    # ----- printing -------------------------------------------------------

    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr."""
        return ""

    def __repr__(self) -> str:
        kids = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        lines = [head]
        for name, m in kids:
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"
