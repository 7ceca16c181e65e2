//! End-to-end ingest throughput and latency of the real `meterd` binary:
//! signed E2B webhooks over HTTP/1.1 keep-alive connections, each answered
//! only after its durable SQLite commit.
//!
//! For every run the benchmark starts a fresh gateway (ephemeral loopback
//! port, new SQLite file in a temp dir, the freshly built e2b component),
//! pre-generates uniquely identified, signed webhooks, drives load, and then
//! checks from the API and from the database file that exactly what was
//! acknowledged was committed: a run that loses or invents data is reported
//! INVALID and the benchmark exits non-zero.
//!
//! * Closed loop: N connections, each sending its next webhook as soon as the
//!   previous one is answered → maximum webhooks/s.
//! * Open loop: webhooks scheduled at a fixed rate by a pacer thread and sent
//!   on the first idle connection; latency is measured from the *scheduled*
//!   send time, so a stalled server cannot hide its stall by slowing the
//!   client down (no coordinated omission).
//!
//! The load generator is this process (one tokio current-thread runtime plus
//! the pacer thread) on the same machine as the gateway: its CPU is reported
//! next to the gateway's.
//!
//! Run: `cargo bench -p meterd --bench ingest` (filters after `--`:
//! `closed`, `open`). Knobs (environment):
//! `METERD_BENCH_SECONDS` (measured seconds per run, default 10),
//! `METERD_BENCH_WARMUP_SECONDS` (default 1),
//! `METERD_BENCH_CONNECTIONS` (closed-loop connection counts, default
//! `16,64,128,256`), `METERD_BENCH_RATE` (open-loop webhooks/s, default 5000),
//! `METERD_BENCH_OPEN_CONNECTIONS` (default 256: enough that a stall of
//! the gateway rarely leaves a scheduled webhook without a connection),
//! `METERD_BENCH_MAX_RATE` (closed-loop webhooks pre-generated per second of
//! run, default 30000), `METERD_BENCH_PERF` (`0` disables the `perf stat`
//! counters: fsyncs, context switches).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use rust_decimal::Decimal;
use tokio::sync::{Mutex, mpsc};

use support::{
    CORE_SECONDS_PER_WEBHOOK, METER, Prepared, Sender, TICKS_PER_SECOND, connect, cpu_seconds, format_ns,
    host_header, ingest_request, machine_cpu, nanos, percentile, prepare, send, signal, spawn_meterd,
    usage_total, wait_for_listening, write_config,
};

const THROUGHPUT_TARGET: f64 = 10_000.0;
const P99_TARGET: Duration = Duration::from_millis(5);
/// Issue 18's targets: closed-loop webhooks/s, and the gateway's CPU per
/// webhook in the closed run that reached the most.
const ISSUE_18_THROUGHPUT_TARGET: f64 = 20_000.0;
const CPU_PER_WEBHOOK_TARGET: Duration = Duration::from_micros(60);

/// What to run, from the environment (see the module docs).
struct Settings {
    seconds: Duration,
    warmup: Duration,
    connections: Vec<usize>,
    rate: f64,
    open_connections: usize,
    max_rate: f64,
    perf: bool,
}

impl Settings {
    fn from_env() -> Self {
        let connections = std::env::var("METERD_BENCH_CONNECTIONS")
            .unwrap_or_else(|_| "16,64,128,256".to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("METERD_BENCH_CONNECTIONS is a comma-separated list of counts"))
            .collect();
        Self {
            seconds: support::env_seconds("METERD_BENCH_SECONDS", 10.0),
            warmup: support::env_seconds("METERD_BENCH_WARMUP_SECONDS", 1.0),
            connections,
            rate: support::env_number("METERD_BENCH_RATE", 5_000.0),
            open_connections: support::env_number("METERD_BENCH_OPEN_CONNECTIONS", 256usize),
            max_rate: support::env_number("METERD_BENCH_MAX_RATE", 30_000.0),
            perf: support::env_number("METERD_BENCH_PERF", 1u8) != 0,
        }
    }

    fn run_length(&self) -> Duration {
        self.warmup + self.seconds
    }
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// A running `meterd serve` with its own directory and database.
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Gateway {
    /// Starts the release binary with a fresh database and waits for its
    /// "listening on" line. `cache_dir` is shared between runs so the
    /// component is compiled once.
    fn start(component: &Path, cache_dir: &Path, also: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let database = format!("sqlite://{}", dir.path().join("meterd.db").display());
        let config = write_config(dir.path(), component, cache_dir, &database);
        // The faults runs load the test-only chaos plugin next to e2b.
        if let Some(chaos) = also {
            std::fs::copy(chaos, dir.path().join("plugins").join("chaos.wasm")).expect("copying chaos");
        }
        let mut child = spawn_meterd(&config, dir.path());
        let addr = wait_for_listening(&mut child);
        Self { child, dir, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("meterd.db")
    }

    /// SIGTERM and wait: a graceful stop drains the commit queue.
    fn stop(mut self) {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("meterd did not stop within 30 s of SIGTERM; killing it");
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
// The HTTP client
// ---------------------------------------------------------------------------

/// What one connection's worker saw.
#[derive(Default)]
struct Tally {
    acknowledged: u64,
    errors: u64,
    first_error: Option<String>,
    /// Latencies of requests counted in the measured window, ns (sorted
    /// once the run is over).
    latencies: Vec<u64>,
    /// Open loop: from the scheduled time until a connection sent the
    /// request, ns: the pacer's oversleep plus any wait for an idle
    /// connection (all busy means the gateway is slow).
    lags: Vec<u64>,
    measured: u64,
    last_done: Option<Instant>,
}

impl Tally {
    fn record_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(mut self, other: Tally) -> Tally {
        self.acknowledged += other.acknowledged;
        self.errors += other.errors;
        self.first_error = self.first_error.or(other.first_error);
        self.latencies.extend(other.latencies);
        self.lags.extend(other.lags);
        self.measured += other.measured;
        self.last_done = self.last_done.max(other.last_done);
        self
    }
}

/// Sends one webhook on `sender` (reconnecting first if the connection died)
/// and returns when it was answered.
async fn send_webhook(
    sender: &mut Sender,
    addr: SocketAddr,
    host: &HeaderValue,
    webhook: &Prepared,
    tally: &mut Tally,
) -> Instant {
    if sender.is_closed() {
        *sender = connect(addr).await;
    }
    let result = send(sender, ingest_request(host, webhook)).await;
    let done = Instant::now();
    match result {
        Ok(()) => tally.acknowledged += 1,
        Err(e) => tally.record_error(e),
    }
    tally.last_done = Some(done);
    done
}

// ---------------------------------------------------------------------------
// Load patterns
// ---------------------------------------------------------------------------

/// The time frame of one run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn starting_now(warmup: Duration, seconds: Duration) -> Self {
        let start = Instant::now();
        Self { start, measure_from: start + warmup, end: start + warmup + seconds }
    }

    fn measures(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// Closed loop: `connections` workers, each sending the next unsent webhook
/// as soon as its previous one is answered, until the window ends.
async fn closed_loop(
    addr: SocketAddr,
    webhooks: Arc<Vec<Prepared>>,
    senders: Vec<Sender>,
    window: Window,
) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let host = host_header(addr);
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (webhooks, next, host) = (webhooks.clone(), next.clone(), host.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < window.end {
                    let Some(webhook) = webhooks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let sent = Instant::now();
                    let done = send_webhook(&mut sender, addr, &host, webhook, &mut tally).await;
                    // Throughput counts answers within the window.
                    if window.measures(done) {
                        tally.measured += 1;
                        tally.latencies.push(nanos(done - sent));
                    }
                }
                tally
            })
        })
        .collect();
    join_all(workers).await
}

/// Open loop: a pacer thread releases webhook `i` at `start + i / rate`;
/// the first idle connection sends it. Latency counts from the release
/// time, so time spent waiting for a free connection is latency too.
async fn open_loop(
    addr: SocketAddr,
    webhooks: Arc<Vec<Prepared>>,
    rate: f64,
    senders: Vec<Sender>,
    window: Window,
) -> Tally {
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let host = host_header(addr);
    let count = webhooks.len();
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".to_owned())
        .spawn(move || pace(tx, count, rate, window.start))
        .expect("starting the pacer thread");
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (webhooks, rx, host) = (webhooks.clone(), rx.clone(), host.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((i, scheduled)) = next else { break };
                    let sent = Instant::now();
                    let done = send_webhook(&mut sender, addr, &host, &webhooks[i], &mut tally).await;
                    if window.measures(scheduled) {
                        tally.measured += 1;
                        tally.latencies.push(nanos(done - scheduled));
                        tally.lags.push(nanos(sent - scheduled));
                    }
                }
                tally
            })
        })
        .collect();
    let tally = join_all(workers).await;
    pacer.join().expect("the pacer thread panicked");
    tally
}

/// Releases `count` webhooks at `rate` per second from `start`, sleeping
/// between releases (nanosleep: tens of µs late at worst, shown as lag).
fn pace(tx: mpsc::UnboundedSender<(usize, Instant)>, count: usize, rate: f64, start: Instant) {
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        if tx.send((i, scheduled)).is_err() {
            return;
        }
    }
}

async fn join_all(workers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for worker in workers {
        total = total.merge(worker.await.expect("a load worker panicked"));
    }
    total
}

// ---------------------------------------------------------------------------
// Verification: exactly what was acknowledged is committed
// ---------------------------------------------------------------------------

/// What the gateway holds after a run.
struct Committed {
    deliveries: i64,
    cpu_records: i64,
    api_total: Decimal,
}

impl Committed {
    /// Reads the usage API and the database file. Every webhook of a run is
    /// for one organization, and each run has a fresh database.
    async fn read(gateway: &Gateway, org: &str) -> Self {
        let api_total = usage_total(gateway.addr, org).await;
        let url = format!("sqlite://{}?mode=ro", gateway.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("opening the benchmark database read-only");
        let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&pool)
            .await
            .expect("counting deliveries");
        let cpu_records: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE org_id = ? AND metric = ?")
                .bind(org)
                .bind(METER)
                .fetch_one(&pool)
                .await
                .expect("counting usage records");
        pool.close().await;
        Self { deliveries, cpu_records, api_total }
    }

    /// `None` when the store holds exactly `acknowledged` webhooks, else
    /// what is wrong.
    fn problem(&self, acknowledged: u64) -> Option<String> {
        let expected_total = Decimal::from(acknowledged * CORE_SECONDS_PER_WEBHOOK);
        let count = i64::try_from(acknowledged).unwrap_or(i64::MAX);
        (self.deliveries != count || self.cpu_records != count || self.api_total != expected_total)
            .then(|| {
                format!(
                    "acknowledged {acknowledged}, but the database has {} deliveries and {} {METER} records, and the API total is {} (expected {expected_total})",
                    self.deliveries, self.cpu_records, self.api_total
                )
            })
    }
}

// ---------------------------------------------------------------------------
// Where the time goes: CPU, fsyncs, context switches, disk
// ---------------------------------------------------------------------------

/// One thread's scheduler totals, seconds.
#[derive(Clone, Default)]
struct ThreadTimes {
    name: String,
    /// On a CPU.
    running: f64,
    /// Runnable but waiting for a CPU: time a busy machine adds to latency.
    waiting: f64,
}

/// Scheduler totals of each live thread of `pid`, by thread id, from
/// /proc/PID/task/TID/schedstat (nanoseconds running, nanoseconds waiting
/// on a run queue, time slices).
fn thread_times(pid: u32) -> BTreeMap<String, ThreadTimes> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|task| {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let ns: Vec<f64> = schedstat.split_whitespace().map(|n| n.parse().unwrap_or(0.0)).collect();
            let field = |i: usize| ns.get(i).copied().unwrap_or(0.0) / 1e9;
            let times = ThreadTimes { name: name.trim().to_owned(), running: field(0), waiting: field(1) };
            (task.file_name().to_string_lossy().into_owned(), times)
        })
        .collect()
}

/// Block-device totals over all disks.
#[derive(Clone, Copy, Default)]
struct Disk {
    flushes: u64,
    flush_ms: u64,
    sectors_written: u64,
}

impl Disk {
    fn read() -> Self {
        let Ok(entries) = std::fs::read_dir("/sys/block") else {
            return Self::default();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .map(|stat| {
                let f: Vec<u64> = stat.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
                let field = |n: usize| f.get(n - 1).copied().unwrap_or(0);
                // Documented in the kernel's Documentation/block/stat.rst.
                Self { sectors_written: field(7), flushes: field(16), flush_ms: field(17) }
            })
            .fold(Self::default(), |a, b| Self {
                flushes: a.flushes + b.flushes,
                flush_ms: a.flush_ms + b.flush_ms,
                sectors_written: a.sectors_written + b.sectors_written,
            })
    }
}

/// Counters sampled at the start of a run.
struct Snapshot {
    at: Instant,
    server_cpu: f64,
    client_cpu: f64,
    threads: BTreeMap<String, ThreadTimes>,
    machine: (f64, f64, f64),
    disk: Disk,
}

impl Snapshot {
    fn take(server_pid: u32) -> Self {
        Self {
            at: Instant::now(),
            server_cpu: cpu_seconds(&format!("/proc/{server_pid}/stat")),
            client_cpu: cpu_seconds("/proc/self/stat"),
            threads: thread_times(server_pid),
            machine: machine_cpu(),
            disk: Disk::read(),
        }
    }
}

/// Resource use over a run, per second of wall time.
struct Usage {
    seconds: f64,
    server_cores: f64,
    client_cores: f64,
    /// meterd's threads by name: cores running and cores' worth of time
    /// spent waiting for a CPU, per second of the run, and how many threads.
    threads: BTreeMap<String, ThreadUse>,
    /// The whole machine: busy cores (all processes) and cores stolen by
    /// the hypervisor.
    machine_busy_cores: f64,
    machine_steal_cores: f64,
    flushes_per_s: f64,
    /// Mean time the device took per flush.
    flush_ms: f64,
    mb_written_per_s: f64,
    perf: Option<PerfCounts>,
}

impl Usage {
    fn since(start: &Snapshot, server_pid: u32, perf: Option<PerfCounts>) -> Self {
        let end = Snapshot::take(server_pid);
        let seconds = (end.at - start.at).as_secs_f64();
        let flushes = end.disk.flushes - start.disk.flushes;
        Self {
            seconds,
            server_cores: (end.server_cpu - start.server_cpu) / seconds,
            client_cores: (end.client_cpu - start.client_cpu) / seconds,
            threads: thread_usage(&start.threads, &end.threads, seconds),
            machine_busy_cores: (end.machine.0 - start.machine.0) / TICKS_PER_SECOND / seconds,
            machine_steal_cores: (end.machine.2 - start.machine.2) / TICKS_PER_SECOND / seconds,
            flushes_per_s: flushes as f64 / seconds,
            flush_ms: (end.disk.flush_ms - start.disk.flush_ms) as f64 / flushes.max(1) as f64,
            mb_written_per_s: (end.disk.sectors_written - start.disk.sectors_written) as f64 * 512.0
                / 1e6
                / seconds,
            perf,
        }
    }
}

/// What the threads of one name did over a run.
#[derive(Default)]
struct ThreadUse {
    threads: usize,
    running_cores: f64,
    waiting_cores: f64,
}

/// Per thread name, between two samples (threads that ended in between are
/// not counted; threads that ran not at all are left out).
fn thread_usage(
    start: &BTreeMap<String, ThreadTimes>,
    end: &BTreeMap<String, ThreadTimes>,
    seconds: f64,
) -> BTreeMap<String, ThreadUse> {
    let mut by_name: BTreeMap<String, ThreadUse> = BTreeMap::new();
    for (tid, now) in end {
        let before = start.get(tid).cloned().unwrap_or_default();
        let running = now.running - before.running;
        if running > 0.0 {
            let entry = by_name.entry(now.name.clone()).or_default();
            entry.threads += 1;
            entry.running_cores += running / seconds;
            entry.waiting_cores += (now.waiting - before.waiting) / seconds;
        }
    }
    by_name
}

/// Kernel counters of the gateway process from `perf stat` (tracepoints
/// and software events: counting costs the gateway next to nothing).
struct PerfCounts {
    fsyncs: u64,
    context_switches: u64,
}

/// `perf stat` attached to the gateway for the length of one run.
struct Perf {
    child: Child,
    output: PathBuf,
}

impl Perf {
    const EVENTS: &'static str = "context-switches,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync";

    /// Attaches, or `None` (with a note) when perf is missing or refused.
    fn attach(pid: u32, output: PathBuf) -> Option<Self> {
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", Self::EVENTS, "-o"])
            .arg(&output)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                println!("  (perf stat unavailable: {e}; no fsync or context-switch counts)");
                return None;
            }
        };
        // Give it time to attach; a perf that cannot attach exits at once.
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = child.try_wait() {
            println!("  (perf stat exited with {status}; no fsync or context-switch counts)");
            return None;
        }
        Some(Self { child, output })
    }

    fn finish(mut self) -> Option<PerfCounts> {
        signal(self.child.id(), "INT");
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.output).ok()?;
        let count = |event: &str| -> u64 {
            text.lines()
                .filter(|l| l.split(',').nth(2) == Some(event))
                .filter_map(|l| l.split(',').next()?.parse::<u64>().ok())
                .sum()
        };
        Some(PerfCounts {
            fsyncs: count("syscalls:sys_enter_fsync") + count("syscalls:sys_enter_fdatasync"),
            context_switches: count("context-switches"),
        })
    }
}

// ---------------------------------------------------------------------------
// Runs and reporting
// ---------------------------------------------------------------------------

/// One run's outcome.
struct RunReport {
    name: String,
    tally: Tally,
    /// The faulty calls, in a faults run with them.
    faults: Option<FaultTally>,
    /// Webhooks/s over the measured window.
    throughput: f64,
    usage: Usage,
    counters: Counters,
    problem: Option<String>,
    exhausted: bool,
}

/// The gateway's own counters over a whole run (warm-up included), from
/// `/metrics`: where the E2B plugin's calls ran and how big the commits
/// were. A run whose calls went to blocking threads measures another
/// gateway than one whose calls ran inline (BENCHMARKS.md, issue 18).
struct Counters {
    inline_calls: f64,
    blocking_calls: f64,
    commits: f64,
    committed_deliveries: f64,
    commit_seconds: f64,
}

impl Counters {
    async fn read(gateway: &Gateway) -> Self {
        let text = support::metrics_text(gateway.addr).await;
        let value = |series: &str| support::metric_value(&text, series);
        let calls = |thread: &str| {
            value(&format!("meterd_plugin_call_threads_total{{plugin=\"e2b\",thread=\"{thread}\"}}"))
        };
        Self {
            inline_calls: calls("inline"),
            blocking_calls: calls("blocking"),
            commits: value("meterd_commit_batch_size_count"),
            committed_deliveries: value("meterd_commit_batch_size_sum"),
            commit_seconds: value("meterd_commit_seconds_sum"),
        }
    }

    fn line(&self) -> String {
        let calls = self.inline_calls + self.blocking_calls;
        let commits = self.commits.max(1.0);
        format!(
            "plugin calls {:.1} % inline ({:.0} of {calls:.0}); {:.0} commits, {:.1} deliveries and {:.2} ms each on average",
            100.0 * self.inline_calls / calls.max(1.0),
            self.inline_calls,
            self.commits,
            self.committed_deliveries / commits,
            1e3 * self.commit_seconds / commits,
        )
    }
}

/// The shared parts of every run.
struct Bench {
    settings: Settings,
    component: PathBuf,
    /// The test-only chaos plugin, for the faults runs.
    chaos: PathBuf,
    cache_dir: tempfile::TempDir,
    client: tokio::runtime::Runtime,
}

#[derive(Clone, Copy)]
enum Pattern {
    Closed {
        connections: usize,
    },
    Open {
        rate: f64,
        connections: usize,
    },
    /// Closed loop next to the chaos plugin, with (`faults`) or without one
    /// connection each sending `loop`, `alloc` and `trap` calls (paced).
    Faults {
        connections: usize,
        faults: bool,
    },
}

/// The faulty calls of a faults run: each must be refused, a 500 (run and
/// stopped) or a 503 (quarantined: refused without running).
#[derive(Debug, Default)]
struct FaultTally {
    calls: u64,
    quarantined: u64,
    /// Other answers, or failed exchanges.
    wrong: Vec<String>,
    /// Nanoseconds, sorted by the report.
    latencies: Vec<u64>,
}

/// Faulty calls per second per kind: a provider's traffic to a broken
/// plugin, not a flood (a 503 is answered in ~0.1 ms; unpaced, the senders
/// would measure how fast the gateway refuses junk).
const FAULT_RATE: f64 = 200.0;

/// The faulty calls: `body` to the chaos plugin over one connection, at most
/// [`FAULT_RATE`] a second, until the window ends.
async fn fault_load(addr: SocketAddr, body: &'static str, window: Window) -> FaultTally {
    let host = host_header(addr);
    let mut sender = connect(addr).await;
    let mut tally = FaultTally::default();
    let interval = Duration::from_secs_f64(1.0 / FAULT_RATE);
    let mut next = Instant::now();
    while Instant::now() < window.end {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        if sender.is_closed() {
            sender = connect(addr).await;
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/ingest/chaos")
            .header(HOST, host.clone())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a well-formed request");
        let sent = Instant::now();
        let answer = async {
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?;
            Ok::<_, String>(status)
        }
        .await;
        let done = Instant::now();
        tally.calls += 1;
        match answer {
            Ok(StatusCode::INTERNAL_SERVER_ERROR) => {}
            Ok(StatusCode::SERVICE_UNAVAILABLE) => tally.quarantined += 1,
            Ok(status) => tally.wrong.push(format!("{body}: {status}")),
            Err(e) => tally.wrong.push(format!("{body}: {e}")),
        }
        if window.measures(done) {
            tally.latencies.push(nanos(done - sent));
        }
    }
    tally
}

impl Bench {
    /// Starts a fresh gateway, drives `pattern` through it, verifies the
    /// database, stops the gateway.
    fn run(&self, name: &str, pattern: Pattern) -> RunReport {
        let s = &self.settings;
        let planned = match pattern {
            Pattern::Closed { .. } | Pattern::Faults { .. } => s.max_rate * s.run_length().as_secs_f64(),
            Pattern::Open { rate, .. } => rate * s.run_length().as_secs_f64(),
        };
        let org = format!("bench-{name}");
        let webhooks = prepare(name, &org, planned.ceil() as usize);
        let chaos = matches!(pattern, Pattern::Faults { .. }).then_some(self.chaos.as_path());
        let gateway = Gateway::start(&self.component, self.cache_dir.path(), chaos);
        let perf_output = self.cache_dir.path().join(format!("perf-{name}.csv"));
        let perf = s.perf.then(|| Perf::attach(gateway.pid(), perf_output)).flatten();
        let before = Snapshot::take(gateway.pid());
        let (mut tally, window, mut faults) =
            self.client.block_on(drive(gateway.addr, webhooks.clone(), pattern, s.warmup, s.seconds));
        if let Some(f) = &mut faults {
            f.latencies.sort_unstable();
        }
        let usage = Usage::since(&before, gateway.pid(), perf.and_then(Perf::finish));
        tally.latencies.sort_unstable();
        tally.lags.sort_unstable();
        let committed = self.client.block_on(Committed::read(&gateway, &org));
        let counters = self.client.block_on(Counters::read(&gateway));
        gateway.stop();
        let exhausted = matches!(pattern, Pattern::Closed { .. } | Pattern::Faults { .. })
            && tally.acknowledged + tally.errors >= webhooks.len() as u64;
        let problem = committed
            .problem(tally.acknowledged)
            .or_else(|| {
                tally.first_error.as_ref().map(|e| format!("{} failed requests, first: {e}", tally.errors))
            })
            .or_else(|| {
                let wrong = &faults.as_ref()?.wrong;
                wrong
                    .first()
                    .map(|w| format!("{} faulty calls not refused with 500, first: {w}", wrong.len()))
            });
        RunReport {
            name: name.to_owned(),
            throughput: throughput(&tally, &window, exhausted),
            problem,
            tally,
            usage,
            counters,
            exhausted,
            faults,
        }
    }
}

/// Answers per second in the measured window; when the pre-generated
/// webhooks ran out early, the window ends at the last answer.
fn throughput(tally: &Tally, window: &Window, exhausted: bool) -> f64 {
    let end = match tally.last_done {
        Some(last) if exhausted => last.min(window.end),
        _ => window.end,
    };
    let span = end.saturating_duration_since(window.measure_from);
    tally.measured as f64 / span.as_secs_f64().max(1e-9)
}

/// Opens the connections, then starts the clock and runs `pattern`: the
/// window never includes connection set-up.
async fn drive(
    addr: SocketAddr,
    webhooks: Arc<Vec<Prepared>>,
    pattern: Pattern,
    warmup: Duration,
    seconds: Duration,
) -> (Tally, Window, Option<FaultTally>) {
    let connections = match pattern {
        Pattern::Closed { connections }
        | Pattern::Open { connections, .. }
        | Pattern::Faults { connections, .. } => connections,
    };
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await);
    }
    let window = Window::starting_now(warmup, seconds);
    let (tally, faults) = match pattern {
        Pattern::Closed { .. } | Pattern::Faults { faults: false, .. } => {
            (closed_loop(addr, webhooks, senders, window).await, None)
        }
        Pattern::Faults { faults: true, .. } => {
            let faulty: Vec<_> = ["loop", "alloc", "trap"]
                .into_iter()
                .map(|b| tokio::spawn(fault_load(addr, b, window)))
                .collect();
            let tally = closed_loop(addr, webhooks, senders, window).await;
            let mut all = FaultTally::default();
            for f in faulty {
                let f = f.await.expect("a fault worker panicked");
                all.calls += f.calls;
                all.quarantined += f.quarantined;
                all.wrong.extend(f.wrong);
                all.latencies.extend(f.latencies);
            }
            (tally, Some(all))
        }
        Pattern::Open { rate, .. } => (open_loop(addr, webhooks, rate, senders, window).await, None),
    };
    (tally, window, faults)
}

/// Percentiles of sorted latencies.
fn latency_summary(latencies: &[u64]) -> String {
    if latencies.is_empty() {
        return "no latencies".to_owned();
    }
    let p = |q: f64| format_ns(percentile(latencies, q) as f64);
    format!("p50 {} · p90 {} · p99 {} · max {}", p(50.0), p(90.0), p(99.0), p(100.0))
}

fn print_run(report: &RunReport) {
    let u = &report.usage;
    println!(
        "{}: {:.0} webhooks/s measured ({} acknowledged in all, {} errors){}",
        report.name,
        report.throughput,
        report.tally.acknowledged,
        report.tally.errors,
        if report.exhausted {
            " — pre-generated webhooks ran out: raise METERD_BENCH_MAX_RATE"
        } else {
            ""
        }
    );
    println!("  latency: {}", latency_summary(&report.tally.latencies));
    if let Some(f) = &report.faults {
        println!(
            "  faulty calls (loop, alloc, trap, ≤ {FAULT_RATE:.0}/s each; each must be a 500, or a 503 once quarantined): {} calls, {} quarantined, {} not refused, latency {}",
            f.calls,
            f.quarantined,
            f.wrong.len(),
            latency_summary(&f.latencies)
        );
    }
    if !report.tally.lags.is_empty() {
        println!(
            "  send lag behind schedule (pacer + waiting for an idle connection): {}",
            latency_summary(&report.tally.lags)
        );
    }
    let per_webhook = |n: u64| n as f64 / report.tally.acknowledged.max(1) as f64;
    println!(
        "  CPU: meterd {:.2} cores, load generator {:.2} cores (over {:.1} s); disk: {:.0} flushes/s ({:.2} ms each), {:.1} MB/s written",
        u.server_cores, u.client_cores, u.seconds, u.flushes_per_s, u.flush_ms, u.mb_written_per_s
    );
    let threads: Vec<String> = u
        .threads
        .iter()
        .map(|(name, t)| {
            format!(
                "{name} ×{} {:.2} (+{:.2} waiting for a CPU)",
                t.threads, t.running_cores, t.waiting_cores
            )
        })
        .collect();
    println!("  meterd threads, cores: {}", threads.join(", "));
    println!(
        "  machine: {:.2} of {} cores busy, {:.2} stolen by the hypervisor",
        u.machine_busy_cores,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        u.machine_steal_cores
    );
    if let Some(perf) = &u.perf {
        println!(
            "  meterd: {:.0} fsync+fdatasync/s ({:.1} webhooks per fsync, checkpoints included), {:.1} context switches per webhook",
            perf.fsyncs as f64 / u.seconds,
            1.0 / per_webhook(perf.fsyncs).max(1e-9),
            per_webhook(perf.context_switches)
        );
    }
    println!("  gateway's counters: {}", report.counters.line());
    match &report.problem {
        None => println!(
            "  verified: {} deliveries committed, total {} core-seconds = 3 × acknowledged",
            report.tally.acknowledged,
            report.tally.acknowledged * CORE_SECONDS_PER_WEBHOOK
        ),
        Some(problem) => println!("  INVALID: {problem}"),
    }
}

/// The gateway's CPU time per acknowledged webhook in the measured window.
fn cpu_per_webhook_ns(report: &RunReport) -> f64 {
    report.usage.server_cores / report.throughput.max(1e-9) * 1e9
}

fn print_summary(closed: &[RunReport], open: Option<&RunReport>) {
    println!();
    println!(
        "| run | webhooks/s | p50 | p99 | max | meterd CPU | meterd CPU per webhook | client CPU | fsync/s | verified |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in closed.iter().chain(open) {
        let lat = |q: f64| {
            if r.tally.latencies.is_empty() {
                "–".to_owned()
            } else {
                format_ns(percentile(&r.tally.latencies, q) as f64)
            }
        };
        let fsyncs = r
            .usage
            .perf
            .as_ref()
            .map_or("–".to_owned(), |p| format!("{:.0}", p.fsyncs as f64 / r.usage.seconds));
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.2} | {} | {:.2} | {fsyncs} | {} |",
            r.name,
            r.throughput,
            lat(50.0),
            lat(99.0),
            lat(100.0),
            r.usage.server_cores,
            format_ns(cpu_per_webhook_ns(r)),
            r.usage.client_cores,
            if r.problem.is_none() { "yes" } else { "NO" }
        );
    }
    println!();
    // Runs with faulty calls beside them count neither: their gateway CPU
    // includes the faulty plugin's.
    let plain = closed.iter().filter(|r| r.faults.is_none());
    if let Some(best) = plain.max_by(|a, b| a.throughput.total_cmp(&b.throughput)) {
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        let rate = best.throughput;
        println!(
            "max throughput {rate:.0} webhooks/s (target ≥ {THROUGHPUT_TARGET:.0}: {}; issue 18's ≥ {ISSUE_18_THROUGHPUT_TARGET:.0}: {})",
            verdict(rate >= THROUGHPUT_TARGET),
            verdict(rate >= ISSUE_18_THROUGHPUT_TARGET)
        );
        let cpu = cpu_per_webhook_ns(best);
        println!(
            "meterd CPU per webhook at {} {} (issue 18's target ≤ {}: {})",
            best.name,
            format_ns(cpu),
            format_ns(nanos(CPU_PER_WEBHOOK_TARGET) as f64),
            verdict(cpu <= nanos(CPU_PER_WEBHOOK_TARGET) as f64)
        );
    }
    if let Some(open) = open
        && !open.tally.latencies.is_empty()
    {
        let p99 = percentile(&open.tally.latencies, 99.0);
        let verdict = if p99 <= nanos(P99_TARGET) { "met" } else { "NOT met" };
        println!(
            "p99 at {} {} (target ≤ {}: {verdict})",
            open.name,
            format_ns(p99 as f64),
            format_ns(nanos(P99_TARGET) as f64)
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    let filters = support::filters();
    println!(
        "ingest benchmark: meterd {} on {}; load generator: this process (hyper HTTP/1.1, 1 tokio thread + pacer) on the same machine",
        env!("CARGO_BIN_EXE_meterd"),
        support::machine_line()
    );
    println!("{}", support::speed_line());
    println!(
        "{:?} warm-up + {:?} measured per run; fresh gateway and SQLite database per run",
        settings.warmup, settings.seconds
    );
    let bench = Bench {
        component: support::component("e2b"),
        chaos: support::component("chaos"),
        cache_dir: tempfile::tempdir().expect("creating the cache dir"),
        client: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("starting the client runtime"),
        settings,
    };
    let mut closed = Vec::new();
    if support::selected(&filters, "closed") {
        for &connections in &bench.settings.connections {
            let report = bench.run(&format!("closed-{connections}"), Pattern::Closed { connections });
            print_run(&report);
            closed.push(report);
        }
    }
    if support::selected(&filters, "faults") {
        let connections = 64;
        let quiet = bench.run("faults-off", Pattern::Faults { connections, faults: false });
        print_run(&quiet);
        let loud = bench.run("faults-on", Pattern::Faults { connections, faults: true });
        print_run(&loud);
        println!(
            "e2b next to faulty calls: {:.0} / {:.0} webhooks/s = {:.2} of its throughput without them (target ≥ 0.90: {})",
            loud.throughput,
            quiet.throughput,
            loud.throughput / quiet.throughput.max(1e-9),
            if loud.throughput >= 0.9 * quiet.throughput { "met" } else { "NOT met" }
        );
        closed.push(quiet);
        closed.push(loud);
    }
    let open = support::selected(&filters, "open").then(|| {
        let s = &bench.settings;
        let pattern = Pattern::Open { rate: s.rate, connections: s.open_connections };
        let report = bench.run(&format!("open-{:.0}", s.rate), pattern);
        print_run(&report);
        report
    });
    print_summary(&closed, open.as_ref());
    let invalid = closed.iter().chain(&open).filter(|r| r.problem.is_some()).count();
    if invalid > 0 {
        eprintln!("{invalid} run(s) INVALID: the committed data does not match what was acknowledged");
        std::process::exit(1);
    }
}
