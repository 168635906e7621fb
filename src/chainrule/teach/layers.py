"""Per-layer records: the notes' z^l, a^l, δ^l and ∂C/∂W^l, read off the ledger.

A layer is a node whose rule is an affine map (``linear``: z = a W^T + b,
the batched form of the notes' z^l = W^l a^(l-1) + b^l) followed by the
activation nodes that take z alone (σ). Layers are numbered in the order
the forward pass computed them, from 1, with the input as a^0: note 001's
numbering. (Note 000 calls the input layer 1, so its layer l is our l - 1;
note 002 writes the batched product A_l = Z_(l-1) W_l with W_l = our
(W^l)^T.) Every number comes from the ledger, that is from the engine:

* z^l, a^l, a^(l-1): the nodes' values;
* δ^l = ∂C/∂z^l and ∂C/∂a^l: the backpropagated gradients of those nodes;
* σ'(z^l): the activation's local gradient (its rule's VJP, on ones);
* ∂C/∂W^l, ∂C/∂b^l: the terms the layer's node sent to W^l and b^l.

Arrays are (batch, units), rows being samples (leading axes flattened),
so row i of δ^l is the notes' column δ^l of sample i, transposed, and
(W^(l+1))^T δ^(l+1) is computed as δ^(l+1) W^(l+1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _graph as G

__all__ = ["LayerRecord", "build_layers"]


def _rows(a: np.ndarray | None, units: int) -> np.ndarray | None:
    return None if a is None else np.asarray(a).reshape(-1, units)


@dataclass
class LayerRecord:
    """Layer l of a model, in the notes' notation (see the module docstring).

    ``W`` and ``b`` are ``{"name", "value", "node"}``; ``z``, ``a`` (None
    where a^l was not kept), ``a_prev``, ``delta`` (δ^l = ∂C/∂z^l), ``dC_da``
    and ``sigma_prime`` are (batch, units); ``dW`` has W's shape (out, in)
    and sums δ_i (a_i)^T over the batch. ``sigma_prime`` is None when the
    activation is not elementwise (softmax). ``loss`` names a loss node applied to a^l
    directly, and ``loss_activation`` the activation that loss applies
    itself (``cross_entropy`` applies softmax): then δ^L comes from it.
    ``feeds_next``: a^l is exactly the input of layer l + 1, so δ^l =
    ((W^(l+1))^T δ^(l+1)) ⊙ σ'(z^l) holds as the notes write it.
    """

    index: int
    module: str
    activation: str
    W: dict[str, Any]
    b: dict[str, Any] | None
    z: np.ndarray
    a: np.ndarray | None
    a_prev: np.ndarray
    delta: np.ndarray | None
    dC_da: np.ndarray | None
    sigma_prime: np.ndarray | None
    dW: np.ndarray | None
    db: np.ndarray | None
    z_node: int
    a_node: int
    input_node: int
    feeds_next: bool = False
    is_output: bool = False
    loss: str | None = None
    loss_activation: str | None = None
    # per neuron j and successor neuron k: δ_k^(l+1) · W_kj^(l+1), (batch, units, next units)
    products: np.ndarray | None = None
    next_delta: np.ndarray | None = None
    next_W: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def successor_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(products, next_delta, next_W), recorded together, or None where they were not."""
        if self.products is None or self.next_delta is None or self.next_W is None:
            return None
        return self.products, self.next_delta, self.next_W

    @property
    def in_features(self) -> int:
        return int(self.a_prev.shape[-1])

    @property
    def out_features(self) -> int:
        return int(self.z.shape[-1])

    def neurons(self) -> list[dict[str, Any]] | None:
        """The per-neuron sums over successors (needs ``explain(..., neurons=True)``)."""
        if self.products is None and not (self.is_output and self.extra.get("neurons")):
            return None
        from .ledger import encode

        out = []
        succ = self.successor_terms()
        for j in range(self.out_features):
            terms = []
            if succ is not None:
                products, next_delta, next_W = succ
                terms = [
                    {"unit": k, "delta_next": encode(next_delta[:, k]),
                     "weight": float(next_W[k, j]), "product": encode(products[:, j, k])}
                    for k in range(products.shape[2])
                ]
            out.append({
                "unit": j,
                "sigma_prime": encode(None if self.sigma_prime is None
                                      else self.sigma_prime[:, j]),
                "terms": terms,
                "sum": encode(None if self.dC_da is None else self.dC_da[:, j]),
                "delta": encode(None if self.delta is None else self.delta[:, j]),
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        from .ledger import encode

        def param(p: dict[str, Any] | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {"name": p["name"], "value": encode(p["value"]), "node": p["node"]}

        return {
            "index": self.index,
            "module": self.module,
            "activation": self.activation,
            "W": param(self.W),
            "b": param(self.b),
            "z": encode(self.z),
            "a": encode(self.a),
            "a_prev": encode(self.a_prev),
            "delta": encode(self.delta),
            "dC_da": encode(self.dC_da),
            "sigma_prime": encode(self.sigma_prime),
            "dW": encode(self.dW),
            "db": encode(self.db),
            "z_node": self.z_node,
            "a_node": self.a_node,
            "input_node": self.input_node,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "batch": int(self.z.shape[0]),
            "feeds_next": self.feeds_next,
            "is_output": self.is_output,
            "loss": self.loss,
            "loss_activation": self.loss_activation,
            "neurons": self.neurons(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRecord:
        from .ledger import decode, decode_array

        def param(p: dict[str, Any], what: str) -> dict[str, Any]:
            return {"name": p["name"], "value": decode_array(p["value"], what=what),
                    "node": p.get("node")}

        layer = f"layer {d['index']}"
        rec = cls(
            index=d["index"], module=d["module"], activation=d["activation"],
            W=param(d["W"], f"W of {layer}"),
            b=None if d["b"] is None else param(d["b"], f"b of {layer}"),
            z=decode_array(d["z"], what=f"z of {layer}"), a=decode(d["a"]),
            a_prev=decode_array(d["a_prev"], what=f"a_prev of {layer}"),
            delta=decode(d["delta"]), dC_da=decode(d.get("dC_da")),
            sigma_prime=decode(d.get("sigma_prime")), dW=decode(d["dW"]), db=decode(d["db"]),
            z_node=d.get("z_node", 0), a_node=d.get("a_node", 0),
            input_node=d.get("input_node", 0), feeds_next=d.get("feeds_next", False),
            is_output=d.get("is_output", False), loss=d.get("loss"),
            loss_activation=d.get("loss_activation"),
        )
        neurons = d.get("neurons")
        if neurons and neurons[0]["terms"]:
            batch = rec.z.shape[0]
            nxt = len(neurons[0]["terms"])
            rec.products = np.zeros((batch, len(neurons), nxt))
            rec.next_delta = np.zeros((batch, nxt))
            rec.next_W = np.zeros((nxt, len(neurons)))
            for j, n in enumerate(neurons):
                for t in n["terms"]:
                    k = t["unit"]
                    rec.products[:, j, k] = decode(t["product"])
                    rec.next_delta[:, k] = decode(t["delta_next"])
                    rec.next_W[k, j] = t["weight"]
        elif neurons:
            rec.extra["neurons"] = True
        return rec


# --------------------------------------------------------------------------
# Finding the layers in a recorded graph
# --------------------------------------------------------------------------


def _module_of(model: Any, W: Any) -> str:
    """The dotted path of the module whose ``weight`` is the vertex W ("" when unknown)."""
    tensor = G.leaf_tensor(W)
    if model is not None and hasattr(model, "named_modules"):
        for path, m in model.named_modules():
            if getattr(m, "weight", None) is tensor:
                return path
    name = G.user_name(W) or ""
    return name[: -len(".weight")] if name.endswith(".weight") else ""


def build_layers(order: list[Any], records: dict[int, Any], ids: dict[int, int], *,
                 model: Any, neurons: bool, explicit: bool, notes: list[str],
                 what: str = "explain") -> list[LayerRecord]:
    """One :class:`LayerRecord` per affine node whose weight is a parameter.

    ``explicit`` (a model was given): problems are errors; otherwise they
    become notes and no layers are recorded.
    """
    from ..ops import RULES
    from .ledger import ExplainError

    by_id = {r.id: r for r in records.values()}
    item_by_id = {ids[G.key(t)]: t for t in order}
    succs: dict[int, list[int]] = {}
    for r in records.values():
        for i in dict.fromkeys(r.inputs):
            succs.setdefault(i, []).append(r.id)

    wanted = None
    if model is not None:
        if not hasattr(model, "parameters"):
            raise TypeError(f"{what}: model must be an nn.Module, got {type(model).__name__}")
        wanted = {id(p) for p in model.parameters()}
    affine = []
    for r in sorted(records.values(), key=lambda r: r.id):
        if r.role != "affine" or len(r.inputs) < 2:
            continue
        W = item_by_id[r.inputs[1]]
        if not G.is_leaf(W) or (wanted is not None and id(G.leaf_tensor(W)) not in wanted):
            continue
        affine.append(r)
    if not affine:
        if model is not None:
            raise ExplainError(
                f"{what}: none of the model's Linear layers appears in this graph; compute "
                "the loss from the model's output"
            )
        return []
    fused = [r for r in affine if r.activation is not None]
    if fused:
        msg = (
            f"{what}: layer '{_module_of(model, item_by_id[fused[0].inputs[1]])}' ran as one "
            f"fused {fused[0].op} node, so z^l was never recorded; record the forward pass "
            "inside `with cr.keep_values():` (nn.Sequential then keeps Linear and ReLU apart)"
        )
        if explicit:
            raise ExplainError(msg)
        notes.append(msg.replace(f"{what}: ", "no layer records: ", 1))
        return []

    for z in affine:  # the layer records show z^l, a^l and a^(l-1): they must be kept
        held = [z] + [by_id[s] for s in succs.get(z.id, [])] + [by_id[z.inputs[0]]]
        gone = next((r for r in held if r.value is None), None)
        if gone is not None:
            err = G.ValuesNotKept(
                f"{what}: the value of {gone.name!r} (layer '"
                f"{_module_of(model, item_by_id[z.inputs[1]])}') was not kept, and the layer "
                "records show it; record the forward pass inside `with cr.keep_values():`"
            )
            if explicit:
                raise err
            notes.append(str(err).replace(f"{what}: ", "no layer records: ", 1))
            return []

    layers: list[LayerRecord] = []
    for index, z in enumerate(affine, start=1):
        units = int(z.shape[-1]) if z.shape else 1
        chain = []  # the activation nodes between z^l and a^l
        cur = z
        while True:
            nxt = [by_id[s] for s in succs.get(cur.id, [])]
            if len(nxt) != 1 or nxt[0].role != "activation" or nxt[0].inputs != [cur.id]:
                break
            cur = nxt[0]
            chain.append(cur)
        a = cur
        sigma = np.ones_like(np.asarray(z.value, dtype=np.float64)) if not chain else None
        if chain:
            factors: list[np.ndarray] = []
            prev = z
            for node in chain:
                term = next((t for t in prev.terms if t.successor == node.id), None)
                if term is None or term.local is None or not RULES[node.op].elementwise:
                    factors = []  # one factor is not a diagonal: no σ'(z) to show
                    break
                factors.append(term.local)
                prev = node
            if factors:
                sigma = factors[0]
                for f in factors[1:]:
                    sigma = sigma * f
        W = by_id[z.inputs[1]]
        b = by_id[z.inputs[2]] if len(z.inputs) > 2 else None
        x_in = by_id[z.inputs[0]]
        losses = [by_id[s] for s in succs.get(a.id, []) if by_id[s].role == "loss"]
        dW = next((t.product for t in W.terms if t.successor == z.id), None)
        db = None if b is None else next((t.product for t in b.terms if t.successor == z.id),
                                         None)
        in_units = int(W.shape[-1])
        z_rows, a_prev = _rows(z.value, units), _rows(x_in.value, in_units)
        assert z_rows is not None and a_prev is not None  # checked above (held)
        layers.append(LayerRecord(
            index=index,
            module=_module_of(model, item_by_id[W.id]),
            activation="∘".join(reversed([n.activation for n in chain])) or "identity",
            W={"name": W.name, "value": W.value, "node": W.id},
            b=None if b is None else {"name": b.name, "value": b.value, "node": b.id},
            z=z_rows,
            a=_rows(a.value, units),
            a_prev=a_prev,
            delta=_rows(z.grad, units),
            dC_da=_rows(a.grad, units),
            sigma_prime=_rows(sigma, units),
            dW=dW,
            db=db,
            z_node=z.id,
            a_node=a.id,
            input_node=x_in.id,
            loss=losses[0].op if losses else None,
            loss_activation=losses[0].activation if losses else None,
        ))
    for here, after in zip(layers, layers[1:]):
        here.feeds_next = after.input_node == here.a_node and succs.get(here.a_node) == [
            after.z_node]
    layers[-1].is_output = True
    if neurons:
        for here, after in zip(layers, layers[1:]):
            if here.feeds_next and after.delta is not None:
                Wn = np.asarray(after.W["value"], dtype=np.float64)
                here.next_delta = after.delta
                here.next_W = Wn
                # [batch, j, k] = δ_k^(l+1) · W_kj^(l+1): the notes' terms of the sum over k
                here.products = after.delta[:, None, :] * Wn.T[None, :, :]
        layers[-1].extra["neurons"] = True
    return layers
