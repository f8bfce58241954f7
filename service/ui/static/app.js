// The /ui page: chat with streamed tokens, then "why this answer" through <glassbox-explanation>.
// API calls are relative ("../generate" from /ui/), so the page works behind a path prefix too.
import "./glassbox-explanation.js";
import { scoresFor } from "./glassbox-explanation.js";

const $ = (id) => document.getElementById(id);
const API = new URL("../", location.href);
const view = $("view");
const state = { history: [], answer: null, gen: null, explanation: null, docResponse: null, attention: null, lens: null, models: [], docs: [] };

// ---- API ----
const key = $("key");
key.value = sessionStorage.getItem("glassbox-key") || "";
key.addEventListener("change", () => { sessionStorage.setItem("glassbox-key", key.value); loadModels(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (key.value) h.Authorization = `Bearer ${key.value}`;
  return h;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try { const body = await response.json(); if (body.error) message = body.error.message; } catch { /* not JSON */ }
  return new Error(message);
}

/** Read Server-Sent Events from a fetch() body: calls on(event, data) for each. */
async function readSSE(response, on) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).replace(/^ /, "");
      }
      if (data) on(event, JSON.parse(data));
    }
  }
}

/** POST; a streamed answer (text/event-stream) is read event by event, a JSON one returned as it is. */
async function post(path, body, onEvent) {
  busy(+1);
  try { return await postNow(path, body, onEvent); } finally { busy(-1); }
}

/** Requests in flight, on <body data-busy> (tests and styles wait on it). */
let inFlight = 0;
function busy(delta) { inFlight += delta; document.body.dataset.busy = String(inFlight); }

async function postNow(path, body, onEvent) {
  const response = await fetch(new URL(path, API), { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  if (!(response.headers.get("content-type") || "").includes("text/event-stream")) return response.json();
  let result = null, error = null;
  await readSSE(response, (event, data) => {
    if (event === "done") result = data;
    else if (event === "error") error = new Error(data.error ? data.error.message : "stream error");
    else if (onEvent) onEvent(event, data);
  });
  if (error) throw error;
  if (!result) throw new Error("the stream ended without a result");
  return result;
}

function status(text, error = false) { $("status").textContent = text; $("status").classList.toggle("error", error); }

async function loadModels() {
  busy(+1);
  try {
    const response = await fetch(new URL("models", API), { headers: headers() });
    if (!response.ok) throw await failure(response);
    state.models = await response.json();
    const select = $("model");
    select.innerHTML = state.models.map((m) => `<option value="${m.id}"${m.default ? " selected" : ""}>${m.id}${m.ready ? "" : " (loading)"}</option>`).join("");
    status(state.models.length ? "Ready." : "No model is loaded yet.");
  } catch (e) { status(`Models: ${e.message}`, true); } finally { busy(-1); }
}

// ---- documents ----
function addDoc(text = "") {
  const i = state.docs.length + 1;
  const el = document.createElement("div");
  el.className = "doc";
  el.innerHTML = `<label>Document ${i} <input class="doc-label" value="doc ${i}" aria-label="Document ${i} label"></label>
    <textarea class="doc-text" aria-label="Document ${i} text" placeholder="Paste a retrieved passage"></textarea>`;
  el.querySelector("textarea").value = text;
  $("docs").appendChild(el);
  state.docs.push(el);
  $("docs-box").open = true;
}
$("add-doc").addEventListener("click", () => addDoc());

function documents() {
  return state.docs.map((el) => ({ label: el.querySelector(".doc-label").value.trim() || "doc", text: el.querySelector(".doc-text").value.trim() }))
    .filter((d) => d.text);
}

function withDocuments(text, docs) {
  if (!docs.length) return text;
  return `Documents:\n${docs.map((d, i) => `[${i + 1}] ${d.text}`).join("\n")}\n\n${text}`;
}

// ---- chat ----
function conversation() {
  const system = $("system").value.trim();
  return [...(system ? [{ role: "system", content: system }] : []), ...state.history];
}

function logMessage(role, text) {
  const li = document.createElement("li");
  li.className = role;
  if (role === "assistant") {
    // Sentences are clickable: they select that part of the answer.
    const sentences = text.match(/[^.!?\n]+[.!?]*\s*|\n+/g) || [text];
    let at = 0;
    for (const s of sentences) {
      const span = document.createElement("span");
      span.className = "sent"; span.textContent = s; span.tabIndex = 0;
      span.dataset.start = String(at); span.dataset.end = String(at + s.length);
      span.setAttribute("role", "button");
      span.setAttribute("aria-label", `Why this sentence: ${s.trim()}`);
      at += s.length;
      li.appendChild(span);
    }
  } else li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

$("log").addEventListener("click", (e) => e.target.classList.contains("sent") && chooseSentence(e.target));
$("log").addEventListener("keydown", (e) => e.key === "Enter" && e.target.classList.contains("sent") && chooseSentence(e.target));

function chooseSentence(el) {
  const r = state.explanation;
  if (!r) return;
  document.querySelectorAll(".sent.active").forEach((s) => s.classList.remove("active"));
  el.classList.add("active");
  const start = Number(el.dataset.start), end = Number(el.dataset.end);
  const toks = r.target_tokens.map((t, i) => [i, t.offset, t.offset + t.text.length]).filter(([, a, b]) => b > start && a < end);
  if (toks.length) view.select({ start: toks[0][0], end: toks[toks.length - 1][0] + 1 });
}

$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("clear").addEventListener("click", () => {
  state.history = []; state.answer = null; state.explanation = null; state.attention = null; state.lens = null;
  $("log").innerHTML = ""; $("answer-live").innerHTML = ""; view.response = null; $("doc-shares").innerHTML = "";
});

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text) return;
  $("input").value = "";
  const docs = documents();
  state.history.push({ role: "user", content: withDocuments(text, docs) });
  state.docsUsed = docs;
  logMessage("user", text);
  const live = $("answer-live");
  live.innerHTML = "";
  $("send").disabled = true;
  status("Generating…");
  busy(+1);
  try {
    const gen = await post("generate", {
      model: $("model").value || undefined, messages: conversation(), stream: true, logprobs: true, top_logprobs: 5,
      max_new_tokens: Number($("max-tokens").value) || 24,
    }, (event, data) => {
      if (event !== "token") return;
      const t = data.token, span = document.createElement("span");
      span.className = "tk"; span.textContent = t.text;
      span.title = tokenTitle(t);
      live.appendChild(span);
    });
    state.gen = gen; state.answer = gen.text;
    state.history.push({ role: "assistant", content: gen.text });
    live.innerHTML = "";
    logMessage("assistant", gen.text);
    state.attention = null; state.lens = null;
    await explain();
  } catch (err) {
    status(err.message, true);
  } finally { $("send").disabled = false; busy(-1); }
});

function tokenTitle(t) {
  let s = `p = ${(Math.exp(t.logprob) * 100).toFixed(1)}%`;
  if (t.top_logprobs) s += "\n" + t.top_logprobs.map((a) => `${JSON.stringify(a.token)} ${(Math.exp(a.logprob) * 100).toFixed(1)}%`).join("\n");
  return s;
}

// ---- explanations ----
function explainBody(extra = {}) {
  const messages = conversation();
  const last = messages[messages.length - 1];
  const body = {
    model: $("model").value || undefined, messages: messages.slice(0, -1), target: last.content,
    methods: [$("method").value], granularity: $("granularity").value, aggregation: $("aggregation").value,
    ...extra,
  };
  if (body.granularity === "segments") {
    const docs = state.docsUsed || [];
    if (!docs.length) body.granularity = "message";
    else body.segments = docs.map((d) => ({ label: d.label, text: d.text }));
  }
  if ($("stream-explain").checked) body.stream = true;
  return body;
}

function onProgress(event, data) {
  if (event !== "progress") return;
  $("progress").hidden = false;
  $("progress-bar").max = Math.max(1, data.total);
  $("progress-bar").value = data.done;
  $("progress-text").textContent = `${data.phase} ${data.done}/${data.total} · ${data.elapsed_s.toFixed(1)} s, ~${data.eta_s.toFixed(1)} s left`;
}

async function explain() {
  if (!state.answer) return;
  busy(+1);
  try { await explainNow(); } finally { busy(-1); }
}

async function explainNow() {
  const selection = view.selection;
  const alt = $("contrast").value.trim();
  const extra = {};
  if (alt) extra.contrast = contrastText(alt, selection);
  status("Explaining…");
  const t0 = performance.now();
  try {
    const r = await post("explain", explainBody(extra), onProgress);
    mergeAlternatives(r);
    state.explanation = r;
    if ($("tab-text").getAttribute("aria-selected") === "true") showText(selection);
    const docs = state.docsUsed || [];
    if (docs.length && r.granularity !== "segments") {
      state.docResponse = await post("explain", { ...explainBody({ ...extra, granularity: "segments" }), stream: undefined });
    } else state.docResponse = docs.length ? r : null;
    renderDocShares(selection);
    status(`Explained in ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
  } catch (err) { status(err.message, true); }
  $("progress").hidden = true;
}

/** "Why X rather than Y": with a token selected, Y replaces it (the answer up to it kept); else the whole answer. */
function contrastText(alt, selection) {
  const r = state.explanation;
  if (!selection || !r) return alt;
  const tok = r.target_tokens[selection.start];
  const space = tok.text.startsWith(" ") && !alt.startsWith(" ") ? " " : "";
  return r.text.slice(0, tok.offset) + space + alt;
}

function mergeAlternatives(r) {
  if (!state.gen) return;
  r.target_tokens.forEach((t, i) => {
    const g = state.gen.tokens[i];
    if (g && g.id === t.id && g.top_logprobs) t.top_logprobs = g.top_logprobs;
  });
}

function showText(selection) {
  view.view = "text";
  view.setAttribute("method", $("method").value);
  view.response = state.explanation;
  if (selection) view.select(selection);
}

function renderDocShares(selection) {
  const box = $("doc-shares"), r = state.docResponse;
  state.docs.forEach((el) => el.classList.remove("support"));
  if (!r) { box.innerHTML = ""; return; }
  const method = Object.keys(r.methods)[0];
  const scores = scoresFor(r, method, selection);
  if (!scores) return;
  const abs = Array.from(scores.values, Math.abs), sum = abs.reduce((a, b) => a + b, 0) || 1;
  const best = abs.indexOf(Math.max(...abs));
  box.innerHTML = `<div class="label">Documents' share ${selection ? "(selected answer span)" : "(whole answer)"}</div>` +
    scores.sources.map((s, i) => `<div class="share${i === best ? " support" : ""}" data-label="${s.label}" data-share="${(abs[i] / sum).toFixed(4)}">
      <span>${s.label}</span><span class="bar" style="width:${(abs[i] / sum * 100).toFixed(1)}%" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${(abs[i] / sum * 100).toFixed(0)}" aria-label="${s.label} share"></span><span>${(abs[i] / sum * 100).toFixed(0)}%</span></div>`).join("");
  const used = state.docsUsed || [];
  const label = scores.sources[best] && scores.sources[best].label;
  const k = used.findIndex((d) => d.label === label);
  state.docs.forEach((el) => { if (el.querySelector(".doc-label").value.trim() === label && k >= 0) el.classList.add("support"); });
}

view.addEventListener("glassbox-select", (e) => {
  const sel = e.detail, r = view.response;
  $("contrast-target").textContent = sel && r && r.target_tokens ? `“${r.target_tokens.slice(sel.start, sel.end).map((t) => t.text).join("").trim()}”` : "this";
  if (view.view === "text") renderDocShares(sel);
});

for (const id of ["method", "granularity", "aggregation"]) $(id).addEventListener("change", () => { state.attention = null; explain(); });
$("intensity").addEventListener("input", (e) => (view.intensity = e.target.value));
$("cutoff").addEventListener("input", (e) => (view.cutoff = e.target.value));
$("contrast-form").addEventListener("submit", (e) => { e.preventDefault(); explain(); });

// ---- attention view ----
function attentionLayers() {
  const info = state.models.find((m) => m.id === $("model").value) || state.models[0] || { num_layers: 1, num_heads: 1 };
  const r = state.explanation;
  const cells = r ? r.target_tokens.length * (r.prompt_tokens.length + r.target_tokens.length) : 1000;
  const budget = 600_000; // numbers on the wire, so the response stays small
  const per = cells * info.num_heads;
  const want = Number($("layer").value) || 0;
  // the decoder layers with attention weights (a hybrid's others have none: asking for them is a 422)
  let layers = info.facts ? [...info.facts.attention_layers] : [...Array(info.num_layers).keys()];
  if (per * layers.length > budget) {
    const n = Math.max(1, Math.floor(budget / per)), step = Math.ceil(layers.length / n);
    layers = layers.filter((_, i) => i % step === 0);
    if (!layers.includes(want) && (!info.facts || info.facts.attention_layers.includes(want))) layers.push(want);
    layers.sort((a, b) => a - b);
  }
  return layers;
}

async function showAttention() {
  busy(+1);
  try { await showAttentionNow(); } finally { busy(-1); }
}

async function showAttentionNow() {
  view.view = "attention";
  $("attn-controls").hidden = false;
  if (!state.answer) return;
  const want = Number($("layer").value) || 0;
  if (!state.attention || !state.attention.methods.attention.params.layers.includes(want)) {
    status("Loading attention…");
    try {
      state.attention = await post("explain", {
        ...explainBody(), methods: ["attention", "attention_rollout"], granularity: "token", aggregation: "sum",
        segments: undefined, contrast: undefined,
        attention: { reduce_layers: "none", reduce_heads: "none", layers: attentionLayers() },
      }, onProgress);
      status("Attention loaded.");
    } catch (err) { status(err.message, true); return; }
    $("progress").hidden = true;
  }
  view.setAttribute("layer", String(want));
  view.setAttribute("head", String(Number($("head").value) || 0));
  view.response = state.attention;
}

// ---- logit-lens view: what each layer would answer, for every answer token ----
async function showLens() {
  view.view = "lens";
  $("attn-controls").hidden = true;
  if (!state.answer) return;
  busy(+1);
  try {
    if (!state.lens) {
      status("Loading the logit lens…");
      try {
        state.lens = await post("explain", {
          ...explainBody(), methods: ["logit_lens"], granularity: "token", segments: undefined, contrast: undefined,
          logit_lens: { top_k: 3 },
        }, onProgress);
        status("Logit lens loaded.");
      } catch (err) { status(err.message, true); return; }
      $("progress").hidden = true;
    }
    view.response = state.lens;
  } finally { busy(-1); }
}

function tab(which) {
  for (const name of ["text", "attention", "lens"]) $(`tab-${name}`).setAttribute("aria-selected", String(which === name));
  if (which === "attention") showAttention();
  else if (which === "lens") showLens();
  else { $("attn-controls").hidden = true; if (state.explanation) showText(null); }
}
$("tab-text").addEventListener("click", () => tab("text"));
$("tab-attention").addEventListener("click", () => tab("attention"));
$("tab-lens").addEventListener("click", () => tab("lens"));
$("layer").addEventListener("change", showAttention);
$("head").addEventListener("change", () => view.setAttribute("head", $("head").value));
view.addEventListener("click", () => {
  if (view.view !== "attention") return;
  $("layer").value = view.getAttribute("layer") || "0";
  $("head").value = view.getAttribute("head") || "0";
});

// ---- export ----
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
$("dl-json").addEventListener("click", () => view.response && download("explanation.json", new Blob([JSON.stringify(view.response, null, 2)], { type: "application/json" })));
$("dl-svg").addEventListener("click", () => view.response && download("explanation.svg", new Blob([view.toSVG()], { type: "image/svg+xml" })));
$("dl-png").addEventListener("click", async () => view.response && download("explanation.png", await view.toPNG()));

document.body.dataset.busy = "0";
loadModels();
