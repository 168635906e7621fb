"""cr.Function (custom ops) and cr.check_graph (per-node finite-difference checks)."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr
from chainrule.custom import Function, GraphCheckError, check_graph


class Cube(Function):
    """x^3 with its derivative 3 x^2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


class WrongCube(Function):
    """A deliberate bug: the derivative of x^3 written as 2 x^2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x**2


class Scale(Function):
    """x * k with a non-tensor argument k (gets no gradient)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.numpy() * k  # plain NumPy is fine inside forward

    @staticmethod
    def backward(ctx, g):
        assert ctx.needs_input_grad == (True, False)
        return g * ctx.k, None


class WeightedSum(Function):
    """Two tensor inputs, broadcasting: sum(a * b, axis=-1)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return (a * b).sum(axis=-1)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ge = g.numpy()[..., None]
        return ge * b.numpy(), (ge * a.numpy()).sum(axis=0)


def f64(v, name=None):
    return cr.tensor(np.asarray(v, dtype=np.float64), requires_grad=True, name=name)


def test_function_forward_backward_and_not_in_registry():
    x = f64([1.0, 2.0, -3.0])
    y = Cube.apply(x)
    np.testing.assert_allclose(y.numpy(), [1.0, 8.0, -27.0])
    assert y.grad_fn.name == "Cube"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 12.0, 27.0])
    assert "Cube" not in cr.RULES and "WrongCube" not in cr.RULES
    assert cr.gradcheck(lambda t: Cube.apply(t).sum(), [np.array([0.3, -1.2])])


def test_function_with_non_tensor_args_and_two_inputs():
    x = f64([1.0, 2.0])
    y = Scale.apply(x, 3.0)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])
    a, b = f64(np.ones((4, 3))), f64([1.0, 2.0, 3.0])
    WeightedSum.apply(a, b).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), [4.0, 4.0, 4.0])
    np.testing.assert_allclose(a.grad.numpy(), np.tile([1.0, 2.0, 3.0], (4, 1)))
    with cr.no_grad():
        assert Cube.apply(x).grad_fn is None


def test_function_in_functional_transforms_and_second_order():
    g = cr.grad(lambda t: Cube.apply(t).sum())(np.array([2.0]))
    np.testing.assert_allclose(g, [12.0])
    # second order: d^2/dx^2 x^3 = 6x, through the saved input
    d2 = cr.grad(cr.grad(lambda t: Cube.apply(t)))(np.array(2.0))
    np.testing.assert_allclose(d2, 12.0)
    x = f64(2.0)
    Cube.apply(x).backward(create_graph=True)
    assert x.grad.item() == 12.0 and x.grad.requires_grad  # dL/dx is itself in a graph


def test_function_errors_are_clear():
    class TwoOut(Function):
        @staticmethod
        def forward(ctx, x):
            return x, x

        @staticmethod
        def backward(ctx, g):
            return g

    class TooMany(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g, g

    with pytest.raises(TypeError, match="exactly one output"):
        TwoOut.apply(f64(1.0))
    with pytest.raises(RuntimeError, match="returned 2 gradient\\(s\\) but forward took 1"):
        TooMany.apply(f64(1.0)).backward()
    with pytest.raises(TypeError, match="subclass"):
        Function.apply(f64(1.0))


def test_check_graph_passes_on_a_real_model_graph():
    rng = np.random.default_rng(0)
    x = cr.tensor(rng.normal(size=(5, 3)).astype(np.float32))
    W1 = cr.tensor(rng.normal(size=(4, 3)).astype(np.float32), requires_grad=True)
    b1 = cr.tensor(np.zeros(4, np.float32), requires_grad=True)
    W2 = cr.tensor(rng.normal(size=(4, 2)).astype(np.float32), requires_grad=True)
    with cr.keep_values():  # check_graph re-runs each op on its recorded operands
        h = cr.linear(x, W1, b1).tanh()
        logits = h @ W2
        loss = -(cr.log_softmax(logits, axis=1)[np.arange(5), np.array([0, 1, 0, 1, 1])]).mean()
        loss = loss + 0.1 * (W1**2).sum() + cr.softplus(logits).max(axis=0).sum()
        loss = loss + Cube.apply(h.reshape(-1)[:3]).sum() + cr.sum(cr.sigmoid(h.T), axis=(0, 1))
    report = check_graph(loss)
    assert len(report.checked) >= 15 and not report.skipped, report.skipped
    loss.backward()  # the graph is intact afterwards
    assert W1.grad is not None


def test_check_graph_names_the_first_wrong_node():
    x = f64([0.5, -1.0, 2.0], name="x")
    with cr.keep_values():
        h = cr.tanh(x * 2.0)
        bad = WrongCube.apply(h)
        bad.name = "bad"
        worse = WrongCube.apply(bad)  # also wrong, but later in forward order
        loss = cr.sigmoid(worse).sum()
    with pytest.raises(GraphCheckError) as info:
        check_graph(loss)
    msg = str(info.value)
    assert "node bad ('WrongCube')" in msg
    assert "input 0 (tanh#1, shape (3,))" in msg
    assert "mul#1, tanh#1" in msg  # the nodes before it passed
    # plain gradcheck agrees that the derivative is wrong
    with pytest.raises(cr.GradcheckError):
        cr.gradcheck(lambda t: WrongCube.apply(t).sum(), [np.array([0.5, 1.5])])


def test_check_graph_needs_the_values_and_says_how_to_keep_them():
    x = f64([1.0, 2.0])
    loss = (x * 2.0).exp().sum()
    with pytest.raises(RuntimeError, match=r"check_graph: the value of '.*' .*cr.keep_values"):
        check_graph(loss)


def test_check_graph_needs_the_graph():
    x = f64(1.0)
    y = (x * 2.0).exp()
    y.backward()
    with pytest.raises(RuntimeError, match="freed by backward"):
        check_graph(y)


# --------------------------------------------------------------------------
# Second derivatives through a Function: right, or a clear error
# --------------------------------------------------------------------------


class NumpySquare(Function):
    """x^2 with a NumPy backward: first derivatives only."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.numpy() ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.numpy() * 2 * x.numpy()


class MarkedSquare(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.numpy() ** 2

    @staticmethod
    @cr.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.numpy() * 2 * x.numpy()


class ReturnsArray(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.numpy() ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x.data * g.data  # .data: plain arrays, the result is an ndarray


class NoGradBackward(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.numpy() ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with cr.no_grad():
            return g * 2 * x


class SavesIntermediate(Function):
    """sigmoid with the output saved as an intermediate (not an input)."""

    @staticmethod
    def forward(ctx, x):
        s = x.sigmoid()
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return g * s * (1 - s)


class Identity(Function):
    @staticmethod
    def forward(ctx, x):
        return x.numpy().copy()

    @staticmethod
    def backward(ctx, g):
        return g


def test_numpy_backward_gives_first_derivatives():
    for fn in (NumpySquare, MarkedSquare, ReturnsArray, NoGradBackward, SavesIntermediate):
        g = cr.grad(lambda t, fn=fn: fn.apply(t).sum())(np.array([1.0, -2.0]))
        if fn is SavesIntermediate:
            s = 1 / (1 + np.exp(-np.array([1.0, -2.0])))
            np.testing.assert_allclose(g, s * (1 - s))
        else:
            np.testing.assert_allclose(g, [2.0, -4.0])


@pytest.mark.parametrize("fn, says", [
    (NumpySquare, ".numpy()"),
    (MarkedSquare, "once_differentiable"),
    (ReturnsArray, "returned a ndarray for argument 0"),
    (NoGradBackward, "does not depend on grad_output"),
    (SavesIntermediate, "not one of its inputs"),
])
def test_second_derivative_through_a_numpy_backward_is_refused(fn, says):
    f = lambda t: fn.apply(t).sum()  # noqa: E731
    x0 = np.array([1.0, -2.0])
    with pytest.raises(cr.DoubleBackwardError, match="NumpySquare|Marked|Returns|NoGrad|Saves") \
            as info:
        cr.hessian(f)(x0)
    assert says in str(info.value)
    with pytest.raises(cr.DoubleBackwardError):
        cr.grad(lambda t: cr.grad(f)(t).sum())(x0)
    x = cr.tensor(x0, requires_grad=True)
    with pytest.raises(cr.DoubleBackwardError):
        f(x).backward(create_graph=True)


def test_second_derivative_through_a_tensor_backward_is_right():
    x0 = np.array([0.5, -1.5, 2.0])
    h = cr.hessian(lambda t: Cube.apply(t).sum())(x0)
    np.testing.assert_allclose(h, np.diag(6 * x0))
    x = cr.tensor(x0, requires_grad=True)
    Cube.apply(x).sum().backward(create_graph=True)
    assert isinstance(x.grad, cr.Tensor) and x.grad.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), 3 * x0**2)
    # an optimizer can use it (it used to be a raw ndarray: AttributeError)
    cr.optim.SGD([x], lr=0.1).step()
    np.testing.assert_allclose(x.numpy(), x0 - 0.1 * 3 * x0**2)


def test_a_backward_that_returns_grad_output_unchanged():
    x = cr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (Identity.apply(x) * x).sum().backward(create_graph=True)
    assert type(x.grad) is cr.Tensor
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])  # readable, not guarded
    h = cr.hessian(lambda t: (Identity.apply(t) ** 2).sum())(np.array([1.0, 3.0]))
    np.testing.assert_allclose(h, 2 * np.eye(2))
