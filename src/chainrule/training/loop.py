"""The training loop: :func:`fit`, and :func:`evaluate` for a held-out set.

``fit`` reads straight down in labelled sections: set-up, epoch begin,
batches (zero_grad / forward / loss / backward / step), validation, epoch
end. Callbacks run only at the named points (see
:mod:`chainrule.training.callbacks`); early stopping, checkpoints and
learning-rate schedules are callbacks, not flags threaded through the loop.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..tensor import Tensor, no_grad
from .callbacks import Callback, LRSchedulerCallback
from .history import History

__all__ = ["fit", "evaluate", "Trainer", "Accuracy"]

Data = Any  # a DataLoader, or a tuple (X, y) of arrays / Tensors


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


class Accuracy:
    """Fraction of correct predictions, counted exactly over an epoch.

    * several outputs per sample: ``argmax`` of the outputs against integer
      labels (or against the ``argmax`` of one-hot / probability targets);
    * one output per sample: ``output > threshold`` against labels in {0, 1}.
      The threshold is 0 for logits (the losses ``*_with_logits``) and 0.5
      for probabilities or 0/1 regression targets; ``fit`` picks it from the
      loss, or pass ``Accuracy(threshold=...)`` in ``metrics``.

    >>> cr.fit(model, F.mse_loss, opt, (X, y), metrics=[cr.training.Accuracy(0.5)])
    """

    name = "accuracy"

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    def counts(self, out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """(number correct, number of samples) for one batch."""
        n = out.shape[0] if out.ndim else 1
        if out.ndim >= 2 and out.shape[-1] > 1:
            pred = out.argmax(axis=-1)
            true = y.argmax(axis=-1) if y.shape == out.shape else y.reshape(pred.shape)
        else:
            threshold = 0.5 if self.threshold is None else self.threshold
            pred = out.reshape(n, -1)[:, 0] > threshold
            true = y.reshape(n, -1)[:, 0] > 0.5
        return float(np.count_nonzero(pred == true)), n


class _FnMetric:
    """A user metric ``fn(outputs, targets) -> float`` averaged over samples."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def counts(self, out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        n = out.shape[0] if out.ndim else 1
        return float(self.fn(out, y)) * n, n


def _loss_name(loss_fn: Any) -> str:
    return (getattr(loss_fn, "__name__", None) or type(loss_fn).__name__).lower()


def _resolve_metrics(metrics: Any, loss_fn: Any, y: np.ndarray) -> list[Any]:
    name = _loss_name(loss_fn)
    logits = "logits" in name
    if metrics == "auto":
        # classification: integer labels, or a cross-entropy-type loss
        classify = y.dtype.kind in "biu" or any(
            s in name for s in ("cross_entropy", "crossentropy", "bce", "nll")
        )
        metrics = ("accuracy",) if classify else ()
    if metrics is None:
        return []
    if isinstance(metrics, str):
        metrics = (metrics,)
    out: list[Any] = []
    for m in metrics:
        if m in ("accuracy", "acc"):
            out.append(Accuracy(0.0 if logits else 0.5))
        elif hasattr(m, "counts"):
            out.append(m)
        elif callable(m):
            out.append(_FnMetric(m))
        else:
            raise ValueError(
                f"fit: unknown metric {m!r}; use 'accuracy', an Accuracy(...) or a "
                "function fn(outputs, targets) -> float"
            )
    return out


class _Meter:
    """Sums over an epoch: sample-weighted loss and exact metric counts."""

    def __init__(self) -> None:
        self.n = 0
        self.loss_sum = 0.0
        self.sums: dict[str, list[float]] = {}

    def add(self, n: int, loss: float, metrics: list[Any], out: Any, y: Any) -> None:
        self.n += n
        self.loss_sum += loss * n
        if out is None:
            return
        for m in metrics:
            s, c = m.counts(np.asarray(out), np.asarray(y))
            acc = self.sums.setdefault(m.name, [0.0, 0])
            acc[0] += s
            acc[1] += c

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else math.nan

    def values(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss}
        for name, (s, c) in self.sums.items():
            out[f"{prefix}{name}"] = s / c if c else math.nan
        return out


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _as_loader(data: Data, batch_size: int | None, shuffle: bool, seed: Any, what: str) -> Any:
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                f"fit: {what} must be a DataLoader or a pair (X, y), got {len(data)} items"
            )
        from ..data import DataLoader

        return DataLoader(tuple(data), batch_size=batch_size, shuffle=shuffle, seed=seed)
    if hasattr(data, "__iter__"):
        return data
    raise TypeError(f"fit: {what} must be a DataLoader or a pair (X, y), got {type(data).__name__}")


def _batch_pair(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("fit: each batch must be a pair (inputs, targets)")
    xb, yb = batch
    xb = xb if isinstance(xb, Tensor) else Tensor._const(np.asarray(xb))
    yb = yb if isinstance(yb, Tensor) else Tensor._const(np.asarray(yb))
    return xb, yb


def _current_lr(optimizer: Any) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        lr = groups[0].get("lr")
        return float(lr) if lr is not None else None
    return None


def evaluate(
    model: Any,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    metrics: Any = "auto",
    batch_size: int | None = 256,
) -> dict[str, float]:
    """Mean loss and metrics of ``model`` on ``data``, in eval mode, without a graph.

    >>> cr.training.evaluate(model, F.cross_entropy, (X_test, y_test))
    {'loss': 0.08, 'accuracy': 0.975}
    """
    loader = _as_loader(data, batch_size, False, None, "data")
    return _evaluate_meter(model, loss_fn, loader, metrics).values()


def _evaluate_meter(model: Any, loss_fn: Any, loader: Any, metrics: Any) -> _Meter:
    """The sums behind :func:`evaluate` (fit adds them up over ranks when distributed)."""
    was_training = getattr(model, "training", None)
    _set_mode(model, False)
    meter, resolved = _Meter(), None
    try:
        with no_grad():
            for batch in loader:
                xb, yb = _batch_pair(batch)
                if resolved is None:
                    resolved = _resolve_metrics(metrics, loss_fn, yb.data)
                out = model(xb)
                loss = float(loss_fn(out, yb).item())
                meter.add(len(xb), loss, resolved, out.data, yb.data)
    finally:
        if was_training is not None:
            _set_mode(model, was_training)
    return meter


def _set_mode(model: Any, training: bool) -> None:
    if training and hasattr(model, "train"):
        model.train()
    elif not training and hasattr(model, "eval"):
        model.eval()


# --------------------------------------------------------------------------
# Trainer state and callbacks
# --------------------------------------------------------------------------


class Trainer:
    """The state of a running :func:`fit`, handed to every callback hook.

    Attributes
    ----------
    model, loss_fn, optimizer, scheduler
    history : History
        Filled in as epochs finish.
    epoch : int
        The current epoch, 1-based.
    epochs : int
        The last epoch ``fit`` will run.
    step : int
        Optimizer steps taken so far in this ``fit`` call (iteration ``k``).
    batch : int
        Index of the current batch within the epoch.
    has_val : bool
        Whether a validation set was given.
    stop_training : bool
        Set it to True to stop (see :meth:`request_stop`).
    stop_reason : str or None
    compiled : CompiledStep or None
        The :func:`chainrule.compile` wrapper running the steps (its ``stats``
        say how many were replayed), or None when training eagerly.
    compile_note : str or None
        Why training runs eagerly although compiling was not turned off: set
        the first time it happens, and said once: a line on the progress
        display when ``compile="auto"`` keeps a user-defined model eager, a
        :class:`chainrule.CompileWarning` when a compiled step falls back.
    rank, world_size : int
        This process's rank and the number of ranks (0 and 1 unless
        ``fit(distributed=True)``). Callbacks that write files do so on rank
        0 only, then call :meth:`barrier`.
    """

    def __init__(self, model: Any, loss_fn: Any, optimizer: Any, scheduler: Any,
                 epochs: int, has_val: bool) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.history = History()
        self.epoch = 0
        self.epochs = epochs
        self.step = 0
        self.batch = 0
        self.has_val = has_val
        self.stop_training = False
        self.stop_reason: str | None = None
        self.compiled: Any = None
        self.compile_note: str | None = None
        self.rank = 0
        self.world_size = 1
        self._barrier: Callable[[], None] | None = None

    def barrier(self) -> None:
        """Wait for every rank (``fit(distributed=True)``); nothing in one process."""
        if self._barrier is not None:
            self._barrier()

    def request_stop(self, reason: str | None = None) -> None:
        """Stop after the current batch (or epoch, from ``on_epoch_end``)."""
        self.stop_training = True
        if reason and self.stop_reason is None:
            self.stop_reason = reason


def _call(callbacks: Sequence[Callback], hook: str, trainer: Trainer, logs: dict) -> None:
    for cb in callbacks:
        before = trainer.stop_training
        result = getattr(cb, hook)(trainer, logs)
        if result is True or (isinstance(result, str) and result):
            trainer.request_stop(result if isinstance(result, str) else None)
        if trainer.stop_training and not before and trainer.stop_reason is None:
            trainer.stop_reason = f"{type(cb).__name__}.{hook} requested a stop"


# --------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------


def _fmt_logs(logs: dict[str, Any]) -> str:
    parts = []
    for k, v in logs.items():
        if k in ("epoch", "steps", "lr", "seconds", "samples_per_s") or not isinstance(v, float):
            continue
        parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


class _Progress:
    """What ``fit`` shows while it runs.

    * ``progress=False``: nothing.
    * stdout is a terminal: a tqdm bar per epoch (samples, loss, metric,
      samples/s); with more than ``_MANY`` epochs (full-batch gradient descent
      runs thousands) one bar over the epochs instead, so the screen does not
      fill with bars.
    * otherwise (a log file, CI, a notebook's captured output): one line per
      epoch, thinned to about 20 lines for long runs, plus the last epoch and
      the reason training stopped.
    """

    _MANY = 50

    def __init__(self, enabled: bool, epochs: int, first_epoch: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.stream = sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.tty = enabled and bool(isatty and isatty())
        runs = max(epochs - first_epoch, 0)
        self.many = runs > self._MANY
        self.every = max(1, runs // 20) if self.many else 1
        self.bar: Any = None
        self.run_bar: Any = None
        if self.tty and self.many:
            from tqdm import tqdm

            self.run_bar = tqdm(total=runs, desc="training", unit="epoch", file=self.stream,
                                **self._width())

    def _width(self) -> dict[str, Any]:
        """Follow the terminal's size, unless it reports none (a pseudo-terminal
        without a size, e.g. under `script` or some CI runners): tqdm would
        then draw a zero-width bar and hide it below a zero-line screen."""
        import os

        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            size = os.terminal_size((0, 0))
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
        return {"ncols": 100, "nrows": 50}

    def epoch_begin(self, epoch: int, n_samples: int | None) -> None:
        if not self.tty or self.many:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=n_samples, desc=f"epoch {epoch}/{self.epochs}", unit="samples",
            unit_scale=True, leave=True, file=self.stream, **self._width(),
        )

    def batch_end(self, n: int, meter: _Meter) -> None:
        if self.bar is not None:
            # refresh=False: tqdm redraws on its own timer, not on every batch
            self.bar.set_postfix_str(_fmt_logs(meter.values()), refresh=False)
            self.bar.update(n)

    def epoch_end(self, record: dict[str, Any], last: bool) -> None:
        if not self.enabled:
            return
        rate = record.get("samples_per_s")
        rate_text = f"{rate:,.0f} samples/s" if rate and math.isfinite(rate) else ""
        if self.bar is not None:
            # the bar shows samples/s itself
            self.bar.set_postfix_str(_fmt_logs(record), refresh=False)
            self.bar.close()
            self.bar = None
        elif self.run_bar is not None:
            self.run_bar.set_postfix_str(
                f"epoch {record['epoch']}  {_fmt_logs(record)}  {rate_text}", refresh=False
            )
            self.run_bar.update(1)
        elif last or record["epoch"] % self.every == 0:
            print(
                f"epoch {record['epoch']}/{self.epochs}  {_fmt_logs(record)}  "
                f"{record['seconds']:.2f}s  {rate_text}".rstrip(),
                file=self.stream, flush=True,
            )

    def note(self, text: str) -> None:
        """A one-off line (why training runs eagerly), above any bar."""
        if not self.enabled:
            return
        if self.bar is not None or self.run_bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def stopped(self, reason: str | None, early: bool) -> None:
        self.close()
        if self.enabled and reason:
            print(f"{'stopped early' if early else 'stopped'}: {reason}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        for bar in (self.bar, self.run_bar):
            if bar is not None:
                bar.close()
        self.bar = self.run_bar = None


def _maybe_compile(step: Callable, compile: bool | str, model: Any, loss_fn: Any) -> Callable:
    """``cr.compile(step)`` when wanted (and, for "auto", safe), else the eager step."""
    if compile is False or compile is None:
        return step
    if compile == "auto" and _not_replay_safe(model, loss_fn) is not None:
        return step
    from ..compile import compile as compiler

    return compiler(step)


def _compile_note(compile: bool | str, model: Any, loss_fn: Any) -> str | None:
    """Why ``compile="auto"`` trains eagerly (None: it compiles, or compiling is off)."""
    if compile != "auto":
        return None
    why = _not_replay_safe(model, loss_fn)
    if why is None:
        return None
    return (f"fit: training eagerly: {why}; compile=True compiles it anyway "
            "(cr.compile checks the step and falls back if it must)")


def _ours(obj: Any) -> bool:
    """Defined by chainrule itself (a class or function from one of its modules)."""
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    return mod == "chainrule" or mod.startswith("chainrule.")


def _replay_safe(model: Any, loss_fn: Any) -> bool:
    """Whether ``compile="auto"`` compiles a step of this model and loss."""
    return _not_replay_safe(model, loss_fn) is None


def _not_replay_safe(model: Any, loss_fn: Any) -> str | None:
    """Why ``compile="auto"`` leaves the step eager (None: it compiles it).

    ``cr.compile`` guards, traces and verifies any step, and refuses what it
    cannot replay; "auto" keeps to chainrule's own modules and losses, whose
    code it knows reads no state the guards miss. A user-defined module or
    loss, a module whose ``forward`` was replaced on the instance, or one with
    forward hooks (as ``GradientNormRecorder`` registers to watch deltas) runs
    eagerly unless ``compile=True``.
    """
    modules = model.modules() if hasattr(model, "modules") else None
    if modules is None:
        return f"the model is a {type(model).__name__}, not a chainrule Module"
    for m in modules:
        if not _ours(type(m)):
            return f"the model has the user-defined module {type(m).__name__}"
        if "forward" in vars(m):
            return f"the forward of a {type(m).__name__} in the model was replaced"
        if m.has_forward_hooks():
            return f"a {type(m).__name__} in the model has forward hooks"
    if hasattr(loss_fn, "forward"):  # a loss module
        if not _ours(type(loss_fn)) or "forward" in vars(loss_fn):
            return f"the loss {type(loss_fn).__name__} is user-defined"
        if getattr(loss_fn, "has_forward_hooks", bool)():
            return f"the loss {type(loss_fn).__name__} has forward hooks"
        return None
    if not _ours(loss_fn):
        return f"the loss function {getattr(loss_fn, '__name__', loss_fn)!r} is user-defined"
    return None


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------


def fit(
    model: Any,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: Any,
    train: Data,
    epochs: int = 10,
    val: Data | None = None,
    callbacks: Iterable[Callback] = (),
    metrics: Any = "auto",
    batch_size: int | None = 32,
    shuffle: bool = True,
    seed: int | None = None,
    progress: bool = True,
    scheduler: Any = None,
    compile: bool | str = "auto",
    max_steps: int | None = None,
    initial_epoch: int = 0,
    distributed: bool = False,
) -> History:
    """Train ``model`` by mini-batch gradient descent; return a :class:`History`.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(xb)``.
    loss_fn : callable
        ``loss_fn(outputs, targets)`` -> scalar Tensor, the *mean* over the batch.
    optimizer : optim.Optimizer
    train : DataLoader or (X, y)
        For a pair of arrays a DataLoader is made with ``batch_size``,
        ``shuffle`` and ``seed``. ``batch_size=None`` is full-batch gradient
        descent (one step per epoch).
    epochs : int
        The last epoch to run (the iteration limit of the notes' algorithm).
    val : DataLoader or (X, y), optional
        Evaluated after every epoch in eval mode under ``no_grad``, giving
        ``val_loss`` and ``val_<metric>``.
    callbacks : iterable of Callback
        Run in order at the named points (see ``chainrule.callbacks``).
    metrics : "auto", sequence or None
        "auto" gives ``accuracy`` when the labels are integers or the loss is
        a cross-entropy, and no metric for regression. Items: "accuracy",
        an :class:`Accuracy`, or ``fn(outputs, targets) -> float``.
    seed : int, optional
        Seeds the shuffling (epoch ``k`` gets the order of ``(seed, k)``) and,
        at the start of every epoch, chainrule's global generator (Dropout)
        from ``(seed, k)``: the same seed gives the same History and the same
        weights, bit for bit, and a resumed run matches an uninterrupted one.
    progress : bool
        On a terminal, a tqdm bar per epoch with loss, metric and samples/s;
        when stdout is not a terminal, one line per epoch; False prints nothing.
    scheduler : lr scheduler, optional
        Stepped once per epoch (``ReduceLROnPlateau`` gets ``val_loss``, or
        ``loss``); same as adding ``LRSchedulerCallback(scheduler)``.
    compile : "auto", True or False
        Run the training step through :func:`chainrule.compile` (captured once,
        then replayed without its Python: same results bit for bit, faster).
        "auto" does so when the model and the loss are made only of
        chainrule's own modules and functions, which keep the replay's
        contract; True compiles any step; False always runs eagerly.
    max_steps : int, optional
        Stop after this many optimizer steps in total.
    initial_epoch : int
        Epochs already done (when resuming): training runs epochs
        ``initial_epoch + 1 .. epochs`` and a seeded loader replays the same
        data order as an uninterrupted run.
    distributed : bool
        Train data-parallel on the ranks of an MPI job (``mpiexec -n N``; see
        :mod:`chainrule.distributed`). ``batch_size`` stays the global batch
        (each rank takes ``batch_size / N`` per step, so the run matches one
        process with the same batch); rank 0 alone shows progress and writes
        checkpoints; the History holds the metrics over all ranks, and every
        rank stops at the same point. Callbacks see the model itself, not its
        ``DistributedDataParallel`` wrapper.

    Returns
    -------
    History

    Examples
    --------
    >>> X, y = cr.data.load_digits()
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> opt = cr.optim.Adam(model.parameters(), lr=1e-3)
    >>> history = cr.fit(model, nn.functional.cross_entropy, opt, (X, y), epochs=20,
    ...                  val=(X_val, y_val), seed=0,
    ...                  callbacks=[cr.callbacks.EarlyStopping(patience=3)])
    >>> history.history["val_accuracy"][-1]
    0.97
    """
    # ---- set-up ------------------------------------------------------------
    if not callable(loss_fn):
        raise TypeError(
            f"fit: loss_fn must be a function loss_fn(outputs, targets), got {loss_fn!r}; "
            "e.g. cr.nn.functional.cross_entropy or cr.nn.MSELoss()"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"fit: max_steps must be >= 1, got {max_steps}")
    run = _distributed_run(model, train, val, batch_size, shuffle, seed) if distributed else None
    if run is None:
        train_loader = _as_loader(train, batch_size, shuffle, seed, "train")
        val_loader = None if val is None else _as_loader(val, batch_size, False, None, "val")
    else:  # the wrapped model trains; callbacks and validation see the model itself
        model, train_loader, val_loader, seed = run.ddp, run.train_loader, run.val_loader, run.seed
    plain_model = model if run is None else run.module
    callbacks = list(callbacks)
    if scheduler is not None:
        callbacks.append(LRSchedulerCallback(scheduler))
    trainer = Trainer(plain_model, loss_fn, optimizer, scheduler, epochs, val_loader is not None)
    if run is not None:
        trainer.rank, trainer.world_size, trainer._barrier = run.rank, run.world_size, run.barrier
    history = trainer.history
    display = _Progress(progress and trainer.rank == 0, epochs, initial_epoch)
    resolved: list[Any] | None = None  # metrics, fixed at the first batch (needs the labels)
    outputs: list[Any] = [None]  # the last batch's outputs (an array, not a Tensor)

    def step(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """One iteration: w <- w - eta * dL/dw (or the optimizer's version of it)."""
        optimizer.zero_grad()
        out = model(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        optimizer.step()
        return loss, out

    was_training = getattr(model, "training", None)

    _call(callbacks, "on_train_begin", trainer, {"epochs": epochs})
    # decided after on_train_begin: callbacks may patch the model there
    run_step = _maybe_compile(step, compile, model, loss_fn)
    # the CompiledStep when cr.compile took the step (it says .unsupported), else None
    compiled: Any = run_step if run_step is not step else None
    trainer.compiled = compiled
    note = trainer.compile_note = None if compiled is not None else _compile_note(
        compile, model, loss_fn)
    if note is not None:
        display.note(note)
    try:
        for epoch in range(initial_epoch + 1, epochs + 1):
            # ---- epoch begin -------------------------------------------------
            trainer.epoch = epoch
            if getattr(model, "training", None) is not True:
                _set_mode(model, True)  # walks every module: only when needed
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch - 1)  # seeded order depends on the epoch only
            if seed is not None:
                _seed_epoch(seed, epoch, trainer.rank)
            lr = _current_lr(optimizer)
            _call(callbacks, "on_epoch_begin", trainer, {"epoch": epoch, "lr": lr})
            if run is not None:
                run.agree_stop(trainer)
            if trainer.stop_training:  # asked for in on_train_begin / on_epoch_begin
                break
            n_samples = _dataset_size(train_loader)
            display.epoch_begin(epoch, n_samples)
            meter = _Meter()
            t0 = time.perf_counter()

            # ---- batches -----------------------------------------------------
            for b, batch in enumerate(train_loader):
                trainer.batch = b
                xb, yb = _batch_pair(batch)
                _call(callbacks, "on_batch_begin", trainer,
                      {"epoch": epoch, "batch": b, "step": trainer.step + 1})
                if run is None:
                    loss, out = run_step(xb, yb)
                else:
                    loss, out = run.step(run_step, step, xb, yb, optimizer)
                trainer.step += 1
                if compiled is not None and compiled.unsupported is not None \
                        and trainer.compile_note is None:
                    _say_fallback(trainer, compiled)
                if loss is None:  # distributed: no samples on this rank in a short last step
                    loss_value = math.nan
                else:
                    outputs[0] = out.data  # the values, for the metrics
                    loss_value = float(loss.item())
                    del loss, out  # the graph was freed by backward; drop the last references
                    if resolved is None:
                        resolved = _resolve_metrics(metrics, loss_fn, yb.data)
                    meter.add(len(xb), loss_value, resolved, outputs[0], yb.data)
                display.batch_end(len(xb), meter)
                _call(callbacks, "on_batch_end", trainer,
                      {"epoch": epoch, "batch": b, "step": trainer.step,
                       "size": len(xb), "loss": loss_value})
                if max_steps is not None and trainer.step >= max_steps:
                    if trainer.stop_reason is None:
                        trainer.stop_reason = f"max_steps={max_steps} reached"
                    trainer.stop_training = True
                if run is not None:
                    run.agree_stop(trainer)
                if trainer.stop_training:
                    break
            train_seconds = time.perf_counter() - t0
            if run is not None:
                run.sum_meter(meter, [m.name for m in resolved or ()], "training")

            # ---- validation --------------------------------------------------
            record: dict[str, Any] = {"epoch": epoch, "steps": trainer.step}
            record.update(meter.values())
            if val_loader is not None:
                vmeter = _evaluate_meter(plain_model, loss_fn, val_loader, resolved or ())
                if run is not None and run.val_sharded:
                    run.sum_meter(vmeter, [m.name for m in resolved or ()], "validation")
                record.update({f"val_{k}": v for k, v in vmeter.values().items()})
            record["lr"] = lr
            record["seconds"] = time.perf_counter() - t0
            record["samples_per_s"] = meter.n / train_seconds if train_seconds > 0 else math.nan

            # ---- epoch end ---------------------------------------------------
            history.append(record)
            _call(callbacks, "on_epoch_end", trainer, record)
            if run is not None:
                run.agree_stop(trainer)
            display.epoch_end(record, last=trainer.stop_training or epoch == epochs)
            if trainer.stop_training:
                break
    finally:
        display.close()
        if run is not None:
            run.close()

    # ---- end of training -----------------------------------------------------
    history.stop_reason = trainer.stop_reason
    history.stopped_early = trainer.stop_training and not (
        max_steps is not None and trainer.stop_reason == f"max_steps={max_steps} reached"
    )
    display.stopped(history.stop_reason, history.stopped_early)
    _call(callbacks, "on_train_end", trainer, {"epochs": len(history), "steps": trainer.step})
    if was_training is not None:
        _set_mode(model, was_training)
    return history


def _say_fallback(trainer: Trainer, compiled: Any) -> None:
    """Once per fit: the compiled step runs eagerly (some or all batches), and why."""
    from ..compile import CompileWarning

    trainer.compile_note = (
        f"fit: the compiled training step runs eagerly from step {trainer.step} on "
        f"(for the batches it could not replay): {compiled.unsupported}"
    )
    warnings.warn(trainer.compile_note, CompileWarning, stacklevel=3)


def _seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Re-seed the global generator (Dropout masks) from ``(seed, epoch)``.

    Per epoch rather than once, so that epoch k's randomness does not depend
    on how many epochs ran before it: a run resumed at ``initial_epoch``
    draws the same masks as an uninterrupted one. Ranks other than 0 of a
    distributed run draw their own masks (their samples are different ones).
    """
    from .. import random as cr_random

    key = [int(seed), int(epoch)] + ([int(rank)] if rank else [])
    state = np.random.SeedSequence(key).generate_state(2, np.uint64)
    cr_random.manual_seed(int(state[0]) << 64 | int(state[1]))


def _distributed_run(model: Any, train: Data, val: Data | None, batch_size: int | None,
                     shuffle: bool, seed: int | None) -> Any:
    """fit(distributed=True)'s set-up: see chainrule.distributed.training (needs mpi4py)."""
    from ..distributed.training import FitRun

    return FitRun(model, train, val, batch_size, shuffle, seed)


def _dataset_size(loader: Any) -> int | None:
    dataset = getattr(loader, "sampler", None) or getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
