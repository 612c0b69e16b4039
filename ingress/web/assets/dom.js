// Shared pieces of the admin UI and the stats page: building DOM safely,
// formatting numbers and times, calling the relay's JSON APIs, and an SVG
// bar chart. Every piece of data reaches the page as text (textContent or an
// attribute value); nothing is ever parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

function setProps(el, props) {
  if (!props) return;
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === "class") {
      el.setAttribute("class", Array.isArray(v) ? v.filter(Boolean).join(" ") : v);
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (k.startsWith("on") || /HTML$/.test(k) || k === "style") {
      throw new Error("refusing to set " + k); // event handlers go in `on`, markup is never built from strings
    } else if (k in el && typeof el[k] !== "function" && !(el instanceof SVGElement)) {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

// h builds an HTML element: h("button", {class: "x", on: {click: fn}}, "text").
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

// s builds an SVG element.
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, attrs);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

const intFmt = new Intl.NumberFormat("en-US");
const compactFmt = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function fmtInt(n) {
  return intFmt.format(Number(n) || 0);
}

export function fmtCompact(n) {
  n = Number(n) || 0;
  return Math.abs(n) < 10000 ? intFmt.format(n) : compactFmt.format(n);
}

export function fmtUSD(x) {
  x = Number(x) || 0;
  if (x !== 0 && Math.abs(x) < 0.01) return "$" + x.toFixed(4);
  return "$" + x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (isNaN(d)) return "—";
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function fmtDuration(sec) {
  sec = Number(sec) || 0;
  if (sec <= 0) return "—";
  const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  for (const [u, n] of units) if (sec % n === 0) return sec / n + " " + u;
  return sec + " s";
}

// ApiError is a refused or failed API call, with the relay's message.
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || "";
  }
}

// callJSON calls the relay and returns the parsed JSON body; errors in any of
// the relay's error formats become an ApiError with its message.
export async function callJSON(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "The relay cannot be reached: " + e.message);
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!resp.ok) {
    const err = data && data.error;
    const msg = (err && (err.message || (typeof err === "string" ? err : ""))) || resp.statusText || "request failed";
    throw new ApiError(resp.status, msg, err && (err.code || err.type));
  }
  return data;
}

// copyButton copies the text that get() returns.
export function copyButton(get, label = "Copy") {
  const b = h("button", { type: "button", class: "btn small ghost" }, label);
  b.addEventListener("click", async () => {
    const text = get();
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = "Copied";
    } catch {
      b.textContent = "Select and copy";
    }
    setTimeout(() => { b.textContent = label; }, 1500);
  });
  return b;
}

// barChart draws points as bars in an SVG sized to the container: each
// point is {label, title, value}; fmt formats axis values.
export function barChart(container, points, fmt) {
  const width = Math.max(container.clientWidth || 0, 280);
  const height = width < 500 ? 180 : 240;
  const pad = { l: width < 500 ? 44 : 60, r: 8, t: 10, b: 24 };
  const iw = width - pad.l - pad.r, ih = height - pad.t - pad.b;
  const max = Math.max(1e-12, ...points.map((p) => p.value));
  let nice = niceMax(max);
  if (points.every((p) => Number.isInteger(p.value))) nice = Math.max(4, Math.ceil(nice / 4) * 4); // whole-number ticks
  const svg = s("svg", {
    class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "usage chart",
  });
  for (let i = 0; i <= 4; i++) {
    const v = (nice * i) / 4;
    const y = pad.t + ih - (ih * i) / 4;
    svg.appendChild(s("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y, y2: y }));
    svg.appendChild(s("text", { class: "axis", x: pad.l - 6, y: y + 4, "text-anchor": "end" }, fmt(v)));
  }
  const n = Math.max(points.length, 1);
  const slot = iw / n;
  const bw = Math.max(1, slot * 0.72);
  const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(iw / 56))));
  points.forEach((p, i) => {
    const bh = p.value > 0 ? Math.max(1, (p.value / nice) * ih) : 0;
    const x = pad.l + i * slot + (slot - bw) / 2;
    const bar = s("rect", { class: "bar", x, y: pad.t + ih - bh, width: bw, height: bh, rx: Math.min(2, bw / 3) });
    bar.appendChild(s("title", null, p.title));
    svg.appendChild(bar);
    // a transparent full-height target so small bars still show their title
    const hit = s("rect", { class: "hit", x: pad.l + i * slot, y: pad.t, width: slot, height: ih });
    hit.appendChild(s("title", null, p.title));
    svg.appendChild(hit);
    if (i % every === 0) {
      svg.appendChild(s("text", { class: "axis", x: pad.l + i * slot + slot / 2, y: height - 6, "text-anchor": "middle" }, p.label));
    }
  });
  svg.appendChild(s("line", { class: "baseline", x1: pad.l, x2: width - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
  replace(container, svg);
}

function niceMax(v) {
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

// onResize calls fn when the window width changes (debounced).
export function onResize(fn) {
  let t = null, w = window.innerWidth;
  const handler = () => {
    if (window.innerWidth === w) return;
    w = window.innerWidth;
    clearTimeout(t);
    t = setTimeout(fn, 150);
  };
  window.addEventListener("resize", handler);
  return () => window.removeEventListener("resize", handler);
}

// table builds a table from column definitions {title, cell(row), class}.
export function table(columns, rows, { empty = "Nothing yet.", id } = {}) {
  const head = h("tr", null, columns.map((c) => h("th", { class: c.class, scope: "col" }, c.title)));
  const body = h("tbody");
  if (rows.length === 0) {
    body.appendChild(h("tr", null, h("td", { class: "empty", colSpan: columns.length }, empty)));
  }
  for (const r of rows) {
    body.appendChild(h("tr", null, columns.map((c) => h("td", { class: c.class, dataset: { label: c.title } }, h("div", { class: "cell" }, c.cell(r))))));
  }
  return h("div", { class: "table-wrap" }, h("table", { id }, h("thead", null, head), body));
}

export function stat(label, value, id, sub) {
  return h("div", { class: "stat" },
    h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value", id }, value),
    sub ? h("div", { class: "stat-sub" }, sub) : null);
}

export function badge(text, kind) {
  return h("span", { class: ["badge", kind] }, text);
}

// utcLabel labels a bucket start: "14:00" for hours, "03-10" for days.
export function utcLabel(iso, gran) {
  const d = new Date(iso);
  if (gran === "hour") return String(d.getUTCHours()).padStart(2, "0") + ":00";
  return String(d.getUTCMonth() + 1).padStart(2, "0") + "-" + String(d.getUTCDate()).padStart(2, "0");
}

// usageBlocks shows a key's usage summary and counters against its limits.
export function usageBlocks(u, counters, limits) {
  const per = (label, t, id) => h("div", { class: "card inner" }, h("h3", null, label),
    h("div", { class: "stats" }, stat("Requests", fmtInt(t.requests), id + "-requests"), stat("Tokens", fmtCompact(t.tokens), id + "-tokens"), stat("Cost", fmtUSD(t.cost_usd), id + "-cost")));
  return [
    h("div", { class: "grid3" }, per("Today (UTC)", u.today, "ku-today"), per("This month", u.month, "ku-month"), per("All time", u.total, "ku-total")),
    counters ? limitMeters(counters, limits) : null,
    h("h3", null, "By model"),
    table([
      { title: "Model", cell: (m) => h("span", { class: "mono" }, m.model) },
      { title: "Today", class: "num", cell: (m) => fmtInt(m.today.requests) + " · " + fmtUSD(m.today.cost_usd) },
      { title: "Month", class: "num", cell: (m) => fmtInt(m.month.requests) + " · " + fmtUSD(m.month.cost_usd) },
      { title: "Total", class: "num", cell: (m) => fmtInt(m.total.requests) + " · " + fmtUSD(m.total.cost_usd) },
    ], u.models || [], { empty: "No requests yet." }),
  ];
}

export function limitMeters(c, l) {
  const rows = [];
  const meter = (label, used, max, fmt) => {
    rows.push(h("div", { class: "meter-row" },
      h("div", { class: "meter-label" }, label),
      max ? h("meter", { min: 0, max, value: Math.min(used, max), low: max * 0.7, high: max * 0.9, optimum: 0 }) : h("span", { class: "muted small" }, "no limit"),
      h("div", { class: "meter-value" }, fmt(used) + (max ? " / " + fmt(max) : ""))));
  };
  const win = l.window_sec ? " (per " + fmtDuration(l.window_sec) + ")" : "";
  meter("Requests this window" + win, c.window_requests, l.requests_per_window, fmtInt);
  meter("Tokens this window" + win, c.window_tokens, l.tokens_per_window, fmtCompact);
  meter("Concurrent requests", c.concurrent, l.max_concurrent, fmtInt);
  meter("Cost today (UTC)", c.today_cost_usd, l.daily_cost_usd, fmtUSD);
  meter("Cost in total", c.total_cost_usd, l.total_cost_usd, fmtUSD);
  return h("div", { class: "meters", id: "limit-meters" }, rows,
    c.window_end && (l.requests_per_window || l.tokens_per_window) ? h("p", { class: "muted small" }, "The window resets " + fmtTime(c.window_end) + ".") : null);
}
