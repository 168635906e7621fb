"""Export trained models to ONNX and check them against onnxruntime.

>>> cr.onnx.export("runs/iris/model.safetensors", "iris.onnx", opset=17)
PosixPath('iris.onnx')
>>> cr.onnx.verify("runs/iris/model.safetensors", "iris.onnx")     # max |difference|
3.0e-07

What is exported:

* the network: every layer the CLI and :func:`chainrule.nn.build` can build
  (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, ELU, Softmax,
  LogSoftmax, Identity, Flatten, Dropout (the identity at inference),
  LayerNorm, BatchNorm1d (eval mode, running statistics), Embedding,
  CategoricalEmbedding, nested Sequential), with a dynamic batch dimension;
* for a checkpoint written by ``chainrule train`` or a chainrule estimator
  (anything with a model spec): the stored standardisation of the numeric
  columns as ``Sub`` / ``Div`` nodes at the input, the regression target's
  scaling at the output, and for classifiers a ``probabilities`` output
  (softmax or logistic) and a ``label`` output (the class index);
* metadata (``metadata_props``): the task, the class names, the input
  column names (the preprocessor's output columns: numeric features, then
  one-hot columns ``"color=red"`` or category codes), and the chainrule
  version. Text columns are not parsed inside ONNX: one-hot or code columns
  are the model's input, as ``TablePreprocessor`` writes them with
  ``standardize=False`` (see docs/onnx.md).

Needs ``onnx`` and ``onnxruntime``: ``pip install "chainrule[onnx]"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["export", "verify", "ONNXExportError", "SUPPORTED_OPSETS"]

SUPPORTED_OPSETS = range(13, 22)


class ONNXExportError(ValueError):
    """A model (or layer) that cannot be exported, or an export that disagrees with chainrule."""


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx import helper
    except ImportError as e:
        raise ImportError(
            'chainrule.onnx needs onnx and onnxruntime: pip install "chainrule[onnx]"'
        ) from e
    return onnx, helper


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            'chainrule.onnx.verify needs onnxruntime: pip install "chainrule[onnx]"'
        ) from e
    return onnxruntime


# --------------------------------------------------------------------------
# What to export: a model, a checkpoint, an estimator or a predictor
# --------------------------------------------------------------------------


class _Target:
    """The network plus what wraps it: input scaling, output kind, metadata."""

    def __init__(self, model: Any, spec: Any = None, name: str = "chainrule") -> None:
        self.model = model
        self.spec = spec
        self.name = name
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.input_names: list[str] | None = None
        if spec is not None and spec.preprocessing is not None:
            from .data.tables import TablePreprocessor

            prep = TablePreprocessor.from_state(spec.preprocessing)
            self.input_names = prep.output_names
            if prep.scaler is not None:
                width = len(prep.output_names)
                m = np.zeros(width)
                s = np.ones(width)
                m[:len(prep.numeric)] = prep.scaler.mean_
                s[:len(prep.numeric)] = prep.scaler.scale_
                self.mean, self.std = m, s


def _resolve(obj: Any) -> _Target:
    from .nn import Module
    from .spec import Predictor, load_predictor

    if isinstance(obj, (str, os.PathLike)):
        pred = load_predictor(obj) if _has_spec(obj) else None
        if pred is None:
            from .io import load_model

            return _Target(load_model(obj), None, Path(obj).stem)
        return _Target(pred.model, pred.spec, Path(obj).stem)
    if isinstance(obj, Predictor):
        return _Target(obj.model, obj.spec)
    spec_of = getattr(obj, "model_spec_", None)
    if spec_of is not None and hasattr(obj, "model_"):  # a chainrule estimator
        obj._load_arrays()
        return _Target(obj.model_, spec_of, type(obj).__name__)
    if isinstance(obj, Module):
        return _Target(obj, None, type(obj).__name__)
    raise TypeError(f"onnx.export: expected an nn.Module, a checkpoint path, a Predictor or a "
                    f"fitted chainrule estimator, got {type(obj).__name__}")


def _has_spec(path: Any) -> bool:
    from .io import load

    meta = load(path).metadata or {}
    return "spec" in meta or meta.get("trained_by") == "chainrule train"


# --------------------------------------------------------------------------
# The graph builder
# --------------------------------------------------------------------------


class _Graph:
    def __init__(self, helper: Any, opset: int, dtype: np.dtype) -> None:
        self.h = helper
        self.opset = opset
        self.dtype = dtype
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.k = 0

    def fresh(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, value: Any, name: str, dtype: Any = None) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype or self.dtype)
        n = self.fresh(name)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def node(self, op: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        out = self.fresh(name or op.lower())
        self.nodes.append(self.h.make_node(op, list(inputs), [out], **attrs))
        return out

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const(axes, "axes", np.int64)], keepdims=1)
        return self.node("ReduceMean", [x], axes=axes, keepdims=1)


def _emit(g: _Graph, m: Any, x: str, ndim: int) -> tuple[str, int]:
    """The nodes of module ``m`` applied to ``x``; returns (output name, its ndim)."""
    from . import nn

    kind = type(m).__name__
    if isinstance(m, nn.Sequential):
        for layer in m:
            x, ndim = _emit(g, layer, x, ndim)
        return x, ndim
    if kind == "Linear":
        w = g.const(m.weight.data, "weight")
        if ndim == 2:
            ins = [x, w] + ([g.const(m.bias.data, "bias")] if m.bias is not None else [])
            return g.node("Gemm", ins, transB=1), 2
        y = g.node("MatMul", [x, g.const(m.weight.data.T, "weight_t")])
        if m.bias is not None:
            y = g.node("Add", [y, g.const(m.bias.data, "bias")])
        return y, ndim
    if kind == "ReLU":
        return g.node("Relu", [x]), ndim
    if kind == "LeakyReLU":
        return g.node("LeakyRelu", [x], alpha=float(m.negative_slope)), ndim
    if kind == "Sigmoid":
        return g.node("Sigmoid", [x]), ndim
    if kind == "Tanh":
        return g.node("Tanh", [x]), ndim
    if kind == "ELU":
        return g.node("Elu", [x], alpha=float(m.alpha)), ndim
    if kind == "SiLU":
        return g.node("Mul", [x, g.node("Sigmoid", [x])]), ndim
    if kind == "GELU":
        return _gelu(g, x, m.approximate), ndim
    if kind in ("Softmax", "LogSoftmax"):
        return g.node(kind, [x], axis=int(m.dim)), ndim
    if kind in ("Identity", "Dropout"):
        return g.node("Identity", [x]), ndim
    if kind == "Flatten":
        if m.start_dim != 1 or m.end_dim not in (-1, ndim - 1):
            raise ONNXExportError(f"onnx.export: Flatten({m.start_dim}, {m.end_dim}) is not "
                                  "supported (only the default Flatten(1, -1))")
        return g.node("Flatten", [x], axis=1), 2
    if kind == "LayerNorm":
        return _layer_norm(g, m, x, ndim), ndim
    if kind == "BatchNorm1d":
        c = m.num_features
        scale = m.weight.data if m.affine else np.ones(c)
        bias = m.bias.data if m.affine else np.zeros(c)
        return g.node("BatchNormalization", [
            x, g.const(scale, "bn_scale"), g.const(bias, "bn_bias"),
            g.const(m.running_mean.data, "bn_mean"), g.const(m.running_var.data, "bn_var")],
            epsilon=float(m.eps)), ndim
    if kind == "Embedding":
        idx = g.node("Cast", [x], to=7)  # INT64
        return g.node("Gather", [g.const(m.weight.data, "embedding"), idx], axis=0), ndim + 1
    if kind == "CategoricalEmbedding":
        return _categorical_embedding(g, m, x), 2
    raise ONNXExportError(f"onnx.export: no ONNX translation for layer {kind}")


def _gelu(g: _Graph, x: str, approximate: str) -> str:
    if g.opset >= 20:
        return g.node("Gelu", [x], approximate=approximate)
    half = g.const(0.5, "half")
    one = g.const(1.0, "one")
    if approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.node("Mul", [g.node("Mul", [x, x]), x])
        inner = g.node("Add", [x, g.node("Mul", [x3, g.const(0.044715, "c")])])
        t = g.node("Tanh", [g.node("Mul", [inner, g.const(np.sqrt(2 / np.pi), "k")])])
    else:
        # 0.5 x (1 + erf(x / sqrt(2)))
        t = g.node("Erf", [g.node("Mul", [x, g.const(np.sqrt(0.5), "inv_sqrt2")])])
    return g.node("Mul", [g.node("Mul", [x, half]), g.node("Add", [t, one])])


def _layer_norm(g: _Graph, m: Any, x: str, ndim: int) -> str:
    k = len(m.normalized_shape)
    axes = list(range(ndim - k, ndim))
    if g.opset >= 17:
        w = m.weight.data if m.elementwise_affine else np.ones(m.normalized_shape)
        b = m.bias.data if m.elementwise_affine else np.zeros(m.normalized_shape)
        return g.node("LayerNormalization", [x, g.const(w, "ln_scale"), g.const(b, "ln_bias")],
                      axis=-k, epsilon=float(m.eps))
    mean = g.reduce_mean(x, axes)
    d = g.node("Sub", [x, mean])
    var = g.reduce_mean(g.node("Mul", [d, d]), axes)
    y = g.node("Div", [d, g.node("Sqrt", [g.node("Add", [var, g.const(m.eps, "eps")])])])
    if m.elementwise_affine:
        y = g.node("Add", [g.node("Mul", [y, g.const(m.weight.data, "ln_scale")]),
                           g.const(m.bias.data, "ln_bias")])
    return y


def _categorical_embedding(g: _Graph, m: Any, x: str) -> str:
    def cols(a: int, b: int) -> str:
        return g.node("Slice", [x, g.const([a], "starts", np.int64),
                                g.const([b], "ends", np.int64), g.const([1], "axes", np.int64)])

    k = m.numeric_features
    parts = [cols(0, k)] if k else []
    for j, emb in enumerate(m.embeddings):
        code = g.node("Cast", [g.node("Squeeze", [cols(k + j, k + j + 1),
                                                  g.const([1], "axes", np.int64)])], to=7)
        parts.append(g.node("Gather", [g.const(emb.weight.data, "embedding"), code], axis=0))
    return g.node("Concat", parts, axis=1) if len(parts) > 1 else parts[0]


def _layers(model: Any) -> list[Any]:
    from . import nn

    if isinstance(model, nn.Sequential):
        return [leaf for m in model for leaf in _layers(m)]
    return [model]


def _n_inputs(model: Any) -> tuple[int, bool]:
    """(input width, whether the input holds integer indices (a bare Embedding))."""
    from . import nn

    for first in _layers(model):
        if isinstance(first, (nn.Linear, nn.CategoricalEmbedding)):
            return first.in_features, False
        if isinstance(first, nn.Embedding):
            return 0, True
        if isinstance(first, nn.BatchNorm1d):
            return first.num_features, False
        if isinstance(first, nn.LayerNorm):
            return first.normalized_shape[-1], False
        if type(first).__name__ not in ("Flatten", "Identity", "Dropout", "ReLU", "LeakyReLU",
                                        "Sigmoid", "Tanh", "GELU", "SiLU", "ELU"):
            break
    raise ONNXExportError("onnx.export: cannot tell the model's input width; start it with a "
                          "Linear layer")


def _dtype(model: Any) -> np.dtype:
    for p in model.parameters():
        return p.data.dtype
    return np.dtype(np.float32)


def export(model_or_checkpoint: Any, path: str | os.PathLike, opset: int = 17,
           input_name: str = "input", dtype: Any = np.float32) -> Path:
    """Write ``model_or_checkpoint`` as an ONNX model to ``path`` (atomically).

    Parameters
    ----------
    model_or_checkpoint : nn.Module, checkpoint path, Predictor or fitted estimator
        A checkpoint from ``chainrule train`` (or a saved estimator) brings its
        standardisation, target scaling and class names along.
    path : the .onnx file to write
    opset : int, 13..21
        The ONNX operator set (13 is onnxruntime's oldest well-supported one;
        LayerNormalization is native from 17, Gelu from 20).
    input_name : str
    dtype : np.float32 (default) or np.float64
        What the graph computes in. A float64 model (a scikit-learn estimator
        fitted on float64 data) is exported in float32 unless asked otherwise:
        float32 is what ONNX runtimes and their users expect.

    Returns
    -------
    pathlib.Path

    Outputs: ``output`` (the network's raw output: logits, or values), and
    with a spec ``prediction`` (regression, in the target's units) or
    ``probabilities`` and ``label`` (classification). The batch dimension is
    dynamic (``"N"``). The model passes ``onnx.checker.check_model(full_check=True)``.
    """
    onnx, helper = _require()
    from onnx import TensorProto

    from . import __version__
    from .io import atomic_write

    if not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ONNXExportError(f"onnx.export: opset must be an int from 13 to 21, got {opset!r}")
    target = _resolve(model_or_checkpoint)
    model = target.model
    model.eval()
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ONNXExportError(f"onnx.export: dtype must be float32 or float64, got {dtype}")
    g = _Graph(helper, opset, dtype)
    width, indices = _n_inputs(model)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    x = input_name
    if target.mean is not None:
        x = g.node("Div", [g.node("Sub", [x, g.const(target.mean, "mean")], "centred"),
                           g.const(target.std, "std")], "standardised")
    out, _ = _emit(g, model, x, 2)
    outputs = [("output", out)]
    spec = target.spec
    meta: dict[str, str] = {"producer": "chainrule", "chainrule_version": __version__}
    if spec is not None:
        meta["task"] = spec.task
        if spec.task == "regression":
            sc = spec.target.get("scale") or {"mean": 0.0, "std": 1.0}
            pred = g.node("Add", [g.node("Mul", [out, g.const(sc["std"], "y_std")]),
                                  g.const(sc["mean"], "y_mean")], "prediction")
            outputs.append(("prediction", pred))
        else:
            if spec.target.get("output", "softmax") == "softmax":
                proba = g.node("Softmax", [out], axis=1)
                label = g.node("ArgMax", [out], axis=1, keepdims=0)
            else:
                proba = g.node("Sigmoid", [out])
                label = g.node("Cast", [g.node("Greater", [out, g.const(0.0, "zero")])], to=7)
                if spec.n_outputs == 1:
                    label = g.node("Squeeze", [label, g.const([1], "axes", np.int64)])
            outputs += [("probabilities", proba), ("label", label)]
            classes = spec.target.get("classes")
            if classes is not None:
                meta["classes"] = json.dumps([c if isinstance(c, (int, float)) else str(c)
                                              for c in classes])
    if target.input_names is not None:
        meta["input_columns"] = json.dumps(target.input_names)
    # give the graph outputs their public names
    for public, internal in outputs:
        g.nodes.append(helper.make_node("Identity", [internal], [public]))
    in_shape = ["N"] if indices else ["N", width]
    in_elem = TensorProto.INT64 if indices else elem
    inp = helper.make_tensor_value_info(input_name, in_elem, in_shape)
    # concrete trailing sizes from one probe row through chainrule itself
    from .spec import run_model

    probe = np.zeros((1,) if indices else (1, width),
                     dtype=np.int64 if indices else _dtype(model))
    tail = list(run_model(model, probe).shape[1:])
    outs = []
    for public, _ in outputs:
        if public == "label":  # one class index per row; one 0/1 per label (multi-label)
            multi = spec.target.get("output") == "logistic" and spec.n_outputs > 1
            et, shape = TensorProto.INT64, ["N", *tail] if multi else ["N"]
        else:
            et, shape = elem, ["N", *tail]
        outs.append(helper.make_tensor_value_info(public, et, shape))
    graph = helper.make_graph(g.nodes, target.name, [inp], outs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="chainrule", producer_version=__version__)
    # onnxruntime reads IR versions up to what it was built for; opset 21 needs IR 10
    proto.ir_version = min(proto.ir_version, 10 if opset >= 21 else 9 if opset >= 19 else 8)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001  (onnx raises several types)
        raise ONNXExportError(f"onnx.export: the exported graph fails onnx.checker ({e})") \
            from None
    return atomic_write(path, proto.SerializeToString())


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


def run(onnx_path: str | os.PathLike, X: np.ndarray, output: str = "output") -> np.ndarray:
    """One onnxruntime session over ``X``; returns the named output."""
    ort = _ort()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run([output], {sess.get_inputs()[0].name: X})[0]


def verify(model_or_checkpoint: Any, onnx_path: str | os.PathLike, X: Any = None,
           atol: float = 1e-5, rtol: float = 1e-5, batch: int = 7, seed: int = 0) -> float:
    """Run the ONNX file in onnxruntime and chainrule on the same input; return the
    largest absolute difference of the raw outputs (and of the predictions and
    probabilities, for a checkpoint with a spec).

    Raises :class:`ONNXExportError` where ``|onnx - chainrule| > atol + rtol *
    |chainrule|`` (float32 rounds differently in the two runtimes, so large
    outputs get a proportionally larger allowance).

    ``X`` is the ONNX model's input (after categorical encoding, before
    standardisation); by default ``batch`` random rows on the scale of the
    training data (the stored mean and std; category codes for embedding
    columns).
    """
    from .spec import run_model

    ort = _ort()
    target = _resolve(model_or_checkpoint)
    model = target.model
    width, indices = _n_inputs(model)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dtype = np.dtype(np.float64 if "double" in sess.get_inputs()[0].type else np.float32)
    rng = np.random.default_rng(seed)
    if X is None:
        if indices:
            X = rng.integers(0, model[0].num_embeddings if hasattr(model, "__getitem__")
                             else model.num_embeddings, size=batch)
        else:
            X = _sample_input(model, width, batch, rng, dtype)
            if target.mean is not None:  # rows on the training data's own scale
                X = (X * target.std + target.mean).astype(dtype)
    X = np.asarray(X)
    if not indices:
        X = X.astype(dtype)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: X})))
    mdt = _dtype(model)
    Xin = X.astype(mdt) if target.mean is None or indices else \
        ((X - target.mean) / target.std).astype(mdt)
    want = run_model(model, Xin)
    pairs = [(got["output"], want)]
    spec = target.spec
    if spec is not None and "prediction" in got:
        p = spec.outputs_to_predictions(want)
        pairs.append((got["prediction"].reshape(p.shape), p))
    if spec is not None and "probabilities" in got:
        from .spec import probabilities

        pairs.append((got["probabilities"], probabilities(want, spec.target.get("output",
                                                                               "softmax"))))
    diff, worst = 0.0, 0.0
    for a, b in pairs:
        if b.size:
            d = np.abs(a.astype(np.float64) - b)
            diff = max(diff, float(d.max()))
            worst = max(worst, float((d - rtol * np.abs(b)).max()))
    if not worst <= atol:
        raise ONNXExportError(f"onnx.verify: onnxruntime and chainrule differ by {diff:.3g} "
                              f"(more than atol={atol:g} + rtol={rtol:g} x |value|) on "
                              f"{onnx_path}")
    return diff


def _sample_input(model: Any, width: int, batch: int, rng: np.random.Generator,
                  dtype: np.dtype) -> np.ndarray:
    from . import nn

    X = rng.standard_normal((batch, width)).astype(dtype)
    first = _layers(model)[0]
    if isinstance(first, nn.CategoricalEmbedding):
        for j, c in enumerate(first.cardinalities):
            X[:, first.numeric_features + j] = rng.integers(0, c, size=batch)
    return X
