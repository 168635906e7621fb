// The network view: input features, hidden layers and outputs as squares (each a
// small heatmap of what the neuron computes over the plane), edges coloured by
// the weight's sign and sized by its magnitude (SVG). Buttons add and remove
// layers and neurons; clicking a feature switches it on or off. The step-through
// highlights a neuron and writes numbers on its edges through highlight().

import { decode } from "./api.js";
import { paintNeuron, scaleFor } from "./boundary.js";
import { css, NEG, POS } from "./colors.js";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

export function fmt(v, digits = 4) {
  if (typeof v === "string") return v; // "nan", "inf" from the ledger
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-4) return v.toExponential(digits - 1).replace("e", "e");
  return Number(v.toPrecision(digits)).toString();
}

export class NetworkView {
  constructor(root, { onChange, onWeight, onHover, meta }) {
    this.root = root;
    this.onChange = onChange;
    this.onWeight = onWeight;
    this.onHover = onHover;
    this.nodeMaps = [];
    this.meta = meta;
    this.svg = root.querySelector("svg");
    this.canvasLayer = root.querySelector(".maps");
    this.tip = root.querySelector(".tip");
    this.weights = null;
    this.highlighted = null;
    this.showGrads = false;
  }

  setup(desc) {
    this.desc = desc;
    const d = desc.data;
    const net = desc.network;
    const hidden = desc.config.hidden;
    this.features = desc.config.features;
    // input column: every candidate feature for 2-D data (click to toggle), else the columns
    this.toggleable = d.two_d;
    this.inputs = this.toggleable
      ? Object.keys(this.meta.features).map((key) => ({
        key, label: d.features[this.features.indexOf(key)] || this.meta.features[key],
        on: this.features.includes(key) }))
      : d.features.map((label, i) => ({ key: String(i), label, on: true }));
    this.sizes = net.sizes; // [n_inputs, ...hidden, n_out]
    const cols = [this.inputs.length, ...hidden, net.sizes[net.sizes.length - 1]];
    const tallest = Math.max(...cols, 4);
    const H = Math.max(360, Math.min(620, tallest * 46 + 80));
    const W = this.root.clientWidth || 640;
    this.node = Math.max(18, Math.min(36, Math.floor((H - 80) / tallest) - 8));
    const s = this.node;
    const x0 = 70;
    const x1 = W - 60;
    const ncol = cols.length;
    this.pos = cols.map((n, c) => {
      const x = ncol === 1 ? x0 : x0 + (x1 - x0) * c / (ncol - 1);
      const gap = Math.min(s + 12, (H - 80) / Math.max(n, 1));
      const top = 60 + ((H - 80) - gap * n) / 2;
      return Array.from({ length: n }, (_, i) => [x, top + gap * i + gap / 2]);
    });
    this.svg.setAttribute("width", W);
    this.svg.setAttribute("height", H);
    this.svg.innerHTML = "";
    this.canvasLayer.innerHTML = "";
    this.canvasLayer.style.height = `${H}px`;
    this.root.style.height = `${H}px`;
    this.edgeGroup = el("g", { class: "edges" }, this.svg);
    this.labelGroup = el("g", { class: "edge-labels" }, this.svg);
    this.nodeGroup = el("g", { class: "nodes" }, this.svg);
    this.controls(hidden, x0, x1, ncol);
    this.edges = [];
    // edges from the active inputs (layer 0) and between layers
    const activeInputs = this.inputs.map((f, i) => (f.on ? i : -1)).filter((i) => i >= 0);
    for (let l = 1; l < cols.length; l++) {
      const from = l === 1 ? activeInputs : [...Array(cols[l - 1]).keys()];
      for (let k = 0; k < cols[l]; k++) {
        from.forEach((row, j) => {
          const [ax, ay] = this.pos[l - 1][row];
          const [bx, by] = this.pos[l][k];
          const mx = (ax + bx) / 2;
          const path = el("path", {
            d: `M${ax + s / 2},${ay} C${mx},${ay} ${mx},${by} ${bx - s / 2},${by}`,
            class: "edge", "data-key": `${l}:${k}:${j}`,
          }, this.edgeGroup);
          path.addEventListener("mouseenter", (ev) => this._tip(ev, l, k, j));
          path.addEventListener("mouseleave", () => { this.tip.hidden = true; });
          path.addEventListener("click", (ev) => this._edit(ev, l, k, j));
          this.edges.push({ path, l, k, j, ax, ay, bx, by });
        });
      }
    }
    this.maps = [];
    this.nodes = [];
    cols.forEach((n, c) => {
      const list = [];
      for (let i = 0; i < n; i++) {
        const [x, y] = this.pos[c][i];
        const g = el("g", { class: "node", "data-layer": c, "data-unit": i }, this.nodeGroup);
        const rect = el("rect", { x: x - s / 2, y: y - s / 2, width: s, height: s, rx: 3 }, g);
        const label = el("text", { x: x, y: y + s / 2 + 11, class: "node-value" }, g);
        g.addEventListener("mouseenter", () => this.onHover && this.onHover(this.nodeMaps[c] && this.nodeMaps[c][i]));
        g.addEventListener("mouseleave", () => this.onHover && this.onHover(null));
        if (c === 0) {
          const f = this.inputs[i];
          g.classList.toggle("off", !f.on);
          const name = el("text", { x: x - s / 2 - 6, y: y + 4, class: "input-name" }, g);
          name.textContent = f.label;
          if (this.toggleable) {
            g.classList.add("toggle");
            g.addEventListener("click", () => this._toggle(f.key));
          }
        }
        const canvas = document.createElement("canvas");
        canvas.width = canvas.height = 24;
        canvas.className = "map";
        canvas.style.left = `${x - s / 2 + 1}px`;
        canvas.style.top = `${y - s / 2 + 1}px`;
        canvas.style.width = canvas.style.height = `${s - 2}px`;
        if (c === 0 && !this.inputs[i].on) canvas.style.opacity = "0.15";
        if (d.two_d) this.canvasLayer.appendChild(canvas);
        list.push({ g, rect, label, canvas });
      }
      this.nodes.push(list);
    });
    // input feature maps are fixed for the session
    this.nodeMaps = cols.map(() => []);
    if (d.input_maps) {
      activeInputs.forEach((row, j) => {
        const vals = decode(d.input_maps[j]);
        const n = Math.round(Math.sqrt(vals.length));
        let m = 0;
        for (const v of vals) m = Math.max(m, Math.abs(v));
        const toUnit = (v) => v / (m || 1);
        paintNeuron(this.nodes[0][row].canvas, vals, n, toUnit);
        this.nodeMaps[0][row] = { vals, n, toUnit };
      });
    }
    this.activeInputs = activeInputs;
  }

  controls(hidden, x0, x1, ncol) {
    const bar = this.root.querySelector(".layer-controls");
    bar.innerHTML = "";
    const limits = this.meta.limits;
    const mk = (text, title, fn, disabled) => {
      const b = document.createElement("button");
      b.textContent = text;
      b.title = title;
      b.disabled = !!disabled;
      b.addEventListener("click", fn);
      return b;
    };
    const top = document.createElement("div");
    top.className = "layers-count";
    top.append(
      mk("+", "add a hidden layer", () => this.onChange({ hidden: [...hidden, 4] }),
        hidden.length >= limits.hidden_layers),
      mk("−", "remove the last hidden layer", () => this.onChange({ hidden: hidden.slice(0, -1) }),
        hidden.length === 0),
    );
    const span = document.createElement("span");
    span.id = "layers-label";
    span.textContent = `${hidden.length} hidden layer${hidden.length === 1 ? "" : "s"}`;
    top.append(span);
    bar.append(top);
    hidden.forEach((n, l) => {
      const box = document.createElement("div");
      box.className = "neuron-controls";
      const x = x0 + (x1 - x0) * (l + 1) / (ncol - 1);
      box.style.left = `${x - 40}px`;
      const set = (m) => { const h = [...hidden]; h[l] = m; this.onChange({ hidden: h }); };
      box.append(
        mk("+", `add a neuron to layer ${l + 1}`, () => set(n + 1), n >= limits.neurons),
        mk("−", `remove a neuron from layer ${l + 1}`, () => set(n - 1), n <= 1),
      );
      const t = document.createElement("span");
      // many layers leave little room between columns: the number alone then
      const roomy = (x1 - x0) / (ncol - 1) > 95;
      t.textContent = roomy ? `${n} neuron${n === 1 ? "" : "s"}` : String(n);
      t.title = `${n} neuron${n === 1 ? "" : "s"} in layer ${l + 1}`;
      box.append(t);
      bar.append(box);
    });
  }

  _toggle(key) {
    const on = new Set(this.features);
    if (on.has(key)) {
      if (on.size === 1) return; // the network needs an input
      on.delete(key);
    } else on.add(key);
    const order = Object.keys(this.meta.features);
    this.onChange({ features: order.filter((f) => on.has(f)) });
  }

  _tip(ev, l, k, j) {
    if (!this.weights) return;
    const w = this.weights[l - 1].W[k][j];
    const from = l === 1 ? this.inputs[this.activeInputs[j]].label : `neuron ${j + 1} of layer ${l - 1}`;
    let text = `W${sup(l)}[${k + 1},${j + 1}] = ${fmt(w, 5)}  (${from} → ${l === this.sizes.length - 1 ? "output" : "layer " + l} neuron ${k + 1}; click to edit)`;
    if (this.edgeText && this.edgeText[`${l}:${k}:${j}`]) text += `\n${this.edgeText[`${l}:${k}:${j}`]}`;
    this.tip.textContent = text;
    const r = this.root.getBoundingClientRect();
    this.tip.style.left = `${ev.clientX - r.left + 12}px`;
    this.tip.style.top = `${ev.clientY - r.top + 12}px`;
    this.tip.hidden = false;
  }

  // Click an edge to type its weight (as in TF Playground); Enter sets it, Escape cancels.
  _edit(ev, l, k, j) {
    if (!this.weights || !this.onWeight) return;
    const old = this.root.querySelector(".weight-edit");
    if (old) old.remove();
    const input = document.createElement("input");
    input.className = "weight-edit";
    input.type = "text";
    input.value = String(this.weights[l - 1].W[k][j]);
    input.dataset.key = `${l}:${k}:${j}`;
    const r = this.root.getBoundingClientRect();
    input.style.left = `${ev.clientX - r.left - 40}px`;
    input.style.top = `${ev.clientY - r.top - 12}px`;
    let closed = false;
    // removing the input blurs it, and blur closes it too: close once
    const close = () => { if (!closed) { closed = true; input.remove(); } };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        const v = Number(input.value);
        const ok = input.value.trim() !== "" && Number.isFinite(v);
        close();
        if (ok) this.onWeight(l, k, j, v);
      } else if (e.key === "Escape") close();
    });
    input.addEventListener("blur", close);
    this.root.appendChild(input);
    input.focus();
    input.select();
  }

  update(snap) {
    this.weights = snap.weights;
    let maxW = 0;
    for (const layer of snap.weights) for (const row of layer.W) for (const w of row) maxW = Math.max(maxW, Math.abs(w));
    for (const e of this.edges) {
      const w = snap.weights[e.l - 1].W[e.k][e.j];
      const t = Math.min(1, Math.abs(w) / Math.max(maxW, 1e-9));
      e.path.setAttribute("stroke", css(w >= 0 ? POS : NEG));
      e.path.setAttribute("stroke-width", (0.6 + 5 * t).toFixed(2));
      e.path.setAttribute("stroke-opacity", (0.25 + 0.75 * t).toFixed(2));
    }
    if (snap.neurons) {
      const act = this.desc.network.activation;
      const outKind = this.desc.network.output === "value" ? "value" : "prob";
      snap.neurons.forEach((block, b) => {
        const vals = decode(block);
        const layer = b + 1;
        const units = this.nodes[layer].length;
        const per = vals.length / units;
        const n = Math.round(Math.sqrt(per));
        const last = layer === this.nodes.length - 1;
        const toUnit = last ? scaleFor(outKind, null, this.yScale || 1) : scaleFor("hidden", act);
        for (let u = 0; u < units; u++) {
          const mine = vals.subarray(u * per, (u + 1) * per);
          paintNeuron(this.nodes[layer][u].canvas, mine, n, toUnit);
          this.nodeMaps[layer][u] = { vals: mine, n, toUnit };
        }
      });
    }
  }

  // Step-through: spotlight one neuron; numbers on nodes and edges. spec =
  // { layer, unit, nodes: {"l:u": text}, edges: {"l:k:j": text}, active: ["l:k:j"] }
  highlight(spec) {
    this.clearHighlight();
    if (!spec) return;
    this.highlighted = spec;
    this.root.classList.add("stepping");
    const cell = this.nodes[spec.layer] && this.nodes[spec.layer][spec.unit];
    if (cell) cell.g.classList.add("current");
    for (const [key, text] of Object.entries(spec.nodes || {})) {
      const [l, u] = key.split(":").map(Number);
      const c = this.nodes[l] && this.nodes[l][u];
      if (c) { c.label.textContent = text; c.g.classList.add("lit"); }
    }
    this.edgeText = spec.edges || {};
    const active = new Set(spec.active || []);
    // edges can carry their own numbers (dL/dw): coloured by sign, sized by magnitude
    const values = spec.values || null;
    let top = 0;
    if (values) for (const v of Object.values(values)) top = Math.max(top, Math.abs(v));
    for (const e of this.edges) {
      const key = `${e.l}:${e.k}:${e.j}`;
      if (active.has(key)) {
        e.path.classList.add("active");
        if (values && key in values) {
          const v = values[key];
          const t = Math.abs(v) / (top || 1);
          e.path.classList.add("valued");
          // inline and important: above the stepping view's black for highlighted edges
          e.path.style.setProperty("stroke", css(v >= 0 ? POS : NEG), "important");
          e.path.style.setProperty("stroke-width", (0.8 + 6 * t).toFixed(2), "important");
          e.path.style.setProperty("stroke-opacity", (0.35 + 0.65 * t).toFixed(2), "important");
        }
        const text = this.edgeText[key];
        if (text && active.size <= 16) {
          // along the curve, near the end where the edges fan out, so labels do not pile up
          const at = spec.labelAt === undefined ? 0.5 : spec.labelAt;
          const [x, y] = this._along(e, at);
          // near an end of the edge, the label runs away from the node it sits by
          const anchor = at > 0.6 ? "end" : at < 0.4 ? "start" : "middle";
          const t = el("text", { x, y: y - 3, class: "edge-value", "text-anchor": anchor },
            this.labelGroup);
          t.textContent = text;
        }
      }
    }
  }

  // the point at parameter t of an edge's cubic curve (the same curve setup() draws)
  _along(e, t) {
    const s = this.node;
    const x0 = e.ax + s / 2;
    const x3 = e.bx - s / 2;
    const mx = (e.ax + e.bx) / 2;
    const u = 1 - t;
    const x = u * u * u * x0 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x3;
    const y = u * u * u * e.ay + 3 * u * u * t * e.ay + 3 * u * t * t * e.by + t * t * t * e.by;
    return [x, y];
  }

  clearHighlight() {
    this.highlighted = null;
    this.edgeText = null;
    this.root.classList.remove("stepping");
    if (!this.nodes) return;
    for (const col of this.nodes) for (const c of col) {
      c.g.classList.remove("current", "lit");
      c.label.textContent = "";
    }
    for (const e of this.edges || []) {
      e.path.classList.remove("active", "valued");
      for (const prop of ["stroke", "stroke-width", "stroke-opacity"]) e.path.style.removeProperty(prop);
    }
    if (this.labelGroup) this.labelGroup.innerHTML = "";
  }
}

export function sup(n) {
  const digits = "⁰¹²³⁴⁵⁶⁷⁸⁹";
  return String(n).split("").map((c) => digits[+c] || c).join("");
}

export function sub(n) {
  const digits = "₀₁₂₃₄₅₆₇₈₉";
  return String(n).split("").map((c) => digits[+c] || c).join("");
}
