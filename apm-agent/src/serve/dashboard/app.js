// apm's built-in dashboard: polls /api/dashboard and /traces/recent every
// 2 s and draws them with uPlot; a trace opens as a waterfall of its spans.
// Everything comes from this agent; nothing else is fetched.
"use strict";

const POLL_MS = 2000;
const state = {
  service: new URLSearchParams(location.search).get("service"),
  token: sessionStorage.getItem("apm-token"),
  charts: {},
  last: null,
  // The root operation the trace list is narrowed to (a route clicked).
  operation: null,
  traces: [],
};
// Read by the browser test: the data each chart was last given.
window.apmDashboard = { state, polls: 0 };

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");

function text(el, value) {
  el.textContent = value;
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [value, numeric] of cells) {
    const td = document.createElement("td");
    if (numeric) td.className = "num";
    td.textContent = value;
    tr.appendChild(td);
  }
  return tr;
}

function table(el, head, rows) {
  el.replaceChildren(row(head.map((h) => [h, false])));
  for (const r of rows) el.appendChild(r);
}

// One uPlot per chart id, created on first data and resized with its box.
function chart(id, labels, data, opts = {}) {
  const box = $(id);
  const width = Math.max(280, box.clientWidth - 16);
  window.apmDashboard[id] = data;
  let c = state.charts[id];
  if (!c || c.series.length !== labels.length + 1) {
    if (c) c.destroy();
    const colors = ["#2563eb", "#d97706", "#dc2626", "#059669"];
    c = new uPlot(
      {
        width,
        height: 160,
        scales: { x: { time: true }, y: opts.y || {} },
        series: [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 1.5, spanGaps: false }))),
        axes: [{}, { size: 60 }],
        legend: { show: true },
      },
      data,
      box,
    );
    state.charts[id] = c;
  } else {
    if (c.width !== width) c.setSize({ width, height: 160 });
    c.setData(data);
  }
}

function renderServices(d) {
  const list = $("services");
  list.replaceChildren();
  $("empty").hidden = d.services.length > 0;
  for (const s of d.services) {
    const li = document.createElement("li");
    li.dataset.service = s.name;
    if (s.name === d.selected) li.className = "selected";
    text(li, s.name);
    const small = document.createElement("small");
    small.textContent = `${fmt(s.rps, 1)} req/s · ${pct(s.error_ratio)} 5xx · p95 ${fmt(s.p95, 3)} s`;
    li.appendChild(small);
    li.onclick = () => {
      state.service = s.name;
      state.operation = null;
      poll();
    };
    list.appendChild(li);
  }
}

function renderService(d) {
  text($("service-name"), d.selected || "—");
  const s = d.series;
  if (!s) return;
  chart("chart-rps", ["req/s"], [s.t, s.rps]);
  chart("chart-errors", ["5xx ratio"], [s.t, s.error_ratio], { y: { range: [0, 1] } });
  chart("chart-latency", ["p50", "p95", "p99"], [s.t, s.p50, s.p95, s.p99]);
  chart("chart-concurrency", ["in flight", "connections"], [s.t, s.in_flight, s.connections]);
  chart("chart-cpu", ["cores"], [s.t, s.cpu_cores]);
  chart("chart-memory", ["MiB"], [s.t, s.memory_bytes.map((b) => b / 1048576)]);
  chart(
    "chart-saturation",
    ["CPU wait", "throttled", "fds", "accept queue"],
    [s.t, s.cpu_wait_ratio, s.cpu_throttled_ratio, s.fd_usage_ratio, s.accept_queue_ratio],
  );
  table(
    $("slowest"),
    ["route", "p50 s", "p99 s", "count"],
    d.routes.slowest.map((r) => {
      const tr = row([[`${r.method} ${r.route}`], [fmt(r.p50_seconds, 3), true], [fmt(r.p99_seconds, 3), true], [r.count, true]]);
      // A slow route: its recent slow traces.
      tr.className = "clickable";
      tr.dataset.operation = `${r.method} ${r.route}`;
      tr.onclick = () => {
        state.operation = tr.dataset.operation;
        loadTraces();
      };
      return tr;
    }),
  );
  table(
    $("errors"),
    ["route", "5xx", "count"],
    d.routes.errors.map((r) => row([[`${r.method} ${r.route}`], [r.errors_5xx, true], [r.count, true]])),
  );
  table(
    $("commands"),
    ["command", "count", "hit / miss", "errors", "p99 s"],
    d.commands.map((c) =>
      row([[c.operation], [c.count, true], [c.hits + c.misses > 0 ? `${c.hits} / ${c.misses}` : "—", true], [c.errors, true], [fmt(c.p99_seconds, 4), true]]),
    ),
  );
  table(
    $("statements"),
    ["statement", "count", "errors", "p50 s", "p99 s"],
    d.statements.map((st) =>
      row([[st.statement.length > 90 ? st.statement.slice(0, 89) + "…" : st.statement], [st.count, true], [st.errors, true], [fmt(st.p50_seconds, 4), true], [fmt(st.p99_seconds, 4), true]]),
    ),
  );
  table(
    $("outbound"),
    ["destination", "open"],
    d.outbound.map((o) => row([[o.destination], [o.active, true]])),
  );
  renderSaturation(d.saturation);
}

function renderSaturation(sat) {
  const now = sat && sat.now;
  const rows = [];
  if (now) {
    rows.push(["CPU wait", `${fmt(now.cpu_wait_ratio, 3)} s/s`]);
    rows.push(["throttled", now.cpu_limit_cores == null ? "no CPU limit" : `${pct(now.cpu_throttled_ratio)} of periods at ${fmt(now.cpu_limit_cores, 2)} cores`]);
    rows.push(["memory limit", now.memory_limit_bytes == null ? "none" : `${fmt(now.memory_limit_bytes / 1048576, 0)} MiB`]);
    rows.push(["OOM kills", now.oom_kills_total]);
    rows.push(["descriptors", `${now.open_fds} open, ${pct(now.fd_usage_ratio)} of the limit`]);
    for (const q of now.accept_queues) rows.push([`accept queue :${q.port}`, `${q.queued} of ${q.limit}`]);
  }
  table($("saturation-now"), ["", "now"], rows.map(([k, v]) => row([[k], [v, true]])));
  const dash = (v) => (v == null ? "—" : v);
  table(
    $("network"),
    ["port / destination", "retransmitted", "resets sent / received", "connect failures", "listen drops"],
    (sat ? sat.network : []).map((n) =>
      row([[n.target], [n.retransmitted, true], [`${n.resets_sent} / ${n.resets_received}`, true], [dash(n.connect_failures), true], [dash(n.listen_drops), true]]),
    ),
  );
}

function renderSide(d) {
  const health = $("health");
  const status = d.health ? d.health.status : "unknown";
  health.className = "badge " + status;
  text(health, status);
  const failing = d.health ? d.health.failing.filter((c) => c.status !== "healthy") : [];
  text($("failing"), failing.map((c) => `${c.name}: ${c.detail}`).join(" · "));
  const alerts = $("alerts");
  alerts.replaceChildren();
  const active = d.alerts.firing.concat(d.alerts.pending || []);
  if (active.length === 0) alerts.appendChild(text(document.createElement("li"), "none firing")).className = "muted";
  for (const a of active) {
    const li = document.createElement("li");
    li.className = a.state;
    const labels = Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(", ");
    const quiet = a.no_data_since ? `, no data since ${a.no_data_since}` : "";
    text(li, `${a.alertname} (${a.state}, ${a.severity}) ${labels}: ${fmt(a.value, 3)} vs ${a.threshold}${quiet}`);
    alerts.appendChild(li);
  }
  const host = d.host.series;
  chart("chart-host", ["CPU busy", "memory used"], [host.t, host.cpu, host.memory], { y: { range: [0, 1] } });
  const now = d.host.now;
  if (now) {
    table(
      $("filesystems"),
      ["filesystem", "used"],
      now.filesystems.map((f) => row([[f.mountpoint], [pct(f.used_ratio), true]])),
    );
    const psi = now.pressure
      ? Object.entries(now.pressure)
          .map(([r, p]) => `${r} ${p.some ? fmt(p.some.avg10, 1) : "–"} %`)
          .join(" · ")
      : "no PSI on this kernel";
    text($("pressure"), `${now.cpu_count} CPUs · load ${now.load_average.map((l) => fmt(l)).join(" ")} · pressure (some, avg10): ${psi}`);
  }
  const warnings = $("warnings");
  warnings.replaceChildren();
  if (d.warnings.length === 0) warnings.appendChild(text(document.createElement("li"), "none")).className = "muted";
  for (const w of d.warnings.slice().reverse()) {
    const fields = Object.entries(w.fields).map(([k, v]) => `${k}=${v}`).join(" ");
    warnings.appendChild(text(document.createElement("li"), `${new Date(w.timestamp * 1000).toLocaleTimeString()} ${w.level} ${w.message} ${fields}`));
  }
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

// The selected service's failed and slowest recent traces (of one
// operation once a route was clicked).
async function loadTraces() {
  if (!state.service) return;
  let url = "/traces/recent?limit=10&service=" + encodeURIComponent(state.service);
  if (state.operation) url += "&operation=" + encodeURIComponent(state.operation);
  let d;
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) return;
    d = await response.json();
  } catch (e) {
    return;
  }
  state.traces = d.traces;
  window.apmDashboard.traces = d.traces;
  text($("trace-filter"), state.operation ? `· ${state.operation}` : "· all operations");
  table(
    $("traces"),
    ["trace", "duration ms", "spans", "error"],
    d.traces.map((t) => {
      const tr = row([[t.name], [fmt(1000 * t.duration_seconds, 1), true], [t.spans.length, true], [t.error ? "yes" : "", false]]);
      tr.className = "clickable" + (t.error ? " error" : "");
      tr.dataset.trace = t.trace_id;
      tr.onclick = () => showTrace(t);
      return tr;
    }),
  );
}

// A trace as a waterfall: one bar per span, placed by its start and
// length within the root, indented by depth, across services.
function showTrace(t) {
  const box = $("waterfall");
  box.replaceChildren();
  box.dataset.trace = t.trace_id;
  const head = document.createElement("h3");
  text(head, `trace ${t.trace_id} · ${fmt(1000 * t.duration_seconds, 1)} ms`);
  box.appendChild(head);
  const t0 = Math.min(...t.spans.map((s) => s.start_unix_nano));
  const t1 = Math.max(...t.spans.map((s) => s.end_unix_nano));
  const total = Math.max(1, t1 - t0);
  const ids = new Set(t.spans.map((s) => s.span_id));
  const children = new Map();
  for (const s of t.spans) {
    const parent = ids.has(s.parent_span_id) ? s.parent_span_id : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const walk = (parent, depth) => {
    const list = (children.get(parent) || []).sort((a, b) => a.start_unix_nano - b.start_unix_nano);
    for (const s of list) {
      const line = document.createElement("div");
      line.className = "span-row";
      const label = document.createElement("div");
      label.className = "span-label";
      label.style.paddingLeft = `${depth}em`;
      text(label, `${s.service}: ${s.name} (${s.kind}, ${s.join})`);
      const track = document.createElement("div");
      track.className = "span-track";
      const bar = document.createElement("div");
      bar.className = "span-bar" + (s.error ? " error" : "");
      bar.style.left = `${(100 * (s.start_unix_nano - t0)) / total}%`;
      bar.style.width = `${Math.max(0.3, (100 * (s.end_unix_nano - s.start_unix_nano)) / total)}%`;
      bar.title = `${fmt(1000 * s.duration_seconds, 3)} ms`;
      track.appendChild(bar);
      const ms = document.createElement("div");
      ms.className = "span-ms";
      text(ms, fmt(1000 * s.duration_seconds, 2));
      line.append(label, track, ms);
      box.appendChild(line);
      walk(s.span_id, depth + 1);
    }
  };
  walk("", 0);
}

async function poll() {
  const url = "/api/dashboard" + (state.service ? "?service=" + encodeURIComponent(state.service) : "");
  let response;
  try {
    response = await fetch(url, { headers: headers() });
  } catch (e) {
    text($("updated"), "agent unreachable");
    return;
  }
  if (response.status === 401) {
    $("token").hidden = false;
    text($("updated"), "needs the token");
    return;
  }
  const d = await response.json();
  state.last = d;
  window.apmDashboard.polls += 1;
  if (d.selected) state.service = d.selected;
  renderServices(d);
  renderService(d);
  renderSide(d);
  loadTraces();
  text($("updated"), "updated " + new Date().toLocaleTimeString());
}

$("token").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token-input").value.trim();
  sessionStorage.setItem("apm-token", state.token);
  $("token").hidden = true;
  poll();
});

poll();
setInterval(poll, POLL_MS);
