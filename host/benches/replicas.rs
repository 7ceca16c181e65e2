//! Webhook ingest throughput of the real `meterd` binary on its two
//! database engines, side by side:
//!
//! * `sqlite`: one gateway with its own SQLite file (the default setup);
//! * `pg1`: one gateway on a PostgreSQL database;
//! * `pg3`: three gateways (replicas) on the same PostgreSQL database, each
//!   with its own temp dir, config and port.
//!
//! Every run starts fresh gateways (ephemeral loopback ports, the freshly
//! built e2b component) on a fresh database: a new SQLite file in a temp
//! dir, or a PostgreSQL database made with `CREATE DATABASE` for the run
//! and dropped `WITH (FORCE)` after it. The three replicas are started at
//! once, so their migrations race. The load is a closed loop of signed E2B
//! `killed` webhooks with unique ids (generated before the clock starts)
//! over HTTP/1.1 keep-alive connections: each connection sends its next
//! webhook as soon as the previous one is answered. With three replicas the
//! connections are spread round-robin over them. Reported: acknowledged
//! webhooks/s in the measured window, latency from send to answer, and the
//! CPU over the measured window of the gateways (summed over replicas), of
//! the PostgreSQL server when it runs on this machine (the backends of the
//! run's database and the server's own processes), of this load generator
//! and of everything else (other work on the machine: noise); for
//! PostgreSQL also the transactions committed in the run's database, so
//! webhooks per transaction (≈ the group-commit batch).
//!
//! After each run the benchmark checks that exactly what was acknowledged
//! was committed: the deliveries and `sandbox_cpu_core_seconds` records in
//! the database, and every replica's usage-API total, which must be 3
//! core-seconds × acknowledged. A run that loses or invents data (or has a
//! failed request) is reported INVALID and the benchmark exits non-zero.
//!
//! The load generator is this process (one tokio current-thread runtime) on
//! the same machine as the gateways and the PostgreSQL server.
//!
//! Run: `cargo bench -p meterd --bench replicas` (filters after `--`:
//! `sqlite`, `pg1`, `pg3`). The PostgreSQL runs need a server where the user
//! may create databases; `bash tests/postgres/ensure.sh` starts the local
//! one. Knobs (environment): `METERD_BENCH_SECONDS` (measured seconds per
//! run, default 10), `METERD_BENCH_WARMUP_SECONDS` (default 1),
//! `METERD_BENCH_CONNECTIONS` (connections in all, over all replicas,
//! default 64), `METERD_BENCH_MAX_RATE` (webhooks pre-generated per second
//! of run, default 20000), `METERD_TEST_POSTGRES` (the server's admin URL,
//! default `postgres://postgres@127.0.0.1:5432/postgres`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sqlx::Connection as _;

use support::{
    CORE_SECONDS_PER_WEBHOOK, METER, PgDatabase, Prepared, TICKS_PER_SECOND, connect, cpu_seconds, format_ns,
    host_header, ingest_request, machine_cpu, nanos, percentile, postgres_cpu_seconds, prepare, send, signal,
    spawn_meterd, usage_total, wait_for_listening, write_config,
};

const POSTGRES_ENV: &str = "METERD_TEST_POSTGRES";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const SQLITE_FILE: &str = "meterd.db";

/// What to run, from the environment (see the module docs).
struct Settings {
    seconds: Duration,
    warmup: Duration,
    connections: usize,
    max_rate: f64,
    /// The PostgreSQL server's admin URL, where run databases are made.
    postgres: String,
}

impl Settings {
    fn from_env() -> Self {
        let connections = support::env_number("METERD_BENCH_CONNECTIONS", 64usize);
        assert!(connections > 0, "METERD_BENCH_CONNECTIONS must be at least 1");
        Self {
            seconds: support::env_seconds("METERD_BENCH_SECONDS", 10.0),
            warmup: support::env_seconds("METERD_BENCH_WARMUP_SECONDS", 1.0),
            connections,
            max_rate: support::env_number("METERD_BENCH_MAX_RATE", 20_000.0),
            postgres: std::env::var(POSTGRES_ENV).unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned()),
        }
    }
}

/// One of the compared setups.
struct Setup {
    name: &'static str,
    postgres: bool,
    replicas: usize,
}

const SETUPS: [Setup; 3] = [
    Setup { name: "sqlite", postgres: false, replicas: 1 },
    Setup { name: "pg1", postgres: true, replicas: 1 },
    Setup { name: "pg3", postgres: true, replicas: 3 },
];

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

/// Where one run's gateways keep their data.
enum Database {
    /// A SQLite file in the (only) gateway's own temp dir.
    Sqlite,
    /// A database made for the run on the PostgreSQL server, shared by all
    /// replicas.
    Postgres(PgDatabase),
}

impl Database {
    /// The `database = …` of a gateway whose temp dir is `dir`.
    fn url(&self, dir: &Path) -> String {
        match self {
            Self::Sqlite => format!("sqlite://{}", dir.join(SQLITE_FILE).display()),
            Self::Postgres(db) => db.url.clone(),
        }
    }

    /// PostgreSQL: the database's name.
    fn postgres_name(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(db) => Some(db.name.clone()),
        }
    }

    /// Committed deliveries, and `METER` records of `org`, read from the
    /// database itself.
    async fn counts(&self, gateways: &Gateways, org: &str) -> (i64, i64) {
        const DELIVERIES: &str = "SELECT COUNT(*) FROM deliveries";
        match self {
            Self::Sqlite => {
                let url = format!("sqlite://{}?mode=ro", gateways.dirs[0].path().join(SQLITE_FILE).display());
                let mut db = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("opening the benchmark database read-only");
                let deliveries =
                    sqlx::query_scalar(DELIVERIES).fetch_one(&mut db).await.expect("counting deliveries");
                let records =
                    sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE org_id = ? AND metric = ?")
                        .bind(org)
                        .bind(METER)
                        .fetch_one(&mut db)
                        .await
                        .expect("counting usage records");
                (deliveries, records)
            }
            Self::Postgres(pg) => {
                let mut db = sqlx::PgConnection::connect(&pg.url)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to the benchmark database {}: {e}", pg.name));
                let deliveries =
                    sqlx::query_scalar(DELIVERIES).fetch_one(&mut db).await.expect("counting deliveries");
                let records = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM usage_records WHERE org_id = $1 AND metric = $2",
                )
                .bind(org)
                .bind(METER)
                .fetch_one(&mut db)
                .await
                .expect("counting usage records");
                (deliveries, records)
            }
        }
    }
}

/// Transactions committed and rolled back in `db` so far, from
/// `pg_stat_database` (complete once the gateways have stopped: a backend
/// reports its counts at the latest when it exits).
async fn transactions(db: &PgDatabase) -> Result<Transactions, sqlx::Error> {
    {
        let mut admin = sqlx::PgConnection::connect(&db.admin_url).await?;
        let (committed, rolled_back) =
            sqlx::query_as("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1")
                .bind(&db.name)
                .fetch_one(&mut admin)
                .await?;
        let _ = admin.close().await;
        Ok(Transactions { committed, rolled_back })
    }
}

/// A run's PostgreSQL transactions, all of them: start-up (migrations, the
/// standings snapshot) and the bench's own reads included.
struct Transactions {
    committed: i64,
    rolled_back: i64,
}

// ---------------------------------------------------------------------------
// The gateways under test
// ---------------------------------------------------------------------------

/// The `meterd serve` processes of one run, each with its own temp dir
/// (config, plugins dir and, for SQLite, the database file).
struct Gateways {
    children: Vec<Child>,
    dirs: Vec<tempfile::TempDir>,
    addrs: Vec<SocketAddr>,
}

impl Gateways {
    /// Starts `replicas` gateways at once (so they migrate concurrently) and
    /// then waits for each one's "listening on" line. `cache_dir` is shared
    /// so the component is compiled once per benchmark.
    fn start(database: &Database, replicas: usize, component: &Path, cache_dir: &Path) -> Self {
        let mut gateways = Self { children: Vec::new(), dirs: Vec::new(), addrs: Vec::new() };
        for _ in 0..replicas {
            let dir = tempfile::tempdir().expect("creating a temp dir");
            let config = write_config(dir.path(), component, cache_dir, &database.url(dir.path()));
            gateways.children.push(spawn_meterd(&config, dir.path()));
            gateways.dirs.push(dir);
        }
        for child in &mut gateways.children {
            let addr = wait_for_listening(child);
            gateways.addrs.push(addr);
        }
        gateways
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// SIGTERM to all, then wait: a graceful stop drains the commit queues.
    fn stop(mut self) {
        for pid in self.pids() {
            signal(pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, child) in self.children.iter_mut().enumerate() {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    if !status.success() {
                        eprintln!("replica {i} (pid {}) exited with {status} after SIGTERM", child.id());
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    eprintln!(
                        "replica {i} (pid {}) did not stop within 30 s of SIGTERM; killing it",
                        child.id()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// The time frame of one run.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn measures(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// What the connections saw.
#[derive(Default)]
struct Tally {
    acknowledged: u64,
    errors: u64,
    first_error: Option<String>,
    /// Send → answer of the webhooks acknowledged in the measured window,
    /// ns (sorted once the run is over).
    latencies: Vec<u64>,
    last_done: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acknowledged += other.acknowledged;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latencies.extend(other.latencies);
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// Opens `connections` keep-alive connections round-robin over `addrs`,
/// then starts the clock: each connection sends the next unsent webhook as
/// soon as its previous one is answered, until the window ends. CPU is
/// sampled at the window's start and end by a thread of its own (with
/// `postgres`, the name of the run's PostgreSQL database).
async fn closed_loop(
    addrs: &[SocketAddr],
    pids: Vec<u32>,
    postgres: Option<String>,
    webhooks: Arc<Vec<Prepared>>,
    connections: usize,
    warmup: Duration,
    seconds: Duration,
) -> (Tally, Window, CpuUse) {
    let mut senders = Vec::with_capacity(connections);
    for i in 0..connections {
        let addr = addrs[i % addrs.len()];
        senders.push((addr, connect(addr).await));
    }
    let start = Instant::now();
    let window = Window { measure_from: start + warmup, end: start + warmup + seconds };
    let sampler = std::thread::spawn(move || {
        sleep_until(window.measure_from);
        let before = CpuSample::take(&pids, postgres.as_deref());
        sleep_until(window.end);
        CpuUse::between(&before, &CpuSample::take(&pids, postgres.as_deref()))
    });
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = senders
        .into_iter()
        .map(|(addr, mut sender)| {
            let (webhooks, next) = (webhooks.clone(), next.clone());
            tokio::spawn(async move {
                let host = host_header(addr);
                let mut tally = Tally::default();
                while Instant::now() < window.end {
                    let Some(webhook) = webhooks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if sender.is_closed() {
                        sender = connect(addr).await;
                    }
                    let sent = Instant::now();
                    let result = send(&mut sender, ingest_request(&host, webhook)).await;
                    let done = Instant::now();
                    tally.last_done = Some(done);
                    match result {
                        Ok(()) => {
                            tally.acknowledged += 1;
                            if window.measures(done) {
                                tally.latencies.push(nanos(done - sent));
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert(format!("{addr}: {e}"));
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        total.merge(worker.await.expect("a load worker panicked"));
    }
    let cpu = sampler.join().expect("the CPU sampler panicked");
    (total, window, cpu)
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

// ---------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------

/// CPU seconds used so far.
struct CpuSample {
    at: Instant,
    gateways: Vec<f64>,
    postgres: Option<f64>,
    client: f64,
    machine_busy: f64,
}

impl CpuSample {
    fn take(gateway_pids: &[u32], postgres: Option<&str>) -> Self {
        Self {
            at: Instant::now(),
            gateways: gateway_pids.iter().map(|pid| cpu_seconds(&format!("/proc/{pid}/stat"))).collect(),
            postgres: postgres.and_then(postgres_cpu_seconds),
            client: cpu_seconds("/proc/self/stat"),
            machine_busy: machine_cpu().0 / TICKS_PER_SECOND,
        }
    }
}

/// CPU use between two samples, in cores (CPU seconds per second).
struct CpuUse {
    gateways: Vec<f64>,
    postgres: Option<f64>,
    client: f64,
    machine_busy: f64,
}

impl CpuUse {
    fn between(before: &CpuSample, after: &CpuSample) -> Self {
        let seconds = (after.at - before.at).as_secs_f64().max(1e-9);
        let cores = |a: f64, b: f64| (b - a) / seconds;
        Self {
            gateways: before.gateways.iter().zip(&after.gateways).map(|(&a, &b)| cores(a, b)).collect(),
            postgres: before.postgres.zip(after.postgres).map(|(a, b)| cores(a, b)),
            client: cores(before.client, after.client),
            machine_busy: cores(before.machine_busy, after.machine_busy),
        }
    }

    fn gateways_total(&self) -> f64 {
        self.gateways.iter().sum()
    }

    /// Everything else the machine ran meanwhile (other sessions' builds
    /// and tests, the kernel's own threads): noise in the measurement.
    fn others(&self) -> f64 {
        (self.machine_busy - self.gateways_total() - self.postgres.unwrap_or(0.0) - self.client).max(0.0)
    }
}

// ---------------------------------------------------------------------------
// Runs, verification and reporting
// ---------------------------------------------------------------------------

/// What the gateways hold after a run.
struct Committed {
    deliveries: i64,
    cpu_records: i64,
    /// The usage-API total as each replica answers it.
    totals: Vec<Decimal>,
}

impl Committed {
    /// `None` when the database holds exactly `acknowledged` webhooks and
    /// every replica reports their total, else what is wrong.
    fn problem(&self, acknowledged: u64) -> Option<String> {
        let expected_total = Decimal::from(acknowledged * CORE_SECONDS_PER_WEBHOOK);
        let count = i64::try_from(acknowledged).unwrap_or(i64::MAX);
        let wrong = self.deliveries != count
            || self.cpu_records != count
            || self.totals.iter().any(|total| *total != expected_total);
        wrong.then(|| {
            let totals: Vec<String> = self.totals.iter().map(Decimal::to_string).collect();
            format!(
                "acknowledged {acknowledged}, but the database has {} deliveries and {} {METER} records, and the replicas' API totals are [{}] (expected {expected_total})",
                self.deliveries,
                self.cpu_records,
                totals.join(", ")
            )
        })
    }
}

/// One run's outcome.
struct RunReport {
    name: &'static str,
    replicas: usize,
    tally: Tally,
    /// Acknowledged webhooks/s over the measured window.
    throughput: f64,
    cpu: CpuUse,
    transactions: Option<Transactions>,
    problem: Option<String>,
    exhausted: bool,
}

/// The shared parts of every run.
struct Bench {
    settings: Settings,
    component: PathBuf,
    cache_dir: tempfile::TempDir,
    client: tokio::runtime::Runtime,
}

impl Bench {
    /// Makes a fresh database, starts the setup's gateways on it, drives
    /// the closed loop, verifies, stops the gateways, drops the database.
    fn run(&self, index: usize, setup: &Setup) -> RunReport {
        let s = &self.settings;
        let planned = (s.max_rate * (s.warmup + s.seconds).as_secs_f64()).ceil() as usize;
        let org = format!("bench-{}", setup.name);
        let webhooks = prepare(setup.name, &org, planned);
        let database = if setup.postgres {
            let name = format!("meterd_bench_{}_{index}", std::process::id());
            Database::Postgres(self.client.block_on(support::create_database(&s.postgres, name)))
        } else {
            Database::Sqlite
        };
        let gateways = Gateways::start(&database, setup.replicas, &self.component, self.cache_dir.path());
        let (mut tally, window, cpu) = self.client.block_on(closed_loop(
            &gateways.addrs,
            gateways.pids(),
            database.postgres_name(),
            webhooks.clone(),
            s.connections,
            s.warmup,
            s.seconds,
        ));
        tally.latencies.sort_unstable();
        let committed = self.client.block_on(async {
            let mut totals = Vec::with_capacity(gateways.addrs.len());
            for &addr in &gateways.addrs {
                totals.push(usage_total(addr, &org).await);
            }
            let (deliveries, cpu_records) = database.counts(&gateways, &org).await;
            Committed { deliveries, cpu_records, totals }
        });
        gateways.stop();
        let transactions = match &database {
            Database::Sqlite => None,
            Database::Postgres(pg) => self
                .client
                .block_on(transactions(pg))
                .inspect_err(|e| eprintln!("could not read pg_stat_database: {e}"))
                .ok(),
        };
        drop(database);
        let exhausted = tally.acknowledged + tally.errors >= webhooks.len() as u64;
        // When the pre-generated webhooks ran out early, the window ends at
        // the last answer.
        let end = match tally.last_done {
            Some(last) if exhausted => last.min(window.end),
            _ => window.end,
        };
        let span = end.saturating_duration_since(window.measure_from).as_secs_f64().max(1e-9);
        let problem = committed.problem(tally.acknowledged).or_else(|| {
            tally.first_error.as_ref().map(|e| format!("{} failed requests, first: {e}", tally.errors))
        });
        RunReport {
            name: setup.name,
            replicas: setup.replicas,
            throughput: tally.latencies.len() as f64 / span,
            tally,
            cpu,
            transactions,
            problem,
            exhausted,
        }
    }
}

fn latency(report: &RunReport, q: f64) -> String {
    if report.tally.latencies.is_empty() {
        "–".to_owned()
    } else {
        format_ns(percentile(&report.tally.latencies, q) as f64)
    }
}

fn postgres_cores(cpu: &CpuUse) -> String {
    cpu.postgres.map_or("–".to_owned(), |cores| format!("{cores:.2}"))
}

/// Acknowledged webhooks per committed PostgreSQL transaction: about the
/// group-commit batch size.
fn per_transaction(report: &RunReport) -> String {
    report.transactions.as_ref().map_or("–".to_owned(), |t| {
        format!("{:.1}", report.tally.acknowledged as f64 / t.committed.max(1) as f64)
    })
}

fn print_run(report: &RunReport) {
    println!(
        "{} ({} gateway{}): {:.0} webhooks/s measured ({} acknowledged in all, {} errors){}",
        report.name,
        report.replicas,
        if report.replicas == 1 { "" } else { "s" },
        report.throughput,
        report.tally.acknowledged,
        report.tally.errors,
        if report.exhausted {
            " — pre-generated webhooks ran out: raise METERD_BENCH_MAX_RATE"
        } else {
            ""
        }
    );
    println!(
        "  latency (send → answer): p50 {} · p90 {} · p99 {} · max {}",
        latency(report, 50.0),
        latency(report, 90.0),
        latency(report, 99.0),
        latency(report, 100.0)
    );
    let cpu = &report.cpu;
    let each: Vec<String> = cpu.gateways.iter().map(|c| format!("{c:.2}")).collect();
    println!(
        "  CPU, cores: meterd {:.2}{}, PostgreSQL {}, load generator {:.2}, everything else {:.2}; machine {:.2} of {} busy",
        cpu.gateways_total(),
        if each.len() > 1 { format!(" ({})", each.join(" + ")) } else { String::new() },
        postgres_cores(cpu),
        cpu.client,
        cpu.others(),
        cpu.machine_busy,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if let Some(t) = &report.transactions {
        println!(
            "  PostgreSQL: {} transactions committed in the run's database ({} webhooks each), {} rolled back",
            t.committed,
            per_transaction(report),
            t.rolled_back
        );
    }
    match &report.problem {
        None => println!(
            "  verified: {} deliveries committed, total {} core-seconds = 3 × acknowledged{}",
            report.tally.acknowledged,
            report.tally.acknowledged * CORE_SECONDS_PER_WEBHOOK,
            if report.replicas > 1 { " on every replica" } else { "" }
        ),
        Some(problem) => println!("  INVALID: {problem}"),
    }
}

fn print_summary(reports: &[RunReport]) {
    println!();
    println!(
        "| setup | webhooks/s | p50 | p99 | max | meterd CPU | PostgreSQL CPU | client CPU | other CPU | webhooks per PG commit | verified |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in reports {
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.throughput,
            latency(r, 50.0),
            latency(r, 99.0),
            latency(r, 100.0),
            r.cpu.gateways_total(),
            postgres_cores(&r.cpu),
            r.cpu.client,
            r.cpu.others(),
            per_transaction(r),
            if r.problem.is_none() { "yes" } else { "NO" }
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    let filters = support::filters();
    println!(
        "replicas benchmark: meterd {} on {}; load generator: this process (hyper HTTP/1.1, 1 tokio thread) on the same machine",
        env!("CARGO_BIN_EXE_meterd"),
        support::machine_line()
    );
    println!("{}", support::speed_line());
    println!(
        "{:?} warm-up + {:?} measured per run, closed loop over {} connections in all; fresh gateways and database per run; PostgreSQL at {}",
        settings.warmup,
        settings.seconds,
        settings.connections,
        meterd::store::redact_url(&settings.postgres)
    );
    let bench = Bench {
        component: support::component("e2b"),
        cache_dir: tempfile::tempdir().expect("creating the cache dir"),
        client: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("starting the client runtime"),
        settings,
    };
    let mut reports = Vec::new();
    for (index, setup) in SETUPS.iter().enumerate() {
        if support::selected(&filters, setup.name) {
            let report = bench.run(index, setup);
            print_run(&report);
            reports.push(report);
        }
    }
    print_summary(&reports);
    let invalid = reports.iter().filter(|r| r.problem.is_some()).count();
    if invalid > 0 {
        eprintln!("{invalid} run(s) INVALID: the committed data does not match what was acknowledged");
        std::process::exit(1);
    }
}
