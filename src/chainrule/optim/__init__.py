"""Optimizers and learning-rate schedules with PyTorch's names and update rules.

>>> opt = cr.optim.Adam(model.parameters(), lr=1e-3)
>>> for xb, yb in loader:
...     opt.zero_grad()
...     loss_fn(model(xb), yb).backward()
...     opt.step()
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import GradNotZeroedWarning, Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "GradNotZeroedWarning",
           "lr_scheduler"]
