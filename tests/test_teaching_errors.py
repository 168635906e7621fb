"""Errors that teach: each message names the op, the shapes and the way out.

Also the NaN/Inf origin finder, ``cr.detect_anomaly``: it must stop at the
first op whose forward value or backward gradient is not finite and point at
the user's line.
"""

from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pytest

import chainrule as cr


def here() -> int:
    """The line number of the caller's next line (where the offending op is)."""
    return inspect.currentframe().f_back.f_lineno + 1


def leaf(shape, name=None):
    return cr.tensor(np.ones(shape), requires_grad=True, name=name)


def test_backward_twice_over_a_released_graph():
    w = leaf((), "w")
    loss = (w * 3.0).exp()
    loss.backward()
    with pytest.raises(cr.GraphReleasedError) as info:
        loss.backward()
    msg = str(info.value)
    assert "backward: the graph through 'exp' was already freed by an earlier backward()" in msg
    assert "backward(retain_graph=True)" in msg and "recompute the forward pass" in msg
    # and the way out works
    loss = (w * 3.0).exp()
    loss.backward(retain_graph=True)
    loss.backward()


def test_non_scalar_backward_without_a_seed():
    y = leaf((3, 4)) * 2.0
    with pytest.raises(RuntimeError) as info:
        y.backward()
    msg = str(info.value)
    assert msg.startswith("backward: the output has shape (3, 4); without an argument")
    assert "y.sum().backward()" in msg and "y.backward(cr.ones_like(y))" in msg


@pytest.mark.parametrize(
    "op, fn",
    [("add", lambda a, b: a + b), ("mul", lambda a, b: a * b), ("sub", lambda a, b: a - b)],
)
def test_broadcasting_mismatch(op, fn):
    with pytest.raises(ValueError) as info:
        fn(leaf((3, 4)), leaf((5,)))
    assert str(info.value) == (
        f"{op}: shapes (3, 4) and (5,) cannot be broadcast together: dimension -1 "
        "(counting from the right) is 4 in one and 5 in the other; sizes must match or be 1"
    )


def test_matmul_misalignment():
    with pytest.raises(ValueError) as info:
        leaf((3, 4)) @ leaf((5, 2))
    assert str(info.value) == "matmul: shapes (3, 4) and (5, 2) do not align: 4 != 5"


def test_linear_layer_shape_mismatch_names_both_shapes():
    layer = cr.nn.Linear(3, 4)
    expected = "input shape (2, 5) does not fit weight shape (4, 3)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        layer(cr.tensor(np.ones((2, 5), np.float32)))


def test_reading_grad_of_a_non_leaf_warns_and_says_retain_grad():
    w = leaf((2,), "w")
    z = w * 2.0
    z.sum().backward()
    with pytest.warns(UserWarning) as record:
        assert z.grad is None
    (warning,) = record
    msg = str(warning.message)
    assert "reading .grad of a non-leaf tensor (computed by mul)" in msg
    assert ".retain_grad() on it before backward()" in msg and "delta^l" in msg
    assert warning.filename == __file__  # points at the user's line, not at chainrule
    # retain_grad: no warning, the gradient is there
    z = w * 2.0
    z.retain_grad()
    z.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(z.grad.numpy(), [1.0, 1.0])


def test_requires_grad_on_integers_and_inplace_on_a_leaf():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        cr.tensor([1, 2, 3], requires_grad=True)
    w = leaf((2,))
    with pytest.raises(RuntimeError, match="inside `with cr.no_grad\\(\\):`"):
        w.add_(1.0)


# --------------------------------------------------------------------------
# detect_anomaly: where does the NaN come from?
# --------------------------------------------------------------------------


def test_anomaly_forward_stops_at_the_first_non_finite_op():
    x = cr.tensor(np.array([1.0, 0.0]), requires_grad=True, name="x")
    with pytest.raises(cr.AnomalyError) as info, cr.detect_anomaly():
        a = x * 2.0
        line = here()
        b = cr.log(a)  # log(0) = -inf: the origin
        c = b * 0.0  # -inf * 0 = nan: a later symptom, must not be blamed
        c.sum().backward()
    msg = str(info.value)
    assert msg.startswith("detect_anomaly: 'log' produced a non-finite output")
    assert "1 Inf of 2" in msg
    assert "input 0: shape (2,) float64, min 0, max 2" in msg  # its inputs, summarised
    assert f'File "{__file__}", line {line}' in msg
    assert "b = cr.log(a)" in msg


def test_anomaly_backward_blames_the_op_whose_gradient_blew_up():
    x = cr.tensor(np.array([4.0, 0.0]), requires_grad=True, name="x")
    with pytest.raises(cr.AnomalyError) as info, cr.detect_anomaly():
        line = here()
        y = cr.sqrt(x)  # finite forward (sqrt(0) = 0), infinite derivative at 0
        loss = (y * 3.0).sum()
        loss.backward()
    msg = str(info.value)
    assert "the backward of 'sqrt' produced a non-finite gradient for its input 0" in msg
    assert "1 Inf of 2" in msg
    assert f'File "{__file__}", line {line}' in msg
    assert x.grad is None  # stopped before anything was stored


def test_anomaly_points_past_chainrule_internals_to_the_user_line():
    layer = cr.nn.Linear(2, 1)
    x = cr.tensor(np.array([[np.inf, 1.0]], np.float32))
    with pytest.raises(cr.AnomalyError) as info, cr.detect_anomaly():
        line = here()
        out = layer(x)
        out.sum().backward()
    msg = str(info.value)
    assert f'File "{__file__}", line {line}' in msg
    assert "input 0:" in msg and "Inf" in msg


def test_without_anomaly_mode_nothing_is_recorded_or_checked():
    x = cr.tensor(np.array([0.0]), requires_grad=True)
    with np.errstate(divide="ignore"):
        y = cr.log(x)
    assert y._node.meta is None and np.isneginf(y.numpy()).all()
