"""Synchronous data-parallel training over MPI (``mpiexec -n N ...``), PyTorch's names.

Every rank (process) holds a replica of the model and trains on its own shard
of each batch; :class:`DistributedDataParallel` averages the gradients over
the ranks while backward runs, so every replica takes the same step.

Install the optional extra (mpi4py and an MPI library, both wheels from PyPI)::

    pip install "chainrule[mpi]"

and launch with the ``mpiexec`` it installs::

    mpiexec -n 4 chainrule train --distributed            # the CLI
    mpiexec -n 4 python train.py                          # your script

In a script:

>>> from chainrule import distributed as dist
>>> dist.init()                               # once per process
>>> model = dist.DistributedDataParallel(model)
>>> sampler = dist.DistributedSampler(dataset)          # this rank's shard
>>> loader = cr.data.DataLoader(dataset, batch_size=32, sampler=sampler)

or let :func:`chainrule.fit` do all of it: ``cr.fit(..., distributed=True)``.

All communication lives in :mod:`chainrule.distributed.comm`, the only
module of chainrule that imports mpi4py. Importing this package without
mpi4py raises an ImportError that names the ``pip install`` to run.
"""

from __future__ import annotations

from .comm import (
    DEFAULT_TIMEOUT,
    Communicator,
    ReduceOp,
    all_reduce,
    barrier,
    broadcast,
    get_rank,
    get_world_size,
    init,
    is_initialized,
    rank,
    world_size,
)
from .ddp import FIRST_BUCKET_MB, DistributedDataParallel
from .sampler import DistributedSampler

__all__ = [
    "init",
    "is_initialized",
    "rank",
    "world_size",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_reduce",
    "broadcast",
    "ReduceOp",
    "Communicator",
    "DistributedDataParallel",
    "DistributedSampler",
    "DEFAULT_TIMEOUT",
    "FIRST_BUCKET_MB",
]
