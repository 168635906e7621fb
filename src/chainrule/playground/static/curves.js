// The curves view: training and test loss per epoch, and the gradient magnitude
// per layer over training (||dL/dW^l||, mean over the epoch's mini-batches, on a
// log scale so that vanishing gradients in a deep sigmoid stack show as lines
// falling apart by orders of magnitude). Canvas line charts; the numbers are the
// server's, recorded once per epoch.

const LAYER_COLOURS = ["#0877bd", "#f59322", "#2ca02c", "#9467bd", "#d62728", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#1f3b73"];

// clear a chart and draw its axes; returns what the drawing needs
function frame(canvas, pad) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#c8c8c8";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t);
  ctx.lineTo(pad.l, h - pad.b);
  ctx.lineTo(w - pad.r, h - pad.b);
  ctx.stroke();
  return { ctx, w, h };
}

function line(ctx, xs, ys, sx, sy, colour, width = 1.5) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  let started = false;
  for (let i = 0; i < xs.length; i++) {
    const y = ys[i];
    if (y === null || y === undefined || !Number.isFinite(y)) { started = false; continue; }
    const px = sx(xs[i]);
    const py = sy(y);
    if (!started) { ctx.moveTo(px, py); started = true; } else ctx.lineTo(px, py);
  }
  ctx.stroke();
}

function label(ctx, text, x, y, align = "left", colour = "#555") {
  ctx.fillStyle = colour;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = align;
  ctx.fillText(text, x, y);
}

export class CurvesView {
  constructor(lossCanvas, gradCanvas, legend) {
    this.loss = lossCanvas;
    this.grad = gradCanvas;
    this.legend = legend;
    this.reset();
  }

  reset() {
    this.history = [];
    this.draw();
  }

  add(points) {
    this.history.push(...points);
    this.draw();
  }

  draw() {
    this._loss();
    this._grad();
  }

  _loss() {
    const pad = { l: 38, r: 8, t: 8, b: 18 };
    const { ctx, w, h } = frame(this.loss, pad);
    const H = this.history;
    if (!H.length) return;
    const xs = H.map((p) => p.epoch);
    const tr = H.map((p) => p.train_loss);
    const te = H.map((p) => p.test_loss);
    const finite = tr.concat(te).filter((v) => v !== null && Number.isFinite(v));
    const top = Math.max(1e-12, ...finite);
    const last = Math.max(1, xs[xs.length - 1]);
    const sx = (x) => pad.l + (w - pad.l - pad.r) * x / last;
    const sy = (y) => h - pad.b - (h - pad.t - pad.b) * Math.min(y, top) / top;
    line(ctx, xs, tr, sx, sy, "#999", 1.5);
    line(ctx, xs, te, sx, sy, "#111", 1.5);
    label(ctx, top.toPrecision(3), pad.l - 3, pad.t + 9, "right");
    label(ctx, "0", pad.l - 3, h - pad.b, "right");
    label(ctx, `epoch ${last}`, w - pad.r, h - 4, "right");
  }

  _grad() {
    const pad = { l: 46, r: 8, t: 8, b: 18 };
    const { ctx, w, h } = frame(this.grad, pad);
    const H = this.history.filter((p) => p.grad_norms);
    this.legend.innerHTML = "";
    if (!H.length) {
      label(ctx, "gradient norms appear after the first epoch", pad.l + 6, h / 2);
      return;
    }
    const L = H[0].grad_norms.length;
    let lo = Infinity;
    let hi = -Infinity;
    for (const p of H) for (const v of p.grad_norms) {
      if (v > 0 && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    if (!Number.isFinite(lo)) return;
    const a = Math.floor(Math.log10(lo));
    const b = Math.max(a + 1, Math.ceil(Math.log10(hi)));
    const xs = H.map((p) => p.epoch);
    const first = xs[0];
    const last = Math.max(first + 1, xs[xs.length - 1]);
    const sx = (x) => pad.l + (w - pad.l - pad.r) * (x - first) / (last - first);
    const sy = (v) => h - pad.b - (h - pad.t - pad.b) * (Math.log10(v) - a) / (b - a);
    const every = Math.ceil((b - a) / 4); // at most five labelled decades
    for (let e = a; e <= b; e++) {
      ctx.strokeStyle = "#eee";
      ctx.beginPath();
      ctx.moveTo(pad.l, sy(10 ** e));
      ctx.lineTo(w - pad.r, sy(10 ** e));
      ctx.stroke();
      if ((e - a) % every === 0) label(ctx, `1e${e}`, pad.l - 3, sy(10 ** e) + 4, "right");
    }
    for (let l = 0; l < L; l++) {
      const colour = LAYER_COLOURS[l % LAYER_COLOURS.length];
      line(ctx, xs, H.map((p) => (p.grad_norms[l] > 0 ? p.grad_norms[l] : null)), sx, sy, colour);
      const item = document.createElement("span");
      item.className = "legend-item";
      item.style.color = colour;
      const v = H[H.length - 1].grad_norms[l];
      const shown = v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(3);
      item.textContent = `W${l + 1 === L ? " out" : l + 1}: ${shown}`;
      this.legend.appendChild(item);
    }
    label(ctx, `epoch ${last}`, w - pad.r, h - 4, "right");
  }
}
