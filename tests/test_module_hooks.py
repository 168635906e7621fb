"""nn.Module forward hooks (PyTorch's register_forward_hook / register_forward_pre_hook),
the one way the views intercept module calls."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr

nn = cr.nn


def test_pre_hook_and_hook_see_and_may_replace_inputs_and_output():
    cr.manual_seed(0)
    layer = nn.Linear(2, 2)
    x = cr.tensor(np.ones((1, 2), np.float32))
    seen = []
    h1 = layer.register_forward_pre_hook(lambda m, args: seen.append(("pre", m is layer)))
    h2 = layer.register_forward_pre_hook(lambda m, args: args[0] * 2.0)  # a single value
    h3 = layer.register_forward_hook(lambda m, args, out: seen.append(("post", out.shape)))
    h4 = layer.register_forward_hook(lambda m, args, out: out + 1.0)
    expected = (x.numpy() * 2.0) @ layer.weight.numpy().T + layer.bias.numpy() + 1.0
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)
    assert seen == [("pre", True), ("post", (1, 2))]
    for h in (h1, h2, h3, h4):
        h.remove()
    h4.remove()  # twice is harmless
    plain = x.numpy() @ layer.weight.numpy().T + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), plain, rtol=1e-6)
    assert not layer.has_forward_hooks()


def test_with_kwargs_prepend_and_the_handle_as_a_context_manager():
    class Scale(nn.Module):
        def forward(self, x, factor=1.0):
            return x * factor

    m = Scale()
    order = []
    m.register_forward_hook(lambda mod, args, out: order.append("second"))
    m.register_forward_hook(lambda mod, args, out: order.append("first"), prepend=True)

    def pre(mod, args, kwargs):
        return args, {**kwargs, "factor": 3.0}

    with m.register_forward_pre_hook(pre, with_kwargs=True):
        got = []
        with m.register_forward_hook(lambda mod, a, kw, out: got.append(kw), with_kwargs=True):
            assert m(cr.tensor(2.0)).item() == 6.0
        assert got == [{"factor": 3.0}]
    assert m(cr.tensor(2.0)).item() == 2.0  # both removed at the end of their blocks
    assert order == ["first", "second"] * 2
    bad = m.register_forward_pre_hook(lambda mod, a, kw: 1, with_kwargs=True)
    with pytest.raises(RuntimeError, match=r"must return None or \(args, kwargs\)"):
        m(cr.tensor(1.0))
    bad.remove()
    with pytest.raises(TypeError, match="callable"):
        m.register_forward_hook(3)


def test_a_hooked_layer_is_not_fused_and_fit_runs_eagerly():
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x = cr.tensor(np.ones((2, 3), np.float32))
    ops = lambda t: [n.op for n in cr.explain(t.sum(), layers=False).nodes if n.op]  # noqa: E731
    assert "linear_relu" in ops(model(x))
    calls = []
    handle = model[1].register_forward_hook(lambda m, a, out: calls.append(out.shape))
    assert "linear_relu" not in ops(model(x)) and calls == [(2, 4)]
    from chainrule.training.loop import _replay_safe

    assert not _replay_safe(model, nn.MSELoss())
    handle.remove()
    assert _replay_safe(model, nn.MSELoss())


def test_compile_refuses_to_replay_a_step_with_module_hooks():
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    opt = cr.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    model[0].register_forward_hook(lambda m, a, out: calls.append(1))

    def step(xb, yb):
        opt.zero_grad()
        loss = nn.MSELoss()(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    fast = cr.compile(step)
    xb, yb = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    for _ in range(4):
        fast(xb, yb)
    assert calls == [1, 1, 1, 1]  # the hook ran on every call: never replayed


def test_trace_modules_and_the_gradient_norm_recorder_use_hooks():
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    with cr.viz.trace_modules(model) as trace:
        out = model(cr.tensor(np.ones((4, 2), np.float32)))
    assert trace.calls == 4 and not any(m.has_forward_hooks() for m in model.modules())
    assert type(model[0]).__call__ is nn.Module.__call__  # no class-level patch
    g = cr.viz.graph((out * out).mean(), collapse_modules=True)
    assert g.source.count("shape=box3d") == 3
    from chainrule.mlp_view import GradientNormRecorder

    rec = GradientNormRecorder()
    rec.attach(model)
    assert model[0].has_forward_hooks() and "forward" not in vars(model[0])
    (model(cr.tensor(np.ones((4, 2), np.float32))) ** 2).mean().backward()
    rec.record()
    rec.detach()
    assert not model[0].has_forward_hooks()
    assert np.isfinite(rec.delta_norms()).all() and rec.delta_norms().shape == (1, 2)
