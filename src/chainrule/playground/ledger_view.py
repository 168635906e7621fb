"""The step-through's only source of numbers: ``cr.explain``'s ledger, reshaped for the page.

The playground never computes a gradient, a local gradient, a product or a
delta itself. :func:`explain_step` records one forward pass of the network
(inside ``cr.keep_values()`` where the engine frees intermediates otherwise),
asks :func:`chainrule.explain` for the ledger with per-neuron records, and
:func:`view` turns the ledger's JSON form (``ledger.to_dict()``, the schema
"chainrule.ledger" version 1) into what the page draws: per layer z, a, delta,
dC/dW, and per neuron each successor's delta x weight, their sum, sigma'(z)
and delta. Values are copied, never recomputed; where the ledger lacks what
the page needs, :class:`StepThroughUnavailable` says what and where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..teach import ExplainError, explain
from ..tensor import keep_values

__all__ = ["explain_step", "view", "StepThroughUnavailable", "SCHEMA", "VERSION"]

SCHEMA = "chainrule.ledger"
VERSION = 1


class StepThroughUnavailable(RuntimeError):
    """The ledger cannot give the step-through what it shows; the message says what is missing."""


def _short(v: Any) -> Any:
    """A float32 value written with the digits that identify it (9 at most), not 17."""
    if isinstance(v, list):
        return [_short(x) for x in v]
    if isinstance(v, float):
        return float(str(np.float32(v))) if np.isfinite(v) else str(v)
    return v  # "nan" / "inf" strings, ints, None


def _need(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise StepThroughUnavailable(
            f"step-through: the ledger's {where} has no {key!r}; the page needs it "
            f"(ledger fields there: {', '.join(sorted(record))})")
    return record[key]


def _ledger(loss: Any, model: Any) -> dict[str, Any]:
    """``cr.explain(loss, model=model, neurons=True).to_dict()``: the ledger's JSON form."""
    try:
        return explain(loss, model=model, neurons=True).to_dict()
    except ExplainError as e:  # e.g. a forward not recorded inside keep_values()
        raise StepThroughUnavailable(f"step-through: {e}") from None


def explain_step(model: Any, make_loss: Callable[[], Any], X: np.ndarray, *,
                 input_names: Sequence[str], float32: bool = True) -> dict[str, Any]:
    """Run ``make_loss()`` (the forward on rows ``X``), explain it, and build the page's view.

    Parameters
    ----------
    model : the ``nn.Sequential`` the loss went through (for the per-layer records)
    make_loss : builds the scalar loss Tensor; called once, inside ``cr.keep_values()``
    X : (batch, n_inputs) the rows fed to the network: a^0 of the notes
    input_names : what the input neurons are called on the page
    float32 : the network computes in float32: values are written with 9 digits
    """
    # the per-layer records need every z^l and a^l: the engine frees them otherwise
    with keep_values():
        loss = make_loss()
    ledger = _ledger(loss, model)
    return view(ledger, X, input_names=input_names, float32=float32)


def view(ledger: dict[str, Any], X: np.ndarray, *, input_names: Sequence[str],
         float32: bool = True) -> dict[str, Any]:
    """The page's step-through data from a ledger dict (see the module docstring)."""
    if ledger.get("schema") != SCHEMA or ledger.get("version") != VERSION:
        raise StepThroughUnavailable(
            f"step-through: expected a {SCHEMA!r} ledger of version {VERSION}, got schema "
            f"{ledger.get('schema')!r} version {ledger.get('version')!r}")
    num = _short if float32 else (lambda v: v)
    nodes = {n["id"]: n for n in _need(ledger, "nodes", "top level")}
    by_name = {n.get("name"): n for n in nodes.values()}
    root = nodes.get(ledger.get("root"))
    if root is None:
        raise StepThroughUnavailable("step-through: the ledger's root node is not among its nodes")
    records = _need(ledger, "layers", "top level")
    if not records:
        raise StepThroughUnavailable(
            "step-through: the ledger has no per-layer records (was it built with model=?)")
    layers = []
    width = int(np.shape(X)[1])
    for rec in sorted(records, key=lambda r: r["index"]):
        where = f"layer {rec.get('index')}"
        W = _need(rec, "W", where)
        shape = np.shape(W["value"])
        if len(shape) != 2 or shape[1] != width:
            raise StepThroughUnavailable(
                f"step-through: {where}'s weight has shape {shape}, expected (units, {width}); "
                "the ledger's layers do not follow the network")
        width = shape[0]
        b = rec.get("b")
        w_node = by_name.get(W.get("name"))
        neurons = []
        for nr in _need(rec, "neurons", where):
            nwhere = f"{where}, neuron {nr.get('unit')}"
            neurons.append({
                "unit": nr["unit"],
                "sigma_prime": num(_need(nr, "sigma_prime", nwhere)),
                "terms": [{"unit": t["unit"], "delta_next": num(t["delta_next"]),
                           "weight": num(t["weight"]), "product": num(t["product"])}
                          for t in _need(nr, "terms", nwhere)],
                "sum": num(_need(nr, "sum", nwhere)),
                "delta": num(_need(nr, "delta", nwhere)),
            })
        if len(neurons) != width:
            raise StepThroughUnavailable(
                f"step-through: {where} has {len(neurons)} neuron records for {width} units")
        layers.append({
            "index": rec["index"],
            "module": rec.get("module"),
            "activation": rec.get("activation"),
            "W": num(W["value"]), "b": None if b is None else num(b["value"]),
            "W_name": W.get("name"), "b_name": None if b is None else b.get("name"),
            "z": num(_need(rec, "z", where)), "a": num(_need(rec, "a", where)),
            "delta": num(_need(rec, "delta", where)),
            "dW": num(_need(rec, "dW", where)),
            "db": None if rec.get("db") is None else num(rec["db"]),
            # dL/dW as the engine accumulates it: the layer's own term plus, with
            # regularisation, the penalty's (one term per successor of W)
            "W_grad": None if w_node is None else num(w_node.get("grad")),
            "W_terms": [] if w_node is None else [
                {"op": t.get("op"), "successor": t.get("successor_name"),
                 "product": num(t.get("product"))} for t in w_node.get("terms", [])],
            "neurons": neurons,
        })
    return {
        "schema": SCHEMA,
        "loss": num(root.get("value")),
        "loss_name": ledger.get("root_name"),
        "batch": int(np.shape(X)[0]),
        "inputs": {"names": list(input_names), "a0": num(np.asarray(X).tolist())},
        "layers": layers,
    }
