// <glassbox-explanation>: renders a Glassbox /explain response (or a /generate response's `explanation`).
// Plain ES module, no dependencies, no network. Set `el.response = obj`; optional properties below.
// Properties: method, selection ({start, end} target tokens, or null for the whole answer), intensity (0.2..5),
// cutoff (share below which a source stays uncoloured, 0..1), view ("text" | "attention" | "lens"), layer, head.
// Events: "glassbox-select" {detail: {start, end} | null} when an answer token or span is chosen;
// "glassbox-hover" {detail: {source, score, share}}.

/** Sign conventions: signed methods get a diverging scale, magnitudes a sequential one. */
export const SIGNED = {
  input_x_gradient: true, integrated_gradients: true, occlusion: true,
  saliency: false, attention: false, attention_rollout: false,
};

// Colour-blind-safe (ColorBrewer PuOr ends): orange for positive, purple for negative / magnitude.
const POS = [230, 97, 1];
const NEG = [94, 60, 153];

/** Decode an ArrayData ({dims, shape, encoding, dtype, data, indices}) into a dense Float32Array. */
export function decodeArray(a) {
  if (!a) return null;
  const shape = a.shape;
  const size = shape.reduce((x, y) => x * y, 1);
  const last = shape.length ? shape[shape.length - 1] : 1;
  let values, indices = null;
  if (a.encoding === "base64") {
    const bytes = b64bytes(a.data);
    values = a.dtype === "float16" ? f16(bytes) : f32(bytes);
    if (a.indices != null) indices = i32(b64bytes(a.indices));
  } else {
    values = Float32Array.from(flat(a.data));
    if (a.indices != null) indices = Int32Array.from(flat(a.indices));
  }
  if (!indices) return { dims: a.dims, shape, values };
  const dense = new Float32Array(size);
  const k = values.length / Math.max(1, size / last);
  for (let i = 0; i < values.length; i++) {
    const row = Math.floor(i / k);
    dense[row * last + indices[i]] = values[i];
  }
  return { dims: a.dims, shape, values: dense };
}

function flat(x) { return Array.isArray(x) ? x.flat(Infinity) : [x]; }
function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function f32(bytes) {
  const view = new DataView(bytes.buffer), out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}
function i32(bytes) {
  const view = new DataView(bytes.buffer), out = new Int32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt32(i * 4, true);
  return out;
}
function f16(bytes) {
  const view = new DataView(bytes.buffer), out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) {
    const h = view.getUint16(i * 2, true), s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    out[i] = e === 0 ? s * 2 ** -14 * (m / 1024) : e === 31 ? (m ? NaN : s * Infinity) : s * 2 ** (e - 15) * (1 + m / 1024);
  }
  return out;
}

/**
 * The [targetRows, sources] matrix of a `tokens` array, averaging any leading axes (layer, head) unless
 * `layer`/`head` positions are given. Returns {rows, cols, values}.
 */
export function matrix(arr, { layer = null, head = null } = {}) {
  const n = arr.shape.length, rows = arr.shape[n - 2], cols = arr.shape[n - 1];
  const lead = arr.shape.slice(0, n - 2), plane = rows * cols;
  const out = new Float32Array(plane);
  const pick = lead.map((_, i) => (arr.dims[i] === "layer" ? layer : arr.dims[i] === "head" ? head : null));
  let count = 0;
  const planes = lead.reduce((x, y) => x * y, 1);
  for (let p = 0; p < planes; p++) {
    let rest = p, ok = true;
    for (let i = lead.length - 1; i >= 0; i--) {
      const idx = rest % lead[i];
      rest = Math.floor(rest / lead[i]);
      if (pick[i] != null && pick[i] !== idx) ok = false;
    }
    if (!ok) continue;
    count++;
    const base = p * plane;
    for (let j = 0; j < plane; j++) out[j] += arr.values[base + j];
  }
  if (count > 1) for (let j = 0; j < plane; j++) out[j] /= count;
  return { rows, cols, values: out };
}

/** The vector over sources for a method: the sequence vector, or the sum of the selected rows. */
export function scoresFor(response, method, selection) {
  const m = response.methods[method];
  if (!m) return null;
  if (selection && m.tokens) {
    const t = matrix(decodeArray(m.tokens));
    const out = new Float32Array(t.cols);
    let used = 0;
    response.rows.forEach((target, r) => {
      if (target >= selection.start && target < selection.end) {
        used++;
        for (let c = 0; c < t.cols; c++) out[c] += t.values[r * t.cols + c];
      }
    });
    if (used) return { values: out, sources: response.sources.slice(0, t.cols), kind: "tokens" };
  }
  if (m.sequence) {
    const s = decodeArray(m.sequence);
    const n = s.shape[s.shape.length - 1];
    const lead = s.values.length / n, out = new Float32Array(n);
    for (let p = 0; p < lead; p++) for (let c = 0; c < n; c++) out[c] += s.values[p * n + c] / lead;
    return { values: out, sources: response.sources.slice(0, response.sequence_sources), kind: "sequence" };
  }
  return null;
}

/** The CSS colour of a score; `signed` picks the diverging scale. Returns [cssColour, alpha]. */
export function colour(value, max, signed, intensity = 1) {
  if (!max || !isFinite(value)) return ["transparent", 0];
  const a = Math.min(1, (Math.abs(value) / max) * intensity);
  const rgb = signed && value < 0 ? NEG : signed ? POS : NEG;
  return [`rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a.toFixed(3)})`, a];
}

function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}
function visible(text) { return text.replace(/\n/g, "⏎\n"); }

const STYLE = `
[hidden] { display: none !important; }
:host { display: block; font: 15px/1.6 system-ui, sans-serif; color: #1b1b1f; }
.summary { margin: 0 0 .5rem; padding: .5rem .75rem; background: #f4f2f8; border-left: 4px solid #5e3c99; }
.meta { display: flex; flex-wrap: wrap; gap: .5rem; font-size: 12px; color: #555; margin: .25rem 0; }
.badge { padding: 0 .4rem; border-radius: 3px; background: #ececec; }
.badge.faith { background: #dcefe4; }
.label { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #555; margin: .6rem 0 .2rem; }
.text { white-space: pre-wrap; word-break: break-word; overflow-wrap: anywhere; }
.src, .tok { border-radius: 2px; cursor: pointer; outline-offset: 1px; }
.src:focus, .tok:focus { outline: 2px solid #1b1b1f; }
.tok.sel { box-shadow: inset 0 -3px 0 #1b1b1f; }
.tok.dragging { box-shadow: inset 0 -3px 0 #888; }
.light { color: #fff; }
.legend { display: flex; align-items: center; gap: .4rem; font-size: 12px; margin: .3rem 0; }
.legend .bar { width: 140px; height: 10px; border: 1px solid #ccc; }
.tip { position: fixed; z-index: 10; pointer-events: none; background: #1b1b1f; color: #fff; font-size: 12px;
  padding: .3rem .5rem; border-radius: 4px; max-width: 260px; display: none; white-space: pre-line; }
.heat { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.heat figure { margin: 0; max-width: 100%; overflow: auto; }
.heat figcaption { font-size: 12px; color: #555; }
canvas { image-rendering: pixelated; max-width: 100%; }
.grid { display: grid; gap: 2px; }
.grid canvas { cursor: pointer; border: 1px solid #eee; width: 100%; height: 22px; }
.grid canvas[aria-pressed="true"] { border-color: #1b1b1f; }
.lens { border-collapse: collapse; font-size: 11px; }
.lens th { font-weight: 400; color: #555; padding: 0 .3rem; white-space: nowrap; }
.lens td { padding: 0 .3rem; min-width: 3.5rem; max-width: 7rem; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; border: 1px solid #fff; cursor: default; }
.lens td.hit { font-weight: 700; }
`;

export class GlassboxExplanation extends HTMLElement {
  static get observedAttributes() { return ["method", "intensity", "cutoff", "view", "layer", "head"]; }

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    this._response = null;
    this.selection = null;
    this._drag = null;
  }

  set response(value) {
    this._response = value && value.explanation && !value.methods ? value.explanation : value;
    this.selection = null;
    this.render();
  }
  get response() { return this._response; }

  get method() {
    const r = this._response, wanted = this.getAttribute("method");
    if (!r) return wanted;
    return wanted && r.methods[wanted] ? wanted : Object.keys(r.methods)[0];
  }
  set method(v) { this.setAttribute("method", v); }
  get intensity() { return Number(this.getAttribute("intensity") || 1); }
  set intensity(v) { this.setAttribute("intensity", String(v)); }
  get cutoff() { return Number(this.getAttribute("cutoff") || 0); }
  set cutoff(v) { this.setAttribute("cutoff", String(v)); }
  get view() { return this.getAttribute("view") || "text"; }
  set view(v) { this.setAttribute("view", v); }
  get layer() { return Number(this.getAttribute("layer") || 0); }
  set layer(v) { this.setAttribute("layer", String(v)); }
  get head() { return Number(this.getAttribute("head") || 0); }
  set head(v) { this.setAttribute("head", String(v)); }

  attributeChangedCallback(name) {
    if (!this._response) return;
    if (name === "intensity" || name === "cutoff" || (name === "method" && this.view === "text")) this.recolour();
    else this.render();
  }

  /** Whether the current method's scores are signed: the response's own `signed` field, else the table. */
  signed() {
    const m = this._response.methods[this.method];
    return m && typeof m.signed === "boolean" ? m.signed : !!SIGNED[this.method];
  }

  select(selection) {
    this.selection = selection;
    this.recolour();
    this.dispatchEvent(new CustomEvent("glassbox-select", { detail: selection, bubbles: true, composed: true }));
  }

  render() {
    const r = this._response;
    if (!r) { this.root.innerHTML = `<style>${STYLE}</style><p>No explanation yet.</p>`; return; }
    const faith = r.faithfulness;
    const faithText = faith == null ? "" : typeof faith === "number" ? faith.toFixed(2)
      : Object.entries(faith).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : JSON.stringify(v)}`).join(", ");
    const timings = r.provenance && r.provenance.timings_ms ? r.provenance.timings_ms : {};
    const total = Object.entries(timings).filter(([k]) => !k.includes(".")).reduce((x, [, v]) => x + v, 0);
    this.root.innerHTML = `<style>${STYLE}</style>
      <p class="summary" part="summary" role="note" aria-label="Summary">${esc(r.summary || "")}</p>
      <div class="meta" part="meta">
        <span class="badge">${esc(this.method)}</span><span class="badge">${esc(r.granularity)} · ${esc(r.aggregation)}</span>
        ${r.attributed && r.attributed.contrast ? `<span class="badge">rather than “${esc(r.attributed.contrast)}”</span>` : ""}
        ${faith != null ? `<span class="badge faith" data-faithfulness aria-label="Faithfulness">faithfulness ${esc(faithText)}</span>` : ""}
        ${total ? `<span class="badge" title="${esc(Object.entries(timings).map(([k, v]) => `${k}: ${v} ms`).join("\n"))}">${(total / 1000).toFixed(2)} s</span>` : ""}
        ${r.cache ? `<span class="badge">cache ${esc(r.cache)}</span>` : ""}
      </div>
      <div class="tip" role="tooltip"></div>
      <div class="body"></div>`;
    this.tip = this.root.querySelector(".tip");
    const body = this.root.querySelector(".body");
    if (this.view === "attention") this.renderAttention(body);
    else if (this.view === "lens") this.renderLens(body);
    else this.renderText(body);
  }

  renderText(body) {
    const r = this._response;
    // Sources: one span each, built as one string and parsed once (no per-token layout).
    const parts = [];
    let lastMsg = null;
    r.sources.forEach((s, i) => {
      if (s.kind !== "prompt") return;
      if (s.message_index != null && s.message_index !== lastMsg && lastMsg !== null) parts.push("\n");
      else if (i > 0 && r.sources[i - 1].kind === "prompt" && r.sources[i - 1].end < s.start)
        parts.push(esc(r.prompt_text.slice(r.sources[i - 1].end, s.start).replace(/<\|[^|]*\|>/g, "")));
      lastMsg = s.message_index;
      parts.push(`<span class="src" tabindex="-1" data-i="${i}" role="button" aria-label="${esc(s.label || s.text)}">${esc(visible(s.text))}</span>`);
    });
    const toks = r.target_tokens.map((t, i) =>
      `<span class="tok" tabindex="${i === 0 ? 0 : -1}" data-t="${i}" role="button" aria-label="answer token ${i + 1}: ${esc(t.text)}">${esc(visible(t.text))}</span>`);
    body.innerHTML = `
      <div class="label" id="p-label">Prompt (coloured by attribution)</div>
      <div class="text prompt" part="prompt" role="group" aria-labelledby="p-label">${parts.join("")}</div>
      <div class="legend" part="legend"></div>
      <div class="label" id="a-label">Answer (click a token, shift-click or drag for a span; Esc for the whole answer)</div>
      <div class="text answer" part="answer" role="group" aria-labelledby="a-label">${toks.join("")}</div>
      <div class="label ctx-label" hidden>Earlier answer tokens</div>`;
    this.srcEls = Array.from(body.querySelectorAll(".src"));
    this.tokEls = Array.from(body.querySelectorAll(".tok"));
    const answer = body.querySelector(".answer"), prompt = body.querySelector(".prompt");
    prompt.addEventListener("mouseover", (e) => this.hoverSource(e));
    answer.addEventListener("mouseover", (e) => this.hoverToken(e));
    for (const el of [prompt, answer]) el.addEventListener("mouseout", () => (this.tip.style.display = "none"));
    answer.addEventListener("mousedown", (e) => {
      const t = e.target.closest(".tok");
      if (!t) return;
      e.preventDefault();
      const i = Number(t.dataset.t);
      if (e.shiftKey && this.selection) {
        this.select({ start: Math.min(this.selection.start, i), end: Math.max(this.selection.end, i + 1) });
        return;
      }
      this._drag = { from: i, to: i };
    });
    answer.addEventListener("mousemove", (e) => {
      const t = e.target.closest(".tok");
      if (!this._drag || !t) return;
      this._drag.to = Number(t.dataset.t);
      const [a, b] = [Math.min(this._drag.from, this._drag.to), Math.max(this._drag.from, this._drag.to)];
      this.tokEls.forEach((el, k) => el.classList.toggle("dragging", k >= a && k <= b));
    });
    const finish = () => {
      if (!this._drag) return;
      const [a, b] = [Math.min(this._drag.from, this._drag.to), Math.max(this._drag.from, this._drag.to)];
      this._drag = null;
      this.tokEls.forEach((el) => el.classList.remove("dragging"));
      this.select({ start: a, end: b + 1 });
    };
    answer.addEventListener("mouseup", finish);
    answer.addEventListener("mouseleave", finish);
    answer.addEventListener("keydown", (e) => this.keyToken(e));
    prompt.addEventListener("keydown", (e) => this.keySource(e));
    if (this.srcEls.length) this.srcEls[0].tabIndex = 0;
    this.recolour();
  }

  keyToken(e) {
    const t = e.target.closest(".tok");
    if (!t) return;
    const i = Number(t.dataset.t);
    const move = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
    if (move) {
      e.preventDefault();
      const j = Math.max(0, Math.min(this.tokEls.length - 1, i + move));
      t.tabIndex = -1;
      this.tokEls[j].tabIndex = 0;
      this.tokEls[j].focus();
      if (e.shiftKey && this.selection) this.select({ start: Math.min(this.selection.start, j), end: Math.max(this.selection.end, j + 1) });
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      this.select({ start: i, end: i + 1 });
    } else if (e.key === "Escape") {
      this.select(null);
    }
  }

  keySource(e) {
    const s = e.target.closest(".src");
    if (!s) return;
    const k = this.srcEls.indexOf(s);
    const move = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
    if (!move) return;
    e.preventDefault();
    const j = Math.max(0, Math.min(this.srcEls.length - 1, k + move));
    s.tabIndex = -1;
    this.srcEls[j].tabIndex = 0;
    this.srcEls[j].focus();
    this.showTip(this.srcEls[j], this.sourceTip(Number(this.srcEls[j].dataset.i)));
  }

  /** Recolour only: writes styles and data attributes, reads no layout. */
  recolour() {
    if (!this._response || this.view !== "text" || !this.srcEls) return;
    const r = this._response, method = this.method;
    const scores = scoresFor(r, method, this.selection);
    this.current = scores;
    const signed = this.signed();
    const n = scores ? scores.values.length : 0;
    let max = 0, sum = 0;
    for (let i = 0; i < n; i++) {
      const v = Math.abs(scores.values[i]);
      if (r.sources[i].kind === "prompt" && v > max) max = v;
      sum += v;
    }
    this.sumAbs = sum;
    for (const el of this.srcEls) {
      const i = Number(el.dataset.i);
      const v = i < n ? scores.values[i] : NaN;
      const share = sum && isFinite(v) ? Math.abs(v) / sum : 0;
      let [css, a] = isFinite(v) && share >= this.cutoff ? colour(v, max, signed, this.intensity) : ["transparent", 0];
      el.style.backgroundColor = css;
      el.classList.toggle("light", a > 0.55);
      el.dataset.score = isFinite(v) ? String(v) : "";
      el.dataset.share = share.toFixed(4);
      el.dataset.alpha = a.toFixed(3);
      el.setAttribute("aria-label", `${r.sources[i].label || r.sources[i].text}: score ${isFinite(v) ? v.toPrecision(3) : "n/a"}, ${(share * 100).toFixed(1)}%`);
    }
    const sel = this.selection;
    for (const el of this.tokEls) {
      const t = Number(el.dataset.t);
      el.classList.toggle("sel", !!sel && t >= sel.start && t < sel.end);
      el.setAttribute("aria-pressed", String(!!sel && t >= sel.start && t < sel.end));
    }
    const legend = this.root.querySelector(".legend");
    if (legend) {
      const grad = signed ? `linear-gradient(90deg, rgb(${NEG}), #fff, rgb(${POS}))` : `linear-gradient(90deg, #fff, rgb(${NEG}))`;
      const what = !sel ? "the whole answer" : `answer ${sel.end - sel.start > 1 ? `tokens ${sel.start + 1}–${sel.end}` : `token ${sel.start + 1}`} “${r.target_tokens.slice(sel.start, sel.end).map((t) => t.text).join("").trim()}”`;
      legend.innerHTML = `<span>${signed ? "−" + max.toPrecision(2) : "0"}</span><span class="bar" style="background:${grad}"></span>
        <span>${max ? "+" + max.toPrecision(2) : ""}</span><span>${signed ? "signed" : "magnitude"}; explaining ${esc(what)}</span>`;
    }
  }

  sourceTip(i) {
    const s = this._response.sources[i], el = this.srcEls.find((e) => Number(e.dataset.i) === i);
    const score = el && el.dataset.score !== "" ? Number(el.dataset.score).toPrecision(3) : "n/a";
    return `${s.label ? s.label + ": " : ""}${s.text.slice(0, 80)}\nscore ${score} · share ${(Number(el ? el.dataset.share : 0) * 100).toFixed(1)}%${s.role ? "\n" + s.role + " message " + s.message_index : ""}`;
  }

  hoverSource(e) {
    const el = e.target.closest(".src");
    if (!el) return;
    const i = Number(el.dataset.i);
    this.showTip(el, this.sourceTip(i));
    this.dispatchEvent(new CustomEvent("glassbox-hover", {
      detail: { source: this._response.sources[i], score: Number(el.dataset.score), share: Number(el.dataset.share) },
      bubbles: true, composed: true,
    }));
  }

  hoverToken(e) {
    const el = e.target.closest(".tok");
    if (!el) return;
    const t = this._response.target_tokens[Number(el.dataset.t)];
    let text = `“${t.text}”`;
    if (t.logprob != null) text += `\np = ${(Math.exp(t.logprob) * 100).toFixed(1)}%`;
    if (t.top_logprobs) text += "\n" + t.top_logprobs.map((a) => `${JSON.stringify(a.token)} ${(Math.exp(a.logprob) * 100).toFixed(1)}%`).join("\n");
    this.showTip(el, text);
  }

  showTip(el, text) {
    const rect = el.getBoundingClientRect();
    this.tip.textContent = text;
    this.tip.style.display = "block";
    this.tip.style.left = `${Math.max(4, Math.min(rect.left, window.innerWidth - 270))}px`;
    this.tip.style.top = `${rect.bottom + 6}px`;
  }

  // ---- attention view: heatmap (target × source) for a layer and head, layer × head grid, rollout ----
  renderAttention(body) {
    const r = this._response;
    const att = r.methods.attention && r.methods.attention.tokens ? decodeArray(r.methods.attention.tokens) : null;
    const roll = r.methods.attention_rollout && r.methods.attention_rollout.tokens ? decodeArray(r.methods.attention_rollout.tokens) : null;
    if (!att && !roll) { body.innerHTML = `<p>This response has no attention or rollout rows.</p>`; return; }
    const params = (r.methods.attention && r.methods.attention.params) || {};
    const layers = att && att.dims[0] === "layer" ? params.layers || [...Array(att.shape[0]).keys()] : null;
    const hi = att ? att.dims.indexOf("head") : -1;
    const heads = hi >= 0 ? params.heads || [...Array(att.shape[hi]).keys()] : null;
    const li = layers ? Math.max(0, layers.indexOf(this.layer)) : null;
    const hh = heads ? Math.max(0, heads.indexOf(this.head)) : null;
    body.innerHTML = `<div class="heat">
      ${att ? `<figure><figcaption>Attention, layer ${layers ? layers[li] : "mean"}, head ${heads ? heads[hh] : "mean"} (rows: answer tokens, columns: sources)</figcaption><canvas class="map" role="img"></canvas></figure>` : ""}
      ${roll ? `<figure><figcaption>Attention rollout</figcaption><canvas class="rollout" role="img" aria-label="Attention rollout heatmap"></canvas></figure>` : ""}
      ${layers && heads ? `<figure><figcaption>Layer × head (click to choose)</figcaption><div class="grid" role="grid" style="grid-template-columns: repeat(${heads.length}, minmax(12px, 36px))"></div></figure>` : ""}
    </div>`;
    const rowLabels = r.rows.map((t) => r.target_tokens[t].text.trim() || "␣");
    const colLabels = r.sources.map((s) => s.text.trim() || "␣");
    if (att) {
      const m = matrix(att, { layer: li, head: hh });
      const canvas = body.querySelector(".map");
      this.drawLabelled(canvas, m, rowLabels, colLabels);
      canvas.dataset.layer = layers ? String(layers[li]) : "mean";
      canvas.dataset.head = heads ? String(heads[hh]) : "mean";
      canvas.setAttribute("aria-label", `Attention heatmap, layer ${canvas.dataset.layer}, head ${canvas.dataset.head}, ${m.rows} by ${m.cols}`);
    }
    if (roll) this.drawLabelled(body.querySelector(".rollout"), matrix(roll), rowLabels, colLabels);
    const grid = body.querySelector(".grid");
    if (grid) {
      const frag = document.createDocumentFragment();
      layers.forEach((L, a) => heads.forEach((H, b) => {
        const c = document.createElement("canvas");
        c.dataset.layer = String(L); c.dataset.head = String(H);
        c.setAttribute("role", "gridcell"); c.tabIndex = 0;
        c.setAttribute("aria-label", `layer ${L} head ${H}`);
        c.setAttribute("aria-pressed", String(a === li && b === hh));
        this.draw(c, matrix(att, { layer: a, head: b }));
        frag.appendChild(c);
      }));
      grid.appendChild(frag);
      const choose = (c) => { this.setAttribute("layer", c.dataset.layer); this.head = Number(c.dataset.head); };
      grid.addEventListener("click", (e) => e.target.dataset.layer && choose(e.target));
      grid.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && e.target.dataset.layer && choose(e.target));
    }
  }

  // ---- logit-lens view: layers x answer tokens, each cell the layer's top token, coloured by p(target) ----
  renderLens(body) {
    const m = this._response.methods.logit_lens;
    const p = m && m.params;
    if (!p || !p.target_logprob) { body.innerHTML = `<p>This response has no logit-lens result.</p>`; return; }
    const lp = p.target_logprob, ranks = p.rank_of_target, tops = p.top_k_tokens || [], topLps = p.top_k_logprobs || [];
    const layers = p.layer_indices || [...Array(lp.length).keys()];
    const targets = p.targets.map((t) => (this._response.target_tokens[t] || { text: "?" }).text);
    const head = targets.map((t, j) => `<th scope="col" data-target="${p.targets[j]}">${esc(t.trim() || "␣")}</th>`).join("");
    const rows = [];
    for (let l = lp.length - 1; l >= 0; l--) {
      const cells = lp[l].map((v, j) => {
        const prob = Math.exp(v), a = Math.min(1, prob * this.intensity);
        const rgb = POS.map((c) => Math.round(255 + (c - 255) * a));
        const top = tops[l] && tops[l][j] ? tops[l][j][0] : "";
        const cls = [a > 0.55 ? "light" : "", ranks[l][j] === 1 ? "hit" : ""].filter(Boolean).join(" ");
        return `<td class="${cls}" data-layer="${layers[l]}" data-target="${p.targets[j]}" data-rank="${ranks[l][j]}" data-logprob="${v}"` +
          ` style="background:rgb(${rgb.join(",")})" tabindex="-1">${esc((top || "").trim() || "␣")}</td>`;
      }).join("");
      rows.push(`<tr><th scope="row">${l === 0 ? "embed" : `layer ${layers[l]}`}</th>${cells}</tr>`);
    }
    body.innerHTML = `<div class="label">Logit lens: each layer's top token (cell text) and the probability of the actual answer token (colour); bold where the answer token is already the top</div>
      <table class="lens" part="lens" aria-label="Logit lens, layers by answer tokens"><thead><tr><th></th>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
    const table = body.querySelector(".lens");
    table.addEventListener("mouseover", (e) => {
      const td = e.target.closest("td");
      if (!td) return;
      const l = lp.length - 1 - td.parentElement.rowIndex + 1, j = td.cellIndex - 1;
      let text = `${l === 0 ? "embeddings" : `layer ${layers[l]}`} · ${JSON.stringify(targets[j])}: rank ${ranks[l][j]}, p ${(Math.exp(lp[l][j]) * 100).toFixed(1)}%`;
      if (tops[l] && tops[l][j]) text += "\n" + tops[l][j].map((t, k) => `${JSON.stringify(t)} ${(Math.exp(topLps[l][j][k]) * 100).toFixed(1)}%`).join("\n");
      this.showTip(td, text);
    });
    table.addEventListener("mouseout", () => (this.tip.style.display = "none"));
  }

  /** Colour of a matrix cell: white to purple by |value| / max, scaled by the intensity. */
  cellRGB(v, max) {
    const a = max ? Math.min(1, (Math.abs(v) / max) * this.intensity) : 0;
    return [255 + (NEG[0] - 255) * a, 255 + (NEG[1] - 255) * a, 255 + (NEG[2] - 255) * a];
  }

  /** A thumbnail: one pixel per cell, stretched by CSS. */
  draw(canvas, m) {
    canvas.width = m.cols; canvas.height = m.rows;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(m.cols, m.rows);
    let max = 0;
    for (const v of m.values) if (Math.abs(v) > max) max = Math.abs(v);
    for (let i = 0; i < m.values.length; i++) {
      const c = this.cellRGB(m.values[i], max);
      img.data.set([c[0], c[1], c[2], 255], i * 4);
    }
    ctx.putImageData(img, 0, 0);
    canvas.dataset.drawn = "1";
    canvas.dataset.max = String(max);
  }

  /** A labelled heatmap (rows: answer tokens, columns: sources), cells sized to fit about 720 px. */
  drawLabelled(canvas, m, rowLabels, colLabels) {
    const cell = Math.max(3, Math.min(28, Math.floor(720 / Math.max(m.cols, m.rows))));
    const labels = cell >= 10, font = Math.min(12, cell);
    const left = labels ? 90 : 0, top = labels ? 70 : 0;
    const ratio = window.devicePixelRatio || 1;
    const w = left + m.cols * cell, h = top + m.rows * cell;
    canvas.width = Math.ceil(w * ratio); canvas.height = Math.ceil(h * ratio);
    canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
    let max = 0;
    for (const v of m.values) if (Math.abs(v) > max) max = Math.abs(v);
    for (let r = 0; r < m.rows; r++) for (let c = 0; c < m.cols; c++) {
      const rgb = this.cellRGB(m.values[r * m.cols + c], max);
      ctx.fillStyle = `rgb(${rgb[0] | 0},${rgb[1] | 0},${rgb[2] | 0})`;
      ctx.fillRect(left + c * cell, top + r * cell, cell, cell);
    }
    if (labels) {
      ctx.fillStyle = "#1b1b1f"; ctx.font = `${font}px system-ui, sans-serif`; ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      rowLabels.slice(0, m.rows).forEach((t, r) => ctx.fillText(t.slice(0, 12), left - 4, top + r * cell + cell / 2));
      ctx.textAlign = "left";
      colLabels.slice(0, m.cols).forEach((t, c) => {
        ctx.save(); ctx.translate(left + c * cell + cell / 2, top - 4); ctx.rotate(-Math.PI / 3);
        ctx.fillText(t.slice(0, 12), 0, 0); ctx.restore();
      });
    }
    canvas.dataset.drawn = "1";
    canvas.dataset.max = String(max);
    canvas.dataset.rows = String(m.rows);
    canvas.dataset.cols = String(m.cols);
  }

  // ---- export ----
  /** The current picture as an SVG string: coloured text, or the heatmaps as embedded images. */
  toSVG() {
    if (this.view === "attention") {
      const canvases = Array.from(this.root.querySelectorAll(".heat figure > canvas"));
      let x = 0, h = 0;
      const imgs = canvases.map((c) => {
        const w = c.width / (window.devicePixelRatio || 1), hh = c.height / (window.devicePixelRatio || 1), out = `<image x="${x}" y="0" width="${w}" height="${hh}" style="image-rendering:pixelated" href="${c.toDataURL()}"/>`;
        x += w + 20; h = Math.max(h, hh);
        return out;
      });
      return `<svg xmlns="http://www.w3.org/2000/svg" width="${x}" height="${h}">${imgs.join("")}</svg>`;
    }
    const width = 800, cw = 8.4, lh = 22, lines = [];
    let x = 10, y = 40;
    const put = (el, bold) => {
      for (const [k, piece] of el.textContent.split("\n").entries()) {
        if (k > 0) { x = 10; y += lh; }
        const w = piece.length * cw;
        if (x + w > width - 10 && x > 10) { x = 10; y += lh; }
        const bg = el.style ? el.style.backgroundColor : "";
        if (bg && bg !== "transparent") lines.push(`<rect x="${x}" y="${y - 15}" width="${w}" height="19" fill="${bg}"/>`);
        lines.push(`<text x="${x}" y="${y}"${bold ? ' font-weight="bold"' : ""}>${esc(piece)}</text>`);
        x += w;
      }
    };
    for (const el of this.srcEls) put(el);
    x = 10; y += lh * 2;
    for (const el of this.tokEls) put(el, el.classList.contains("sel"));
    const summary = `<text x="10" y="20" font-style="italic">${esc((this._response.summary || "").slice(0, 110))}</text>`;
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 20}" font-family="monospace" font-size="14"><rect width="100%" height="100%" fill="#fff"/>${summary}${lines.join("")}</svg>`;
  }

  /** The current picture as a PNG Blob (the SVG rasterised on a canvas). */
  async toPNG() {
    const svg = this.toSVG();
    const img = new Image();
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg);
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width; c.height = img.height;
    c.getContext("2d").drawImage(img, 0, 0);
    return await new Promise((ok) => c.toBlob(ok, "image/png"));
  }
}

if (!customElements.get("glassbox-explanation")) customElements.define("glassbox-explanation", GlassboxExplanation);
