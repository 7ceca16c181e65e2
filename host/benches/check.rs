//! Entitlement checks (`POST /v1/orgs/{org}/check`) of the real `meterd`
//! binary, alone and while webhooks are being ingested.
//!
//! A check answers from the in-memory standing of the org (kept current by
//! the store's commit hook), so its cost is HTTP plus a few decimal
//! comparisons. The question is what happens to its latency when the same
//! 2-core machine is also verifying, committing and fsyncing webhooks.
//!
//! One gateway (ephemeral loopback port, new SQLite file in a temp dir, the
//! freshly built e2b component, a `bench` plan with a hard quota) is seeded
//! with `METERD_BENCH_ORGS` orgs on that plan: each has 5 finished sandboxes
//! (signed E2B `created` + `killed` webhooks with execution data, in the
//! current month) and 5 running ones; every 10th org has 50 running, which is
//! its plan's concurrency limit. Then, one after the other:
//!
//! * `floor`: `GET /healthz` at the check rate (HTTP alone, for scale);
//! * `alone`: checks at a fixed rate (default 5,000/s), open loop, latency
//!   measured from each request's *scheduled* send time (no coordinated
//!   omission): half `{"action":"sandbox.start",…}`, half
//!   `{"meter":"sandbox_cpu_core_seconds","quantity":"1"}`, random orgs;
//! * `ingest-only`: closed-loop ingest alone (unique signed `created` /
//!   `killed` pairs spread over the same orgs, N connections, each sending
//!   its next webhook as soon as the last is answered): the ingest rate
//!   without checks;
//! * `ingest-closed`: the checks of `alone` while that ingest runs;
//! * `ingest-paced`: the same checks while ingest runs at a fixed rate.
//!
//! Every check answer must be a 200 whose `allow` is what the seeded state
//! implies (a `sandbox.start` at a full org is denied, everything else is
//! allowed); anything else is a failure. After the runs, for every org, the
//! usage API total (from the database) and the entitlements (from memory:
//! `used` and `running`) must equal what was acknowledged; otherwise the
//! bench reports INVALID and exits non-zero.
//!
//! The check load and the ingest load each run on their own client thread
//! (a tokio current-thread runtime each, plus pacer threads), in this
//! process, on the same machine as the gateway: their CPU is reported next
//! to the gateway's.
//!
//! Last, `inproc`: `Orgs::check` called directly through the library (no
//! HTTP) on the same seed, then, at one org with S sandboxes this month, the
//! commit hook for one delivery, a check, `Orgs::entitlements` and one
//! notification sweep (`Orgs::sweep`) of all orgs.
//!
//! Run: `cargo bench -p meterd --bench check` (filters after `--`: `floor`,
//! `alone`, `ingest` (the three ingest runs), `ingest-only`, `closed`,
//! `paced`, `inproc`). Each invocation seeds one fresh gateway for the HTTP
//! runs it selects.
//! Knobs (environment): `METERD_BENCH_SECONDS` (measured seconds per run,
//! default 10), `METERD_BENCH_WARMUP_SECONDS` (default 1),
//! `METERD_BENCH_ORGS` (default 1000), `METERD_BENCH_CHECK_RATE` (checks/s,
//! default 5000), `METERD_BENCH_CHECK_CONNECTIONS` (default 32),
//! `METERD_BENCH_INGEST_CONNECTIONS` (default 64),
//! `METERD_BENCH_INGEST_RATE` (the paced run's webhooks/s, default 2000),
//! `METERD_BENCH_MAX_RATE` (closed-loop webhooks pre-generated per second of
//! run, default 20000).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use meterd::api::Quantity;
use meterd::api::orgs::{CheckAnswer, Entitlements};
use meterd::api::usage::Usage as UsageAnswer;
use meterd::meter::Kind;
use meterd::meter::period::{Range, month_containing};
use meterd::orgs::Orgs;
use meterd::plans::check::Action;
use meterd::plans::standing::{Effect, Run};
use meterd::record::UsageRecord;
use meterd::store::{CommitHook, Delivery, OrgEffect, SqliteStore, Store};

use support::{E2B_SECRET, cpu_seconds, format_ns, percentile, wait_for_listening};

/// The plan every bench org is on: a hard quota far away (so a check
/// compares real numbers and allows), a soft one, and a concurrency limit
/// some orgs sit at.
const PLAN_TOML: &str = r#"
[plans.bench]
max_concurrent_sandboxes = 50
max_session_seconds = 3600
[plans.bench.quotas]
sandbox_cpu_core_seconds = { limit = "1000000", enforcement = "hard" }
sandbox_ram_gibi_seconds = { limit = "1000000", enforcement = "soft" }
"#;
const PLAN: &str = "bench";
const CONCURRENCY_LIMIT: usize = 50;
/// Every `FULL_EVERY`-th org runs `CONCURRENCY_LIMIT` sandboxes, the others
/// `RUNNING_SEEDED`; each has `FINISHED_SEEDED` finished ones.
const FULL_EVERY: usize = 10;
const RUNNING_SEEDED: usize = 5;
const FINISHED_SEEDED: usize = 5;
/// Every `killed` webhook: 2 vCPUs, 512 MiB, 1.5 s → 3 core-seconds and
/// 0.75 GiB-seconds.
const VCPU: u64 = 2;
const MEMORY_MB: u64 = 512;
const EXECUTION_MS: i64 = 1_500;
const CORE_SECONDS_PER_KILL: u64 = 3;
const METER: &str = "sandbox_cpu_core_seconds";
const NOT_DUPLICATE: &[u8] = b"\"duplicate\":false";
const P99_TARGET: Duration = Duration::from_millis(1);
const START_BODY: &str = r#"{"action":"sandbox.start","vcpu":2,"memory_mb":512}"#;
const CONSUME_BODY: &str = r#"{"meter":"sandbox_cpu_core_seconds","quantity":"1"}"#;

/// What to run, from the environment (see the module docs).
struct Settings {
    seconds: Duration,
    warmup: Duration,
    orgs: usize,
    rate: f64,
    check_connections: usize,
    ingest_connections: usize,
    ingest_rate: f64,
    max_rate: f64,
}

impl Settings {
    fn from_env() -> Self {
        let settings = Self {
            seconds: support::env_seconds("METERD_BENCH_SECONDS", 10.0),
            warmup: support::env_seconds("METERD_BENCH_WARMUP_SECONDS", 1.0),
            orgs: support::env_number("METERD_BENCH_ORGS", 1_000usize),
            rate: support::env_number("METERD_BENCH_CHECK_RATE", 5_000.0),
            check_connections: support::env_number("METERD_BENCH_CHECK_CONNECTIONS", 32usize),
            ingest_connections: support::env_number("METERD_BENCH_INGEST_CONNECTIONS", 64usize),
            ingest_rate: support::env_number("METERD_BENCH_INGEST_RATE", 2_000.0),
            max_rate: support::env_number("METERD_BENCH_MAX_RATE", 20_000.0),
        };
        assert!(settings.orgs >= FULL_EVERY, "METERD_BENCH_ORGS must be at least {FULL_EVERY}");
        assert!(settings.rate > 0.0 && settings.ingest_rate > 0.0, "rates must be positive");
        settings
    }

    fn run_length(&self) -> Duration {
        self.warmup + self.seconds
    }
}

fn org_name(i: usize) -> String {
    format!("org-{i:04}")
}

fn is_full(org: usize) -> bool {
    org.is_multiple_of(FULL_EVERY)
}

/// splitmix64: a fixed, dependency-free sequence of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// A running `meterd serve` with its own directory and database.
struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Gateway {
    /// Starts the release binary with a fresh database and the bench plan,
    /// and waits for its "listening on" line.
    fn start(component: &Path, cache_dir: &Path) -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("creating the plugins dir");
        std::fs::copy(component, plugins.join("e2b.wasm")).expect("copying the e2b component");
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://{db}\"\nplugins_dir = \"{plugins}\"\ncache_dir = \"{cache}\"\n\n[plugins.e2b]\nsignature_secret = \"{E2B_SECRET}\"\norg_metadata_key = \"tenant\"\n{PLAN_TOML}",
            db = dir.path().join("meterd.db").display(),
            plugins = plugins.display(),
            cache = cache_dir.display(),
        );
        let config_path = dir.path().join("meterd.toml");
        std::fs::write(&config_path, config).expect("writing the config");
        let mut child = support::spawn_meterd(&config_path, dir.path());
        let addr = wait_for_listening(&mut child);
        Self { child, _dir: dir, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: a graceful stop drains the commit queue.
    fn stop(mut self) {
        support::stop_gracefully(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Webhooks and what was acknowledged
// ---------------------------------------------------------------------------

/// One signed lifecycle webhook, ready to send.
struct Webhook {
    /// Index of its sandbox in the [`Ledger`].
    sandbox: usize,
    killed: bool,
    body: Bytes,
    signature: HeaderValue,
}

/// A `created` (running) or `killed` (with 3 core-seconds of execution)
/// event shaped like tests/fixtures/e2b, with a unique `id`.
fn webhook(id: &str, org: usize, sandbox: &str, killed: bool, at_ms: i64) -> (Bytes, HeaderValue) {
    let org = org_name(org);
    let (kind, label, data) = if killed {
        let started = rfc3339_ms(at_ms - EXECUTION_MS);
        (
            "killed",
            "kill",
            format!(
                r#"{{"execution":{{"execution_time":{EXECUTION_MS},"memory_mb":{MEMORY_MB},"started_at":"{started}","vcpu_count":{VCPU}}},"kill_reason":"unknown","sandbox_metadata":{{"tenant":"{org}"}}}}"#
            ),
        )
    } else {
        ("created", "create", format!(r#"{{"sandbox_metadata":{{"tenant":"{org}"}}}}"#))
    };
    let body = format!(
        r#"{{"id":"{id}","version":"v2","type":"sandbox.lifecycle.{kind}","timestamp":"{ts}","event_category":"lifecycle","event_label":"{label}","event_data":{data},"sandbox_id":"{sandbox}","sandbox_execution_id":"1dae9e1c-9957-4ce7-a236-a99d5779aadf","sandbox_template_id":"rki5dems9wqfm4r03t7g","sandbox_build_id":"a979a14b-bdcc-49e6-bc04-1189fc9fe7c2","sandbox_team_id":"460355b3-4f64-48f9-9a16-4442817f79f5"}}"#,
        ts = rfc3339_ms(at_ms),
    );
    let signature = support::e2b_signature(E2B_SECRET, body.as_bytes());
    (Bytes::from(body), HeaderValue::from_str(&signature).expect("base64 is a header value"))
}

/// Every sandbox any webhook named, and which of its webhooks the gateway
/// acknowledged: what the org's standing must add up to.
#[derive(Default)]
struct Ledger {
    sandboxes: Vec<Sandbox>,
}

struct Sandbox {
    org: usize,
    created: bool,
    killed: bool,
}

impl Ledger {
    /// Webhooks for new sandboxes at `orgs`: a `created`, and a `killed`
    /// 1.5 s later when `finishes`. `tag` keeps ids and names unique.
    fn webhooks(&mut self, tag: &str, sandboxes: &[(usize, bool)], base_ms: i64) -> Vec<Webhook> {
        let mut out = Vec::with_capacity(sandboxes.len() * 2);
        for (k, &(org, finishes)) in sandboxes.iter().enumerate() {
            let index = self.sandboxes.len();
            self.sandboxes.push(Sandbox { org, created: false, killed: false });
            let name = format!("sbx-{tag}-{k:07}");
            // Spread over 10 minutes that are already past.
            let at = base_ms + (k as i64 * 7) % 600_000;
            let (body, signature) = webhook(&format!("{name}-c"), org, &name, false, at);
            out.push(Webhook { sandbox: index, killed: false, body, signature });
            if finishes {
                let (body, signature) = webhook(&format!("{name}-k"), org, &name, true, at + EXECUTION_MS);
                out.push(Webhook { sandbox: index, killed: true, body, signature });
            }
        }
        out
    }

    fn acknowledged(&mut self, webhook: &Webhook) {
        let sandbox = &mut self.sandboxes[webhook.sandbox];
        if webhook.killed {
            sandbox.killed = true;
        } else {
            sandbox.created = true;
        }
    }

    /// Per org: core-seconds and running sandboxes.
    fn expected(&self, orgs: usize) -> Vec<(Decimal, u64)> {
        let mut out = vec![(Decimal::ZERO, 0u64); orgs];
        for s in &self.sandboxes {
            if s.killed {
                out[s.org].0 += Decimal::from(CORE_SECONDS_PER_KILL);
            }
            // The kill is stamped after the create: running until killed.
            if s.created && !s.killed {
                out[s.org].1 += 1;
            }
        }
        out
    }
}

/// The seed: per org `FINISHED_SEEDED` finished sandboxes and 5 (or, every
/// 10th org, 50) running ones.
fn seed_sandboxes(orgs: usize) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    for org in 0..orgs {
        let running = if is_full(org) { CONCURRENCY_LIMIT } else { RUNNING_SEEDED };
        out.extend(std::iter::repeat_n((org, true), FINISHED_SEEDED));
        out.extend(std::iter::repeat_n((org, false), running));
    }
    out
}

/// `count` finished sandboxes at random orgs (`created` + `killed`, sent
/// one after the other, so a few are running at any moment).
fn ingest_sandboxes(orgs: usize, count: usize, seed: u64) -> Vec<(usize, bool)> {
    let mut rng = Rng(seed);
    (0..count).map(|_| (rng.below(orgs), true)).collect()
}

// ---------------------------------------------------------------------------
// The HTTP client
// ---------------------------------------------------------------------------

type Sender = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 keep-alive connection (hyper's connection API: no pool, no
/// retries, nothing between the benchmark and the socket).
async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connecting to meterd");
    stream.set_nodelay(true).expect("setting TCP_NODELAY");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// Sends one request (reconnecting first if the connection died) and reads
/// the whole answer.
async fn exchange(
    sender: &mut Sender,
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    if sender.is_closed() {
        *sender = connect(addr).await;
    }
    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
    Ok((status, body))
}

fn host_header(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("an address is a header value")
}

fn post(host: &HeaderValue, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(HOST, host.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a well-formed request")
}

fn get(host: &HeaderValue, uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .header(HOST, host.clone())
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request")
}

fn ingest_request(host: &HeaderValue, webhook: &Webhook) -> Request<Full<Bytes>> {
    let mut request = post(host, Uri::from_static("/v1/ingest/e2b"), webhook.body.clone());
    request.headers_mut().insert("e2b-signature", webhook.signature.clone());
    request
}

/// `Ok` for a 200 receipt of a delivery that is not a duplicate.
async fn send_webhook(
    sender: &mut Sender,
    addr: SocketAddr,
    host: &HeaderValue,
    w: &Webhook,
) -> Result<(), String> {
    let (status, body) = exchange(sender, addr, ingest_request(host, w)).await?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if !body.windows(NOT_DUPLICATE.len()).any(|w| w == NOT_DUPLICATE) {
        return Err(format!("unexpected receipt: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// The time frame of one run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    /// Client threads stay until then, so the end-of-run CPU sample (at
    /// `end`) still sees them.
    fn linger(&self) -> Instant {
        self.end + Duration::from_millis(300)
    }

    fn measures(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// One request of the paced load: a check of `org` (a `sandbox.start` or a
/// consume of 1 core-second), or `GET /healthz`.
#[derive(Clone, Copy)]
enum Probe {
    Check { org: usize, start: bool },
    Health,
}

impl Probe {
    /// What the answer must say: `allow` for a check; `None` for health.
    fn expected_allow(self) -> Option<bool> {
        match self {
            Probe::Check { org, start } => Some(!(start && is_full(org))),
            Probe::Health => None,
        }
    }
}

/// What the paced foreground load of a run is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Foreground {
    Checks,
    Health,
    Nothing,
}

fn probes(foreground: Foreground, orgs: usize, count: usize, seed: u64) -> Arc<Vec<Probe>> {
    let mut rng = Rng(seed);
    let probe = |i: usize| match foreground {
        Foreground::Health => Probe::Health,
        _ => Probe::Check { org: rng.below(orgs), start: i.is_multiple_of(2) },
    };
    let count = if foreground == Foreground::Nothing { 0 } else { count };
    Arc::new((0..count).map(probe).collect())
}

/// What the check (probe) workers saw.
#[derive(Default)]
struct ProbeTally {
    answered: u64,
    allowed: u64,
    denied: u64,
    failures: u64,
    first_failure: Option<String>,
    /// From the scheduled time to the whole answer, ns (measured window).
    latencies: Vec<u64>,
    /// From the scheduled time until a connection sent it, ns.
    lags: Vec<u64>,
}

impl ProbeTally {
    fn fail(&mut self, failure: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(failure);
    }

    fn merge(mut self, other: ProbeTally) -> ProbeTally {
        self.answered += other.answered;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.failures += other.failures;
        self.first_failure = self.first_failure.or(other.first_failure);
        self.latencies.extend(other.latencies);
        self.lags.extend(other.lags);
        self
    }
}

/// Checks the answer to one probe.
fn judge(probe: Probe, status: StatusCode, body: &[u8], tally: &mut ProbeTally) {
    if status != StatusCode::OK {
        return tally.fail(format!("{status}: {}", String::from_utf8_lossy(body)));
    }
    let Some(expected) = probe.expected_allow() else {
        tally.answered += 1;
        return;
    };
    let allow = serde_json::from_slice::<CheckAnswer>(body).ok().map(|answer| answer.allow);
    match allow {
        Some(allow) if allow == expected => {
            tally.answered += 1;
            if allow {
                tally.allowed += 1;
            } else {
                tally.denied += 1;
            }
        }
        Some(_) => tally.fail(format!("expected allow={expected}: {}", String::from_utf8_lossy(body))),
        None => tally.fail(format!("no `allow` in the answer: {}", String::from_utf8_lossy(body))),
    }
}

/// Releases items `0..count` at `rate` per second from `start`, sleeping
/// between releases (nanosleep: tens of µs late at worst, shown as lag).
/// Then stays until `linger`, so its CPU shows in the end-of-run sample.
fn pace(
    tx: mpsc::UnboundedSender<(usize, Instant)>,
    count: usize,
    rate: f64,
    start: Instant,
    linger: Instant,
) {
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        if tx.send((i, scheduled)).is_err() {
            break;
        }
    }
    drop(tx);
    std::thread::sleep(linger.saturating_duration_since(Instant::now()));
}

fn start_pacer(
    name: &str,
    count: usize,
    rate: f64,
    start: Instant,
    linger: Instant,
) -> (std::thread::JoinHandle<()>, Shared) {
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let pacer = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || pace(tx, count, rate, start, linger))
        .expect("starting a pacer thread");
    (pacer, Arc::new(Mutex::new(rx)))
}

type Shared = Arc<Mutex<mpsc::UnboundedReceiver<(usize, Instant)>>>;

/// Open loop: the pacer releases probe `i` at `start + i / rate`; the first
/// idle connection sends it. Latency counts from the release time, so time
/// spent waiting for a free connection is latency too.
async fn probe_loop(
    addr: SocketAddr,
    probes: Arc<Vec<Probe>>,
    orgs: usize,
    rate: f64,
    connections: usize,
    window: Window,
) -> ProbeTally {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await);
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.start)).await;
    let (pacer, rx) = start_pacer("check-pacer", probes.len(), rate, window.start, window.linger());
    let host = host_header(addr);
    let check_uris: Arc<Vec<Uri>> = Arc::new(
        (0..orgs)
            .map(|org| Uri::try_from(format!("/v1/orgs/{}/check", org_name(org))).expect("a path"))
            .collect(),
    );
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (probes, rx, host, uris) = (probes.clone(), rx.clone(), host.clone(), check_uris.clone());
            tokio::spawn(async move {
                let mut tally = ProbeTally::default();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((i, scheduled)) = next else { break };
                    let probe = probes[i];
                    let request = match probe {
                        Probe::Check { org, start } => {
                            let body = if start { START_BODY } else { CONSUME_BODY };
                            post(&host, uris[org].clone(), Bytes::from_static(body.as_bytes()))
                        }
                        Probe::Health => get(&host, "/healthz"),
                    };
                    let sent = Instant::now();
                    let result = exchange(&mut sender, addr, request).await;
                    let done = Instant::now();
                    match result {
                        Ok((status, body)) => judge(probe, status, &body, &mut tally),
                        Err(e) => tally.fail(e),
                    }
                    if window.measures(scheduled) {
                        tally.latencies.push(nanos(done - scheduled));
                        tally.lags.push(nanos(sent - scheduled));
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = ProbeTally::default();
    for worker in workers {
        total = total.merge(worker.await.expect("a check worker panicked"));
    }
    pacer.join().expect("the pacer thread panicked");
    total
}

/// Background ingest during a run.
#[derive(Clone, Copy)]
enum Ingest {
    None,
    /// N connections, each sending its next webhook as soon as the previous
    /// one is answered.
    Closed {
        connections: usize,
    },
    /// Webhooks released at a fixed rate, sent on the first idle connection.
    Paced {
        rate: f64,
        connections: usize,
    },
}

/// What the ingest workers saw.
#[derive(Default)]
struct IngestTally {
    /// Indices of the acknowledged webhooks.
    acknowledged: Vec<usize>,
    /// Acknowledged within the measured window.
    measured: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
}

impl IngestTally {
    fn merge(mut self, other: IngestTally) -> IngestTally {
        self.acknowledged.extend(other.acknowledged);
        self.measured += other.measured;
        self.errors += other.errors;
        self.first_error = self.first_error.or(other.first_error);
        self.latencies.extend(other.latencies);
        self
    }

    /// Notes the outcome of webhook `i`, answered just now; latency from
    /// `from`.
    fn record(&mut self, i: usize, result: Result<(), String>, from: Instant, window: Option<Window>) {
        let done = Instant::now();
        match result {
            Ok(()) => {
                self.acknowledged.push(i);
                if window.is_none_or(|w| w.measures(done)) {
                    self.measured += 1;
                    self.latencies.push(nanos(done - from));
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Sends `webhooks` with `pattern` from `window.start` until `window.end`
/// (or, with `window` `None`, all of them as fast as `connections` allow).
async fn ingest_loop(
    addr: SocketAddr,
    webhooks: Arc<Vec<Webhook>>,
    pattern: Ingest,
    window: Option<Window>,
) -> IngestTally {
    let connections = match pattern {
        Ingest::None => return IngestTally::default(),
        Ingest::Closed { connections } | Ingest::Paced { connections, .. } => connections,
    };
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await);
    }
    if let Some(w) = window {
        tokio::time::sleep_until(tokio::time::Instant::from_std(w.start)).await;
    }
    let host = host_header(addr);
    let end = window.map(|w| w.end);
    let workers: Vec<_> = match pattern {
        Ingest::None => Vec::new(),
        Ingest::Closed { .. } => {
            let next = Arc::new(AtomicUsize::new(0));
            senders
                .into_iter()
                .map(|mut sender| {
                    let (webhooks, next, host) = (webhooks.clone(), next.clone(), host.clone());
                    tokio::spawn(async move {
                        let mut tally = IngestTally::default();
                        while end.is_none_or(|end| Instant::now() < end) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= webhooks.len() {
                                break;
                            }
                            let sent = Instant::now();
                            let result = send_webhook(&mut sender, addr, &host, &webhooks[i]).await;
                            tally.record(i, result, sent, window);
                        }
                        tally
                    })
                })
                .collect()
        }
        Ingest::Paced { rate, .. } => {
            let start = window.map_or_else(Instant::now, |w| w.start);
            let count = window.map_or(webhooks.len(), |w| {
                webhooks.len().min(((w.end - w.start).as_secs_f64() * rate) as usize)
            });
            let (pacer, rx) = start_pacer(
                "ingest-pacer",
                count,
                rate,
                start,
                window.map_or_else(Instant::now, |w| w.linger()),
            );
            let mut workers: Vec<_> = senders
                .into_iter()
                .map(|mut sender| {
                    let (webhooks, rx, host) = (webhooks.clone(), rx.clone(), host.clone());
                    tokio::spawn(async move {
                        let mut tally = IngestTally::default();
                        loop {
                            let next = rx.lock().await.recv().await;
                            let Some((i, scheduled)) = next else { break };
                            let result = send_webhook(&mut sender, addr, &host, &webhooks[i]).await;
                            tally.record(i, result, scheduled, window);
                        }
                        tally
                    })
                })
                .collect();
            workers.push(tokio::task::spawn_blocking(move || {
                pacer.join().expect("the pacer thread panicked");
                IngestTally::default()
            }));
            workers
        }
    };
    let mut total = IngestTally::default();
    for worker in workers {
        total = total.merge(worker.await.expect("an ingest worker panicked"));
    }
    total
}

/// A current-thread tokio runtime on a new named thread, running `f`.
fn client_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting a client runtime");
            runtime.block_on(f())
        })
        .expect("starting a client thread")
}

// ---------------------------------------------------------------------------
// Resource use: CPU of the gateway, of this process, of the machine
// ---------------------------------------------------------------------------

/// Per live thread of `pid` (by thread id): name, seconds running, seconds
/// runnable but waiting for a CPU (/proc/PID/task/TID/schedstat).
fn thread_times(pid: &str) -> BTreeMap<String, (String, f64, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|task| {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_owned();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let ns: Vec<f64> = schedstat.split_whitespace().map(|n| n.parse().unwrap_or(0.0)).collect();
            let field = |i: usize| ns.get(i).copied().unwrap_or(0.0) / 1e9;
            (task.file_name().to_string_lossy().into_owned(), (name, field(0), field(1)))
        })
        .collect()
}

/// CPU seconds of every other process on the machine, by pid: to see
/// whether something besides the gateway and the bench took CPU (the
/// machine-wide tick counts of /proc/stat miss most of a bursty load here).
fn other_processes(gateway: u32) -> BTreeMap<u32, f64> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return BTreeMap::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid != gateway)
        .map(|pid| (pid, cpu_seconds(&format!("/proc/{pid}/stat"))))
        .collect()
}

struct Snapshot {
    at: Instant,
    server: f64,
    client: f64,
    others: BTreeMap<u32, f64>,
    server_threads: BTreeMap<String, (String, f64, f64)>,
    client_threads: BTreeMap<String, (String, f64, f64)>,
}

impl Snapshot {
    fn take(pid: u32) -> Self {
        Self {
            at: Instant::now(),
            server: cpu_seconds(&format!("/proc/{pid}/stat")),
            client: cpu_seconds("/proc/self/stat"),
            others: other_processes(pid),
            server_threads: thread_times(&pid.to_string()),
            client_threads: thread_times("self"),
        }
    }
}

/// CPU over the measured window, in cores.
struct Usage {
    server: f64,
    client: f64,
    /// Every other process (new ones with all their CPU).
    others: f64,
    /// By thread name: (threads, running cores, cores' worth of waiting).
    server_threads: BTreeMap<String, (usize, f64, f64)>,
    client_threads: BTreeMap<String, (usize, f64, f64)>,
}

fn by_name(
    start: &BTreeMap<String, (String, f64, f64)>,
    end: &BTreeMap<String, (String, f64, f64)>,
    seconds: f64,
) -> BTreeMap<String, (usize, f64, f64)> {
    let mut out: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    for (tid, (name, running, waiting)) in end {
        let (_, r0, w0) = start.get(tid).cloned().unwrap_or_default();
        if running - r0 > 0.0 {
            let entry = out.entry(name.clone()).or_default();
            entry.0 += 1;
            entry.1 += (running - r0) / seconds;
            entry.2 += (waiting - w0) / seconds;
        }
    }
    out
}

impl Usage {
    fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let seconds = (b.at - a.at).as_secs_f64().max(1e-9);
        Self {
            server: (b.server - a.server) / seconds,
            client: (b.client - a.client) / seconds,
            others: b
                .others
                .iter()
                .map(|(pid, t)| t - a.others.get(pid).copied().unwrap_or(0.0))
                .sum::<f64>()
                / seconds,
            server_threads: by_name(&a.server_threads, &b.server_threads, seconds),
            client_threads: by_name(&a.client_threads, &b.client_threads, seconds),
        }
    }
}

fn threads_line(threads: &BTreeMap<String, (usize, f64, f64)>) -> String {
    threads
        .iter()
        .map(|(name, (n, running, waiting))| format!("{name} ×{n} {running:.2} (+{waiting:.2} waiting)"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

struct RunReport {
    name: String,
    probes: ProbeTally,
    ingest: IngestTally,
    ingest_pattern: Ingest,
    /// Webhooks acknowledged per second of the measured window.
    ingest_rate: f64,
    ingest_exhausted: bool,
    usage: Usage,
}

impl RunReport {
    fn problem(&self) -> Option<String> {
        if let Some(f) = &self.probes.first_failure {
            return Some(format!("{} failed checks, first: {f}", self.probes.failures));
        }
        if let Some(e) = &self.ingest.first_error {
            return Some(format!("{} failed webhooks, first: {e}", self.ingest.errors));
        }
        None
    }
}

struct Bench {
    settings: Settings,
    gateway: Gateway,
    ledger: Ledger,
    base_ms: i64,
    runs: usize,
}

impl Bench {
    /// Starts the gateway, puts every org on the bench plan and sends the
    /// seed webhooks.
    fn start(settings: Settings, component: &Path, cache_dir: &Path) -> Self {
        let gateway = Gateway::start(component, cache_dir);
        let now = meterd::clock::now_ms();
        let base_ms = (now - 15 * 60_000).max(month_containing(now).from_ms + 1_000);
        let mut bench = Self { settings, gateway, ledger: Ledger::default(), base_ms, runs: 0 };
        let started = Instant::now();
        bench.assign_plans();
        let webhooks = bench.ledger.webhooks("seed", &seed_sandboxes(bench.settings.orgs), base_ms);
        let count = webhooks.len();
        let webhooks = Arc::new(webhooks);
        let addr = bench.gateway.addr;
        let pattern = Ingest::Closed { connections: bench.settings.ingest_connections };
        let moved = webhooks.clone();
        let tally = client_thread("ingest-client", move || Box::pin(ingest_loop(addr, moved, pattern, None)))
            .join()
            .expect("the seeding thread panicked");
        assert_eq!(tally.errors, 0, "seeding failed: {:?}", tally.first_error);
        assert_eq!(tally.acknowledged.len(), count, "every seed webhook is acknowledged");
        for &i in &tally.acknowledged {
            bench.ledger.acknowledged(&webhooks[i]);
        }
        println!(
            "seeded {} orgs on plan `{PLAN}` ({} at their concurrency limit of {CONCURRENCY_LIMIT}) with {count} webhooks in {:.1} s",
            bench.settings.orgs,
            bench.settings.orgs.div_ceil(FULL_EVERY),
            started.elapsed().as_secs_f64()
        );
        bench
    }

    /// `PUT /v1/orgs/{org}` `{"plan":"bench"}` for every org, 16 at a time.
    fn assign_plans(&self) {
        let (addr, orgs) = (self.gateway.addr, self.settings.orgs);
        let failures = client_thread("assign-client", move || {
            Box::pin(async move {
                let next = Arc::new(AtomicUsize::new(0));
                let host = host_header(addr);
                let mut workers = Vec::new();
                for _ in 0..16 {
                    let (next, host) = (next.clone(), host.clone());
                    workers.push(tokio::spawn(async move {
                        let mut sender = connect(addr).await;
                        let mut failures = Vec::new();
                        loop {
                            let org = next.fetch_add(1, Ordering::Relaxed);
                            if org >= orgs {
                                break failures;
                            }
                            let mut request = post(
                                &host,
                                Uri::try_from(format!("/v1/orgs/{}", org_name(org))).expect("a path"),
                                Bytes::from_static(br#"{"plan":"bench"}"#),
                            );
                            *request.method_mut() = Method::PUT;
                            match exchange(&mut sender, addr, request).await {
                                Ok((StatusCode::OK, _)) => {}
                                Ok((status, body)) => {
                                    failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)))
                                }
                                Err(e) => failures.push(e),
                            }
                        }
                    }));
                }
                let mut all = Vec::new();
                for w in workers {
                    all.extend(w.await.expect("an assign worker panicked"));
                }
                all
            })
        })
        .join()
        .expect("the assign thread panicked");
        assert!(failures.is_empty(), "assigning plans failed: {failures:?}");
    }

    /// Probes (checks or health) at the check rate, with `ingest` running
    /// alongside for the whole window.
    fn run(&mut self, name: &str, foreground: Foreground, ingest: Ingest) -> RunReport {
        let s = &self.settings;
        self.runs += 1;
        let seed = 0x5EED_0000 + self.runs as u64;
        let count = (s.rate * s.run_length().as_secs_f64()).ceil() as usize;
        let probes = probes(foreground, s.orgs, count, seed);
        let webhook_count = match ingest {
            Ingest::None => 0.0,
            Ingest::Closed { .. } => s.max_rate * s.run_length().as_secs_f64(),
            Ingest::Paced { rate, .. } => rate * s.run_length().as_secs_f64(),
        }
        .ceil() as usize;
        // Two webhooks per sandbox.
        let sandboxes = ingest_sandboxes(s.orgs, webhook_count.div_ceil(2), seed);
        let webhooks = Arc::new(self.ledger.webhooks(&format!("run{}", self.runs), &sandboxes, self.base_ms));
        let generated = webhooks.len();

        let start = Instant::now() + Duration::from_millis(500);
        let window = Window { start, measure_from: start + s.warmup, end: start + s.run_length() };
        let addr = self.gateway.addr;
        let (orgs, rate, connections) = (s.orgs, s.rate, s.check_connections);
        let probe_thread = client_thread("check-client", move || {
            Box::pin(async move {
                let tally = probe_loop(addr, probes, orgs, rate, connections, window).await;
                tokio::time::sleep_until(tokio::time::Instant::from_std(window.linger())).await;
                tally
            })
        });
        let moved = webhooks.clone();
        let ingest_thread = client_thread("ingest-client", move || {
            Box::pin(async move {
                let tally = ingest_loop(addr, moved, ingest, Some(window)).await;
                tokio::time::sleep_until(tokio::time::Instant::from_std(window.linger())).await;
                tally
            })
        });
        std::thread::sleep(window.measure_from.saturating_duration_since(Instant::now()));
        let before = Snapshot::take(self.gateway.pid());
        std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
        let usage = Usage::between(&before, &Snapshot::take(self.gateway.pid()));
        let mut probes = probe_thread.join().expect("the check thread panicked");
        let mut ingest_tally = ingest_thread.join().expect("the ingest thread panicked");
        for &i in &ingest_tally.acknowledged {
            self.ledger.acknowledged(&webhooks[i]);
        }
        probes.latencies.sort_unstable();
        probes.lags.sort_unstable();
        ingest_tally.latencies.sort_unstable();
        let exhausted = matches!(ingest, Ingest::Closed { .. })
            && ingest_tally.acknowledged.len() as u64 + ingest_tally.errors >= generated as u64;
        RunReport {
            name: name.to_owned(),
            ingest_rate: ingest_tally.measured as f64 / s.seconds.as_secs_f64(),
            probes,
            ingest: ingest_tally,
            ingest_pattern: ingest,
            ingest_exhausted: exhausted,
            usage,
        }
    }

    /// Every org's usage API total (stored records) and entitlements (the
    /// in-memory standing: `used`, `running`) against the ledger.
    fn verify(&self) -> Vec<String> {
        let expected = self.ledger.expected(self.settings.orgs);
        let addr = self.gateway.addr;
        let period = month_containing(meterd::clock::now_ms());
        client_thread("verify-client", move || Box::pin(verify(addr, expected, period)))
            .join()
            .expect("the verify thread panicked")
    }
}

/// `GET uri`, its 200 answer read as `T`.
async fn get_json<T: DeserializeOwned>(
    sender: &mut Sender,
    addr: SocketAddr,
    uri: &str,
) -> Result<T, String> {
    let (status, body) = exchange(sender, addr, get(&host_header(addr), uri)).await?;
    if status != StatusCode::OK {
        return Err(format!("GET {uri}: {status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {uri}: {e}"))
}

fn decimal(value: &Quantity) -> Option<Decimal> {
    Decimal::from_str(&value.0).ok()
}

async fn verify(addr: SocketAddr, expected: Vec<(Decimal, u64)>, period: Range) -> Vec<String> {
    let mut sender = connect(addr).await;
    let range = format!("from={}&to={}", rfc3339_ms(period.from_ms), rfc3339_ms(period.to_ms));
    let mut problems = Vec::new();
    for (i, (core_seconds, running)) in expected.into_iter().enumerate() {
        let org = org_name(i);
        let usage: Result<UsageAnswer, _> =
            get_json(&mut sender, addr, &format!("/v1/orgs/{org}/usage?meter={METER}&{range}")).await;
        let stored = usage.map(|u| decimal(&u.total));
        let entitlements: Result<Entitlements, _> =
            get_json(&mut sender, addr, &format!("/v1/orgs/{org}/entitlements")).await;
        let memory = entitlements.map(|e| {
            let used = e.meters.iter().find(|m| m.meter == METER).and_then(|m| decimal(&m.used));
            (used, Some(e.concurrency.running))
        });
        match (stored, memory) {
            (Ok(Some(total)), Ok((Some(used), Some(now_running))))
                if total == core_seconds && used == core_seconds && now_running == running => {}
            (stored, memory) => problems.push(format!(
                "{org}: acknowledged {core_seconds} core-seconds and {running} running; usage API total {stored:?}, entitlements (used, running) {memory:?}"
            )),
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

fn latency_summary(sorted: &[u64]) -> String {
    if sorted.is_empty() {
        return "no latencies".to_owned();
    }
    let p = |q: f64| format_ns(percentile(sorted, q) as f64);
    format!("p50 {} · p90 {} · p99 {} · p99.9 {} · max {}", p(50.0), p(90.0), p(99.0), p(99.9), p(100.0))
}

fn print_run(r: &RunReport, check_rate: f64) {
    let t = &r.probes;
    if t.answered + t.failures == 0 {
        println!("{}:", r.name);
    } else {
        println!(
            "{}: {} requests answered as expected at {check_rate:.0}/s ({} allowed, {} denied), {} failures",
            r.name, t.answered, t.allowed, t.denied, t.failures
        );
        println!("  latency from schedule: {}", latency_summary(&t.latencies));
        println!("  send lag (pacer + waiting for an idle connection): {}", latency_summary(&t.lags));
    }
    match r.ingest_pattern {
        Ingest::None => {}
        Ingest::Closed { connections } | Ingest::Paced { connections, .. } => {
            println!(
                "  ingest alongside: {:.0} webhooks/s acknowledged in the measured window ({}, {connections} connections; {} acknowledged in all, {} errors){}",
                r.ingest_rate,
                match r.ingest_pattern {
                    Ingest::Paced { rate, .. } => format!("paced at {rate:.0}/s"),
                    _ => "closed loop".to_owned(),
                },
                r.ingest.acknowledged.len(),
                r.ingest.errors,
                if r.ingest_exhausted {
                    " — pre-generated webhooks ran out: raise METERD_BENCH_MAX_RATE"
                } else {
                    ""
                }
            );
            println!("  ingest latency: {}", latency_summary(&r.ingest.latencies));
        }
    }
    let u = &r.usage;
    println!(
        "  CPU (cores of {}, measured window): meterd {:.2}, load generator {:.2}, other processes {:.2}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        u.server,
        u.client,
        u.others,
    );
    if u.others > 0.1 {
        println!(
            "  DISTURBED: other processes used {:.2} cores during the window; these numbers are not the gateway's alone",
            u.others
        );
    }
    println!("  meterd threads: {}", threads_line(&u.server_threads));
    println!("  bench threads: {}", threads_line(&u.client_threads));
    if let Some(problem) = r.problem() {
        println!("  INVALID: {problem}");
    }
}

fn print_summary(runs: &[RunReport]) {
    println!();
    println!(
        "| run | ingest webhooks/s | p50 | p90 | p99 | p99.9 | max | meterd CPU | bench CPU | other CPU | failures |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let lat = |q: f64| {
            if r.probes.latencies.is_empty() {
                "–".to_owned()
            } else {
                format_ns(percentile(&r.probes.latencies, q) as f64)
            }
        };
        let ingest = if matches!(r.ingest_pattern, Ingest::None) {
            "–".to_owned()
        } else {
            format!("{:.0}", r.ingest_rate)
        };
        println!(
            "| {} | {ingest} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            r.name.split(':').next().unwrap_or_default(),
            lat(50.0),
            lat(90.0),
            lat(99.0),
            lat(99.9),
            lat(100.0),
            r.usage.server,
            r.usage.client,
            r.usage.others,
            r.probes.failures + r.ingest.errors
        );
    }
    println!();
    for r in runs.iter().filter(|r| !r.name.starts_with("floor") && !r.probes.latencies.is_empty()) {
        let p99 = percentile(&r.probes.latencies, 99.0);
        let verdict = if p99 <= nanos(P99_TARGET) { "met" } else { "NOT met" };
        println!("{}: check p99 {} (target ≤ 1 ms: {verdict})", r.name, format_ns(p99 as f64));
    }
}

// ---------------------------------------------------------------------------
// In process: `Orgs::check` and the commit hook without HTTP
// ---------------------------------------------------------------------------

/// A delivery shaped like the e2b plugin's output: `killed` → CPU and RAM
/// deltas and a level of 0; `created` → a level of 1.
fn delivery(id: &str, org: &str, sandbox: &str, killed: bool, at_ms: i64) -> Delivery {
    let record = |metric: &str, kind: Kind, quantity: Decimal, window_start_ms| UsageRecord {
        event_id: id.to_owned(),
        org_id: org.to_owned(),
        subject: sandbox.to_owned(),
        metric: metric.to_owned(),
        kind,
        quantity,
        at_ms,
        window_start_ms,
        attributes: BTreeMap::from([("sandbox_id".to_owned(), sandbox.to_owned())]),
    };
    let mut records = Vec::new();
    if killed {
        let start = Some(at_ms - EXECUTION_MS);
        records.push(record(METER, Kind::Delta, Decimal::from(CORE_SECONDS_PER_KILL), start));
        records.push(record("sandbox_ram_gibi_seconds", Kind::Delta, Decimal::new(75, 2), start));
    }
    records.push(record("sandbox_active", Kind::Level, Decimal::from(u8::from(!killed)), None));
    Delivery {
        plugin: "e2b".to_owned(),
        event_id: id.to_owned(),
        received_at_ms: at_ms,
        path: "/".to_owned(),
        query: None,
        headers: Vec::new(),
        body: Vec::new(),
        records,
    }
}

/// The changes one delivery makes, as the store hands them to the hook.
/// What committing `d` changes, as the store's rollup maintenance reports
/// it for a sandbox seen only through these deliveries: its records per
/// hour, and for `sandbox_active` the level step and the run (`started_ms`:
/// when the sandbox a `killed` delivery ends was created, if it was).
fn effects(d: &Delivery, started_ms: Option<i64>) -> Vec<OrgEffect> {
    let mut out = Vec::new();
    let effect =
        |r: &UsageRecord, effect| OrgEffect { org_id: r.org_id.clone(), metric: r.metric.clone(), effect };
    for r in &d.records {
        let delta = if r.kind == Kind::Delta { r.quantity } else { Decimal::ZERO };
        out.push(effect(
            r,
            Effect::Records { at_ms: r.at_ms - r.at_ms.rem_euclid(3_600_000), added: 1, delta },
        ));
        if r.metric != "sandbox_active" {
            continue;
        }
        let run = |ended_ms| Run {
            subject: r.subject.clone(),
            started_ms: started_ms.unwrap_or(r.at_ms),
            ended_ms,
        };
        match (r.quantity.is_zero(), started_ms) {
            (false, _) => {
                out.push(effect(r, Effect::Step { at_ms: r.at_ms, change: r.quantity }));
                out.push(effect(r, Effect::Run { run: run(None), added: true }));
            }
            (true, Some(_)) => {
                out.push(effect(r, Effect::Step { at_ms: r.at_ms, change: -Decimal::ONE }));
                out.push(effect(r, Effect::Run { run: run(None), added: false }));
                out.push(effect(r, Effect::Run { run: run(Some(r.at_ms)), added: true }));
            }
            (true, None) => {}
        }
    }
    out
}

/// Median ns per call over `samples` time-boxed samples, and (min, max) of
/// the samples.
fn time_per_call(samples: usize, sample: Duration, mut call: impl FnMut(usize)) -> (f64, f64, f64) {
    let mut i = 0usize;
    let mut per_call = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed() < sample {
            for _ in 0..16 {
                call(i);
                i += 1;
            }
            calls += 16;
        }
        per_call.push(nanos(started.elapsed()) as f64 / calls as f64);
    }
    let (min, max) = per_call.iter().fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    (support::median(&mut per_call), min, max)
}

fn in_process(settings: &Settings) {
    let orgs_count = settings.orgs;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = meterd::config::Config::parse("check bench", PLAN_TOML, Vec::<(String, String)>::new())
        .expect("the bench config parses");
    let now = meterd::clock::now_ms();
    let base_ms = (now - 15 * 60_000).max(month_containing(now).from_ms + 1_000);
    let orgs = runtime.block_on(async {
        let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("inproc.db").display()))
            .await
            .expect("opening the store");
        store.migrate().await.expect("migrating");
        let store: Arc<dyn Store> = Arc::new(store);
        let orgs =
            Orgs::load(store.clone(), meterd::server::policy(&config), now).await.expect("loading orgs");
        store.set_commit_hook(orgs.clone());
        for org in 0..orgs_count {
            orgs.assign(&org_name(org), PLAN, now).await.expect("assigning the plan");
        }
        // The same seed as over HTTP, committed 500 deliveries a transaction.
        let mut deliveries = Vec::new();
        for (k, (org, finishes)) in seed_sandboxes(orgs_count).into_iter().enumerate() {
            let (org, name) = (org_name(org), format!("sbx-{k:07}"));
            let at = base_ms + (k as i64 * 7) % 600_000;
            deliveries.push(delivery(&format!("{name}-c"), &org, &name, false, at));
            if finishes {
                deliveries.push(delivery(&format!("{name}-k"), &org, &name, true, at + EXECUTION_MS));
            }
        }
        for batch in deliveries.chunks(500) {
            store.commit(batch).await.expect("committing the seed");
        }
        orgs
    });

    let start = Action::SandboxStart { vcpu: Some(VCPU), memory_mb: Some(MEMORY_MB) };
    let consume = Action::Consume { meter: METER.to_owned(), quantity: Decimal::ONE };
    let mut rng = Rng(7);
    let picks: Vec<usize> = (0..4096).map(|_| rng.below(orgs_count)).collect();
    let names: Vec<String> = (0..orgs_count).map(org_name).collect();
    let check = |org: usize, action: &Action| {
        let decision =
            runtime.block_on(orgs.check(&names[org], action, meterd::clock::now_ms())).expect("a check");
        assert_eq!(decision.allow, !(matches!(action, Action::SandboxStart { .. }) && is_full(org)));
    };
    println!();
    println!(
        "in process: `Orgs::check` through the library ({orgs_count} orgs, state as seeded; 15 samples of 0.1 s; includes reading the clock)"
    );
    println!("| case | median ns/check | min–max of samples |");
    println!("|---|---:|---:|");
    let cases: [(&str, &Action, bool); 3] = [
        ("consume 1 core-second (hard quota), random org", &consume, false),
        ("sandbox.start (concurrency, 2 quotas), random org", &start, false),
        ("sandbox.start at a full org (denied, message formatted)", &start, true),
    ];
    for (name, action, full) in cases {
        let (median, min, max) = time_per_call(15, Duration::from_millis(100), |i| {
            let org = picks[i % picks.len()];
            check(if full { org - org % FULL_EVERY } else { org }, action);
        });
        println!("| {name} | {median:.0} | {min:.0}–{max:.0} |");
    }

    // One org with many sandboxes this period. The commit hook (inside the
    // usage transaction), a check, `entitlements` and the notification
    // sweep all hold that org's lock while they run.
    println!();
    println!(
        "in process: one org with S finished sandboxes this period (plus the {orgs_count} seeded orgs): the commit hook (`CommitHook::records_written`) for one `killed` delivery, a check, `Orgs::entitlements` (memory only), and one `Orgs::sweep` of all orgs"
    );
    println!("| S | hook per delivery | check (sandbox.start) | entitlements | sweep, all orgs |");
    println!("|---:|---:|---:|---:|---:|");
    let sweep = || {
        let started = Instant::now();
        runtime.block_on(orgs.sweep(meterd::clock::now_ms())).expect("a sweep");
        started.elapsed()
    };
    // The first sweep also evaluates every org's credit rules once.
    sweep();
    println!("| 0 | | | | {} |", format_ns(nanos(sweep()) as f64));
    for (step, sandboxes) in [1_000usize, 10_000, 100_000].into_iter().enumerate() {
        let org = format!("big-{sandboxes}");
        runtime.block_on(orgs.assign(&org, PLAN, now)).expect("assigning the plan");
        let seed: Vec<OrgEffect> = (0..sandboxes)
            .flat_map(|k| {
                let name = format!("big{step}-{k:07}");
                let at = base_ms + (k as i64 * 7) % 600_000;
                let mut all = effects(&delivery(&format!("{name}-c"), &org, &name, false, at), None);
                all.extend(effects(
                    &delivery(&format!("{name}-k"), &org, &name, true, at + EXECUTION_MS),
                    Some(at),
                ));
                all
            })
            .collect();
        orgs.records_written(None, &seed, now);
        // Each timed delivery is undone (untimed) through the hook's own
        // rollback, so S stays what the row says.
        let mut per_call = Vec::new();
        let timing = Instant::now();
        while per_call.len() < 20 || (per_call.len() < 2_000 && timing.elapsed() < Duration::from_millis(200))
        {
            let name = format!("new{step}-{:07}", per_call.len());
            let d = delivery(&format!("{name}-k"), &org, &name, true, base_ms + per_call.len() as i64);
            let changes = effects(&d, None);
            let started = Instant::now();
            let notices = orgs.records_written(None, &changes, meterd::clock::now_ms());
            per_call.push(nanos(started.elapsed()) as f64);
            orgs.rolled_back(None, &changes, &notices);
        }
        let hook = support::median(&mut per_call);
        let (check_ns, _, _) = time_per_call(5, Duration::from_millis(50), |_| {
            let decision =
                runtime.block_on(orgs.check(&org, &start, meterd::clock::now_ms())).expect("a check");
            assert!(decision.allow);
        });
        let mut entitlements: Vec<f64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let (_, e) =
                    runtime.block_on(orgs.entitlements(&org, meterd::clock::now_ms())).expect("entitlements");
                assert_eq!(e.concurrency.running, 0);
                nanos(started.elapsed()) as f64
            })
            .collect();
        let mut sweeps: Vec<f64> = (0..3).map(|_| nanos(sweep()) as f64).collect();
        println!(
            "| {sandboxes} | {} | {} | {} | {} |",
            format_ns(hook),
            format_ns(check_ns),
            format_ns(support::median(&mut entitlements)),
            format_ns(support::median(&mut sweeps))
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    let filters = support::filters();
    println!(
        "check benchmark: meterd {} on {}; load generator: this process (hyper HTTP/1.1; a check thread and an ingest thread, each a tokio current-thread runtime + pacer) on the same machine",
        env!("CARGO_BIN_EXE_meterd"),
        support::machine_line()
    );
    println!(
        "{:?} warm-up + {:?} measured per run; {} checks/s over {} connections; ingest over {} connections; one gateway and SQLite database for all runs",
        settings.warmup,
        settings.seconds,
        settings.rate,
        settings.check_connections,
        settings.ingest_connections
    );
    let names = ["floor", "alone", "ingest-only", "ingest-closed", "ingest-paced"];
    let http = names.iter().any(|n| support::selected(&filters, n));
    let mut problems = Vec::new();
    if http {
        let cache_dir = tempfile::tempdir().expect("creating the cache dir");
        let component = support::component("e2b");
        let (ingest_connections, ingest_rate, check_rate) =
            (settings.ingest_connections, settings.ingest_rate, settings.rate);
        let mut bench = Bench::start(settings, &component, cache_dir.path());
        let mut runs = Vec::new();
        let closed = Ingest::Closed { connections: ingest_connections };
        let paced = Ingest::Paced { rate: ingest_rate, connections: ingest_connections };
        for (name, foreground, ingest, label) in [
            ("floor", Foreground::Health, Ingest::None, "GET /healthz at the check rate".to_owned()),
            ("alone", Foreground::Checks, Ingest::None, "checks only".to_owned()),
            (
                "ingest-only",
                Foreground::Nothing,
                closed,
                format!("ingest only, {ingest_connections} closed-loop connections, no checks"),
            ),
            (
                "ingest-closed",
                Foreground::Checks,
                closed,
                format!("checks + ingest, {ingest_connections} closed-loop connections"),
            ),
            ("ingest-paced", Foreground::Checks, paced, format!("checks + ingest at {ingest_rate:.0}/s")),
        ] {
            if !support::selected(&filters, name) {
                continue;
            }
            let label = format!("{name}: {label}");
            let report = bench.run(&label, foreground, ingest);
            print_run(&report, check_rate);
            problems.extend(report.problem().map(|p| format!("{label}: {p}")));
            runs.push(report);
        }
        print_summary(&runs);
        let found = bench.verify();
        if found.is_empty() {
            println!(
                "verified: for all {} orgs, the usage API total and the in-memory entitlements (used, running) equal what was acknowledged",
                bench.settings.orgs
            );
        } else {
            println!("INVALID: {} orgs do not match what was acknowledged; first: {}", found.len(), found[0]);
            problems.extend(found);
        }
        bench.gateway.stop();
        if support::selected(&filters, "inproc") {
            in_process(&bench.settings);
        }
    } else if support::selected(&filters, "inproc") {
        in_process(&settings);
    }
    if !problems.is_empty() {
        eprintln!("{} problem(s): the run is INVALID", problems.len());
        std::process::exit(1);
    }
}
