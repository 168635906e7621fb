"""What an MPI launcher tells a process through its environment (standard library only).

``mpiexec`` (MPICH's Hydra, Intel MPI), Open MPI's ``mpirun`` and Slurm's
``srun`` start every rank with variables naming its rank, the number of
ranks and how many of them share this node. This module reads them without
loading MPI, so that:

* ``import chainrule`` can give each rank a sensible number of BLAS threads
  *before NumPy loads OpenBLAS* (OpenBLAS sizes its thread pool once, at
  load): two ranks on a two-core machine that each start two BLAS threads
  fight over the cores and run several times slower than with one each;
* :mod:`chainrule.distributed` can tell "not started by a launcher" (a world
  of one rank, on purpose or by mistake) from "started as one of N ranks, but
  MPI sees only one" (mpi4py loads a different MPI library than the
  ``mpiexec`` that started the process: every rank would train alone).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["launcher_world_size", "launched", "local_ranks", "default_blas_threads"]

# rank variables: any of them means an MPI launcher (or srun) started this process
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_FD", "MPI_LOCALRANKID")
# the world size as the launcher announces it (Hydra / PMI-2 srun, Open MPI)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
# how many ranks share this node (Hydra, Open MPI, Slurm "2(x3)" lists)
_LOCAL_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE",
               "SLURM_TASKS_PER_NODE")
# variables a BLAS or OpenMP runtime reads for its thread count
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS")

#: set by :func:`default_blas_threads` when it chose the thread count itself
CHOSEN: dict[str, int] = {}


def _leading_int(text: str | None) -> int | None:
    if not text:
        return None
    digits = ""
    for ch in text.strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def launched(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun with PMI) started this process."""
    env = os.environ if environ is None else environ
    return any(v in env for v in _RANK_VARS)


def launcher_world_size(environ: Mapping[str, str] | None = None) -> int | None:
    """The number of ranks the launcher started, or None when it does not say."""
    env = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        n = _leading_int(env.get(var))
        if n:
            return n
    return None


def local_ranks(environ: Mapping[str, str] | None = None) -> int:
    """How many ranks of this job run on this node (1 when not launched)."""
    env = os.environ if environ is None else environ
    if not launched(env):
        return 1
    for var in _LOCAL_VARS:
        n = _leading_int(env.get(var))
        if n:
            return n
    return 1


def _cores_owned() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_blas_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """Set ``OPENBLAS_NUM_THREADS`` for this rank unless the user chose a count.

    Only under an MPI launcher with several ranks on this node, and only when
    none of ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS``
    or ``MKL_NUM_THREADS`` is set: each rank then gets the cores it may run on
    divided by the ranks on this node (at least 1). A launcher that binds a rank
    to fewer cores (``srun --cpu-bind``, Open MPI's default binding) is
    respected: the count never exceeds the cores in the rank's affinity mask.
    Returns the count set, or None when nothing was changed.

    It has an effect only before NumPy is imported; ``import chainrule`` calls
    it first thing, so the ``chainrule`` command always gets it.
    """
    env = os.environ if environ is None else environ
    if not launched(env) or any(env.get(v) for v in _THREAD_VARS):
        return None
    local = local_ranks(env)
    if local <= 1:
        return None
    owned = _cores_owned()
    total = os.cpu_count() or owned
    threads = max(1, min(owned, total // local))
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    CHOSEN["OPENBLAS_NUM_THREADS"] = threads
    return threads


default_blas_threads()  # on import: see the module docstring
