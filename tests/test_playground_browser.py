"""The playground in a real browser: Debian's Chromium, headless, driven by Playwright.

The browser is the system's (``/usr/bin/chromium``, or ``CHAINRULE_CHROMIUM``);
nothing is downloaded. Where it cannot be installed the module is skipped and
says why. ``CHAINRULE_SCREENSHOTS=1`` also writes the pictures of
docs/playground.md (docs/img/playground-*.png).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from playground_helpers import Server, notes_recursion

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need the 'playwright' package "
    "(pip install playwright; it is in chainrule's [dev] extra)")

CHROMIUM = os.environ.get("CHAINRULE_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's 'chromium' package: apt-get "
                "install -y chromium, or set CHAINRULE_CHROMIUM)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
SHOTS = os.environ.get("CHAINRULE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chainrule-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True,
            # Playwright's wait_for_function evaluates strings, which the page's own CSP
            # forbids (the CSP header itself is checked in test_playground_api.py)
            bypass_csp=True)
        ctx.set_default_timeout(30_000)
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    pg = browser.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
          if m.type == "error" and "status of 400" not in m.text else None)
    yield pg
    pg.close()
    assert not problems, problems


def open_page(page, server, fragment=""):
    page.goto(f"{server.base}/{fragment}")
    page.wait_for_selector("body.ready")


def shot(page, name, selector=None, full_page=False):
    if not SHOTS:
        return
    path = str(DOCS_IMG / f"playground-{name}.png")
    if selector:
        page.locator(selector).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=full_page)


def session_of(page, server):
    return server.app.sessions[page.evaluate("window.__playground.session")]


def number(page, selector):
    return float(page.inner_text(selector).replace("−", "-"))


# --------------------------------------------------------------------------


def test_page_loads_with_the_default_setup(page, server):
    open_page(page, server)
    assert page.inner_text("#epoch") == "000,000"
    assert page.inner_text("#network-summary") == "2-4-2-1"
    assert page.locator("#network .node").count() == 7 + 4 + 2 + 1
    assert page.locator("#network path.edge").count() == 2 * 4 + 4 * 2 + 2 * 1
    assert page.locator("#datasets button.selected").inner_text() == "Circle"
    assert page.evaluate("window.__playground.boundary.frames") >= 1


def test_xor_trains_below_the_bound_while_the_boundary_redraws(page, server):
    open_page(page, server, "#dataset=xor&hidden=8,8&lr=0.1")
    assert page.inner_text("#network-summary") == "2-8-8-1"
    frames0 = page.evaluate("window.__playground.boundary.frames")
    page.click("#play")
    page.wait_for_function(
        "parseFloat(document.getElementById('test-loss').textContent) < 0.08",
        timeout=90_000)
    page.click("#play")
    page.wait_for_function("!window.__playground.playing")
    assert number(page, "#test-loss") < 0.08
    epochs = int(page.inner_text("#epoch").replace(",", ""))
    assert epochs > 0
    s = session_of(page, server)
    assert s.epoch >= epochs and s.metrics()["test_loss"] < 0.08
    # one redraw per epoch trained, and the loss curve holds every epoch
    assert page.evaluate("window.__playground.boundary.frames") - frames0 >= epochs
    assert page.evaluate("window.__playground.curves.history.length") >= epochs + 1
    shot(page, "xor")


def test_a_deep_sigmoid_stack_shows_its_gradients_vanish(page, server):
    open_page(page, server, "#dataset=circle&hidden=6,6,6,6,6,6&act=sigmoid&lr=0.3")
    for _ in range(5):
        page.click("#step")
    page.wait_for_function("document.getElementById('epoch').textContent === '000,005'")
    norms = page.evaluate("window.__playground.curves.history.at(-1).grad_norms")
    assert len(norms) == 7
    # each layer's gradient is smaller than the next one's, the first by orders of magnitude
    assert all(a < b for a, b in zip(norms, norms[1:])), norms
    assert norms[0] < 1e-3 * norms[-1]
    assert page.locator("#grad-legend .legend-item").count() == 7
    shot(page, "vanishing", "#output-panel")


def expected_ledger(session, rows):
    """What cr.explain says for the same forward pass, asked here, not through the server."""
    X = session.data.X_train[rows]
    with cr.keep_values():
        loss = session.loss(X, session.T_train[rows])
    return cr.explain(loss, model=session.model, neurons=True).to_dict()


def test_step_through_shows_the_ledgers_delta(page, server):
    # the learner: train a spiral with a 2-8-8-2 network, pause, step backward
    open_page(page, server, "#dataset=spiral&hidden=8,8&loss=ce&noise=5&opt=adam&lr=0.01")
    assert page.inner_text("#network-summary") == "2-8-8-2"
    page.click("#play")
    page.wait_for_function("window.__playground.last.metrics.test_acc > 0.9", timeout=90_000)
    page.click("#play")
    page.wait_for_function("!window.__playground.playing")
    page.fill("#step-index", "17")
    page.click("#step-run-example")
    page.wait_for_selector("#step-panel.has-view")
    s = session_of(page, server)
    ledger = expected_ledger(s, np.array([17]))
    layer1 = next(r for r in ledger["layers"] if r["index"] == 1)
    deltas = [n["delta"][0] for n in layer1["neurons"]]
    j = int(np.argmax(np.abs(deltas)))
    page.select_option("#step-jump", label=f"backward · layer 1 · neuron {j + 1}")
    cell = page.locator(f".delta-value[data-layer='1'][data-unit='{j}']")
    shown = float(cell.inner_text())
    assert shown == float(f"{deltas[j]:.4g}")  # the ledger's value, to 4 significant digits
    # ... which is the notes' recursion, computed independently in NumPy
    W = [(m.weight.numpy(), m.bias.numpy()) for m in s.linears]
    rec = notes_recursion(W, s.data.X_train[[17]], s.data.y_train[[17]], "tanh", "ce")
    assert shown == pytest.approx(rec[0]["delta"][0, j], rel=1e-3)
    # the table: one row per successor, products and their sum from the ledger
    rows = page.locator("#step-detail table.terms tbody tr[data-successor]")
    assert rows.count() == 8
    neuron = layer1["neurons"][j]
    assert float(page.inner_text("#step-detail .sum-value")) == float(f"{neuron['sum'][0]:.4g}")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "stepthrough", full_page=True)
    # the forward stage of the same neuron and the output layer's delta
    page.select_option("#step-jump", label=f"forward · layer 1 · neuron {j + 1}")
    z = float(page.inner_text(f".z-value[data-layer='1'][data-unit='{j}']"))
    assert z == float(f"{layer1['z'][0][j]:.4g}")
    page.select_option("#step-jump", label="backward · output layer · neuron 2")
    out = next(r for r in ledger["layers"] if r["index"] == 3)
    assert float(page.inner_text(".delta-value[data-layer='3'][data-unit='1']")) == float(
        f"{out['delta'][0][1]:.4g}")
    page.keyboard.press("ArrowRight")
    assert "forward" not in page.inner_text("#step-stage")


def test_step_through_on_the_next_mini_batch(page, server):
    open_page(page, server, "#dataset=xor&hidden=3&batch=6")
    page.click("#step-run-batch")
    page.wait_for_selector("#step-panel.has-view")
    s = session_of(page, server)
    rows = s.next_batch()
    assert len(rows) == 6
    assert page.locator("#step-example option").count() == 6
    page.select_option("#step-example", "4")
    page.select_option("#step-jump", label="backward · layer 1 · neuron 2")
    shown = float(page.inner_text(".delta-value[data-layer='1'][data-unit='1']"))
    ledger = expected_ledger(s, rows)
    assert shown == float(f"{ledger['layers'][0]['neurons'][1]['delta'][4]:.4g}")
    # dL/dW sums over the batch: the weights stage shows the ledger's dW
    page.select_option("#step-jump", label="∂L/∂W · layer 1")
    dw = float(page.inner_text(".dw-value[data-layer='1'][data-unit='2'][data-input='1']"))
    assert dw == float(f"{ledger['layers'][0]['dW'][2][1]:.4g}")
    # one mini-batch step moves the weight by -lr x that gradient
    w_before = s.linears[0].weight.numpy()[2, 1].item()
    page.select_option("#step-unit", "batch")
    page.click("#step")
    page.wait_for_function("document.getElementById('iteration').textContent === '1'")
    w_after = s.linears[0].weight.numpy()[2, 1].item()
    assert w_after - w_before == pytest.approx(-0.03 * ledger["layers"][0]["dW"][2][1],
                                               rel=1e-4)


def test_csv_upload_good_then_bad_files_keep_the_page_working(page, server):
    open_page(page, server)
    rng = np.random.default_rng(3)
    pts = rng.uniform(-3, 3, (120, 2))
    text = "u,v,kind\n" + "".join(f"{a:.3f},{b:.3f},{'A' if a * b > 0 else 'B'}\n"
                                  for a, b in pts)
    page.set_input_files("#csv-file", files=[{"name": "quadrants.csv", "mimeType": "text/csv",
                                               "buffer": text.encode()}])
    page.wait_for_function("document.getElementById('upload-message').textContent"
                           ".includes('120 rows')")
    page.wait_for_function("window.__playground.params.dataset === 'csv'")
    assert page.locator("#datasets button.selected").inner_text() == "CSV"
    assert page.inner_text("#network-summary") == "2-4-2-2"
    page.click("#step")
    page.wait_for_function("document.getElementById('epoch').textContent === '000,001'")
    shot(page, "csv")
    bad = [("ragged.csv", b"u,v,kind\n1,2,A\n3,4\n", "line 3"),
           ("words.csv", b"u,v,kind\n1,2,A\n3,four,B\n", "'four'"),
           ("empty.csv", b"", "empty")]
    for name, body, words in bad:
        page.set_input_files("#csv-file", files=[{"name": name, "mimeType": "text/csv",
                                                   "buffer": body}])
        page.wait_for_selector("#upload-message.error")
        msg = page.inner_text("#upload-message")
        assert name in msg and words in msg, msg
        assert page.is_visible("#message") and "Upload refused" in page.inner_text("#message")
        # the server still serves and the page still trains the data it had
        before = int(page.inner_text("#epoch").replace(",", ""))
        page.click("#step")
        page.wait_for_function(
            f"document.getElementById('epoch').textContent.replace(',', '') > '{before:06d}'")
        assert page.evaluate("window.__playground.params.dataset") == "csv"
        if name == "ragged.csv":
            shot(page, "csv-error", "#data-panel")
        page.evaluate("document.getElementById('upload-message').className = 'upload-message'")


def test_editing_the_network_is_kept_in_the_url(page, server, browser):
    open_page(page, server, "#dataset=gauss&seed=4")
    page.click("#network .layers-count button[title='add a hidden layer']")
    page.wait_for_function("document.getElementById('network-summary').textContent === "
                           "'2-4-2-4-1'")
    page.click("#network .neuron-controls button[title='add a neuron to layer 1']")
    page.wait_for_function("document.getElementById('network-summary').textContent === "
                           "'2-5-2-4-1'")
    page.click("#network .node[data-layer='0'][data-unit='4']")  # x1x2 on
    page.wait_for_function("document.getElementById('network-summary').textContent === "
                           "'3-5-2-4-1'")
    page.select_option("#act", "relu")
    page.select_option("#lr", "0.1")
    page.wait_for_function("location.hash.includes('lr=0.1')")
    url = page.url
    for part in ("dataset=gauss", "seed=4", "hidden=5,2,4", "features=x1,x2,x1x2", "act=relu"):
        assert part in url, url
    weights = page.evaluate("window.__playground.last.weights")
    other = browser.new_page()
    try:
        other.goto(url)
        other.wait_for_selector("body.ready")
        assert other.inner_text("#network-summary") == "3-5-2-4-1"
        assert other.input_value("#lr") == "0.1" and other.input_value("#act") == "relu"
        # the same link gives the same data and the same initial weights
        assert other.evaluate("window.__playground.last.weights") == weights
    finally:
        other.close()
    shot(page, "network", "#network-panel")


def test_click_an_edge_to_set_its_weight_hover_a_neuron_to_see_it(page, server):
    open_page(page, server, "#dataset=circle&hidden=3")
    edge = page.locator("#network path.edge[data-key='2:0:1']")
    edge.dispatch_event("click")  # the curve's box centre need not lie on its stroke
    page.fill("#network .weight-edit", "-1.75")
    page.press("#network .weight-edit", "Enter")
    s = session_of(page, server)
    page.wait_for_function("window.__playground.last.weights[1].W[0][1] === -1.75")
    assert s.linears[1].weight.numpy()[0, 1] == np.float32(-1.75)
    before = page.evaluate("document.getElementById('boundary').toDataURL()")
    page.hover("#network .node[data-layer='1'][data-unit='2']")
    during = page.evaluate("document.getElementById('boundary').toDataURL()")
    page.mouse.move(5, 5)
    after = page.evaluate("document.getElementById('boundary').toDataURL()")
    assert during != before and after == before


def test_a_link_pasted_into_the_same_tab_loads_its_setup(page, server):
    open_page(page, server, "#dataset=xor")
    page.goto(f"{server.base}/#dataset=gauss&classes=4&loss=ce&hidden=3")  # fragment only
    page.wait_for_function("document.getElementById('network-summary').textContent === "
                           "'2-3-4'")
    assert page.locator("#datasets button.selected").inner_text() == "Gaussians"


def test_a_refused_link_says_why_and_shows_the_defaults(page, server):
    page.goto(f"{server.base}/#hidden=8,99&lr=0.1")
    page.wait_for_selector("body.ready")
    msg = page.inner_text("#message")
    assert "refused" in msg and "hidden[1]=99" in msg
    assert page.inner_text("#network-summary") == "2-4-2-1"


def test_export_downloads_a_checkpoint(page, server, tmp_path):
    open_page(page, server, "#dataset=moons&hidden=5")
    page.click("#step")
    page.wait_for_function("document.getElementById('epoch').textContent === '000,001'")
    with page.expect_download() as info:
        page.click("#export-model")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name == "playground-moons-5.safetensors"
    model = cr.load_model(path)
    s = session_of(page, server)
    with cr.no_grad():
        np.testing.assert_array_equal(model(cr.tensor(s.data.X_test)).numpy(),
                                      s._forward(s.data.X_test))
    page.click("#show-snippet")
    page.wait_for_selector("#snippet:not([hidden])")
    assert "cr.load(\"playground-moons-5.safetensors\")" in page.inner_text("#snippet")
