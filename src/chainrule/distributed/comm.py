"""Collectives over MPI: the one module of chainrule that imports mpi4py.

Everything that moves numbers between ranks goes through :class:`Communicator`
here: the public ``init`` / ``rank`` / ``world_size`` / ``barrier`` /
``all_reduce`` / ``broadcast``, the non-blocking allreduces that
:class:`~chainrule.distributed.DistributedDataParallel` starts while backward
runs, and the small exchanges ``fit`` needs (stop requests, metric sums).

A job must never hang. Three mechanisms see to it:

* **an uncaught exception on any rank aborts the whole job** (``init`` wraps
  ``sys.excepthook``: the traceback is printed, then ``MPI_Abort`` makes the
  launcher stop every rank; without it the other ranks would wait forever in
  their next collective);
* **every blocking wait has a deadline** (``timeout``, 30 minutes by default
  as in PyTorch, or ``CHAINRULE_DIST_TIMEOUT`` seconds): a watchdog thread
  names the collective that did not complete and aborts the job. mpi4py
  releases the GIL inside MPI calls, so the watchdog runs while the main
  thread waits;
* **starting MPI has the same deadline**. ``MPI_Init`` waits for every rank
  of the job and holds the GIL meanwhile, so a small guard process watches
  it: a rank of the job that never starts MPI (run without ``--distributed``,
  or crashed before ``init``) would otherwise keep the others in
  ``MPI_Init`` forever.

A rank killed by a signal is the launcher's business: ``mpiexec`` (Hydra and
Open MPI alike) then stops the other ranks at once; under Slurm use
``srun --kill-on-bad-exit=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

try:
    import mpi4py  # noqa: F401  (the package only: MPI itself starts in init())
except ImportError as exc:  # pragma: no cover  (CI installs it)
    raise ImportError(
        "chainrule.distributed needs mpi4py and an MPI library; install both with "
        'pip install "chainrule[mpi]" (mpi4py and the mpich wheel from PyPI)'
    ) from exc

from .. import _rank_env
from ..tensor import Tensor, no_grad

__all__ = [
    "ReduceOp",
    "Communicator",
    "init",
    "is_initialized",
    "rank",
    "world_size",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_reduce",
    "broadcast",
    "DEFAULT_TIMEOUT",
]

#: seconds a rank waits in one collective (or in MPI start-up) before it gives up
DEFAULT_TIMEOUT = 1800.0

_PREFIX = "chainrule.distributed: "


class ReduceOp:
    """Reduction operations for :func:`all_reduce` (PyTorch's names; strings work too)."""

    SUM = "sum"
    PRODUCT = "prod"
    MIN = "min"
    MAX = "max"
    AVG = "avg"


_OPS = {"sum": "SUM", "prod": "PROD", "product": "PROD", "min": "MIN", "max": "MAX",
        "avg": "SUM"}


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


# ---------------------------------------------------------------------------
# Aborting the job, and the watchdog that does it when a wait takes too long
# ---------------------------------------------------------------------------


def _say(message: str) -> None:
    """One line on stderr, unbuffered (the process may be about to die)."""
    try:
        os.write(2, (_PREFIX + message.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def abort(message: str, code: int = 1) -> None:
    """Print ``message`` and stop every rank of the job (``MPI_Abort``)."""
    _say(message)
    # The launcher forwards each rank's stderr through its own proxy, and
    # MPI_Abort tears the proxies down at once: give them a moment to pass the
    # message on, or the job can end with its reason lost (seen with mpich's
    # hydra: exit code 2 and an empty stderr, about 1 run in 30).
    time.sleep(0.25)
    try:
        MPI = _mpi()  # noqa: N806
        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.COMM_WORLD.Abort(code)
    finally:
        os._exit(code)


class _Watchdog:
    """Aborts the job when the main thread waits in one collective past its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._until: float | None = None
        self._what = ""
        self._started = 0.0
        self._timeout = 0.0
        self._thread: threading.Thread | None = None

    def arm(self, what: str, timeout: float) -> None:
        now = time.monotonic()
        with self._cond:
            self._what, self._started, self._timeout = what, now, timeout
            self._until = now + timeout
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chainrule-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._until = None  # the thread wakes at the old deadline and finds nothing

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._until is None:
                    self._cond.wait()
                    continue
                left = self._until - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                break
            what, waited = self._what, time.monotonic() - self._started
        world = _WORLD
        who = f"rank {world.rank} of {world.size}" if world is not None else "this rank"
        abort(
            f"{who} waited {waited:.0f} s in {what} without the other ranks joining "
            f"(timeout {self._timeout:g} s). Another rank has probably failed, exited, never "
            "started MPI, or is running a different sequence of collectives; aborting the "
            "job. (Set the limit with chainrule.distributed.init(timeout=...) or "
            "CHAINRULE_DIST_TIMEOUT.)"
        )


_WATCHDOG = _Watchdog()


class _deadline:  # noqa: N801  (used as `with _deadline(...)`)
    __slots__ = ("what", "timeout")

    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout

    def __enter__(self) -> None:
        _WATCHDOG.arm(self.what, self.timeout)

    def __exit__(self, *exc: object) -> None:
        _WATCHDOG.disarm()


# ---------------------------------------------------------------------------
# The communicator
# ---------------------------------------------------------------------------


def _contiguous(buf: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what}: expected a NumPy array or a Tensor, got {type(buf).__name__}")
    if buf.dtype.kind not in "biuf":
        raise TypeError(f"{what}: dtype {buf.dtype} cannot be sent over MPI (use a "
                        "floating, integer or bool array)")
    if buf.dtype == np.float16:
        raise TypeError(f"{what}: float16 has no MPI datatype; cast to float32 first")
    return buf


class Communicator:
    """A group of ranks and chainrule's collectives on it (blocking waits have a deadline).

    ``init()`` returns the world's; :class:`DistributedDataParallel` works on a
    duplicate of it (``dup()``), so its non-blocking allreduces never match a
    collective the user calls meanwhile.

    Attributes
    ----------
    rank, size : int
    timeout : float
        Seconds a blocking wait may take before the job is aborted.
    """

    def __init__(self, comm: Any, timeout: float) -> None:
        self._comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.timeout = float(timeout)

    def dup(self) -> Communicator:
        """A new communicator over the same ranks (collective: every rank calls it)."""
        with _deadline("creating a communicator (MPI_Comm_dup)", self.timeout):
            return Communicator(self._comm.Dup(), self.timeout)

    # ----- blocking collectives ---------------------------------------------

    def barrier(self, what: str = "barrier()") -> None:
        with _deadline(what, self.timeout):
            self._comm.Barrier()

    def all_reduce(self, buf: np.ndarray, op: str = "sum", what: str = "all_reduce()") -> None:
        """Reduce ``buf`` (C-contiguous) over the ranks, in place on every rank."""
        MPI = _mpi()  # noqa: N806
        with _deadline(what, self.timeout):
            self._comm.Allreduce(MPI.IN_PLACE, buf, op=getattr(MPI, _OPS[op]))
        if op == "avg":
            np.divide(buf, self.size, out=buf)

    def broadcast(self, buf: np.ndarray, root: int = 0, what: str = "broadcast()") -> None:
        with _deadline(what, self.timeout):
            self._comm.Bcast(buf, root=root)

    def all_gather_bytes(self, data: bytes, what: str = "an exchange of text") -> list[bytes]:
        """Every rank's ``data``, in rank order (no pickle: raw bytes)."""
        MPI = _mpi()  # noqa: N806
        sizes = np.zeros(self.size, dtype=np.int64)
        mine = np.array([len(data)], dtype=np.int64)
        with _deadline(what, self.timeout):
            self._comm.Allgather(mine, sizes)
            out = np.empty(int(sizes.sum()), dtype=np.uint8)
            send = np.frombuffer(data, dtype=np.uint8) if data else np.empty(0, np.uint8)
            displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self._comm.Allgatherv([send, MPI.BYTE], [out, (sizes, displs), MPI.BYTE])
        return [out[a:a + n].tobytes() for a, n in zip(displs, sizes)]

    # ----- non-blocking allreduce (DistributedDataParallel's buckets) -------

    def start_all_reduce(self, buf: np.ndarray) -> Any:
        """Start summing ``buf`` over the ranks in place; returns the MPI request."""
        return self._comm.Iallreduce(_mpi().IN_PLACE, buf)

    @staticmethod
    def progress(requests: list[Any]) -> None:
        """Let MPI move started requests along (MPI progresses only inside its calls)."""
        if requests:
            _mpi().Request.Testall(requests)

    def wait_all(self, requests: list[Any], what: str) -> None:
        if requests:
            with _deadline(what, self.timeout):
                _mpi().Request.Waitall(requests)


# ---------------------------------------------------------------------------
# Starting MPI
# ---------------------------------------------------------------------------

_WORLD: Communicator | None = None
_INIT_LOCK = threading.Lock()

# The guard that watches MPI_Init: a tiny process that waits for its stdin to
# close (init finished, or this process died) and otherwise, after the timeout,
# prints why and kills the rank, which makes the launcher stop the job.
_GUARD = (
    "import os, select, sys\n"
    "if not select.select([0], [], [], float(sys.argv[1]))[0]:\n"
    "    os.write(2, sys.argv[3].encode())\n"
    "    os.kill(int(sys.argv[2]), 9)\n"
)


def _launch_rank() -> str:
    for var in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var):
            return os.environ[var]
    return "?"


def _start_init_guard(timeout: float, size: int) -> subprocess.Popen | None:
    message = (
        f"{_PREFIX}rank {_launch_rank()} of {size}: MPI did not finish starting within "
        f"{timeout:g} s. Every rank of an mpiexec job must start MPI (call "
        "chainrule.distributed.init(), or run 'chainrule train --distributed'); a rank that "
        "never does (started without --distributed, or failed before init) leaves the "
        "others waiting. Stopping this rank.\n"
    )
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(timeout), str(os.getpid()), message],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )
    except OSError:  # cannot start a process: go without the guard
        return None


def _resolve_timeout(timeout: float | None) -> float:
    if timeout is None:
        text = os.environ.get("CHAINRULE_DIST_TIMEOUT")
        if not text:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(
                f"CHAINRULE_DIST_TIMEOUT must be a number of seconds, got {text!r}"
            ) from None
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"init: timeout must be a positive number of seconds, got {timeout}")
    return timeout


def _install_excepthook(world: Communicator) -> None:
    previous = sys.excepthook
    if getattr(previous, "_chainrule_aborts", False):
        return

    def hook(etype: type[BaseException], value: BaseException, tb: Any) -> None:
        try:
            previous(etype, value, tb)
        finally:
            code = 130 if issubclass(etype, KeyboardInterrupt) else 1
            abort(
                f"rank {world.rank} of {world.size} stopped on an uncaught "
                f"{etype.__name__}; aborting all {world.size} ranks so that none waits "
                "for it forever", code,
            )

    hook._chainrule_aborts = True  # type: ignore[attr-defined]  # a marker on the function
    sys.excepthook = hook


def init(timeout: float | None = None) -> Communicator:
    """Start MPI (once) and return the world's :class:`Communicator`.

    Call it at the start of a script run with ``mpiexec -n N python script.py``;
    the other functions and :class:`DistributedDataParallel` call it for you.
    Calling it again returns the same communicator (a new ``timeout`` is taken).

    Parameters
    ----------
    timeout : float, optional
        Seconds any rank may wait in one collective (and in MPI start-up) before
        the job is aborted with a message naming the collective. Default:
        ``CHAINRULE_DIST_TIMEOUT`` from the environment, else 1800.

    A process not started by an MPI launcher runs as a world of one rank (with
    a warning): the same script then trains exactly as a single process. A
    process that the launcher started as one of N ranks but that MPI sees as
    alone (mpi4py loaded a different MPI than the ``mpiexec`` used) is an
    error, since every rank would train on its own.

    >>> from chainrule import distributed as dist
    >>> world = dist.init()
    >>> dist.rank(), dist.world_size()      # (0, 1) in a plain process
    (0, 1)
    """
    global _WORLD
    with _INIT_LOCK:
        if _WORLD is not None:
            if timeout is not None:
                _WORLD.timeout = _resolve_timeout(timeout)
            return _WORLD
        limit = _resolve_timeout(timeout)
        announced = _rank_env.launcher_world_size()
        guard = None
        if "mpi4py.MPI" not in sys.modules and (announced or 0) > 1:
            guard = _start_init_guard(limit, announced or 0)
        try:
            MPI = _mpi()  # noqa: N806  (importing it starts MPI: MPI_Init_thread)
            if not MPI.Is_initialized():  # the user set mpi4py.rc.initialize = False
                MPI.Init_thread()
        finally:
            if guard is not None:
                if guard.stdin is not None:  # (it is: started with stdin=PIPE)
                    guard.stdin.close()
                guard.wait()
        if MPI.Is_finalized():
            raise RuntimeError("chainrule.distributed.init: MPI was already finalized in "
                               "this process; it cannot be started again")
        size = MPI.COMM_WORLD.Get_size()
        if announced and announced > 1 and size == 1:
            raise RuntimeError(
                f"chainrule.distributed.init: the launcher started {announced} ranks, but MPI "
                "sees a world of 1: mpi4py loads a different MPI library than the mpiexec "
                f"that started this process ({_library()}). Every rank would train on its "
                "own. Use the mpiexec that belongs to that library (with the mpich wheel: "
                "the mpiexec installed next to this Python), or install mpi4py for the MPI "
                "you launch with."
            )
        if not _rank_env.launched() and size == 1:
            warnings.warn(
                "chainrule.distributed.init: this process was not started by an MPI "
                "launcher, so it runs as a world of one rank; start N ranks with "
                "'mpiexec -n N python script.py' (or 'mpiexec -n N chainrule train "
                "--distributed ...')", UserWarning, stacklevel=2,
            )
        world = Communicator(MPI.COMM_WORLD, limit).dup()
        if world.size > 1:
            _install_excepthook(world)
        _WORLD = world
        return world


def _library() -> str:
    try:
        return _mpi().Get_library_version().splitlines()[0].strip()
    except Exception:  # noqa: BLE001  (only for a message)
        return "unknown MPI library"


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _WORLD is not None


def _world() -> Communicator:
    return _WORLD if _WORLD is not None else init()


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (starts MPI if needed)."""
    return _world().rank


def world_size() -> int:
    """The number of ranks in the job (starts MPI if needed)."""
    return _world().size


get_rank = rank  # PyTorch's spelling
get_world_size = world_size


def barrier() -> None:
    """Wait until every rank has called ``barrier()``."""
    _world().barrier()


# ---------------------------------------------------------------------------
# Public collectives on arrays and Tensors
# ---------------------------------------------------------------------------


def _in_place(obj: Any, what: str) -> tuple[np.ndarray, Any]:
    """(a contiguous array to work on, a function that puts the result back)."""
    arr = obj.data if isinstance(obj, Tensor) else obj
    _contiguous(arr, what)
    work = arr if arr.flags.c_contiguous and arr.flags.writeable else np.ascontiguousarray(arr)

    def back() -> None:
        if isinstance(obj, Tensor):
            with no_grad():
                obj.copy_(work)  # bumps the version: graphs that saved the old value notice
        elif work is not arr:
            if not arr.flags.writeable:
                raise ValueError(f"{what}: the array is read-only; it cannot be updated in "
                                 "place")
            arr[...] = work

    return work, back


def all_reduce(array: Any, op: str = ReduceOp.SUM) -> Any:
    """Reduce ``array`` over every rank, in place; every rank gets the result.

    Parameters
    ----------
    array : np.ndarray or Tensor
        Same shape and dtype on every rank. A Tensor is updated in place (under
        ``no_grad``; its version counter moves on).
    op : "sum", "prod", "min", "max" or "avg" (or a :class:`ReduceOp`)
        "avg" is the sum divided by the number of ranks (floating arrays).

    Returns
    -------
    The same object, reduced.

    >>> x = np.array([1.0, 2.0])
    >>> dist.all_reduce(x)          # on 2 ranks holding the same x: array([2., 4.])
    array([1., 2.])
    """
    op = str(op).lower()
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of sum, prod, min, max, avg; got {op!r}")
    work, back = _in_place(array, "all_reduce")
    if op == "avg" and work.dtype.kind != "f":
        raise TypeError(f"all_reduce: op='avg' needs a floating array, got {work.dtype}")
    _world().all_reduce(work, op, what=f"all_reduce(op={op!r}) of shape {work.shape}")
    back()
    return array


def broadcast(array: Any, src: int = 0, root: int | None = None) -> Any:
    """Copy rank ``src``'s ``array`` into every rank's ``array``, in place.

    ``root`` is the same as ``src`` (MPI's name; ``src`` is PyTorch's).

    >>> w = np.zeros(3) if dist.rank() else np.arange(3.0)
    >>> dist.broadcast(w, src=0)    # every rank now holds [0., 1., 2.]
    array([0., 1., 2.])
    """
    src = src if root is None else root
    world = _world()
    if not 0 <= int(src) < world.size:
        raise ValueError(f"broadcast: src={src} is not a rank of this job (0 .. "
                         f"{world.size - 1})")
    work, back = _in_place(array, "broadcast")
    world.broadcast(work, int(src), what=f"broadcast from rank {src} of shape {work.shape}")
    back()
    return array
