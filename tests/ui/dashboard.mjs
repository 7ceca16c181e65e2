// The dashboard in headless Debian Chromium (playwright-core, driving
// /usr/bin/chromium): run by tests/e2e/ui.rs against a live gateway, or by
// hand:
//
//   METERD_URL=http://127.0.0.1:8080 TENANT_KEY=mk_… ADMIN_KEY=… ORG_A=acme ORG_B=other \
//     [EXPECT='{"sandbox_cpu_core_seconds":"42"}'] [SCREENSHOT_DIR=host/ui/screenshots] \
//     node tests/ui/dashboard.mjs
//
// TENANT_KEY is a key for ORG_A only; ORG_B is another org with usage. The
// script logs in as a person would (pasting the key), then checks that:
//   - the page renders under its CSP with no console error;
//   - every number it shows equals what the API answers to the script's own
//     requests (a value that moves with time, like a running sandbox's
//     seconds, must lie between the script's answers before and after the
//     page's), and EXPECT's meter totals (of ORG_A) are shown exactly;
//   - the tenant key lists only ORG_A, and navigating to ORG_B shows the
//     not-found message and no data; admin pages answer "needs an admin key";
//   - a wrong key gets the refused message;
//   - the admin sees every org and the plugins with their versions.
// With SCREENSHOT_DIR it saves org.png (the tenant's org page) and
// admin.png (the plugins view). Exits 1 with every failed check listed.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`dashboard.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
};
const BASE = env("METERD_URL").replace(/\/$/, "");
const TENANT = env("TENANT_KEY");
const ADMIN = env("ADMIN_KEY");
const ORG_A = env("ORG_A");
const ORG_B = env("ORG_B");
const EXPECT = JSON.parse(env("EXPECT", "{}"));
const SHOTS = process.env.SCREENSHOT_DIR || "";
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const TIMEOUT = 20_000;

let passed = 0;
const failures = [];
function check(ok, what, detail) {
  if (ok) {
    passed += 1;
  } else {
    failures.push(detail === undefined ? what : `${what}: ${detail}`);
  }
}
const eq = (got, want, what) => check(got === want, what, `shown ${JSON.stringify(got)}, API ${JSON.stringify(want)}`);

// --- Exact decimals (the API's text), compared without floats ---------------

function scaled(text, places) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) return null;
  const frac = (m[3] || "").padEnd(places, "0");
  const n = BigInt(m[2] + frac);
  return m[1] ? -n : n;
}

function places(...texts) {
  return Math.max(0, ...texts.map((t) => ((/\.(\d+)$/.exec(t) || [, ""])[1]).length));
}

/** The DOM's text equals the API's, or (moving with time) lies between two answers. */
function sameOrBetween(shown, before, after, what) {
  if (before === after || before === null || after === null) {
    eq(shown, before, what);
    return;
  }
  const p = places(shown, before, after);
  const [s, b, a] = [shown, before, after].map((t) => scaled(String(t), p));
  check(s !== null && b !== null && a !== null && b <= s && s <= a, what,
    `shown ${shown}, API ${before} before and ${after} after`);
}

// --- The API, as the script's own client --------------------------------------

async function api(key, urlPath) {
  const response = await fetch(BASE + urlPath, { headers: { Authorization: `Bearer ${key}` } });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

async function orgAnswers(key, org) {
  const p = `/v1/orgs/${encodeURIComponent(org)}`;
  const [ent, grants] = await Promise.all([api(key, `${p}/entitlements`), api(key, `${p}/grants`)]);
  if (ent.status !== 200 || grants.status !== 200) {
    throw new Error(`API answered ${ent.status}/${grants.status} for ${org}`);
  }
  return { ent: ent.body, grants: grants.body };
}

// --- The page ---------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--disable-gpu", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
const page = await context.newPage();
page.setDefaultTimeout(TIMEOUT);
const consoleErrors = [];
page.on("console", (msg) => {
  // The page's own failed API calls (404, 401, 403) are logged by Chromium
  // as resource errors; they are expected where tested.
  if (msg.type() === "error" && !/Failed to load resource: the server responded with a status of (401|403|404)/.test(msg.text())) {
    consoleErrors.push(msg.text());
  }
});
page.on("pageerror", (e) => consoleErrors.push(String(e)));

async function settled() {
  await page.waitForFunction(() => ["ready", "error", "signed-out"].includes(document.body.dataset.state));
  return page.evaluate(() => document.body.dataset.state);
}

/** Waits for the error state with a message matching `pattern` (a stale
 * error of the page before must not count). */
async function errorShown(pattern) {
  await page.waitForFunction(
    (source) => document.body.dataset.state === "error" &&
      new RegExp(source).test(document.getElementById("message").textContent),
    pattern.source,
  );
  return text("#message");
}

async function signIn(key) {
  await page.fill("#key", key);
  await page.click("#key-form button[type=submit]");
}

async function text(selector) {
  return (await page.locator(selector).first().textContent())?.trim() ?? null;
}

async function fieldIn(scope, name) {
  return page.evaluate(
    ([scope, name]) => {
      const el = document.querySelector(scope)?.querySelector(`[data-field="${name}"]`);
      return el ? el.textContent.trim() : null;
    },
    [scope, name],
  );
}

const shown = (v) => (v === null || v === undefined ? "—" : String(v));

async function checkOrgPage(key, org, before) {
  // Meters and quota bars.
  const after = await orgAnswers(key, org);
  for (const [i, m] of before.ent.meters.entries()) {
    const row = `#quotas tr[data-meter="${m.meter}"]`;
    const m2 = after.ent.meters[i];
    sameOrBetween(await fieldIn(row, "used"), m.used, m2.used, `${org} ${m.meter} used`);
    eq(await fieldIn(row, "quota"), shown(m.quota), `${org} ${m.meter} quota`);
    sameOrBetween(await fieldIn(row, "remaining"), shown(m.remaining), shown(m2.remaining), `${org} ${m.meter} remaining`);
    eq(await fieldIn(row, "enforcement"), m.enforcement || "—", `${org} ${m.meter} enforcement`);
  }
  const rows = await page.locator("#quotas tr[data-meter]").count();
  eq(rows, before.ent.meters.length, `${org}: one quota row per meter`);
  const bars = await page.locator("#quotas .gauge .bar").count();
  eq(bars, before.ent.meters.filter((m) => m.quota !== null).length, `${org}: one bar per quota`);

  // Concurrency, plan, period.
  eq(await fieldIn("#tile-concurrency", "concurrency-running"), String(before.ent.concurrency.running), `${org} running`);
  eq(await fieldIn("#tile-concurrency", "concurrency-limit"),
    before.ent.concurrency.limit === null ? "no limit" : String(before.ent.concurrency.limit), `${org} concurrency limit`);
  eq(await fieldIn("#org", "plan"), before.ent.plan, `${org} plan`);
  eq(await fieldIn("#org", "period-start"), before.ent.period.start, `${org} period start`);

  // Credits: balance, spend and each grant in burn order.
  const g = before.grants;
  for (const name of ["balance", "spend", "uncovered", "spend_this_period"]) {
    eq(await fieldIn("#credits", name), g[name], `${org} credits ${name}`);
  }
  eq(await fieldIn("#tile-credit-balance", "credit-balance"), g.balance, `${org} balance tile`);
  eq(await page.locator("#credits tr[data-grant]").count(), g.grants.length, `${org}: one row per grant`);
  for (const [i, grant] of g.grants.entries()) {
    const row = `#credits tr[data-grant="${i}"]`;
    for (const name of ["source", "amount", "used", "remaining", "status"]) {
      eq(await fieldIn(row, name), String(grant[name]), `${org} grant ${i} ${name}`);
    }
  }

  // Charts: each one's total and points equal the usage query it names.
  const charts = await page.evaluate(() =>
    [...document.querySelectorAll("#usage .chart")].map((c) => ({
      meter: c.dataset.meter,
      from: c.dataset.from,
      to: c.dataset.to,
      window: c.dataset.window,
      total: c.querySelector('[data-field="total"]').textContent.trim(),
      points: Number(c.querySelector(".plot").dataset.points),
      canvas: !!c.querySelector("canvas"),
    })));
  const used = before.ent.meters.filter((m) => !/^0(\.0*)?$/.test(m.used) || m.quota !== null).map((m) => m.meter);
  eq(JSON.stringify(charts.map((c) => c.meter)), JSON.stringify(used), `${org}: a chart for each meter with usage or a quota`);
  for (const c of charts) {
    const q = new URLSearchParams({ meter: c.meter, from: c.from, to: c.to, window: c.window });
    const u1 = await api(key, `/v1/orgs/${encodeURIComponent(org)}/usage?${q}`);
    check(u1.status === 200, `${org} ${c.meter} usage answers`, u1.status);
    if (u1.status !== 200) continue;
    // By day the chart spans the period so far, so its total is the
    // meter's period value: the entitlements' `used` before the page
    // loaded, the usage answer after.
    const lower = c.window === "day" ? before.ent.meters.find((m) => m.meter === c.meter).used : u1.body.total;
    sameOrBetween(c.total, lower, u1.body.total, `${org} ${c.meter} chart total`);
    eq(c.points, u1.body.windows.length, `${org} ${c.meter} chart points`);
    check(c.canvas, `${org} ${c.meter} chart drawn`);
  }
  for (const [meter, total] of Object.entries(org === ORG_A ? EXPECT : {})) {
    const c = charts.find((x) => x.meter === meter);
    check(c && c.total === total, `${org} ${meter}: the test's expected total`, `shown ${c && c.total}, expected ${total}`);
  }
}

try {
  // --- Signed out: the form, no key in the page ----------------------------------
  const response = await page.goto(`${BASE}/ui`);
  eq(response.status(), 200, "GET /ui");
  check((response.headers()["content-security-policy"] || "").startsWith("default-src 'self'"), "CSP header");
  eq(await settled(), "signed-out", "a fresh tab asks for a key");
  check(await page.locator("#key-form").isVisible(), "the key form is shown");

  // --- A wrong key --------------------------------------------------------------
  await signIn("mk_000000000000_" + "0".repeat(64));
  check(/refused/.test(await errorShown(/refused/)), "a wrong key gets the refused message");
  await page.click("#sign-out");
  eq(await settled(), "signed-out", "forgetting the key");

  // --- The tenant key: its org only -----------------------------------------------
  const orgs = await api(TENANT, "/v1/orgs");
  eq(JSON.stringify(orgs.body.orgs.map((o) => o.org)), JSON.stringify([ORG_A]), "GET /v1/orgs for the tenant");
  const before = await orgAnswers(TENANT, ORG_A);
  await signIn(TENANT);
  await page.waitForSelector(`#org[data-org="${ORG_A}"]`);
  eq(await settled(), "ready", "the tenant's org page renders");
  check(page.url().endsWith(`#/orgs/${encodeURIComponent(ORG_A)}`), "a one-org key opens its org", page.url());
  const keyInStorage = await page.evaluate(() => sessionStorage.getItem("meterd.key"));
  eq(keyInStorage, TENANT, "the key is kept in sessionStorage");
  const navOrgs = await page.evaluate(() => [...document.querySelectorAll("#nav a[data-org]")].map((a) => a.dataset.org));
  eq(JSON.stringify(navOrgs), JSON.stringify([ORG_A]), "the tenant's nav lists only its org");
  eq(await page.locator('#nav a[data-nav="admin"]').count(), 0, "no plugins link for a tenant");
  await checkOrgPage(TENANT, ORG_A, before);
  if (SHOTS) {
    fs.mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, "org.png"), fullPage: true });
  }

  // The hourly view is the same data by hour.
  await page.selectOption("#window", "hour");
  await page.waitForSelector('#usage .chart[data-window="hour"]');
  eq(await settled(), "ready", "the hourly charts render");
  const hourly = await page.evaluate(() => [...document.querySelectorAll("#usage .chart")].map((c) => ({
    meter: c.dataset.meter, from: c.dataset.from, to: c.dataset.to,
    total: c.querySelector('[data-field="total"]').textContent.trim(),
    points: Number(c.querySelector(".plot").dataset.points),
  })));
  check(hourly.length > 0, "hourly charts are shown");
  const moving = new Set((await orgAnswers(TENANT, ORG_A)).ent.meters
    .filter((m, i) => m.used !== before.ent.meters[i].used).map((m) => m.meter));
  for (const c of hourly) {
    const q = new URLSearchParams({ meter: c.meter, from: c.from, to: c.to, window: "hour" });
    const u = await api(TENANT, `/v1/orgs/${encodeURIComponent(ORG_A)}/usage?${q}`);
    eq(c.points, u.body.windows.length, `${ORG_A} ${c.meter} hourly points`);
    // A meter that moves with time (a running sandbox's seconds) was
    // checked between two answers by day; by hour it is at most the later.
    if (moving.has(c.meter)) sameOrBetween(c.total, "0", u.body.total, `${ORG_A} ${c.meter} hourly total`);
    else eq(c.total, u.body.total, `${ORG_A} ${c.meter} hourly total`);
  }
  await page.selectOption("#window", "day");
  await page.waitForSelector('#usage .chart[data-window="day"]');

  // Org B: not listed, and as if it did not exist.
  const direct = await api(TENANT, `/v1/orgs/${encodeURIComponent(ORG_B)}/entitlements`);
  eq(direct.status, 404, "the API hides org B from the tenant");
  await page.goto(`${BASE}/ui#/orgs/${encodeURIComponent(ORG_B)}`);
  const notFound = await errorShown(/^Not found: /);
  check(/^Not found: org .* does not exist or this key may not read it\.$/.test(notFound) && notFound.includes(ORG_B),
    "org B shows the not-found message", notFound);
  eq(await page.locator("#org").count(), 0, "no data of org B is shown");
  check(!(await page.locator("#nav").textContent()).includes(ORG_B), "org B is not in the nav");
  // Admin pages need an admin key.
  await page.goto(`${BASE}/ui#/admin`);
  check(/needs an admin key/.test(await errorShown(/needs an admin key/)), "a tenant on the plugins page");
  eq(await page.locator("#plugins").count(), 0, "no plugin is shown to a tenant");

  // --- The admin: every org, and the plugins -------------------------------------------
  await page.click("#sign-out");
  eq(await settled(), "signed-out", "forgetting the tenant key");
  await signIn(ADMIN);
  await page.waitForSelector("#orgs");
  eq(await settled(), "ready", "the admin's org list renders");
  const all = await api(ADMIN, "/v1/orgs");
  const listed = await page.evaluate(() => [...document.querySelectorAll("#orgs tr[data-org]")].map((r) => r.dataset.org));
  eq(JSON.stringify(listed), JSON.stringify(all.body.orgs.map((o) => o.org)), "the admin's org list is GET /v1/orgs");
  check(listed.includes(ORG_A) && listed.includes(ORG_B), "the admin sees both orgs", listed.join(","));
  for (const o of all.body.orgs) {
    eq(await fieldIn(`#orgs tr[data-org="${o.org}"]`, "plan"), o.plan, `${o.org} plan in the list`);
  }
  // The admin reads org B's page, numbers and all.
  const beforeB = await orgAnswers(ADMIN, ORG_B);
  await page.click(`#nav a[data-org="${ORG_B}"]`);
  await page.waitForSelector(`#org[data-org="${ORG_B}"]`);
  eq(await settled(), "ready", "the admin opens org B");
  await checkOrgPage(ADMIN, ORG_B, beforeB);

  const plugins = await api(ADMIN, "/v1/plugins");
  eq(plugins.status, 200, "GET /v1/plugins");
  await page.click('#nav a[data-nav="admin"]');
  await page.waitForSelector("#plugins");
  eq(await settled(), "ready", "the plugins view renders");
  let polled = 0;
  for (const p of plugins.body.plugins) {
    const row = `#plugins tr[data-plugin="${p.name}"]`;
    eq(await fieldIn(row, "version"), p.version, `plugin ${p.name} version`);
    eq(await fieldIn(row, "status"), p.last_reload_error ? `loaded; last reload refused: ${p.last_reload_error.error}` : "loaded",
      `plugin ${p.name} status`);
    for (const s of p.polls) {
      const status = s.consecutive_failures > 0 ? `failing (${s.consecutive_failures})` : s.last_success ? "ok" : "not run yet";
      const row = `#polls tr[data-poll="${p.name}/${s.target}"]`;
      eq(await fieldIn(row, "status"), status, `poll ${p.name}/${s.target}`);
      eq(await fieldIn(row, "last-error"), s.last_error ? `${s.last_error} (${s.last_error_at})` : "—",
        `poll ${p.name}/${s.target} last error`);
      polled += 1;
    }
  }
  eq(await page.locator("#plugins tr[data-plugin]").count(), plugins.body.plugins.length, "one row per plugin");
  check(plugins.body.plugins.length > 0, "the gateway has plugins to show");
  eq(await page.locator("#polls tr[data-poll]").count(), polled, "one row per poll target");
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "admin.png"), fullPage: true });

  check(consoleErrors.length === 0, "no console error or CSP violation", consoleErrors.join(" | "));
} catch (e) {
  failures.push(`stopped: ${e && e.stack ? e.stack : e}`);
  try {
    failures.push(`page state ${await page.evaluate(() => document.body.dataset.state)}, message ${JSON.stringify(await text("#message"))}, url ${page.url()}`);
  } catch (_) {
    // the page is gone
  }
} finally {
  await browser.close();
}

for (const f of failures) console.log(`FAIL ${f}`);
console.log(`dashboard: ${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
