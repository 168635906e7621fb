"""cr.viz.graph: DOT checked structurally, SVG parsed as XML when Graphviz is installed."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import chainrule as cr
from chainrule import viz

NODE = re.compile(r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)"(.*)\];$')
EDGE = re.compile(r"^\s*(\w+) -> (\w+)(?: \[(.*)\])?;$")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


@pytest.fixture(autouse=True)
def _keep_values():
    """The views show every node's value: record each test's graphs inside
    cr.keep_values() (chainrule otherwise keeps only what backward needs)."""
    cr.set_keep_values(True)
    yield
    cr.set_keep_values(False)



def parse(source: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Node id -> label (with real newlines) and (tail, head, attrs) edges."""
    nodes, edges = {}, []
    for line in source.splitlines():
        if m := NODE.match(line):
            nodes[m.group(1)] = m.group(2).replace("\\n", "\n")
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3) or ""))
    return nodes, edges


def regression_graph():
    """Seed 000, Examples 5-6: u = w x, y_hat = u + b, e = y_hat - y, J = e^2."""
    f64 = np.float64
    w = cr.tensor(5.0, dtype=f64, requires_grad=True, name="w")
    x = cr.tensor(1.0, dtype=f64, name="x")
    b = cr.tensor(1.0, dtype=f64, requires_grad=True, name="b")
    y = cr.tensor(2.0, dtype=f64, name="y")
    u = w * x
    u.name = "u"
    y_hat = u + b
    y_hat.name = "y_hat"
    e = y_hat - y
    e.name = "e"
    J = e**2
    J.name = "J"
    return J, w, b


def by_head(nodes: dict[str, str]) -> dict[str, str]:
    return {label.split("\n")[0]: nid for nid, label in nodes.items()}


def test_dot_structure_of_the_regression_graph():
    J, w, b = regression_graph()
    src = viz.graph(J, grads=True).source
    assert src.startswith("digraph chainrule {") and src.rstrip().endswith("}")
    assert "rankdir=LR;" in src
    nodes, edges = parse(src)
    assert len(nodes) == 9  # w x u b y_hat y e 2 J
    assert len(edges) == 8
    ids = by_head(nodes)
    assert set(ids) >= {"w", "x", "b", "y", "u = mul", "y_hat = add", "e = sub", "J = pow"}
    assert "value 16" in nodes[ids["J = pow"]] and "grad 1" in nodes[ids["J = pow"]]
    for head in ("w", "b", "u = mul", "y_hat = add", "e = sub"):
        assert "grad 8" in nodes[ids[head]], head
    assert "grad" not in nodes[ids["x"]]  # a constant gets no gradient
    # edges go from inputs to results and carry the local gradient
    pairs = {(t, h): a for t, h, a in edges}
    assert 'label="∂J/∂e = 8"' in pairs[(ids["e = sub"], ids["J = pow"])]
    assert 'label="∂u/∂w = 1"' in pairs[(ids["w"], ids["u = mul"])]
    assert 'label="∂e/∂y_hat = 1"' in pairs[(ids["y_hat = add"], ids["e = sub"])]
    assert "dashed" in pairs[(ids["x"], ids["u = mul"])]  # no gradient flows into x
    # drawing computed the gradients without touching .grad, and kept the graph
    assert w.grad is None and b.grad is None
    J.backward()
    assert w.grad.item() == 8.0


def test_backward_direction_reverses_edges_and_labels_the_terms():
    J, _, _ = regression_graph()
    src = viz.graph(J, direction="backward").source
    assert "rankdir=RL;" in src
    nodes, edges = parse(src)
    ids = by_head(nodes)
    pairs = {(t, h): a for t, h, a in edges}
    assert 'label="1 · 8 = 8"' in pairs[(ids["J = pow"], ids["e = sub"])]
    assert 'label="8 · 1 = 8"' in pairs[(ids["u = mul"], ids["w"])]


def test_no_grads_before_backward_by_default_and_after_backward_with_auto():
    J, w, _ = regression_graph()
    nodes, _ = parse(viz.graph(J).source)
    assert not any("grad" in label for label in nodes.values())
    J.backward(retain_graph=True)
    nodes, _ = parse(viz.graph(J).source)
    assert "grad 8" in nodes[by_head(nodes)["w"]]
    assert w.grad.item() == 8.0  # not doubled by drawing


def test_arrays_show_shape_and_a_summary():
    x = cr.tensor(np.arange(12.0).reshape(3, 4), requires_grad=True, name="X")
    s = (x * 2.0).sum()
    nodes, edges = parse(viz.graph(s, grads=True).source)
    label = nodes[by_head(nodes)["X"]]
    assert "shape (3, 4)" in label and "norm" in label
    assert all("label=" not in a for _, _, a in edges)  # local gradients only for scalars


def test_freed_graph_is_noted():
    J, _, _ = regression_graph()
    J.backward()
    with pytest.warns(viz.GraphFreedWarning, match="freed by backward"):
        g = viz.graph(J)
    assert any("freed by backward()" in n for n in g.notes)
    assert "retain_graph=True" in g.source


def test_max_nodes_caps_the_drawing_with_a_note():
    x = cr.tensor(0.5, dtype=np.float64, requires_grad=True, name="x")
    y = x
    for _ in range(150):
        y = (y * 1.01).tanh()
    g = viz.graph(y, max_nodes=50)
    nodes, edges = parse(g.source)
    assert len(nodes) == 51  # 50 boxes + the note
    assert "omitted" in nodes
    assert "omitted (max_nodes=50)" in nodes["omitted"]
    assert "mul x" in nodes["omitted"] and "tanh x" in nodes["omitted"]
    assert any(t == "omitted" for t, _, _ in edges)
    assert all(t in nodes and h in nodes for t, h, _ in edges)


def test_render_without_dot_says_how_to_install(monkeypatch, tmp_path):
    J, _, _ = regression_graph()
    g = viz.graph(J)
    from chainrule.teach import draw

    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizNotFoundError) as info:
        g.render(tmp_path / "g.svg")
    msg = str(info.value)
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install"):
        assert hint in msg
    assert "not found" in g._repr_svg_()
    # DOT output needs nothing installed
    assert g.render(tmp_path / "g.dot").read_text().startswith("digraph")


@needs_dot
def test_rendered_svg_is_xml_with_the_node_labels(tmp_path):
    J, _, _ = regression_graph()
    path = viz.graph(J, grads=True).render(tmp_path / "g.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    texts = {el.text for el in root.iter() if el.tag.endswith("text")}
    for label in ("w", "u = mul", "J = pow", "value 16", "grad 8", "∂J/∂e = 8"):
        assert label in texts, label
    assert J.__class__ is cr.Tensor
    svg = viz.graph(J)._repr_svg_()
    assert ET.fromstring(svg).tag.endswith("svg")


@needs_dot
def test_render_png(tmp_path):
    J, _, _ = regression_graph()
    path = viz.graph(J, direction="backward").render(tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collapse_needs_a_trace():
    J, _, _ = regression_graph()
    with pytest.raises(ValueError, match="trace_modules"):
        viz.graph(J, collapse_modules=True)


def test_collapse_modules_draws_each_layer_as_one_box():
    nn = pytest.importorskip("chainrule.nn")
    if not hasattr(nn, "Sequential"):
        pytest.skip("chainrule.nn not available yet")
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    x = cr.tensor(np.ones((4, 2)))
    with viz.trace_modules(model) as trace:
        out = model(x)
    loss = (out * out).mean()
    assert trace.calls >= 3
    g = viz.graph(loss, collapse_modules=True)
    nodes, edges = parse(g.source)
    groups = [label for nid, label in nodes.items() if nid.startswith("g")]
    assert len(groups) == 3, groups
    assert sum("Linear" in label for label in groups) == 2
    assert any("params (3, 2), (3,)" in label for label in groups)
    # the parameters live inside their boxes: nothing but x, the boxes and the loss ops
    assert len(nodes) <= 3 + 1 + 4
    # collapse only one layer
    g1 = viz.graph(loss, collapse=[model[0]] if hasattr(model, "__getitem__") else None)
    n1, _ = parse(g1.source)
    assert sum(nid.startswith("g") for nid in n1) == 1


def test_graph_vertex_tensor_refuses_constants_and_values_not_kept():
    # GraphVertex.tensor gives the Tensor whose graph vertex it is; a constant
    # operand has none, and a node whose value was not kept cannot make one
    # (it used to return a Tensor holding None, or a fake leaf for a constant)
    cr.set_keep_values(False)  # this file's fixture keeps every value; not here
    x = cr.tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = (x * np.array([3.0, 4.0])).exp()
    order = viz.walk([y], need_values=False)
    leaf = next(v for v in order if v.vertex is x)
    assert leaf.tensor is x
    const = next(v for v in order if v.vertex is None)
    with pytest.raises(ValueError, match="constant operand"):
        _ = const.tensor
    mul = next(v for v in order if v._op is not None and v._op.name == "mul")
    assert mul.data is None  # exp keeps its output, not its operand's value
    with pytest.raises(viz.ValuesNotKept, match="keep_values"):
        _ = mul.tensor
    with cr.keep_values():
        y = (x * np.array([3.0, 4.0])).exp()
    mul = next(v for v in viz.walk([y]) if v._op is not None and v._op.name == "mul")
    t = mul.tensor
    np.testing.assert_array_equal(t.data, [3.0, -8.0])
    assert t.grad_fn == "mul"
