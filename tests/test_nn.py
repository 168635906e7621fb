"""Modules, parameters, state dicts, layers, init, dropout, configs, seeding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import chainrule as cr
import chainrule.nn.functional as F
from chainrule import nn
from graphwalk import ops


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.heads = [nn.Linear(8, 2), nn.Linear(8, 3)]
        self.scale = nn.Parameter(np.ones(1, dtype=np.float32))
        self.not_a_param = cr.tensor([1.0])

    def forward(self, x):
        h = self.body(x)
        return self.heads[0](h) * self.scale, self.heads[1](h)


# ----- walking attributes --------------------------------------------------------


def test_named_parameters_walk_attributes_lists_and_sequential():
    names = [n for n, _ in Net().named_parameters()]
    # a module's own parameters come before its sub-modules' (PyTorch's order)
    assert names == ["scale", "body.0.weight", "body.0.bias", "heads.0.weight", "heads.0.bias",
                     "heads.1.weight", "heads.1.bias"]
    assert [n for n, _ in Net().named_modules()][:3] == ["", "body", "body.0"]
    assert len(list(Net().children())) == 3


def test_shared_parameter_listed_once():
    a = nn.Linear(3, 3)
    model = nn.Sequential(a, nn.Tanh(), a)
    assert len(list(model.parameters())) == 2
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert [n for n, _ in tied.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert "1.weight" in tied.state_dict()  # the state dict keeps every name, as in PyTorch


def test_train_eval_propagates_and_zero_grad():
    m = Net()
    m.eval()
    assert all(not s.training for s in m.modules())
    m.train()
    assert all(s.training for s in m.modules())
    out = m(cr.ones((2, 4)))
    (out[0].sum() + out[1].sum()).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all((p.grad.data == 0).all() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_parameter_is_a_leaf_tensor_requiring_grad():
    p = nn.Parameter(np.zeros((2, 2)))
    assert isinstance(p, cr.Tensor) and p.requires_grad and p.is_leaf
    assert type(p * 2) is cr.Tensor
    assert "Parameter(" in repr(p)


def test_repr_is_pytorch_like():
    r = repr(nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.2), nn.Dropout(0.1)))
    assert r == ("Sequential(\n  (0): Linear(in_features=2, out_features=3, bias=True)\n"
                 "  (1): LeakyReLU(negative_slope=0.2)\n  (2): Dropout(p=0.1)\n)")


# ----- state dicts --------------------------------------------------------------------


def test_state_dict_copies_and_loads():
    a, b = Net(), Net()
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    sd["scale"][0] = 99.0
    assert a.scale.data[0] == 1.0  # copies, not views
    b.load_state_dict(a.state_dict())
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(x, y, err_msg=k)
    # Tensors and float64 arrays are accepted (cast to the parameter dtype)
    b.load_state_dict({k: cr.tensor(v.astype(np.float64)) for k, v in a.state_dict().items()})
    assert b.scale.dtype == np.float32


def test_load_state_dict_strict_errors_list_keys():
    m = nn.Sequential(nn.Linear(2, 2))
    sd = m.state_dict()
    sd["0.extra"] = np.zeros(1)
    del sd["0.bias"]
    with pytest.raises(KeyError, match=r"missing keys: \['0.bias'\].*unexpected keys: "
                                       r"\['0.extra'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["0.bias"] and unexpected == ["0.extra"]


def test_load_state_dict_shape_error_names_key_and_shapes():
    m = nn.Sequential(nn.Linear(2, 3))
    sd = m.state_dict()
    sd["0.weight"] = np.zeros((2, 3), dtype=np.float32)
    before = m[0].bias.data.copy()
    sd["0.bias"] = np.full(3, 7.0, dtype=np.float32)
    with pytest.raises(ValueError, match=r"'0.weight'.*shape \(2, 3\).*shape \(3, 2\)"):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m[0].bias.data, before)  # nothing half-loaded


def test_register_buffer_is_saved():
    m = nn.Linear(2, 2)
    m.register_buffer("running", np.arange(3.0))
    assert "running" in m.state_dict() and len(list(m.parameters())) == 2
    sd = m.state_dict()
    sd["running"] = np.ones(3)
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m.running.data, 1.0)


# ----- Linear, init, seeding ---------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 8, 40])
def test_affine_product_in_either_orientation_equals_x_w_transpose_plus_b(batch):
    # ops._affine computes (w @ x.T).T when the batch is shorter than the output
    # side: the values must be x @ w.T + b, C-ordered, in x's dtype, with the same
    # casting of a float64 bias as an in-place add
    from chainrule.ops import _affine

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 6))
    w = rng.standard_normal((9, 6))
    b = rng.standard_normal(9)
    out = _affine(x, w, b)
    assert out.shape == (batch, 9) and out.flags.c_contiguous
    np.testing.assert_allclose(out, x @ w.T + b, rtol=1e-13, atol=1e-13)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    out32 = _affine(x32, w32, b)  # float64 bias on a float32 product
    ref = x32 @ w32.T
    ref += b
    assert out32.dtype == np.float32 and out32.flags.c_contiguous
    np.testing.assert_allclose(out32, ref, rtol=1e-5, atol=1e-5)


def test_linear_shapes_forward_and_init_bounds():
    cr.manual_seed(0)
    lin = nn.Linear(100, 50)
    assert lin.weight.shape == (50, 100) and lin.bias.shape == (50,)
    assert lin.weight.dtype == np.float32
    bound = 1 / math.sqrt(100)
    for p in (lin.weight, lin.bias):
        assert np.abs(p.data).max() <= bound
    assert np.abs(lin.weight.data).max() > 0.9 * bound  # it fills the range
    assert abs(lin.weight.data.std() - bound / math.sqrt(3)) < 0.005  # U(-b, b) has std b/sqrt 3
    x = np.random.default_rng(0).standard_normal((7, 100)).astype(np.float32)
    np.testing.assert_allclose(lin(cr.tensor(x)).data, x @ lin.weight.data.T + lin.bias.data,
                               rtol=1e-5, atol=1e-6)
    assert nn.Linear(3, 2, bias=False).bias is None
    assert nn.Linear(3, 2, dtype=np.float64).weight.dtype == np.float64
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(-1, 2)


def test_manual_seed_is_bit_reproducible():
    def build():
        model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 2))
        return model, model(cr.ones((3, 5))).data

    cr.manual_seed(123)
    m1, y1 = build()
    cr.manual_seed(123)
    m2, y2 = build()
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    cr.manual_seed(124)
    assert not np.array_equal(build()[1], y1)
    g = np.random.default_rng(5)
    w = nn.Linear(4, 4, generator=g).weight.data
    assert np.array_equal(w, nn.Linear(4, 4, generator=np.random.default_rng(5)).weight.data)


def test_init_functions():
    g = np.random.default_rng(0)
    w = nn.Parameter(np.empty((200, 300), dtype=np.float32))
    nn.init.xavier_uniform_(w, generator=g)
    b = math.sqrt(6 / 500)
    assert np.abs(w.data).max() <= b and abs(w.data.std() - b / math.sqrt(3)) < 0.002
    nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)
    assert abs(w.data.std() - math.sqrt(2 / 300)) < 0.002
    nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", generator=g)
    assert np.abs(w.data).max() <= math.sqrt(6 / 200)
    nn.init.xavier_normal_(w, gain=2.0, generator=g)
    assert abs(w.data.std() - 2 * math.sqrt(2 / 500)) < 0.002
    assert nn.init.constant_(w, 0.5) is w and (w.data == 0.5).all()
    nn.init.zeros_(w)
    assert not w.data.any()
    nn.init.ones_(w)
    assert (w.data == 1).all()
    nn.init.normal_(w, 3.0, 0.1, generator=g)
    assert abs(w.data.mean() - 3.0) < 0.01
    nn.init.uniform_(w, -2, -1, generator=g)
    assert w.data.max() <= -1 and w.data.min() >= -2
    assert nn.init.calculate_gain("relu") == math.sqrt(2)
    assert nn.init.calculate_gain("leaky_relu", math.sqrt(5)) == math.sqrt(1 / 3)
    assert nn.init.calculate_gain("tanh") == 5 / 3
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        nn.init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.xavier_uniform_(nn.Parameter(np.zeros(3)))


def test_init_marks_the_change_for_backward():
    w = nn.Parameter(np.ones(2))
    y = (w * w).sum()
    with cr.no_grad():
        nn.init.zeros_(w)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


# ----- activations and dropout ----------------------------------------------------------


def test_activation_modules_match_functions():
    x = cr.tensor(np.linspace(-3, 3, 12).reshape(3, 4))
    z = x.data
    np.testing.assert_allclose(nn.ReLU()(x).data, np.maximum(z, 0))
    np.testing.assert_allclose(nn.LeakyReLU(0.1)(x).data, np.where(z > 0, z, 0.1 * z))
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(nn.Tanh()(x).data, np.tanh(z))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(nn.Softmax()(x).data, e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(nn.Softmax(dim=0)(x).data.sum(axis=0), 1.0)
    np.testing.assert_allclose(nn.LogSoftmax(axis=1)(x).data, np.log(e / e.sum(-1, keepdims=True)))
    assert nn.Identity(54, unused=1)(x) is x
    assert nn.Flatten()(cr.ones((2, 3, 4))).shape == (2, 12)
    assert nn.Flatten(0, 1)(cr.ones((2, 3, 4))).shape == (6, 4)


def test_dropout_statistics_scaling_and_eval():
    cr.manual_seed(0)
    drop = nn.Dropout(0.3)
    x = cr.ones((200, 500))
    y = drop(x).data
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)  # inverted dropout scaling
    assert abs(y.mean() - 1.0) < 0.01  # expectation preserved
    drop.eval()
    assert drop(x) is x
    assert F.dropout(x, 0.3, training=False) is x
    assert not F.dropout(x, 1.0).data.any()
    w = cr.tensor(np.ones(1000), requires_grad=True)
    out = F.dropout(w, 0.5, generator=np.random.default_rng(1))
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.data, out.data)  # gradient uses the same mask
    for bad in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="p must be a probability"):
            nn.Dropout(bad)


def test_dropout_generator_reproducible():
    x = cr.ones((10, 10))
    a = nn.Dropout(0.5, generator=np.random.default_rng(7))(x).data
    b = nn.Dropout(0.5, generator=np.random.default_rng(7))(x).data
    np.testing.assert_array_equal(a, b)


# ----- config and build ------------------------------------------------------------------


def test_get_config_build_round_trip():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.LeakyReLU(0.2),
                          nn.Dropout(0.25), nn.Linear(5, 3, dtype=np.float64), nn.LogSoftmax(dim=1))
    config = json.loads(json.dumps(model.get_config()))
    assert config[1] == {"type": "Linear", "in_features": 6, "out_features": 5, "bias": False,
                         "dtype": "float32"}
    twin = nn.build(config)
    assert repr(twin) == repr(model)
    twin.load_state_dict(model.state_dict())
    model.eval()
    twin.eval()
    x = cr.tensor(np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32))
    np.testing.assert_array_equal(model(x).data, twin(x).data)
    assert isinstance(nn.build({"type": "Sequential", "layers": config}), nn.Sequential)
    assert isinstance(nn.build({"type": "ReLU"}), nn.ReLU)


def test_build_errors():
    with pytest.raises(ValueError, match=r"unknown layer type 'Conv2d'; known types"):
        nn.build([{"type": "Conv2d"}])
    with pytest.raises(ValueError, match="'type' key"):
        nn.build([{"in_features": 3}])
    with pytest.raises(ValueError, match="bad arguments for Linear"):
        nn.build([{"type": "Linear", "in_feature": 3, "out_features": 2}])
    with pytest.raises(NotImplementedError, match="not a built-in layer"):
        Net().get_config()


def test_sequential_container_behaviour():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and seq[0] is layers[0] and list(seq) == layers
    assert isinstance(seq[1:], nn.Sequential) and len(seq[1:]) == 2
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and seq(cr.ones((5, 2))).shape == (5, 1)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.Linear(2, 2), cr.relu)
    with pytest.raises(NotImplementedError, match="must implement forward"):
        nn.Module()(1)


def _ops_in(t):
    return ops(t)


def _mlp(fuse=True):
    cr.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3), fuse=fuse)


def test_sequential_fuses_linear_relu_with_the_same_values_and_gradients():
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    results = []
    for fuse in (True, False):
        model = _mlp(fuse)
        out = model(x)
        loss = F.cross_entropy(out, y)
        names = _ops_in(loss)
        loss.backward()
        results.append((out.numpy(), [p.grad.numpy() for p in model.parameters()], names))
    (out_f, grads_f, names_f), (out_u, grads_u, names_u) = results
    assert names_f == ["cross_entropy", "linear", "linear_relu", "linear_relu"]
    assert names_u == ["cross_entropy", "linear", "linear", "linear", "relu", "relu"]
    # bit for bit: the fused rule does the same arithmetic in the same order
    np.testing.assert_array_equal(out_f, out_u)
    for gf, gu in zip(grads_f, grads_u):
        np.testing.assert_array_equal(gf, gu)
    assert out_f.dtype == np.float32 and all(g.dtype == np.float32 for g in grads_f)


def test_sequential_fusion_opt_out_and_what_is_never_fused():
    x = cr.ones((2, 5))
    model = _mlp()
    model.fuse = False
    assert _ops_in(model(x)).count("relu") == 2
    assert _mlp()[:2].fuse and not _mlp(fuse=False)[:2].fuse  # slices keep the setting
    # no bias, a subclass, another activation: separate nodes
    cr.manual_seed(0)

    class MyLinear(nn.Linear):
        pass

    for first, act in [(nn.Linear(5, 4, bias=False), nn.ReLU()), (MyLinear(5, 4), nn.ReLU()),
                       (nn.Linear(5, 4), nn.Tanh())]:
        assert "linear_relu" not in _ops_in(nn.Sequential(first, act)(x))
    # a layer whose forward was replaced (as GradientNormRecorder does) runs its own forward
    model = _mlp()
    calls = []
    original = model[0].forward
    model[0].__dict__["forward"] = lambda h: calls.append(1) or original(h)
    assert _ops_in(model(x)) == ["linear", "linear", "linear_relu", "relu"]
    assert calls == [1]
    # module tracing (cr.viz.trace_modules) must see every layer called
    model = _mlp()
    with cr.viz.trace_modules(model) as trace:
        out = model(x)
    assert trace.calls == 1 + 5 and "linear_relu" not in _ops_in(out)
    assert "linear_relu" in _ops_in(model(x))  # and fusion is back afterwards


def test_training_a_small_network_reduces_the_loss():
    cr.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # XOR-like quadrants
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = cr.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(cr.tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
