// AION Stream control panel: quality charts, entity heatmap, LoRA job card and trigger settings.
// Plain ES2020, no dependencies: the binary embeds this file and the machines are offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG_NS = "http://www.w3.org/2000/svg";
const FINAL_STATES = ["completed", "failed", "cancelled"];
const SETTINGS_FIELDS = ["tau_fallback", "tau_ndcg", "min_answers", "min_judged", "cooldown_hours"];

const state = { tenant: null, window: "tumbling_1h", token: "", csrf: "", settings: null };

// ---------------------------------------------------------------------------------------------
// API access and the error banner

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  // Loopback mode (no tokens): the server put its CSRF secret in this page; changes must carry it.
  if (state.csrf && method !== "GET") headers["X-Aion-Csrf"] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the raw text for the message */ }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || text || `${res.status} ${res.statusText}`);
  return data;
}

// One message per source, so a successful poll of one route does not hide another route's failure.
const bannerErrors = new Map();
function reportError(source, err) {
  if (err) bannerErrors.set(source, `${source}: ${err.message || err}`);
  else bannerErrors.delete(source);
  const banner = $("#banner");
  banner.hidden = bannerErrors.size === 0;
  banner.textContent = [...bannerErrors.values()].join(" · ");
}

// ---------------------------------------------------------------------------------------------
// Formatting (all times in UTC, like the window boundaries in the data)

const pad = (n) => String(n).padStart(2, "0");
const fmtDay = (d) => `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
const fmtHour = (d) => `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
const fmtTime = (iso) => { const d = new Date(iso); return `${d.getUTCFullYear()}-${fmtDay(d)} ${fmtHour(d)} UTC`; };
const fmtNum = (v, digits = 3) => (v == null ? "–" : Number(v).toFixed(digits));

function fmtDuration(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

// ---------------------------------------------------------------------------------------------
// SVG line charts

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function withTitle(el, text) {
  el.appendChild(svg("title", {}, text));
  return el;
}

const W = 800, H = 190;
const M = { left: 40, right: 58, top: 12, bottom: 34 };

// Draws one metric (`key` of each point) with its threshold and the trigger markers.
function drawChart(el, points, key, label, threshold, triggers) {
  el.replaceChildren();
  const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
  const y = (v) => M.top + (1 - Math.max(0, Math.min(1, v))) * plotH;

  // y axis 0..1 with gridlines
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    el.appendChild(svg("line", { class: "grid", x1: M.left, x2: M.left + plotW, y1: y(t), y2: y(t) }));
    el.appendChild(svg("text", { class: "tick", x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, t.toFixed(2)));
  }

  // the threshold is worth seeing even before the first window closes
  if (threshold != null) {
    el.appendChild(svg("line", { class: "threshold", x1: M.left, x2: M.left + plotW, y1: y(threshold), y2: y(threshold) }));
    el.appendChild(svg("text", { class: "threshold-label", x: M.left + plotW + 4, y: y(threshold) + 4 },
      `τ ${fmtNum(threshold, 2)}`));
  }

  if (points.length === 0) {
    el.appendChild(svg("text", { class: "empty", x: M.left + plotW / 2, y: M.top + plotH / 2, "text-anchor": "middle" },
      "no data yet"));
    return;
  }

  // x domain: the points plus the trigger markers, so a manual trigger after the last window shows too
  const times = points.map((p) => Date.parse(p.window_start));
  const markers = triggers.map((t) => ({ t: Date.parse(t.window_start || t.at), trig: t })).filter((m) => !isNaN(m.t));
  let lo = Math.min(...times, ...markers.map((m) => m.t));
  let hi = Math.max(...times, ...markers.map((m) => m.t));
  if (hi === lo) { lo -= 3600e3; hi += 3600e3; } // one window: centre it instead of dividing by zero
  const x = (t) => M.left + ((t - lo) / (hi - lo)) * plotW;

  // x ticks: a whole number of hours or days apart (aligned in UTC), at most about seven of them;
  // the date is written under the first tick and wherever the day changes
  const HOUR = 3600e3, DAY = 24 * HOUR;
  const step = [1, 2, 3, 6, 12, 24, 48, 168].map((h) => h * HOUR).find((st) => (hi - lo) / st <= 6)
    || Math.ceil((hi - lo) / 6 / DAY) * DAY;
  let lastDay = "";
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) {
    const d = new Date(t), xi = x(t);
    el.appendChild(svg("line", { class: "axis", x1: xi, x2: xi, y1: M.top + plotH, y2: M.top + plotH + 4 }));
    const day = fmtDay(d);
    if (step < DAY) el.appendChild(svg("text", { class: "tick", x: xi, y: M.top + plotH + 16, "text-anchor": "middle" }, fmtHour(d)));
    if (day !== lastDay || step >= DAY) {
      el.appendChild(svg("text", { class: "tick", x: xi, y: M.top + plotH + (step < DAY ? 29 : 16), "text-anchor": "middle" }, day));
    }
    lastDay = day;
  }
  el.appendChild(svg("line", { class: "axis", x1: M.left, x2: M.left + plotW, y1: M.top + plotH, y2: M.top + plotH }));

  for (const m of markers) {
    const xm = x(m.t);
    withTitle(el.appendChild(svg("line", { class: "trigger", x1: xm, x2: xm, y1: M.top, y2: M.top + plotH })),
      `trigger: ${m.trig.reason} · ${m.trig.trigger_id} · ${fmtTime(m.trig.window_start || m.trig.at)}`);
  }

  // the line, broken into segments at null values so a missing value shows as a gap
  let d = "", pen = false;
  points.forEach((p, i) => {
    const v = p[key];
    if (v == null) { pen = false; return; }
    d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  });
  if (d) el.appendChild(svg("path", { class: "series", d }));

  points.forEach((p, i) => {
    const v = p[key];
    if (v == null) return;
    withTitle(el.appendChild(svg("circle", { class: "point", cx: x(times[i]), cy: y(v), r: 3 })),
      `${fmtTime(p.window_start)}\n${label} ${fmtNum(v)} (${p.retrievals ?? 0} retrievals, ${p.answers ?? 0} answers)`);
  });
}

// ---------------------------------------------------------------------------------------------
// Entity heatmap: a CSS grid, entities as rows, hours as columns

function drawHeatmap(data) {
  const root = $("#heatmap");
  root.replaceChildren();
  const hours = data.hours || [], entities = data.entities || [];
  if (hours.length === 0 || entities.length === 0) {
    root.appendChild(Object.assign(document.createElement("p"), { className: "empty", textContent: "no data yet" }));
    return;
  }
  const max = Math.max(1, ...entities.flatMap((e) => e.counts || []));
  const grid = document.createElement("div");
  grid.className = "heat-grid";
  grid.style.gridTemplateColumns = `minmax(9em, max-content) repeat(${hours.length}, minmax(6px, 1fr))`;

  const div = (cls, text) => Object.assign(document.createElement("div"), { className: cls, textContent: text ?? "" });
  // header row: at most about eight hour labels, so they never overlap
  grid.appendChild(div("heat-corner"));
  const every = Math.max(1, Math.ceil(hours.length / 8));
  hours.forEach((h, i) => grid.appendChild(div("heat-hour", i % every === 0 ? fmtHour(new Date(h)) : "")));

  for (const e of entities) {
    const name = div("heat-entity", e.entity);
    name.appendChild(div("type", e.type));
    grid.appendChild(name);
    hours.forEach((h, i) => {
      const n = (e.counts || [])[i] || 0;
      const cell = div("cell");
      // square root so a single hot hour does not wash out everything else
      cell.style.backgroundColor = n ? `rgba(37, 99, 235, ${(0.12 + 0.88 * Math.sqrt(n / max)).toFixed(3)})` : "";
      cell.title = `${e.entity} (${e.type}) · ${fmtTime(h)} · ${n}`;
      grid.appendChild(cell);
    });
  }
  root.appendChild(grid);
}

// ---------------------------------------------------------------------------------------------
// Data refresh: charts, triggers, heatmap (every 10 s and on tenant/window change)

let lastChartData = { points: [], triggers: [] };

function drawCharts() {
  const { points, triggers } = lastChartData;
  const s = state.settings || {};
  drawChart($("#ndcg-chart"), points, "ndcg_mean", "nDCG", s.tau_ndcg, triggers);
  drawChart($("#fallback-chart"), points, "fallback_rate", "fallback", s.tau_fallback, triggers);
}

async function refreshData() {
  const tenant = state.tenant, win = state.window;
  if (!tenant) return;
  const q = `tenant=${encodeURIComponent(tenant)}`;
  const [metrics, triggers, heatmap, settings] = await Promise.allSettled([
    api(`/api/ai/metrics?${q}&window=${encodeURIComponent(win)}`),
    api(`/api/ai/triggers?${q}`),
    api(`/api/ai/heatmap?${q}`),
    api("/api/ai/settings"),
  ]);
  // the user switched tenant or window while these were in flight: their answers are stale
  if (tenant !== state.tenant || win !== state.window) return;

  reportError("metrics", metrics.reason);
  reportError("triggers", triggers.reason);
  reportError("heatmap", heatmap.reason);
  reportError("settings", settings.reason);
  if (settings.value) state.settings = settings.value;
  if (metrics.value) lastChartData.points = metrics.value.points || [];
  if (triggers.value) lastChartData.triggers = triggers.value.triggers || [];
  drawCharts();
  if (heatmap.value) drawHeatmap(heatmap.value);
}

// ---------------------------------------------------------------------------------------------
// Training job card (polled every 2 s)

function renderJob(status) {
  const current = status.running || status.last;
  const jobState = current ? current.state : "idle";
  const stateEl = $("#job-state");
  stateEl.textContent = jobState;
  stateEl.className = `state ${jobState}`;

  const step = current?.step, total = current?.total_steps;
  const frac = total ? Math.min(1, (step || 0) / total) : jobState === "completed" ? 1 : 0;
  $("#job-bar").style.width = `${(frac * 100).toFixed(1)}%`;

  const rows = [];
  if (current) {
    rows.push(["job", current.job_id]);
    if (total) rows.push(["step", `${step ?? 0} / ${total}`]);
    if (current.loss != null) rows.push(["loss", fmtNum(current.loss, 4)]);
    if (current.tokens_per_s != null) rows.push(["tokens/s", fmtNum(current.tokens_per_s, 1)]);
    if (!FINAL_STATES.includes(jobState) && current.eta_s != null) rows.push(["ETA", fmtDuration(current.eta_s)]);
    if (["failed", "cancelled"].includes(jobState) && current.reason) rows.push(["reason", current.reason]);
  }
  const last = status.last;
  if (last && (last.held_out_before != null || last.held_out_after != null)) {
    rows.push(["held-out", `${fmtNum(last.held_out_before, 4)} → ${fmtNum(last.held_out_after, 4)}`]);
  }
  if (last && last.promoted != null) rows.push(["promoted", last.promoted ? "yes" : "no"]);
  if (last && last.adapter) rows.push(["adapter", last.adapter]);

  $("#job-stats").replaceChildren(...rows.flatMap(([k, v]) => [
    Object.assign(document.createElement("dt"), { textContent: k }),
    Object.assign(document.createElement("dd"), { textContent: String(v) }),
  ]));

  // finished jobs, newest first, one line per job (the history may hold several statuses of a job)
  const byJob = new Map();
  for (const s of status.history || []) {
    if (!FINAL_STATES.includes(s.state)) continue;
    const seen = byJob.get(s.job_id);
    if (!seen || s.at > seen.at) byJob.set(s.job_id, s);
  }
  const finished = [...byJob.values()].sort((a, b) => (a.at < b.at ? 1 : -1));
  const items = finished.map((s) => {
    const li = document.createElement("li");
    const parts = [fmtTime(s.at), s.job_id];
    if (s.held_out_before != null || s.held_out_after != null) {
      parts.push(`held-out ${fmtNum(s.held_out_before, 4)} → ${fmtNum(s.held_out_after, 4)}`);
    }
    if (s.promoted != null) parts.push(s.promoted ? "promoted" : "not promoted");
    if (s.reason) parts.push(s.reason);
    li.append(Object.assign(document.createElement("span"), { className: `state ${s.state}`, textContent: s.state }),
      ` ${parts.join(" · ")}`);
    return li;
  });
  if (items.length === 0) items.push(Object.assign(document.createElement("li"), { className: "empty", textContent: "none yet" }));
  $("#job-history").replaceChildren(...items);
}

async function refreshJob() {
  const tenant = state.tenant;
  if (!tenant) return;
  try {
    const status = await api(`/api/ai/train/lora/status?tenant=${encodeURIComponent(tenant)}`);
    if (tenant !== state.tenant) return;
    reportError("job status", null);
    renderJob(status);
  } catch (err) {
    reportError("job status", err);
  }
}

async function jobAction(action) {
  const errEl = $("#job-error");
  errEl.textContent = "";
  const button = $(`#${action}`);
  button.disabled = true; // against double submits while the request is in flight
  try {
    await api(`/api/ai/train/lora/${action}`, { method: "POST", body: action === "start"
      ? { tenant_id: state.tenant, note: "from the panel" }
      : { tenant_id: state.tenant } });
  } catch (err) {
    errEl.textContent = err.message;
  } finally {
    button.disabled = false;
  }
  await refreshJob();
}

// ---------------------------------------------------------------------------------------------
// Settings form

function fillSettings(s) {
  const form = $("#settings");
  for (const f of SETTINGS_FIELDS) if (s[f] != null) form.elements[f].value = s[f];
}

async function saveSettings(ev) {
  ev.preventDefault();
  const form = ev.target, status = $("#settings-status");
  const body = {};
  for (const f of SETTINGS_FIELDS) {
    const input = form.elements[f];
    // a number input reports text it cannot parse as "", which would silently skip the field
    if (input.validity.badInput) {
      status.textContent = `${f} is not a number`;
      status.className = "error";
      return;
    }
    if (input.value !== "") body[f] = Number(input.value);
  }
  status.className = "";
  status.textContent = "saving…";
  try {
    state.settings = await api("/api/ai/settings", { method: "PUT", body });
    fillSettings(state.settings);
    status.textContent = "saved";
    status.className = "ok";
    drawCharts(); // the threshold lines follow the new values at once
  } catch (err) {
    status.textContent = err.message;
    status.className = "error";
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up and polling

// Runs fn, then again `ms` after it finished, so slow responses never pile up.
function every(ms, fn) {
  const tick = async () => {
    try { await fn(); } catch (err) { reportError("panel", err); }
    setTimeout(tick, ms);
  };
  tick();
}

// The token is typed into the Token field and kept for this tab only (sessionStorage), never in a
// URL: URLs end up in history, logs and Referer headers.
function initToken() {
  const input = $("#token");
  state.csrf = (document.querySelector('meta[name="aion-csrf"]') || {}).content || "";
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : "") + location.hash);
    reportError("token", new Error("a token in the URL is ignored: paste it into the Token field"));
  }
  state.token = sessionStorage.getItem("aion.token") || "";
  input.value = state.token;
  input.addEventListener("change", () => {
    state.token = input.value.trim();
    sessionStorage.setItem("aion.token", state.token);
    reportError("token", null);
    loadSettings();
  });
}

function loadSettings() {
  api("/api/ai/settings").then((s) => { state.settings = s; fillSettings(s); drawCharts(); reportError("settings", null); },
    (err) => reportError("settings", err));
}

async function loadTenants() {
  for (;;) {
    try {
      const { tenants } = await api("/api/ai/tenants");
      if (tenants && tenants.length) {
        reportError("tenants", null);
        return tenants;
      }
      reportError("tenants", new Error("no tenants yet, retrying"));
    } catch (err) {
      reportError("tenants", err);
    }
    await new Promise((r) => setTimeout(r, 5000));
  }
}

async function main() {
  initToken();
  drawCharts(); // axes and "no data yet" until the first answer
  drawHeatmap({});
  $("#window").addEventListener("change", (e) => { state.window = e.target.value; refreshData(); });
  $("#tenant").addEventListener("change", (e) => {
    state.tenant = e.target.value;
    $("#job-error").textContent = "";
    refreshData();
    refreshJob();
  });
  $("#start").addEventListener("click", () => jobAction("start"));
  $("#cancel").addEventListener("click", () => jobAction("cancel"));
  $("#settings").addEventListener("submit", saveSettings);

  loadSettings();

  const tenants = await loadTenants();
  $("#tenant").replaceChildren(...tenants.map((t) => new Option(t, t)));
  state.tenant = tenants[0];
  state.window = $("#window").value;
  every(2000, refreshJob);
  every(10000, refreshData);
}

main().catch((err) => reportError("panel", err));
