"""GELU, SiLU, ELU, LayerNorm, BatchNorm1d, Embedding, L1/Huber/SmoothL1 losses,
class-weighted cross-entropy and Adagrad: values and gradients against PyTorch
(float64), train/eval behaviour, checkpoints and ``nn.build``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F
from chainrule import nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional
RNG = np.random.default_rng(0)


def _pair(a):
    """The same float64 array as a chainrule leaf and a torch leaf."""
    return (cr.tensor(np.array(a, dtype=np.float64), requires_grad=True),
            torch.tensor(np.array(a, dtype=np.float64), requires_grad=True))


def _check(ours, theirs, leaves, rtol=1e-10, atol=1e-12):
    """Equal values, then equal gradients of sum(out * r) for a random r."""
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=rtol, atol=atol)
    r = RNG.standard_normal(ours.shape)
    (ours * r).sum().backward()
    (theirs * torch.tensor(r)).sum().backward()
    for a, b in leaves:
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=rtol, atol=atol)


# ----- activations --------------------------------------------------------------


def test_ndtr_matches_math_erfc_across_the_tails():
    xs = np.concatenate([np.linspace(-37, 37, 20001), [0.0, -1e-9, 1e-9]])
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xs])
    got = cr.ops.ndtr(xs).data
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert cr.ops.ndtr(np.array([np.nan, np.inf, -np.inf])).data.tolist()[1:] == [1.0, 0.0]
    assert np.isnan(cr.ops.ndtr(np.array([np.nan])).data[0])


@pytest.mark.parametrize("name, ours, theirs", [
    ("gelu", F.gelu, TF.gelu),
    ("gelu-tanh", lambda x: F.gelu(x, "tanh"), lambda x: TF.gelu(x, approximate="tanh")),
    ("silu", F.silu, TF.silu),
    ("elu", F.elu, TF.elu),
    ("elu-alpha", lambda x: F.elu(x, 0.3), lambda x: TF.elu(x, 0.3)),
])
def test_activations_match_torch(name, ours, theirs):
    x = np.concatenate([RNG.standard_normal(40) * 3, [-40.0, -8.0, 0.0, 8.0, 40.0]])
    a, b = _pair(x)
    _check(ours(a), theirs(b), [(a, b)])


def test_activation_modules_and_float32():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    for mod, fn in [(nn.GELU(), F.gelu), (nn.GELU("tanh"), lambda t: F.gelu(t, "tanh")),
                    (nn.SiLU(), F.silu), (nn.ELU(0.5), lambda t: F.elu(t, 0.5))]:
        out = mod(cr.tensor(x))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out.data, fn(cr.tensor(x)).data)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


# ----- normalisation ------------------------------------------------------------


def test_layer_norm_matches_torch():
    x = RNG.standard_normal((4, 3, 5))
    w, b = RNG.standard_normal((3, 5)), RNG.standard_normal((3, 5))
    (xa, xb), (wa, wb), (ba, bb) = _pair(x), _pair(w), _pair(b)
    _check(F.layer_norm(xa, (3, 5), wa, ba, eps=1e-3), TF.layer_norm(xb, (3, 5), wb, bb, eps=1e-3),
           [(xa, xb), (wa, wb), (ba, bb)])
    ln = nn.LayerNorm(5)
    assert [k for k, _ in ln.named_parameters()] == ["weight", "bias"]
    with pytest.raises(ValueError, match="does not end in normalized_shape"):
        ln(cr.randn(2, 4))


@pytest.mark.parametrize("shape", [(8, 3), (6, 3, 4)])
def test_batch_norm_train_and_eval_match_torch(shape):
    ours = nn.BatchNorm1d(3, momentum=0.2, dtype=np.float64)
    theirs = torch.nn.BatchNorm1d(3, momentum=0.2, dtype=torch.float64)
    w, b = RNG.standard_normal(3), RNG.standard_normal(3)
    with cr.no_grad():
        ours.weight.data[...] = w
        ours.bias.data[...] = b
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(w))
        theirs.bias.copy_(torch.tensor(b))
    for _ in range(3):  # training steps move the running statistics
        x = RNG.standard_normal(shape) * 2 + 1
        a, t = _pair(x)
        _check(ours(a), theirs(t), [(a, t)])
        np.testing.assert_allclose(ours.weight.grad.data, theirs.weight.grad.numpy(), rtol=1e-10)
        ours.zero_grad()
        theirs.zero_grad()
    sd = ours.state_dict()
    tsd = theirs.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        np.testing.assert_allclose(sd[k], tsd[k].numpy(), rtol=1e-12)
    ours.eval()
    theirs.eval()
    x = RNG.standard_normal(shape)
    a, t = _pair(x)
    _check(ours(a), theirs(t), [(a, t)])
    # eval mode: a row's output does not depend on the rest of the batch
    np.testing.assert_allclose(ours(cr.tensor(x[:1])).data, ours(cr.tensor(x)).data[:1])


def test_batch_norm_errors_and_one_sample():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(cr.randn(1, 3))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        bn(cr.randn(3))
    bn.eval()
    assert bn(cr.randn(1, 3)).shape == (1, 3)


def test_batch_norm_running_stats_survive_a_checkpoint(tmp_path):
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    X = RNG.standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    opt = cr.optim.Adam(model.parameters(), lr=1e-2)
    cr.fit(model, F.cross_entropy, opt, (X, y), epochs=3, batch_size=16, seed=0,
           progress=False)
    assert int(model[1].num_batches_tracked.data) == 12  # the compiled replays update it too
    assert not np.allclose(model[1].running_mean.data, 0)
    path = cr.save(model, tmp_path / "bn.safetensors")
    back = cr.load_model(path)
    back.eval()
    model.eval()
    np.testing.assert_array_equal(back[1].running_var.data, model[1].running_var.data)
    np.testing.assert_array_equal(back(cr.tensor(X)).data, model(cr.tensor(X)).data)


def test_compiled_and_eager_batch_norm_training_agree():
    def run(compile):
        cr.manual_seed(1)
        m = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.GELU(), nn.Linear(5, 1))
        X = np.random.default_rng(2).standard_normal((40, 3)).astype(np.float32)
        opt = cr.optim.SGD(m.parameters(), lr=0.1)
        cr.fit(m, F.mse_loss, opt, (X, X[:, :1] * 2), epochs=2, batch_size=8, seed=0,
               progress=False, compile=compile)
        return m.state_dict()

    a, b = run(False), run(True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----- embeddings ---------------------------------------------------------------


def test_embedding_matches_torch_and_accumulates_repeated_rows():
    w = RNG.standard_normal((5, 3))
    idx = np.array([[1, 4, 1], [0, 1, 2]])
    a, t = _pair(w)
    _check(F.embedding(idx, a), TF.embedding(torch.tensor(idx), t), [(a, t)])
    with pytest.raises(IndexError, match="index 5 is out of range for 5"):
        F.embedding(np.array([5]), a)
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.5]), a)
    assert nn.Embedding(10, 4)(np.array([3])).shape == (1, 4)


def test_categorical_embedding_layer():
    cr.manual_seed(0)
    emb = nn.CategoricalEmbedding(2, [3, 4], [2, 3])
    x = np.array([[0.5, -1.0, 2, 3], [1.0, 0.0, 0, 0]], dtype=np.float32)
    out = emb(cr.tensor(x))
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out.data[:, :2], x[:, :2])
    np.testing.assert_array_equal(out.data[0, 2:4], emb.embeddings[0].weight.data[2])
    np.testing.assert_array_equal(out.data[1, 4:], emb.embeddings[1].weight.data[0])
    with pytest.raises(ValueError, match="integer category codes"):
        emb(cr.tensor(np.array([[0, 0, 0.5, 1]], np.float32)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        emb(cr.tensor(np.zeros((1, 3), np.float32)))
    twin = nn.build(nn.Sequential(emb, nn.Linear(7, 2)).get_config())
    assert [k for k in twin.state_dict()][:2] == ["0.embeddings.0.weight", "0.embeddings.1.weight"]


# ----- losses -------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, ours, theirs", [
    ("l1", F.l1_loss, lambda x, y, r: TF.l1_loss(x, y, reduction=r)),
    ("huber", lambda x, y, r: F.huber_loss(x, y, r, delta=0.8),
     lambda x, y, r: TF.huber_loss(x, y, reduction=r, delta=0.8)),
    ("smooth-l1", lambda x, y, r: F.smooth_l1_loss(x, y, r, beta=0.6),
     lambda x, y, r: TF.smooth_l1_loss(x, y, reduction=r, beta=0.6)),
])
def test_regression_losses_match_torch(name, ours, theirs, reduction):
    x, y = RNG.standard_normal((5, 3)) * 2, RNG.standard_normal((5, 3))
    (xa, xt), (ya, yt) = _pair(x), _pair(y)
    _check(ours(xa, ya, reduction), theirs(xt, yt, reduction), [(xa, xt), (ya, yt)])


def test_loss_modules_and_bad_arguments():
    z, t = cr.tensor(np.array([0.5, 3.0])), np.zeros(2)
    assert nn.HuberLoss()(z, t).item() == pytest.approx((0.125 + 2.5) / 2)
    assert nn.L1Loss(reduction="sum")(z, t).item() == pytest.approx(3.5)
    assert nn.SmoothL1Loss(beta=0.0)(z, t).item() == pytest.approx(1.75)
    with pytest.raises(ValueError, match="delta must be a number > 0"):
        F.huber_loss(z, t, delta=0)
    with pytest.raises(ValueError, match="target shape"):
        F.l1_loss(z, np.zeros(3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_class_weighted_cross_entropy_matches_torch(reduction, smoothing):
    z = RNG.standard_normal((6, 4))
    y = np.array([0, 3, 3, 1, 2, 3])
    w = np.array([0.2, 1.0, 3.0, 0.7])
    a, t = _pair(z)
    ours = F.cross_entropy(a, y, reduction=reduction, label_smoothing=smoothing, weight=w)
    theirs = TF.cross_entropy(t, torch.tensor(y), weight=torch.tensor(w), reduction=reduction,
                              label_smoothing=smoothing)
    _check(ours, theirs, [(a, t)])
    # probability targets
    q = np.eye(4)[y] * 0.8 + 0.05
    a, t = _pair(z)
    ours = F.cross_entropy(a, q, reduction=reduction, label_smoothing=smoothing, weight=w)
    theirs = TF.cross_entropy(t, torch.tensor(q), weight=torch.tensor(w), reduction=reduction,
                              label_smoothing=smoothing)
    _check(ours, theirs, [(a, t)])


def test_class_weight_validation_and_module():
    z = cr.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        F.cross_entropy(z, np.array([0, 1]), weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        F.cross_entropy(z, np.array([0, 1]), weight=[1.0, -2.0, 1.0])
    loss = nn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])
    assert loss.get_config()["weight"] == [1.0, 2.0, 3.0]
    assert nn.build(loss.get_config())(z, np.array([0, 2])).item() == pytest.approx(math.log(3))
    assert nn.CrossEntropyLoss("sum").reduction == "sum"  # the old positional order


# ----- Adagrad ------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"lr_decay": 0.1, "weight_decay": 0.05,
                                    "initial_accumulator_value": 0.3, "eps": 1e-6},
                                {"maximize": True}])
def test_adagrad_follows_torch(kw):
    w0 = RNG.standard_normal((3, 4))
    p = cr.tensor(w0.copy(), requires_grad=True)
    tp = torch.tensor(w0.copy(), requires_grad=True)
    opt = cr.optim.Adagrad([p], lr=0.1, **kw)
    topt = torch.optim.Adagrad([tp], lr=0.1, **kw)
    for _ in range(5):
        opt.zero_grad()
        topt.zero_grad()
        ((p * p * p).sum() + (p * 2).sum()).backward()
        ((tp * tp * tp).sum() + (tp * 2).sum()).backward()
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["sum"],
                               topt.state_dict()["state"][0]["sum"].numpy(), rtol=1e-12)


def test_adagrad_state_round_trips_through_a_checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.SiLU(), nn.Linear(3, 1))
    opt = cr.optim.Adagrad(model.parameters(), lr=0.1)
    X = RNG.standard_normal((16, 2)).astype(np.float32)
    cr.fit(model, F.huber_loss, opt, (X, X[:, :1]), epochs=2, progress=False, seed=0)
    path = cr.save(model, tmp_path / "m.safetensors", optimizer=opt)
    opt2 = cr.optim.Adagrad(model.parameters(), lr=0.1)
    cr.load(path).load_into(model, opt2)
    np.testing.assert_array_equal(opt2.state_dict()["state"][0]["sum"],
                                  opt.state_dict()["state"][0]["sum"])
    with pytest.raises(ValueError):
        cr.optim.Adagrad(model.parameters(), lr_decay=-1)


def test_new_layers_round_trip_through_build():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU("tanh"), nn.Linear(8, 8),
                          nn.BatchNorm1d(8), nn.ELU(0.5), nn.Linear(8, 8), nn.SiLU(),
                          nn.Linear(8, 2))
    twin = nn.build(model.get_config())
    twin.load_state_dict(model.state_dict())
    model.eval()
    twin.eval()
    x = cr.randn(5, 4)
    np.testing.assert_array_equal(model(x).data, twin(x).data)
