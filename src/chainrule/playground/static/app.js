// The page's controller: reads the set-up from the URL, asks the server for a
// session, wires the controls, runs the play loop (one server call per frame:
// train, then redraw), and hands the step-through to its view. The views
// (network.js, boundary.js, curves.js, stepthrough.js) only draw what the server sends.

import { get, post, upload } from "./api.js";
import { BoundaryView } from "./boundary.js";
import { CurvesView } from "./curves.js";
import { fmt, NetworkView } from "./network.js";
import { readFragment, writeFragment } from "./state.js";
import { StepThroughView } from "./stepthrough.js";

const $ = (id) => document.getElementById(id);
const LEARNING_RATES = ["0.00001", "0.0001", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10"];
const REG_RATES = ["0", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10"];
const DATASET_NAMES = {
  circle: "Circle", xor: "XOR", gauss: "Gaussians", spiral: "Spiral", moons: "Moons",
  "reg-plane": "Plane", "reg-gauss": "Bumps", csv: "CSV",
};

class App {
  constructor(meta) {
    this.meta = meta;
    this.defaults = meta.defaults;
    this.params = null; // the session's settings as URL strings
    this.session = null;
    this.playing = false;
    this.queue = Promise.resolve(); // one request at a time per session
    this.frames = 0;
    this.upload = null;
    this.network = new NetworkView($("network"), {
      meta,
      onChange: (p) => this.change(p),
      onWeight: (l, k, j, value) => this.setWeight(l, k, j, value),
      onHover: (map) => this.boundary.preview(map),
    });
    this.boundary = new BoundaryView($("boundary"), { onPick: (row) => this.pick(row) });
    this.curves = new CurvesView($("loss-chart"), $("grad-chart"), $("grad-legend"));
    this.stepper = new StepThroughView($("step-panel"), this.network, {
      onMark: (rows) => this.boundary.mark(rows),
    });
    this.controls();
  }

  // ----- requests -------------------------------------------------------------------

  // run fn after the requests before it; errors reach the banner, never break the queue
  enqueue(fn) {
    const next = this.queue.then(fn).catch((e) => this.fail(e));
    this.queue = next;
    return next;
  }

  fail(e) {
    if (e && e.status === 404 && this.params) {
      // the server forgot the session (restarted): start again from the same settings
      this.note("The server had lost this session; it started again from the same settings.");
      return this.start(this.params);
    }
    this.error(e && e.message ? e.message : String(e));
    this.pause();
    return null;
  }

  error(text) {
    const m = $("message");
    m.textContent = text;
    m.className = "error";
    m.hidden = false;
  }

  note(text) {
    const m = $("message");
    m.textContent = text;
    m.className = "note";
    m.hidden = false;
  }

  clearMessage() {
    $("message").hidden = true;
  }

  async start(params) {
    const desc = await post("/api/session", { config: params, session: this.session });
    this.apply(desc);
    return desc;
  }

  async init() {
    // a link pasted into this tab changes only the fragment: start over from it
    window.addEventListener("hashchange", () => {
      this.pause();
      this.enqueue(() => this.load());
    });
    return this.load();
  }

  async load() {
    const params = readFragment();
    try {
      await this.start(params);
    } catch (e) {
      // a bad link: say why, and show the defaults rather than nothing
      this.error(`The settings in this link were refused: ${e.message}. Showing the defaults.`);
      await this.start({});
    }
  }

  // ----- applying what the server sends ---------------------------------------------------

  apply(desc) {
    this.session = desc.session;
    this.params = desc.params;
    this.desc = desc;
    this.stepper.close();
    this.setControls(desc);
    this.network.setup(desc);
    this.boundary.setData(desc.data);
    this.network.yScale = this.boundary.yScale;
    this.curves.reset();
    this.render(desc);
    $("export-model").href = `/api/export/${desc.session}/model.safetensors`;
    $("export-py").href = `/api/export/${desc.session}/model.py`;
    $("snippet").hidden = true;
    writeFragment(this.params, this.defaults);
  }

  render(snap) {
    this.last = snap;
    this.frames += 1;
    this.network.update(snap);
    this.boundary.update(snap.boundary);
    if (snap.history && snap.history.length) this.curves.add(snap.history);
    $("epoch").textContent = String(snap.epoch).padStart(6, "0").replace(/(\d{3})(\d{3})$/, "$1,$2");
    $("iteration").textContent = String(snap.iteration);
    const m = snap.metrics;
    $("train-loss").textContent = fmt(m.train_loss);
    $("test-loss").textContent = fmt(m.test_loss);
    $("train-acc").textContent = m.train_acc === null ? "" : `accuracy ${(100 * m.train_acc).toFixed(1)}%`;
    $("test-acc").textContent = m.test_acc === null ? "" : `accuracy ${(100 * m.test_acc).toFixed(1)}%`;
    $("step-run-batch").textContent = `on the next mini-batch (${snap.next_batch.length} rows)`;
    if (snap.diverged) {
      this.pause();
      this.error(snap.diverged);
    }
  }

  // ----- settings -------------------------------------------------------------------------

  change(partial) {
    return this.enqueue(async () => {
      const params = { ...this.params, ...partial };
      const res = await post("/api/config", { session: this.session, config: params });
      if (res.rebuilt) {
        this.pause();
        this.apply(res);
      } else {
        this.params = res.params;
        writeFragment(this.params, this.defaults);
        this.setControls({ params: res.params, data: this.desc.data, config: res.config });
      }
      this.clearMessage();
    });
  }

  setControls(desc) {
    const p = desc.params;
    const cfg = desc.config;
    for (const id of ["lr", "act", "opt", "reg", "rrate", "problem", "loss", "classes", "samples", "momentum"]) {
      const sel = $(id);
      // numbers match by value ("0.0" is the option "0"); a value not offered is added
      const same = (o) => o.value === p[id] || (o.value !== "" && !isNaN(+o.value) && +o.value === +p[id]);
      let opt = [...sel.options].find(same);
      if (!opt) { opt = new Option(p[id], p[id]); sel.append(opt); }
      sel.value = opt.value;
    }
    $("momentum-box").hidden = p.opt !== "momentum";
    $("train").value = p.train;
    $("train-label").textContent = p.train;
    $("noise").value = p.noise;
    $("noise-label").textContent = p.noise;
    $("batch").value = p.batch;
    $("batch").max = desc.data.n_train;
    $("seed").value = p.seed;
    $("show-test").checked = cfg.show_test;
    $("discretize").checked = cfg.discretize;
    this.boundary.showTest = cfg.show_test;
    this.boundary.discretize = cfg.discretize;
    this.boundary.draw();
    const regression = cfg.problem === "regression";
    for (const o of $("loss").options) o.disabled = regression ? o.value !== "mse" : false;
    const gen = this.meta.datasets.classification[cfg.dataset];
    $("classes-box").hidden = !gen || gen[0] === gen[1];
    for (const b of document.querySelectorAll("#datasets button")) {
      const ds = b.dataset.dataset;
      b.classList.toggle("selected", ds === cfg.dataset);
      const isReg = this.meta.datasets.regression.includes(ds);
      b.hidden = ds !== "csv" && isReg !== regression;
    }
    $("csv-target-box").hidden = cfg.dataset !== "csv";
    // an uploaded table has its own rows and noise
    $("noise-box").hidden = cfg.dataset === "csv";
    $("samples-box").hidden = cfg.dataset === "csv";
    $("data-notes").textContent = (desc.data.notes || []).join(" ");
    const sizes = [desc.data.features.length, ...cfg.hidden, this.desc.network.sizes.at(-1)];
    $("network-summary").textContent = sizes.join("-");
  }

  controls() {
    const fill = (id, values) => { for (const v of values) $(id).append(new Option(v, v)); };
    fill("lr", LEARNING_RATES);
    fill("rrate", REG_RATES);
    fill("act", this.meta.activations);
    const lim = this.meta.limits.classes;
    for (let k = lim[0]; k <= lim[1]; k++) $("classes").append(new Option(k, String(k)));
    const names = [...Object.keys(this.meta.datasets.classification), ...this.meta.datasets.regression];
    for (const ds of names) {
      const b = document.createElement("button");
      b.textContent = DATASET_NAMES[ds] || ds;
      b.dataset.dataset = ds;
      b.addEventListener("click", () => this.change({ dataset: ds, csv: "", target: "" }));
      $("datasets").append(b);
    }
    const csvButton = document.createElement("button");
    csvButton.textContent = "CSV";
    csvButton.dataset.dataset = "csv";
    csvButton.title = "upload a CSV file below";
    csvButton.addEventListener("click", () => {
      if (this.upload) this.useUpload(this.upload, this.upload.target);
      else $("csv-file").click();
    });
    $("datasets").append(csvButton);

    for (const id of ["lr", "act", "opt", "reg", "rrate", "loss", "classes", "samples", "momentum"]) {
      $(id).addEventListener("change", () => {
        const change = { [id]: $(id).value };
        // two classes suit a single sigmoid output; more need softmax
        if (id === "classes" && +$(id).value > 2 && this.params.loss === "bce") change.loss = "ce";
        this.change(change);
      });
    }
    $("problem").addEventListener("change", () => {
      const problem = $("problem").value;
      const change = { problem };
      if (this.params.dataset !== "csv") {
        change.dataset = problem === "regression" ? this.meta.datasets.regression[0] : "circle";
      }
      change.loss = problem === "regression" ? "mse" : "bce";
      this.change(change);
    });
    for (const id of ["train", "noise"]) {
      $(id).addEventListener("input", () => { $(`${id}-label`).textContent = $(id).value; });
      $(id).addEventListener("change", () => this.change({ [id]: $(id).value }));
    }
    $("batch").addEventListener("change", () => this.change({ batch: $("batch").value }));
    $("seed").addEventListener("change", () => this.change({ seed: $("seed").value }));
    $("reseed").addEventListener("click", () => this.change({ seed: String(Math.floor(Math.random() * 100000)) }));
    $("show-test").addEventListener("change", () => this.change({ show_test: $("show-test").checked ? "1" : "0" }));
    $("discretize").addEventListener("change", () => this.change({ discretize: $("discretize").checked ? "1" : "0" }));

    $("play").addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    $("step").addEventListener("click", () => { this.pause(); this.trainOnce(); });
    $("reset").addEventListener("click", () => { this.pause(); this.enqueue(() => this.start(this.params)); });

    // space plays and pauses (outside text fields); a new window size lays the network out again
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== " " || ["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(ev.target.tagName)) return;
      ev.preventDefault();
      if (this.playing) this.pause(); else this.play();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (!this.desc || !this.last) return;
        this.network.setup(this.desc);
        this.network.update(this.last);
        if (this.stepper.active) this.stepper.render();
      }, 150);
    });

    $("csv-file").addEventListener("change", () => this.uploadFile());
    $("csv-target").addEventListener("change", () => this.useUpload(this.upload, $("csv-target").value));

    $("step-run-example").addEventListener("click", () => this.stepThrough("example", +$("step-index").value));
    $("step-run-batch").addEventListener("click", () => this.stepThrough("batch"));
    $("step-close").addEventListener("click", () => this.stepper.close());

    $("show-snippet").addEventListener("click", () => this.enqueue(async () => {
      const r = await fetch($("export-py").href);
      $("snippet").textContent = await r.text();
      $("snippet").hidden = false;
    }));
    $("share").addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(window.location.href);
        this.note("Link copied: it reproduces this set-up (data, network, seed).");
      } catch (e) {
        this.note(`The link of this set-up: ${window.location.href}`);
      }
    });
  }

  // ----- training ---------------------------------------------------------------------------

  trainRequest() {
    const unit = $("step-unit").value;
    return post("/api/train", {
      session: this.session,
      epochs: unit === "epoch" ? 1 : 0,
      batches: unit === "batch" ? 1 : 0,
      since: this.curves.history.length,
    });
  }

  trainOnce() {
    this.stepper.close();
    return this.enqueue(async () => this.render(await this.trainRequest()));
  }

  play() {
    if (this.playing) return;
    this.stepper.close();
    this.playing = true;
    $("play").textContent = "❚❚ Pause";
    $("play").classList.add("playing");
    this.clearMessage();
    const t0 = performance.now();
    const f0 = this.frames;
    // Each frame's request goes through the queue (so a change of settings slips in
    // between frames), and the next one is sent before this one is drawn: the server
    // trains the next epoch while the page paints.
    const request = () => {
      const p = this.queue.then(() => this.trainRequest());
      this.queue = p.catch(() => null);
      return p;
    };
    (async () => {
      let pending = request();
      try {
        while (this.playing) {
          const snap = await pending;
          if (this.playing && !snap.diverged) pending = request();
          this.render(snap);
          const secs = (performance.now() - t0) / 1000;
          if (secs > 1) $("fps").textContent = `${((this.frames - f0) / secs).toFixed(1)} frames/s`;
          await new Promise((r) => requestAnimationFrame(() => r()));
        }
        // a frame already asked for when the pause came is trained: show it
        const last = await pending;
        if (last && last !== this.last) this.render(last);
      } catch (e) {
        this.fail(e);
      }
    })();
  }

  pause() {
    this.playing = false;
    $("play").textContent = "▶ Play";
    $("play").classList.remove("playing");
  }

  setWeight(layer, row, col, value) {
    this.stepper.close();
    return this.enqueue(async () => {
      this.render(await post("/api/weight", {
        session: this.session, layer, row, col, value, since: this.curves.history.length,
      }));
    });
  }

  // ----- step-through -------------------------------------------------------------------------

  pick(row) {
    $("step-index").value = row;
    this.stepThrough("example", row);
  }

  stepThrough(mode, index) {
    this.pause();
    return this.enqueue(async () => {
      const view = await post("/api/stepthrough", { session: this.session, mode, index });
      this.stepper.show(view);
      $("step-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
      $("step-panel").focus({ preventScroll: true });
      this.clearMessage();
    });
  }

  // ----- CSV ------------------------------------------------------------------------------------

  uploadFile() {
    const file = $("csv-file").files[0];
    if (!file) return;
    const box = $("upload-message");
    box.className = "upload-message";
    if (file.size > this.meta.max_upload_bytes) {
      const mb = this.meta.max_upload_bytes / (1024 * 1024);
      this.uploadError(`${file.name}: ${file.size.toLocaleString()} bytes; uploads are limited to ${mb} MB`);
      return;
    }
    box.textContent = `reading ${file.name} …`;
    this.enqueue(async () => {
      let info;
      try {
        info = await upload(file);
      } catch (e) {
        this.uploadError(e.message);
        return;
      }
      this.upload = info;
      box.textContent = `${info.name}: ${info.rows} rows, columns ${info.columns.join(", ")}`;
      const sel = $("csv-target");
      sel.innerHTML = "";
      for (const c of info.columns) sel.append(new Option(c, c));
      sel.value = info.target;
      $("csv-target-box").hidden = false;
      await this.useUploadNow(info, info.target, info.problem);
    }).finally(() => { $("csv-file").value = ""; });
  }

  uploadError(text) {
    const box = $("upload-message");
    box.textContent = text;
    box.className = "upload-message error";
    this.error(`Upload refused: ${text}`);
  }

  useUpload(info, target) {
    return this.enqueue(() => this.useUploadNow(info, target, this.params.problem));
  }

  async useUploadNow(info, target, problem) {
    const change = { dataset: "csv", csv: info.id, target, problem };
    if (problem === "regression") change.loss = "mse";
    else if (this.params.loss === "bce") change.loss = "ce"; // works for any number of classes
    const params = { ...this.params, ...change };
    try {
      const res = await post("/api/config", { session: this.session, config: params });
      this.pause();
      if (res.rebuilt) this.apply(res);
      this.clearMessage();
    } catch (e) {
      this.uploadError(e.message);
    }
  }
}

async function main() {
  let meta;
  try {
    meta = await get("/api/meta");
  } catch (e) {
    $("message").textContent = e.message;
    $("message").hidden = false;
    return;
  }
  $("version").textContent = meta.version;
  const app = new App(meta);
  window.__playground = app; // for the browser tests and the curious
  await app.init();
  document.body.classList.add("ready");
}

main();
