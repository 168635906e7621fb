"""A stand-in for cr.explain's per-layer ledger while it is being built (issue 13).

Contract-shaped (LEDGER-CONTRACT.md) and filled from the engine's own
gradients (run_backward with inputs=); used by the playground tests only until
``cr.explain(loss, model=..., neurons=True)`` exists. Delete it then.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from chainrule import nn
from chainrule.tensor import run_backward

_ACT = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Identity: "identity"}
_SP = {
    "tanh": lambda z, a: 1 - a * a,
    "sigmoid": lambda z, a: a * (1 - a),
    "relu": lambda z, a: (z > 0).astype(z.dtype),
    "identity": lambda z, a: np.ones_like(z),
}


def install(monkeypatch: Any) -> None:
    from chainrule.playground import ledger_view

    captured: list[tuple[Any, Any]] = []

    @contextlib.contextmanager
    def capture() -> Any:
        captured.clear()
        originals = {}
        for cls in (nn.Linear, *_ACT):
            orig = cls.forward

            def fwd(self: Any, x: Any, _orig: Any = orig) -> Any:
                out = _orig(self, x)
                captured.append((self, out))
                return out
            originals[cls] = orig
            monkeypatch.setattr(cls, "forward", fwd)
        try:
            yield
        finally:
            for cls, orig in originals.items():
                monkeypatch.setattr(cls, "forward", orig)

    def ledger(loss: Any, model: Any) -> dict[str, Any]:
        mods = list(model)
        outs = {id(m): o for m, o in captured}
        linears = [m for m in mods if isinstance(m, nn.Linear)]
        layers = []
        zs = [outs[id(m)] for m in linears]
        acts = []
        names = []
        for m in linears:
            i = mods.index(m)
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if nxt is not None and type(nxt) in _ACT:
                acts.append(outs[id(nxt)])
                names.append(_ACT[type(nxt)])
            else:
                acts.append(outs[id(m)])
                names.append("identity")
        params = [m.weight for m in linears] + [m.bias for m in linears]
        grads = run_backward((loss,), (None,), retain_graph=True, inputs=zs + params)
        L = len(linears)
        dz = [np.asarray(g) for g in grads[:L]]
        dW = [np.asarray(g) for g in grads[L:2 * L]]
        db = [np.asarray(g) for g in grads[2 * L:]]
        for l in range(L):
            z = zs[l].numpy()
            a = acts[l].numpy()
            sp = _SP[names[l]](z, a)
            neurons = []
            for j in range(z.shape[1]):
                terms = []
                if l + 1 < L:
                    Wn = linears[l + 1].weight.numpy()
                    for k in range(Wn.shape[0]):
                        terms.append({"unit": k, "delta_next": dz[l + 1][:, k].tolist(),
                                      "weight": float(Wn[k, j]),
                                      "product": (dz[l + 1][:, k] * Wn[k, j]).tolist()})
                    s = np.sum([t["product"] for t in terms], axis=0)
                else:
                    s = dz[l][:, j] / np.where(sp[:, j] == 0, 1, sp[:, j])
                neurons.append({"unit": j, "sigma_prime": sp[:, j].tolist(), "terms": terms,
                                "sum": np.asarray(s).tolist(), "delta": dz[l][:, j].tolist()})
            layers.append({
                "index": l + 1, "module": str(mods.index(linears[l])), "activation": names[l],
                "W": {"name": f"W{l + 1}", "value": linears[l].weight.numpy().tolist()},
                "b": {"name": f"b{l + 1}", "value": linears[l].bias.numpy().tolist()},
                "z": z.tolist(), "a": a.tolist(), "delta": dz[l].tolist(),
                "dW": dW[l].tolist(), "db": db[l].tolist(), "neurons": neurons,
            })
        return {"schema": "chainrule.ledger", "version": 1, "root": 0, "root_name": "L",
                "nodes": [{"id": 0, "name": "L", "op": "add", "kind": "op", "shape": [],
                           "dtype": "float32", "value": float(loss.item()), "grad": 1.0,
                           "visit": 1, "terms": []}],
                "layers": layers}

    monkeypatch.setattr(ledger_view, "_keep_values", capture)
    monkeypatch.setattr(ledger_view, "_ledger", ledger)
