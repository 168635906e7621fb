"""The MLP view: the notes' δ recursion with numbers, checked against the engine.

For a network of ``Linear`` layers each followed by an elementwise
activation, the notes (the backpropagation lecture's section 2, and the
four fundamental partial derivatives) compute the gradients by hand:

    a⁰ = x,  z^l = W^l a^(l-1) + b^l,  a^l = σ(z^l)
    δ^L = ∇_a C ⊙ σ'(z^L)
    δ^l = ((W^(l+1))ᵀ δ^(l+1)) ⊙ σ'(z^l)
    ∂C/∂W^l = δ^l (a^(l-1))ᵀ,      ∂C/∂b^l = δ^l

:func:`mlp_backprop` runs one batch through the model inside
``cr.keep_values()``, reads z^l, a^l and σ'(z^l) from the ledger
(``cr.explain(loss, model=model)``), does the recursion above in NumPy, and
puts it next to what the engine's generic backward walk computed for the
same tensors (δ^l = ∂C/∂z^l), with the largest difference.

Layout. The notes use column vectors, one sample at a time. chainrule's
``Linear`` uses PyTorch's layout: a batch is a matrix whose *rows* are
samples, ``Z = A W^T + b`` with ``W`` of shape (out, in). Row i of our
``Δ^l`` is the notes' (δ^l)ᵀ for sample i, so the recursion reads

    Δ^l = (Δ^(l+1) W^(l+1)) ⊙ σ'(Z^l)      [= ((W^T δ)^T) per row]
    ∂C/∂W^l = (Δ^l)ᵀ A^(l-1)               [= Σ_i δ_i (a_i)ᵀ]
    ∂C/∂b^l = column sums of Δ^l           [= Σ_i δ_i]

(with the loss's 1/n already inside ∇_a C for a mean over the batch).

:class:`GradientNormRecorder` is a ``cr.fit`` callback recording per-layer
gradient norms during training; :func:`plot_gradient_norms` draws them (the
vanishing gradients of a deep sigmoid network next to a ReLU one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tensor import Tensor, keep_values
from ..training.callbacks import Callback
from ._format import format_value, superscript
from .ledger import Ledger, explain

__all__ = [
    "LOSSES",
    "LayerBackprop",
    "MLPBackprop",
    "mlp_backprop",
    "GradientNormRecorder",
    "plot_gradient_norms",
]


def _mse_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 2.0 * (a - y) / a.size


def _half_sse_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return a - y


def _bce_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (a - y) / (a * (1.0 - a)) / a.size


# ∇_a C for the costs the notes use, by name, written out by hand (C is a
# mean over all entries for "mse" and "bce", as in nn.MSELoss/BCELoss;
# "half_sse" is the notes' C = 1/2 Σ (a - y)^2, summed over the batch).
LOSSES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], Callable]] = {
    "mse": (_mse_grad, lambda a, y: ((a - y) ** 2).mean()),
    "half_sse": (_half_sse_grad, lambda a, y: 0.5 * ((a - y) ** 2).sum()),
    "bce": (
        _bce_grad,
        lambda a, y: -(y * a.log() + (1.0 - y) * (1.0 - a).log()).mean(),
    ),
}


@dataclass
class LayerBackprop:
    """One layer l: z^l, a^l, δ^l and the parameter gradients, both ways."""

    index: int  # l, counting Linear layers from 1 (the input is a⁰)
    description: str
    z: np.ndarray
    a: np.ndarray
    sigma_prime: np.ndarray
    delta_numpy: np.ndarray
    delta_engine: np.ndarray
    dW_numpy: np.ndarray
    dW_engine: np.ndarray
    db_numpy: np.ndarray | None
    db_engine: np.ndarray | None

    @property
    def max_diff(self) -> float:
        """Largest |NumPy - engine| over δ^l, ∂C/∂W^l and ∂C/∂b^l."""
        pairs = [(self.delta_numpy, self.delta_engine), (self.dW_numpy, self.dW_engine)]
        if self.db_numpy is not None and self.db_engine is not None:
            pairs.append((self.db_numpy, self.db_engine))
        return float(max(np.max(np.abs(np.asarray(p, np.float64) - q)) for p, q in pairs))


class MLPBackprop:
    """The δ recursion of one batch, layer by layer (see :func:`mlp_backprop`).

    ``ledger`` is the full record of the backward pass it was read from.
    """

    def __init__(self, layers: list[LayerBackprop], loss: float, grad_aL: np.ndarray,
                 ledger: Ledger | None = None) -> None:
        self.layers = layers
        self.loss = loss
        self.grad_aL = grad_aL
        self.ledger = ledger

    @property
    def max_diff(self) -> float:
        """Largest difference between the hand recursion and the engine, all layers."""
        return max(layer.max_diff for layer in self.layers)

    def deltas(self) -> list[np.ndarray]:
        """δ¹ .. δ^L as computed by the NumPy recursion (rows = samples)."""
        return [layer.delta_numpy for layer in self.layers]

    def to_text(self, precision: int = 4) -> str:
        """Each layer from the output down: the rule, the numbers, the difference."""
        v = lambda a: format_value(a, precision)  # noqa: E731
        L = len(self.layers)
        out = [
            f"C = {self.loss:.{precision}g};  ∇_a C = {v(self.grad_aL)}",
            "Rows are samples (Z = A Wᵀ + b): row i of Δ^l is (δ^l)ᵀ of sample i, so "
            "(W^(l+1))ᵀ δ^(l+1) is computed as Δ^(l+1) W^(l+1).",
            "",
        ]
        for layer in reversed(self.layers):
            s = superscript(layer.index)
            nxt = superscript(layer.index + 1)
            if layer.index == L:
                rule = f"δ{s} = ∇_a C ⊙ σ'(z{s})"
            else:
                rule = f"δ{s} = ((W{nxt})ᵀ δ{nxt}) ⊙ σ'(z{s})"
            out += [
                f"layer {layer.index}: {layer.description}",
                f"  z{s} = {v(layer.z)}",
                f"  σ'(z{s}) = {v(layer.sigma_prime)}",
                f"  {rule}",
                f"      numpy  {v(layer.delta_numpy)}",
                f"      engine {v(layer.delta_engine)}  (∂C/∂z{s})",
                f"  ∂C/∂W{s} = δ{s} (a{superscript(layer.index - 1)})ᵀ",
                f"      numpy  {v(layer.dW_numpy)}",
                f"      engine {v(layer.dW_engine)}",
            ]
            if layer.db_numpy is not None:
                out += [
                    f"  ∂C/∂b{s} = δ{s} summed over the samples",
                    f"      numpy  {v(layer.db_numpy)}",
                    f"      engine {v(layer.db_engine)}",
                ]
            out.append(f"  max |numpy - engine| = {layer.max_diff:.3g}")
        out.append(f"largest difference over all layers: {self.max_diff:.3g}")
        return "\n".join(out)

    __str__ = to_text


def _activation_module(model: Any, activation: str) -> str:
    """The class name of the model's module for ``activation`` (for messages)."""
    want = activation.replace("_", "").lower()
    for m in model.modules():
        if type(m).__name__.lower() == want:
            return type(m).__name__
    return activation


def mlp_backprop(model: Any, x: Any, y: Any, loss: str | Callable = "mse") -> MLPBackprop:
    """Backpropagate one batch by the notes' recursion and compare with the engine.

    Parameters
    ----------
    model : nn.Module
        Linear layers, each optionally followed by an elementwise activation
        (Sigmoid, Tanh, ReLU, LeakyReLU, Softplus; none = identity).
    x : array (n, d)
        A batch, one sample per row.
    y : array (n, d_L)
        Targets.
    loss : "mse" | "half_sse" | "bce" | callable
        The cost C. For the named costs ∇_a C is written out in NumPy; a
        callable ``loss(a_L, y) -> Tensor`` gets its ∇_a C from the engine
        (the recursion below it is still done by hand).

    Returns
    -------
    MLPBackprop
        ``.layers[l-1]`` holds z^l, a^l, δ^l, ∂C/∂W^l, ∂C/∂b^l (NumPy and
        engine), ``.max_diff``, ``.to_text()``, ``.ledger``. No ``.grad`` is
        modified.

    >>> model = cr.nn.Sequential(cr.nn.Linear(2, 3), cr.nn.Sigmoid(), cr.nn.Linear(3, 1))
    >>> view = mlp_backprop(model, np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32))
    >>> view.max_diff < 1e-5
    True
    """
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"mlp_backprop: unknown loss {loss!r}; use one of {list(LOSSES)}")
    a0 = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
    y_arr = np.asarray(y.data if isinstance(y, Tensor) else y)
    with keep_values():  # z^l must be a node of its own, with its value kept
        aL = model(a0)
        y_t = Tensor(y_arr.astype(aL.dtype))
        C = loss(aL, y_t) if callable(loss) else LOSSES[loss][1](aL, y_t)
    ledger = explain(C, model=model)
    recs = ledger.layers
    for rec in recs:
        if rec.sigma_prime is None:
            cls = _activation_module(model, rec.activation)
            raise ValueError(
                f"mlp_backprop: layer {rec.index} ends in {cls} ({rec.activation}), which is "
                "not elementwise, so δ = ∇_a C ⊙ σ'(z) does not apply; cr.explain(loss, "
                "model=model) shows its local gradient as a Jacobian"
            )
    for here in recs[:-1]:
        if not here.feeds_next:
            raise ValueError(
                f"mlp_backprop: a^{here.index} is not simply the input of layer "
                f"{here.index + 1} (another op or a skip connection sits between them), so the "
                "recursion δ^l = ((W^(l+1))ᵀ δ^(l+1)) ⊙ σ'(z^l) does not hold as written; "
                "cr.explain(loss, model=model) shows every term"
            )

    # ---- the recursion of the notes, in NumPy, from the recorded values ----
    last = recs[-1]
    A_L = np.asarray(last.a, np.float64)
    if callable(loss):
        grad_a = np.asarray(last.dC_da, np.float64)  # ∇_a C as the engine computed it
    else:
        grad_a = LOSSES[loss][0](A_L, y_arr.astype(np.float64).reshape(A_L.shape))
    layers: list[LayerBackprop] = []
    delta_next: np.ndarray | None = None
    W_next: np.ndarray | None = None
    for rec in reversed(recs):
        s_prime = np.asarray(rec.sigma_prime, np.float64)
        if delta_next is None or W_next is None:  # the output layer: first in this loop
            delta = grad_a * s_prime
        else:
            delta = (delta_next @ W_next) * s_prime
        a_prev = np.asarray(rec.a_prev, np.float64)
        W = np.asarray(rec.W["value"], np.float64)
        act = "" if rec.activation == "identity" else (
            f" + {_activation_module(model, rec.activation)}")
        layers.append(LayerBackprop(
            index=rec.index,
            description=f"Linear {W.shape[1]} -> {W.shape[0]}" + (act or " (identity)"),
            z=rec.z,
            a=np.asarray(rec.a),  # kept: the forward pass ran inside keep_values()
            sigma_prime=s_prime,
            delta_numpy=delta,
            delta_engine=np.asarray(rec.delta),
            dW_numpy=delta.T @ a_prev,
            dW_engine=np.asarray(rec.dW),
            db_numpy=None if rec.b is None else delta.sum(axis=0),
            db_engine=None if rec.b is None else np.asarray(rec.db),
        ))
        delta_next, W_next = delta, W
    layers.reverse()
    return MLPBackprop(layers, float(C.item()), np.asarray(grad_a), ledger)


# --------------------------------------------------------------------------
# Gradient norms during training
# --------------------------------------------------------------------------


def _linear_layers(model: Any) -> list[tuple[str, Any]]:
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, Tensor) and w.ndim == 2:
            out.append((name or type(m).__name__, m))
    return out


class GradientNormRecorder(Callback):
    """A ``cr.fit`` callback: per-layer gradient norms, as plain floats.

    Each record holds, for every layer with a 2-D ``weight`` (in model order),
    ``||dC/dW^l||`` (Frobenius norm of the weight's ``.grad``) and
    ``||delta^l|| = ||dC/dz^l||`` of the layer's output z^l for that batch.

    >>> rec = GradientNormRecorder()
    >>> cr.fit(model, loss_fn, opt, (X, y), epochs=5, callbacks=[rec])
    >>> rec.weight_norms().shape           # (records, layers)
    >>> plot_gradient_norms({"sigmoid": rec}, "norms.png")

    ``every="batch"`` records after each step, ``"epoch"`` after the last
    batch of each epoch. Delta norms are read by a gradient hook on each
    layer's output z^l, which a forward hook (``register_forward_hook``)
    installs on every call; ``fit`` sees the forward hooks and runs the step
    eagerly (a compiled replay would skip them), and a forced
    ``compile=True`` keeps the step eager anyway.
    """

    def __init__(self, model: Any = None, every: str = "batch") -> None:
        if every not in ("batch", "epoch"):
            raise ValueError(
                f"GradientNormRecorder: every must be 'batch' or 'epoch', not {every!r}"
            )
        self.model = model
        self.every = every
        self.layer_names: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._layers: list[Any] = []
        self._pending: dict[int, float] = {}
        self._handles: list[Any] = []

    # ----- hooks into the model -------------------------------------------

    def attach(self, model: Any) -> None:
        """Start watching ``model`` (done by ``on_train_begin``)."""
        self.detach()
        found = _linear_layers(model)
        self.layer_names = [n for n, _ in found]
        self._layers = [m for _, m in found]
        for k, layer in enumerate(self._layers):

            def watch(module: Any, args: Any, out: Any, _k: int = k) -> None:
                if isinstance(out, Tensor) and out.requires_grad:
                    out.register_hook(functools.partial(self._note_delta, _k))

            self._handles.append(layer.register_forward_hook(watch))

    def detach(self) -> None:
        """Stop watching (done by ``on_train_end``)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _note_delta(self, k: int, g: Any) -> None:
        arr = np.asarray(g.data if isinstance(g, Tensor) else g, np.float64)
        self._pending[k] = float(np.linalg.norm(arr))

    def record(self, epoch: int | None = None, step: int | None = None) -> dict[str, Any]:
        """Read the current gradients now and append a record."""
        norms = []
        for layer in self._layers:
            g = layer.weight._grad
            norms.append(float(np.linalg.norm(np.asarray(g.data, np.float64))) if g is not None
                         else float("nan"))
        deltas = [self._pending.get(k, float("nan")) for k in range(len(self._layers))]
        self._pending = {}
        rec = {"epoch": epoch, "step": step, "weight_grad_norms": norms, "delta_norms": deltas}
        self.records.append(rec)
        return rec

    # ----- the Callback interface -------------------------------------------

    def on_train_begin(self, trainer: Any, logs: Any) -> None:
        model = self.model if self.model is not None else getattr(trainer, "model", None)
        if model is None:
            raise ValueError("GradientNormRecorder: pass the model (no trainer.model found)")
        self.attach(model)

    def on_batch_end(self, trainer: Any, logs: Any) -> None:
        if self.every == "batch":
            self.record(getattr(trainer, "epoch", None), getattr(trainer, "step", None))

    def on_epoch_end(self, trainer: Any, logs: Any) -> None:
        if self.every == "epoch":
            self.record(getattr(trainer, "epoch", None), getattr(trainer, "step", None))

    def on_train_end(self, trainer: Any, logs: Any) -> None:
        self.detach()

    # ----- results ----------------------------------------------------------

    def weight_norms(self) -> np.ndarray:
        """(records, layers) array of ||dC/dW^l||."""
        return np.array([r["weight_grad_norms"] for r in self.records], dtype=np.float64)

    def delta_norms(self) -> np.ndarray:
        """(records, layers) array of ||delta^l||."""
        return np.array([r["delta_norms"] for r in self.records], dtype=np.float64)

    def as_history(self) -> dict[str, list]:
        """Plain lists (JSON-ready): layer names and one list of floats per record."""
        return {
            "layers": list(self.layer_names),
            "weight_grad_norms": [list(r["weight_grad_norms"]) for r in self.records],
            "delta_norms": [list(r["delta_norms"]) for r in self.records],
        }


def _as_history(src: Any) -> dict[str, list]:
    if isinstance(src, GradientNormRecorder):
        return src.as_history()
    if isinstance(src, Mapping) and "weight_grad_norms" in src:
        return dict(src)
    raise TypeError(
        "plot_gradient_norms: expected a GradientNormRecorder, its as_history() dict, "
        f"or a mapping of label -> one of those; got {type(src).__name__}"
    )


def plot_gradient_norms(
    source: Any, path: str | Path | None = None, *, title: str | None = None
) -> Any:
    """Plot per-layer gradient norms (log scale) for one run or several labelled runs.

    Left: ||dC/dW^l|| against the layer l, averaged over the records (the
    first records, before training changes much, show vanishing gradients
    best, so the first epoch's records are used when there are several).
    Right: ||dC/dW^l|| over training for the first and last layers.

    ``source``: a recorder, its ``as_history()``, or ``{"sigmoid": rec1,
    "relu": rec2}``. Saves to ``path`` when given; returns the matplotlib
    Figure. Needs matplotlib (``pip install matplotlib``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_gradient_norms needs matplotlib: pip install matplotlib"
        ) from exc
    if isinstance(source, Mapping) and "weight_grad_norms" not in source:
        runs = {str(k): _as_history(v) for k, v in source.items()}
    else:
        runs = {"": _as_history(source)}
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for label, h in runs.items():
        W = np.array(h["weight_grad_norms"], dtype=np.float64)
        if W.size == 0:
            continue
        layers = np.arange(1, W.shape[1] + 1)
        head = W[: max(1, min(len(W), 20))]
        (line,) = ax1.plot(layers, np.nanmean(head, axis=0), marker="o", label=label or None)
        steps = np.arange(len(W))
        ax2.plot(steps, W[:, 0], color=line.get_color(), label=f"{label} layer 1".strip())
        ax2.plot(steps, W[:, -1], color=line.get_color(), linestyle="--",
                 label=f"{label} layer {W.shape[1]}".strip())
    ax1.set_yscale("log")
    ax1.set_xlabel("layer l (1 = next to the input)")
    ax1.set_ylabel("||dC/dW^l|| (early training)")
    ax1.set_title("gradient norm per layer")
    ax2.set_yscale("log")
    ax2.set_xlabel("recorded step")
    ax2.set_ylabel("||dC/dW^l||")
    ax2.set_title("first (solid) and last (dashed) layer during training")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        if any(runs):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig

