// FewStep σ-schedule graphs: a canvas widget that draws σ against step on a log axis.
//  - Live on every node that declares SIGMA_GRAPH = {"live": True} (bridge/sigma_graph.py): the
//    server runs the node on its widget values (GET /fewstep/sigmas, the pack's own maths) and the
//    graph is redrawn as the values change.
//  - After the run on the Preview Sigmas node (and any node declaring SIGMA_GRAPH = {}): drawn
//    from the node's UI message.
// Uses only the stable extension API: app.registerExtension, beforeRegisterNodeDef, onNodeCreated /
// onExecuted / onConfigure / onConnectionsChange chaining, addDOMWidget, api.fetchApi; works in the
// canvas and the Vue ("Nodes 2.0") renderer of frontends 1.32 to 1.58 (docs/compatibility.md).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { FAR_KEY, TRAINED_KEY, drawTrained, trainedColors } from "./trained_marks.js";

const EXTENSION = "FewStep.sigmaGraph";
const WIDGET_NAME = "fewstep_sigma_graph";
const UI_KEY = "fewstep_sigmas";
const PREVIEW_NODE = "FewStepPreviewSigmas";
const GRAPH_HEIGHT = 170;
const DEBOUNCE_MS = 120;
const RETRY_MS = 4000;
const WATCH_MS = 250;

let specsPromise = null;
function loadSpecs() {
  // One request per page; without an answer only the preview node gets a graph.
  specsPromise ??= api
    .fetchApi("/fewstep/sigma_graphs")
    .then((r) => (r.ok ? r.json() : null))
    .catch(() => null);
  return specsPromise;
}

// ---- theme ------------------------------------------------------------------------------------

let probe = null;
function toRGB(color) {
  probe ??= document.createElement("canvas").getContext("2d");
  probe.fillStyle = "#000";
  probe.fillStyle = color;
  const s = probe.fillStyle; // normalised: "#rrggbb" or "rgba(r, g, b, a)"
  if (s.startsWith("#")) return [1, 3, 5].map((i) => parseInt(s.slice(i, i + 2), 16));
  const m = s.match(/[\d.]+/g) || [0, 0, 0];
  return m.slice(0, 3).map(Number);
}

function luminance([r, g, b]) {
  const c = [r, g, b].map((v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
}

function readTheme() {
  // The palette writes its colours as CSS variables on <html>; read them at draw time.
  const css = getComputedStyle(document.documentElement);
  const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const bg = v("--comfy-input-bg", "#222222");
  const light = luminance(toRGB(bg)) > 0.4;
  return {
    light,
    bg,
    fg: v("--input-text", light ? "#222222" : "#dddddd"),
    muted: v("--descrip-text", light ? "#555555" : "#999999"),
    grid: light ? "rgba(0,0,0,0.12)" : "rgba(255,255,255,0.12)",
    border: v("--border-color", "#4e4e4e"),
    curve: light ? "#0a58b8" : "#4fb3ff",
    point: light ? "#08407f" : "#b9e2ff",
    stop: light ? "#c0142c" : "#ff6b81",
    model: light ? "#5b6470" : "#a8b0ba",
    freeu: light ? "rgba(235,140,0,0.25)" : "rgba(255,176,46,0.22)",
    freeuEdge: light ? "#b86a00" : "#ffb02e",
    error: v("--error-text", "#ff4444"),
    font: "11px sans-serif",
  };
}

// ---- formatting -------------------------------------------------------------------------------

function fmt(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return String(s);
  if (s === 0) return "0";
  const a = Math.abs(s);
  if (a >= 100) return s.toFixed(1);
  if (a >= 1) return s.toFixed(3);
  return s.toPrecision(3);
}

// ---- the widget -------------------------------------------------------------------------------

const liveGraphs = new Set();

class SigmaGraph {
  constructor(node, spec, specs) {
    this.node = node;
    this.spec = spec; // {live, widgets, models} from /fewstep/sigma_graphs; null: after-run graph
    this.specs = specs;
    this.data = null; // {sigmas, model, sigma_stop, freeu}
    this.state = spec?.live ? "loading" : "empty";
    this.message = spec?.live ? "computing schedule…" : "run the prompt to see the schedule";
    this.hover = null;
    this.lastQuery = null;
    this.retryAt = 0;
    this.seq = 0;
    this.timer = null;
    this.revision = 0;

    this.root = document.createElement("div");
    this.root.className = "fewstep-sigma-graph";
    Object.assign(this.root.style, {
      display: "flex", flexDirection: "column", width: "100%", height: "100%",
      boxSizing: "border-box", gap: "2px",
    });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, {
      width: "100%", flex: "1 1 auto", minHeight: "60px", display: "block", borderRadius: "4px",
    });
    this.caption = document.createElement("div");
    Object.assign(this.caption.style, {
      font: "10px monospace", lineHeight: "12px", maxHeight: "36px", overflowY: "auto",
      whiteSpace: "normal", wordBreak: "break-word", color: "var(--descrip-text, #999)",
    });
    this.root.append(this.canvas, this.caption);

    this.canvas.addEventListener("pointermove", (e) => this.onHover(e));
    this.canvas.addEventListener("pointerleave", () => this.setHover(null));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);

    this.widget = node.addDOMWidget(WIDGET_NAME, "fewstep_sigma_graph", this.root, {
      serialize: false,
      hideOnZoom: true,
      getMinHeight: () => GRAPH_HEIGHT,
      getValue: () => "",
      setValue: () => {},
    });
    this.widget.serialize = false;
    this.widget.onRemove = () => this.dispose();
    liveGraphs.add(this);
    this.draw();
  }

  dispose() {
    clearTimeout(this.timer);
    this.seq++;
    this.resizeObserver.disconnect();
    liveGraphs.delete(this);
  }

  // -- live schedule: widget values -> route query -------------------------------------------

  widgetValue(name) {
    const w = this.node.widgets?.find((x) => x.name === name);
    return w ? w.value : undefined;
  }

  modelFor(inputName, required) {
    // The reference model the server uses for a MODEL input: a lab model upstream says which σ
    // table it has; anything else connected is taken as SD1.5/SDXL. An optional input left open
    // stays open (the node then behaves as it would in the run).
    const slot = this.node.inputs?.findIndex((i) => i.name === inputName) ?? -1;
    const linked = slot >= 0 && this.node.inputs[slot].link != null;
    if (!linked) return required ? "sd_discrete" : null;
    const source = this.node.getInputNode?.(slot);
    if (source?.comfyClass === "FewStepLabModel") {
      const w = source.widgets?.find((x) => x.name === "schedule");
      if (w && Object.hasOwn(this.specs?.models ?? {}, w.value)) return w.value;
    }
    return "sd_discrete";
  }

  query() {
    const q = new URLSearchParams({ node: this.node.comfyClass });
    for (const name of this.spec.widgets ?? []) {
      const value = this.widgetValue(name);
      if (value !== undefined && value !== null) q.set(name, String(value));
    }
    for (const [name, required] of Object.entries(this.spec.models ?? {})) {
      const model = this.modelFor(name, required);
      if (model) q.set(name, model);
    }
    return q.toString();
  }

  scheduleUpdate(now = false) {
    if (!this.spec?.live) return;
    let query;
    try {
      query = this.query();
    } catch {
      return;
    }
    // the same query again only to retry a server that was unreachable, at most every few seconds
    if (query === this.lastQuery && !(this.state === "offline" && Date.now() > this.retryAt)) return;
    this.lastQuery = query;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fetch(query), now ? 0 : DEBOUNCE_MS);
  }

  async fetch(query) {
    const seq = ++this.seq;
    let body = null;
    let status = 0;
    try {
      const r = await api.fetchApi(`/fewstep/sigmas?${query}`);
      status = r.status;
      body = await r.json().catch(() => null);
    } catch {
      status = 0;
    }
    if (seq !== this.seq) return; // a newer request is on its way
    if (status === 200 && body?.sigmas) {
      this.setData(body, "ok");
    } else if (status === 400) {
      this.setError(body?.error ?? "invalid parameters");
    } else {
      this.retryAt = Date.now() + RETRY_MS;
      this.setError("server unreachable: graph unavailable", "offline");
    }
  }

  // -- state -----------------------------------------------------------------------------------

  setData(data, state = "ok") {
    this.data = data;
    this.state = state;
    this.message = "";
    this.hover = null;
    const s = data.sigmas;
    const head = data.model ? `${data.model.name} · ` : "";
    const stop = data.sigma_stop ? ` · σ_stop ${fmt(data.sigma_stop)}` : "";
    const freeu = data.freeu?.steps?.length
      ? ` · FreeU steps ${data.freeu.start_step}–${data.freeu.end_step - 1}` : "";
    const values = s.map((v, i) => `${i}:${fmt(v)}`).join(" ");
    this.caption.textContent = `${head}${s.length - 1} steps${stop}${freeu} | ${values}`;
    this.canvas.dataset.sigmas = JSON.stringify(s);
    this.draw();
  }

  setError(message, state = "error") {
    this.state = state;
    this.message = message;
    this.caption.textContent = message;
    this.draw();
  }

  showRun(values, extra = {}) {
    const sigmas = values.map((v) => (v === null ? NaN : Number(v)));
    const last = sigmas[sigmas.length - 1];
    this.setData({ sigmas, sigma_stop: last > 0 ? last : null, model: null, ...extra }, "ok");
  }

  // -- hover -----------------------------------------------------------------------------------

  onHover(e) {
    if (!this.layout) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - rect.left) / rect.width) * this.layout.w;
    const { x0, x1, n } = this.layout;
    const i = Math.round(((x - x0) / (x1 - x0)) * Math.max(n, 1));
    this.setHover(i >= 0 && i <= n ? i : null);
  }

  setHover(i) {
    if (i === this.hover) return;
    this.hover = i;
    const s = this.data?.sigmas;
    this.canvas.dataset.hover = i === null || !s ? "" : `step ${i}: σ = ${s[i]}`;
    this.canvas.title = this.canvas.dataset.hover;
    this.draw();
  }

  // -- drawing ---------------------------------------------------------------------------------

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth));
    const h = Math.max(1, Math.round(c.clientHeight));
    if (!c.isConnected || c.clientWidth === 0) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const t = readTheme();
    paint(ctx, w, h, t, this);
    this.revision++;
    c.dataset.state = this.state;
    c.dataset.revision = String(this.revision);
    c.dataset.theme = t.light ? "light" : "dark";
    const marks = trainedColors(t.light);
    c.dataset.colors = JSON.stringify({ bg: toRGB(t.bg), fg: toRGB(t.fg), curve: toRGB(t.curve), stop: toRGB(t.stop),
                                        trained: toRGB(marks.trained), far: toRGB(marks.far) });
  }
}

function paint(ctx, w, h, t, g) {
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = t.bg;
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = t.border;
  ctx.lineWidth = 1;
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  ctx.font = t.font;
  ctx.textBaseline = "middle";

  const data = g.data;
  const sigmas = data?.sigmas ?? [];
  if (!data || g.state === "error" || g.state === "offline" || !sigmas.length) {
    g.layout = null;
    ctx.fillStyle = g.state === "error" || g.state === "offline" ? t.error : t.muted;
    ctx.textAlign = "center";
    wrapText(ctx, g.message || "no schedule", w / 2, h / 2, w - 16, 14);
    return;
  }

  const n = sigmas.length - 1;
  const positive = sigmas.filter((s) => Number.isFinite(s) && s > 0);
  const marks = [];
  if (data.model) marks.push(data.model.sigma_min, data.model.sigma_max);
  if (data.sigma_stop) marks.push(data.sigma_stop);
  if (data.trained) marks.push(...data.trained.filter((s) => s > 0));
  const all = positive.concat(marks);
  let lo = Math.log10(Math.min(...all, 1));
  let hi = Math.log10(Math.max(...all, 1));
  if (!all.length) [lo, hi] = [-2, 1];
  lo = Math.floor(lo * 4 - 0.5) / 4;
  hi = Math.ceil(hi * 4 + 0.5) / 4;

  const x0 = 38, x1 = w - 10, y0 = 8, y1 = h - 18; // plot box
  const X = (i) => x0 + ((x1 - x0) * i) / Math.max(n, 1);
  const Y = (s) => y1 - ((y1 - y0) * (Math.log10(s) - lo)) / (hi - lo);
  g.layout = { x0, x1, y0, y1, n, w };

  // FreeU window: the steps whose model call has FreeU on
  for (const i of data.freeu?.steps ?? []) {
    ctx.fillStyle = t.freeu;
    ctx.fillRect(X(i), y0, X(i + 1) - X(i), y1 - y0);
  }
  if (data.freeu?.steps?.length) {
    ctx.fillStyle = t.freeuEdge;
    ctx.textAlign = "left";
    ctx.fillText("FreeU", X(data.freeu.start_step) + 3, y0 + 7);
  }

  // log grid: decades labelled
  ctx.textAlign = "right";
  for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {
    const y = Y(10 ** d);
    ctx.strokeStyle = t.grid;
    ctx.beginPath();
    ctx.moveTo(x0, y);
    ctx.lineTo(x1, y);
    ctx.stroke();
    ctx.fillStyle = t.muted;
    ctx.fillText(d >= 0 ? String(10 ** d) : (10 ** d).toFixed(-d), x0 - 4, y);
  }
  // x axis: step ticks
  ctx.textAlign = "center";
  ctx.fillStyle = t.muted;
  const every = Math.max(1, Math.ceil(n / 12));
  for (let i = 0; i <= n; i += every) ctx.fillText(String(i), X(i), y1 + 9);
  ctx.strokeStyle = t.border;
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x0, y1);
  ctx.lineTo(x1, y1);
  ctx.stroke();

  // model σ range and σ_stop
  const hline = (s, color, label, dash, labelX = null) => {
    if (!(s > 0)) return;
    const y = Y(s);
    ctx.save();
    ctx.strokeStyle = color;
    ctx.setLineDash(dash);
    ctx.beginPath();
    ctx.moveTo(x0, y);
    ctx.lineTo(x1, y);
    ctx.stroke();
    ctx.restore();
    // σ falls from left to right: a label in the upper half is clear of the curve on the right,
    // one in the lower half on the left
    const upper = y < (y0 + y1) / 2;
    ctx.fillStyle = color;
    ctx.textAlign = labelX === null && upper ? "right" : "left";
    const lx = labelX ?? (upper ? x1 - 2 : x0 + 4);
    ctx.fillText(label, lx, y + (y < y0 + 10 ? 7 : -7));
  };
  if (data.model) {
    hline(data.model.sigma_max, t.model, `model σ_max ${fmt(data.model.sigma_max)}`, [2, 3]);
    hline(data.model.sigma_min, t.model, `model σ_min ${fmt(data.model.sigma_min)}`, [2, 3]);
  }
  // mid-width, so it stays clear of the model σ_min label at the left edge
  if (data.sigma_stop) hline(data.sigma_stop, t.stop, `σ_stop ${fmt(data.sigma_stop)}`, [5, 3], x0 + (x1 - x0) * 0.45);

  // the schedule; a σ of 0 sits below the log axis: drawn as a drop to the floor
  ctx.strokeStyle = t.curve;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i <= n; i++) {
    const s = sigmas[i];
    if (!(s > 0)) continue;
    if (pen) ctx.lineTo(X(i), Y(s));
    else ctx.moveTo(X(i), Y(s));
    pen = true;
  }
  ctx.stroke();
  ctx.lineWidth = 1;
  for (let i = 0; i <= n; i++) {
    const s = sigmas[i];
    if (s === 0 && i > 0 && sigmas[i - 1] > 0) {
      ctx.save();
      ctx.strokeStyle = t.curve;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(X(i - 1), Y(sigmas[i - 1]));
      ctx.lineTo(X(i), y1);
      ctx.stroke();
      ctx.restore();
    }
    ctx.fillStyle = t.point;
    ctx.beginPath();
    if (s > 0) ctx.arc(X(i), Y(s), i === g.hover ? 4.5 : 2.5, 0, Math.PI * 2);
    else if (s === 0) ctx.arc(X(i), y1, i === g.hover ? 4.5 : 2.5, 0, Math.PI * 2);
    ctx.fill();
  }

  drawTrained(ctx, data, t, { X, Y, x0, x1, y0, y1 });

  // hover read-out
  if (g.hover !== null && g.hover <= n) {
    const i = g.hover;
    ctx.strokeStyle = t.muted;
    ctx.setLineDash([1, 2]);
    ctx.beginPath();
    ctx.moveTo(X(i), y0);
    ctx.lineTo(X(i), y1);
    ctx.stroke();
    ctx.setLineDash([]);
    const label = `step ${i}: σ = ${fmt(sigmas[i])}`;
    const tw = ctx.measureText(label).width + 8;
    const bx = Math.min(Math.max(X(i) + 6, x0), x1 - tw);
    ctx.fillStyle = t.bg;
    ctx.globalAlpha = 0.9;
    ctx.fillRect(bx, y0 + 14, tw, 16);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = t.border;
    ctx.strokeRect(bx + 0.5, y0 + 14.5, tw - 1, 15);
    ctx.fillStyle = t.fg;
    ctx.textAlign = "left";
    ctx.fillText(label, bx + 4, y0 + 22);
  }
}

function wrapText(ctx, text, x, y, maxWidth, lineHeight) {
  const words = String(text).split(/\s+/);
  const lines = [];
  let line = "";
  for (const word of words) {
    const next = line ? `${line} ${word}` : word;
    if (ctx.measureText(next).width > maxWidth && line) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  lines.forEach((l, k) => ctx.fillText(l, x, y + (k - (lines.length - 1) / 2) * lineHeight));
}

// ---- wiring -----------------------------------------------------------------------------------

function chain(proto, name, after) {
  const original = proto[name];
  proto[name] = function (...args) {
    const r = original?.apply(this, args);
    try {
      after.apply(this, args);
    } catch (e) {
      // A drawing problem must never break the node; keep the message for the developer.
      console.warn(`[${EXTENSION}] ${name}:`, e);
    }
    return r;
  };
}

function watchWidgets(node, graph) {
  for (const w of node.widgets ?? []) {
    if (w.name === WIDGET_NAME) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const r = original?.apply(this, args);
      graph.scheduleUpdate();
      return r;
    };
  }
}

let valueWatch = null;
function watchValues() {
  // Values set without a widget callback (another extension, a script, undo): a cheap look at each
  // live graph's query a few times a second; nothing is fetched unless it changed. Not a per-node
  // draw hook: the Vue renderer ("Nodes 2.0") never calls onDrawForeground.
  valueWatch ??= setInterval(() => {
    for (const g of liveGraphs) if (g.canvas.isConnected) g.scheduleUpdate();
  }, WATCH_MS);
}

let themeObserver = null;
function watchTheme() {
  if (themeObserver) return;
  // The palette sets CSS variables on <html> and a class on <body>; redraw when either changes.
  themeObserver = new MutationObserver(() => {
    for (const g of liveGraphs) g.draw();
  });
  themeObserver.observe(document.documentElement, { attributes: true, attributeFilter: ["style", "class"] });
  themeObserver.observe(document.body, { attributes: true, attributeFilter: ["class"] });
}

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("FewStep")) return;
    const specs = await loadSpecs();
    let spec = specs?.nodes?.[nodeData.name];
    if (!spec && nodeData.name === PREVIEW_NODE) spec = { live: false };
    if (!spec) return;
    const live = Boolean(spec.live);

    chain(nodeType.prototype, "onNodeCreated", function () {
      const graph = new SigmaGraph(this, live ? spec : null, specs);
      this.fewstepSigmaGraph = graph;
      watchWidgets(this, graph);
      const [width, height] = this.size;
      const min = this.computeSize();
      this.setSize([Math.max(width, 320), Math.max(height, min[1])]);
      if (live) graph.scheduleUpdate(true);
      watchTheme();
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const values = output?.[UI_KEY];
      const extra = Array.isArray(output?.[TRAINED_KEY])
        ? { trained: output[TRAINED_KEY], far: output[FAR_KEY] ?? [] } : {};
      if (!live && Array.isArray(values) && values.length) this.fewstepSigmaGraph?.showRun(values, extra);
    });
    if (live) {
      // Loaded values, new links (the model input) and value edits that bypass widget callbacks.
      chain(nodeType.prototype, "onConfigure", function () {
        this.fewstepSigmaGraph?.scheduleUpdate(true);
      });
      chain(nodeType.prototype, "onConnectionsChange", function () {
        this.fewstepSigmaGraph?.scheduleUpdate();
      });
      watchValues();
    }
  },
});
