"""The MLP view: the notes' delta recursion, with numbers, next to the engine.

For a ``Sequential`` of ``Linear`` layers each followed by an elementwise
activation, the notes (seed 000, section 2) compute the gradients by hand:

    a^0 = x,  z^l = W^l a^(l-1) + b^l,  a^l = sigma(z^l)
    delta^L = grad_a C (.) sigma'(z^L)
    delta^l = ((W^(l+1))^T delta^(l+1)) (.) sigma'(z^l)
    dC/dW^l = delta^l (a^(l-1))^T,      dC/db^l = delta^l

:func:`mlp_backprop` does exactly that in NumPy from the recorded z^l and
a^l, and puts it side by side with what the generic engine computed for the
same tensors (dC/dz^l is delta^l), with the largest difference.

Layout. The notes use column vectors, one sample at a time. chainrule's
``Linear`` uses PyTorch's layout: a batch is a matrix whose *rows* are
samples, ``Z = A W^T + b`` with ``W`` of shape (out, in). Row i of our
``Delta^l`` is the notes' (delta^l)^T for sample i, so the recursion reads

    Delta^l = (Delta^(l+1) W^(l+1)) (.) sigma'(Z^l)      [= ((W^T delta)^T) per row]
    dC/dW^l = (Delta^l)^T A^(l-1)                       [= sum_i delta_i (a_i)^T]
    dC/db^l = column sums of Delta^l                    [= sum_i delta_i]

(with the loss's 1/n already inside grad_a C for a mean over the batch).

:class:`GradientNormRecorder` is a ``cr.fit`` callback recording per-layer
gradient norms during training; :func:`plot_gradient_norms` draws them (the
vanishing gradients of a deep sigmoid network next to a ReLU one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .tensor import Tensor, run_backward
from .training.callbacks import Callback
from .viz import format_value

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "LayerBackprop",
    "MLPBackprop",
    "mlp_backprop",
    "GradientNormRecorder",
    "plot_gradient_norms",
]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the same function, and it never overflows


# sigma'(z) for each elementwise activation module, by class name, in NumPy.
ACTIVATIONS: dict[str, Callable[[Any, np.ndarray], np.ndarray]] = {
    "Sigmoid": lambda m, z: _sigmoid(z) * (1.0 - _sigmoid(z)),
    "Tanh": lambda m, z: 1.0 - np.tanh(z) ** 2,
    "ReLU": lambda m, z: (z > 0).astype(z.dtype),  # 0 at z = 0, as in the engine
    "LeakyReLU": lambda m, z: np.where(z > 0, 1.0, getattr(m, "negative_slope", 0.01)),
    "Identity": lambda m, z: np.ones_like(z),
}


def _mse_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 2.0 * (a - y) / a.size


def _half_sse_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return a - y


def _bce_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (a - y) / (a * (1.0 - a)) / a.size


# grad_a C for the costs the notes use, by name (C is a mean over all entries
# for "mse" and "bce", as in nn.MSELoss/BCELoss; "half_sse" is the notes'
# C = 1/2 sum (a - y)^2, summed over the batch).
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
    """One layer l: z^l, a^l, delta^l and the parameter gradients, both ways."""

    index: int  # l, counting Linear layers from 1
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
        """Largest |NumPy - engine| over delta^l, dC/dW^l and dC/db^l."""
        pairs = [(self.delta_numpy, self.delta_engine), (self.dW_numpy, self.dW_engine)]
        if self.db_numpy is not None and self.db_engine is not None:
            pairs.append((self.db_numpy, self.db_engine))
        return float(max(np.max(np.abs(np.asarray(p, np.float64) - q)) for p, q in pairs))


class MLPBackprop:
    """The delta recursion of one batch, layer by layer (see :func:`mlp_backprop`)."""

    def __init__(self, layers: list[LayerBackprop], loss: float, grad_aL: np.ndarray) -> None:
        self.layers = layers
        self.loss = loss
        self.grad_aL = grad_aL

    @property
    def max_diff(self) -> float:
        """Largest difference between the hand recursion and the engine, all layers."""
        return max(layer.max_diff for layer in self.layers)

    def deltas(self) -> list[np.ndarray]:
        """delta^1 .. delta^L as computed by the NumPy recursion (rows = samples)."""
        return [layer.delta_numpy for layer in self.layers]

    def to_text(self, precision: int = 4) -> str:
        """Each layer from the output down, the formula, the numbers and the difference."""
        v = lambda a: format_value(a, precision)  # noqa: E731
        L = len(self.layers)
        out = [
            f"C = {self.loss:.{precision}g};  grad_a C = {v(self.grad_aL)}",
            "Rows are samples (Z = A W^T + b): Delta^l row i = (delta^l)^T of sample i.",
            "",
        ]
        for layer in reversed(self.layers):
            l_ = layer.index
            if l_ == L:
                rule = f"delta^{l_} = grad_a C (.) sigma'(z^{l_})"
            else:
                rule = f"delta^{l_} = (Delta^{l_ + 1} W^{l_ + 1}) (.) sigma'(z^{l_})"
            out += [
                f"layer {l_}: {layer.description}",
                f"  z^{l_} = {v(layer.z)}",
                f"  sigma'(z^{l_}) = {v(layer.sigma_prime)}",
                f"  {rule}",
                f"      numpy  {v(layer.delta_numpy)}",
                f"      engine {v(layer.delta_engine)}  (dC/dz^{l_})",
                f"  dC/dW^{l_} = (Delta^{l_})^T a^{l_ - 1}",
                f"      numpy  {v(layer.dW_numpy)}",
                f"      engine {v(layer.dW_engine)}",
            ]
            if layer.db_numpy is not None:
                out += [
                    f"  dC/db^{l_} = sum over samples of delta^{l_}",
                    f"      numpy  {v(layer.db_numpy)}",
                    f"      engine {v(layer.db_engine)}",
                ]
            out.append(f"  max |numpy - engine| = {layer.max_diff:.3g}")
        out.append(f"largest difference over all layers: {self.max_diff:.3g}")
        return "\n".join(out)

    __str__ = to_text


def _layers(model: Any) -> list[tuple[Any, Any]]:
    """(Linear, activation module or None) pairs of a Sequential MLP."""
    mods = list(model)
    pairs: list[tuple[Any, Any]] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if not (hasattr(m, "weight") and getattr(m.weight, "ndim", 0) == 2):
            raise ValueError(
                f"mlp_backprop: layer {i} is {type(m).__name__}; expected Linear layers, each "
                f"optionally followed by one of {', '.join(ACTIVATIONS)}"
            )
        act = None
        if i + 1 < len(mods) and type(mods[i + 1]).__name__ in ACTIVATIONS:
            act = mods[i + 1]
            i += 1
        elif i + 1 < len(mods) and not hasattr(mods[i + 1], "weight"):
            raise ValueError(
                f"mlp_backprop: layer {i + 1} is {type(mods[i + 1]).__name__}, not an "
                f"elementwise activation this view knows ({', '.join(ACTIVATIONS)})"
            )
        pairs.append((m, act))
        i += 1
    return pairs


def mlp_backprop(model: Any, x: Any, y: Any, loss: str | Callable = "mse") -> MLPBackprop:
    """Backpropagate one batch by the notes' recursion and compare with the engine.

    Parameters
    ----------
    model : nn.Sequential
        Linear layers, each optionally followed by Sigmoid, Tanh, ReLU,
        LeakyReLU or Identity (none = identity).
    x : array (n, d)
        A batch, one sample per row.
    y : array (n, d_L)
        Targets.
    loss : "mse" | "half_sse" | "bce" | callable
        The cost C. For the named costs grad_a C is written out in NumPy; a
        callable ``loss(a_L, y) -> Tensor`` gets its grad_a C from the engine
        (the recursion below it is still done by hand).

    Returns
    -------
    MLPBackprop
        ``.layers[l-1]`` holds z^l, a^l, delta^l, dC/dW^l, dC/db^l (NumPy and
        engine), ``.max_diff``, ``.to_text()``. No ``.grad`` is modified.

    >>> model = cr.nn.Sequential(cr.nn.Linear(2, 3), cr.nn.Sigmoid(), cr.nn.Linear(3, 1))
    >>> view = mlp_backprop(model, np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32))
    >>> view.max_diff < 1e-5
    True
    """
    pairs = _layers(model)
    a = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
    y_arr = np.asarray(y.data if isinstance(y, Tensor) else y)
    zs: list[Tensor] = []
    acts: list[Tensor] = [a]
    for lin, act in pairs:
        z = lin(a)
        a = act(z) if act is not None else z
        zs.append(z)
        acts.append(a)
    aL = acts[-1]
    y_t = Tensor(y_arr.astype(aL.dtype))
    if callable(loss):
        C = loss(aL, y_t)
        cost_grad = None
    else:
        if loss not in LOSSES:
            raise ValueError(f"mlp_backprop: unknown loss {loss!r}; use one of {list(LOSSES)}")
        cost_grad, cost = LOSSES[loss]
        C = cost(aL, y_t)

    params = [lin.weight for lin, _ in pairs]
    params += [lin.bias for lin, _ in pairs if lin.bias is not None]
    wanted = zs + params + [aL]
    unique = list({id(t): t for t in wanted}.values())  # a^L is z^L without an activation
    by_id = dict(zip((id(t) for t in unique), run_backward((C,), (None,), inputs=unique)))
    got = [by_id[id(t)] for t in wanted]
    n_lin = len(pairs)
    g_z = got[:n_lin]
    g_w = got[n_lin : 2 * n_lin]
    g_b_iter = iter(got[2 * n_lin : -1])
    g_aL = got[-1]

    # ---- the recursion of the notes, in NumPy, from the recorded values ----
    A = [np.asarray(t.data, np.float64) for t in acts]
    Z = [np.asarray(t.data, np.float64) for t in zs]
    grad_a = cost_grad(A[-1], y_arr.astype(np.float64)) if cost_grad else np.asarray(g_aL)
    layers: list[LayerBackprop] = []
    delta_next = None
    W_next = None
    for l_ in range(n_lin, 0, -1):
        lin, act = pairs[l_ - 1]
        s_prime = ACTIVATIONS[type(act).__name__ if act is not None else "Identity"](act, Z[l_ - 1])
        if l_ == n_lin:
            delta = grad_a * s_prime
        else:
            delta = (delta_next @ W_next) * s_prime
        delta2 = delta.reshape(-1, delta.shape[-1])
        a_prev = A[l_ - 1].reshape(-1, A[l_ - 1].shape[-1])
        dW = delta2.T @ a_prev
        db = delta2.sum(axis=0) if lin.bias is not None else None
        desc = f"Linear {lin.weight.shape[1]} -> {lin.weight.shape[0]}" + (
            f" + {type(act).__name__}" if act is not None else " (identity)"
        )
        layers.append(
            LayerBackprop(
                index=l_,
                description=desc,
                z=Z[l_ - 1],
                a=A[l_],
                sigma_prime=s_prime,
                delta_numpy=delta,
                delta_engine=np.asarray(g_z[l_ - 1]),
                dW_numpy=dW,
                dW_engine=np.asarray(g_w[l_ - 1]),
                db_numpy=db,
                db_engine=None,
            )
        )
        delta_next = delta
        W_next = np.asarray(lin.weight.data, np.float64)
    layers.reverse()
    for layer, (lin, _) in zip(layers, pairs):
        if lin.bias is not None:
            layer.db_engine = np.asarray(next(g_b_iter))
    return MLPBackprop(layers, float(C.item()), np.asarray(grad_a))


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
    batch of each epoch. Delta norms are read with a hook on each layer's
    output, installed by patching the layer's ``forward``; ``fit`` sees the
    patch and runs the step eagerly (a compiled replay would skip the hooks).
    With ``compile=True`` forced, the hooks make ``cr.compile`` keep the step
    eager anyway.
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
        self._installed: list[Any] = []

    # ----- hooks into the model -------------------------------------------

    def attach(self, model: Any) -> None:
        """Start watching ``model`` (done by ``on_train_begin``)."""
        self.detach()
        found = _linear_layers(model)
        self.layer_names = [n for n, _ in found]
        self._layers = [m for _, m in found]
        for k, layer in enumerate(self._layers):
            original = layer.forward

            def forward(*args: Any, _k: int = k, _orig: Callable = original, **kw: Any) -> Any:
                out = _orig(*args, **kw)
                if isinstance(out, Tensor) and out.requires_grad:
                    out.register_hook(lambda g, _k=_k: self._note_delta(_k, g))
                return out

            # an instance attribute shadows the class's forward for this layer only
            layer.__dict__["forward"] = forward
            self._installed.append(layer)

    def detach(self) -> None:
        """Stop watching (done by ``on_train_end``)."""
        for layer in self._installed:
            layer.__dict__.pop("forward", None)
        self._installed = []

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

