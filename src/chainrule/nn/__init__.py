"""Neural networks: modules, layers, losses, initialisation.

>>> import chainrule as cr
>>> model = cr.nn.Sequential(cr.nn.Linear(4, 16), cr.nn.ReLU(), cr.nn.Linear(16, 3))
>>> loss = cr.nn.CrossEntropyLoss()(model(x), labels)
"""

from . import functional, init, utils
from .layers import (
    ELU,
    GELU,
    LAYERS,
    BatchNorm1d,
    BCELoss,
    BCEWithLogitsLoss,
    CategoricalEmbedding,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    HuberLoss,
    Identity,
    L1Loss,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MSELoss,
    NLLLoss,
    ReLU,
    Sequential,
    Sigmoid,
    SiLU,
    SmoothL1Loss,
    Softmax,
    Tanh,
    build,
)
from .module import IncompatibleKeys, Module, Parameter

__all__ = [
    "functional", "init", "utils", "Module", "Parameter", "IncompatibleKeys",
    "Linear", "Sequential", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Identity", "Flatten", "Dropout", "MSELoss", "BCELoss", "BCEWithLogitsLoss",
    "CrossEntropyLoss", "NLLLoss", "build", "LAYERS", "GELU", "SiLU", "ELU", "LayerNorm",
    "BatchNorm1d", "Embedding", "CategoricalEmbedding", "L1Loss", "HuberLoss", "SmoothL1Loss",
]
