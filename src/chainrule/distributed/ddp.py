"""DistributedDataParallel: average gradients over the ranks while backward runs.

Every rank holds a full replica of the model and computes the gradient of the
loss on its own share of the batch. Averaging those gradients over the ranks
gives the gradient of the mean loss over the whole batch, so after
``optimizer.step()`` every replica holds the same weights again: synchronous
data-parallel SGD.

How the averaging overlaps with backward (PyTorch's reducer, in NumPy):

* at construction, rank 0's parameters and buffers are copied to every rank,
  after checking that every rank built the same model (names, shapes, dtypes);
* the gradients are grouped into **buckets** of at most ``bucket_cap_mb``
  megabytes, in *reverse* parameter order: backward produces the last
  layer's gradients first. The first bucket is small (1 MB) so that
  communication starts early;
* a hook on every parameter (``register_post_accumulate_grad_hook``) copies
  its gradient into its bucket as soon as backward has accumulated it; when a
  bucket is full, a non-blocking ``MPI_Iallreduce`` starts summing it across
  the ranks while backward goes on computing the earlier layers' gradients.
  Buckets are started strictly in order, so every rank issues the same
  collectives in the same sequence;
* when the last gradient has arrived, backward waits for the outstanding
  buckets, divides the sums by the number of ranks and writes the averages
  back into ``.grad``. So when ``loss.backward()`` returns, ``.grad`` holds
  the averaged gradient, ready for ``optimizer.step()``.

MPI moves a non-blocking collective along only inside MPI calls; each hook
pokes it (``MPI_Testall``), which keeps it going between layers. Inside one
long matrix product nothing moves unless the MPI library has a progress
thread (MPICH: ``MPIR_CVAR_ASYNC_PROGRESS=1``, worth it only with a spare
core per rank).

Sum order (why N ranks agree with one process to rounding, not bit for bit):
rank r computes g_r = (1/b) sum over its b = B/N samples (inside BLAS), MPI
sums g_0 .. g_{N-1} (its own tree or ring: every rank gets the *same* bits),
and each rank divides by N. One process computes (1/B) sum over the B samples
in one BLAS call. The two orders differ by a few units in the last place;
the replicas, which all receive the same bits, stay bit-identical.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..capture import effect
from ..nn.module import Module
from ..tensor import Tensor, is_grad_enabled, no_grad
from . import comm as _comm

__all__ = ["DistributedDataParallel", "FIRST_BUCKET_MB"]

#: the first bucket's cap, as in PyTorch: a small first bucket starts communication early
FIRST_BUCKET_MB = 1.0
_MB = 1024 * 1024


# ---------------------------------------------------------------------------
# The graph, as far as DistributedDataParallel needs to see it
# ---------------------------------------------------------------------------


def _leaves_reached(outputs: Any) -> set[int]:
    """ids of the leaf tensors the outputs were computed from (a loop, no recursion).

    The one place that knows the graph's layout: a tensor's ``_node`` is the
    op that computed it (None for a leaf), and a node's ``parents`` are the
    nodes of its operands, the leaf tensors themselves, or None.
    """
    stack: list[Any] = []
    leaves: set[int] = set()
    for t in _tensors_in(outputs):
        if t._node is not None:
            stack.append(t._node)
        elif t.requires_grad:
            leaves.add(id(t))
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for p in node.parents:
            if isinstance(p, Tensor):
                leaves.add(id(p))
            elif p is not None:
                stack.append(p)
    return leaves


def _tensors_in(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)


# ---------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------


class _Bucket:
    """Gradients of a few parameters, packed into one array that is reduced at once."""

    __slots__ = ("flat", "members", "views", "pending")

    def __init__(self, members: list[int], params: list[Tensor]) -> None:
        dtype = params[members[0]].data.dtype
        sizes = [params[i].data.size for i in members]
        self.flat = np.zeros(int(sum(sizes)), dtype=dtype)
        self.members = members
        self.views: list[np.ndarray] = []
        offset = 0
        for i, n in zip(members, sizes):
            self.views.append(self.flat[offset:offset + n].reshape(params[i].data.shape))
            offset += n
        self.pending = len(members)

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)


def _assign_buckets(params: list[Tensor], cap_bytes: float, first_bytes: float
                    ) -> list[list[int]]:
    """Parameter indices per bucket: reverse order, one open bucket per dtype (PyTorch's rule).

    A parameter joins the open bucket of its dtype; the bucket closes once it
    holds at least the limit (``first_bytes`` for the first bucket closed,
    ``cap_bytes`` after that).
    """
    buckets: list[list[int]] = []
    open_: dict[np.dtype, tuple[list[int], int]] = {}
    for i in reversed(range(len(params))):
        dt = params[i].data.dtype
        members, size = open_.get(dt, ([], 0))
        members.append(i)
        size += params[i].data.nbytes
        limit = first_bytes if not buckets else cap_bytes
        if size >= limit:
            buckets.append(members)
            open_.pop(dt, None)
        else:
            open_[dt] = (members, size)
    buckets.extend(m for m, _ in open_.values())
    return buckets


def _structure(named: list[tuple[str, Tensor, str]]) -> bytes:
    return "\n".join(f"{kind} {name} {tuple(t.data.shape)} {t.data.dtype} "
                     f"{int(t.requires_grad)}" for name, t, kind in named).encode()


def _first_difference(mine: list[str], theirs: list[str], rank: int) -> str:
    """A sentence naming the first parameter in which rank ``rank`` differs from rank 0."""
    def parse(line: str) -> tuple[str, str, str]:
        kind, name, rest = line.split(" ", 2)
        return kind, name, rest

    for a, b in zip(mine, theirs):
        if a != b:
            ka, na, ra = parse(a)
            kb, nb, rb = parse(b)
            if na != nb:
                return (f"rank 0 has {ka} '{na}' where rank {rank} has {kb} '{nb}'")
            shape_a, shape_b = ra.rsplit(" ", 2)[0], rb.rsplit(" ", 2)[0]
            if shape_a != shape_b:
                return (f"{ka} '{na}' has shape {shape_a} on rank 0 but {shape_b} on "
                        f"rank {rank}")
            return f"{ka} '{na}' is '{ra}' on rank 0 but '{rb}' on rank {rank} (shape dtype " \
                   "requires_grad)"
    if len(mine) != len(theirs):
        longer, who = (mine, 0) if len(mine) > len(theirs) else (theirs, rank)
        extra = parse(longer[min(len(mine), len(theirs))])
        return (f"rank {who} has {len(longer) - min(len(mine), len(theirs))} more "
                f"tensor(s), starting with {extra[0]} '{extra[1]}'")
    return ""


# ---------------------------------------------------------------------------
# The reducer: buckets, hooks and the allreduces
# ---------------------------------------------------------------------------


class _Reducer:
    """The averaging machinery of one wrapper (kept out of the Module's attributes,
    so the parameters it lists are not taken for the wrapper's own)."""

    def __init__(self, comm: _comm.Communicator, names: list[str], params: list[Tensor],
                 cap_bytes: float, find_unused: bool) -> None:
        self.comm = comm
        self.names = names
        self.params = params
        self.find_unused = find_unused
        groups = _assign_buckets(params, cap_bytes, min(FIRST_BUCKET_MB * _MB, cap_bytes))
        self.buckets = [_Bucket(g, params) for g in groups]
        self.bucket_of: list[tuple[int, int]] = [(0, 0)] * len(params)
        for b, bucket in enumerate(self.buckets):
            for j, i in enumerate(bucket.members):
                self.bucket_of[i] = (b, j)
        self.scale = 1.0  # this rank's gradient weight (fit: its share of a short batch)
        self.require_sync = True  # False inside no_sync()
        self.forward_sync: bool | None = None  # what the last forward decided
        self.reset()
        self.handles: list[Any] = []
        if comm.size > 1:
            me = weakref.ref(self)
            for i, p in enumerate(params):
                self.handles.append(p.register_post_accumulate_grad_hook(_hook(me, i)))

    def reset(self) -> None:
        self.ready = [False] * len(self.params)
        self.unused = [False] * len(self.params)
        self.ready_count = 0
        self.next_bucket = 0
        self.requests: list[Any] = []
        for b in self.buckets:
            b.pending = len(b.members)
        self.forward_sync = None

    def remove_hooks(self) -> None:
        _remove(self.handles)

    # ----- one iteration ------------------------------------------------------

    def in_progress(self) -> bool:
        return self.ready_count > 0 or self.next_bucket > 0

    def missing(self) -> list[str]:
        return [self.names[i] for i, r in enumerate(self.ready) if not r]

    def abandon(self) -> None:
        if self.requests:  # let started allreduces finish so MPI's state stays consistent
            self.comm.wait_all(self.requests, "an abandoned gradient allreduce")
        self.reset()

    def grad_ready(self, i: int) -> None:
        """A parameter's hook: backward has just accumulated its ``.grad``.

        A ``cr.compile`` replay calls the hooks too, at the same points."""
        sync = self.require_sync if self.forward_sync is None else self.forward_sync
        if not sync:
            return
        if self.ready[i]:
            if self.unused[i]:
                raise RuntimeError(
                    f"DistributedDataParallel: parameter '{self.names[i]}' got a gradient "
                    "although the outputs of forward() do not depend on it (is it used "
                    "outside forward?); its bucket was already being averaged"
                )
            raise RuntimeError(
                f"DistributedDataParallel: parameter '{self.names[i]}' got a gradient twice "
                "in one iteration (two backward() calls after one forward, or "
                "retain_graph=True); run forward again before each backward, or accumulate "
                "inside no_sync()"
            )
        self.mark_ready(i)

    def mark_ready(self, i: int, unused: bool = False) -> None:
        self.ready[i] = True
        self.unused[i] = unused
        self.ready_count += 1
        b, j = self.bucket_of[i]
        bucket = self.buckets[b]
        g = self.params[i].grad
        if g is None:
            bucket.views[j].fill(0)
        elif self.scale == 1.0:
            np.copyto(bucket.views[j], g.data)
        else:
            np.multiply(g.data, self.scale, out=bucket.views[j], casting="unsafe")
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready_buckets()
        else:
            self.comm.progress(self.requests)
        if self.ready_count == len(self.params):
            self._finish()

    def _launch_ready_buckets(self) -> None:
        # strictly in bucket order: every rank must issue the same collectives in
        # the same sequence, whatever order its gradients arrive in
        buckets = self.buckets
        while self.next_bucket < len(buckets) and buckets[self.next_bucket].pending == 0:
            self.requests.append(self.comm.start_all_reduce(buckets[self.next_bucket].flat))
            self.next_bucket += 1

    def _finish(self) -> None:
        n = self.comm.size
        self.comm.wait_all(self.requests, "DistributedDataParallel's gradient allreduce "
                                          f"({len(self.buckets)} bucket(s))")
        used = None
        if self.find_unused:
            used = np.array([not u for u in self.unused], dtype=np.int32)
            self.comm.all_reduce(used, "sum", "DistributedDataParallel's unused-parameter map")
        for bucket in self.buckets:
            np.divide(bucket.flat, n, out=bucket.flat)
            for i, view in zip(bucket.members, bucket.views):
                if used is not None and used[i] == 0:
                    continue  # no rank used it: its .grad stays as it was
                _write_grad(self.params[i], view)
        self.reset()

    # declared for cr.compile: a replay makes the same decision at the same point
    @effect(touches=lambda self, sync, unused: [self, *self.params])
    def begin(self, sync: bool, unused: list[int]) -> None:
        """What forward decided for this iteration: whether backward averages, and
        which parameters it will give no gradient (counted as ready, with zeros)."""
        self.forward_sync = sync
        for i in unused:
            self.mark_ready(i, unused=True)

    def reduce_all(self) -> None:
        """Average every parameter's current ``.grad`` now (None counts as zeros)."""
        self.reset()
        self.forward_sync = True
        for i in range(len(self.params)):
            self.mark_ready(i, unused=self.params[i].grad is None)


def _hook(me: weakref.ref, i: int) -> Any:
    def hook(param: Tensor) -> None:
        reducer = me()
        if reducer is not None:
            reducer.grad_ready(i)
    return hook


def _remove(handles: list[Any]) -> None:
    for h in handles:
        h.remove()
    handles.clear()


def _write_grad(p: Tensor, value: np.ndarray) -> None:
    g = p.grad
    if g is not None and g.data.flags.writeable and g.data.shape == value.shape:
        with no_grad():
            g.copy_(value)  # in place: an optimizer holding the array sees it
    else:
        p.grad = Tensor(value.copy())


# ---------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------


class DistributedDataParallel(Module):
    """Train one replica of ``module`` per rank; gradients are averaged during backward.

    Parameters
    ----------
    module : nn.Module
        The model, built the same way on every rank (checked: names, shapes
        and dtypes of parameters and buffers). Rank 0's values are copied to
        every rank here.
    bucket_cap_mb : float, default 25
        Most megabytes of gradients reduced in one ``MPI_Iallreduce``. Smaller
        buckets start communicating earlier (more overlap with backward) but
        pay the per-message latency more often. The first bucket holds at most
        ``FIRST_BUCKET_MB`` (1 MB).
    find_unused_parameters : bool, default False
        Walk the graph after every forward and treat parameters the outputs
        do not depend on as finished (they contribute zeros; a parameter no
        rank used keeps its ``.grad``). Needed when some parameters get no
        gradient in some steps; it costs a graph walk per step. Without it,
        a parameter the outputs do not depend on is an error at the first
        forward.
    broadcast_buffers : bool, default True
        Copy rank 0's buffers to every rank at every training forward (with
        gradients enabled), as PyTorch does.
    process_group : Communicator, optional
        The ranks to average over (default: all of them).

    Attributes
    ----------
    module : nn.Module
        The wrapped model. Save ``ddp.module`` (its state dict has the
        model's own names, so it loads into a single-process model).
    buckets : list of list of str
        Parameter names per bucket, in the order they are reduced.

    Examples
    --------
    Run with ``mpiexec -n 2 python train.py``; each rank feeds its shard:

    >>> from chainrule import distributed as dist
    >>> model = dist.DistributedDataParallel(nn.Linear(4, 1))
    >>> opt = cr.optim.SGD(model.parameters(), lr=0.1)
    >>> loss = F.mse_loss(model(x_shard), y_shard)
    >>> loss.backward()             # .grad holds the average over the ranks
    >>> opt.step()                  # every replica takes the same step

    Gradient accumulation over micro-batches without communicating:

    >>> with model.no_sync():
    ...     F.mse_loss(model(x1), y1).backward()   # local accumulation only
    >>> F.mse_loss(model(x2), y2).backward()       # reduces the accumulated sum
    """

    def __init__(
        self,
        module: Module,
        bucket_cap_mb: float = 25.0,
        find_unused_parameters: bool = False,
        broadcast_buffers: bool = True,
        process_group: _comm.Communicator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got "
                            f"{type(module).__name__}")
        if isinstance(module, DistributedDataParallel):
            raise TypeError("DistributedDataParallel: the module is already wrapped")
        if isinstance(bucket_cap_mb, bool) or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got "
                             f"{bucket_cap_mb!r}")
        self.module = module
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.find_unused_parameters = bool(find_unused_parameters)
        self.broadcast_buffers = bool(broadcast_buffers)
        base = process_group if process_group is not None else _comm.init()
        # a communicator of our own: our non-blocking collectives never match
        # a collective the user issues on the world meanwhile
        comm = base.dup()
        named = list(module.named_parameters())
        buffers = list(module.named_buffers())
        _check_same_model(comm, named, buffers)
        _copy_from_rank0(comm, [p for _, p in named] + [b for _, b in buffers])
        self._reducer = _Reducer(
            comm, [n for n, p in named if p.requires_grad],
            [p for _, p in named if p.requires_grad], self.bucket_cap_mb * _MB,
            self.find_unused_parameters)
        self._checked_usage = False
        # the hooks hold the reducer weakly: dropping the wrapper takes them off
        weakref.finalize(self, _remove, self._reducer.handles)

    @property
    def buckets(self) -> list[list[str]]:
        r = self._reducer
        return [[r.names[i] for i in b.members] for b in r.buckets]

    def remove_hooks(self) -> None:
        """Stop averaging: take the gradient hooks off the parameters (the module stays)."""
        self._reducer.remove_hooks()

    # ----- forward --------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        r = self._reducer
        # training forwards only: evaluation may run a different number of batches per rank
        if self.broadcast_buffers and r.comm.size > 1 and is_grad_enabled():
            buffers = [b for _, b in self.module.named_buffers()]
            if buffers:
                _copy_from_rank0(r.comm, buffers)
        out = self.module(*args, **kwargs)
        if not is_grad_enabled() or r.comm.size == 1:
            return out  # nothing will be backpropagated (evaluation), or nothing to average
        if r.in_progress():
            missing = r.missing()
            r.abandon()
            raise RuntimeError(
                "DistributedDataParallel: the previous backward() gave no gradient to "
                f"parameter(s) {_listed(missing)}, so the gradients were never averaged and "
                "the previous optimizer step used this rank's own gradients. If some "
                "parameters are unused in some steps, pass find_unused_parameters=True."
            )
        sync = r.require_sync
        unused: list[int] = []
        if not self._checked_usage or (self.find_unused_parameters and sync):
            reached = _leaves_reached(out)
            unused = [i for i, p in enumerate(r.params) if id(p) not in reached]
            if not self.find_unused_parameters:
                self._checked_usage = True
                if unused:
                    raise RuntimeError(
                        "DistributedDataParallel: the outputs of forward() do not depend on "
                        f"parameter(s) {_listed([r.names[i] for i in unused])}, so backward() "
                        "would give them no gradient and the gradients could never all be "
                        "averaged. Pass find_unused_parameters=True, or set "
                        "requires_grad=False on them before wrapping."
                    )
                unused = []
        r.begin(sync, unused if sync else [])
        return out

    # ----- no_sync ----------------------------------------------------------------

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside this block, forward/backward only accumulate into ``.grad`` locally.

        The first backward after the block (outside it) averages the accumulated
        sum over the ranks: gradient accumulation without communication on
        every micro-batch.
        """
        r = self._reducer
        old = r.require_sync
        r.require_sync = False
        try:
            yield
        finally:
            r.require_sync = old

    def extra_repr(self) -> str:
        r = self._reducer
        return (f"world_size={r.comm.size}, buckets={len(r.buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb:g}")


def _listed(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_same_model(comm: _comm.Communicator, named: Sequence[tuple[str, Tensor]],
                      buffers: Sequence[tuple[str, Tensor]]) -> None:
    rows = [(n, p, "parameter") for n, p in named] + [(n, b, "buffer") for n, b in buffers]
    every = comm.all_gather_bytes(_structure(rows), "DistributedDataParallel's model check")
    ref = every[0].decode().splitlines()
    for r, theirs in enumerate(every[1:], start=1):
        lines = theirs.decode().splitlines()
        if lines != ref:
            raise ValueError(
                "DistributedDataParallel: the models differ across ranks: "
                f"{_first_difference(ref, lines, r)}. Every rank must build the same model "
                "(same layers, sizes and dtypes) before wrapping it."
            )


@effect(touches=lambda comm, tensors: tensors)  # a compiled step broadcasts on every replay
def _copy_from_rank0(comm: _comm.Communicator, tensors: list[Tensor]) -> None:
    """Overwrite every rank's tensors with rank 0's (one broadcast per dtype)."""
    by_dtype: dict[np.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.data.dtype, []).append(t)
    for group in by_dtype.values():
        flat = np.concatenate([t.data.ravel() for t in group])
        comm.broadcast(flat, 0, "DistributedDataParallel's copy of rank 0's weights")
        offset = 0
        with no_grad():
            for t in group:
                n = t.data.size
                t.copy_(flat[offset:offset + n].reshape(t.data.shape))
                offset += n
