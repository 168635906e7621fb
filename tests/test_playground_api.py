"""The playground's server and JSON API, without a browser.

Numbers are checked against independent NumPy: a training step against the
notes' recursion plus the optimizer's rule written out, the boundary and the
neuron maps against a NumPy forward pass of the served weights, the export
against the server's predictions.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

import chainrule as cr
from chainrule.playground.config import Config, ConfigError
from chainrule.playground.datasets import UploadError, Uploads, generate, make_data
from chainrule.playground.session import Session
from playground_helpers import Server, notes_recursion


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def decode(text, dtype=np.float32):
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def weights_of(snap):
    return [(np.array(w["W"], np.float64), np.array(w["b"], np.float64)) for w in snap["weights"]]


def np_forward(weights, X, act, out):
    """The network's forward in float64 NumPy: hidden activations and the shown output."""
    f = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "identity": lambda z: z,
         "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[act]
    a = np.asarray(X, np.float64)
    hidden = []
    for W, b in weights[:-1]:
        a = f(a @ W.T + b)
        hidden.append(a)
    z = a @ weights[-1][0].T + weights[-1][1]
    if out == "sigmoid":
        p = 1 / (1 + np.exp(-z[:, 0]))
        shown = np.stack([1 - p, p], axis=1)
    elif out == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        shown = e / e.sum(axis=1, keepdims=True)
    elif out == "identity":  # mse on sigmoid outputs
        s = 1 / (1 + np.exp(-z))
        shown = np.concatenate([1 - s, s], axis=1) if s.shape[1] == 1 else s
    else:
        shown = z[:, 0]
    return hidden, shown


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------


def test_config_round_trips_and_refuses_bad_values_by_name():
    cfg = Config.from_params({"dataset": "spiral", "classes": "3", "loss": "ce", "hidden": "8,8",
                              "features": "x2,x1,x1sq", "lr": "0.1", "show_test": "1"})
    assert cfg.hidden == [8, 8] and cfg.features == ["x1", "x2", "x1sq"] and cfg.show_test
    assert Config.from_params(cfg.to_params()) == cfg
    bad = [({"lr": "abc"}, "lr='abc'"), ({"lr": "0"}, "lr=0"), ({"lr": "nan"}, "lr=nan"),
           ({"hidden": "8,x"}, "hidden[1]"), ({"hidden": "17"}, "hidden[0]=17"),
           ({"hidden": ",".join(["2"] * 11)}, "11 hidden layers"),
           ({"dataset": "mnist"}, "dataset='mnist'"), ({"colour": "red"}, "unknown setting"),
           ({"features": "cos"}, "'cos' is not a feature"), ({"features": ""}, "at least one"),
           ({"dataset": "spiral", "classes": "3"}, "loss=bce needs two classes"),
           ({"dataset": "csv"}, "upload a CSV"), ({"csv": "../../etc"}, "not an upload id"),
           ({"batch": "1e3"}, "batch='1e3'"), ({"seed": "-1"}, "seed=-1")]
    for params, text in bad:
        with pytest.raises(ConfigError, match=None) as e:
            Config.from_params(params)
        assert text in str(e.value), (params, str(e.value))


def test_regression_sets_force_squared_error_and_two_class_sets_stay_binary():
    assert Config.from_params({"dataset": "reg-plane", "loss": "ce"}).loss == "mse"
    assert Config.from_params({"dataset": "xor", "classes": "4"}).classes == 2


def test_live_settings_do_not_rebuild_the_rest_does():
    a = Config()
    for key, v in (("lr", "0.3"), ("batch", "5"), ("reg", "l2"), ("rrate", "0.1"),
                   ("momentum", "0.5"), ("show_test", "1")):
        assert not a.needs_rebuild(Config.from_params({key: v}))
    for key, v in (("seed", "7"), ("hidden", "3"), ("act", "relu"), ("noise", "10"),
                   ("opt", "adam"), ("features", "x1")):
        assert a.needs_rebuild(Config.from_params({key: v}))


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["circle", "xor", "gauss", "spiral", "moons", "reg-plane",
                                  "reg-gauss"])
def test_generated_sets_are_seeded(name):
    cfg = Config.from_params({"dataset": name, "noise": "20", "samples": "200"})
    X1, y1 = generate(cfg)
    X2, y2 = generate(cfg)
    X3, _ = generate(Config.from_params({"dataset": name, "noise": "20", "samples": "200",
                                         "seed": "2"}))
    assert X1.shape == (200, 2) and y1.shape == (200,)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    assert np.abs(X1).max() < 9  # the square the page shows (with a little noise around it)


def test_noise_free_labels_follow_the_rule_and_noise_flips_some():
    X, y = generate(Config.from_params({"dataset": "circle"}))
    assert np.array_equal(y, (np.hypot(X[:, 0], X[:, 1]) < 2.5).astype(int))
    X, y = generate(Config.from_params({"dataset": "xor"}))
    assert np.array_equal(y, (X[:, 0] * X[:, 1] >= 0).astype(int))
    X, y = generate(Config.from_params({"dataset": "xor", "noise": "30"}))
    flipped = np.mean(y != (X[:, 0] * X[:, 1] >= 0))
    assert 0.02 < flipped < 0.5
    X, y = generate(Config.from_params({"dataset": "reg-plane"}))
    np.testing.assert_allclose(y, (X[:, 0] + X[:, 1]) / 10)


def test_split_ratio_and_features():
    cfg = Config.from_params({"dataset": "gauss", "train": "70", "samples": "200",
                              "features": "x1,x2,x1x2,sinx2"})
    d = make_data(cfg)
    assert len(d.X_train) == 140 and len(d.X_test) == 60
    P = d.P_train
    np.testing.assert_allclose(d.X_train, np.stack(
        [P[:, 0], P[:, 1], P[:, 0] * P[:, 1], np.sin(P[:, 1])], axis=1), rtol=1e-6)


# --------------------------------------------------------------------------
# training, checked against the notes' recursion in NumPy
# --------------------------------------------------------------------------

STEP_CASES = [
    ({"dataset": "xor", "hidden": "3,2", "act": "tanh", "loss": "bce"}, "bce"),
    ({"dataset": "spiral", "classes": "3", "hidden": "4", "act": "relu", "loss": "ce"}, "ce"),
    ({"dataset": "gauss", "classes": "3", "hidden": "3", "act": "sigmoid", "loss": "mse"},
     "mse-sigmoid"),
    ({"dataset": "circle", "hidden": "2", "act": "tanh", "loss": "mse"}, "mse-sigmoid"),
    ({"dataset": "reg-gauss", "hidden": "5,3", "act": "identity", "lr": "0.01"}, "mse"),
    ({"dataset": "xor", "hidden": "3", "loss": "bce", "reg": "l2", "rrate": "0.3"}, "bce"),
    ({"dataset": "xor", "hidden": "3", "loss": "bce", "reg": "l1", "rrate": "0.3"}, "bce"),
]


@pytest.mark.parametrize("params,loss", STEP_CASES)
def test_one_sgd_step_is_the_notes_gradient_on_the_announced_batch(params, loss):
    cfg = Config.from_params({"lr": "0.5", **params, "batch": "7", "samples": "100"})
    s = Session("t", cfg, make_data(cfg))
    s.train(batches=2)  # not the first batch of the epoch
    before = s.snapshot()
    rows = np.array(before["next_batch"])
    assert len(rows) == 7
    Ws = weights_of(before)
    y = s.data.y_train[rows]
    rec = notes_recursion(Ws, s.data.X_train[rows], y, cfg.act, loss)
    s.train(batches=1)
    after = weights_of(s.snapshot())
    for (W0, b0), (W1, b1), r in zip(Ws, after, rec):
        gW = r["dW"]
        if cfg.reg == "l2":
            gW = gW + cfg.rrate * W0
        elif cfg.reg == "l1":
            gW = gW + cfg.rrate * np.sign(W0)
        np.testing.assert_allclose(W1, W0 - cfg.lr * gW, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b1, b0 - cfg.lr * r["db"], rtol=1e-4, atol=1e-5)


def test_an_epoch_visits_every_training_row_once_and_counts():
    cfg = Config.from_params({"dataset": "xor", "samples": "100", "batch": "8"})
    s = Session("t", cfg, make_data(cfg))
    seen = []
    while s.epoch == 0:
        seen += s.next_batch().tolist()
        s.train(batches=1)
    assert sorted(seen) == list(range(50))
    assert s.iteration == 7  # 50 rows in batches of 8: 6 full ones and one of 2
    assert [p["epoch"] for p in s.history] == [0, 1]
    assert s.history[0]["grad_norms"] is None and len(s.history[1]["grad_norms"]) == 3


def test_momentum_and_adam_follow_their_rules():
    for opt, ref in (("momentum", "sgd"), ("adam", "adam")):
        cfg = Config.from_params({"dataset": "xor", "hidden": "3", "opt": opt, "lr": "0.1",
                                  "momentum": "0.8", "batch": "10", "samples": "100"})
        s = Session("t", cfg, make_data(cfg))
        W = [w.copy() for w, _ in weights_of(s.snapshot())]
        m = [np.zeros_like(w) for w in W]
        v = [np.zeros_like(w) for w in W]
        for t in range(1, 4):
            rows = s.next_batch()
            rec = notes_recursion(weights_of(s.snapshot()), s.data.X_train[rows],
                                  s.data.y_train[rows], "tanh", "bce")
            s.train(batches=1)
            for i, r in enumerate(rec):
                g = r["dW"]
                if ref == "sgd":  # PyTorch's momentum: buf = mu buf + g; w -= lr buf
                    m[i] = 0.8 * m[i] + g if t > 1 else g
                    W[i] = W[i] - 0.1 * m[i]
                else:
                    m[i] = 0.9 * m[i] + 0.1 * g
                    v[i] = 0.999 * v[i] + 0.001 * g * g
                    mh, vh = m[i] / (1 - 0.9 ** t), v[i] / (1 - 0.999 ** t)
                    W[i] = W[i] - 0.1 * mh / (np.sqrt(vh) + 1e-8)
        for (got, _), want in zip(weights_of(s.snapshot()), W):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_same_seed_same_everything_and_reported_losses_are_the_data_loss():
    cfg = Config.from_params({"dataset": "spiral", "hidden": "6,6", "noise": "10"})
    a, b = (Session("t", cfg, make_data(cfg)) for _ in range(2))
    a.train(epochs=3)
    b.train(epochs=3)
    sa, sb = a.snapshot(), b.snapshot()
    assert sa["weights"] == sb["weights"] and sa["metrics"] == sb["metrics"]
    hidden, shown = np_forward(weights_of(sa), a.data.X_test, "tanh", "sigmoid")
    p1 = np.clip(shown[:, 1], 1e-12, 1 - 1e-12)
    yt = a.data.y_test
    bce = -np.mean(yt * np.log(p1) + (1 - yt) * np.log(1 - p1))
    assert sa["metrics"]["test_loss"] == pytest.approx(bce, rel=1e-4)
    assert sa["metrics"]["test_acc"] == pytest.approx(np.mean((p1 > 0.5) == yt))


def test_divergence_stops_training_keeps_finite_weights_and_says_so(server):
    d = server.post("/api/session", {"config": {"dataset": "reg-plane", "act": "relu",
                                                "lr": "10", "hidden": "8,8,8", "batch": "1"}})
    snap = server.post("/api/train", {"session": d["session"], "epochs": 20})
    assert snap["diverged"] and "lower the learning rate" in snap["diverged"]
    assert all(np.isfinite(np.array(w["W"], dtype=float)).all() for w in snap["weights"])
    again = server.post("/api/train", {"session": d["session"], "epochs": 1})
    assert again["epoch"] == snap["epoch"] and again["diverged"] == snap["diverged"]


# --------------------------------------------------------------------------
# what the page draws
# --------------------------------------------------------------------------


@pytest.mark.parametrize("params,out", [
    ({"dataset": "xor", "hidden": "4,3"}, "sigmoid"),
    ({"dataset": "gauss", "classes": "4", "loss": "ce", "hidden": "3", "act": "relu"}, "softmax"),
    ({"dataset": "circle", "loss": "mse", "hidden": "3"}, "identity"),
    ({"dataset": "reg-plane", "hidden": "3", "features": "x1,x2,x1sq"}, "value"),
])
def test_boundary_and_neuron_maps_are_the_network_on_the_grid(server, params, out):
    d = server.post("/api/session", {"config": params, "grid": 20, "maps": 6})
    assert d["network"]["output"] == out
    snap = server.post("/api/train", {"session": d["session"], "epochs": 2, "grid": 20,
                                      "maps": 6})
    cfg = Config.from_params(params)
    W = weights_of(snap)
    for n, key in ((20, "boundary"), (6, "neurons")):
        xs = np.linspace(-6, 6, n)
        gx, gy = np.meshgrid(xs, xs[::-1])  # row 0 at the top: the largest x2
        P = np.stack([gx.ravel(), gy.ravel()], axis=1)
        from chainrule.playground.datasets import feature_matrix

        hidden, shown = np_forward(W, feature_matrix(P, cfg.features), cfg.act, out)
        if key == "boundary":
            b = snap["boundary"]
            if out == "value":
                np.testing.assert_allclose(decode(b["value"]), shown, rtol=1e-4, atol=1e-5)
            elif shown.shape[1] == 2:
                assert b["kind"] == "binary"
                np.testing.assert_allclose(decode(b["value"]), shown[:, 1], atol=1e-5)
            else:
                assert b["kind"] == "multi"
                assert np.array_equal(decode(b["label"], np.uint8), shown.argmax(axis=1))
                np.testing.assert_allclose(decode(b["value"]), shown.max(axis=1), atol=1e-5)
        else:
            blocks = snap["neurons"]
            assert len(blocks) == len(cfg.hidden) + 1
            for block, h in zip(blocks, hidden):
                np.testing.assert_allclose(decode(block).reshape(h.shape[1], -1), h.T,
                                           rtol=1e-4, atol=1e-5)


def test_history_is_sent_once(server):
    d = server.post("/api/session", {"config": {"dataset": "xor"}})
    assert [p["epoch"] for p in d["history"]] == [0]
    s1 = server.post("/api/train", {"session": d["session"], "epochs": 3, "since": 1})
    assert [p["epoch"] for p in s1["history"]] == [1, 2, 3] and s1["history_len"] == 4
    s2 = server.post("/api/train", {"session": d["session"], "batches": 1, "since": 4})
    assert s2["history"] == [] and s2["iteration"] == s1["iteration"] + 1


def test_xor_trains_below_a_loss_bound(server):
    d = server.post("/api/session", {"config": {"dataset": "xor", "hidden": "8,8",
                                                "lr": "0.1"}})
    for _ in range(30):
        snap = server.post("/api/train", {"session": d["session"], "epochs": 10})
        if snap["metrics"]["test_loss"] < 0.1:
            break
    assert snap["metrics"]["test_loss"] < 0.1 and snap["metrics"]["test_acc"] > 0.95


def test_live_change_keeps_training_state_rebuild_starts_over(server):
    d = server.post("/api/session", {"config": {"dataset": "xor"}})
    sid = d["session"]
    server.post("/api/train", {"session": sid, "epochs": 2})
    r = server.post("/api/config", {"session": sid, "config": {**d["params"], "lr": "0.3"}})
    assert r["rebuilt"] is False and r["config"]["lr"] == 0.3
    assert server.app.sessions[sid].opt.param_groups[0]["lr"] == 0.3
    assert server.app.sessions[sid].epoch == 2
    r = server.post("/api/config", {"session": sid, "config": {**d["params"], "hidden": "3"}})
    assert r["rebuilt"] is True and r["epoch"] == 0 and r["network"]["sizes"] == [2, 3, 1]
    r = server.post("/api/config", {"session": sid, "config": {"lr": "-1"}}, expect=400)
    assert "lr=-1" in r["error"]


# --------------------------------------------------------------------------
# CSV uploads
# --------------------------------------------------------------------------

GOOD_CSV = "a,b,label\n" + "".join(
    f"{x:.3f},{y:.3f},{'in' if x * x + y * y < 1 else 'out'}\n"
    for x, y in np.random.default_rng(0).uniform(-2, 2, (80, 2)))


def upload(server, name, body):
    status, _, raw = server.request("POST", f"/api/upload?name={name}", body,
                                    {"X-Chainrule": "1", "Content-Type": "text/csv"})
    return status, json.loads(raw)


def test_csv_upload_trains_with_a_boundary(server):
    status, info = upload(server, "ring.csv", GOOD_CSV.encode())
    assert status == 200 and info["rows"] == 80 and info["columns"] == ["a", "b", "label"]
    assert info["problem"] == "classification"
    d = server.post("/api/session", {"config": {"dataset": "csv", "csv": info["id"],
                                                "loss": "ce", "hidden": "6"}})
    assert d["data"]["classes"] == ["in", "out"] and d["data"]["two_d"]
    assert d["network"]["sizes"] == [2, 6, 2]
    x0, x1, y0, y1 = d["data"]["domain"]
    assert x0 < -1.9 and x1 > 1.9  # the data's own range, padded
    snap = server.post("/api/train", {"session": d["session"], "epochs": 5})
    assert snap["boundary"]["kind"] == "binary"


def test_wide_csv_trains_without_a_boundary_and_regression_is_standardised(server):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    y = 1000 + 50 * X[:, 0]
    text = "p,q,r,s,price\n" + "".join(
        ",".join(f"{v:.4f}" for v in row) + f",{t:.2f}\n" for row, t in zip(X, y))
    status, info = upload(server, "wide.csv", text.encode())
    assert status == 200 and info["problem"] == "regression"
    d = server.post("/api/session", {"config": {"dataset": "csv", "csv": info["id"],
                                                "problem": "regression", "hidden": "4"}})
    assert d["data"]["two_d"] is False and d["boundary"] is None and d["neurons"] is None
    assert d["network"]["sizes"] == [4, 4, 1] and d["data"]["features"] == list("pqrs")
    sess = server.app.sessions[d["session"]]
    assert abs(sess.data.y_train.mean()) < 1e-5 and abs(sess.data.y_train.std() - 1) < 1e-4
    server.post("/api/train", {"session": d["session"], "epochs": 2})


@pytest.mark.parametrize("name,body,words", [
    ("ragged.csv", b"a,b,label\n1,2,0\n3,4\n5,6,1\n", ["ragged.csv", "line 3",
                                                       "expected 3 columns, found 2"]),
    ("text.csv", b"a,b,label\n1,2,0\n3,oops,1\n", ["text.csv", "line 3", "'oops'"]),
    ("empty.csv", b"", ["empty.csv", "empty"]),
    ("blank.csv", b"\n\n  \n", ["blank.csv", "empty"]),
    ("header.csv", b"a,b,label\n", ["header.csv", "no data rows"]),
    ("binary.csv", bytes(range(256)) * 4, ["binary.csv"]),
])
def test_bad_csv_is_refused_with_the_readers_message_and_the_server_keeps_serving(
        server, name, body, words):
    status, out = upload(server, name, body)
    assert status == 400
    for w in words:
        assert w in out["error"], out
    assert "chainrule-upload" not in out["error"]  # the temporary file's name stays hidden
    assert server.get("/api/meta")["version"]


def test_uploads_over_the_cap_are_refused_before_reading(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/api/upload?name=big.csv")
    conn.putheader("X-Chainrule", "1")
    conn.putheader("Content-Length", str(30 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"a,b,c\n" * 10)
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]
    conn.close()
    with pytest.raises(UploadError, match="limited to 20 MB"):
        Uploads().add("big.csv", b"1,2,3\n" * (4 * 1024 * 1024))


def test_csv_settings_that_cannot_work_are_explained(server):
    _, info = upload(server, "three.csv", b"a,b,c\n" + b"".join(
        f"{i},{i % 5},{i % 3}\n".encode() for i in range(30)))
    r = server.post("/api/session", {"config": {"dataset": "csv", "csv": info["id"],
                                                "loss": "bce"}}, expect=400)
    assert "bce needs two classes" in r["error"]
    r = server.post("/api/session", {"config": {"dataset": "csv", "csv": info["id"],
                                                "target": "zzz", "loss": "ce"}}, expect=400)
    assert "no such column" in r["error"] and "a, b, c" in r["error"]
    r = server.post("/api/session", {"config": {"dataset": "csv", "csv": "0" * 16}},
                    expect=400)
    assert "upload the file again" in r["error"]


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------


def test_export_checkpoint_and_snippet_reproduce_the_servers_predictions(server, tmp_path):
    cfg = {"dataset": "gauss", "classes": "3", "loss": "ce", "hidden": "5",
           "features": "x1,x2,x1sq,sinx2", "act": "relu"}
    d = server.post("/api/session", {"config": cfg})
    sid = d["session"]
    server.post("/api/train", {"session": sid, "epochs": 3})
    status, headers, blob = server.request("GET", f"/api/export/{sid}/model.safetensors")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    name = headers["Content-Disposition"].split('"')[1]
    assert name == "playground-gauss-5.safetensors"
    (tmp_path / name).write_bytes(blob)
    model = cr.load_model(tmp_path / name)
    ckpt = cr.load(tmp_path / name)
    assert ckpt.metadata["features"] == ["x1", "x2", "x1sq", "sinx2"]
    assert ckpt.optimizer_class == "SGD"
    sess = server.app.sessions[sid]
    with cr.no_grad():
        ours = model(cr.tensor(sess.data.X_test)).numpy()
    np.testing.assert_array_equal(ours, sess._forward(sess.data.X_test))
    status, headers, code = server.request("GET", f"/api/export/{sid}/model.py")
    assert status == 200 and headers["Content-Type"].startswith("text/x-python")
    (tmp_path / "snippet.py").write_bytes(code)
    run = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    P = np.array([[0.5, 0.5]])
    want = sess.predict(sess.data.inputs(P)).argmax(axis=1)
    assert run.stdout.strip().startswith(f"[{want[0]}]")


# --------------------------------------------------------------------------
# HTTP: routes, safety
# --------------------------------------------------------------------------


def test_page_and_static_files_only(server):
    status, headers, body = server.request("GET", "/")
    assert status == 200 and b"chainrule playground" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name in ("app.js", "network.js", "boundary.js", "curves.js", "stepthrough.js",
                 "style.css"):
        status, headers, _ = server.request("GET", f"/static/{name}")
        assert status == 200, name
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
                 "/static//etc/passwd", "/etc/passwd", "/static/", "/api/nothing",
                 "/static/__init__.py"):
        status, _, _ = server.request("GET", path)
        assert status == 404, path


def test_posts_need_the_custom_header_and_loopback_host(server):
    body = json.dumps({"config": {}}).encode()
    status, _, raw = server.request("POST", "/api/session", body)
    assert status == 403 and b"X-Chainrule" in raw
    for host in ("evil.example:80", "127.0.0.1.evil.example", "192.168.1.5"):
        status, _, raw = server.request("POST", "/api/session", body,
                                        {"X-Chainrule": "1", "Host": host})
        assert status == 403, host
        status, _, _ = server.request("GET", "/", headers={"Host": host})
        assert status == 403, host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
        status, _, _ = server.request("GET", "/api/meta", headers={"Host": host})
        assert status == 200, host


def test_bad_requests_get_messages_not_tracebacks(server):
    hdr = {"X-Chainrule": "1"}
    assert server.request("POST", "/api/session", b"{not json", hdr)[0] == 400
    assert server.request("POST", "/api/session", b"[1, 2]", hdr)[0] == 400
    assert server.request("POST", "/api/session", b"x" * 70_000, hdr)[0] == 413
    out = server.post("/api/train", {"session": "nope"}, expect=404)
    assert "unknown session" in out["error"]
    d = server.post("/api/session", {"config": {}})
    for payload, text in (({"epochs": -1}, "epochs=-1"), ({"epochs": 10**6}, "epochs="),
                          ({"epochs": "2"}, "epochs='2'"), ({"grid": 5000}, "grid=5000")):
        out = server.post("/api/train", {"session": d["session"], **payload}, expect=400)
        assert text in out["error"]
    out = server.post("/api/stepthrough", {"session": d["session"], "mode": "example",
                                           "index": 10**6}, expect=400)
    assert "does not exist" in out["error"]
    out = server.post("/api/stepthrough", {"session": d["session"], "mode": "x"}, expect=400)
    assert "'example' or 'batch'" in out["error"]


def test_sessions_are_capped_and_independent_across_threads():
    s = Server()
    try:
        s.app.max_sessions = 3
        ids = [s.post("/api/session", {"config": {"dataset": "xor", "hidden": "4"}})["session"]
               for _ in range(5)]
        assert list(s.app.sessions) == ids[2:]
        results: dict[str, list] = {}

        def train(sid: str) -> None:
            for _ in range(5):
                snap = s.post("/api/train", {"session": sid, "epochs": 2})
            results[sid] = snap["weights"]
        threads = [threading.Thread(target=train, args=(sid,)) for sid in ids[2:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # same settings, same seed: every session went the same way, in parallel
        first = results[ids[2]]
        assert all(results[sid] == first for sid in ids[2:])
    finally:
        s.close()


# --------------------------------------------------------------------------
# starting it: cr.playground() and the command line
# --------------------------------------------------------------------------


def test_cr_playground_serves_and_stops(capsys):
    pg = cr.playground(port=0, open_browser=False, dataset="spiral", hidden=[8, 8])
    try:
        assert pg.url.endswith("/#dataset=spiral&hidden=8,8") and pg.url.startswith(
            "http://127.0.0.1:")
        assert "<iframe" in pg._repr_html_()
        conn = http.client.HTTPConnection("127.0.0.1", pg.port, timeout=10)
        conn.request("GET", "/api/meta")
        assert conn.getresponse().status == 200
    finally:
        pg.stop()
    assert capsys.readouterr().err == ""  # loopback: no warning
    with pytest.raises(ConfigError, match="lr='fast'"):
        cr.playground(port=0, open_browser=False, lr="fast")
    import chainrule.playground as pg_module

    assert callable(pg_module) and pg_module.Playground is type(pg)


def test_another_host_warns(capsys):
    pg = cr.playground(port=0, host="0.0.0.0", open_browser=False)
    pg.stop()
    assert "anyone who can reach this machine" in capsys.readouterr().err


def test_command_line_serves_until_interrupted_and_refuses_bad_settings():
    import os
    import signal

    from chainrule.cli import main

    assert main(["playground", "lr=fast", "--no-browser", "--port", "0"]) == 2
    assert main(["playground", "nonsense", "--no-browser"]) == 2
    proc = subprocess.Popen([sys.executable, "-m", "chainrule", "playground", "--no-browser",
                             "--port", "0", "dataset=xor"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving at http://127.0.0.1:" in line and line.strip().endswith("#dataset=xor")
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
    finally:
        proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_command_line_settings_never_reach_the_servers_own_parameters(capsys):
    # port=, verbose=, block= ... are not page settings: one line and status 2,
    # not "internal error: got multiple values for keyword argument" (or, for
    # block=, a server that blocks before printing its URL)
    from chainrule.cli import main

    for word in ("port=9", "verbose=0", "host=0.0.0.0", "block=1", "open_browser=1"):
        assert main(["playground", "dataset=xor", word, "--no-browser", "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert f"unknown setting {word.split('=')[0]!r}" in err and "--port" in err
        assert "internal error" not in err


def test_help_lists_the_playground(capsys):
    from chainrule.cli import build_parser

    text = build_parser().format_help()
    assert "playground" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["playground", "--help"])
    out = capsys.readouterr().out
    assert "--no-browser" in out and "--host" in out and "127.0.0.1" in out


def test_a_weight_set_by_hand_is_used_and_bad_ones_are_refused(server):
    d = server.post("/api/session", {"config": {"dataset": "xor", "hidden": "3"}})
    snap = server.post("/api/weight", {"session": d["session"], "layer": 1, "row": 2, "col": 1,
                                       "value": -2.5})
    assert snap["weights"][0]["W"][2][1] == -2.5 and snap["epoch"] == 0
    W = weights_of(snap)
    X = server.app.sessions[d["session"]].data.X_test
    _, shown = np_forward(W, X, "tanh", "sigmoid")
    assert snap["metrics"]["test_acc"] == pytest.approx(
        np.mean(shown.argmax(axis=1) == server.app.sessions[d["session"]].data.y_test))
    for bad, words in (({"layer": 3}, "layer 3 does not exist"), ({"row": 3}, "outside"),
                       ({"value": "nan"}, "not a number"), ({"value": 1e9}, "not a number"),
                       ({"col": 1.5}, "whole numbers")):
        body = {"session": d["session"], "layer": 1, "row": 0, "col": 0, "value": 1.0, **bad}
        assert words in server.post("/api/weight", body, expect=400)["error"]


def test_a_new_network_on_the_same_data_does_not_remake_the_data(server):
    d = server.post("/api/session", {"config": {"dataset": "spiral"}})
    sess = server.app.sessions[d["session"]]
    data = sess.data
    server.post("/api/config", {"session": d["session"], "config": {**d["params"], "hidden": "5"}})
    assert sess.data is data
    server.post("/api/config", {"session": d["session"], "config": {**d["params"], "noise": "10"}})
    assert sess.data is not data


def test_column_names_cannot_inject_code_into_the_snippet(server, tmp_path):
    evil = '"a\nraise SystemExit(7)\n#"'
    text = f"{evil},b,label\n" + "".join(f"{i % 7},{i % 3},{i % 2}\n" for i in range(40))
    _, info = upload(server, "evil.csv", text.encode())
    d = server.post("/api/session", {"config": {"dataset": "csv", "csv": info["id"],
                                                "loss": "ce"}})
    status, headers, blob = server.request("GET", f"/api/export/{d['session']}/model.safetensors")
    name = headers["Content-Disposition"].split('"')[1]
    (tmp_path / name).write_bytes(blob)
    _, _, code = server.request("GET", f"/api/export/{d['session']}/model.py")
    assert b"\nraise SystemExit" not in code
    (tmp_path / "snippet.py").write_bytes(code)
    run = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_a_page_that_goes_away_mid_answer_leaves_no_traceback(capfd):
    import socket
    import struct

    s = Server()
    try:
        d = s.post("/api/session", {"config": {"dataset": "xor", "samples": "2000"}})
        body = json.dumps({"session": d["session"], "epochs": 3}).encode()
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.sendall(b"POST /api/train HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Chainrule: 1\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # reset: the answer has nowhere to go
        assert s.get("/api/meta")["version"]  # still serving
        s.post("/api/train", {"session": d["session"], "epochs": 1})
    finally:
        s.close()
    assert "Traceback" not in capfd.readouterr().err


def test_step_through_answer_for_2_8_8_2_at_batch_10_is_under_200_kb(server):
    d = server.post("/api/session", {"config": {"dataset": "spiral", "hidden": "8,8",
                                                "loss": "ce", "batch": "10"}})
    server.post("/api/train", {"session": d["session"], "epochs": 2})
    status, _, raw = server.request("POST", "/api/stepthrough",
                                    json.dumps({"session": d["session"], "mode": "batch"}).encode(),
                                    {"X-Chainrule": "1"})
    view = json.loads(raw)
    assert status == 200 and view["batch"] == 10 and len(view["layers"]) == 3
    assert len(raw) < 200_000


def test_the_playground_bench_runs():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import playground as bench

    fw = bench.forward(reps=1)
    assert all(v > 0 for v in fw.values())
    sp = bench.stepthrough_payload()
    assert sp["batch"] == 10 and sp["answer bytes"] < sp["whole ledger bytes"]


def test_the_docs_page_python_runs_as_written(tmp_path, monkeypatch):
    import contextlib
    import io
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "playground.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<docs/playground.md>", "exec"), {"__name__": "__doc_block__"})
        assert out.getvalue()


def test_the_browser_opens_outside_jupyter_and_the_page_shows_inline_inside(monkeypatch):
    import types
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url))
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    pg = cr.playground(port=0)
    pg.stop()
    assert opened == [pg.url]
    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "k.json"}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    pg = cr.playground(port=0)
    pg.stop()
    assert opened == [opened[0]]  # not opened again: the notebook shows the iframe
    assert f'src="{pg.url}"' in pg._repr_html_()
