"""The MLP view, kept at its old path; the code lives in :mod:`chainrule.teach.mlp`."""

from __future__ import annotations

from .teach.mlp import (
    LOSSES,
    GradientNormRecorder,
    LayerBackprop,
    MLPBackprop,
    mlp_backprop,
    plot_gradient_norms,
)

__all__ = ["LOSSES", "LayerBackprop", "MLPBackprop", "mlp_backprop", "GradientNormRecorder",
           "plot_gradient_norms"]
