"""Training: :func:`fit`, :class:`History` and callbacks.

>>> import chainrule as cr
>>> history = cr.fit(model, cr.nn.functional.cross_entropy, opt, (X, y), epochs=10,
...                  val=(X_val, y_val), callbacks=[cr.callbacks.EarlyStopping(patience=3)])
>>> history.to_csv("history.csv"); history.plot("loss.png")
"""

from __future__ import annotations

from . import callbacks
from .callbacks import (
    Callback,
    EarlyStopping,
    LambdaCallback,
    LRSchedulerCallback,
    ModelCheckpoint,
    WeightChangeStopping,
)
from .history import History
from .loop import Accuracy, Trainer, evaluate, fit

__all__ = [
    "fit",
    "evaluate",
    "History",
    "Trainer",
    "Accuracy",
    "callbacks",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LRSchedulerCallback",
    "WeightChangeStopping",
    "LambdaCallback",
]
