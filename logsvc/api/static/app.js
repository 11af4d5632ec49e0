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
  offset: 0, total: 0, statsTimer: null, stopped: false, routeSort: "total",
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
  sessionStorage.setItem("logsvc.who", whoText(session));
  $("signin-form").reset();
  showMain();
});

function whoText(session) {
  return session.admin && !session.projectId ? "operator"
    : [session.projectId, session.containerId].filter(Boolean).join(" / ");
}

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
  if (!$("who").textContent) {  // a new tab: ask who the session is
    fetch("api/session", { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : null)).then((session) => {
      if (session) $("who").textContent = whoText(session);
    });
  }
  readFiltersFromUrl();
  // Narrow screens: the filters fold away under their summary.
  if (window.matchMedia("(max-width: 600px)").matches) $("filters-box").open = false;
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
  const active = Object.keys(filters()).length;
  $("filters-box").querySelector("summary").textContent = active ? `Filters (${active} active)` : "Filters";
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
  // A total that is a lower bound may have more past it: a full page says so.
  $("older").disabled = body.totalExact ? last >= body.total : body.entries.length < PAGE;
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
  body.append(await contextOf(full));
  $("detail").hidden = false;
}

// The entries just before and after this one in its container (or its
// project, without one): `around` of the search API.
async function contextOf(entry) {
  const section = document.createElement("section");
  section.className = "context";
  const heading = document.createElement("h4");
  heading.textContent = `around it in ${entry.containerId || entry.projectId}`;
  section.append(heading);
  const params = new URLSearchParams({ around: entry.id, limit: 10, projectId: entry.projectId });
  if (entry.containerId) params.set("containerId", entry.containerId);
  const response = await fetch(`${API}/_logs?${params}`, { credentials: "same-origin" });
  if (!response.ok) return section;
  const list = document.createElement("ol");
  for (const near of (await response.json()).entries) {
    const item = document.createElement("li");
    item.dataset.id = near.id;
    item.textContent = `${near.tsIso.slice(11, 23)} ${near.level} ${near.status ?? near.kind} ${near.method || ""} ${near.url || ""}`;
    if (near.id === entry.id) item.className = "here";
    else {
      item.tabIndex = 0;
      item.addEventListener("click", () => showDetail(near));
      item.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(near); });
    }
    list.append(item);
  }
  section.append(list);
  return section;
}

$("close-detail").addEventListener("click", () => { $("detail").hidden = true; });

// --- stats -----------------------------------------------------------------------

async function refreshStats() {
  // The tiles, the chart and the route table follow every active filter.
  const wanted = filters();
  const range = { since: "1h", ...wanted };
  range.bucket = bucketFor(range);
  const [stats, histogram] = await Promise.all([
    fetch(`${API}/_logs/stats?${new URLSearchParams({ ...wanted, sort: ui.routeSort })}`, { credentials: "same-origin" }),
    fetch(`${API}/_logs/stats/histogram?${new URLSearchParams(range)}`, { credentials: "same-origin" }),
  ]);
  if (stats.ok) {
    const s = await stats.json();
    $("tile-total").textContent = s.total.toLocaleString();
    $("tile-errors").textContent = (s.byLevel.error || 0).toLocaleString();
    $("tile-warns").textContent = (s.byLevel.warn || 0).toLocaleString();
    $("tile-p95").textContent = ms(s.latency.p95) || "–";
    $("tile-services").textContent = Object.entries(s.byService).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, v]) => `${k} ${v}`).join(" · ") || "–";
    $("tile-services").title = $("tile-services").textContent;  // cut to the tile's width
    showRoutes(s.byRoute);
    showFacets(s);
  }
  if (histogram.ok) drawChart(await histogram.json());
}

// About 120 bars or fewer, whatever the range.
function bucketFor(range) {
  const from = parseTime(range.since), to = range.until ? parseTime(range.until) : Date.now();
  if (from === null || to === null) return "5m";
  const minutes = (to - from) / 60000;
  for (const [name, size] of [["1m", 1], ["5m", 5], ["15m", 15], ["1h", 60], ["3h", 180], ["12h", 720]]) {
    if (minutes / size <= 120) return name;
  }
  return "1d";
}

function parseTime(value) {
  if (!value) return null;
  const relative = /^(\d+)([smhd])$/.exec(value);
  if (relative) return Date.now() - Number(relative[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[relative[2]];
  if (/^\d+$/.test(value)) return Number(value);
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : parsed;
}

// A click on a header ranks the route table by that column (the API's
// `sort`): highest first, routes A–Z.
const ROUTE_SORT_NAMES = { total: "busiest", errorRate: "most failing", p50: "slowest by p50",
  p95: "slowest by p95", p99: "slowest by p99", route: "by name" };
document.querySelectorAll("#routes th[data-sort]").forEach((th) => {
  th.tabIndex = 0;
  th.title = "Rank the routes by this column";
  const pick = () => { ui.routeSort = th.dataset.sort; refreshStats(); };
  th.addEventListener("click", pick);
  th.addEventListener("keydown", (event) => { if (event.key === "Enter") pick(); });
});

function showRoutes(routes) {
  const body = document.querySelector("#routes tbody");
  document.querySelectorAll("#routes th[data-sort]").forEach((th) => {
    th.setAttribute("aria-sort", th.dataset.sort === ui.routeSort ? (th.dataset.sort === "route" ? "ascending" : "descending") : "none");
  });
  $("routes-note").textContent = routes.length ? `(${routes.length} ${ROUTE_SORT_NAMES[ui.routeSort]})` : "(none)";
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

// The chart: bars of entries per bucket stacked by level, a count axis on
// the left, the p95 duration as a line on its own axis on the right, time
// along the bottom, a tooltip per bucket, and a legend. A spike does not
// flatten the rest: when the tallest bar is over four times the usual
// (the 90th percentile), the count axis stops above the usual bars and
// taller ones are cut, marked, and show their true count in the tooltip.
// Dragging across the chart selects a time range: it becomes since/until.
const LEVEL_COLOURS = { debug: "#b0b6c3", info: "#7aa7e0", warn: "#f0b44c", error: "#e05a5a" };
const CHART = { height: 130, left: 44, right: 48, top: 8, bottom: 20 };

function niceCeiling(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function drawChart(histogram) {
  // Less data than the range (a new store, a quiet hour): the range is
  // fitted to the data, from a little before its first bucket, rather
  // than a sliver at the right edge. A range the reader chose is kept.
  let buckets = histogram.buckets;
  const first = buckets.findIndex((b) => b.total > 0);
  if (!filters().since && first > 0) buckets = buckets.slice(Math.max(0, Math.min(first - 2, buckets.length - 12)));
  const svg = $("chart");
  const width = Math.max(200, svg.clientWidth || 600);
  const { height, left, right, top, bottom } = CHART;
  const plotW = width - left - right, plotH = height - top - bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const totals = buckets.map((b) => b.total);
  const peak = Math.max(1, ...totals);
  const sorted = [...totals].sort((a, b) => a - b);
  const usual = sorted[Math.floor(0.9 * (sorted.length - 1))] || 0;
  const clipped = usual > 0 && peak > 4 * usual;
  const axisTop = niceCeiling(clipped ? usual * 1.5 : peak);
  const slot = plotW / Math.max(1, buckets.length);
  const x = (i) => left + i * slot;
  const y = (n) => top + plotH - (Math.min(n, axisTop) / axisTop) * plotH;
  const parts = [], tips = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = axisTop * fraction;
    parts.push(`<line class="grid" x1="${left}" x2="${left + plotW}" y1="${y(value)}" y2="${y(value)}"/>`,
      `<text class="axis" x="${left - 4}" y="${y(value) + 4}" text-anchor="end">${compact(value)}</text>`);
  }
  buckets.forEach((bucket, i) => {
    let base = 0;
    for (const level of ["debug", "info", "warn", "error"]) {
      const n = bucket.byLevel[level] || 0;
      if (!n || base >= axisTop) { base += n; continue; }
      const y1 = y(base + n), y0 = y(base);
      parts.push(`<rect class="bar ${level}" x="${x(i).toFixed(1)}" y="${y1.toFixed(1)}" width="${Math.max(slot - 1, 1).toFixed(1)}" height="${(y0 - y1).toFixed(1)}" fill="${LEVEL_COLOURS[level]}"/>`);
      base += n;
    }
    if (bucket.total > axisTop) {
      parts.push(`<path class="cut" d="M${x(i).toFixed(1)},${top + 4} l${(Math.max(slot - 1, 1) / 2).toFixed(1)},-4 l${(Math.max(slot - 1, 1) / 2).toFixed(1)},4" />`);
    }
    const lines = [`${new Date(bucket.tsMs).toLocaleString()}`, `${bucket.total.toLocaleString()} entries`];
    for (const level of ["error", "warn", "info", "debug"]) if (bucket.byLevel[level]) lines.push(`${level}: ${bucket.byLevel[level].toLocaleString()}`);
    if (bucket.p95 !== null && bucket.p95 !== undefined) lines.push(`p95: ${ms(bucket.p95)}`);
    tips.push(lines);
    parts.push(`<rect class="hover" data-index="${i}" x="${x(i).toFixed(1)}" y="${top}" width="${slot.toFixed(1)}" height="${plotH}"/>`);
  });
  const slowest = Math.max(0, ...buckets.map((b) => b.p95 || 0));
  if (slowest > 0) {
    const lineTop = niceCeiling(slowest);
    const points = [];
    buckets.forEach((bucket, i) => {
      if (bucket.p95 === null || bucket.p95 === undefined) return;
      points.push(`${(x(i) + slot / 2).toFixed(1)},${(top + plotH - (bucket.p95 / lineTop) * plotH).toFixed(1)}`);
    });
    parts.push(`<polyline class="p95" points="${points.join(" ")}"/>`,
      `<text class="axis p95-axis" x="${left + plotW + 4}" y="${top + 8}">${ms(lineTop)}</text>`,
      `<text class="axis p95-axis" x="${left + plotW + 4}" y="${top + plotH}">0</text>`);
  }
  const labels = Math.min(6, buckets.length, Math.max(2, Math.floor(plotW / 64)));
  for (let k = 0; k < labels; k++) {
    const i = Math.round((k * (buckets.length - 1)) / Math.max(1, labels - 1));
    const when = new Date(buckets[i].tsMs);
    const text = histogram.bucketMs >= 86400000 ? when.toLocaleDateString() : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    parts.push(`<text class="axis" x="${(x(i) + slot / 2).toFixed(1)}" y="${height - 5}" text-anchor="middle">${text}</text>`);
  }
  parts.push(`<rect id="chart-selection" class="selection" x="0" y="${top}" width="0" height="${plotH}"/>`);
  svg.innerHTML = parts.join("");
  ui.chart = { buckets, bucketMs: histogram.bucketMs, left, slot, tips };
  // Classes, not style attributes: the page's Content-Security-Policy allows no inline style.
  const legend = Object.keys(LEVEL_COLOURS).map((level) => `<span><i class="${level}"></i>${level}</span>`);
  legend.push('<span><i class="line"></i>p95 duration (right axis)</span>');
  if (clipped) legend.push(`<span class="cut-note">bars above ${compact(axisTop)} are cut (tallest ${peak.toLocaleString()})</span>`);
  legend.push('<span class="hint">drag across the chart to zoom into a time range</span>');
  $("chart-legend").innerHTML = legend.join("");
}

function compact(n) {
  return n >= 1e6 ? `${+(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${+(n / 1e3).toFixed(1)}k` : `${+n.toFixed(1)}`;
}

// Drag to select a time range.
function chartIndexAt(event) {
  const chart = ui.chart;
  if (!chart || !chart.buckets.length) return null;
  const box = $("chart").getBoundingClientRect();
  const scale = $("chart").viewBox.baseVal.width / box.width;
  const offset = (event.clientX - box.left) * scale - chart.left;
  return Math.max(0, Math.min(chart.buckets.length - 1, Math.floor(offset / chart.slot)));
}

$("chart").addEventListener("mousedown", (event) => {
  const index = chartIndexAt(event);
  if (index === null) return;
  ui.drag = { from: index, to: index };
  showSelection();
  event.preventDefault();
});
$("chart").addEventListener("mousemove", (event) => {
  showTip(event);
  if (!ui.drag) return;
  ui.drag.to = chartIndexAt(event);
  showSelection();
});
$("chart").addEventListener("mouseleave", () => { $("chart-tip").hidden = true; });

// The tooltip of the bucket under the pointer: an element of the page (an
// SVG <title> does not show in every browser, nor on touch screens).
function showTip(event) {
  const index = chartIndexAt(event), tip = $("chart-tip");
  if (index === null || !ui.chart.tips[index]) { tip.hidden = true; return; }
  tip.replaceChildren(...ui.chart.tips[index].map((line, k) => {
    const row = document.createElement(k ? "div" : "b");
    row.textContent = line;
    return row;
  }));
  tip.hidden = false;
  const box = $("chart").getBoundingClientRect(), figure = tip.parentElement.getBoundingClientRect();
  const x = event.clientX - figure.left, room = figure.width - tip.offsetWidth - 4;
  tip.style.left = `${Math.max(4, Math.min(room, x + 12))}px`;  // CSSOM: allowed by the page's CSP
  tip.style.top = `${box.top - figure.top + 4}px`;
}
document.addEventListener("mouseup", () => {
  if (!ui.drag) return;
  const { from, to } = ui.drag;
  ui.drag = null;
  const chart = ui.chart;
  const first = Math.min(from, to), last = Math.max(from, to);
  const form = $("filters").elements;
  form.since.value = readableTime(chart.buckets[first].tsMs);
  form.until.value = readableTime(chart.buckets[last].tsMs + chart.bucketMs);
  if (ui.mode === "live") setMode("search"); else apply();
});

// A time as a person reads it and the API takes it: local, to the minute
// (the second when it has one), with its offset: 2026-12-03T15:05+01:00.
function readableTime(ms) {
  const when = new Date(ms), pad = (n) => String(Math.abs(n)).padStart(2, "0");
  const offset = -when.getTimezoneOffset();
  const seconds = when.getSeconds() ? `:${pad(when.getSeconds())}` : "";
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}T${pad(when.getHours())}:${pad(when.getMinutes())}${seconds}`
    + (offset ? `${offset < 0 ? "-" : "+"}${pad(Math.trunc(offset / 60))}:${pad(offset % 60)}` : "Z");
}

function showSelection() {
  const chart = ui.chart, box = $("chart-selection");
  const first = Math.min(ui.drag.from, ui.drag.to), last = Math.max(ui.drag.from, ui.drag.to);
  box.setAttribute("x", (chart.left + first * chart.slot).toFixed(1));
  box.setAttribute("width", ((last - first + 1) * chart.slot).toFixed(1));
}

// Facets: the current query's top services, statuses and containers, each
// a click away from being a filter.
function showFacets(stats) {
  const groups = [["serviceName", "services", stats.byService], ["status", "statuses", stats.byStatus],
    ["containerId", "containers", stats.byContainer]];
  $("facets").replaceChildren(...groups.map(([field, title, counts]) => {
    const group = document.createElement("div");
    group.className = "facet";
    const heading = document.createElement("span");
    heading.textContent = title;
    group.append(heading);
    for (const [value, count] of Object.entries(counts || {}).filter(([v]) => v && v !== "null")
      .sort((a, b) => b[1] - a[1]).slice(0, 5)) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.dataset.field = field;
      chip.dataset.value = value;
      chip.textContent = `${value} ${count.toLocaleString()}`;
      chip.title = `Only ${field} ${value}`;
      chip.addEventListener("click", () => { $("filters").elements[field].value = value; apply(); });
      group.append(chip);
    }
    return group;
  }));
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

// --- alert rules -------------------------------------------------------------------

async function loadAlerts() {
  const response = await fetch(`${API}/_alerts`, { credentials: "same-origin" });
  if (!response.ok) { $("alerts-note").textContent = "(not available)"; return; }
  const { alerts } = await response.json();
  const firing = alerts.filter((rule) => rule.state === "firing").length;
  $("alerts-note").textContent = alerts.length ? `(${alerts.length}${firing ? `, ${firing} firing` : ""})` : "";
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren(...alerts.map((rule) => {
    const tr = document.createElement("tr");
    tr.className = `alert-${rule.state}`;
    const c = rule.condition;
    const shownFilters = Object.entries(rule.filters).map(([k, v]) => `${k}=${v}`).join(" ");
    const last = rule.lastNotification;
    const told = last ? `${last.status}: ${last.result || "pending"}` : "–";
    for (const text of [rule.name, rule.state, `${c.metric} ${c.op} ${c.threshold}`, rule.window, shownFilters, told]) {
      tr.append(cell(text));
    }
    const edit = document.createElement("button");
    edit.textContent = "Edit";
    edit.title = `Change the rule ${rule.name} (its filters stay)`;
    edit.addEventListener("click", () => editAlert(rule));
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.title = `Delete the rule ${rule.name}`;
    remove.addEventListener("click", () => deleteAlert(rule.id));
    const td = document.createElement("td");
    td.append(edit, remove);
    tr.append(td);
    return tr;
  }));
}

const CHANGE = { "Content-Type": "application/json", "X-Requested-With": "logsvc" };

$("alert-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("alert-form").elements;
  const editing = $("alert-form").dataset.editing;
  const rule = {
    name: form.name.value.trim(),
    condition: { metric: form.metric.value, op: form.op.value, threshold: Number(form.threshold.value) },
    window: form.window.value.trim(), for: form.for.value.trim(), webhook: form.webhook.value.trim(),
  };
  if (!editing) {
    rule.filters = filters();
    delete rule.filters.since;
    delete rule.filters.until;
  }
  const [method, path] = editing ? ["PATCH", `${API}/_alerts/${editing}`] : ["POST", `${API}/_alerts`];
  const response = await fetch(path, { method, headers: CHANGE, body: JSON.stringify(rule), credentials: "same-origin" });
  $("alert-error").textContent = response.ok ? "" : (await response.json()).message;
  if (response.ok) { form.name.value = ""; stopEditing(); loadAlerts(); }
});

function editAlert(rule) {
  const form = $("alert-form");
  const fields = form.elements;
  fields.name.value = rule.name;
  fields.metric.value = rule.condition.metric;
  fields.op.value = rule.condition.op;
  fields.threshold.value = rule.condition.threshold;
  fields.window.value = rule.window;
  fields.for.value = rule.for;
  fields.webhook.value = rule.webhook;
  form.dataset.editing = rule.id;
  form.querySelector("button[type=submit]").textContent = "Save rule";
}

function stopEditing() {
  const form = $("alert-form");
  delete form.dataset.editing;
  form.querySelector("button[type=submit]").textContent = "Alert on this search";
}

async function deleteAlert(id) {
  const response = await fetch(`${API}/_alerts/${id}`, { method: "DELETE", headers: CHANGE, credentials: "same-origin" });
  $("alert-error").textContent = response.ok ? "" : (await response.json()).message;
  loadAlerts();
}

$("alerts-box").addEventListener("toggle", () => { if ($("alerts-box").open) loadAlerts(); });
