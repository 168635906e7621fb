"""Draw the pictures of docs/learn-backprop.md from the ledger of each worked example.

    python tools/learn_figures.py [--out docs/img] [--svg]

Needs Graphviz's ``dot`` (``apt-get install graphviz``); without it the DOT
text is written instead, so the figures can be rendered elsewhere. Every
picture is ``cr.viz.graph`` of the example, so its numbers are the ledger's:
the same as ``print(cr.explain(...))`` prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import chainrule as cr

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
F64 = np.float64


def scalar(value: float, name: str, grad: bool = True) -> cr.Tensor:
    return cr.tensor(value, dtype=F64, requires_grad=grad, name=name)


def regression() -> cr.Tensor:
    """Note 000, Examples 5-6: u = w x, y_hat = u + b, e = y_hat - y, J = e^2."""
    w, b = scalar(5.0, "w"), scalar(1.0, "b")
    x, y = scalar(1.0, "x", False), scalar(2.0, "y", False)
    u = (w * x).named("u")
    y_hat = (u + b).named("y_hat")
    e = (y_hat - y).named("e")
    return (e**2).named("J")


def fan_out() -> cr.Tensor:
    """Note 000, Example 7: f = (a + b)(b + c) at a = -1, b = 3, c = 4."""
    a, b, c = scalar(-1.0, "a"), scalar(3.0, "b"), scalar(4.0, "c")
    return ((a + b).named("x") * (b + c).named("y")).named("f")


def b_times_b() -> cr.Tensor:
    """Example 7 written with b * b: x = b b, y = 2b + 1.5 at b = 1."""
    b = scalar(1.0, "b")
    x = (b * b).named("x")
    y = ((2 * b).named("t") + 1.5).named("y")
    return (x * y).named("f")


def example_1() -> cr.Tensor:
    """Note 000, Examples 1-2: C = 1/2 (sigma(w x + b) - y)^2."""
    w, b = scalar(0.5, "w"), scalar(0.0, "b")
    x, y = scalar(1.0, "x", False), scalar(1.0, "y", False)
    z = (w * x + b).named("z")
    a = cr.sigmoid(z).named("a")
    return (0.5 * (a - y) ** 2).named("C")


def sigmoid_bce() -> cr.Tensor:
    """Note 001: a = sigma(z), C = -(y log a + (1 - y) log(1 - a)); δ = a - y."""
    w, b = scalar(0.5, "w"), scalar(0.0, "b")
    x = scalar(1.0, "x", False)
    z = (w * x + b).named("z")
    a = cr.sigmoid(z).named("a")
    return cr.nn.functional.binary_cross_entropy(a, np.array(1.0)).named("C")


def sigmoid_mlp() -> tuple[cr.nn.Module, cr.Tensor]:
    """The 3-layer sigmoid network of the δ recursion, one sample, C = 1/2 |a³ - y|²."""
    nn = cr.nn
    cr.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=F64), nn.Sigmoid(),
        nn.Linear(4, 4, dtype=F64), nn.Sigmoid(),
        nn.Linear(4, 2, dtype=F64), nn.Sigmoid(),
    )
    x = cr.tensor(np.array([[0.5, -1.0, 2.0]]))
    with cr.keep_values():
        C = (0.5 * ((model(x) - np.array([[1.0, 0.0]])) ** 2).sum()).named("C")
    return model, C


def mlp_collapsed() -> cr.viz.Graph:
    """A 2-16-16-3 ReLU classifier, each module drawn as one box (``trace_modules``)."""
    nn = cr.nn
    cr.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    x = cr.tensor(np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32))
    with cr.viz.trace_modules(model), cr.keep_values():
        loss = nn.CrossEntropyLoss()(model(x), np.arange(8) % 3)
    return cr.viz.graph(loss, collapse_modules=True, title="each module one box")


def mlp_layers() -> cr.viz.Graph:
    model, C = sigmoid_mlp()
    return cr.explain(C, model=model).graph(view="layers", title="the δ recursion, layer by layer")


FIGURES = {
    "learn-regression-forward": (regression, {"direction": "forward", "grads": False,
                                              "title": "J = (w x + b - y)^2: local gradients"}),
    "learn-regression-backward": (regression, {"direction": "backward",
                                               "title": "backpropagated · local = term"}),
    "learn-fanout-backward": (fan_out, {"direction": "backward", "title": "f = (a + b)(b + c)"}),
    "learn-bb-backward": (b_times_b, {"direction": "backward",
                                      "title": "f = (b b)(2 b + 1.5): one edge per successor"}),
    "learn-example1-forward": (example_1, {"direction": "forward", "grads": False,
                                           "title": "C = 1/2 (sigma(w x + b) - y)^2"}),
    "learn-example1-backward": (example_1, {"direction": "backward",
                                            "title": "C = 1/2 (sigma(w x + b) - y)^2"}),
    "learn-bce-backward": (sigmoid_bce, {"direction": "backward",
                                         "title": "sigmoid + cross-entropy: δ = a - y"}),
}
# drawings of a ledger's other views: name -> function returning a Graph
VIEWS = {"learn-mlp-layers": mlp_layers, "learn-mlp-collapsed": mlp_collapsed}


def draw(out: Path, svg: bool = False) -> list[Path]:
    """Write every figure to ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, (build, kwargs) in FIGURES.items():
        with cr.keep_values():  # every node keeps its value, so the picture shows it
            t = build()
        graphs[name] = cr.viz.graph(t, **kwargs)
    graphs.update((name, make()) for name, make in VIEWS.items())
    written = []
    for name, g in graphs.items():
        if not cr.viz.have_dot():
            written.append(g.save(out / f"{name}.dot"))
            continue
        written.append(g.render(out / f"{name}.png"))
        if svg:
            written.append(g.render(out / f"{name}.svg"))
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(IMG), help="directory (default: docs/img)")
    ap.add_argument("--svg", action="store_true", help="also write SVG files")
    args = ap.parse_args(argv)
    for path in draw(Path(args.out), args.svg):
        print(f"wrote {path}")
    if not cr.viz.have_dot():
        print("note: Graphviz's dot is not installed; wrote DOT text instead of pictures")


if __name__ == "__main__":
    main()
