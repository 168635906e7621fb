"""Callbacks: code that runs at fixed points of :func:`chainrule.fit`.

``fit`` calls, in this order::

    on_train_begin
    for each epoch:
        on_epoch_begin
        for each batch:
            on_batch_begin
            step: zero_grad, forward, loss, backward, optimizer.step
            on_batch_end            # logs: batch, step, size, loss
        validation (no_grad, eval mode)
        on_epoch_end                # logs: the epoch's record (loss, val_loss, ...)
    on_train_end

Every hook has the signature ``hook(trainer, logs)``: ``trainer`` is the
:class:`~chainrule.training.Trainer` (model, optimizer, history, epoch,
step, ...), ``logs`` a dict of plain Python numbers.

Stopping: a hook stops training by setting ``trainer.stop_training = True``
(optionally ``trainer.stop_reason = "..."``), by calling
``trainer.request_stop("reason")``, or by *returning* ``True`` or a reason
string. A stop requested in ``on_batch_end`` ends the epoch after that batch
(validation and ``on_epoch_end`` still run); one requested in
``on_epoch_end`` ends training after that epoch; one requested in
``on_train_begin`` or ``on_epoch_begin`` ends it before the epoch's batches.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LRSchedulerCallback",
    "WeightChangeStopping",
    "LambdaCallback",
]

Logs = dict[str, Any]


class Callback:
    """Base class: override the hooks you need; each may return a stop request.

    >>> class PrintLoss(cr.callbacks.Callback):
    ...     def on_epoch_end(self, trainer, logs):
    ...         print(logs["epoch"], logs["loss"])
    """

    def on_train_begin(self, trainer: Trainer, logs: Logs) -> Any:
        pass

    def on_train_end(self, trainer: Trainer, logs: Logs) -> Any:
        pass

    def on_epoch_begin(self, trainer: Trainer, logs: Logs) -> Any:
        pass

    def on_epoch_end(self, trainer: Trainer, logs: Logs) -> Any:
        pass

    def on_batch_begin(self, trainer: Trainer, logs: Logs) -> Any:
        pass

    def on_batch_end(self, trainer: Trainer, logs: Logs) -> Any:
        pass


class LambdaCallback(Callback):
    """A callback from plain functions ``fn(trainer, logs)``.

    >>> seen = []
    >>> cb = cr.callbacks.LambdaCallback(on_batch_end=lambda t, logs: seen.append(logs["loss"]))

    ``logs`` holds Python floats, so a list like ``seen`` keeps no Tensors
    (and no computation graphs) alive.
    """

    def __init__(
        self,
        on_train_begin: Callable[[Trainer, Logs], Any] | None = None,
        on_train_end: Callable[[Trainer, Logs], Any] | None = None,
        on_epoch_begin: Callable[[Trainer, Logs], Any] | None = None,
        on_epoch_end: Callable[[Trainer, Logs], Any] | None = None,
        on_batch_begin: Callable[[Trainer, Logs], Any] | None = None,
        on_batch_end: Callable[[Trainer, Logs], Any] | None = None,
    ) -> None:
        given = {
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_batch_begin": on_batch_begin,
            "on_batch_end": on_batch_end,
        }
        for name, fn in given.items():
            if fn is not None:
                setattr(self, name, fn)


# --------------------------------------------------------------------------
# Monitoring helpers
# --------------------------------------------------------------------------


def _resolve_mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    # accuracy-like quantities grow, losses shrink
    grows = ("acc", "auc", "f1", "precision", "recall")
    return "max" if any(s in monitor for s in grows) else "min"


def _check_monitor(trainer: Trainer, monitor: str, who: str) -> None:
    if monitor.startswith("val_") and not trainer.has_val:
        raise ValueError(
            f"{who}: monitor={monitor!r} needs a validation set; pass val=(X_val, y_val) "
            f"to fit, or monitor the training quantity (e.g. monitor='loss')"
        )


def _monitored(logs: Logs, monitor: str, who: str) -> float | None:
    if monitor not in logs:
        raise KeyError(f"{who}: {monitor!r} is not in the epoch logs {sorted(logs)}")
    value = logs[monitor]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


class _Tracker:
    """Best value so far for a monitored quantity, with ``min_delta``."""

    def __init__(self, mode: str, min_delta: float) -> None:
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.best: float | None = None

    def improved(self, value: float | None) -> bool:
        if value is None:
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


def _snapshot(model: Any) -> OrderedDict[str, np.ndarray]:
    # state_dict() returns copies: later steps cannot change the snapshot
    return model.state_dict()


# --------------------------------------------------------------------------
# Early stopping and checkpoints
# --------------------------------------------------------------------------


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default "val_loss"
    patience : int, default 5
        Stop at the end of the ``patience``-th epoch in a row without
        improvement (Keras' and PyTorch Lightning's meaning; 0 behaves as 1).
    min_delta : float, default 0.0
        A change smaller than this does not count as improvement.
    mode : "auto" | "min" | "max"
        "auto": maximise names containing "acc", minimise the rest.
    restore_best_weights : bool, default True
        At the end of training (stopped or not), put the weights of the best
        epoch back into the model.

    Attributes
    ----------
    best, best_epoch, stopped_epoch, wait

    >>> es = cr.callbacks.EarlyStopping(patience=3)
    >>> h = cr.fit(model, loss_fn, opt, (X, y), val=(Xv, yv), callbacks=[es], progress=False)
    >>> h.best_epoch == es.best_epoch
    True
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = _resolve_mode(monitor, mode)
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, trainer: Trainer, logs: Logs) -> None:
        _check_monitor(trainer, self.monitor, "EarlyStopping")
        self._tracker = _Tracker(self.mode, self.min_delta)
        self.wait = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_weights: OrderedDict[str, np.ndarray] | None = None
        trainer.history.monitor, trainer.history.mode = self.monitor, self.mode

    def on_epoch_end(self, trainer: Trainer, logs: Logs) -> Any:
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if self._tracker.improved(value):
            self._tracker.best = self.best = value
            self.best_epoch = logs["epoch"]
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = _snapshot(trainer.model)
            return None
        self.wait += 1
        # patience=3 stops at the 3rd epoch in a row without improvement
        # (Keras' and PyTorch Lightning's meaning)
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            return (
                f"EarlyStopping: {self.monitor} did not improve for {self.wait} epochs "
                f"(best {self.best} at epoch {self.best_epoch})"
            )
        return None

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (and optimizer) with :func:`chainrule.save` at epoch ends.

    Parameters
    ----------
    path : str
        Destination; may contain ``{epoch}`` and log names, e.g.
        ``"ckpt/epoch{epoch:03d}-{val_loss:.3f}.cr"``.
    monitor : str, default "val_loss"
    save_best_only : bool, default True
        Only write when ``monitor`` improved (otherwise every epoch).
    mode : "auto" | "min" | "max"
    save_optimizer : bool, default True
        Store the optimizer state too, so training can resume exactly.

    The epoch's logs go into the checkpoint's metadata. Writes are atomic. In
    ``fit(distributed=True)`` rank 0 alone writes, and every rank waits until
    the file is complete.

    >>> ckpt = cr.callbacks.ModelCheckpoint("best.cr", monitor="val_accuracy")
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        save_best_only: bool = True,
        mode: str = "auto",
        save_optimizer: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = _resolve_mode(monitor, mode)
        self.save_optimizer = save_optimizer

    def on_train_begin(self, trainer: Trainer, logs: Logs) -> None:
        if self.save_best_only:
            _check_monitor(trainer, self.monitor, "ModelCheckpoint")
        self._tracker = _Tracker(self.mode, 0.0)
        self.best: float | None = None
        self.saved: list[str] = []
        if trainer.history.monitor is None:
            trainer.history.monitor, trainer.history.mode = self.monitor, self.mode

    def on_epoch_end(self, trainer: Trainer, logs: Logs) -> None:
        from ..io import save

        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self._tracker.improved(value):
                return
            self._tracker.best = self.best = value
        path = self.path.format(**logs)
        if trainer.rank == 0:  # in a distributed fit the replicas are equal: one file
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)  # "ckpt/epoch{epoch}.cr" on a first run
            meta = {k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool))}
            save(
                trainer.model,
                path,
                optimizer=trainer.optimizer if self.save_optimizer else None,
                metadata=meta,
            )
        trainer.barrier()  # no rank goes on (and may read the file) before it is complete
        self.saved.append(path)


# --------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------


def _wants_metric(scheduler: Any) -> bool:
    """ReduceLROnPlateau-style schedulers take the monitored value in step()."""
    from ..optim.lr_scheduler import ReduceLROnPlateau

    if isinstance(scheduler, ReduceLROnPlateau):
        return True
    return type(scheduler).__name__ == "ReduceLROnPlateau"


class LRSchedulerCallback(Callback):
    """Step a learning-rate scheduler once per epoch (or per batch).

    ``ReduceLROnPlateau`` is given the monitored value (``val_loss`` when a
    validation set exists, else ``loss``, unless ``monitor`` says otherwise);
    other schedulers are stepped without arguments. ``fit(scheduler=...)``
    adds one of these for you.

    >>> sched = cr.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    >>> cr.fit(model, loss_fn, opt, (X, y), callbacks=[cr.callbacks.LRSchedulerCallback(sched)])
    """

    def __init__(self, scheduler: Any, monitor: str | None = None, interval: str = "epoch") -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(
                f"LRSchedulerCallback: interval must be 'epoch' or 'step', got {interval!r}"
            )
        self.scheduler = scheduler
        self.monitor = monitor
        self.interval = interval

    def on_train_begin(self, trainer: Trainer, logs: Logs) -> None:
        if self.monitor is None:
            self.monitor = "val_loss" if trainer.has_val else "loss"
        if _wants_metric(self.scheduler):
            _check_monitor(trainer, self.monitor, "LRSchedulerCallback")

    def _step(self, logs: Logs) -> None:
        if _wants_metric(self.scheduler):
            self.scheduler.step(_monitored(logs, self.monitor or "loss", "LRSchedulerCallback"))
        else:
            self.scheduler.step()

    def on_batch_end(self, trainer: Trainer, logs: Logs) -> None:
        if self.interval == "step":
            self._step(logs)

    def on_epoch_end(self, trainer: Trainer, logs: Logs) -> None:
        if self.interval == "epoch":
            self._step(logs)


# --------------------------------------------------------------------------
# The notes' stopping rule
# --------------------------------------------------------------------------


class WeightChangeStopping(Callback):
    r"""Stop when the weights stop moving: :math:`\|w^{k+1} - w^k\| < \epsilon`.

    This is the stopping rule of gradient descent in the course notes::

        for k in range(max_iteration):
            w^{k+1} = w^k - eta * grad L(w^k)
            if ||w^{k+1} - w^k|| < epsilon: break

    ``w`` is *all* parameters of the model taken as one vector. The iteration
    limit is ``fit``'s ``epochs`` (or ``max_steps``).

    Parameters
    ----------
    tol : float, default 1e-6
        epsilon.
    norm : 2, 1 or inf (``float("inf")`` / ``"inf"``)
        Which vector norm measures the change.
    every : "step" | "epoch"
        Check after every optimizer step (iteration ``k``, as in the notes;
        with full-batch training one step is one epoch) or compare the
        weights at consecutive epoch ends.

    Attributes
    ----------
    last_change : float
        The latest ``||w^{k+1} - w^k||``.
    stopped_step : int or None
        The optimizer step (1-based) at which the rule fired.

    >>> rule = cr.callbacks.WeightChangeStopping(tol=1e-6)
    >>> h = cr.fit(model, loss_fn, opt, (X, y), epochs=100_000, batch_size=None,
    ...            callbacks=[rule], progress=False)
    >>> h.stop_reason
    '||w^{k+1} - w^k||_2 = 9.9e-07 < tol 1e-06 after step 4123'
    """

    def __init__(self, tol: float = 1e-6, norm: float | int | str = 2, every: str = "step") -> None:
        if every not in ("step", "epoch"):
            raise ValueError(
                f"WeightChangeStopping: every must be 'step' or 'epoch', got {every!r}"
            )
        if norm in ("inf", np.inf, float("inf")):
            norm = math.inf
        if norm not in (1, 2, math.inf):
            raise ValueError(f"WeightChangeStopping: norm must be 1, 2 or inf, got {norm!r}")
        self.tol = float(tol)
        self.norm = norm
        self.every = every

    def _change(self) -> float:
        total = 0.0
        for old, diff, p in zip(self._prev, self._diff, self._params):
            # float64 buffers: a tiny change is not lost to float32 rounding,
            # and no arrays are allocated per step
            np.subtract(p.data, old, out=diff)
            np.abs(diff, out=diff)
            if self.norm == 2:
                total += float(np.dot(diff.ravel(), diff.ravel()))
            elif self.norm == 1:
                total += float(diff.sum())
            elif diff.size:
                total = max(total, float(diff.max()))
            old[...] = p.data
        return math.sqrt(total) if self.norm == 2 else total

    def on_train_begin(self, trainer: Trainer, logs: Logs) -> None:
        # the parameter list is fixed for the run; walking the modules each step is slow
        self._params = list(trainer.model.parameters())
        self._prev = [np.array(p.data, dtype=np.float64) for p in self._params]
        self._diff = [np.empty_like(b) for b in self._prev]
        self.last_change = math.inf
        self.stopped_step: int | None = None

    def _check(self, trainer: Trainer) -> str | None:
        self.last_change = self._change()
        if self.last_change < self.tol:
            self.stopped_step = trainer.step
            name = {1: "1", 2: "2", math.inf: "inf"}[self.norm]
            return (
                f"||w^{{k+1}} - w^k||_{name} = {self.last_change:.4g} < tol {self.tol:g} "
                f"after step {trainer.step}"
            )
        return None

    def on_batch_end(self, trainer: Trainer, logs: Logs) -> Any:
        return self._check(trainer) if self.every == "step" else None

    def on_epoch_end(self, trainer: Trainer, logs: Logs) -> Any:
        return self._check(trainer) if self.every == "epoch" else None
