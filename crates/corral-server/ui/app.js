// corral web UI. One file, no framework, no build step.
//
// Rules this file keeps:
// - Every element is built with `el()`, and every piece of data goes in as text
//   (`textContent`, attribute values): nothing from the server is ever parsed as markup.
// - Every request goes through `api()`, which sends the session's CSRF token and the chosen
//   environment; the session itself is an HttpOnly cookie this script cannot read.
// - Pages do not poll: they follow `/v1/live` (server-sent events) and read their data again
//   when it says something changed.
"use strict";

const S = {
  session: null,        // {user, admin, roles, csrf}
  env: localStorage.getItem("corral.env") || "",
  live: null,           // EventSource
  refresh: null,        // the current page's reload, called on live changes
  cleanup: [],          // what the current page must stop when left (log streams)
  timer: null,
};

// ---- DOM ------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const $ = (id) => document.getElementById(id);
function show(...nodes) { const m = $("main"); m.replaceChildren(...nodes); }
function table(headers, rows, attrs) {
  return el("div", { class: "scroll" }, el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", typeof h === "string" ? {} : h.attrs, typeof h === "string" ? h : h.text)))),
    el("tbody", {}, rows)));
}
function stateClass(s) {
  if (["active", "running", "healthy", "available", "converged"].includes(s)) return "state good";
  if (["disconnected", "exited", "dead", "missing", "failed", "unhealthy", "unavailable"].includes(s)) return "state bad";
  return "state warn";
}
function since(iso) {
  if (!iso) return "";
  const secs = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (secs < 90) return `${Math.round(secs)} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h`;
  return `${Math.round(secs / 86400)} d`;
}
function bytes(n) {
  if (!n) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function dots(ready, desired) {
  if (desired > 24) return el("span", { class: "dots" }, `${ready}/${desired}`);
  const out = [];
  for (let i = 0; i < desired; i++) out.push(el("span", { class: i < ready ? "dot ready" : "dot", title: `${ready} of ${desired} ready` }));
  return el("span", { class: "dots", "data-ready": ready, "data-desired": desired }, out, ` ${ready}/${desired}`);
}
function errorBox(err) { return el("p", { class: "error", role: "alert" }, String(err && err.message || err)); }

// ---- API ------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(method, path, body, raw) {
  const headers = {};
  if (S.session) headers["x-corral-csrf"] = S.session.csrf;
  if (S.env) headers["corral-environment"] = S.env;
  if (body !== undefined) headers["content-type"] = "application/json";
  const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" };
  // A connection the server closed (one that never logged in lives 15 s) fails the request
  // before any answer: reads and logins are asked again, twice at most and a moment later,
  // when the browser has opened a new one; other changes are never repeated.
  const retries = method === "GET" || path === "/ui/login" ? 2 : 0;
  let r;
  for (let attempt = 0; ; attempt++) {
    try {
      r = await fetch(path, init);
      break;
    } catch (x) {
      if (attempt >= retries) throw x;
      await new Promise((ok) => setTimeout(ok, 300 * (attempt + 1)));
    }
  }
  // The session ended (expired, revoked, the user removed): back to the login page, once.
  if (r.status === 401 && S.session && !path.startsWith("/ui/")) { S.session = null; start(); throw new ApiError(401, "the session ended; log in again"); }
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try { message = (await r.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, message);
  }
  if (raw) return r;
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r.text();
}
const enc = encodeURIComponent;

// ---- Session and shell ----------------------------------------------------------------
const PAGES = [
  ["hosts", "Hosts"], ["stacks", "Stacks"], ["containers", "Containers"],
  ["network", "Network"], ["events", "Events"], ["audit", "Audit", (s) => s.admin],
];

async function start() {
  stopPage();
  if (S.live) { S.live.close(); S.live = null; }
  try {
    S.session = await api("GET", "/ui/session");
  } catch (_) {
    S.session = null;
  }
  if (!S.session) return loginPage();
  $("top").hidden = false;
  $("who").textContent = S.session.user + (S.session.admin ? " (admin)" : "");
  await environments();
  followLive();
  route();
}

async function environments() {
  let names = S.session.roles.map((r) => r.environment);
  if (S.session.admin) {
    try { names = (await api("GET", "/v1/environments")).map((e) => e.name); } catch (_) { /* keep roles */ }
  }
  const select = $("env");
  select.replaceChildren(el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n)));
  if (S.env && !names.includes(S.env)) S.env = "";
  select.value = S.env;
}

function followLive() {
  const es = new EventSource("/v1/live");
  S.live = es;
  es.addEventListener("hello", () => { $("live").className = "live on"; });
  es.addEventListener("change", () => {
    // Several changes in a row make one reload.
    clearTimeout(S.timer);
    S.timer = setTimeout(() => { if (S.refresh) S.refresh().catch(() => {}); }, 250);
  });
  es.onerror = () => { $("live").className = "live off"; };
}

function loginPage() {
  $("top").hidden = true;
  let mode = "password";
  const err = el("div");
  const user = el("input", { id: "login-user", autocomplete: "username" });
  const pass = el("input", { id: "login-password", type: "password", autocomplete: "current-password" });
  const key = el("input", { id: "login-key", type: "password", autocomplete: "off", placeholder: "crl_key_…" });
  const pwFields = el("div", { class: "form" }, el("label", {}, "User", user), el("label", {}, "Password", pass));
  const keyFields = el("div", { class: "form", hidden: true }, el("label", {}, "API key", key));
  const tabs = el("div", { class: "tabs" },
    el("button", { type: "button", class: "on", id: "tab-password", onclick: (e) => pick("password", e) }, "Password"),
    el("button", { type: "button", id: "tab-key", onclick: (e) => pick("key", e) }, "API key"));
  function pick(m, e) {
    mode = m;
    for (const b of tabs.children) b.className = b === e.target ? "on" : "";
    pwFields.hidden = m !== "password"; keyFields.hidden = m !== "key";
  }
  const form = el("form", { class: "panel form", id: "login", onsubmit: async (e) => {
    e.preventDefault();
    err.replaceChildren();
    const body = mode === "password" ? { user: user.value, password: pass.value } : { key: key.value };
    try {
      S.session = await api("POST", "/ui/login", body);
      pass.value = ""; key.value = "";
      location.hash = location.hash || "#/hosts";
      start();
    } catch (x) { err.replaceChildren(errorBox(x)); }
  } },
  el("h1", {}, "Log in to corral"), tabs, pwFields, keyFields, err,
  el("button", { type: "submit", id: "login-submit" }, "Log in"));
  show(el("div", { class: "login" }, form));
}

$("logout").addEventListener("click", async () => {
  // The feed first: its stream ends with the session, and would only try again.
  if (S.live) { S.live.close(); S.live = null; }
  try { await api("POST", "/ui/logout"); } catch (_) { /* ended anyway */ }
  S.session = null;
  start();
});
$("env").addEventListener("change", (e) => {
  S.env = e.target.value;
  localStorage.setItem("corral.env", S.env);
  route();
});
window.addEventListener("hashchange", () => { if (S.session) route(); });

function stopPage() {
  for (const stop of S.cleanup) { try { stop(); } catch (_) { /* already stopped */ } }
  S.cleanup = [];
  S.refresh = null;
}

async function route() {
  stopPage();
  const parts = (location.hash.replace(/^#\/?/, "") || "hosts").split("/").map(decodeURIComponent);
  const page = parts[0];
  const nav = $("nav");
  nav.replaceChildren(...PAGES.filter((p) => !p[2] || p[2](S.session)).map(([id, label]) =>
    el("a", { href: `#/${id}`, class: id === page ? "on" : "", id: `nav-${id}` }, label)));
  const pages = { hosts: hostsPage, host: hostPage, stacks: stacksPage, stack: stackPage,
    containers: containersPage, container: containerPage, logs: serviceLogsPage,
    network: networkPage, events: eventsPage, audit: auditPage };
  const render = pages[page] || hostsPage;
  try { await render(...parts.slice(1)); } catch (x) { show(errorBox(x)); }
  // For measurements: when the page's first render was done.
  performance.mark(`corral:${page}`);
}

// A page whose content is `build()`'s, built again on every live change (what the user
// typed in `keep` elements stays).
async function livePage(build) {
  const holder = el("div");
  const load = async () => {
    const node = await build();
    holder.replaceChildren(node);
  };
  await load();
  S.refresh = load;
  return holder;
}

// ---- Hosts ----------------------------------------------------------------------------
async function hostsPage() {
  const filter = el("input", { id: "host-filter", class: "grow", placeholder: "filter: name, or label key=value", value: sessionStorage.getItem("corral.hostFilter") || "" });
  const addPanel = el("div");
  const list = await livePage(async () => {
    const t0 = performance.now();
    const [hosts, containers] = await Promise.all([api("GET", "/v1/hosts"), api("GET", "/v1/containers")]);
    const perHost = new Map();
    for (const c of containers) perHost.set(c.host_id, (perHost.get(c.host_id) || 0) + 1);
    const rows = hosts.map((h) => hostRow(h, perHost.get(h.id) || 0));
    const t = table(["State", "Host", "Address", "Agent · Docker", { text: "OS · kernel", attrs: { class: "wide" } }, "CPUs · memory", "Labels", "Overlay", "Containers"], rows, { id: "hosts" });
    const node = el("div", {}, el("p", { class: "muted", id: "host-count" }, `${hosts.length} host(s)`), t);
    applyHostFilter(node, filter.value);
    node.dataset.renderMs = String(Math.round(performance.now() - t0));
    return node;
  });
  filter.addEventListener("input", () => { sessionStorage.setItem("corral.hostFilter", filter.value); applyHostFilter(list, filter.value); });
  show(el("h1", {}, "Hosts", el("button", { type: "button", id: "add-host", onclick: () => addHostForm(addPanel) }, "Add host")),
    addPanel, el("div", { class: "toolbar" }, filter), list);
}

function hostRow(h, count) {
  const d = h.docker && h.docker.info;
  const labels = Object.entries(h.labels || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}=${v}`));
  const overlay = h.overlay_subnet ? [h.overlay_subnet, h.overlay_addresses_total ? el("div", { class: "muted" }, `${h.overlay_addresses_used || 0} of ${h.overlay_addresses_total} addresses`) : ""] : el("span", { class: "muted" }, "none");
  const row = el("tr", { "data-name": h.name, "data-labels": Object.entries(h.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n") },
    el("td", {}, el("span", { class: stateClass(h.state) }, h.state), el("div", { class: "muted" }, h.state === "active" ? `for ${since(h.connected_since)}` : `seen ${since(h.last_seen_at)} ago`)),
    el("td", {}, el("a", { href: `#/host/${enc(h.id)}` }, h.name), el("div", { class: "muted" }, h.environment)),
    el("td", { class: "mono" }, h.remote_addr),
    el("td", {}, h.agent_version, el("div", { class: "muted" }, d ? `Docker ${d.version}` : (h.docker ? `Docker ${h.docker.state}` : ""))),
    el("td", { class: "wide" }, h.os, el("div", { class: "muted" }, `${h.kernel} ${h.arch}`)),
    el("td", {}, d ? `${d.cpus} CPU` : "", el("div", { class: "muted" }, d ? bytes(d.memory_bytes) : "")),
    el("td", {}, labels),
    el("td", { class: "mono" }, overlay),
    el("td", {}, String(count)));
  return row;
}

function applyHostFilter(root, text) {
  const q = text.trim().toLowerCase();
  for (const tr of root.querySelectorAll("#hosts tbody tr")) {
    const hit = !q || (q.includes("=") ? tr.dataset.labels.toLowerCase().split("\n").includes(q) : tr.dataset.name.toLowerCase().includes(q));
    tr.hidden = !hit;
  }
}

function addHostForm(holder) {
  const envs = S.session.admin ? [...$("env").options].map((o) => o.value).filter(Boolean) : S.session.roles.filter((r) => r.role === "owner").map((r) => r.environment);
  const env = el("select", { id: "token-env" }, envs.map((n) => el("option", { value: n }, n)));
  if (S.env) env.value = S.env;
  const ttl = el("select", { id: "token-ttl" },
    el("option", { value: "3600" }, "1 hour"), el("option", { value: "86400", selected: true }, "24 hours"),
    el("option", { value: "604800" }, "7 days"), el("option", { value: "0" }, "never expires"));
  const uses = el("input", { id: "token-uses", type: "number", min: "1", max: "100000", placeholder: "unlimited", value: "1" });
  const out = el("div");
  const form = el("form", { class: "panel form", id: "add-host-form", onsubmit: async (e) => {
    e.preventDefault();
    out.replaceChildren();
    try {
      const body = { environment: env.value || undefined, ttl_seconds: Number(ttl.value) };
      if (uses.value) body.max_uses = Number(uses.value);
      const t = await api("POST", "/v1/tokens", body);
      const cmd = el("pre", { id: "agent-command" }, t.command);
      out.replaceChildren(
        el("p", {}, `Run this on the new host (as root, with Docker installed). The token joins environment ${t.environment}, `,
          t.expires_at ? `expires ${t.expires_at}` : "never expires", t.max_uses ? `, and registers ${t.max_uses} host(s).` : ", any number of hosts.",
          " It is shown only now."),
        cmd,
        el("button", { type: "button", class: "quiet", id: "copy-command", onclick: (ev) => copy(t.command, ev.target) }, "Copy"));
    } catch (x) { out.replaceChildren(errorBox(x)); }
  } },
  el("h2", {}, "Add a host"),
  el("div", { class: "row" }, el("label", {}, "Environment", env), el("label", {}, "Token lifetime", ttl), el("label", {}, "Hosts it may register", uses),
    el("button", { type: "submit", id: "make-token" }, "Show the command")),
  out);
  holder.replaceChildren(form);
}

async function copy(text, button) {
  try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; } catch (_) {
    // No clipboard (not a secure context, or denied): select it for the user to copy.
    const pre = document.getElementById("agent-command");
    const range = document.createRange(); range.selectNodeContents(pre);
    const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
}

async function hostPage(id) {
  const doctorOut = el("div", { id: "doctor" });
  const body = await livePage(async () => {
    const [h, containers] = await Promise.all([api("GET", `/v1/hosts/${enc(id)}`), api("GET", "/v1/containers")]);
    const d = h.docker && h.docker.info;
    const mine = containers.filter((c) => c.host_id === h.id);
    const facts = [["State", el("span", { class: stateClass(h.state) }, h.state)], ["Environment", h.environment], ["Address", h.remote_addr],
      ["Agent", h.agent_version], ["Docker", d ? `${d.version} (API ${d.api_version}, ${d.storage_driver})` : (h.docker ? `${h.docker.state}: ${h.docker.error || ""}` : "")],
      ["Machine", `${h.hostname} · ${h.os} · ${h.kernel} · ${h.arch}`], ["CPUs · memory", d ? `${d.cpus} · ${bytes(d.memory_bytes)}` : ""],
      ["Overlay subnet", h.overlay_subnet || "none"], ["Registered", h.registered_at], ["Last seen", h.last_seen_at], ["Id", h.id]];
    return el("div", {},
      el("h1", {}, h.name, el("button", { type: "button", class: "quiet", onclick: () => runDoctor(h, doctorOut) }, "Run doctor")),
      el("div", { class: "panel" }, el("dl", { class: "kv" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
      doctorOut,
      el("h2", {}, "Containers"), containersTable(mine));
  });
  show(body);
}

// ---- Stacks ---------------------------------------------------------------------------
async function stacksPage() {
  const deploy = deployForm("");
  const list = await livePage(async () => {
    const stacks = await api("GET", "/v1/stacks");
    const rows = stacks.map((s) => el("tr", { "data-stack": s.name },
      el("td", {}, el("a", { href: `#/stack/${enc(s.name)}` }, s.name), el("div", { class: "muted" }, s.environment)),
      el("td", {}, el("span", { class: stateClass(s.converged ? "converged" : s.state) }, s.converged ? "converged" : s.state)),
      el("td", {}, String(s.services)),
      el("td", {}, dots(s.running, s.desired)),
      el("td", { class: "muted" }, `${since(s.updated_at)} ago`)));
    return stacks.length ? table(["Stack", "State", "Services", "Replicas", "Changed"], rows, { id: "stacks" }) : el("p", { class: "muted" }, "No stacks yet: deploy one below.");
  });
  show(el("h1", {}, "Stacks"), list, deploy);
}

function deployForm(stackName) {
  const name = el("input", { id: "stack-name", placeholder: "from the file's name:", value: stackName });
  const text = el("textarea", { id: "compose", spellcheck: "false", placeholder: "services:\n  web:\n    image: nginx:1.27\n    ports: [\"8080:80\"]" });
  const file = el("input", { type: "file", accept: ".yml,.yaml,text/yaml", onchange: async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    if (f.size > 4 * 1024 * 1024) { out.replaceChildren(errorBox("that file is larger than 4 MiB")); return; }
    text.value = await f.text();
  } });
  const out = el("div", { id: "deploy-result" });
  const form = el("form", { class: "panel form", id: "deploy", onsubmit: async (e) => {
    e.preventDefault();
    out.replaceChildren(el("p", { class: "muted" }, "Deploying…"));
    const body = { files: [{ name: "compose.yaml", text: text.value }] };
    if (name.value.trim()) body.name = name.value.trim();
    if (S.env) body.environment = S.env;
    try {
      const r = await api("POST", "/v1/stacks", body);
      location.hash = `#/stack/${enc(r.name || name.value.trim())}`;
    } catch (x) { out.replaceChildren(errorBox(x), sourceWithError(text.value, x.message) || ""); }
  } },
  el("h2", {}, stackName ? `Update ${stackName}` : "Deploy a stack"),
  el("div", { class: "row" }, el("label", {}, "Name", name), el("label", {}, "Compose file", file)),
  el("label", {}, "Or paste it", text), out,
  el("div", {}, el("button", { type: "submit", id: "deploy-submit" }, stackName ? "Update" : "Deploy")));
  return form;
}

// The pasted file with the line an error names marked.
function sourceWithError(source, message) {
  const m = /line (\d+)/i.exec(message) || /:(\d+):\d+/.exec(message);
  if (!m) return "";
  const at = Number(m[1]);
  const lines = source.split("\n");
  const from = Math.max(0, at - 4), to = Math.min(lines.length, at + 3);
  const shown = [];
  for (let i = from; i < to; i++) {
    shown.push(el("div", { class: i + 1 === at ? "hit" : "", "data-line": i + 1 }, el("span", { class: "ln" }, String(i + 1)), lines[i]));
  }
  return el("div", { class: "source", id: "error-source" }, shown);
}

async function stackPage(name) {
  const updatePanel = el("div");
  const body = await livePage(async () => {
    const s = await api("GET", `/v1/stacks/${enc(name)}`);
    const rows = s.services.map((v) => {
      const scale = el("input", { type: "number", min: "0", max: "1000", value: v.desired, class: "narrow", "aria-label": `replicas of ${v.name}`, id: `scale-${v.name}` });
      const why = [v.waiting ? `waiting for ${v.waiting}` : "", ...v.unplaced, v.last_error || ""].filter(Boolean);
      return el("tr", { "data-service": v.name },
        el("td", {}, el("strong", {}, v.name), el("div", { class: "muted mono" }, v.image)),
        el("td", {}, dots(v.ready, v.desired), v.outdated ? el("div", { class: "muted" }, `${v.outdated} outdated`) : ""),
        el("td", { class: "mono" }, v.ports.join(", ")),
        el("td", {}, why.map((w) => el("div", { class: "why" }, w)),
          v.replicas.map((r) => el("div", {}, el("a", { href: `#/container/${enc(r.name)}` }, r.name), " ",
            el("span", { class: stateClass(r.health || r.actual) }, r.health || r.actual), el("span", { class: "muted" }, ` on ${r.host}`),
            r.pulling ? el("div", { class: "muted" }, r.pulling) : ""))),
        el("td", {}, el("div", { class: "row" }, scale,
          el("button", { type: "button", class: "quiet", id: `scale-${v.name}-go`, onclick: async (e) => {
            e.target.disabled = true;
            try { await api("POST", `/v1/stacks/${enc(name)}/scale`, { service: v.name, replicas: Number(scale.value) }); await S.refresh(); } catch (x) { alert(x.message); } finally { e.target.disabled = false; }
          } }, "Scale"),
          el("a", { href: `#/logs/${enc(name)}/${enc(v.name)}` }, "Logs"))));
    });
    return el("div", {},
      el("h1", {}, s.name, el("span", { class: stateClass(s.converged ? "converged" : s.state), id: "stack-state" }, s.converged ? "converged" : (s.state === "active" ? "converging" : s.state)),
        el("button", { type: "button", class: "quiet", onclick: () => updatePanel.replaceChildren(deployForm(s.name)) }, "Update"),
        el("button", { type: "button", class: "danger", id: "remove-stack", onclick: async () => {
          if (!confirm(`Remove stack ${s.name} and all its containers?`)) return;
          try { await api("DELETE", `/v1/stacks/${enc(s.name)}`); location.hash = "#/stacks"; } catch (x) { alert(x.message); }
        } }, "Remove")),
      s.error ? errorBox(s.error) : "",
      el("p", { class: "muted" }, `${s.environment} · changed ${since(s.updated_at)} ago`),
      table(["Service", "Ready", "Ports", "Replicas", ""], rows, { id: "services" }));
  });
  show(body, updatePanel);
}

// ---- Containers and logs --------------------------------------------------------------
function containersTable(list) {
  const rows = list.map((c) => el("tr", { "data-container": c.name },
    el("td", {}, el("a", { href: `#/container/${enc(c.name)}` }, c.name)),
    el("td", { class: "mono" }, c.image),
    el("td", {}, el("span", { class: stateClass(c.actual) }, c.actual), c.exit_code !== null && c.exit_code !== undefined ? el("span", { class: "muted" }, ` (exit ${c.exit_code})`) : "", el("div", { class: "muted" }, `wants ${c.desired}`)),
    el("td", {}, c.host),
    el("td", { class: "mono" }, c.ports.join(", "))));
  return list.length ? table(["Container", "Image", "State", "Host", "Ports"], rows, { class: "containers" }) : el("p", { class: "muted" }, "No containers.");
}

async function containersPage() {
  const filter = el("input", { class: "grow", placeholder: "filter by name or image", id: "container-filter" });
  const list = await livePage(async () => containersTable(await api("GET", "/v1/containers")));
  filter.addEventListener("input", () => {
    const q = filter.value.toLowerCase();
    for (const tr of list.querySelectorAll("tbody tr")) tr.hidden = q && !tr.textContent.toLowerCase().includes(q);
  });
  show(el("h1", {}, "Containers"), el("div", { class: "toolbar" }, filter), list);
}

async function containerPage(name) {
  const details = await livePage(async () => {
    const c = await api("GET", `/v1/containers/${enc(name)}`);
    const facts = [["State", el("span", { class: stateClass(c.actual) }, c.actual)], ["Desired", c.desired], ["Exit code", c.exit_code ?? ""],
      ["Host", c.host], ["Image", c.image], ["Ports", c.ports.join(", ")], ["Command", c.cmd.join(" ")],
      ["Environment", c.env.map((e) => el("div", { class: "mono" }, e))], ["Labels", Object.entries(c.labels || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}=${v}`))],
      ["Docker id", c.docker_id || ""], ["Created", c.created_at], ["Id", c.id]];
    return el("div", {}, el("h1", {}, c.name), el("div", { class: "panel" }, el("dl", { class: "kv" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))));
  });
  show(details, el("h2", {}, "Logs"), logView(`/v1/containers/${enc(name)}/logs?follow=true&tail=500`));
}

async function serviceLogsPage(stack, service) {
  show(el("h1", {}, `${stack} / ${service}`, el("a", { href: `#/stack/${enc(stack)}` }, "back to the stack")),
    el("p", { class: "muted" }, "Every replica's lines, merged as they come."),
    logView(`/v1/stacks/${enc(stack)}/services/${enc(service)}/logs?follow=true&tail=200`));
}

// A log stream shown as text lines. Pausing stops reading: the server's flow control then
// holds the rest (nothing piles up here or there); at most MAX_LINES are kept on the page.
const MAX_LINES = 5000;
// ANSI escape sequences (colours, cursor moves) and other control characters are dropped:
// they are not markup either, and shown raw they are noise.
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]/g;
function logView(path) {
  const box = el("div", { class: "logs", id: "logs", role: "log", "aria-live": "off" });
  const search = el("input", { placeholder: "search", id: "log-search", class: "grow" });
  const follow = el("input", { type: "checkbox", checked: true, id: "log-follow" });
  const status = el("span", { class: "muted", id: "log-status" }, "connecting…");
  let paused = false, resume = null, partial = "";
  const pause = el("button", { type: "button", class: "quiet", id: "log-pause", onclick: () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    status.textContent = paused ? "paused" : "streaming";
    if (!paused && resume) { const r = resume; resume = null; r(); }
  } }, "Pause");
  search.addEventListener("input", () => { for (const line of box.children) mark(line); });
  function mark(line) {
    const q = search.value.toLowerCase();
    line.classList.toggle("hidden", Boolean(q) && !line.textContent.toLowerCase().includes(q));
  }
  function add(text) {
    const line = el("div", {}, text.replace(ANSI, ""));
    mark(line);
    box.append(line);
    while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();
  }
  const controller = new AbortController();
  S.cleanup.push(() => controller.abort());
  // One stream; if the connection breaks (the network changed, the server restarted), it is
  // opened again without the tail (lines in between may be missing: said in the log). An
  // answer that is an error (the container is gone, the session ended) ends it.
  (async () => {
    let again = false;
    for (;;) {
      try {
        const headers = {};
        if (S.env) headers["corral-environment"] = S.env;
        const url = again ? path.replace(/([?&])tail=\d+/, "$1tail=0") : path;
        const r = await fetch(url, { signal: controller.signal, headers, credentials: "same-origin" });
        if (!r.ok) {
          let m = `${r.status}`;
          try { m = (await r.json()).error; } catch (_) { /* text */ }
          status.textContent = `stopped: ${m}`;
          return;
        }
        status.textContent = paused ? "paused" : "streaming";
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          if (paused) await new Promise((ok) => { resume = ok; });
          const { value, done } = await reader.read();
          if (done) break;
          const text = partial + decoder.decode(value, { stream: true });
          const lines = text.split("\n");
          partial = lines.pop();
          for (const l of lines) add(l);
          if (follow.checked) box.scrollTop = box.scrollHeight;
        }
        if (partial) add(partial);
        status.textContent = "ended";
        return;
      } catch (x) {
        if (x.name === "AbortError") return;
        if (partial) { add(partial); partial = ""; }
        status.textContent = `reconnecting (${x.message})…`;
        add(`[corral: the stream broke (${x.message}); reconnecting — lines in between may be missing]`);
        await new Promise((ok) => setTimeout(ok, 1000));
        if (controller.signal.aborted) return;
        again = true;
      }
    }
  })();
  return el("div", {}, el("div", { class: "toolbar" }, search, el("label", {}, follow, " follow"), pause, status), box);
}

// ---- Network --------------------------------------------------------------------------
const FORMATS = ["markdown", "aws-json", "terraform", "nftables", "iptables", "ip6tables", "ufw", "firewalld"];
async function networkPage() {
  const img = el("img", { id: "diagram", alt: "port-flow diagram" });
  let lastUrl = null;
  const drawing = async () => {
    const svg = await api("GET", "/v1/diagram.svg", undefined, true);
    // A blob shown as an image: the drawing's text is never part of this page.
    const url = URL.createObjectURL(await svg.blob());
    img.src = url;
    if (lastUrl) URL.revokeObjectURL(lastUrl);
    lastUrl = url;
  };
  const hostPick = el("select", { id: "fw-host" }, el("option", { value: "" }, "(per-machine formats: pick a host)"));
  const downloads = el("div", { class: "toolbar" }, "Download:", FORMATS.map((f) => el("button", { type: "button", class: "quiet", "data-format": f, onclick: () => download(f, hostPick.value) }, f)), hostPick);
  const doctorHosts = el("div");
  const rules = el("div");
  const tables = async () => {
    const [plan, hosts] = await Promise.all([api("GET", "/v1/firewall"), api("GET", "/v1/hosts")]);
    const rows = plan.flows.map((f) => el("tr", {},
      el("td", {}, f.group), el("td", {}, f.direction), el("td", { class: "mono" }, flowTraffic(f)),
      el("td", { class: "mono" }, endpoint(f.source)), el("td", { class: "mono" }, endpoint(f.destination)),
      el("td", {}, f.purpose, el("div", { class: "muted" }, f.impact_if_removed))));
    rules.replaceChildren(...plan.warnings.map((w) => el("p", { class: "why" }, w)),
      table(["Group", "Direction", "Traffic", "From", "To", "Why · if removed"], rows, { id: "flows" }));
    const keep = hostPick.value;
    hostPick.replaceChildren(el("option", { value: "" }, "(per-machine formats: pick a host)"), ...hosts.map((h) => el("option", { value: h.name }, h.name)));
    hostPick.value = keep;
    doctorHosts.replaceChildren(...hosts.map((h) => {
      const out = el("div");
      return el("div", { class: "panel" }, el("div", { class: "row" }, el("strong", {}, h.name), el("span", { class: stateClass(h.state) }, h.state),
        el("button", { type: "button", class: "quiet", "data-doctor": h.name, onclick: () => runDoctor(h, out) }, "Run doctor")), out);
    }));
  };
  // The network policy of each environment shown, with its services diagram.
  const policies = el("div", { id: "policies" });
  const urls = [];
  const policy = async () => {
    const envs = S.env ? [S.env] : [...$("env").options].map((o) => o.value).filter(Boolean);
    const panels = await Promise.all(envs.map(async (env) => {
      const [view, svg] = await Promise.all([
        api("GET", `/v1/environments/${enc(env)}/network-policy`),
        api("GET", `/v1/environments/${enc(env)}/network-policy/diagram?format=svg`, undefined, true)]);
      const url = URL.createObjectURL(await svg.blob());
      urls.push(url);
      return el("div", { class: "panel", "data-policy": env },
        el("h2", {}, `Environment ${env}: `, view.generation ? `policy generation ${view.generation}` : "no network policy (all traffic between services allowed)"),
        view.applied_at ? el("p", { class: "muted" }, `applied ${view.applied_at}`) : "",
        view.warnings.map((w) => el("p", { class: "why" }, w)),
        view.document ? el("pre", {}, view.document) : "",
        el("div", { class: "diagram" }, el("img", { alt: `services of ${env}`, src: url, class: "services-diagram" })));
    }));
    while (urls.length > panels.length * 2) URL.revokeObjectURL(urls.shift());
    policies.replaceChildren(...panels);
  };
  await Promise.all([drawing(), tables(), policy()]);
  S.refresh = () => Promise.all([drawing(), tables(), policy()]);
  S.cleanup.push(() => { if (lastUrl) URL.revokeObjectURL(lastUrl); for (const u of urls) URL.revokeObjectURL(u); });
  show(el("h1", {}, "Network"),
    el("h2", {}, "Port flows"), el("div", { class: "diagram" }, img),
    el("h2", {}, "Network policy and services"), policies,
    el("h2", {}, "Firewall rules"), el("p", { class: "muted" }, "The least-privilege rules these hosts need, as corral firewall derives them."), downloads, rules,
    el("h2", {}, "Doctor"), doctorHosts);
}

function flowTraffic(f) {
  const ports = f.ports === undefined || f.ports === null ? "" : (typeof f.ports === "object" ? Object.values(f.ports).join("-") : String(f.ports));
  return ports ? `${f.protocol}/${ports}` : String(f.protocol || "");
}
function endpoint(e) {
  if (e === null || e === undefined) return "";
  if (typeof e !== "object") return String(e);
  const v = Array.isArray(e.value) ? e.value.join(", ") : (e.value === undefined ? "" : String(e.value));
  return e.kind === "cidrs" ? v : `${e.kind} ${v}`.trim();
}

async function download(format, host) {
  try {
    let path = `/v1/firewall?format=${enc(format)}`;
    const perMachine = ["nftables", "iptables", "ip6tables", "ufw", "firewalld"].includes(format);
    if (perMachine) {
      if (!host) { alert("pick a host for this format"); return; }
      path += `&host=${enc(host)}`;
    }
    const r = await api("GET", path, undefined, true);
    const blob = await r.blob();
    const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || `corral-firewall-${format}.txt`;
    const a = el("a", { href: URL.createObjectURL(blob), download: host ? `${host}-${name}` : name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (x) { alert(x.message); }
}

async function runDoctor(h, out) {
  out.replaceChildren(el("p", { class: "muted" }, `asking ${h.name}…`));
  try {
    const report = await api("POST", `/v1/hosts/${enc(h.id)}/doctor`);
    const rows = report.checks.map((c) => el("tr", {},
      el("td", { class: c.ok ? "check ok" : "check fail" }, c.name), el("td", {}, c.detail), el("td", {}, c.fix || "")));
    out.replaceChildren(table(["Check", "Found", "Fix"], rows, { class: "doctor" }));
  } catch (x) { out.replaceChildren(errorBox(x)); }
}

// ---- Events and audit -----------------------------------------------------------------
function filterable(id, placeholder, build) {
  const filter = el("input", { class: "grow", placeholder, id: `${id}-filter` });
  const apply = (root) => {
    const q = filter.value.toLowerCase();
    for (const tr of root.querySelectorAll("tbody tr")) tr.hidden = Boolean(q) && !tr.textContent.toLowerCase().includes(q);
  };
  return { filter, build: async () => { const node = await build(); apply(node); return node; }, apply };
}

async function eventsPage() {
  const f = filterable("events", "filter by kind, host or text", async () => {
    const [events, hosts] = await Promise.all([api("GET", "/v1/events?limit=500"), api("GET", "/v1/hosts")]);
    const names = new Map(hosts.map((h) => [h.id, h.name]));
    events.reverse();
    return table(["When", "Kind", "Host", "What"], events.map((e) => el("tr", {},
      el("td", { class: "muted" }, e.at), el("td", {}, el("span", { class: "chip" }, e.kind)),
      el("td", { class: "mono", title: e.host_id || "" }, e.host_id ? names.get(e.host_id) || e.host_id : ""), el("td", {}, e.message))), { id: "events" });
  });
  const list = await livePage(f.build);
  f.filter.addEventListener("input", () => f.apply(list));
  show(el("h1", {}, "Events"), el("div", { class: "toolbar" }, f.filter), list);
}

async function auditPage() {
  const f = filterable("audit", "filter by actor, action, target or outcome", async () => {
    const entries = await api("GET", "/v1/audit?limit=500");
    entries.reverse();
    return table(["#", "When", "Who", "Action", "Target", "Outcome", "From"], entries.map((a) => el("tr", {},
      el("td", {}, String(a.seq)), el("td", { class: "muted" }, a.at), el("td", {}, a.actor, el("div", { class: "muted" }, a.role)),
      el("td", { class: "mono" }, a.action), el("td", { class: "mono" }, a.target), el("td", {}, a.outcome), el("td", { class: "mono" }, a.source))), { id: "audit" });
  });
  const list = await livePage(f.build);
  f.filter.addEventListener("input", () => f.apply(list));
  show(el("h1", {}, "Audit log"), el("div", { class: "toolbar" }, f.filter), list);
}

start();
