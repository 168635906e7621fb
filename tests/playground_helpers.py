"""Helpers for the playground tests: a running server, HTTP calls, and an oracle.

``notes_recursion`` is an independent NumPy (float64) computation of the
notes' delta recursion for a playground network, used to check the numbers
the step-through shows; it shares no code with the engine or the ledger.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from chainrule.playground.server import make_server


class Server:
    """A playground server on a free loopback port, serving from a thread."""

    def __init__(self) -> None:
        self.httpd = make_server("127.0.0.1", 0)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def app(self) -> Any:
        return self.httpd.app

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def post(self, path: str, payload: Any, expect: int = 200) -> Any:
        status, _, raw = self.request("POST", path, json.dumps(payload).encode(),
                                      {"X-Chainrule": "1", "Content-Type": "application/json"})
        out = json.loads(raw)
        assert status == expect, (status, out)
        return out

    def get(self, path: str, expect: int = 200) -> Any:
        status, _, raw = self.request("GET", path)
        assert status == expect, (status, raw[:200])
        return json.loads(raw)


_SIGMA_PRIME = {
    "tanh": lambda z: 1.0 - np.tanh(z) ** 2,
    "sigmoid": lambda z: (1 / (1 + np.exp(-z))) * (1 - 1 / (1 + np.exp(-z))),
    "relu": lambda z: (z > 0).astype(np.float64),
    "identity": lambda z: np.ones_like(z),
}
_SIGMA = {
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "identity": lambda z: z,
}


def notes_recursion(weights: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray,
                    y: np.ndarray, activation: str, loss: str) -> list[dict[str, np.ndarray]]:
    """z^l, a^l, delta^l and dL/dW^l by the notes' recursion, in float64, rows = examples.

    ``loss``: "bce" (one logit, sigmoid inside the loss), "ce" (softmax inside),
    "mse-sigmoid" (sigmoid outputs, squared error) or "mse" (linear output).
    Losses are means over the rows (and, for squared error, the outputs).
    """
    a = np.asarray(X, np.float64)
    acts, zs = [a], []
    L = len(weights)
    for l, (W, b) in enumerate(weights, start=1):
        z = a @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        if l < L:
            a = _SIGMA[activation](z)
        elif loss == "mse-sigmoid":
            a = _SIGMA["sigmoid"](z)
        else:
            a = z
        zs.append(z)
        acts.append(a)
    B = X.shape[0]
    zL, aL = zs[-1], acts[-1]
    if loss == "bce":
        delta = (1 / (1 + np.exp(-zL)) - y.reshape(-1, 1)) / B
    elif loss == "ce":
        e = np.exp(zL - zL.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        delta = (p - np.eye(zL.shape[1])[y]) / B
    elif loss == "mse-sigmoid":
        t = y.reshape(-1, 1) if aL.shape[1] == 1 else np.eye(aL.shape[1])[y]
        delta = 2 * (aL - t) / aL.size * aL * (1 - aL)
    else:
        delta = 2 * (aL - y.reshape(-1, 1)) / aL.size
    out: list[dict[str, np.ndarray]] = [{} for _ in range(L)]
    for l in range(L, 0, -1):
        if l < L:
            W_next = np.asarray(weights[l][0], np.float64)
            delta = (delta @ W_next) * _SIGMA_PRIME[activation](zs[l - 1])
        out[l - 1] = {"z": zs[l - 1], "a": acts[l], "delta": delta,
                      "dW": delta.T @ acts[l - 1], "db": delta.sum(axis=0)}
    return out


@contextlib.contextmanager
def no_exceptions_in_threads() -> Any:
    """Fail when a server thread raised (the handler prints tracebacks on stderr otherwise)."""
    errors: list[BaseException] = []
    old = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        yield errors
    finally:
        threading.excepthook = old
    assert not errors, errors
