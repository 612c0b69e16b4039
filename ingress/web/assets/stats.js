// The key holder's stats page: paste a relay key, see that key's limits,
// usage and cost. The key is sent only to the relay's own key-info routes,
// which answer about the key that authenticates them and nothing else; it
// is kept in this module's memory only.

import {
  h, clear, replace, fmtInt, fmtCompact, fmtUSD, fmtTime, fmtDuration, callJSON,
  barChart, onResize, badge, usageBlocks, utcLabel,
} from "./dom.js";

const app = document.getElementById("app");
let key = null; // in memory only
let last = null;

const input = h("input", {
  id: "stats-key", type: "password", autocomplete: "off", spellcheck: false, required: true,
  placeholder: "cr_…", "aria-label": "your relay API key",
});
const submit = h("button", { class: "btn primary", type: "submit", id: "stats-submit" }, "Show usage");
const err = h("div", { id: "stats-error" });
const result = h("div", { id: "stats-result" });
const form = h("form", { class: "card form", id: "stats-form" },
  h("h1", null, "Your relay key"),
  h("p", { class: "muted" }, "Paste your API key to see its limits, usage and cost. The key is only sent to this relay and is not stored in the browser."),
  h("div", { class: "inline wide" }, input, submit),
  err);

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const k = input.value.trim();
  if (!k) return;
  key = k;
  input.value = "";
  await load();
});

async function load() {
  clear(err);
  submit.disabled = true;
  try {
    const [info, u] = await Promise.all([
      callJSON("GET", "/v1/key-info", { token: key }),
      callJSON("GET", "/web/api/key-usage", { token: key }),
    ]);
    last = { info, u };
    draw();
  } catch (e) {
    key = null;
    last = null;
    clear(result);
    replace(err, h("p", { class: "msg error", role: "alert" }, e.message));
  } finally {
    submit.disabled = false;
  }
}

function draw() {
  const { info, u } = last;
  const now = new Date(info.now).getTime();
  const expired = info.expires_at && new Date(info.expires_at).getTime() <= now;
  const status = !info.enabled ? badge("disabled", "muted") : expired ? badge("expired", "bad") : badge("active", "ok");
  let expiry = "never expires";
  if (info.expires_at) expiry = (expired ? "expired " : "expires ") + fmtTime(info.expires_at);
  else if (info.expiry.mode === "activation") expiry = "expires " + fmtDuration(info.expiry.duration_sec) + " after its first use";
  const models = [];
  if (info.allow_models.length) models.push("only " + info.allow_models.join(", "));
  if (info.deny_models.length) models.push("not " + info.deny_models.join(", "));
  const chartBox = h("div", { class: "chart-box", id: "stats-chart" });
  const refresh = h("button", { class: "btn small", type: "button", id: "stats-refresh", on: { click: () => load() } }, "Refresh");
  const forget = h("button", {
    class: "btn small ghost", type: "button", id: "stats-forget",
    on: { click: () => { key = null; last = null; clear(result); input.focus(); } },
  }, "Forget key");
  replace(result,
    h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("h2", { id: "stats-name" }, info.name || "(unnamed key)"),
        h("div", { class: "inline" }, refresh, forget)),
      h("dl", { class: "kv" },
        h("dt", null, "Key"), h("dd", { class: "mono", id: "stats-hint" }, info.hint),
        h("dt", null, "Status"), h("dd", null, status, " ", expiry),
        h("dt", null, "Services"), h("dd", null, info.permissions.join(", ") || "none"),
        h("dt", null, "Models"), h("dd", null, models.length ? models.join("; ") : "all"),
        info.description ? [h("dt", null, "About"), h("dd", null, info.description)] : null,
        h("dt", null, "Last used"), h("dd", null, fmtTime(info.usage.last_used)))),
    h("section", { class: "card" }, h("h2", null, "Usage and cost"), usageBlocks(u.summary, info.usage, info.limits)),
    h("section", { class: "card" }, h("h2", null, "Requests per day, last 30 days (UTC)"), chartBox),
    h("p", { class: "muted small" }, "Updated " + fmtTime(info.now) + "."));
  barChart(chartBox, u.daily.map((p) => ({
    value: p.requests || 0,
    label: utcLabel(p.start, "day"),
    title: p.start.slice(0, 10) + ": " + fmtInt(p.requests) + " requests, " + fmtCompact(p.tokens) + " tokens, " + fmtUSD(p.cost_usd),
  })), fmtCompact);
}

onResize(() => { if (last) draw(); });

replace(app,
  h("header", { class: "top" },
    h("a", { class: "brand", href: "/web/stats" }, h("img", { src: "/web/assets/icon.svg", alt: "", width: 22, height: 22 }), "relay"),
    h("span", { class: "muted small" }, "key usage")),
  h("main", { class: "content" }, form, result));
input.focus();
