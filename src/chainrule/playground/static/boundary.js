// The boundary view: the network's output over the plane as a heatmap (canvas),
// with the data points on top; and the small per-neuron heatmaps drawn the same way.
// The values come from the server's forward pass; this file only paints them.

import { decode } from "./api.js";
import { classColor, css, diverging, mix, MID } from "./colors.js";

// Paint an n x n field into `canvas` (scaled to its size). colour(i) -> [r, g, b].
export function paintField(canvas, n, colour, strength = 1) {
  let off = canvas._field;
  if (!off || off.width !== n) {
    off = document.createElement("canvas");
    off.width = n;
    off.height = n;
    canvas._field = off;
  }
  const ctx = off.getContext("2d");
  const img = ctx.createImageData(n, n);
  const px = img.data;
  for (let i = 0; i < n * n; i++) {
    const c = colour(i);
    // strength < 1 pales the field, so that the data points stand out on it
    px[4 * i] = 255 + (c[0] - 255) * strength;
    px[4 * i + 1] = 255 + (c[1] - 255) * strength;
    px[4 * i + 2] = 255 + (c[2] - 255) * strength;
    px[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const out = canvas.getContext("2d");
  out.imageSmoothingEnabled = true;
  out.drawImage(off, 0, 0, canvas.width, canvas.height);
}

// How a value of a given kind maps to [-1, 1] for the diverging colours.
export function scaleFor(kind, activation, yScale = 1) {
  if (kind === "prob" || activation === "sigmoid") return (v) => 2 * v - 1;
  if (kind === "value") return (v) => v / yScale;
  return (v) => v; // tanh, relu, identity: clipped to [-1, 1] by the colour map
}

export class BoundaryView {
  constructor(canvas, { onPick } = {}) {
    this.canvas = canvas;
    this.onPick = onPick;
    this.showTest = false;
    this.discretize = false;
    this.marked = [];
    this.data = null;
    this.last = null;
    this.frames = 0;
    canvas.addEventListener("click", (ev) => this._click(ev));
  }

  setData(data) {
    this.data = data;
    const ys = data.points.train.y.concat(data.points.test.y);
    this.yScale = data.problem === "regression"
      ? Math.max(1e-9, ...ys.map((v) => Math.abs(v))) : 1;
    this.marked = [];
  }

  // plane coordinates -> canvas pixels
  _px(x, y) {
    const [x0, x1, y0, y1] = this.data.domain;
    return [(x - x0) / (x1 - x0) * this.canvas.width,
      (y1 - y) / (y1 - y0) * this.canvas.height];
  }

  update(boundary) {
    if (boundary) this.last = boundary;
    this.draw();
  }

  draw() {
    const b = this.last;
    const ctx = this.canvas.getContext("2d");
    if (!this.data || !this.data.two_d || !b) {
      ctx.fillStyle = css(MID);
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      if (this.data && !this.data.two_d) {
        ctx.fillStyle = "#555";
        ctx.font = "13px system-ui, sans-serif";
        ctx.textAlign = "center";
        const mid = this.canvas.height / 2;
        ctx.fillText(`${this.data.features.length} input columns:`, this.canvas.width / 2, mid - 10);
        ctx.fillText("no plane to draw the boundary on", this.canvas.width / 2, mid + 10);
      }
      return;
    }
    const value = decode(b.value);
    if (b.kind === "binary") {
      const disc = this.discretize;
      paintField(this.canvas, b.n, (i) => diverging(disc ? (value[i] > 0.5 ? 1 : -1)
        : 2 * value[i] - 1), 0.75);
    } else if (b.kind === "multi") {
      const label = decode(b.label, Uint8Array);
      const k = this.data.classes.length;
      const disc = this.discretize;
      paintField(this.canvas, b.n, (i) => {
        // white where the network is as unsure as a uniform guess, the class's hue when sure
        const sure = disc ? 1 : Math.max(0, (value[i] - 1 / k) / (1 - 1 / k));
        return mix(MID, classColor(label[i]), 0.2 + 0.8 * sure);
      }, 0.75);
    } else {
      const s = this.yScale;
      paintField(this.canvas, b.n, (i) => diverging(value[i] / s), 0.75);
    }
    this._points();
    this.frames += 1;
  }

  _points() {
    const ctx = this.canvas.getContext("2d");
    const d = this.data;
    const parts = [["train", "white"]];
    if (this.showTest) parts.push(["test", "black"]);
    for (const [part, stroke] of parts) {
      const { x, y } = d.points[part];
      for (let i = 0; i < x.length; i++) {
        const [px, py] = this._px(x[i][0], x[i][1]);
        ctx.beginPath();
        ctx.arc(px, py, 3.2, 0, 2 * Math.PI);
        ctx.fillStyle = css(d.problem === "regression" ? diverging(y[i] / this.yScale)
          : classColor(y[i]));
        ctx.fill();
        ctx.lineWidth = 1;
        ctx.strokeStyle = stroke;
        ctx.stroke();
      }
    }
    // the rows of the step-through, ringed
    for (const row of this.marked) {
      const p = d.points.train.x[row];
      if (!p) continue;
      const [px, py] = this._px(p[0], p[1]);
      ctx.beginPath();
      ctx.arc(px, py, 7, 0, 2 * Math.PI);
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = "#111";
      ctx.stroke();
    }
  }

  // While a neuron is hovered, the big plot shows what that neuron computes (as in
  // TF Playground); null goes back to the network's output.
  preview(map) {
    if (!map) { this.draw(); return; }
    paintField(this.canvas, map.n, (i) => diverging(map.toUnit(map.vals[i])), 0.75);
    this._points();
  }

  mark(rows) {
    this.marked = rows || [];
    this.draw();
  }

  // A click near a training point picks it for the step-through.
  _click(ev) {
    if (!this.data || !this.data.two_d || !this.onPick) return;
    const r = this.canvas.getBoundingClientRect();
    const cx = (ev.clientX - r.left) * this.canvas.width / r.width;
    const cy = (ev.clientY - r.top) * this.canvas.height / r.height;
    let best = -1;
    let bestD = 12 * 12;
    this.data.points.train.x.forEach((p, i) => {
      const [px, py] = this._px(p[0], p[1]);
      const dd = (px - cx) ** 2 + (py - cy) ** 2;
      if (dd < bestD) { bestD = dd; best = i; }
    });
    if (best >= 0) this.onPick(best);
  }
}

// A small heatmap of one neuron (or input feature) over the plane.
export function paintNeuron(canvas, values, n, toUnit) {
  paintField(canvas, n, (i) => diverging(toUnit(values[i])));
}
