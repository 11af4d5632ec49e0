// logsvc web UI: sign in, live tail over the WebSocket, search, stats.
// No build step and nothing fetched from elsewhere.
"use strict";

// Every URL is relative to the page's <base>, which the server sets to
// where logsvc is mounted (a proxy's /logs/ prefix, or /).
const API = "api/proxy-logs";
const LIVE_FILTERS = ["projectId", "containerId", "serviceName", "level", "kind", "method", "source", "traceId", "status"];
const MAX_ROWS = 1000;
const PAGE = 100;
const $ = (id) => document.getElementById(id);

const ui = {
  mode: "live", paused: false, pending: [], lastId: null, socket: null, retry: 1000,
  offset: 0, total: 0, statsTimer: null, stopped: false,
};

// --- sign in ------------------------------------------------------------------

async function start() {
  const probe = await fetch(`${API}/_logs?limit=0`, { credentials: "same-origin" });
  if (probe.status === 401) return showSignIn();
  showMain();
}

function showSignIn(message) {
  $("main").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("signin-token").focus();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("signin-token").value.trim();
  const user = $("signin-user").value;
  const authorization = token ? `Bearer ${token}`
    : `Basic ${btoa(unescape(encodeURIComponent(`${user}:${$("signin-password").value}`)))}`;
  const response = await fetch("api/session", { method: "POST", headers: { Authorization: authorization }, credentials: "same-origin" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("signin-error").textContent = body.message || `Sign-in failed (${response.status})`;
    return;
  }
  const session = await response.json();
  sessionStorage.setItem("logsvc.who", session.admin ? "operator" : [session.projectId, session.containerId].filter(Boolean).join(" / "));
  $("signin-form").reset();
  showMain();
});

$("signout").addEventListener("click", async () => {
  closeSocket();
  await fetch("api/session", { method: "DELETE", credentials: "same-origin" });
  sessionStorage.removeItem("logsvc.who");
  showSignIn();
});

function showMain() {
  $("signin").hidden = true;
  $("main").hidden = false;
  $("who").textContent = sessionStorage.getItem("logsvc.who") || "";
  readFiltersFromUrl();
  const mode = new URLSearchParams(location.search).get("mode");
  setMode(["search", "slowest"].includes(mode) ? mode : "live");
}

// --- filters and the page URL --------------------------------------------------

function filters() {
  const form = $("filters");
  const out = {};
  for (const element of form.elements) {
    if (!element.name) continue;
    if (element.type === "checkbox") {
      if (element.checked) out[element.name] = out[element.name] ? `${out[element.name]},${element.value}` : element.value;
      continue;
    }
    const value = element.value.trim();
    if (value) out[element.name] = value;
  }
  return out;
}

function readFiltersFromUrl() {
  const params = new URLSearchParams(location.search);
  for (const element of $("filters").elements) {
    if (!element.name) continue;
    const value = params.get(element.name) || "";
    if (element.type === "checkbox") element.checked = value.split(",").includes(element.value);
    else element.value = value;
  }
}

function writeUrl() {
  const params = new URLSearchParams(filters());
  if (ui.mode !== "live") params.set("mode", ui.mode);
  history.replaceState(null, "", `${location.pathname}${params.toString() ? "?" + params : ""}`);
}

$("filters").addEventListener("submit", (event) => { event.preventDefault(); apply(); });
$("clear-filters").addEventListener("click", () => { $("filters").reset(); apply(); });

function apply() {
  writeUrl();
  refreshStats();
  if (ui.mode === "live") { ui.lastId = null; clearRows(); connect(); } else { ui.offset = 0; search(); }
}

function setMode(mode) {
  ui.mode = mode;
  $("mode-live").setAttribute("aria-pressed", mode === "live");
  $("mode-search").setAttribute("aria-pressed", mode === "search");
  $("mode-slowest").setAttribute("aria-pressed", mode === "slowest");
  $("pause").hidden = mode !== "live";
  $("pager").hidden = mode === "live";
  closeSocket();
  clearRows();
  apply();
  clearInterval(ui.statsTimer);
  ui.statsTimer = setInterval(() => { if (ui.mode === "live" && !document.hidden) refreshStats(); }, 10000);
}

$("mode-live").addEventListener("click", () => setMode("live"));
$("mode-search").addEventListener("click", () => setMode("search"));
$("mode-slowest").addEventListener("click", () => setMode("slowest"));

// --- live tail -----------------------------------------------------------------

function closeSocket() {
  if (ui.socket) { ui.socket.onclose = null; ui.socket.close(); ui.socket = null; }
  clearTimeout(ui.reconnectTimer);
  clearInterval(ui.countdown);
  setState("idle");
}

async function connect() {
  closeSocket();
  ui.stopped = false;
  setState(ui.lastId === null ? "connecting" : "reconnecting");
  let ticket;
  try {
    ticket = await fetch("api/ws-token", { credentials: "same-origin" });
  } catch (error) {
    return retryLater();  // the server is down or unreachable: try again
  }
  if (ticket.status === 401) return showSignIn("Your session has ended.");
  if (ticket.status === 403 || ticket.status === 410) {
    ui.stopped = true;
    return setState("stopped", ticket.status === 410 ? "scope destroyed" : "access denied");
  }
  if (!ticket.ok) return retryLater();
  const { token } = await ticket.json();
  const params = new URLSearchParams({ token });
  const wanted = filters();
  for (const name of LIVE_FILTERS) if (wanted[name]) params.set(name, wanted[name]);
  if (ui.lastId === null) params.set("replay", "50"); else params.set("lastEventId", ui.lastId);
  const target = new URL(`api/ws/logs?${params}`, document.baseURI);
  target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(target);
  ui.socket = socket;
  socket.onopen = () => { ui.retry = 1000; setState("live"); };
  socket.onmessage = (event) => {
    if (event.data === "pong") return;
    const message = JSON.parse(event.data);
    if (message.event === "reset") { ui.lastId = null; clearRows(); return; }
    if (message.event === "scope-destroyed") { ui.stopped = true; setState("stopped", "scope destroyed"); return; }
    if (message.event === "access-revoked") { ui.stopped = true; setState("stopped", message.reason); return; }
    if (message.event === "gap") { addGap(message.fromId, message.toId); return; }
    if (ui.lastId !== null && message.id <= ui.lastId) return;
    ui.lastId = message.id;
    if (ui.paused) { ui.pending.push(message); if (ui.pending.length > 5000) ui.pending.shift(); showPending(); }
    else prepend([message]);
  };
  socket.onclose = (event) => {
    ui.socket = null;
    if (ui.stopped || event.code === 4003 || event.code === 4010) { setState("stopped", event.reason || "closed"); return; }
    retryLater();
  };
  clearInterval(ui.pinger);
  ui.pinger = setInterval(() => { if (socket.readyState === WebSocket.OPEN) socket.send("ping"); }, 25000);
}

// After any outage (network, restart, 5xx, a failed ticket fetch) the tail
// tries again, waiting twice as long each time up to 10 s, and resumes
// from the last id it showed, so nothing is missed or shown twice.
function retryLater() {
  const delay = ui.retry;
  ui.retry = Math.min(ui.retry * 2, 10000);
  clearInterval(ui.countdown);
  const due = Date.now() + delay;
  const show = () => setState("reconnecting", `in ${Math.max(1, Math.ceil((due - Date.now()) / 1000))} s`);
  show();
  ui.countdown = setInterval(show, 1000);
  ui.reconnectTimer = setTimeout(() => { clearInterval(ui.countdown); connect(); }, delay);
}

function setState(state, detail) {
  $("state").className = `state ${state}`;
  // "reconnecting in 4 s", "stopped: scope destroyed"
  $("state").textContent = !detail ? state : detail.startsWith("in ") ? `${state} ${detail}` : `${state}: ${detail}`;
}

$("pause").addEventListener("click", togglePause);

function togglePause() {
  ui.paused = !ui.paused;
  $("pause").textContent = ui.paused ? "Resume" : "Pause";
  if (!ui.paused && ui.pending.length) { prepend(ui.pending); ui.pending = []; }
  showPending();
}

function showPending() {
  $("pending").textContent = ui.paused && ui.pending.length ? `${ui.pending.length} new` : "";
}

// --- search ----------------------------------------------------------------------

async function search() {
  const order = ui.mode === "slowest" ? "slowest" : filters().traceId ? "asc" : "desc";
  const params = new URLSearchParams({ ...filters(), limit: PAGE, offset: ui.offset, order });
  const response = await fetch(`${API}/_logs?${params}`, { credentials: "same-origin" });
  if (response.status === 401) return showSignIn("Your session has ended.");
  const body = await response.json();
  clearRows();
  if (!response.ok) { $("page-info").textContent = body.message; return; }
  ui.total = body.total;
  appendRows(body.entries);
  const last = Math.min(ui.offset + body.entries.length, body.total);
  $("page-info").textContent = `${body.entries.length ? ui.offset + 1 : 0}–${last} of ${body.totalExact ? "" : "at least "}${body.total}`;
  $("newer").disabled = ui.offset === 0;
  $("older").disabled = last >= body.total;
}

$("newer").addEventListener("click", () => { ui.offset = Math.max(0, ui.offset - PAGE); search(); });
$("older").addEventListener("click", () => { ui.offset += PAGE; search(); });

// --- rows ------------------------------------------------------------------------

function clearRows() { document.querySelector("#entries tbody").replaceChildren(); }

function prepend(entries) {
  const body = document.querySelector("#entries tbody");
  const list = document.querySelector(".list");
  const before = list.scrollHeight;
  const rows = entries.map(row);
  body.prepend(...rows.reverse());
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
  // A reader who scrolled down keeps looking at the same rows.
  if (list.scrollTop > 0) list.scrollTop += list.scrollHeight - before;
}

function appendRows(entries) { document.querySelector("#entries tbody").append(...entries.map(row)); }

function addGap(from, to) {
  const tr = document.createElement("tr");
  tr.className = "gap";
  tr.innerHTML = `<td colspan="10">entries ${from}–${to} may be missing (removed by retention)</td>`;
  document.querySelector("#entries tbody").prepend(tr);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function row(entry) {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  tr.dataset.id = entry.id;
  const time = new Date(entry.tsMs);
  tr.append(cell(time.toLocaleTimeString([], { hour12: false }) + "." + String(entry.tsMs % 1000).padStart(3, "0")));
  const level = cell(""); const badge = document.createElement("span");
  badge.className = `lvl ${entry.level}`; badge.textContent = entry.level; level.append(badge); tr.append(level);
  tr.append(cell(entry.kind), cell(entry.method),
    cell(entry.status ?? "", entry.status ? `st${String(entry.status)[0]}` : ""),
    cell(ms(entry.durationMs), "num"), cell(entry.url, "url"), cell(entry.serviceName), cell(entry.containerId));
  const trace = cell(""); const link = document.createElement("a");
  link.href = "#"; link.className = "trace"; link.textContent = (entry.traceId || "").slice(0, 8); link.title = "Show the whole trace";
  link.addEventListener("click", (event) => { event.preventDefault(); event.stopPropagation(); showTrace(entry.traceId); });
  trace.append(link); tr.append(trace);
  tr.addEventListener("click", () => showDetail(entry));
  tr.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(entry); });
  return tr;
}

function ms(value) {
  if (value === null || value === undefined) return "";
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)} s`;
  return `${value >= 100 ? Math.round(value) : Number(value.toFixed(1))} ms`;
}

function showTrace(traceId) {
  $("filters").reset();
  $("filters").elements.traceId.value = traceId;
  setMode("search");
}

async function showDetail(entry) {
  const params = new URLSearchParams({ afterId: entry.id - 1, limit: 1, includeRequestBody: true, includeResponseBody: true, traceId: entry.traceId });
  const response = await fetch(`${API}/_logs?${params}`, { credentials: "same-origin" });
  const full = response.ok ? ((await response.json()).entries[0] || entry) : entry;
  const body = $("detail-body");
  body.replaceChildren();
  const title = document.createElement("h3");
  title.textContent = `#${full.id} ${full.kind} ${full.method || ""} ${full.url || ""}`;
  const list = document.createElement("dl");
  for (const key of ["tsIso", "level", "status", "durationMs", "route", "projectId", "containerId", "serviceName", "source", "clientIp", "traceId", "bodyTruncated"]) {
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = full[key] ?? "–";
    list.append(dt, dd);
  }
  body.append(title, list);
  for (const [name, value] of [["data", JSON.stringify(full.data, null, 2)], ["request body", full.requestBody], ["response body", full.responseBody]]) {
    if (value === undefined || value === null) continue;
    const heading = document.createElement("h4"); heading.textContent = name;
    const pre = document.createElement("pre"); pre.textContent = value;
    body.append(heading, pre);
  }
  $("detail").hidden = false;
}

$("close-detail").addEventListener("click", () => { $("detail").hidden = true; });

// --- stats -----------------------------------------------------------------------

async function refreshStats() {
  // The tiles, the chart and the route table follow every active filter.
  const wanted = filters();
  const range = { bucket: "1m", since: "1h", ...wanted };
  if (wanted.since && !wanted.until) range.bucket = "5m";
  const [stats, histogram] = await Promise.all([
    fetch(`${API}/_logs/stats?${new URLSearchParams(wanted)}`, { credentials: "same-origin" }),
    fetch(`${API}/_logs/stats/histogram?${new URLSearchParams(range)}`, { credentials: "same-origin" }),
  ]);
  if (stats.ok) {
    const s = await stats.json();
    $("tile-total").textContent = s.total.toLocaleString();
    $("tile-errors").textContent = (s.byLevel.error || 0).toLocaleString();
    $("tile-warns").textContent = (s.byLevel.warn || 0).toLocaleString();
    $("tile-p95").textContent = ms(s.latency.p95) || "–";
    $("tile-services").textContent = Object.entries(s.byService).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, v]) => `${k} ${v}`).join(" · ") || "–";
    showRoutes(s.byRoute);
  }
  if (histogram.ok) drawChart((await histogram.json()).buckets);
}

function showRoutes(routes) {
  const body = document.querySelector("#routes tbody");
  $("routes-note").textContent = routes.length ? `(${routes.length} busiest)` : "(none)";
  body.replaceChildren(...routes.map((r) => {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.title = "Show this route's entries";
    const rate = r.total ? `${((100 * r.errors) / r.total).toFixed(1)} %` : "";
    tr.append(cell(r.route, "url"), cell(r.total.toLocaleString(), "num"),
      cell(rate, r.errors ? "num bad" : "num"), cell(ms(r.p50), "num"), cell(ms(r.p95), "num"), cell(ms(r.p99), "num"));
    const pick = () => { $("filters").elements.route.value = r.route; apply(); };
    tr.addEventListener("click", pick);
    tr.addEventListener("keydown", (event) => { if (event.key === "Enter") pick(); });
    return tr;
  }));
}

function drawChart(buckets) {
  const svg = $("chart");
  const colours = { debug: "#b0b6c3", info: "#7aa7e0", warn: "#f0b44c", error: "#e05a5a" };
  const peak = Math.max(1, ...buckets.map((b) => b.total));
  const width = 600 / Math.max(1, buckets.length);
  const parts = [];
  buckets.forEach((bucket, i) => {
    let y = 80;
    for (const level of ["debug", "info", "warn", "error"]) {
      const n = bucket.byLevel[level] || 0;
      if (!n) continue;
      const h = (n / peak) * 76;
      y -= h;
      parts.push(`<rect x="${(i * width).toFixed(2)}" y="${y.toFixed(2)}" width="${Math.max(width - 1, 1).toFixed(2)}" height="${h.toFixed(2)}" fill="${colours[level]}"><title>${new Date(bucket.tsMs).toLocaleTimeString()} ${level}: ${n}</title></rect>`);
    }
  });
  // The p95 duration as a line on its own scale (the slowest bucket at the top).
  const slowest = Math.max(0, ...buckets.map((b) => b.p95 || 0));
  if (slowest > 0) {
    const points = [];
    buckets.forEach((bucket, i) => {
      if (bucket.p95 === null || bucket.p95 === undefined) return;
      points.push(`${((i + 0.5) * width).toFixed(2)},${(78 - (bucket.p95 / slowest) * 74).toFixed(2)}`);
    });
    parts.push(`<polyline class="p95" points="${points.join(" ")}" fill="none" stroke="#6b3fa0" stroke-width="1.5" vector-effect="non-scaling-stroke"><title>p95 duration, up to ${ms(slowest)}</title></polyline>`);
  }
  svg.innerHTML = parts.join("");
}

// --- keyboard --------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) {
    if (event.key === "Escape") document.activeElement.blur();
    return;
  }
  if (event.key === "/") { event.preventDefault(); $("filters").elements.q.focus(); }
  else if (event.key === "p" && ui.mode === "live") togglePause();
  else if (event.key === "l") setMode("live");
  else if (event.key === "s") setMode("search");
  else if (event.key === "w") setMode("slowest");
  else if (event.key === "Escape") $("detail").hidden = true;
});

start();
