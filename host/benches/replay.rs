//! Replay (issue 8): how fast a running gateway re-runs a plugin's stored
//! payloads and corrects what changed, what it costs in CPU, and that its
//! memory stays bounded, on SQLite and on PostgreSQL.
//!
//! Each run (`sqlite`, `pg`, `pg-analyzed`) starts a fresh `meterd serve`
//! (the real binary, ephemeral loopback port, no admin token: the API is
//! open on loopback) whose plugins dir holds the buggy E2B build as `e2b.wasm`
//! (`tests/plugins/e2b-ram-mb`, version 0.0.9: every
//! `sandbox_ram_gibi_seconds` record 1.024× too high), on a fresh database:
//! a new SQLite file, or a PostgreSQL database made with `CREATE DATABASE`
//! for the run and dropped `WITH (FORCE)` after it. Then:
//!
//! 1. ingest: N signed E2B `killed` webhooks with unique ids (each 3
//!    records: CPU, RAM, active) over keep-alive connections. Printed, not
//!    a result;
//! 2. the fixed plugin (`plugins/e2b`) is renamed over `e2b.wasm`, and
//!    `GET /v1/plugins` polled until e2b is no longer 0.0.9;
//! 3. three timed phases, each `POST /v1/replays {"plugin":"e2b",
//!    "dry_run":…}` and then `GET /v1/replays/{id}` every poll interval
//!    until the job is no longer running: a dry run, the apply, and the
//!    apply again (nothing left to do).
//!
//! Per phase: the job's own duration (`finished_at` − `started_at`),
//! deliveries/s (and the rate over the first and second half of the
//! deliveries, to show a slowdown as the job advances), records corrected,
//! the gateway's CPU seconds over the phase, for `pg` the CPU seconds of
//! the PostgreSQL processes that work for the run's database (its backends
//! and the server's own processes), the busy CPU seconds of everything
//! else on the machine (noise), and the gateway's VmRSS and VmHWM after the
//! phase (with RSS split into anonymous, file-backed and shared memory).
//! VmHWM is reset (`/proc/PID/clear_refs`, 5) before each phase, so it is
//! the peak resident set during that phase (never below the RSS at its
//! start, which includes what the usage queries between phases left). The
//! anonymous RSS is also read at every poll, and at points between phases.
//!
//! Every run is verified, or the bench panics: the dry run reports N
//! corrected and leaves the RAM total at N × 0.768 GiB·s (512 MiB × 1.5 s,
//! read as decimal MB); the apply reports N corrected, no failed delivery
//! and no conflict, and the usage API then answers exactly N × 0.75 GiB·s
//! for RAM and still 3N core-seconds for CPU; the second apply corrects
//! nothing and finds all 3N records unchanged.
//!
//! `pg-analyzed` is `pg` with `ANALYZE` run on the database after the
//! ingest: the table statistics autovacuum would gather (the local test
//! server runs with autovacuum off, so `pg` replays on tables nothing has
//! analyzed).
//!
//! Run: `cargo bench -p meterd --bench replay` (filters after `--`:
//! `sqlite`, `pg` (both PostgreSQL runs), `pg-analyzed`). The PostgreSQL
//! runs need a server where the user may create databases;
//! `bash tests/postgres/ensure.sh` starts the local one. Knobs (environment): `METERD_BENCH_DELIVERIES` (N, default
//! 20000), `METERD_BENCH_CONNECTIONS` (ingest connections, default 32),
//! `METERD_BENCH_POLL_MS` (job polling interval, default 20),
//! `METERD_BENCH_POSTGRES` (the server's admin URL; else
//! `METERD_TEST_POSTGRES`, else `postgres://postgres@127.0.0.1:5432/postgres`).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meterd::api::Time;
use meterd::api::ops::Plugins;
use meterd::api::replays::{ReplayJob, ReplayState, Report};
use meterd::api::usage::Usage;
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::Connection as _;

use support::{
    CORE_SECONDS_PER_WEBHOOK, METER, PgDatabase, Prepared, TICKS_PER_SECOND, USAGE_RANGE, connect,
    cpu_seconds, host_header, ingest_request, machine_cpu, postgres_cpu_seconds, prepare, send, spawn_meterd,
    stop_gracefully, wait_for_listening, write_config,
};

const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const SQLITE_FILE: &str = "meterd.db";
const RAM_METER: &str = "sandbox_ram_gibi_seconds";
/// The version `info()` of the buggy build reports.
const BUGGY_VERSION: &str = "0.0.9";
/// What a benchmark webhook's RAM record says: 512 MiB for 1.5 s is
/// 0.75 GiB·s; the buggy build reads 512 as decimal MB (× 1.024).
fn ram_right() -> Decimal {
    Decimal::new(75, 2)
}
fn ram_buggy() -> Decimal {
    Decimal::new(768, 3)
}
/// Change lines a job lists at most (`replay::report::LISTED`).
const LISTED: usize = 1_000;

/// One of the compared setups (a filter name).
struct Setup {
    name: &'static str,
    postgres: bool,
    /// Run `ANALYZE` on the database after the ingest, so the planner has
    /// the statistics autovacuum would gather.
    analyze: bool,
}

const SETUPS: [Setup; 3] = [
    Setup { name: "sqlite", postgres: false, analyze: false },
    Setup { name: "pg", postgres: true, analyze: false },
    Setup { name: "pg-analyzed", postgres: true, analyze: true },
];

/// What to run, from the environment (see the module docs).
struct Settings {
    deliveries: usize,
    connections: usize,
    poll: Duration,
    postgres: String,
}

impl Settings {
    fn from_env() -> Self {
        let deliveries = support::env_number("METERD_BENCH_DELIVERIES", 20_000usize);
        let connections = support::env_number("METERD_BENCH_CONNECTIONS", 32usize);
        let poll_ms = support::env_number("METERD_BENCH_POLL_MS", 20u64);
        assert!(deliveries > 0, "METERD_BENCH_DELIVERIES must be at least 1");
        assert!(connections > 0, "METERD_BENCH_CONNECTIONS must be at least 1");
        assert!(poll_ms > 0, "METERD_BENCH_POLL_MS must be at least 1");
        let postgres = std::env::var("METERD_BENCH_POSTGRES")
            .or_else(|_| std::env::var("METERD_TEST_POSTGRES"))
            .unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned());
        Self { deliveries, connections, poll: Duration::from_millis(poll_ms), postgres }
    }
}

// ---------------------------------------------------------------------------
// The database of a run
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// One `meterd serve` with its temp dir (config, plugins dir, and for
/// SQLite the database file and the compiled-code cache).
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    api: reqwest::Client,
}

impl Gateway {
    fn start(database: Option<&PgDatabase>, buggy: &Path) -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let url = match database {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", dir.path().join(SQLITE_FILE).display()),
        };
        let config = write_config(dir.path(), buggy, &dir.path().join("cache"), &url);
        let mut child = spawn_meterd(&config, dir.path());
        let addr = wait_for_listening(&mut child);
        Self { child, dir, addr, api: reqwest::Client::new() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`: its status, the answer read as `T` (panics, showing the
    /// body, on any other status or shape) and its size in bytes.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> (reqwest::StatusCode, T, usize) {
        let response =
            self.api.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let body = response.bytes().await.unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
        assert!(status.is_success(), "GET {path}: {status} {}", String::from_utf8_lossy(&body));
        let answer = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path}: not a {} ({e}): {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&body)
            )
        });
        (status, answer, body.len())
    }

    /// `POST path` with a JSON body: its status and the answer read as `T`
    /// (panics, showing the body, on any other status or shape).
    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> (reqwest::StatusCode, T) {
        let response = self
            .api
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let body = response.bytes().await.unwrap_or_else(|e| panic!("POST {path}: reading the body: {e}"));
        assert!(status.is_success(), "POST {path}: {status} {}", String::from_utf8_lossy(&body));
        let answer = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "POST {path}: not a {} ({e}): {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&body)
            )
        });
        (status, answer)
    }

    /// The e2b plugin's `info()` version as `GET /v1/plugins` shows it.
    async fn e2b_version(&self) -> String {
        let (status, body, _) = self.get::<Plugins>("/v1/plugins").await;
        assert!(status.is_success(), "GET /v1/plugins: {status} {body:?}");
        body.plugins.into_iter().find(|p| p.name == "e2b").map_or_else(|| "-".to_owned(), |p| p.version)
    }

    /// The usage API's `total` of `meter` for `org` in the benchmark month.
    async fn usage_total(&self, org: &str, meter: &str) -> Decimal {
        let (status, body, _) =
            self.get::<Usage>(&format!("/v1/orgs/{org}/usage?meter={meter}&{USAGE_RANGE}")).await;
        assert!(status.is_success(), "usage query of {meter}: {status} {body:?}");
        Decimal::from_str(&body.total.0)
            .unwrap_or_else(|_| panic!("the usage answer has no decimal `total`: {body:?}"))
    }

    /// SIGTERM, then wait (killed after 30 s).
    fn stop(mut self) {
        stop_gracefully(&mut self.child, Duration::from_secs(30));
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

/// A process's memory from /proc/PID/status, in MiB.
#[derive(Clone, Copy)]
struct Memory {
    /// Resident now.
    rss: f64,
    /// Peak resident (since the last reset).
    hwm: f64,
    /// Of `rss`: anonymous (heap, stacks), file-backed (binary, libraries,
    /// mapped files) and shared memory (SQLite's `-shm` WAL index).
    anon: f64,
    file: f64,
    shmem: f64,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let status = support::ProcStatus::of(pid);
        let field = |name: &str| status.mib(name);
        Self {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            shmem: field("RssShmem:"),
        }
    }

    fn split(&self) -> String {
        format!("anon {:.0} + file {:.0} + shmem {:.0} MiB", self.anon, self.file, self.shmem)
    }
}

/// Resets the process's VmHWM to its VmRSS now (Linux `clear_refs` 5), so
/// the next VmHWM read is the peak since. False if the kernel refused.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// ---------------------------------------------------------------------------
// Ingest (not a result)
// ---------------------------------------------------------------------------

struct Ingest {
    seconds: f64,
    acknowledged: usize,
    gateway_cpu: f64,
    memory: Memory,
}

/// Sends every webhook once over `connections` keep-alive connections;
/// panics on the first failed request.
async fn ingest(gw: &Gateway, webhooks: Arc<Vec<Prepared>>, connections: usize) -> Ingest {
    let addr = gw.addr;
    let cpu_before = cpu_seconds(&format!("/proc/{}/stat", gw.pid()));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (webhooks, next) = (webhooks.clone(), next.clone());
        let mut sender = connect(addr).await;
        workers.push(tokio::spawn(async move {
            let host = host_header(addr);
            let mut acknowledged = 0usize;
            while let Some(webhook) = webhooks.get(next.fetch_add(1, Ordering::Relaxed)) {
                if sender.is_closed() {
                    sender = connect(addr).await;
                }
                if let Err(e) = send(&mut sender, ingest_request(&host, webhook)).await {
                    panic!("ingest: a webhook failed: {e}");
                }
                acknowledged += 1;
            }
            acknowledged
        }));
    }
    let mut acknowledged = 0;
    for worker in workers {
        acknowledged += worker.await.expect("an ingest connection failed");
    }
    Ingest {
        seconds: start.elapsed().as_secs_f64(),
        acknowledged,
        gateway_cpu: cpu_seconds(&format!("/proc/{}/stat", gw.pid())) - cpu_before,
        memory: Memory::of(gw.pid()),
    }
}

// ---------------------------------------------------------------------------
// The timed phases
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    DryRun,
    Apply,
    ApplyAgain,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DryRun => "dry run",
            Kind::Apply => "apply",
            Kind::ApplyAgain => "apply again",
        }
    }
}

struct Phase {
    kind: Kind,
    /// The finished job, as `GET /v1/replays/{id}` showed it.
    job: ReplayJob,
    /// `finished_at` − `started_at` of the job.
    job_seconds: f64,
    /// POST sent → the poll that saw it finished.
    wall_seconds: f64,
    /// Deliveries/s over the first and the second half of the deliveries.
    halves: Option<(f64, f64)>,
    gateway_cpu: f64,
    postgres_cpu: Option<f64>,
    /// This process (the polling client).
    client_cpu: f64,
    /// Machine-wide busy CPU seconds over the phase (everything).
    machine_cpu: f64,
    /// Before the phase, and after it.
    memory_before: Memory,
    memory: Memory,
    /// The largest anonymous RSS a poll saw, and the deliveries done then.
    anon_peak: (f64, u64),
    peak_reset: bool,
    polls: usize,
    largest_answer: usize,
}

impl Phase {
    fn report(&self) -> &Report {
        &self.job.report
    }

    /// Busy CPU seconds of everything but the gateway, PostgreSQL and this
    /// process: other work on the machine, noise in the measurement.
    fn other_cpu(&self) -> f64 {
        (self.machine_cpu - self.gateway_cpu - self.postgres_cpu.unwrap_or(0.0) - self.client_cpu).max(0.0)
    }

    fn deliveries_per_second(&self) -> f64 {
        self.report().deliveries.done as f64 / self.job_seconds.max(1e-9)
    }
}

fn job_time(time: Option<&Time>, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let text = &time.unwrap_or_else(|| panic!("the job has no {field}")).0;
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("the job's {field} {text:?}: {e}"))
}

/// Starts a replay of e2b and polls it until it is no longer running.
async fn phase(gw: &Gateway, pg: Option<&str>, kind: Kind, poll: Duration) -> Phase {
    let pid = gw.pid();
    let stat = format!("/proc/{pid}/stat");
    let memory_before = Memory::of(pid);
    let peak_reset = reset_peak_rss(pid);
    let (cpu_before, pg_before, client_before, machine_before) = (
        cpu_seconds(&stat),
        pg.and_then(postgres_cpu_seconds),
        cpu_seconds("/proc/self/stat"),
        machine_cpu().0,
    );
    let start = Instant::now();
    let (status, job) =
        gw.post::<ReplayJob>("/v1/replays", &json!({"plugin": "e2b", "dry_run": kind == Kind::DryRun})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "POST /v1/replays ({}): {job:?}", kind.name());
    let id = job.id;
    // (seconds since start, deliveries done) at each poll.
    let mut progress: Vec<(f64, u64)> = Vec::new();
    let (mut polls, mut largest_answer) = (0, 0);
    let mut anon_peak = (memory_before.anon, 0);
    let job = loop {
        tokio::time::sleep(poll).await;
        let (status, job, size) = gw.get::<ReplayJob>(&format!("/v1/replays/{id}")).await;
        assert!(status.is_success(), "GET /v1/replays/{id}: {status} {job:?}");
        polls += 1;
        largest_answer = largest_answer.max(size);
        let done = job.report.deliveries.done;
        progress.push((start.elapsed().as_secs_f64(), done));
        let anon = Memory::of(pid).anon;
        if anon > anon_peak.0 {
            anon_peak = (anon, done);
        }
        if job.state != ReplayState::Running {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(3_600), "the {} job ran for an hour", kind.name());
    };
    let wall_seconds = start.elapsed().as_secs_f64();
    let (cpu_after, pg_after, client_after, machine_after) = (
        cpu_seconds(&stat),
        pg.and_then(postgres_cpu_seconds),
        cpu_seconds("/proc/self/stat"),
        machine_cpu().0,
    );
    let memory = Memory::of(pid);
    assert_eq!(job.state, ReplayState::Done, "the {} job did not finish cleanly: {job:?}", kind.name());
    let job_seconds = (job_time(job.finished_at.as_ref(), "finished_at")
        - job_time(Some(&job.started_at), "started_at"))
    .num_milliseconds() as f64
        / 1000.0;
    let halves = rate_halves(&progress, job.report.deliveries.total);
    Phase {
        kind,
        job,
        job_seconds,
        wall_seconds,
        halves,
        gateway_cpu: cpu_after - cpu_before,
        postgres_cpu: pg_before.zip(pg_after).map(|(a, b)| b - a),
        client_cpu: client_after - client_before,
        machine_cpu: (machine_after - machine_before) / TICKS_PER_SECOND,
        memory_before,
        memory,
        anon_peak,
        peak_reset,
        polls,
        largest_answer,
    }
}

/// Deliveries/s over the first and the second half of `total`, from the
/// polls' (time, done) samples; `None` with too few samples to tell.
fn rate_halves(progress: &[(f64, u64)], total: u64) -> Option<(f64, f64)> {
    let &(end, done) = progress.last()?;
    let &(middle, at_middle) = progress.iter().find(|&&(_, d)| d * 2 >= total)?;
    if progress.len() < 4 || at_middle == 0 || done <= at_middle || end <= middle {
        return None;
    }
    Some((at_middle as f64 / middle, (done - at_middle) as f64 / (end - middle)))
}

// ---------------------------------------------------------------------------
// A run: one database
// ---------------------------------------------------------------------------

struct Run {
    name: &'static str,
    n: usize,
    ingest: Ingest,
    swap_seconds: f64,
    phases: Vec<Phase>,
}

/// Panics with `what` unless `actual == expected`.
fn expect<T: PartialEq + std::fmt::Display>(run: &str, what: &str, actual: T, expected: T) {
    assert!(actual == expected, "{run}: INVALID: {what} is {actual}, expected {expected}");
}

async fn run(setup: &Setup, settings: &Settings, pg: Option<&PgDatabase>) -> Run {
    let name = setup.name;
    let n = settings.deliveries;
    let org = format!("bench-replay-{name}");
    let webhooks = prepare(&format!("replay-{name}-{}", std::process::id()), &org, n);
    let buggy = meterd_plugin_build::test_component("e2b-ram-mb").expect("building the plugins");
    let fixed = std::fs::read(support::component("e2b")).expect("reading the e2b component");
    let gw = Gateway::start(pg, &buggy);
    let pg_name = pg.map(|db| db.name.as_str());
    expect(name, "the e2b version before the fix", gw.e2b_version().await, BUGGY_VERSION.to_owned());

    let ingest = ingest(&gw, webhooks, settings.connections).await;
    let count = Decimal::from(n as u64);
    let check_totals = |ram: Decimal, when: &'static str| {
        let (gw, org) = (&gw, &org);
        async move {
            let cpu = gw.usage_total(org, METER).await;
            expect(
                name,
                &format!("{METER} total {when}"),
                cpu,
                count * Decimal::from(CORE_SECONDS_PER_WEBHOOK),
            );
            expect(name, &format!("{RAM_METER} total {when}"), gw.usage_total(org, RAM_METER).await, ram);
        }
    };
    // The gateway's anonymous RSS along the run, outside the phases.
    let mut milestones = vec![("after ingest", Memory::of(gw.pid()).anon)];
    check_totals(count * ram_buggy(), "after ingest").await;
    milestones.push(("after the usage queries", Memory::of(gw.pid()).anon));
    if setup.analyze
        && let Some(pg) = pg
    {
        let started = Instant::now();
        let mut db = sqlx::PgConnection::connect(&pg.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the benchmark database {}: {e}", pg.name));
        sqlx::query("ANALYZE").execute(&mut db).await.unwrap_or_else(|e| panic!("ANALYZE {}: {e}", pg.name));
        let _ = db.close().await;
        println!("  {name}: ANALYZE after ingest took {:.2} s", started.elapsed().as_secs_f64());
    }

    // The fix ships: the fixed build is renamed over the buggy one.
    let swap_start = Instant::now();
    let plugin_file = gw.dir.path().join("plugins").join("e2b.wasm");
    let tmp = plugin_file.with_extension("tmp");
    std::fs::write(&tmp, &fixed).expect("writing the fixed component");
    std::fs::rename(&tmp, &plugin_file).expect("renaming it over e2b.wasm");
    while gw.e2b_version().await == BUGGY_VERSION {
        assert!(swap_start.elapsed() < Duration::from_secs(60), "{name}: the fixed plugin never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let swap_seconds = swap_start.elapsed().as_secs_f64();
    milestones.push(("after the swap", Memory::of(gw.pid()).anon));

    let mut phases = Vec::new();
    for kind in [Kind::DryRun, Kind::Apply, Kind::ApplyAgain] {
        let p = phase(&gw, pg_name, kind, settings.poll).await;
        let what = kind.name();
        let n = n as u64;
        expect(name, &format!("{what}: deliveries.total"), p.report().deliveries.total, n);
        expect(name, &format!("{what}: deliveries.done"), p.report().deliveries.done, n);
        expect(name, &format!("{what}: deliveries.failed"), p.report().deliveries.failed, 0);
        expect(name, &format!("{what}: deliveries.purged"), p.report().deliveries.purged, 0);
        expect(name, &format!("{what}: records.conflicts"), p.report().records.conflicts, 0);
        expect(name, &format!("{what}: records.superseded"), p.report().records.superseded, 0);
        expect(name, &format!("{what}: records.withdrawn"), p.report().records.withdrawn, 0);
        expect(name, &format!("{what}: records.added"), p.report().records.added, 0);
        let listed = p.report().changes.len();
        match kind {
            Kind::DryRun | Kind::Apply => {
                expect(name, &format!("{what}: records.corrected"), p.report().records.corrected, n);
                expect(name, &format!("{what}: records.unchanged"), p.report().records.unchanged, 2 * n);
                expect(name, &format!("{what}: change lines listed"), listed, (n as usize).min(LISTED));
            }
            Kind::ApplyAgain => {
                expect(name, &format!("{what}: records.corrected"), p.report().records.corrected, 0);
                expect(name, &format!("{what}: records.unchanged"), p.report().records.unchanged, 3 * n);
                expect(name, &format!("{what}: change lines listed"), listed, 0);
            }
        }
        let ram = if kind == Kind::DryRun { count * ram_buggy() } else { count * ram_right() };
        check_totals(ram, if kind == Kind::DryRun { "after the dry run" } else { "after the apply" }).await;
        milestones.push(("after the usage queries", Memory::of(gw.pid()).anon));
        print_phase(name, &p);
        phases.push(p);
    }
    let milestones: Vec<String> = milestones.iter().map(|(what, anon)| format!("{anon:.0} {what}")).collect();
    println!("  {name} anonymous RSS, MiB: {}", milestones.join(", "));
    gw.stop();
    Run { name, n, ingest, swap_seconds, phases }
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

fn print_phase(name: &str, p: &Phase) {
    let halves = p.halves.map_or("–".to_owned(), |(a, b)| format!("{a:.0} → {b:.0}/s"));
    println!(
        "  {name} {}: {} deliveries in {:.2} s (job), {:.2} s observed ({} polls, largest answer {} KiB); first half → second half {halves}; CPU s: machine {:.2}, client {:.2}, other {:.2}; RSS before {}, after {}, anon peak seen {:.0} MiB at {} done; verified{}",
        p.kind.name(),
        p.report().deliveries.done,
        p.job_seconds,
        p.wall_seconds,
        p.polls,
        p.largest_answer / 1024,
        p.machine_cpu,
        p.client_cpu,
        p.other_cpu(),
        p.memory_before.split(),
        p.memory.split(),
        p.anon_peak.0,
        p.anon_peak.1,
        if p.peak_reset { "" } else { " (VmHWM could not be reset: it is the process's peak so far)" },
    );
}

fn pg_cpu(value: Option<f64>) -> String {
    value.map_or("–".to_owned(), |s| format!("{s:.2}"))
}

fn print_table(run: &Run) {
    println!();
    println!(
        "{}: N = {} deliveries ({} records); ingest {:.1} s ({:.0} webhooks/s, gateway {:.2} CPU s, VmRSS/VmHWM {:.0}/{:.0} MiB ({}), not a result); fixed plugin serving {:.2} s after the rename",
        run.name,
        run.n,
        3 * run.n,
        run.ingest.seconds,
        run.ingest.acknowledged as f64 / run.ingest.seconds,
        run.ingest.gateway_cpu,
        run.ingest.memory.rss,
        run.ingest.memory.hwm,
        run.ingest.memory.split(),
        run.swap_seconds,
    );
    println!(
        "| phase | deliveries | seconds | deliveries/s | 1st → 2nd half /s | corrected | gateway CPU s | PG CPU s | other CPU s | VmRSS / VmHWM MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &run.phases {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2} | {} | {:.2} | {:.0} / {:.0} |",
            p.kind.name(),
            p.report().deliveries.done,
            p.job_seconds,
            p.deliveries_per_second(),
            p.halves.map_or("–".to_owned(), |(a, b)| format!("{a:.0} → {b:.0}")),
            p.report().records.corrected,
            p.gateway_cpu,
            pg_cpu(p.postgres_cpu),
            p.other_cpu(),
            p.memory.rss,
            p.memory.hwm,
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    let filters = support::filters();
    println!("replay benchmark: meterd {} on {}", env!("CARGO_BIN_EXE_meterd"), support::machine_line());
    println!(
        "N = {} deliveries, ingested over {} connections; jobs polled every {:?}; PostgreSQL at {}",
        settings.deliveries,
        settings.connections,
        settings.poll,
        meterd::store::redact_url(&settings.postgres)
    );
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the client runtime");
    let mut runs = Vec::new();
    for (index, setup) in SETUPS.iter().enumerate() {
        if !support::selected(&filters, setup.name) {
            continue;
        }
        println!("{}:", setup.name);
        let run = client.block_on(async {
            if setup.postgres {
                let db_name = format!("meterd_bench_replay_{}_{index}", std::process::id());
                let db = support::create_database(&settings.postgres, db_name).await;
                let run = run(setup, &settings, Some(&db)).await;
                drop(db);
                run
            } else {
                run(setup, &settings, None).await
            }
        });
        runs.push(run);
    }
    for run in &runs {
        print_table(run);
    }
}
