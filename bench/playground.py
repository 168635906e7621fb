"""``python -m bench.playground [--quick] [--browser] [--out FILE]``: the playground's speed.

What issue 14 asks of the playground, measured:

* the server's forward pass over the 100 x 100 boundary grid (10,000 points)
  of a 2-8-8-1 tanh network, against the same forward written in NumPy by
  hand (the anchor), and what one boundary costs with its encoding;
* one animation frame over HTTP (a persistent connection, as the browser
  keeps): train one epoch of XOR, send the new weights, boundary, neuron maps
  and loss points; as frames per second;
* with ``--browser`` (Debian's Chromium and Playwright installed), the frame
  rate the page itself reaches while playing: redraws per second, counted by
  the page;
* the size of a step-through answer for a 2-8-8-2 network on a mini-batch of 10.

Run it with the environment's OpenBLAS overrides removed (see docs/playground.md):
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.playground --browser``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

GRID = 100


def _median_ms(fn: Any, reps: int, inner: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(samples)


def _session(params: dict[str, str]) -> Any:
    from chainrule.playground.config import Config
    from chainrule.playground.datasets import make_data
    from chainrule.playground.session import Session

    cfg = Config.from_params(params)
    return Session("bench", cfg, make_data(cfg))


def forward(reps: int = 15) -> dict[str, float]:
    """Milliseconds: chainrule's forward on the grid, the NumPy anchor, a whole boundary."""
    s = _session({"dataset": "xor", "hidden": "8,8"})
    s.train(epochs=5)
    X = s._grid_inputs(GRID)
    Ws = [(m.weight.numpy(), m.bias.numpy()) for m in s.linears]

    def by_hand() -> np.ndarray:
        a = X
        for W, b in Ws[:-1]:
            a = np.tanh(a @ W.T + b)
        z = a @ Ws[-1][0].T + Ws[-1][1]
        return 0.5 * (1 + np.tanh(0.5 * z))  # the sigmoid the boundary shows (one call)

    return _round_robin({
        "chainrule forward, one call (10,000 points)": lambda: s._forward(X),
        "chainrule forward + sigmoid in the server's row blocks": lambda: s.predict(X),
        "NumPy forward + sigmoid by hand, one call (anchor)": by_hand,
        "boundary: blocks + encoding": lambda: s.boundary(GRID),
    }, reps, 20)


def _round_robin(fns: dict[str, Any], reps: int, inner: int) -> dict[str, float]:
    """Median ms per call of each function, timed in turn (a burst of load hits all alike)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


class _Running:
    def __init__(self) -> None:
        from chainrule.playground.server import make_server

        self.httpd = make_server("127.0.0.1", 0)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> tuple[Any, int]:
    conn.request("POST", path, json.dumps(body), {"X-Chainrule": "1",
                                                   "Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read()
    if r.status != 200:
        raise RuntimeError(f"{path}: HTTP {r.status}: {raw[:300]!r}")
    return json.loads(raw), len(raw)


def http_frames(seconds: float = 3.0) -> dict[str, float]:
    """Frames per second over HTTP: train one XOR epoch and send the frame; and send only."""
    srv = _Running()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        d, _ = _post(conn, "/api/session", {"config": {"dataset": "xor", "hidden": "8,8"}})
        out = {}
        for label, epochs in (("train 1 epoch + frame", 1), ("frame only", 0)):
            n, size = 0, 0
            since = 1
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                snap, size = _post(conn, "/api/train", {"session": d["session"],
                                                        "epochs": epochs, "since": since})
                since = snap["history_len"]
                n += 1
            out[f"{label}, frames/s"] = n / (time.perf_counter() - t0)
            out[f"{label}, bytes per frame"] = size
        conn.close()
        return out
    finally:
        srv.close()


def browser_frames(seconds: float = 6.0, chromium: str | None = None) -> dict[str, Any]:
    """Redraws per second of the page while it plays XOR 2-8-8-1, counted by the page."""
    chromium = chromium or os.environ.get("CHAINRULE_CHROMIUM", "/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed"}
    if not os.path.isfile(chromium):
        return {"skipped": f"no Chromium at {chromium}"}
    srv = _Running()
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="chainrule-bench-"), executable_path=chromium,
                headless=True, bypass_csp=True, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync"])
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{srv.port}/#dataset=xor&hidden=8,8")
            page.wait_for_selector("body.ready")
            page.click("#play")
            time.sleep(1.0)  # past the first frames
            f0 = page.evaluate("window.__playground.boundary.frames")
            e0 = page.evaluate("window.__playground.last.epoch")
            t0 = time.perf_counter()
            time.sleep(seconds)
            f1 = page.evaluate("window.__playground.boundary.frames")
            e1 = page.evaluate("window.__playground.last.epoch")
            dt = time.perf_counter() - t0
            page.click("#play")
            ctx.close()
        return {"boundary redraws/s": (f1 - f0) / dt, "epochs trained/s": (e1 - e0) / dt}
    finally:
        srv.close()


def stepthrough_payload() -> dict[str, Any]:
    """Bytes of the step-through answer for 2-8-8-2 on a mini-batch of 10."""
    srv = _Running()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        d, _ = _post(conn, "/api/session", {"config": {"dataset": "spiral", "hidden": "8,8",
                                                       "loss": "ce", "batch": "10"}})
        _post(conn, "/api/train", {"session": d["session"], "epochs": 2})
        try:
            view, size = _post(conn, "/api/stepthrough", {"session": d["session"],
                                                          "mode": "batch"})
        except RuntimeError as e:
            return {"skipped": str(e)}
        sess = srv.httpd.app.sessions[d["session"]]
        rows = np.asarray(view["rows"])
        import chainrule as cr

        with cr.keep_values():
            loss = sess.loss(sess.data.X_train[rows], sess.T_train[rows])
        ledger = cr.explain(loss, model=sess.model, neurons=True)
        full = len(ledger.to_json().encode())
        t = _median_ms(lambda: _post(conn, "/api/stepthrough",
                                     {"session": d["session"], "mode": "batch"}), 5, 1)
        return {"batch": len(rows), "answer bytes": size, "whole ledger bytes": full,
                "answer ms": t}
    finally:
        srv.close()


def report(quick: bool = False, browser: bool = False) -> str:
    from bench._env import blas_settings, machine, threads_report

    lines = ["# Playground speed", "",
             f"Machine: {machine()}; OpenBLAS settings: {blas_settings()}; "
             f"{threads_report()}.", ""]
    fw = forward(reps=5 if quick else 15)
    anchor = fw["NumPy forward + sigmoid by hand, one call (anchor)"]
    lines += ["| 2-8-8-1 tanh on a 100 x 100 grid | ms (median) | x NumPy by hand |",
              "|---|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {v / anchor:.2f} |" for k, v in fw.items()]
    hf = http_frames(seconds=1.0 if quick else 3.0)
    lines += ["", "| HTTP frame (XOR 2-8-8-1, 250 training rows, batch 10) | value |",
              "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in hf.items()]
    if browser:
        bf = browser_frames(seconds=2.0 if quick else 6.0)
        lines += ["", "| In Chromium, playing XOR 2-8-8-1 | value |", "|---|---:|"]
        lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.1f}'} |" for k, v in bf.items()]
    sp = stepthrough_payload()
    lines += ["", "| Step-through, 2-8-8-2, next mini-batch | value |", "|---|---:|"]
    lines += [f"| {k} | {v if isinstance(v, str) else f'{v:,.1f}'} |" for k, v in sp.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.playground",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--browser", action="store_true",
                    help="also measure the page's frame rate in headless Chromium")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads")
    ap.add_argument("--out", default=None, help="also write the report here (Markdown)")
    args = ap.parse_args(argv)
    from bench._env import pin_threads

    pin_threads(args.threads)
    text = report(quick=args.quick, browser=args.browser)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
