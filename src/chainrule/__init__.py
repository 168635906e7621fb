"""chainrule: backpropagation made real.

A reverse-mode automatic-differentiation engine over a computation graph
recorded as code runs, and the neural-network toolkit on top of it.

>>> import chainrule as cr
>>> w = cr.tensor(5.0, requires_grad=True)
>>> J = (w * 1.0 + 1.0 - 2.0) ** 2
>>> J.backward(); w.grad
"""

from __future__ import annotations

# isort: off
# First, before NumPy loads OpenBLAS: under mpiexec with several ranks on a
# node, give each rank's BLAS its share of the cores (see _rank_env).
from . import _rank_env  # noqa: F401
# isort: on

import numpy as _np

from . import data, nn, ops, optim, random, training, viz
from .compile import CompileError, CompileWarning, compile  # noqa: A004  (cr.compile, as torch.compile)
from .custom import DoubleBackwardError, Function, check_graph, once_differentiable

# the old module path first, then the name: `cr.explain` stays the function even
# after someone imports the module chainrule.explain
from .explain import explain
from .factories import (
    arange,
    eye,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    randn,
    zeros,
    zeros_like,
)
from .functional import (
    GradcheckError,
    grad,
    gradcheck,
    hessian,
    jacobian,
    value_and_grad,
    vjp,
)
from .io import Checkpoint, CheckpointError, load, load_model, save
from .ops import (
    RULES,
    abs,
    add,
    amax,
    amin,
    apply,
    argmax,
    argmin,
    astype,
    broadcast_to,
    cat,
    clamp,
    clip,
    clone,
    concatenate,
    cos,
    div,
    exp,
    expand,
    expand_dims,
    flatten,
    getitem,
    leaky_relu,
    linear,
    log,
    log_softmax,
    logsumexp,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mul,
    neg,
    permute,
    pow,
    relu,
    reshape,
    rule,
    sigmoid,
    sin,
    softmax,
    softplus,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    sub,
    sum,
    swapaxes,
    tanh,
    transpose,
    unsqueeze,
    var,
    where,
)
from .random import manual_seed
from .spec import ModelSpec, Predictor, SpecError, load_predictor
from .tensor import (
    AnomalyError,
    GraphReleasedError,
    Tensor,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    is_keeping_values,
    keep_values,
    no_grad,
    set_grad_enabled,
    set_keep_values,
    tensor,
)
from .training import History, callbacks, fit

__version__ = "0.1.0"

float32 = _np.float32
float64 = _np.float64


def __getattr__(name: str) -> object:
    # Imported on first use only: cr.sklearn and cr.onnx need optional
    # dependencies (scikit-learn, onnx), and cr.playground() starts a web
    # server; `import chainrule` must not pay for (or need) any of them.
    if name in ("sklearn", "onnx", "playground"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'chainrule' has no attribute {name!r}")
