//! What the benchmarks share: knobs from the environment, order
//! statistics, the E2B signature, fixtures and freshly built components;
//! and for the benches that drive the real binary (`ingest`, `replicas`):
//! starting `meterd serve`, the benchmark webhook, a bare HTTP/1.1 client
//! and process CPU time.
//!
//! The benchmarks use a small hand-written harness rather than a framework:
//! the numbers that matter here (median ns/op, latency percentiles measured
//! from the scheduled send time) are a few lines each, and a framework
//! would add a heavy dependency tree to every `cargo bench` build.

#![allow(dead_code, unused_imports)] // each benchmark uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rust_decimal::Decimal;
use tokio::net::TcpStream;

pub use meterd_testkit::gateway::signal;
pub use meterd_testkit::postgres::TestDatabase as PgDatabase;
pub use meterd_testkit::{E2B_SECRET, component, e2b_signature, fixture};

/// A number from the environment, or `default` when the variable is unset.
/// A malformed value stops the benchmark: silently using the default would
/// publish numbers for a run nobody asked for.
pub fn env_number<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a valid number")),
        Err(_) => default,
    }
}

/// A duration in (possibly fractional) seconds from the environment.
pub fn env_seconds(name: &str, default: f64) -> Duration {
    let seconds: f64 = env_number(name, default);
    assert!(seconds.is_finite() && seconds > 0.0, "{name} must be a positive number of seconds");
    Duration::from_secs_f64(seconds)
}

/// The command-line filters `cargo bench -- WORD…` passes through (flags
/// such as `--bench` are cargo's and ignored). No filter selects everything.
pub fn filters() -> Vec<String> {
    std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect()
}

/// Whether a case named `name` is selected by `filters`.
pub fn selected(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// The `p`-th percentile (0–100) of already sorted values, nearest-rank:
/// always a value that was actually observed.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Nanoseconds, printed with a unit that keeps 3–4 significant digits.
pub fn format_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// One line naming the machine, for the top of a benchmark's output.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// How fast this machine runs right now: the median time of one native
/// verify + normalize of the `normalize` bench's fixture (its native case),
/// over 15 samples of 20 ms. This VM's single-thread speed changes by up to
/// 2x between phases and days (BENCHMARKS.md "Machine"), so results of
/// different runs compare only next to this figure.
pub fn speed_line() -> String {
    let body = fixture("e2b/webhook-killed.constructed.body.json");
    let signature = e2b_signature(E2B_SECRET, &body);
    let one = || {
        meterd_plugin_e2b::verify_signature(E2B_SECRET, &body, Some(&signature), Some("v1"))
            .expect("the fixture verifies");
        meterd_plugin_e2b::normalize(&body, "tenant").expect("the fixture normalizes")
    };
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let (started, mut calls) = (std::time::Instant::now(), 0u32);
            while started.elapsed() < Duration::from_millis(20) {
                std::hint::black_box(one());
                calls += 1;
            }
            started.elapsed().as_nanos() as f64 / f64::from(calls)
        })
        .collect();
    format!(
        "machine speed now: native E2B verify + normalize {} per webhook (`normalize`'s native case: 3.4–4.9 µs in the phases recorded up to 2026-12-06, 8.3 µs on 2026-12-07)",
        format_ns(median(&mut samples))
    )
}

/// Loads a freshly built plugin into a runtime with default settings, off
/// the async threads (compiling a component blocks).
pub async fn load_plugin(
    name: &'static str,
    settings: meterd::plugin::PluginSettings,
) -> std::sync::Arc<meterd::runtime::LoadedPlugin> {
    let bytes = std::fs::read(component(name)).unwrap_or_else(|e| panic!("{name} component: {e}"));
    let plugin = tokio::task::spawn_blocking(move || {
        let runtime =
            meterd::runtime::Runtime::new(meterd::runtime::RuntimeSettings::default()).expect("runtime");
        runtime.load(&bytes, settings).unwrap_or_else(|e| panic!("loading {name}: {e}"))
    })
    .await
    .expect("load task");
    std::sync::Arc::new(plugin)
}

/// A duration in whole nanoseconds (saturating).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The gateway under test: `meterd serve` as a child process
// ---------------------------------------------------------------------------

/// Writes `meterd.toml` (and the plugins dir with the e2b component) into
/// `dir`, with `database` as the database URL, and returns the config's
/// path. `cache_dir` may be shared between gateways so the component is
/// compiled once.
pub fn write_config(dir: &Path, component: &Path, cache_dir: &Path, database: &str) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("creating the plugins dir");
    std::fs::copy(component, plugins.join("e2b.wasm")).expect("copying the e2b component");
    let path = dir.join("meterd.toml");
    std::fs::write(&path, meterd_testkit::gateway::e2b_config(database, &plugins, cache_dir, ""))
        .expect("writing the config");
    path
}

/// `meterd serve --config PATH` (the binary cargo built, started as the
/// test kit starts every gateway): stdout piped (for the listening line),
/// stderr inherited, warnings logged.
pub fn serve_command(config: &Path, dir: &Path) -> std::process::Command {
    let mut command = meterd_testkit::gateway::serve(env!("CARGO_BIN_EXE_meterd"), config, dir);
    command.stderr(Stdio::inherit());
    command
}

/// [`serve_command`], started.
pub fn spawn_meterd(config: &Path, dir: &Path) -> Child {
    serve_command(config, dir).spawn().expect("starting meterd")
}

/// SIGTERM, then wait up to `within`; a gateway still running then is left
/// for the caller's drop to kill.
pub fn stop_gracefully(child: &mut Child, within: Duration) {
    let pid = child.id();
    match meterd_testkit::gateway::terminate(child, within) {
        Some(status) if !status.success() => {
            eprintln!("meterd (pid {pid}) exited with {status} after SIGTERM")
        }
        Some(_) => {}
        None => eprintln!("meterd (pid {pid}) did not stop within {within:?} of SIGTERM; killing it"),
    }
}

/// Reads the child's stdout until `meterd listening on http://ADDR`, and keeps
/// draining it afterwards so the child never blocks on a full pipe.
pub fn wait_for_listening(child: &mut Child) -> SocketAddr {
    meterd_testkit::gateway::listening(child, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
}

/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every
/// mainstream architecture.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) from a /proc `stat` file (a process's
/// counts every thread it ever had; a thread's only its own).
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the parenthesized command name: state is field 3, so
    // utime (14) and stime (15) are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// A field of /proc/PID/status given in kB (`VmRSS:`, `VmHWM:`, …), in
/// MiB; NaN when the process or the field is gone.
pub struct ProcStatus(String);

impl ProcStatus {
    pub fn of(pid: u32) -> Self {
        Self(std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
    }

    pub fn mib(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

/// CPU seconds of the PostgreSQL processes on this machine that work for
/// `database`: the backends connected to it (their process title names
/// it) and the server's own processes (postmaster, WAL writer,
/// checkpointer, …: no client address in their title), which serve every
/// database. Backends of other databases (other sessions' tests) are left
/// out. `None` when there is no such process: the server runs elsewhere.
pub fn postgres_cpu_seconds(database: &str) -> Option<f64> {
    let mut found = false;
    let mut seconds = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if !std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim_end() == "postgres") {
            continue;
        }
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue; // exited meanwhile
        };
        // A client backend's title: `postgres: CLUSTER: USER DATABASE HOST(PORT) STATE`.
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let client_backend = title.contains('(') || title.contains("[local]");
        if !client_backend || title.split_whitespace().any(|word| word == database) {
            found = true;
            seconds += cpu_seconds(&path.join("stat").to_string_lossy());
        }
    }
    found.then_some(seconds)
}

/// Machine-wide CPU time from the first line of /proc/stat, in ticks:
/// (busy, idle + iowait, stolen by the hypervisor).
pub fn machine_cpu() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let idle = field(3) + field(4);
    let steal = field(7);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    (busy, idle, steal)
}

// ---------------------------------------------------------------------------
// The benchmark webhook
// ---------------------------------------------------------------------------

/// Each benchmark webhook is a `killed` event with 2 vCPUs for 1.5 s: 3
/// core-seconds, so the committed total is exactly 3 × acknowledged.
pub const CORE_SECONDS_PER_WEBHOOK: u64 = 3;
pub const METER: &str = "sandbox_cpu_core_seconds";
/// The benchmark events all happen on 2025-08-06.
pub const USAGE_RANGE: &str = "from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z";

/// One signed webhook, ready to send: generating and signing happen before
/// the clock starts, so the client only does HTTP during a run.
pub struct Prepared {
    pub body: Bytes,
    pub signature: HeaderValue,
}

/// A `killed` event shaped like tests/fixtures/e2b/webhook-killed (same
/// fields, similar size), with a unique `id` so no delivery is a duplicate.
pub fn webhook_body(id: &str, org: &str, sandbox: &str, timestamp: &str) -> String {
    format!(
        r#"{{"id":"{id}","version":"v2","type":"sandbox.lifecycle.killed","timestamp":"{timestamp}","event_category":"lifecycle","event_label":"kill","event_data":{{"execution":{{"execution_time":1500,"memory_mb":512,"started_at":"2025-08-06T20:59:34Z","vcpu_count":2}},"kill_reason":"unknown","sandbox_metadata":{{"tenant":"{org}"}}}},"sandbox_id":"{sandbox}","sandbox_execution_id":"1dae9e1c-9957-4ce7-a236-a99d5779aadf","sandbox_template_id":"rki5dems9wqfm4r03t7g","sandbox_build_id":"a979a14b-bdcc-49e6-bc04-1189fc9fe7c2","sandbox_team_id":"460355b3-4f64-48f9-9a16-4442817f79f5"}}"#
    )
}

/// `count` signed webhooks for organization `org`, ids prefixed with `run`,
/// for 1,000 sandboxes in turn. All at one instant by default (so each
/// sandbox piles up records at one time); `METERD_BENCH_TIMESTAMPS=distinct`
/// stamps webhook i at 2025-08-06T20:59:36Z + i ms, as a live stream is.
pub fn prepare(run: &str, org: &str, count: usize) -> Arc<Vec<Prepared>> {
    let distinct = std::env::var("METERD_BENCH_TIMESTAMPS").is_ok_and(|v| v == "distinct");
    // 2025-08-06T20:59:36Z
    const START_MS: i64 = 1_754_513_976_000;
    let webhooks = (0..count)
        .map(|i| {
            let timestamp = if distinct {
                let t = chrono::DateTime::from_timestamp_millis(START_MS + i as i64).expect("a 2025 time");
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            } else {
                "2025-08-06T20:59:36.123456789Z".to_owned()
            };
            let sandbox = format!("sbx-{:04}", i % 1_000);
            let body = webhook_body(&format!("bench-{run}-{i:010}"), org, &sandbox, &timestamp);
            let signature = e2b_signature(E2B_SECRET, body.as_bytes());
            Prepared {
                body: Bytes::from(body),
                signature: HeaderValue::from_str(&signature).expect("base64 is a header value"),
            }
        })
        .collect();
    Arc::new(webhooks)
}

// ---------------------------------------------------------------------------
// A bare HTTP/1.1 client
// ---------------------------------------------------------------------------

pub type Sender = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 keep-alive connection (hyper's connection API: no pool, no
/// retries, nothing between the benchmark and the socket).
pub async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connecting to meterd");
    stream.set_nodelay(true).expect("setting TCP_NODELAY");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

pub fn host_header(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("an address is a header value")
}

pub fn ingest_request(host: &HeaderValue, webhook: &Prepared) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/ingest/e2b")
        .header(HOST, host.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("e2b-signature", webhook.signature.clone())
        .body(Full::new(webhook.body.clone()))
        .expect("a well-formed request")
}

/// Sends one request and reads the whole answer; `Ok` only for a 200 that
/// is not a duplicate. (The receipt is searched for `"duplicate":false`
/// rather than read as a `meterd::api::ops::Receipt`: this runs for every
/// request of a load run, and the client's CPU is part of what is measured.)
pub async fn send(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<(), String> {
    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if !contains(&body, b"\"duplicate\":false") {
        return Err(format!("unexpected receipt: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `GET /v1/orgs/{org}/usage` of the benchmark meter and month → `total`.
pub async fn usage_total(addr: SocketAddr, org: &str) -> Decimal {
    let (status, body) = get(addr, &format!("/v1/orgs/{org}/usage?meter={METER}&{USAGE_RANGE}")).await;
    assert_eq!(status, StatusCode::OK, "usage query failed: {}", String::from_utf8_lossy(&body));
    let usage: meterd::api::usage::Usage = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not a usage answer ({e}): {}", String::from_utf8_lossy(&body)));
    usage.total.0.parse().expect("usage answer has a decimal `total`")
}

/// The gateway's `/metrics` (Prometheus text).
pub async fn metrics_text(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "GET /metrics failed: {}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).into_owned()
}

/// One series' value in a `/metrics` text (`name{labels}` exactly as
/// exposed), 0 when it has not appeared.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// A GET on a connection of its own: the answer's status and body.
async fn get(addr: SocketAddr, path_and_query: &str) -> (StatusCode, Bytes) {
    let mut sender = connect(addr).await;
    sender.ready().await.expect("a connection to the gateway");
    let request = Request::builder()
        .uri(path_and_query)
        .header(HOST, host_header(addr))
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request");
    let response = sender.send_request(request).await.unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.expect("an answer's body").to_bytes();
    (status, body)
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A database made for one run (`meterd_testkit::postgres`), with a note
/// when the server does not analyze tables by itself.
pub async fn create_database(admin_url: &str, name: String) -> PgDatabase {
    use sqlx::Connection as _;
    let database = PgDatabase::create(admin_url, name).await;
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let autovacuum: Result<String, _> = sqlx::query_scalar("SHOW autovacuum").fetch_one(&mut admin).await;
        if autovacuum.is_ok_and(|setting| setting == "off") {
            println!(
                "note: autovacuum is off on this server: nothing analyzes {}'s tables during the run",
                database.name
            );
        }
        let _ = admin.close().await;
    }
    database
}
