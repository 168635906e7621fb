// The step-through view: backpropagation on one example (or the next mini-batch),
// neuron by neuron. First the forward pass (z = W a + b, a = sigma(z)) layer by
// layer, then the backward pass from the output down: for the highlighted neuron
// each successor's backpropagated gradient delta_k times the local gradient W_kj,
// their sum, sigma'(z) and delta_j; then dL/dW on every edge. Every number shown is
// a field of cr.explain's ledger (served by ledger_view.py); nothing is computed here.

import { fmt, sub, sup } from "./network.js";

const ACT_NAME = { tanh: "tanh", relu: "ReLU", sigmoid: "σ", identity: "identity" };

const LOSS_TEXT = {
  ce: "softmax cross-entropy, softmax inside the loss: δᴸ = (softmax(zᴸ) − y) / B",
  bce: "binary cross-entropy, the sigmoid inside the loss: δᴸ = (σ(zᴸ) − y) / B",
  mse: "squared error on sigmoid outputs: δᴸ = 2 (aᴸ − y) σ′(zᴸ) / (B·K)",
  reg: "squared error on a linear output: δᴸ = 2 (zᴸ − y) / B",
};

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// a number as shown (4 significant digits), the full value kept in data-value
function num(v, cls = "num", extra = {}) {
  return h("span", { class: cls, title: String(v), "data-value": String(v), ...extra }, fmt(v));
}

export class StepThroughView {
  constructor(root, network, { onMark }) {
    this.root = root;
    this.network = network;
    this.onMark = onMark;
    this.view = null;
    this.stages = [];
    this.i = 0;
    this.b = 0;
    this.detail = root.querySelector("#step-detail");
    this.title = root.querySelector("#step-stage");
    this.slider = root.querySelector("#step-slider");
    this.jump = root.querySelector("#step-jump");
    this.exampleSel = root.querySelector("#step-example");
    root.querySelector("#step-prev").addEventListener("click", () => this.go(this.i - 1));
    root.querySelector("#step-next").addEventListener("click", () => this.go(this.i + 1));
    this.slider.addEventListener("input", () => this.go(+this.slider.value));
    this.jump.addEventListener("change", () => this.go(+this.jump.value));
    this.exampleSel.addEventListener("change", () => { this.b = +this.exampleSel.value; this.render(); });
    root.addEventListener("keydown", (ev) => {
      if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
      if (ev.key === "ArrowRight") { this.go(this.i + 1); ev.preventDefault(); }
      if (ev.key === "ArrowLeft") { this.go(this.i - 1); ev.preventDefault(); }
    });
  }

  get active() { return this.view !== null; }

  show(view) {
    this.view = view;
    const L = view.layers.length;
    this.stages = [];
    for (let l = 1; l <= L; l++) {
      for (let j = 0; j < view.layers[l - 1].neurons.length; j++) this.stages.push({ kind: "forward", l, j });
    }
    this.stages.push({ kind: "loss" });
    for (let l = L; l >= 1; l--) {
      for (let j = 0; j < view.layers[l - 1].neurons.length; j++) this.stages.push({ kind: "backward", l, j });
    }
    for (let l = L; l >= 1; l--) this.stages.push({ kind: "weights", l });
    this.b = 0;
    this.exampleSel.innerHTML = "";
    view.rows.forEach((row, i) => {
      this.exampleSel.append(h("option", { value: i }, `row ${row} (label ${fmt(view.labels[i])})`));
    });
    this.exampleSel.parentElement.hidden = view.batch === 1;
    this.jump.innerHTML = "";
    this.stages.forEach((s, i) => this.jump.append(h("option", { value: i }, this.name(s))));
    this.slider.max = this.stages.length - 1;
    this.root.classList.add("has-view");
    this.onMark(view.rows);
    this.go(0);
  }

  close() {
    this.view = null;
    this.root.classList.remove("has-view");
    this.detail.innerHTML = "";
    this.title.textContent = "";
    this.network.clearHighlight();
    this.onMark([]);
  }

  // jump to the backward stage of a neuron (used by links and tests)
  goTo(kind, l, j) {
    const i = this.stages.findIndex((s) => s.kind === kind && s.l === l && (j === undefined || s.j === j));
    if (i >= 0) this.go(i);
  }

  name(s) {
    const L = this.view.layers.length;
    const layer = (l) => (l === L ? "output layer" : `layer ${l}`);
    if (s.kind === "forward") return `forward · ${layer(s.l)} · neuron ${s.j + 1}`;
    if (s.kind === "backward") return `backward · ${layer(s.l)} · neuron ${s.j + 1}`;
    if (s.kind === "weights") return `∂L/∂W · ${layer(s.l)}`;
    return "the loss";
  }

  go(i) {
    if (!this.view) return;
    this.i = Math.max(0, Math.min(this.stages.length - 1, i));
    this.render();
  }

  render() {
    const s = this.stages[this.i];
    this.slider.value = this.i;
    this.jump.value = this.i;
    this.title.textContent = `${this.i + 1}/${this.stages.length} · ${this.name(s)}`;
    this.detail.innerHTML = "";
    if (s.kind === "forward") this.forward(s.l, s.j);
    else if (s.kind === "loss") this.loss();
    else if (s.kind === "backward") this.backward(s.l, s.j);
    else this.weights(s.l);
  }

  // ----- helpers over the ledger's arrays -----------------------------------------

  layer(l) { return this.view.layers[l - 1]; }

  // a^(l-1)_i for the shown example: the inputs for l = 1
  prevA(l) {
    return l === 1 ? this.view.inputs.a0[this.b] : this.layer(l - 1).a[this.b];
  }

  prevName(l, i) {
    return l === 1 ? this.view.inputs.names[i] : `a${sup(l - 1)}${sub(i + 1)}`;
  }

  isOutput(l) { return l === this.view.layers.length; }

  // ----- stages -------------------------------------------------------------------------

  forward(l, j) {
    const lay = this.layer(l);
    const a = this.prevA(l);
    const w = lay.W[j];
    const z = lay.z[this.b][j];
    const act = this.isOutput(l) ? this.outputAct() : ACT_NAME[lay.activation] || lay.activation;
    const terms = h("span", { class: "formula" });
    w.forEach((wi, i) => {
      if (i) terms.append(" + ");
      terms.append("(", num(wi), ")·(", num(a[i]), ")");
    });
    if (lay.b) terms.append(" + (", num(lay.b[j]), ")");
    this.detail.append(
      h("p", { class: "explain" }, `Neuron ${j + 1} of ${this.isOutput(l) ? "the output layer" : "layer " + l} adds up its weighted inputs and applies its activation.`),
      h("div", { class: "eq" }, `z${sup(l)}${sub(j + 1)} = Σᵢ W${sup(l)}${sub(j + 1)}ᵢ a${sup(l - 1)}ᵢ + b${sup(l)}${sub(j + 1)} = `, terms),
      h("div", { class: "eq" }, `z${sup(l)}${sub(j + 1)} = `, num(z, "num z-value", { "data-layer": l, "data-unit": j })),
      h("div", { class: "eq" }, `a${sup(l)}${sub(j + 1)} = ${act}(z${sup(l)}${sub(j + 1)}) = `,
        num(lay.a[this.b][j], "num a-value", { "data-layer": l, "data-unit": j })),
    );
    const nodes = {};
    a.forEach((v, i) => { nodes[`${l - 1}:${this.inputRow(l, i)}`] = `a=${fmt(v, 3)}`; });
    nodes[`${l}:${j}`] = `a=${fmt(lay.a[this.b][j], 3)}`;
    const edges = {};
    const active = [];
    w.forEach((wi, i) => { edges[`${l}:${j}:${i}`] = `w=${fmt(wi, 3)}`; active.push(`${l}:${j}:${i}`); });
    this.network.highlight({ layer: l, unit: j, nodes, edges, active, labelAt: 0.08 });
  }

  outputAct() {
    const v = this.view;
    if (v.output === "softmax") return "identity (softmax is inside the loss)";
    if (v.output === "sigmoid") return "identity (σ is inside the loss)";
    if (v.output === "identity") return "σ";
    return "identity";
  }

  // the network view's input column lists every candidate feature; map column i of a^0
  inputRow(l, i) {
    return l === 1 && this.network.activeInputs ? this.network.activeInputs[i] : i;
  }

  loss() {
    const v = this.view;
    const kind = v.problem === "regression" ? "reg" : v.loss_kind;
    this.detail.append(
      h("p", { class: "explain" }, `The loss over ${v.batch === 1 ? "this example" : `the ${v.batch} rows of the mini-batch (a mean)`}${v.regularization ? `, plus the ${v.regularization.toUpperCase()} penalty on the weights` : ""}:`),
      h("div", { class: "eq" }, `${v.loss_name || "L"} = `, num(v.loss, "num loss-value")),
      h("p", { class: "explain" }, `The backward pass starts at the output: ${LOSS_TEXT[kind]}. Then each layer's δ is the sum over the neurons it feeds of their δ times the connecting weight, times σ′(z).`),
    );
    this.network.highlight(null);
  }

  backward(l, j) {
    const lay = this.layer(l);
    const nr = lay.neurons[j];
    const b = this.b;
    const nodes = {};
    // the δ of every neuron already visited (output first), as on the notes' diagrams
    for (let m = this.view.layers.length; m >= l; m--) {
      this.layer(m).neurons.forEach((n, u) => {
        if (m > l || u <= j) nodes[`${m}:${u}`] = `δ=${fmt(n.delta[b], 3)}`;
      });
    }
    const deltaSpan = num(nr.delta[b], "num delta-value", { "data-layer": l, "data-unit": j, "data-example": b });
    if (this.isOutput(l)) {
      const v = this.view;
      const kind = v.problem === "regression" ? "reg" : v.loss_kind;
      this.detail.append(
        h("p", { class: "explain" }, `At the output the loss gives δ directly (${LOSS_TEXT[kind]}).`),
        h("div", { class: "eq" }, `z${sup(l)}${sub(j + 1)} = `, num(lay.z[b][j]), `,  a${sup(l)}${sub(j + 1)} = `, num(lay.a[b][j]), `,  label y = ${fmt(v.labels[b])}`),
      );
      if (nr.sigma_prime && v.output === "identity") {
        this.detail.append(h("div", { class: "eq" }, `σ′(z${sup(l)}${sub(j + 1)}) = `, num(nr.sigma_prime[b])));
      }
      this.detail.append(h("div", { class: "eq big" }, `δ${sup(l)}${sub(j + 1)} = ∂L/∂z${sup(l)}${sub(j + 1)} = `, deltaSpan));
      this.network.highlight({ layer: l, unit: j, nodes, edges: {}, active: [] });
      return;
    }
    const next = this.layer(l + 1);
    const table = h("table", { class: "terms" },
      h("thead", {}, h("tr", {},
        h("th", {}, "successor k"),
        h("th", {}, `δ${sup(l + 1)}ₖ (backpropagated)`),
        h("th", {}, `W${sup(l + 1)}ₖ${sub(j + 1)} (local gradient)`),
        h("th", {}, "product"))));
    const body = h("tbody");
    const edges = {};
    const active = [];
    for (const t of nr.terms) {
      body.append(h("tr", { "data-successor": t.unit },
        h("td", {}, `${this.isOutput(l + 1) ? "output" : "neuron"} ${t.unit + 1}`),
        h("td", {}, num(t.delta_next[b])),
        h("td", {}, num(t.weight)),
        h("td", {}, num(t.product[b], "num product"))));
      const key = `${l + 1}:${t.unit}:${j}`;
      edges[key] = `${fmt(t.delta_next[b], 3)}×${fmt(t.weight, 3)}=${fmt(t.product[b], 3)}`;
      active.push(key);
    }
    body.append(h("tr", { class: "sum" }, h("td", { colSpan: 3 }, `Σₖ = ∂L/∂a${sup(l)}${sub(j + 1)}`),
      h("td", {}, num(nr.sum[b], "num sum-value"))));
    table.append(body);
    this.detail.append(
      h("p", { class: "explain" }, `Neuron ${j + 1} of layer ${l} feeds ${next.neurons.length} neuron${next.neurons.length === 1 ? "" : "s"} of ${this.isOutput(l + 1) ? "the output layer" : "layer " + (l + 1)}. Each passes back its δ times the weight of the edge; the sum is ∂L/∂a, and the activation's local gradient σ′(z) turns it into δ.`),
      table,
      h("div", { class: "eq" }, `σ′(z${sup(l)}${sub(j + 1)}) = ${ACT_NAME[lay.activation] || lay.activation}′(`, num(lay.z[b][j]), ") = ", num(nr.sigma_prime[b], "num sigma-prime")),
      h("div", { class: "eq big" }, `δ${sup(l)}${sub(j + 1)} = σ′(z) · Σ = `, deltaSpan),
    );
    this.network.highlight({ layer: l, unit: j, nodes, edges, active, labelAt: 0.96 });
  }

  weights(l) {
    const lay = this.layer(l);
    const v = this.view;
    const rows = lay.dW;
    const table = h("table", { class: "matrix" });
    const head = h("tr", {}, h("th", {}, ""));
    rows[0].forEach((_, i) => head.append(h("th", {}, this.prevName(l, i))));
    head.append(h("th", {}, "bias"));
    table.append(h("thead", {}, head));
    const body = h("tbody");
    const edges = {};
    const active = [];
    const values = {};
    rows.forEach((row, k) => {
      const tr = h("tr", {}, h("th", {}, `${this.isOutput(l) ? "output" : "neuron"} ${k + 1}`));
      row.forEach((g, i) => {
        tr.append(h("td", {}, num(g, "num dw-value", { "data-layer": l, "data-unit": k, "data-input": i })));
        const key = `${l}:${k}:${i}`;
        edges[key] = `∂L/∂w=${fmt(g, 3)}`;
        active.push(key);
        if (typeof g === "number") values[key] = g;
      });
      tr.append(h("td", {}, lay.db ? num(lay.db[k]) : "–"));
      body.append(tr);
    });
    table.append(body);
    this.detail.append(
      h("p", { class: "explain" }, `Each weight's gradient is the δ of the neuron it feeds times the activation it carries, ∂L/∂W${sup(l)}ₖⱼ = δ${sup(l)}ₖ a${sup(l - 1)}ⱼ${v.batch > 1 ? `, summed over the ${v.batch} rows` : ""}; ∂L/∂b = δ. A gradient-descent step moves each weight by −(learning rate) × this number. On the network the edges into ${this.isOutput(l) ? "the output layer" : "layer " + l} now show ∂L/∂w: blue positive, orange negative, thicker larger (hover one for its value).`),
      table);
    if (v.regularization && lay.W_terms.length > 1) {
      this.detail.append(h("p", { class: "explain" }, `With ${v.regularization.toUpperCase()} regularisation each weight has a second successor, the penalty; what the optimizer receives is the sum of both terms (the engine's ∂L/∂W):`));
      const t = h("table", { class: "terms" });
      for (const term of lay.W_terms) {
        t.append(h("tr", {}, h("td", {}, `via ${term.successor} (${term.op})`), h("td", {}, num(term.product[0][0])), h("td", {}, "(first entry)")));
      }
      t.append(h("tr", { class: "sum" }, h("td", {}, "∂L/∂W total"), h("td", {}, num(lay.W_grad[0][0])), h("td", {}, "(first entry)")));
      this.detail.append(t);
    }
    this.network.highlight({ layer: l, unit: -1, nodes: {}, edges, active, values, labelAt: 0.5 });
  }
}
