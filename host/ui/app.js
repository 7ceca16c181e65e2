// The meterd dashboard: a single page over the JSON API, with the key the
// user pastes (kept in sessionStorage, sent as `Authorization: Bearer`).
// Routes are in the hash: #/ (the key's orgs), #/orgs/<org>, #/admin.
//
// Every number shown is the API's decimal text as it came; floats are used
// only to draw (chart points, bar widths, percentages). No element is built
// from HTML strings, so no org id or plugin text can inject markup, and
// nothing here is inline: the page runs under `default-src 'self'`.
"use strict";

(function () {
  const KEY = "meterd.key";
  const view = document.getElementById("view");
  const message = document.getElementById("message");
  const nav = document.getElementById("nav");
  const keyForm = document.getElementById("key-form");
  const keyInput = document.getElementById("key");
  const signedIn = document.getElementById("signed-in");
  const who = document.getElementById("who");
  let charts = [];
  let session = null; // { scope, orgs } from GET /v1/orgs
  let renderCount = 0;

  // --- DOM -----------------------------------------------------------------

  /** An element: attributes (`data-*`, `class`, …), then children (text or nodes). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") el.textContent = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** A value cell: the API's text as is, findable by `data-field`. */
  function field(name, value, tag) {
    const shown = value === null || value === undefined ? "—" : String(value);
    return h(tag || "span", { "data-field": name, class: "num" }, shown);
  }

  function table(head, rows, attrs) {
    return h("table", attrs || {},
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows));
  }

  function section(title, attrs, ...children) {
    return h("section", Object.assign({ class: "card" }, attrs || {}), h("h2", {}, title), ...children);
  }

  function showMessage(kind, text) {
    message.hidden = false;
    message.className = "message " + kind;
    message.setAttribute("data-kind", kind);
    message.textContent = text;
  }

  function clearMessage() {
    message.hidden = true;
    message.removeAttribute("data-kind");
    message.textContent = "";
  }

  function setState(state) {
    document.body.setAttribute("data-state", state);
  }

  function clearView() {
    for (const chart of charts) chart.destroy();
    charts = [];
    view.replaceChildren();
  }

  // --- API -----------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, text) {
      super(text);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path) {
    const key = sessionStorage.getItem(KEY);
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: "Bearer " + key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      throw new ApiFailure(0, "network", "The gateway did not answer (" + e.message + ").");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiFailure(response.status, error.code || "http_" + response.status,
        error.message || response.statusText);
    }
    return body;
  }

  function explain(failure, what) {
    if (!(failure instanceof ApiFailure)) return "Something went wrong: " + failure;
    switch (failure.status) {
      case 401:
        return "This key was refused (" + failure.message + "). Paste an active API key or the admin token.";
      case 403:
        return "This needs an admin key (" + failure.message + ").";
      case 404:
        return "Not found: " + what + " does not exist or this key may not read it.";
      default:
        return (failure.status ? "The gateway answered " + failure.status + ": " : "") + failure.message;
    }
  }

  // --- Decimal text helpers (display only) ---------------------------------

  /** A float for drawing; never shown. */
  function toFloat(text) {
    const f = Number.parseFloat(text);
    return Number.isFinite(f) ? f : 0;
  }

  function isZero(text) {
    return /^0(\.0*)?$/.test(String(text));
  }

  /** "2025-08-01T00:00:00Z" → milliseconds. */
  function ms(time) {
    return Date.parse(time);
  }

  function isoHour(t) {
    return new Date(t).toISOString().slice(0, 13) + ":00:00Z";
  }

  // --- Routes ----------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const org = hash.match(/^\/orgs\/(.+)$/);
    if (org) {
      let id;
      try {
        id = decodeURIComponent(org[1]);
      } catch (_) {
        id = org[1];
      }
      return { page: "org", org: id };
    }
    if (hash === "/admin") return { page: "admin" };
    return { page: "home" };
  }

  function orgHref(org) {
    return "#/orgs/" + encodeURIComponent(org);
  }

  async function render() {
    const mine = ++renderCount;
    const stale = () => mine !== renderCount;
    clearMessage();
    clearView();
    const key = sessionStorage.getItem(KEY);
    keyForm.hidden = !!key;
    signedIn.hidden = !key;
    if (!key) {
      nav.replaceChildren();
      session = null;
      view.append(h("section", { class: "card intro" },
        h("h2", {}, "Usage dashboard"),
        h("p", {}, "Paste an API key above: a tenant key shows its orgs, an admin key (or the admin token) " +
          "every org and the plugins.")));
      setState("signed-out");
      keyInput.focus();
      return;
    }
    setState("loading");
    try {
      if (!session) {
        session = await api("/v1/orgs");
        if (stale()) return;
      }
      renderNav();
      const r = route();
      if (r.page === "org") await renderOrg(r.org, stale);
      else if (r.page === "admin") await renderAdmin(stale);
      else if (session.scope !== "admin" && session.orgs.length === 1) {
        location.replace(orgHref(session.orgs[0].org));
        return;
      } else renderHome();
      if (!stale()) setState("ready");
    } catch (failure) {
      if (stale()) return;
      if (failure instanceof ApiFailure && failure.status === 401) session = null;
      const r = route();
      const what = r.page === "org" ? "org \u201c" + r.org + "\u201d" : "this page";
      showMessage("error", explain(failure, what));
      setState("error");
    }
  }

  function renderNav() {
    who.textContent = session.scope === "admin" ? "admin key" : "tenant key";
    const current = route();
    const links = session.orgs.map((o) =>
      h("a", {
        href: orgHref(o.org),
        "data-org": o.org,
        class: current.page === "org" && current.org === o.org ? "current" : null,
      }, o.org));
    if (session.scope === "admin") {
      links.push(h("a", { href: "#/admin", "data-nav": "admin", class: current.page === "admin" ? "current" : null },
        "Plugins"));
    }
    nav.replaceChildren(...links);
  }

  function renderHome() {
    const rows = session.orgs.map((o) =>
      h("tr", { "data-org": o.org },
        h("td", {}, h("a", { href: orgHref(o.org) }, o.org)),
        h("td", { "data-field": "plan" }, o.plan),
        h("td", {}, o.assigned ? "assigned " + o.assigned_at : "default plan"),
        h("td", {}, o.period.start + " \u2013 " + o.period.end)));
    view.append(section(session.scope === "admin" ? "Orgs" : "Your orgs", { id: "orgs" },
      rows.length
        ? table(["Org", "Plan", "Assignment", "Period"], rows)
        : h("p", { class: "empty" }, "No org yet: none has a plan or usage this period.")));
  }

  // --- One org -----------------------------------------------------------------

  async function renderOrg(org, stale) {
    const path = "/v1/orgs/" + encodeURIComponent(org);
    const [ent, grants] = await Promise.all([api(path + "/entitlements"), api(path + "/grants")]);
    if (stale()) return;
    const page = h("div", { id: "org", "data-org": ent.org });
    page.append(h("div", { class: "org-head" },
      h("h1", {}, ent.org),
      h("p", {},
        "Plan ", field("plan", ent.plan, "strong"),
        ent.assigned ? " (assigned " + ent.assigned_at + ")" : " (default plan)",
        " \u00b7 period ", field("period-start", ent.period.start), " \u2013 ", field("period-end", ent.period.end))));
    page.append(h("div", { class: "tiles" },
      concurrencyTile(ent.concurrency),
      tile("Credit balance", field("credit-balance", grants.balance), grants.currency, "credit-balance"),
      tile("Spend this period", field("spend-this-period", grants.spend_this_period), grants.currency, "spend"),
      tile("Sessions over limit", field("sessions-over-limit", String(ent.sessions.over_limit.length)),
        ent.sessions.limit_seconds === null ? "no session limit" : "limit " + ent.sessions.limit_seconds + " s",
        "sessions")));
    page.append(quotaSection(ent.meters));
    const chartsCard = section("Usage this period", { id: "usage" });
    page.append(chartsCard);
    page.append(creditSection(grants));
    if (ent.sessions.over_limit.length) page.append(sessionSection(ent.sessions));
    view.append(page);
    await renderCharts(org, ent, chartsCard, stale);
  }

  function tile(title, value, note, id) {
    return h("div", { class: "tile", id: "tile-" + id }, h("h3", {}, title), h("div", { class: "big" }, value),
      h("div", { class: "note" }, note));
  }

  function bar(fraction, kind) {
    const pct = Math.max(0, Math.min(1, fraction)) * 100;
    const fill = h("div", { class: "fill " + kind });
    fill.style.width = pct.toFixed(1) + "%"; // CSSOM, allowed by the CSP (unlike style="")
    return h("div", { class: "bar", role: "presentation" }, fill);
  }

  function concurrencyTile(c) {
    const limit = c.limit === null ? null : c.limit;
    const over = limit !== null && c.running >= limit;
    return h("div", { class: "tile", id: "tile-concurrency" },
      h("h3", {}, "Sandboxes running now"),
      h("div", { class: "big" }, field("concurrency-running", String(c.running)), " / ",
        field("concurrency-limit", limit === null ? "no limit" : String(limit))),
      limit === null ? h("div", { class: "note" }, "the plan sets no concurrency limit")
        : bar(limit === 0 ? 1 : c.running / limit, over ? "hard" : "ok"),
      c.has_access ? null : h("div", { class: "note warn" }, "at the limit: sandbox.start is denied"));
  }

  function quotaSection(meters) {
    const rows = meters.map((m) => {
      let gauge = h("span", { class: "muted" }, "no quota");
      if (m.quota !== null) {
        const quota = toFloat(m.quota);
        const fraction = quota > 0 ? toFloat(m.used) / quota : (isZero(m.used) ? 0 : 1);
        const past = fraction >= 1;
        const kind = past ? (m.enforcement === "hard" ? "hard" : "soft") : fraction >= 0.8 ? "near" : "ok";
        gauge = h("div", { class: "gauge" }, bar(fraction, kind),
          h("span", { class: "pct" }, (fraction * 100).toFixed(fraction < 0.1 ? 1 : 0) + "%"));
      }
      return h("tr", { "data-meter": m.meter, class: m.has_access ? null : "denied" },
        h("th", { scope: "row" }, m.meter),
        h("td", {}, field("used", m.used)),
        h("td", {}, field("quota", m.quota)),
        h("td", {}, field("remaining", m.remaining)),
        h("td", {}, m.unit),
        h("td", { "data-field": "enforcement" }, m.enforcement || "—"),
        h("td", { class: "gauge-cell" }, gauge));
    });
    return section("Meters and quotas", { id: "quotas" },
      table(["Meter", "Used", "Quota", "Remaining", "Unit", "Enforcement", "Used of quota"], rows,
        { class: "meters" }));
  }

  function creditSection(c) {
    const rows = c.grants.map((g, i) =>
      h("tr", { "data-grant": String(i), "data-grant-id": g.id === null ? "" : String(g.id) },
        h("td", {}, field("source", g.source)),
        h("td", {}, field("amount", g.amount)),
        h("td", {}, field("used", g.used)),
        h("td", {}, field("remaining", g.remaining)),
        h("td", { "data-field": "status", class: "status-" + g.status }, g.status),
        h("td", {}, String(g.priority)),
        h("td", {}, g.effective_at),
        h("td", {}, g.expires_at || "never")));
    return section("Credits", { id: "credits" },
      h("dl", { class: "facts" },
        h("dt", {}, "Balance"), h("dd", {}, field("balance", c.balance), " " + c.currency),
        h("dt", {}, "Spend (all time)"), h("dd", {}, field("spend", c.spend), " " + c.currency),
        h("dt", {}, "Uncovered spend"), h("dd", {}, field("uncovered", c.uncovered), " " + c.currency),
        h("dt", {}, "Spend this period"), h("dd", {}, field("spend_this_period", c.spend_this_period),
          " " + c.currency)),
      rows.length
        ? table(["Source", "Amount", "Used", "Remaining", "Status", "Priority", "Effective", "Expires"], rows,
          { class: "grants" })
        : h("p", { class: "empty" }, "No grants."));
  }

  function sessionSection(s) {
    const rows = s.over_limit.map((x) =>
      h("tr", {}, h("td", {}, x.sandbox), h("td", {}, x.started_at), h("td", {}, x.ended_at || "running"),
        h("td", {}, field("seconds", x.seconds))));
    return section("Sessions over the limit", { id: "sessions" },
      table(["Sandbox", "Started", "Ended", "Seconds"], rows));
  }

  // --- Charts --------------------------------------------------------------------

  /**
   * The range a chart of `window` covers: by day, the period up to the end of
   * today (later days hold nothing but carried levels); by hour, the last 48
   * hours within the period.
   */
  function chartRange(period, window) {
    const now = Date.now();
    if (window === "day") {
      const day = 86400 * 1000;
      return { from: period.start, to: isoHour(Math.min(ms(period.end), Math.floor(now / day) * day + day)) };
    }
    const hour = 3600 * 1000;
    const from = Math.max(ms(period.start), Math.floor((now - 47 * hour) / hour) * hour);
    const to = Math.min(ms(period.end), Math.ceil((now + 1) / hour) * hour);
    return { from: isoHour(from), to: isoHour(to) };
  }

  async function renderCharts(org, ent, card, stale) {
    const window = sessionStorage.getItem("meterd.window") === "hour" ? "hour" : "day";
    const picker = h("select", { id: "window", "aria-label": "Window" },
      h("option", { value: "day", selected: window === "day" }, "by day, this period so far"),
      h("option", { value: "hour", selected: window === "hour" }, "by hour, last 48 hours"));
    picker.addEventListener("change", () => {
      sessionStorage.setItem("meterd.window", picker.value);
      render();
    });
    card.querySelector("h2").append(" ", picker);
    const shown = ent.meters.filter((m) => !isZero(m.used) || m.quota !== null);
    const idle = ent.meters.filter((m) => !shown.includes(m));
    const grid = h("div", { class: "charts" });
    card.append(grid);
    if (!shown.length) grid.append(h("p", { class: "empty" }, "No usage this period."));
    if (idle.length) {
      card.append(h("p", { class: "muted", id: "idle-meters" }, "No usage this period: " +
        idle.map((m) => m.meter).join(", ") + "."));
    }
    const range = chartRange(ent.period, window);
    const answers = await Promise.all(shown.map((m) => {
      const q = new URLSearchParams({ meter: m.meter, from: range.from, to: range.to, window });
      return api("/v1/orgs/" + encodeURIComponent(org) + "/usage?" + q.toString());
    }));
    if (stale()) return;
    answers.forEach((u) => {
      const plot = h("div", { class: "plot" });
      const box = h("div", {
        class: "chart", "data-meter": u.meter, "data-from": u.from, "data-to": u.to, "data-window": window,
      },
      h("div", { class: "chart-head" }, h("h3", {}, u.meter),
        h("span", {}, field("total", u.total), " " + u.unit)),
      plot);
      grid.append(box);
      drawChart(plot, u, window);
    });
  }

  function drawChart(el, usage, window) {
    if (typeof uPlot === "undefined") {
      el.append(h("p", { class: "muted" }, "(chart library not loaded)"));
      return;
    }
    const xs = usage.windows.map((w) => ms(w.start) / 1000);
    const ys = usage.windows.map((w) => toFloat(w.value));
    el.setAttribute("data-points", String(xs.length));
    const half = (window === "hour" ? 3600 : 86400) / 2;
    if (!xs.length) {
      el.append(h("p", { class: "muted" }, "(no windows in this range)"));
      return;
    }
    const width = Math.max(260, el.clientWidth || 360);
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
    const opts = {
      width,
      height: 170,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // Half a window of room on each side, so the first and last bars show whole.
        x: { time: true, range: () => [xs[0] - half, xs[xs.length - 1] + half] },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        { stroke: "#5b6573", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#d5d9df" } },
        { stroke: "#5b6573", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#d5d9df" }, size: 60 },
      ],
      series: [
        {},
        { label: usage.meter, stroke: "#2f6fde", fill: "rgba(47,111,222,0.35)", width: 1, paths: bars,
          points: { show: false } },
      ],
    };
    charts.push(new uPlot(opts, [xs, ys], el));
    el.setAttribute("title", usage.meter + " by " + window);
  }

  // --- Admin -----------------------------------------------------------------------

  function pollStatus(p) {
    if (p.consecutive_failures > 0) return "failing (" + p.consecutive_failures + ")";
    if (p.last_success) return "ok";
    return "not run yet";
  }

  async function renderAdmin(stale) {
    const answer = await api("/v1/plugins");
    if (stale()) return;
    const rows = answer.plugins.map((p) =>
      h("tr", { "data-plugin": p.name },
        h("th", { scope: "row" }, p.name),
        h("td", { "data-field": "version" }, p.version),
        h("td", { "data-field": "status", class: p.last_reload_error ? "status-failing" : "status-ok" },
          p.last_reload_error ? "loaded; last reload refused: " + p.last_reload_error.error : "loaded"),
        h("td", {}, p.modes),
        h("td", {}, p.wit_version),
        h("td", {}, p.loaded_at),
        h("td", { class: "hash" }, p.hash.slice(0, 12))));
    const polls = [];
    for (const p of answer.plugins) {
      for (const s of p.polls) {
        polls.push(h("tr", { "data-poll": p.name + "/" + s.target },
          h("td", {}, p.name), h("td", {}, s.target),
          h("td", { "data-field": "status", class: s.consecutive_failures ? "status-failing" : "status-ok" },
            pollStatus(s)),
          h("td", {}, s.last_success || "never"),
          h("td", { class: "error-text", "data-field": "last-error" },
            s.last_error ? s.last_error + " (" + s.last_error_at + ")" : "—"),
          h("td", {}, s.next_run),
          h("td", {}, s.lease_holder || "—")));
      }
    }
    const failures = answer.failures.map((f) =>
      h("tr", { "data-failure": f.file }, h("td", {}, f.file), h("td", { class: "error-text" }, f.error),
        h("td", {}, f.at)));
    const page = h("div", { id: "admin" });
    page.append(section("Plugins", { id: "plugins" },
      rows.length ? table(["Plugin", "Version", "Status", "Modes", "WIT", "Loaded", "Hash"], rows)
        : h("p", { class: "empty" }, "No plugin is loaded.")));
    page.append(section("Polling", { id: "polls" },
      polls.length ? table(["Plugin", "Target", "Status", "Last success", "Last error", "Next run", "Lease"], polls)
        : h("p", { class: "empty" }, "No plugin polls (none has a poll target configured).")));
    if (failures.length) {
      page.append(section("Refused plugin files", { id: "failures" }, table(["File", "Error", "At"], failures)));
    }
    if (answer.reload) {
      const r = answer.reload;
      page.append(section("Reload", { id: "reload" },
        h("dl", { class: "facts" },
          h("dt", {}, "Watching files"), h("dd", {}, r.watching ? "yes" : "no"),
          h("dt", {}, "Host WIT"), h("dd", {}, r.host_wit),
          h("dt", {}, "Plugin reloads"), h("dd", {}, r.plugin_reloads + " (" + r.plugin_reload_failures + " refused)"))));
    }
    view.append(page);
  }

  // --- Wiring ------------------------------------------------------------------------

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    keyInput.value = "";
    session = null;
    render();
  });

  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    session = null;
    location.hash = "#/";
    render();
  });

  window.addEventListener("hashchange", render);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const chart of charts) {
        const width = Math.max(260, chart.root.parentElement.clientWidth || 360);
        chart.setSize({ width, height: 170 });
      }
    }, 150);
  });
  render();
})();
