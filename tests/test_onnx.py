"""ONNX export: every layer the CLI can build x activation x opset {13, 17, 21} x
batch {1, 7, 1797}, against onnxruntime (max abs difference <= 1e-5) and
``onnx.checker`` with ``full_check``; checkpoints with a spec; estimators."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr
from chainrule import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

OPSETS = [13, 17, 21]
BATCHES = [1, 7, 1797]
ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "silu", "elu"]
# every hidden-layer option of the CLI's --hidden spec, and the other buildable layers
LAYOUTS = {
    "plain": "16,8",
    "batchnorm": "16:bn,8",
    "layernorm": "16:ln,8:ln",
    "dropout": "16:drop0.3",
}


def _trained(model, n_in, seed=0):
    """A few training steps, so that BatchNorm's running statistics are not 0/1."""
    X = np.random.default_rng(seed).standard_normal((64, n_in)).astype(np.float32)
    out = model(cr.tensor(X))
    opt = cr.optim.SGD(model.parameters(), lr=0.01)
    cr.fit(model, lambda o, y: (o * o).mean(), opt, (X, X[:, :1]), epochs=2, batch_size=16,
           progress=False, seed=0, metrics=None, compile=False)
    model.eval()
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _grid_check(model, tmp_path, name, n_in, integer_input=False):
    """One export per opset; each file checked once and run at every batch size."""
    rng = np.random.default_rng(1)
    for opset in OPSETS:
        path = cr.onnx.export(model, tmp_path / f"{name}-{opset}.onnx", opset=opset)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == opset
        sess = _session(path)
        assert sess.get_inputs()[0].shape[0] == "N"  # dynamic batch
        for b in BATCHES:
            if integer_input:
                X = rng.integers(0, 10, size=b)
            else:
                X = rng.standard_normal((b, n_in)).astype(np.float32)
            got = sess.run(["output"], {"input": X})[0]
            with cr.no_grad():
                want = model(cr.tensor(X) if not integer_input else X).data
            assert got.shape == want.shape
            assert np.max(np.abs(got - want)) <= 1e-5, (name, opset, b)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("activation", ACTS)
def test_every_layer_and_activation_in_every_opset_and_batch(tmp_path, layout, activation):
    from chainrule.spec import build_mlp, parse_hidden

    cr.manual_seed(0)
    model = build_mlp(5, parse_hidden(LAYOUTS[layout], activation), 3)
    _trained(model, 5)
    _grid_check(model, tmp_path, f"{layout}-{activation}", 5)


def test_other_buildable_layers(tmp_path):
    cr.manual_seed(0)
    models = {
        "softmax-out": (nn.Sequential(nn.Linear(4, 6), nn.GELU("tanh"), nn.Linear(6, 3),
                                      nn.Softmax(dim=1)), 4),
        "logsoftmax-identity-flatten": (nn.Sequential(nn.Flatten(), nn.Linear(4, 5),
                                                      nn.Identity(), nn.ELU(0.4),
                                                      nn.Linear(5, 2), nn.LogSoftmax(dim=-1)),
                                        4),
        "bn-first-ln-noaffine": (nn.Sequential(nn.BatchNorm1d(4, affine=False),
                                               nn.Linear(4, 4),
                                               nn.LayerNorm(4, elementwise_affine=False),
                                               nn.LeakyReLU(0.2), nn.Linear(4, 1)), 4),
        "nested": (nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.SiLU()), nn.Linear(4, 2)),
                   4),
    }
    for name, (model, n_in) in models.items():
        if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
            _trained(model, n_in)
        model.eval()
        _grid_check(model, tmp_path, name, n_in)


def test_embeddings(tmp_path):
    cr.manual_seed(0)
    emb = nn.Sequential(nn.CategoricalEmbedding(3, [4, 6], [2, 3]), nn.Linear(8, 5),
                        nn.ReLU(), nn.Linear(5, 2))
    rng = np.random.default_rng(0)
    for opset in OPSETS:
        path = cr.onnx.export(emb, tmp_path / f"cat-{opset}.onnx", opset=opset)
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        sess = _session(path)
        for b in BATCHES:
            X = rng.standard_normal((b, 5)).astype(np.float32)
            X[:, 3] = rng.integers(0, 4, b)
            X[:, 4] = rng.integers(0, 6, b)
            want = emb(cr.tensor(X)).data
            assert np.max(np.abs(sess.run(["output"], {"input": X})[0] - want)) <= 1e-5
    table = nn.Embedding(10, 3)
    for opset in OPSETS:
        path = cr.onnx.export(table, tmp_path / f"emb-{opset}.onnx", opset=opset)
        X = rng.integers(0, 10, size=7)
        np.testing.assert_array_equal(_session(path).run(["output"], {"input": X})[0],
                                      table.weight.data[X])


def test_checkpoint_with_spec_carries_preprocessing_classes_and_scaling(tmp_path):
    """A CLI-trained classifier and regressor: standardisation as nodes, class names in
    the metadata, probabilities / labels / target scaling as outputs."""
    from chainrule.cli import main

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, -3.0]
    lab = np.where(X[:, 0] + X[:, 1] / 10 - 5 > 0, "yes", "no")
    df_path = tmp_path / "t.csv"
    with open(df_path, "w") as f:
        f.write("a,b,c,label,value\n")
        for x, la in zip(X, lab):
            f.write(f"{x[0]:.4f},{x[1]:.4f},{x[2]:.4f},{la},{3 * x[0] + x[1]:.4f}\n")
    for target, out in (("label", "cls"), ("value", "reg")):
        assert main(["train", str(df_path), "--target", target, "--epochs", "5", "--quiet",
                     "--out", str(tmp_path / out)]) == 0
    import pandas as pd

    df = pd.read_csv(df_path)
    for out, target in (("cls", "label"), ("reg", "value")):
        ckpt = tmp_path / out / "model.safetensors"
        path = cr.onnx.export(ckpt, tmp_path / f"{out}.onnx", opset=17)
        assert cr.onnx.verify(ckpt, path) <= 1e-5
        pred = cr.load_predictor(ckpt)
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        sess = _session(path)
        rows = df.drop(columns=[target])
        got = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {"input": pred.encode(rows)})))
        if out == "cls":
            assert json.loads(meta["classes"]) == ["no", "yes"]
            assert json.loads(meta["input_columns"]) == ["a", "b", "c", "value"]
            classes = np.array(json.loads(meta["classes"]), dtype=object)
            np.testing.assert_array_equal(classes[got["label"]], pred.predict(rows))
            np.testing.assert_allclose(got["probabilities"], pred.predict_proba(rows),
                                       atol=1e-5)
        else:
            # the string column 'label' is a one-hot input of the regressor
            assert json.loads(meta["input_columns"]) == ["a", "b", "c", "label=no",
                                                          "label=yes"]
            np.testing.assert_allclose(got["prediction"].ravel(), pred.predict(rows),
                                       rtol=1e-5, atol=1e-4)


def test_sklearn_estimator_exports(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris

    from chainrule.sklearn import MLPClassifier, MLPRegressor

    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, names)
    path = cr.onnx.export(clf, tmp_path / "clf.onnx", opset=13)
    sess = _session(path)
    label, proba = sess.run(["label", "probabilities"], {"input": X.astype(np.float32)})
    np.testing.assert_array_equal(clf.classes_[label], clf.predict(X))
    np.testing.assert_allclose(proba, clf.predict_proba(X), atol=1e-5)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X[:, :3],
                                                                                 X[:, 3])
    path = cr.onnx.export(reg, tmp_path / "reg.onnx", opset=21)
    got = _session(path).run(["prediction"], {"input": X[:, :3].astype(np.float32)})[0]
    np.testing.assert_allclose(got.ravel(), reg.predict(X[:, :3]), atol=1e-5)


def test_bad_requests(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(cr.onnx.ONNXExportError, match="opset"):
        cr.onnx.export(model, tmp_path / "x.onnx", opset=9)
    with pytest.raises(TypeError, match="nn.Module"):
        cr.onnx.export(object(), tmp_path / "x.onnx")
    with pytest.raises(cr.onnx.ONNXExportError, match="Flatten"):
        cr.onnx.export(nn.Sequential(nn.Flatten(0), nn.Linear(2, 2)), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()  # nothing written half


def test_missing_onnx_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import chainrule as cr\n"
        "try:\n"
        "    cr.onnx.export(cr.nn.Sequential(cr.nn.Linear(2, 1)), 'x.onnx')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert 'pip install "chainrule[onnx]"' in out.stdout, out.stderr
