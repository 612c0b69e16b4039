// The relay's admin UI. The admin token lives only in this module's memory
// (never in storage or a cookie): reloading the page means logging in again.

import {
  h, clear, replace, fmtInt, fmtCompact, fmtUSD, fmtTime, fmtDuration, callJSON, ApiError,
  copyButton, barChart, onResize, table, stat, badge, utcLabel, usageBlocks,
} from "./dom.js";

const app = document.getElementById("app");

// session is the only place the admin token is kept.
let session = null; // {token, username, expiresAt}
let expiryTimer = null;

function setSession(s) {
  session = s ? { token: s.token, username: s.username, expiresAt: s.expires_at } : null;
  clearTimeout(expiryTimer);
  if (session && session.expiresAt) {
    const ms = new Date(session.expiresAt).getTime() - Date.now();
    if (ms > 0 && ms < 2 ** 31) expiryTimer = setTimeout(() => endSession("Your session expired; log in again."), ms);
  }
}

function endSession(message) {
  setSession(null);
  renderLogin(message);
}

// api calls the admin API with the in-memory token; a 401 ends the session.
async function api(method, path, body) {
  if (!session) throw new ApiError(401, "Not logged in.");
  try {
    return await callJSON(method, "/admin" + path, { token: session.token, body });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      endSession(e.message);
      throw new ApiError(401, e.message, "session_ended");
    }
    throw e;
  }
}

function relayBase() {
  return (state.publicURL || window.location.origin).replace(/\/+$/, "");
}

const state = { publicURL: "", accounts: null };

function message(kind, text, id) {
  return h("p", { class: ["msg", kind], role: kind === "error" ? "alert" : "status", id }, text);
}

function showError(target, e) {
  if (e instanceof ApiError && e.code === "session_ended") return; // the login page says it
  replace(target, message("error", e.message || String(e)));
}

// ---------- login ----------

function renderLogin(note) {
  const err = h("p", { class: "msg error", role: "alert", id: "login-error", hidden: !note }, note || "");
  const user = h("input", { id: "login-username", name: "username", autocomplete: "username", value: "admin", required: true });
  const pass = h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const btn = h("button", { class: "btn primary", type: "submit", id: "login-submit" }, "Log in");
  const form = h("form", { class: "card login", id: "login-form" },
    h("h1", null, "relay"),
    h("p", { class: "muted" }, "Log in with the admin credentials."),
    h("label", null, "Username", user),
    h("label", null, "Password", pass),
    err, btn,
    h("p", { class: "muted small" }, "Key holders: see your usage on the ", h("a", { href: "/web/stats" }, "stats page"), "."));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    btn.disabled = true;
    err.hidden = true;
    try {
      const s = await callJSON("POST", "/admin/login", { body: { username: user.value.trim(), password: pass.value } });
      pass.value = "";
      setSession(s);
      if (!location.hash || location.hash === "#/login") location.hash = "#/dashboard";
      renderShell();
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      pass.select();
    } finally {
      btn.disabled = false;
    }
  });
  replace(app, h("main", { class: "center" }, form));
  pass.focus();
}

// ---------- shell and routing ----------

const views = {
  dashboard: { title: "Dashboard", render: renderDashboard },
  keys: { title: "Keys", render: renderKeys },
  accounts: { title: "Accounts", render: renderAccounts },
  password: { title: "Password", render: renderPassword },
};

let main = null;
let stopResize = null;

function currentView() {
  const name = (location.hash.replace(/^#\/?/, "").split("?")[0]) || "dashboard";
  return views[name] ? name : "dashboard";
}

function renderShell() {
  const nav = h("nav", { class: "nav", "aria-label": "sections" },
    Object.entries(views).map(([name, v]) => h("a", { href: "#/" + name, id: "nav-" + name, dataset: { view: name } }, v.title)));
  const logout = h("button", { class: "btn ghost small", id: "logout", type: "button" }, "Log out");
  logout.addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch { /* the session ends here either way */ }
    endSession("You have logged out.");
  });
  main = h("main", { class: "content", id: "view" });
  replace(app,
    h("header", { class: "top" },
      h("a", { class: "brand", href: "#/dashboard" }, h("img", { src: "/web/assets/icon.svg", alt: "", width: 22, height: 22 }), "relay"),
      nav,
      h("div", { class: "who" }, h("span", { class: "muted small", id: "who" }, session.username), logout)),
    main);
  route();
}

function route() {
  if (!session) return;
  const name = currentView();
  for (const a of app.querySelectorAll(".nav a")) a.classList.toggle("active", a.dataset.view === name);
  if (stopResize) { stopResize(); stopResize = null; }
  clear(main);
  document.title = "relay · " + views[name].title;
  views[name].render(main);
}

window.addEventListener("hashchange", () => { if (session && main) route(); });

// ---------- dashboard ----------

const ranges = {
  today: { label: "Today (UTC)", gran: "hour", from: () => startOfUTCDay(new Date()) },
  "24h": { label: "Last 24 hours", gran: "hour", from: () => new Date(Date.now() - 24 * 3600e3) },
  "7d": { label: "Last 7 days", gran: "day", from: () => addDays(startOfUTCDay(new Date()), -6) },
  "30d": { label: "Last 30 days", gran: "day", from: () => addDays(startOfUTCDay(new Date()), -29) },
  custom: { label: "Custom dates", gran: "day" },
};

function startOfUTCDay(d) {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
}
function addDays(d, n) {
  return new Date(d.getTime() + n * 86400e3);
}
function isoDate(d) {
  return d.toISOString().slice(0, 10);
}

const dash = { range: "today", metric: "requests", from: "", to: "" };

function renderDashboard(root) {
  const rangeSel = h("select", { id: "range", "aria-label": "range" },
    Object.entries(ranges).map(([k, r]) => h("option", { value: k, selected: k === dash.range }, r.label)));
  const from = h("input", { type: "date", id: "range-from", value: dash.from || isoDate(addDays(new Date(), -6)), "aria-label": "from" });
  const to = h("input", { type: "date", id: "range-to", value: dash.to || isoDate(new Date()), "aria-label": "to" });
  const custom = h("span", { class: "inline", hidden: dash.range !== "custom" }, from, h("span", { class: "muted" }, "to"), to);
  const refresh = h("button", { class: "btn small", id: "refresh", type: "button" }, "Refresh");
  const body = h("div", { id: "dashboard-body" }, h("p", { class: "muted" }, "Loading…"));
  rangeSel.addEventListener("change", () => {
    dash.range = rangeSel.value;
    custom.hidden = dash.range !== "custom";
    load();
  });
  for (const i of [from, to]) i.addEventListener("change", () => { dash.from = from.value; dash.to = to.value; load(); });
  refresh.addEventListener("click", () => load());
  root.append(
    h("div", { class: "toolbar" }, h("h1", null, "Dashboard"), h("div", { class: "inline" }, rangeSel, custom, refresh)),
    body);

  let last = null;
  async function load() {
    const r = ranges[dash.range];
    const q = new URLSearchParams({ granularity: r.gran });
    if (dash.range === "custom") {
      if (!from.value || !to.value) return;
      q.set("from", from.value);
      q.set("to", to.value);
      if (new Date(to.value) - new Date(from.value) <= 2 * 86400e3) q.set("granularity", "hour");
    } else {
      q.set("from", r.from().toISOString().replace(/\.\d+Z$/, "Z"));
    }
    refresh.disabled = true;
    try {
      const d = await api("GET", "/dashboard?" + q);
      state.publicURL = d.public_url || "";
      last = d;
      drawDashboard(body, d);
    } catch (e) {
      showError(body, e);
    } finally {
      refresh.disabled = false;
    }
  }
  stopResize = onResize(() => { if (last) drawDashboard(body, last); });
  load();
}

function totalsCard(title, t, prefix) {
  return h("section", { class: "card" },
    h("h2", null, title),
    h("div", { class: "stats" },
      stat("Requests", fmtInt(t.requests), prefix + "-requests", t.errors ? fmtInt(t.errors) + " errors" : null),
      stat("Tokens", fmtCompact(t.tokens), prefix + "-tokens",
        fmtCompact(t.input_tokens) + " in · " + fmtCompact(t.output_tokens) + " out"),
      stat("Cost", fmtUSD(t.cost_usd), prefix + "-cost", t.images ? fmtInt(t.images) + " images" : null)));
}

const metrics = {
  requests: { label: "Requests", get: (p) => p.requests, fmt: fmtCompact },
  tokens: { label: "Tokens", get: (p) => p.tokens, fmt: fmtCompact },
  cost: { label: "Cost", get: (p) => p.cost_usd, fmt: (v) => fmtUSD(v) },
};

function drawDashboard(body, d) {
  const r = d.range;
  const gran = d.series.granularity;
  const chartBox = h("div", { class: "chart-box", id: "trend-chart" });
  const metricSel = h("select", { id: "metric", "aria-label": "chart metric" },
    Object.entries(metrics).map(([k, m]) => h("option", { value: k, selected: k === dash.metric }, m.label)));
  const draw = () => {
    const m = metrics[dash.metric];
    barChart(chartBox, d.series.points.map((p) => ({
      value: m.get(p) || 0,
      label: utcLabel(p.start, gran),
      title: (gran === "hour" ? p.start.slice(0, 13).replace("T", " ") + ":00 UTC" : p.start.slice(0, 10)) +
        ": " + fmtInt(p.requests) + " requests, " + fmtInt(p.tokens) + " tokens, " + fmtUSD(p.cost_usd),
    })), m.fmt);
  };
  metricSel.addEventListener("change", () => { dash.metric = metricSel.value; draw(); });

  const models = table([
    { title: "Model", cell: (m) => h("span", { class: "mono" }, m.id) },
    { title: "Requests", class: "num", cell: (m) => fmtInt(m.totals.requests) },
    { title: "Tokens", class: "num", cell: (m) => fmtCompact(m.totals.tokens) },
    { title: "Cost", class: "num", cell: (m) => fmtUSD(m.totals.cost_usd) },
  ], d.models || [], { id: "models-table", empty: "No requests in this range." });

  const keys = table([
    { title: "Key", cell: (k) => [h("span", { class: "key-name" }, k.deleted ? "(deleted key)" : k.name || "(unnamed)"), " ", h("span", { class: "mono muted small" }, k.hint || k.id.slice(0, 8))] },
    { title: "Requests", class: "num", cell: (k) => fmtInt(k.totals.requests) },
    { title: "Tokens", class: "num", cell: (k) => fmtCompact(k.totals.tokens) },
    { title: "Cost", class: "num", cell: (k) => fmtUSD(k.totals.cost_usd) },
  ], d.top_keys || [], { id: "top-keys", empty: "No key was used in this range." });

  const accounts = d.accounts_configured
    ? table([
      { title: "Account", cell: (a) => [h("div", null, a.name), h("div", { class: "muted small" }, a.kind)] },
      { title: "Status", cell: (a) => statusBadge(a.status) },
      { title: "Why", cell: (a) => accountReason(a) },
      { title: "Last used", cell: (a) => fmtTime(a.last_used_at) },
    ], d.accounts, { id: "dash-accounts", empty: "No upstream accounts yet." })
    : h("p", { class: "muted" }, "Claude accounts are not configured on this relay.");

  const svc = Object.entries(d.services || {});
  const redis = d.redis || {};
  const health = h("dl", { class: "kv", id: "health" },
    h("dt", null, "Redis"),
    h("dd", { id: "redis-state" }, redis.ok ? badge("connected", "ok") : badge("down", "bad"), " ",
      redis.ok ? [redis.latency_ms.toFixed(2) + " ms", redis.version ? " · Redis " + redis.version : "",
        redis.used_memory ? " · " + redis.used_memory : "", redis.connected_clients ? " · " + redis.connected_clients + " clients" : ""].join("")
        : redis.error || ""),
    svc.length === 0 ? [h("dt", null, "Vertical Studio"), h("dd", { id: "vs-state" }, h("span", { class: "muted" }, "not configured (set VS_EMAIL and VS_PASSWORD)"))] : null,
    svc.map(([name, v]) => [
      h("dt", null, name === "vertical_studio" ? "Vertical Studio session" : name),
      h("dd", { id: name === "vertical_studio" ? "vs-state" : null }, v.ok ? badge(v.state, "ok") : badge(v.state.split(":")[0], "bad"), v.ok ? "" : " " + v.state),
    ]),
    h("dt", null, "API keys"), h("dd", null, d.key_count === undefined ? "—" : fmtInt(d.key_count)));

  const rangeLabel = dash.range === "custom" ? isoDate(new Date(r.from)) + " – " + isoDate(new Date(new Date(r.to) - 1)) : ranges[dash.range].label;
  replace(body,
    h("div", { class: "grid3" },
      totalsCard("Today (UTC)", d.today, "today"),
      dash.range === "today" ? null : totalsCard(rangeLabel, r.totals, "range"),
      totalsCard("All time", d.all_time, "all")),
    h("section", { class: "card" },
      h("div", { class: "card-head" }, h("h2", null, "Trend · " + rangeLabel + (gran === "hour" ? " by hour" : " by day") + " (UTC)"), metricSel),
      chartBox),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", null, "Usage by model"), models),
      h("section", { class: "card" }, h("h2", null, "Top keys by cost"), keys)),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", null, "Upstream accounts"), accounts),
      h("section", { class: "card" }, h("h2", null, "Services"), health)),
    h("p", { class: "muted small" }, "Updated " + fmtTime(d.now) + ". Usage is counted in UTC hours and days."));
  draw();
}

function statusBadge(status) {
  const kind = { active: "ok", paused: "warn", disabled: "muted", rate_limited: "warn", overloaded: "warn", needs_reauth: "bad" }[status] || "muted";
  return badge(status.replace("_", " "), kind);
}

function accountReason(a) {
  const parts = [];
  if (a.reason) parts.push(h("div", null, a.reason + (a.until ? " (until " + fmtTime(a.until) + ")" : "")));
  if (a.last_error) parts.push(h("div", { class: "muted small" }, "Last error " + fmtTime(a.last_error_at) + ": " + a.last_error));
  return parts.length ? parts : h("span", { class: "muted" }, "—");
}

// ---------- keys ----------

const keysView = { q: "", enabled: "", offset: 0, limit: 50 };

function renderKeys(root) {
  const search = h("input", { type: "search", id: "key-search", placeholder: "Search name, description, tag, hint", value: keysView.q, "aria-label": "search keys" });
  const filter = h("select", { id: "key-filter", "aria-label": "filter" },
    [["", "All keys"], ["true", "Enabled"], ["false", "Disabled"]].map(([v, l]) => h("option", { value: v, selected: v === keysView.enabled }, l)));
  const newBtn = h("button", { class: "btn primary", id: "new-key", type: "button" }, "New key");
  const panel = h("div", { id: "key-panel" });
  const list = h("div", { id: "key-list" }, h("p", { class: "muted" }, "Loading…"));
  let t = null;
  search.addEventListener("input", () => { clearTimeout(t); t = setTimeout(() => { keysView.q = search.value.trim(); keysView.offset = 0; load(); }, 250); });
  filter.addEventListener("change", () => { keysView.enabled = filter.value; keysView.offset = 0; load(); });
  newBtn.addEventListener("click", () => openForm(null));
  root.append(
    h("div", { class: "toolbar" }, h("h1", null, "API keys"), h("div", { class: "inline" }, search, filter, newBtn)),
    panel, list);

  async function load() {
    const q = new URLSearchParams({ offset: keysView.offset, limit: keysView.limit });
    if (keysView.q) q.set("q", keysView.q);
    if (keysView.enabled) q.set("enabled", keysView.enabled);
    try {
      const [res] = await Promise.all([api("GET", "/keys?" + q), loadAccounts()]);
      drawList(res);
    } catch (e) {
      showError(list, e);
    }
  }

  function drawList(res) {
    const rows = res.data;
    const tbl = table([
      { title: "Name", cell: (k) => [h("div", { class: "key-name" }, k.name || "(unnamed)"), k.description ? h("div", { class: "muted small" }, k.description) : null, k.tags.length ? h("div", null, k.tags.map((x) => badge(x, "tag"))) : null] },
      { title: "Key", cell: (k) => h("span", { class: "mono small" }, k.hint) },
      { title: "Status", cell: (k) => keyStatus(k) },
      { title: "Limits", cell: (k) => limitsSummary(k) },
      { title: "Created", cell: (k) => fmtTime(k.created_at) },
      { title: "", class: "actions", cell: (k) => keyActions(k) },
    ], rows, { id: "keys-table", empty: keysView.q || keysView.enabled ? "No key matches." : "No keys yet: create one." });
    const pager = h("div", { class: "pager" },
      h("span", { class: "muted small", id: "key-count" }, res.total === 0 ? "" : `${res.offset + 1}–${res.offset + rows.length} of ${res.total}`),
      keysView.offset > 0 ? h("button", { class: "btn small ghost", type: "button", on: { click: () => { keysView.offset = Math.max(0, keysView.offset - keysView.limit); load(); } } }, "Previous") : null,
      res.offset + rows.length < res.total ? h("button", { class: "btn small ghost", type: "button", on: { click: () => { keysView.offset += keysView.limit; load(); } } }, "Next") : null);
    replace(list, tbl, pager);
  }

  function keyActions(k) {
    const wrap = h("div", { class: "row-actions" });
    const act = (label, fn, cls) => h("button", { class: ["btn", "small", cls || "ghost"], type: "button", dataset: { action: label.toLowerCase() }, on: { click: fn } }, label);
    const run = async (fn) => {
      for (const b of wrap.querySelectorAll("button")) b.disabled = true;
      try { await fn(); } catch (e) { showError(panel, e); }
      await load();
    };
    const confirmThen = (label, question, fn) => act(label, () => {
      replace(wrap, h("span", { class: "small" }, question),
        act("Yes, " + label.toLowerCase(), () => run(fn), "danger"),
        act("Cancel", () => replace(wrap, ...buttons())));
    }, label === "Delete" ? "danger-ghost" : "ghost");
    const buttons = () => [
      act("Edit", () => openForm(k)),
      act("Usage", () => showUsage(k)),
      k.enabled
        ? act("Disable", () => run(() => api("POST", `/keys/${k.id}/disable`)))
        : act("Enable", () => run(() => api("POST", `/keys/${k.id}/enable`))),
      confirmThen("Regenerate", "The current key stops working.", async () => {
        const res = await api("POST", `/keys/${k.id}/regenerate`);
        showNewKey(res, true);
      }),
      confirmThen("Delete", "Delete this key for good?", () => api("DELETE", `/keys/${k.id}`)),
    ];
    wrap.append(...buttons());
    wrap.dataset.key = k.name;
    return wrap;
  }

  async function showUsage(k) {
    replace(panel, h("section", { class: "card" }, h("p", { class: "muted" }, "Loading usage of " + k.name + "…")));
    try {
      const [c, u] = await Promise.all([api("GET", `/keys/${k.id}/usage`), api("GET", `/usage/keys/${k.id}`)]);
      const close = h("button", { class: "btn small ghost", type: "button", on: { click: () => clear(panel) } }, "Close");
      replace(panel, h("section", { class: "card", id: "key-usage" },
        h("div", { class: "card-head" }, h("h2", null, "Usage of " + k.name), close),
        usageBlocks(u, c.usage, c.limits)));
    } catch (e) {
      showError(panel, e);
    }
  }

  function openForm(k) {
    replace(panel, keyForm(k, async (body) => {
      if (k) {
        await api("PATCH", `/keys/${k.id}`, body);
        clear(panel);
      } else {
        const res = await api("POST", "/keys", body);
        showNewKey(res, false);
      }
      await load();
    }, () => clear(panel)));
    panel.scrollIntoView({ block: "start" });
  }

  function showNewKey(res, regenerated) {
    replace(panel, newKeyCard(res, regenerated, () => clear(panel)));
    panel.scrollIntoView({ block: "start" });
  }

  load();
}

function keyStatus(k) {
  const now = Date.now();
  const out = [];
  if (!k.enabled) out.push(badge("disabled", "muted"));
  else if (k.expires_at && new Date(k.expires_at).getTime() <= now) out.push(badge("expired", "bad"));
  else out.push(badge("enabled", "ok"));
  if (k.expires_at) out.push(h("div", { class: "muted small" }, "expires " + fmtTime(k.expires_at)));
  else if (k.expiry.mode === "activation") out.push(h("div", { class: "muted small" }, fmtDuration(k.expiry.duration_sec) + " after first use"));
  out.push(h("div", { class: "muted small" }, k.permissions.join(", ") || "no services"));
  return out;
}

function limitsSummary(k) {
  const l = k.limits;
  const parts = [];
  if (l.requests_per_window) parts.push(fmtInt(l.requests_per_window) + " req / " + fmtDuration(l.window_sec));
  if (l.tokens_per_window) parts.push(fmtCompact(l.tokens_per_window) + " tok / " + fmtDuration(l.window_sec));
  if (l.max_concurrent) parts.push(l.max_concurrent + " at once");
  if (l.daily_cost_usd) parts.push(fmtUSD(l.daily_cost_usd) + " / day");
  if (l.total_cost_usd) parts.push(fmtUSD(l.total_cost_usd) + " total");
  if (k.allow_models.length) parts.push("only " + k.allow_models.join(", "));
  if (k.deny_models.length) parts.push("not " + k.deny_models.join(", "));
  return parts.length ? parts.map((p) => h("div", { class: "small" }, p)) : h("span", { class: "muted" }, "none");
}

function splitList(v) {
  return v.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
}

function numOrZero(v) {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

function localInputValue(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

// keyForm creates (k null) or edits a key with every setting the API has.
function keyForm(k, save, cancel) {
  const v = k || {
    name: "", description: "", tags: [], enabled: true, permissions: ["openai", "claude", "gemini"],
    allow_models: [], deny_models: [], expiry: { mode: "never" }, bound_accounts: {},
    limits: { window_sec: 0, requests_per_window: 0, tokens_per_window: 0, max_concurrent: 0, daily_cost_usd: 0, total_cost_usd: 0 },
  };
  const field = (label, input, hint) => h("label", null, label, input, hint ? h("span", { class: "hint" }, hint) : null);
  const name = h("input", { id: "kf-name", value: v.name, required: true, maxLength: 200 });
  const desc = h("input", { id: "kf-description", value: v.description });
  const tags = h("input", { id: "kf-tags", value: v.tags.join(", ") });
  const enabled = h("input", { type: "checkbox", id: "kf-enabled", checked: v.enabled });
  const perms = ["openai", "claude", "gemini"].map((p) => h("input", { type: "checkbox", id: "kf-perm-" + p, value: p, checked: v.permissions.includes(p) }));
  const allow = h("textarea", { id: "kf-allow", rows: 2, value: v.allow_models.join("\n") });
  const deny = h("textarea", { id: "kf-deny", rows: 2, value: v.deny_models.join("\n") });
  const num = (id, val, step) => h("input", { type: "number", id, min: 0, step: step || 1, value: val ? String(val) : "", placeholder: "no limit", inputMode: step ? "decimal" : "numeric" });
  const l = v.limits;
  const win = h("select", { id: "kf-window" },
    [[0, "—"], [60, "1 minute"], [300, "5 minutes"], [3600, "1 hour"], [18000, "5 hours"], [86400, "1 day"], [604800, "1 week"]]
      .concat(l.window_sec && ![0, 60, 300, 3600, 18000, 86400, 604800].includes(l.window_sec) ? [[l.window_sec, fmtDuration(l.window_sec)]] : [])
      .map(([s, lab]) => h("option", { value: String(s), selected: s === (l.window_sec || 0) }, lab)));
  const reqs = num("kf-requests", l.requests_per_window);
  const toks = num("kf-tokens", l.tokens_per_window);
  const conc = num("kf-concurrent", l.max_concurrent);
  const daily = num("kf-daily-cost", l.daily_cost_usd, "0.01");
  const total = num("kf-total-cost", l.total_cost_usd, "0.01");
  const mode = h("select", { id: "kf-expiry" },
    [["never", "Never"], ["fixed", "At a date"], ["activation", "Some time after first use"]].map(([m, lab]) => h("option", { value: m, selected: v.expiry.mode === m }, lab)));
  const at = h("input", { type: "datetime-local", id: "kf-expiry-at", value: localInputValue(v.expiry.at) });
  const dur = h("input", { id: "kf-expiry-duration", placeholder: "30d, 12h", value: v.expiry.duration_sec ? durText(v.expiry.duration_sec) : "" });
  const atWrap = field("Expires at (your local time)", at);
  const durWrap = field("Lifetime after first use", dur, "e.g. 30d, 12h, 90m");
  const syncExpiry = () => { atWrap.hidden = mode.value !== "fixed"; durWrap.hidden = mode.value !== "activation"; };
  mode.addEventListener("change", syncExpiry);
  syncExpiry();
  const claudeAccounts = (state.accounts || []).filter((a) => a.kind.startsWith("claude"));
  const bindClaude = h("select", { id: "kf-bind-claude" },
    h("option", { value: "" }, "Any (scheduler picks)"),
    claudeAccounts.map((a) => h("option", { value: a.id, selected: (v.bound_accounts || {}).claude === a.id }, a.name + " (" + a.kind + ")")));
  const err = h("div", { id: "kf-error" });
  const submit = h("button", { class: "btn primary", type: "submit", id: "kf-submit" }, k ? "Save" : "Create key");
  const form = h("form", { class: "card form", id: "key-form" },
    h("h2", null, k ? "Edit " + k.name : "New API key"),
    h("div", { class: "form-grid" },
      field("Name", name),
      field("Description", desc),
      field("Tags", tags, "comma separated"),
      h("label", { class: "check" }, enabled, "Enabled"),
      h("fieldset", null, h("legend", null, "Services"), perms.map((p) => h("label", { class: "check" }, p, p.value === "openai" ? "OpenAI-compatible (Vertical Studio)" : p.value === "claude" ? "Claude" : "Gemini"))),
      field("Only these models", allow, "one per line; '*' at the end matches a prefix; empty: all"),
      field("Never these models", deny, "one per line"),
      field("Limit window", win, "the requests and tokens limits count per window"),
      field("Requests per window", reqs),
      field("Tokens per window", toks),
      field("Concurrent requests", conc),
      field("Daily cost limit (USD)", daily, "per UTC day"),
      field("Total cost limit (USD)", total),
      field("Expiry", mode),
      atWrap, durWrap,
      field("Claude account", bindClaude, "pin this key's Claude requests to one account")),
    err,
    h("div", { class: "actions-row" }, submit, h("button", { class: "btn ghost", type: "button", on: { click: cancel } }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(err);
    const body = {
      name: name.value.trim(), description: desc.value.trim(), tags: splitList(tags.value), enabled: enabled.checked,
      permissions: perms.filter((p) => p.checked).map((p) => p.value),
      allow_models: splitList(allow.value), deny_models: splitList(deny.value),
      limits: {
        window_sec: Number(win.value), requests_per_window: Math.floor(numOrZero(reqs.value)), tokens_per_window: Math.floor(numOrZero(toks.value)),
        max_concurrent: Math.floor(numOrZero(conc.value)), daily_cost_usd: numOrZero(daily.value), total_cost_usd: numOrZero(total.value),
      },
      expiry: { mode: mode.value },
    };
    if ((body.limits.requests_per_window || body.limits.tokens_per_window) && !body.limits.window_sec) {
      replace(err, message("error", "Choose a limit window for the requests and tokens limits."));
      return;
    }
    if (mode.value === "fixed") {
      if (!at.value) { replace(err, message("error", "Choose when the key expires.")); return; }
      body.expiry.at = new Date(at.value).toISOString();
    } else if (mode.value === "activation") {
      if (!dur.value.trim()) { replace(err, message("error", "Give the key's lifetime, e.g. 30d.")); return; }
      body.expiry.duration = dur.value.trim();
    }
    const bound = Object.assign({}, v.bound_accounts || {});
    if (bindClaude.value) bound.claude = bindClaude.value; else delete bound.claude;
    body.bound_accounts = bound;
    submit.disabled = true;
    try {
      await save(body);
    } catch (e) {
      showError(err, e);
    } finally {
      submit.disabled = false;
    }
  });
  setTimeout(() => name.focus(), 0);
  return form;
}

function durText(sec) {
  for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (sec % n === 0) return sec / n + u;
  return sec + "s";
}

// newKeyCard shows a key once, with settings ready to paste into clients.
function newKeyCard(res, regenerated, done) {
  const key = res.key;
  const base = relayBase();
  const blocks = [
    { id: "settings-claude", title: "Claude Code", text: `export ANTHROPIC_BASE_URL=${base}/api/\nexport ANTHROPIC_AUTH_TOKEN=${key}` },
    { id: "settings-openai", title: "OpenAI SDKs (Python, Node, openai-go)", text: `base_url: ${base}/v1\napi_key:  ${key}\n\n# Python\nfrom openai import OpenAI\nclient = OpenAI(base_url="${base}/v1", api_key="${key}")\n\n# environment\nexport OPENAI_BASE_URL=${base}/v1\nexport OPENAI_API_KEY=${key}` },
    { id: "settings-sillytavern", title: "SillyTavern", text: `API: Chat Completion\n\nClaude models:\n  Chat Completion Source: Claude\n  Reverse Proxy URL: ${base}/api/v1\n  Proxy Password: ${key}\n\nOpenAI-compatible models:\n  Chat Completion Source: Custom (OpenAI-compatible)\n  Custom Endpoint (Base URL): ${base}/v1\n  Custom API Key: ${key}` },
  ];
  return h("section", { class: "card new-key", id: "new-key-card" },
    h("h2", null, (regenerated ? "New key for " : "Key created: ") + res.data.name),
    message("warn", regenerated ? "The old key no longer works. This is the only time the new key is shown: store it now." : "This is the only time the key is shown: store it now."),
    h("div", { class: "secret" }, h("code", { id: "new-key-value", class: "mono" }, key), copyButton(() => key, "Copy key")),
    blocks.map((b) => h("div", { class: "snippet" },
      h("div", { class: "snippet-head" }, h("h3", null, b.title), copyButton(() => b.text)),
      h("pre", { id: b.id }, b.text))),
    h("button", { class: "btn", type: "button", id: "new-key-done", on: { click: done } }, "I have stored the key"));
}

// ---------- accounts ----------

async function loadAccounts() {
  try {
    const res = await api("GET", "/accounts");
    state.accounts = res.accounts || [];
  } catch (e) {
    if (e instanceof ApiError && e.status === 503) state.accounts = null;
    else if (!(e instanceof ApiError && e.status === 401)) state.accounts = state.accounts || [];
    if (e instanceof ApiError && e.status === 401) throw e;
  }
  return state.accounts;
}

function renderAccounts(root) {
  const panel = h("div", { id: "account-panel" });
  const list = h("div", { id: "account-list" }, h("p", { class: "muted" }, "Loading…"));
  const addConsole = h("button", { class: "btn", type: "button", id: "add-console" }, "Add Console account");
  const startOAuth = h("button", { class: "btn primary", type: "button", id: "start-oauth" }, "Connect Claude account (OAuth)");
  addConsole.addEventListener("click", () => replace(panel, consoleForm()));
  startOAuth.addEventListener("click", () => oauthFlow(""));
  root.append(
    h("div", { class: "toolbar" }, h("h1", null, "Upstream accounts"), h("div", { class: "inline" }, addConsole, startOAuth)),
    panel, list);

  async function load() {
    try {
      const res = await api("GET", "/accounts");
      state.accounts = res.accounts || [];
      draw(state.accounts);
    } catch (e) {
      showError(list, e);
    }
  }

  function draw(accs) {
    replace(list, table([
      { title: "Account", cell: (a) => [h("div", { class: "key-name" }, a.name), h("div", { class: "muted small" }, a.kind + (a.email ? " · " + a.email : "") + (a.base_url ? " · " + a.base_url : ""))] },
      { title: "Status", cell: (a) => statusBadge(a.status) },
      { title: "Why / last error", cell: (a) => accountReason(reasonOf(a)) },
      { title: "Priority", class: "num", cell: (a) => String(a.priority) },
      { title: "Last used", cell: (a) => fmtTime(a.last_used_at) },
      { title: "", class: "actions", cell: (a) => actions(a) },
    ], accs, { id: "accounts-table", empty: "No upstream accounts yet." }));
  }

  function actions(a) {
    const wrap = h("div", { class: "row-actions" });
    wrap.dataset.account = a.name;
    const act = (label, fn, cls) => h("button", { class: ["btn", "small", cls || "ghost"], type: "button", dataset: { action: label.toLowerCase() }, on: { click: fn } }, label);
    const run = async (fn) => {
      for (const b of wrap.querySelectorAll("button")) b.disabled = true;
      try { await fn(); } catch (e) { showError(panel, e); }
      await load();
    };
    const buttons = () => {
      const out = [];
      if (a.schedulable) {
        out.push(act("Pause", () => {
          const note = h("input", { placeholder: "why (optional)", "aria-label": "pause note", class: "small-input" });
          replace(wrap, note, act("Pause now", () => run(() => api("POST", `/accounts/${a.id}/pause`, { note: note.value.trim() })), "danger"),
            act("Cancel", () => replace(wrap, ...buttons())));
          note.focus();
        }));
      } else {
        out.push(act("Resume", () => run(() => api("POST", `/accounts/${a.id}/resume`))));
      }
      out.push(act(a.enabled ? "Disable" : "Enable", () => run(() => api("PATCH", `/accounts/${a.id}`, { enabled: !a.enabled }))));
      if (a.state && (a.state.rate_limited_until || a.state.paused_until || a.state.needs_reauth)) {
        out.push(act("Clear state", () => run(() => api("POST", `/accounts/${a.id}/reset`))));
      }
      if (a.kind === "claude-oauth") {
        out.push(act("Refresh token", () => run(() => api("POST", `/accounts/${a.id}/refresh`))));
        out.push(act("Re-authorize", () => oauthFlow(a.id)));
      }
      out.push(act("Delete", () => {
        replace(wrap, h("span", { class: "small" }, "Delete " + a.name + "?"),
          act("Yes, delete", () => run(() => api("DELETE", `/accounts/${a.id}`)), "danger"),
          act("Cancel", () => replace(wrap, ...buttons())));
      }, "danger-ghost"));
      return out;
    };
    wrap.append(...buttons());
    return wrap;
  }

  function consoleForm() {
    const name = h("input", { id: "af-name", required: true });
    const key = h("input", { id: "af-api-key", type: "password", autocomplete: "off", required: true });
    const base = h("input", { id: "af-base-url", placeholder: "default: the Anthropic API", type: "url" });
    const prio = h("input", { id: "af-priority", type: "number", min: 1, max: 100, value: "50" });
    const models = h("textarea", { id: "af-models", rows: 2 });
    const proxy = h("input", { id: "af-proxy", placeholder: "socks5://host:1080 (optional)" });
    const err = h("div");
    const submit = h("button", { class: "btn primary", type: "submit", id: "af-submit" }, "Add account");
    const form = h("form", { class: "card form", id: "console-form" },
      h("h2", null, "Add a Claude Console account"),
      h("div", { class: "form-grid" },
        h("label", null, "Name", name),
        h("label", null, "API key", key),
        h("label", null, "Base URL", base),
        h("label", null, "Priority", prio, h("span", { class: "hint" }, "1 is tried first")),
        h("label", null, "Models", models, h("span", { class: "hint" }, "one per line; empty: any")),
        h("label", null, "Proxy", proxy)),
      err,
      h("div", { class: "actions-row" }, submit, h("button", { class: "btn ghost", type: "button", on: { click: () => clear(panel) } }, "Cancel")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      clear(err);
      const body = { kind: "claude-console", name: name.value.trim(), api_key: key.value.trim(), priority: Number(prio.value) || 50, models: splitList(models.value) };
      if (base.value.trim()) body.base_url = base.value.trim();
      if (proxy.value.trim()) body.proxy = proxy.value.trim();
      try {
        await api("POST", "/accounts", body);
        key.value = "";
        clear(panel);
        await load();
      } catch (e) {
        showError(err, e);
      } finally {
        submit.disabled = false;
      }
    });
    setTimeout(() => name.focus(), 0);
    return form;
  }

  async function oauthFlow(accountID) {
    replace(panel, h("section", { class: "card" }, h("p", { class: "muted" }, "Starting the authorization…")));
    let start;
    try {
      start = await api("POST", "/accounts/oauth/start", accountID ? { account_id: accountID } : {});
    } catch (e) {
      showError(panel, e);
      return;
    }
    const url = String(start.authorize_url || "");
    const safe = /^https?:\/\//i.test(url);
    const code = h("input", { id: "oauth-code", autocomplete: "off", required: true, placeholder: "paste the code here" });
    const name = h("input", { id: "oauth-name", placeholder: "default: the account's email" });
    const err = h("div");
    const submit = h("button", { class: "btn primary", type: "submit", id: "oauth-submit" }, "Finish");
    const form = h("form", { class: "card form", id: "oauth-form" },
      h("h2", null, accountID ? "Re-authorize the Claude account" : "Connect a Claude account"),
      h("ol", null,
        h("li", null, "Open the authorization page, sign in to Claude and approve: ",
          safe ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", id: "oauth-url" }, "open authorization page") : h("span", { class: "mono" }, url),
          " ", copyButton(() => url, "Copy link")),
        h("li", null, "Copy the code the page shows and paste it below."),
        h("li", null, "The link works until " + fmtTime(start.expires_at) + ".")),
      h("div", { class: "form-grid" },
        h("label", null, "Code", code),
        accountID ? null : h("label", null, "Name", name)),
      err,
      h("div", { class: "actions-row" }, submit, h("button", { class: "btn ghost", type: "button", on: { click: () => clear(panel) } }, "Cancel")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      clear(err);
      const body = { session_id: start.session_id, code: code.value.trim() };
      if (!accountID && name.value.trim()) body.name = name.value.trim();
      try {
        await api("POST", "/accounts/oauth/exchange", body);
        clear(panel);
        await load();
      } catch (e) {
        showError(err, e);
      } finally {
        submit.disabled = false;
      }
    });
    replace(panel, form);
  }

  load();
}

// reasonOf derives the dashboard's reason from a full account record.
function reasonOf(a) {
  const st = a.state || {};
  const out = { last_error: st.last_error, last_error_at: st.last_error_at };
  switch (a.status) {
    case "disabled": out.reason = "disabled by an administrator"; break;
    case "paused": out.reason = "paused by an administrator" + (a.pause_note ? ": " + a.pause_note : ""); break;
    case "needs_reauth": out.reason = st.reauth_reason || "the upstream refused its credentials; authorize it again"; break;
    case "rate_limited": out.reason = st.rate_limit_reason || "rate limited by the upstream"; out.until = st.rate_limited_until; break;
    case "overloaded": out.reason = st.pause_reason || "paused after upstream errors"; out.until = st.paused_until; break;
  }
  return out;
}

// ---------- password ----------

function renderPassword(root) {
  const cur = h("input", { type: "password", id: "pw-current", autocomplete: "current-password", required: true });
  const next = h("input", { type: "password", id: "pw-new", autocomplete: "new-password", required: true, minLength: 10, maxLength: 72 });
  const again = h("input", { type: "password", id: "pw-again", autocomplete: "new-password", required: true });
  const out = h("div", { id: "pw-result" });
  const submit = h("button", { class: "btn primary", type: "submit", id: "pw-submit" }, "Change password");
  const form = h("form", { class: "card form narrow", id: "password-form" },
    h("h1", null, "Change the admin password"),
    h("p", { class: "muted small" }, "Every other admin session ends; this one continues."),
    h("label", null, "Current password", cur),
    h("label", null, "New password", next),
    h("label", null, "New password again", again),
    out, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(out);
    if (next.value !== again.value) {
      replace(out, message("error", "The new passwords differ."));
      return;
    }
    submit.disabled = true;
    try {
      const s = await api("POST", "/password", { current_password: cur.value, new_password: next.value });
      setSession(s);
      cur.value = next.value = again.value = "";
      replace(out, message("ok", "The password was changed."));
    } catch (e) {
      showError(out, e);
    } finally {
      submit.disabled = false;
    }
  });
  root.append(form);
}

renderLogin();
