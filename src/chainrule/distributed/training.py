"""What ``fit(..., distributed=True)`` does differently, in a few named helpers.

``fit`` keeps reading straight down; where it trains on several ranks it
calls into a :class:`FitRun`:

* **set-up**: wrap the model in :class:`DistributedDataParallel` (rank 0's
  weights are copied to every rank) and shard the data. ``batch_size`` stays
  the *global* batch: every epoch all ranks draw the permutation that
  ``DataLoader((X, y), seed=seed)`` draws in one process, and rank ``r``
  takes positions ``r, r + N, r + 2N, ...`` of each global batch. So step
  ``k`` of the N ranks together sees exactly the samples of step ``k`` of a
  single process, with no padding;
* **steps**: a short last batch leaves some ranks with fewer samples (or
  none). Each rank's gradient is weighted by its share of the step's samples
  (``N n_r / n``) before the average, so the average is the gradient of the
  mean loss over the step's samples, as in one process; a rank without
  samples contributes zeros and still takes the step. The run therefore
  follows one process's trajectory to rounding (fit's ``shuffle`` and
  ``seed`` included), whatever the dataset size and batch size. Steps are
  compiled (``cr.compile``) only where every rank has the same share, so a
  ``batch_size`` divisible by N runs faster than one that is not;
* **validation**: each rank evaluates a disjoint share (no padding);
* **metrics**: the epoch's sums (samples, loss x samples, metric counts) are
  added up over the ranks, so every rank reports the global figures;
* **stopping**: after every batch and epoch the ranks agree on whether to
  stop (any rank's request stops all of them, with its reason), so early
  stopping decides the same everywhere and no rank is left waiting in a
  collective;
* **files**: rank 0 alone shows progress and writes checkpoints
  (``ModelCheckpoint`` asks ``trainer.rank`` and calls ``trainer.barrier()``
  after the write).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import comm
from .ddp import DistributedDataParallel
from .sampler import DistributedSampler

__all__ = ["FitRun"]


class FitRun:
    """The distributed side of one ``fit`` call.

    Attributes
    ----------
    ddp : DistributedDataParallel
        What the training step calls.
    module : nn.Module
        The model itself (what callbacks see and checkpoints store).
    train_loader, val_loader
        This rank's shards.
    seed : int
        The shuffling seed, the same on every rank.
    rank, world_size : int
    """

    def __init__(self, model: Any, train: Any, val: Any, batch_size: int | None,
                 shuffle: bool, seed: int | None) -> None:
        self.world = comm.init()
        self.rank, self.world_size = self.world.rank, self.world.size
        self.wrapped_here = not isinstance(model, DistributedDataParallel)
        self.ddp = DistributedDataParallel(model) if self.wrapped_here else model
        self.module = self.ddp.module
        self.seed = self._agreed_seed(seed)
        self.train_loader = self._train_loader(train, batch_size, shuffle)
        self.val_loader = None if val is None else self._val_loader(val, batch_size)
        # fit shards a pair (X, y) and sums the shards; a caller's own loader is
        # evaluated whole on every rank, which needs no sum
        self.val_sharded = isinstance(val, (tuple, list)) and len(val) == 2

    # ----- set-up -------------------------------------------------------------

    def _agreed_seed(self, seed: int | None) -> int:
        """The caller's seed, or one rank 0 draws: the shards need one order for all."""
        value = np.array([seed if seed is not None else
                          np.random.SeedSequence().generate_state(1)[0] >> 1], dtype=np.int64)
        self.world.broadcast(value, 0, "fit's agreement on a shuffling seed")
        if seed is not None and int(value[0]) != int(seed):
            raise ValueError(f"fit(distributed=True): seed={seed} on rank {self.rank} but "
                             f"{int(value[0])} on rank 0; every rank must pass the same seed")
        return int(value[0])

    def _train_loader(self, train: Any, batch_size: int | None, shuffle: bool) -> Any:
        from ..data import TensorDataset

        n = self.world_size
        if isinstance(train, (tuple, list)):
            if len(train) != 2:
                raise ValueError("fit: train must be a DataLoader or a pair (X, y), got "
                                 f"{len(train)} items")
            dataset = TensorDataset(*train)
            if len(dataset) < n:
                raise ValueError(f"fit(distributed=True): {len(dataset)} training samples "
                                 f"cannot be shared among {n} ranks")
            return _StridedShards(dataset, batch_size, shuffle, self.seed, self.rank, n)
        if isinstance(getattr(train, "sampler", None), DistributedSampler):
            return train  # the caller sharded it (batch_size there is per rank)
        raise ValueError(
            "fit(distributed=True): train must be a pair (X, y) (fit shards it and splits "
            "batch_size among the ranks) or a DataLoader with a DistributedSampler; a plain "
            "loader would give every rank all the data"
        )

    def _val_loader(self, val: Any, batch_size: int | None) -> Any:
        if isinstance(val, (tuple, list)) and len(val) == 2:
            from ..data import DataLoader, TensorDataset

            dataset = TensorDataset(*val)
            # a disjoint share per rank, no padding: each sample is counted once
            mine = np.arange(self.rank, len(dataset), self.world_size)
            return DataLoader(tuple(a[mine] for a in dataset.arrays),
                              batch_size=batch_size or 256, shuffle=False)
        return val  # the caller's loader: evaluated whole on every rank, not summed

    # ----- during training ------------------------------------------------------

    def sum_meter(self, meter: Any, metric_names: list[str], what: str) -> None:
        """Add up an epoch's sums (samples, loss x samples, metric counts) over the ranks."""
        names = list(metric_names)
        local = [float(meter.n), float(meter.loss_sum)]
        for name in names:
            s, c = meter.sums.get(name, (0.0, 0))
            local += [float(s), float(c)]
        buf = np.array(local, dtype=np.float64)
        self.world.all_reduce(buf, "sum", f"fit's sum of the {what} metrics")
        meter.n, meter.loss_sum = int(buf[0]), float(buf[1])
        for k, name in enumerate(names):
            meter.sums[name] = [float(buf[2 + 2 * k]), int(buf[3 + 2 * k])]

    def agree_stop(self, trainer: Any) -> None:
        """Stop on every rank if any rank asked to, with the asking rank's reason."""
        flag = np.array([1 if trainer.stop_training else 0], dtype=np.int32)
        self.world.all_reduce(flag, "max", "fit's agreement on stopping")
        if not flag[0]:
            return
        reasons = self.world.all_gather_bytes((trainer.stop_reason or "").encode(),
                                              "fit's exchange of stop reasons")
        if not trainer.stop_training or trainer.stop_reason is None:
            for r, text in enumerate(reasons):
                if text:
                    trainer.stop_reason = text.decode() if r == self.rank else \
                        f"rank {r}: {text.decode()}"
                    break
        trainer.stop_training = True

    def step(self, run_step: Any, eager_step: Any, xb: Any, yb: Any, optimizer: Any
             ) -> tuple[Any, Any]:
        """One training step on this rank's part of the global batch.

        Returns the step's (loss, outputs), or (None, None) when this rank has
        no samples in this step (it contributes zeros and still steps).

        ``run_step`` may be a ``cr.compile``d step. Its first calls for a batch
        shape capture and verify, and verifying reduces the gradients twice;
        so every rank must call it with the same shapes in the same order, or
        the ranks' collectives fall out of step. Steps whose shares differ
        between ranks (a short last batch that does not divide evenly) run
        ``eager_step`` on every rank instead.
        """
        counts = getattr(self.train_loader, "current", None)
        reducer = self.ddp._reducer
        if counts is None:  # the caller's DistributedSampler: equal shares
            return run_step(xb, yb)
        mine, total = counts
        if mine == 0:
            optimizer.zero_grad()
            reducer.reduce_all()
            optimizer.step()
            return None, None
        if total % self.world_size == 0:
            return run_step(xb, yb)
        reducer.scale = self.world_size * mine / total
        try:
            return eager_step(xb, yb)
        finally:
            reducer.scale = 1.0

    def barrier(self) -> None:
        self.world.barrier("fit's barrier around a checkpoint write")

    def close(self) -> None:
        if self.wrapped_here:
            self.ddp.remove_hooks()


class _Size:
    """Something with a length: how many samples this rank sees in an epoch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class _StridedShards:
    """This rank's part of every global batch of a single-process ``DataLoader``.

    Epoch ``e`` uses the permutation ``DataLoader((X, y), seed=seed)`` draws
    for that epoch (``default_rng([seed, e])``); global batch ``k`` is
    positions ``[kB, (k+1)B)`` of it, and rank ``r`` takes every ``N``-th of
    those starting at ``r``. Every rank yields one batch per global step
    (possibly empty in a short last step); ``current`` is (this rank's
    samples, the step's samples) for the batch just yielded.
    """

    def __init__(self, dataset: Any, batch_size: int | None, shuffle: bool, seed: int,
                 rank: int, world: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.current: tuple[int, int] | None = None
        n = len(dataset)
        self.sampler = _Size(len(range(rank, n, world)))  # for fit's progress bar

    def __len__(self) -> int:
        n = len(self.dataset)
        return 1 if self.batch_size is None else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Any:
        from ..data._common import wrap

        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        self.epoch += 1
        size = n if self.batch_size is None else self.batch_size
        arrays = self.dataset.arrays
        for start in range(0, n, size):
            stop = min(start + size, n)
            idx = order[start + self.rank:stop:self.world]
            self.current = (len(idx), stop - start)
            yield tuple(wrap(np.ascontiguousarray(a[idx])) for a in arrays)
        self.current = None
