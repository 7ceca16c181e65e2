//! Usage at scale: one org with 1,000,000 or 10,000,000 stored records, on
//! SQLite and on PostgreSQL. What a big history costs the gateway's
//! start-up, memory and usage queries, and how fast the rollups are
//! back-filled and checked.
//!
//! Per case (engine × size):
//!
//! 1. A fresh database (a new SQLite file in a temp dir, or a PostgreSQL
//!    database made with `CREATE DATABASE` and dropped `WITH (FORCE)` after
//!    the case), migrated by the library (`SqliteStore::open` /
//!    `PostgresStore::open`, `migrate()`).
//! 2. Baseline: `meterd serve` on the still empty database: ready time and
//!    memory.
//! 3. Fill, by direct SQL (multi-row INSERTs in transactions on SQLite,
//!    `COPY` on PostgreSQL), with E2B-like records of one org
//!    (`org-scale`): per sandbox run a `sandbox_active` level 1 at its
//!    start, and at its kill a level 0 plus the deltas
//!    `sandbox_cpu_core_seconds` and `sandbox_ram_gibi_seconds` (exact
//!    decimals, computed with `meterd_units` as the E2B plugin does),
//!    attributes `{"sandbox_id":"sb-N","template_id":T}` (4 templates),
//!    plugin `e2b`, no delivery row. Runs last 1 s to 1 h (log-uniform),
//!    overlap and are spread uniformly over their month. `1m`: 1,000,000
//!    records, all in the current UTC month up to now. `10m`: 1,000,000 in
//!    the current month and 9,000,000 over the 9 months before (a run may
//!    end in the month after its start, never in the current month). On
//!    PostgreSQL the database is then `ANALYZE`d (what autovacuum would
//!    do; the local test server runs with it off).
//! 4. Back-fill: the `meterd_state` row `rollups` is deleted and
//!    `migrate()` called again, which rebuilds the rollups from every
//!    record (`Rollups::rebuild_rollups`, one transaction): timed. Then
//!    `check_rollups(5)`: timed, and it must find 0 differences.
//! 5. Library: `meterd::usage::UsageService` over the same store (no HTTP):
//!    the month usage queries below, and the old raw path
//!    (`Store::points` + `carry_in` + `meter::aggregate`, what every usage
//!    query did before the rollups) for the two month totals.
//! 6. Gateway: `meterd serve` (the release binary, an admin token, the e2b
//!    component, a compiled-code cache warmed before the first case) on
//!    the filled database: spawn → listening line → `GET /readyz` 200;
//!    VmRSS and VmHWM after start-up; then sequential requests over one
//!    keep-alive connection: usage of `sandbox_cpu_core_seconds` (sum) and
//!    `sandbox_active_seconds` (integral) for the default range (the
//!    current month), with `&window=day`, with `&group_by=template_id`
//!    (declared in `rollup_group_by` here, so the grouped integral reads
//!    the templates' level series and the grouped sum reads group
//!    hours);
//!    `GET …/entitlements`, `GET …/grants`,
//!    `POST …/check` (`sandbox.start`). VmRSS and VmHWM again after them.
//!
//! Every answer is verified: the month totals (library, raw path and HTTP)
//! must equal what the bench inserted, exactly (CPU: Σ core-seconds; active
//! seconds: Σ run lengths, all runs ended before now), the day windows
//! must add up to the total, and the grouped answers must give each
//! template its exact sum (CPU) and active seconds. Each query runs `METERD_BENCH_REQUESTS` times
//! (default 200) after 2 warm-ups, or fewer when it has used
//! `METERD_BENCH_QUERY_SECONDS` (default 20; at least 5 samples).
//!
//! Cost warning: the raw path of a level meter (`carry_in`) reads every
//! level record before the month and returns every subject ever seen. At
//! `10m` on SQLite one raw integral call takes tens of seconds
//! and several GB in this process (see BENCHMARKS.md); lower
//! `METERD_BENCH_QUERY_SECONDS` does not shorten the 2 warm-ups + 5
//! samples it always takes.
//!
//! Memory: a watchdog samples the gateway's VmRSS every 20 ms and kills it
//! above `METERD_BENCH_RSS_LIMIT_MIB` (default 16384); the case is then
//! reported as skipped.
//!
//! Run: `cargo bench -p meterd --bench scale`. Knobs: `METERD_BENCH_SCALE`
//! (sizes, comma-separated: `1m`, `10m`, or `TOTAL[:CURRENT]` with `k`/`m`
//! suffixes, e.g. `200k:100k`; default `1m`), `METERD_BENCH_ENGINES`
//! (`sqlite,postgres`, the default), `METERD_BENCH_REQUESTS`,
//! `METERD_BENCH_QUERY_SECONDS`, `METERD_BENCH_RSS_LIMIT_MIB`,
//! `METERD_BENCH_SEED` (default 1), `METERD_BENCH_SKIP` (queries whose
//! names contain any of these comma-separated words are not run: `raw`
//! skips the raw-path queries, which take minutes at `10m`),
//! `METERD_BENCH_POSTGRES` (the server's
//! admin URL; else `METERD_TEST_POSTGRES`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use meterd::api::Quantity;
use meterd::api::orgs::{CheckAnswer, Entitlements};
use meterd::api::usage::Usage;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use sqlx::{ConnectOptions as _, Connection as _};

use meterd::meter::period::{Range, WindowSize, month_containing};
use meterd::meter::{self, MeterDef, UsageQuery};
use meterd::store::{PointQuery, PostgresStore, SqliteStore, Store};
use meterd::usage::{UsageRequest, UsageService};

use support::{
    PgDatabase, Sender, connect, format_ns, host_header, percentile, signal, spawn_meterd, stop_gracefully,
    wait_for_listening,
};

const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const ORG: &str = "org-scale";
const ADMIN_TOKEN: &str = "scale-bench-admin-token-0123456789";
const CPU: &str = "sandbox_cpu_core_seconds";
const RAM: &str = "sandbox_ram_gibi_seconds";
const ACTIVE: &str = "sandbox_active";
const ACTIVE_SECONDS: &str = "sandbox_active_seconds";
const TEMPLATES: [&str; 4] = ["base", "python", "node", "browser"];
const VCPUS: [u64; 4] = [1, 2, 4, 8];
const MEMORY_MB: [u64; 5] = [512, 1024, 2048, 4096, 8192];
const MIN_SAMPLES: usize = 5;
const WARMUPS: usize = 2;

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Debug)]
struct Size {
    name: String,
    total: u64,
    /// Of `total`, in the current month; the rest is spread over the 9
    /// months before.
    current: u64,
}

struct Settings {
    sizes: Vec<Size>,
    engines: Vec<Engine>,
    requests: usize,
    query_budget: Duration,
    rss_limit_mib: f64,
    seed: u64,
    postgres: String,
    /// Queries whose names contain any of these are not run.
    skip: Vec<String>,
}

fn count(text: &str) -> u64 {
    let text = text.trim().to_ascii_lowercase();
    let (digits, factor) = if let Some(d) = text.strip_suffix('m') {
        (d, 1_000_000.0)
    } else if let Some(d) = text.strip_suffix('k') {
        (d, 1_000.0)
    } else {
        (text.as_str(), 1.0)
    };
    let n: f64 = digits.parse().unwrap_or_else(|_| panic!("METERD_BENCH_SCALE: {text:?} is not a count"));
    (n * factor).round() as u64
}

fn parse_size(text: &str) -> Size {
    let text = text.trim();
    let (total, current) = match text.split_once(':') {
        Some((t, c)) => (count(t), count(c)),
        None => {
            let total = count(text);
            (total, total.min(1_000_000))
        }
    };
    assert!(current >= 4 && current <= total, "METERD_BENCH_SCALE {text:?}: need 4 ≤ current ≤ total");
    Size { name: text.to_owned(), total, current }
}

impl Settings {
    fn from_env() -> Self {
        let scale = std::env::var("METERD_BENCH_SCALE").unwrap_or_else(|_| "1m".to_owned());
        let sizes: Vec<Size> = scale.split(',').filter(|s| !s.trim().is_empty()).map(parse_size).collect();
        let engines = std::env::var("METERD_BENCH_ENGINES").unwrap_or_else(|_| "sqlite,postgres".to_owned());
        let engines: Vec<Engine> = engines
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|e| match e.trim() {
                "sqlite" => Engine::Sqlite,
                "postgres" | "pg" => Engine::Postgres,
                other => panic!("METERD_BENCH_ENGINES: unknown engine {other:?} (sqlite, postgres)"),
            })
            .collect();
        let requests = support::env_number("METERD_BENCH_REQUESTS", 200usize);
        assert!(requests >= MIN_SAMPLES, "METERD_BENCH_REQUESTS must be at least {MIN_SAMPLES}");
        let postgres = std::env::var("METERD_BENCH_POSTGRES")
            .or_else(|_| std::env::var("METERD_TEST_POSTGRES"))
            .unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned());
        Self {
            sizes,
            engines,
            requests,
            query_budget: support::env_seconds("METERD_BENCH_QUERY_SECONDS", 20.0),
            rss_limit_mib: support::env_number("METERD_BENCH_RSS_LIMIT_MIB", 16_384.0),
            seed: support::env_number("METERD_BENCH_SEED", 1u64),
            postgres,
            skip: std::env::var("METERD_BENCH_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    fn skips(&self, query: &str) -> bool {
        let skipped = self.skip.iter().any(|s| query.contains(s.as_str()));
        if skipped {
            println!("    skipped  {query} (METERD_BENCH_SKIP)");
        }
        skipped
    }
}

// ---------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------

/// splitmix64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One sandbox run: 4 records.
struct Run {
    id: u64,
    start_ms: i64,
    len_ms: i64,
    vcpu: u64,
    memory_mb: u64,
    template: &'static str,
}

impl Run {
    fn end_ms(&self) -> i64 {
        self.start_ms + self.len_ms
    }

    fn cpu(&self) -> Decimal {
        meterd_units::count_ms_to_seconds(self.vcpu, self.len_ms as u64).expect("core-seconds")
    }

    fn ram(&self) -> Decimal {
        meterd_units::mib_ms_to_gib_seconds(self.memory_mb, self.len_ms as u64).expect("GiB-seconds")
    }
}

/// A span of time and how many runs start in it.
struct Span {
    from_ms: i64,
    to_ms: i64,
    runs: u64,
    /// Every run must end before this.
    end_before_ms: i64,
}

/// 1 s to 1 h, log-uniform, whole milliseconds.
fn run_length(rng: &mut Rng) -> i64 {
    (1_000.0 * 3_600f64.powf(rng.unit())).round() as i64
}

fn runs_in(rng: &mut Rng, span: &Span, first_id: u64) -> Vec<Run> {
    let mut runs = Vec::with_capacity(span.runs as usize);
    for _ in 0..span.runs {
        let (start_ms, len_ms) = loop {
            let mut len = run_length(rng);
            let room = span.to_ms.min(span.end_before_ms) - span.from_ms;
            if len >= room {
                len = (room / 2).max(1);
            }
            let start = span.from_ms + rng.below((span.to_ms - span.from_ms) as u64) as i64;
            if start + len < span.end_before_ms {
                break (start, len);
            }
        };
        runs.push(Run {
            id: 0,
            start_ms,
            len_ms,
            vcpu: VCPUS[rng.below(VCPUS.len() as u64) as usize],
            memory_mb: MEMORY_MB[rng.below(MEMORY_MB.len() as u64) as usize],
            template: TEMPLATES[rng.below(TEMPLATES.len() as u64) as usize],
        });
    }
    runs.sort_by_key(|r| r.start_ms);
    for (i, run) in runs.iter_mut().enumerate() {
        run.id = first_id + i as u64;
    }
    runs
}

/// One row of `usage_records` (plugin `e2b`, org `ORG`, no delivery).
struct Row {
    event_id: String,
    seq: i64,
    subject: String,
    metric: &'static str,
    kind: &'static str,
    quantity: String,
    at_ms: i64,
    window_start_ms: Option<i64>,
    attributes: String,
}

/// Part 0: the start (level 1); 1–3: the kill (CPU, RAM, level 0), as the
/// E2B plugin numbers a `killed` event's records.
fn row(run: &Run, part: u8) -> Row {
    let subject = format!("sb-{}", run.id);
    let attributes = format!(r#"{{"sandbox_id":"{subject}","template_id":"{}"}}"#, run.template);
    let q = meterd_units::format_quantity;
    match part {
        0 => Row {
            event_id: format!("ev-{}-created", run.id),
            seq: 0,
            subject,
            metric: ACTIVE,
            kind: "level",
            quantity: "1".to_owned(),
            at_ms: run.start_ms,
            window_start_ms: None,
            attributes,
        },
        1 | 2 => Row {
            event_id: format!("ev-{}-killed", run.id),
            seq: i64::from(part) - 1,
            subject,
            metric: if part == 1 { CPU } else { RAM },
            kind: "delta",
            quantity: q(if part == 1 { run.cpu() } else { run.ram() }),
            at_ms: run.end_ms(),
            window_start_ms: Some(run.start_ms),
            attributes,
        },
        _ => Row {
            event_id: format!("ev-{}-killed", run.id),
            seq: 2,
            subject,
            metric: ACTIVE,
            kind: "level",
            quantity: "0".to_owned(),
            at_ms: run.end_ms(),
            window_start_ms: None,
            attributes,
        },
    }
}

/// A span's records in time order: (run index, part).
fn record_order(runs: &[Run]) -> Vec<(u32, u8)> {
    let mut order: Vec<(i64, u32, u8)> = Vec::with_capacity(runs.len() * 4);
    for (i, run) in runs.iter().enumerate() {
        order.push((run.start_ms, i as u32, 0));
        for part in 1..=3 {
            order.push((run.end_ms(), i as u32, part));
        }
    }
    order.sort_unstable();
    order.into_iter().map(|(_, i, p)| (i, p)).collect()
}

/// What the current month's usage must be.
#[derive(Default)]
struct Expected {
    cpu: Decimal,
    active_seconds: Decimal,
    cpu_by_template: BTreeMap<String, Decimal>,
    active_by_template: BTreeMap<String, Decimal>,
}

impl Expected {
    fn add(&mut self, run: &Run) {
        self.cpu += run.cpu();
        self.active_seconds += Decimal::new(run.len_ms, 3);
        *self.cpu_by_template.entry(run.template.to_owned()).or_default() += run.cpu();
        *self.active_by_template.entry(run.template.to_owned()).or_default() += Decimal::new(run.len_ms, 3);
    }
}

/// The spans of a size, oldest first; the last is the current month up to
/// `now_ms`.
fn spans(size: &Size, now_ms: i64) -> Vec<Span> {
    let current = month_containing(now_ms);
    let mut out = Vec::new();
    let history_runs = (size.total - size.current) / 4;
    if history_runs > 0 {
        let mut months = Vec::new();
        let mut m = current;
        for _ in 0..9 {
            m = month_containing(m.from_ms - 1);
            months.push(m);
        }
        months.reverse();
        for (i, m) in months.iter().enumerate() {
            let runs = history_runs / 9 + u64::from((i as u64) < history_runs % 9);
            out.push(Span { from_ms: m.from_ms, to_ms: m.to_ms, runs, end_before_ms: current.from_ms });
        }
    }
    out.push(Span { from_ms: current.from_ms, to_ms: now_ms, runs: size.current / 4, end_before_ms: now_ms });
    out
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

/// Where a case's data lives.
enum Database {
    Sqlite { dir: tempfile::TempDir, url: String },
    Postgres(PgDatabase),
}

impl Database {
    fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. } => url,
            Database::Postgres(pg) => &pg.url,
        }
    }

    /// Bytes on disk (SQLite: the file and its WAL).
    async fn size_bytes(&self) -> u64 {
        match self {
            Database::Sqlite { dir, .. } => std::fs::read_dir(dir.path())
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().starts_with("meterd.db"))
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0),
            Database::Postgres(pg) => {
                let Ok(mut conn) = sqlx::PgConnection::connect(&pg.url).await else { return 0 };
                let size: Result<i64, _> = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(&mut conn)
                    .await;
                let _ = conn.close().await;
                size.map_or(0, |s| s as u64)
            }
        }
    }
}

async fn open_store(url: &str) -> Arc<dyn Store> {
    if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::open(url).await.expect("opening the SQLite store").with_group_by(group_by()))
    } else {
        Arc::new(
            PostgresStore::open(url).await.expect("opening the PostgreSQL store").with_group_by(group_by()),
        )
    }
}

/// The attribute key with group hours, in the library and the gateway
/// (`rollup_group_by`).
fn group_by() -> Vec<String> {
    vec!["template_id".to_owned()]
}

// ---------------------------------------------------------------------------
// Filling
// ---------------------------------------------------------------------------

/// Rows per SQLite INSERT (9 parameters each; the limit is 32,766).
const SQLITE_ROWS_PER_INSERT: usize = 3_000;
/// Statements per SQLite transaction.
const SQLITE_INSERTS_PER_TX: usize = 30;

fn sqlite_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO usage_records (plugin, event_id, seq, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "('e2b',?,?,'{ORG}',?,?,?,?,?,?,?)");
    }
    sql
}

async fn fill_sqlite(url: &str, spans: &[Span], seed: u64, expected: &mut Expected) -> u64 {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .expect("a SQLite URL")
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .pragma("cache_size", "-524288")
        .connect()
        .await
        .expect("connecting to the SQLite file");
    let full_sql = sqlite_insert_sql(SQLITE_ROWS_PER_INSERT);
    let mut rng = Rng(seed);
    let mut next_id = 0u64;
    let mut written = 0u64;
    let last = spans.len() - 1;
    for (s, span) in spans.iter().enumerate() {
        let runs = runs_in(&mut rng, span, next_id);
        next_id += runs.len() as u64;
        if s == last {
            runs.iter().for_each(|r| expected.add(r));
        }
        let order = record_order(&runs);
        for tx_chunk in order.chunks(SQLITE_ROWS_PER_INSERT * SQLITE_INSERTS_PER_TX) {
            let mut tx = conn.begin().await.expect("BEGIN");
            for chunk in tx_chunk.chunks(SQLITE_ROWS_PER_INSERT) {
                let partial;
                let sql = if chunk.len() == SQLITE_ROWS_PER_INSERT {
                    &full_sql
                } else {
                    partial = sqlite_insert_sql(chunk.len());
                    &partial
                };
                let rows: Vec<Row> = chunk.iter().map(|&(i, p)| row(&runs[i as usize], p)).collect();
                let mut query = sqlx::query(sql);
                for r in &rows {
                    query = query
                        .bind(&r.event_id)
                        .bind(r.seq)
                        .bind(&r.subject)
                        .bind(r.metric)
                        .bind(r.kind)
                        .bind(&r.quantity)
                        .bind(r.at_ms)
                        .bind(r.window_start_ms)
                        .bind(&r.attributes);
                }
                query.execute(&mut *tx).await.expect("inserting records");
                written += rows.len() as u64;
            }
            tx.commit().await.expect("COMMIT");
        }
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.expect("checkpoint");
    let _ = conn.close().await;
    written
}

async fn fill_postgres(url: &str, spans: &[Span], seed: u64, expected: &mut Expected) -> u64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connecting to PostgreSQL");
    let mut rng = Rng(seed);
    let mut next_id = 0u64;
    let mut written = 0u64;
    let last = spans.len() - 1;
    for (s, span) in spans.iter().enumerate() {
        let runs = runs_in(&mut rng, span, next_id);
        next_id += runs.len() as u64;
        if s == last {
            runs.iter().for_each(|r| expected.add(r));
        }
        let order = record_order(&runs);
        let mut copy = conn
            .copy_in_raw(
                "COPY usage_records (plugin, event_id, seq, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes) FROM STDIN",
            )
            .await
            .expect("COPY usage_records");
        let mut buffer = String::with_capacity(5 << 20);
        for &(i, p) in &order {
            let r = row(&runs[i as usize], p);
            // Text format: tabs between columns, \N for NULL (nothing here
            // needs escaping).
            let window = r.window_start_ms.map_or_else(|| "\\N".to_owned(), |w| w.to_string());
            let _ = writeln!(
                buffer,
                "e2b\t{}\t{}\t{ORG}\t{}\t{}\t{}\t{}\t{}\t{window}\t{}",
                r.event_id, r.seq, r.subject, r.metric, r.kind, r.quantity, r.at_ms, r.attributes
            );
            if buffer.len() >= 4 << 20 {
                copy.send(std::mem::take(&mut buffer).into_bytes()).await.expect("COPY data");
                buffer.reserve(5 << 20);
            }
        }
        if !buffer.is_empty() {
            copy.send(buffer.into_bytes()).await.expect("COPY data");
        }
        written += copy.finish().await.expect("COPY finish");
    }
    let _ = conn.close().await;
    written
}

/// Deletes the 'rollups' state row, so the next `migrate()` back-fills.
async fn forget_rollups(url: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::sqlite::SqliteConnection::connect(url).await.expect("SQLite");
        sqlx::query("DELETE FROM meterd_state WHERE key = 'rollups'")
            .execute(&mut conn)
            .await
            .expect("delete");
        let _ = conn.close().await;
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("PostgreSQL");
        sqlx::query("DELETE FROM meterd_state WHERE key = 'rollups'")
            .execute(&mut conn)
            .await
            .expect("delete");
        let _ = conn.close().await;
    }
}

async fn rollups_state(url: &str) -> Option<String> {
    let q = "SELECT value FROM meterd_state WHERE key = 'rollups'";
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::sqlite::SqliteConnection::connect(url).await.ok()?;
        sqlx::query_scalar(q).fetch_optional(&mut conn).await.ok()?
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
        sqlx::query_scalar(q).fetch_optional(&mut conn).await.ok()?
    }
}

async fn analyze_postgres(url: &str) -> f64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("PostgreSQL");
    let start = Instant::now();
    sqlx::query("ANALYZE").execute(&mut conn).await.expect("ANALYZE");
    let _ = conn.close().await;
    start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Samples {
    /// Sorted, nanoseconds.
    ns: Vec<u64>,
}

impl Samples {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.ns, p) as f64
    }

    fn cell(&self) -> String {
        format!("{} / {} ({})", format_ns(self.p(50.0)), format_ns(self.p(99.0)), self.ns.len())
    }
}

/// Evaluates `$call` (an expression that may `.await`) `WARMUPS` times
/// unmeasured, then up to `$max` times or until `$budget` is used (at
/// least `MIN_SAMPLES`), timing each. A macro, not a function taking a
/// closure: the calls borrow the client mutably.
macro_rules! sample {
    ($max:expr, $budget:expr, $call:expr) => {{
        for _ in 0..WARMUPS {
            std::hint::black_box($call);
        }
        let (max, budget): (usize, Duration) = ($max, $budget);
        let started = Instant::now();
        let mut ns = Vec::with_capacity(max);
        while ns.len() < max && (ns.len() < MIN_SAMPLES || started.elapsed() < budget) {
            let t = Instant::now();
            std::hint::black_box($call);
            ns.push(support::nanos(t.elapsed()));
        }
        ns.sort_unstable();
        Samples { ns }
    }};
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct UsageCase {
    name: &'static str,
    meter: &'static str,
    window: Option<WindowSize>,
    group_by: Option<&'static str>,
}

const USAGE_CASES: [UsageCase; 8] = [
    UsageCase { name: "usage cpu (sum), month", meter: CPU, window: None, group_by: None },
    UsageCase {
        name: "usage active_seconds (integral), month",
        meter: ACTIVE_SECONDS,
        window: None,
        group_by: None,
    },
    UsageCase {
        name: "usage cpu, month, window=day",
        meter: CPU,
        window: Some(WindowSize::Day),
        group_by: None,
    },
    UsageCase {
        name: "usage active_seconds, month, window=day",
        meter: ACTIVE_SECONDS,
        window: Some(WindowSize::Day),
        group_by: None,
    },
    UsageCase {
        name: "usage cpu, month, group_by=template_id (group hours)",
        meter: CPU,
        window: None,
        group_by: Some("template_id"),
    },
    UsageCase {
        name: "usage cpu, month, window=day, group_by=template_id (group hours)",
        meter: CPU,
        window: Some(WindowSize::Day),
        group_by: Some("template_id"),
    },
    UsageCase {
        name: "usage active_seconds, month, group_by=template_id (group levels)",
        meter: ACTIVE_SECONDS,
        window: None,
        group_by: Some("template_id"),
    },
    UsageCase {
        name: "usage active_seconds, month, window=day, group_by=template_id (group levels)",
        meter: ACTIVE_SECONDS,
        window: Some(WindowSize::Day),
        group_by: Some("template_id"),
    },
];

impl UsageCase {
    fn path(&self) -> String {
        let mut path = format!("/v1/orgs/{ORG}/usage?meter={}", self.meter);
        match self.window {
            Some(WindowSize::Day) => path.push_str("&window=day"),
            Some(WindowSize::Hour) => path.push_str("&window=hour"),
            Some(WindowSize::Month) => path.push_str("&window=month"),
            None => {}
        }
        if let Some(g) = self.group_by {
            let _ = write!(path, "&group_by={g}");
        }
        path
    }

    fn expected_total(&self, expected: &Expected) -> Decimal {
        if self.meter == CPU { expected.cpu } else { expected.active_seconds }
    }
}

/// Checks a usage answer (library or HTTP JSON, as total + windows).
fn verify_usage(
    case: &UsageCase,
    expected: &Expected,
    total: Decimal,
    windows: &[(Option<String>, Decimal)],
    via: &str,
) {
    let want = case.expected_total(expected);
    assert_eq!(total, want, "{via}: {}: total {total}, inserted {want}", case.name);
    let sum: Decimal = windows.iter().map(|(_, v)| *v).sum();
    assert_eq!(sum, want, "{via}: {}: the windows add up to {sum}, not {want}", case.name);
    if case.group_by.is_some() {
        let mut by_group: BTreeMap<String, Decimal> = BTreeMap::new();
        for (g, v) in windows {
            *by_group.entry(g.clone().unwrap_or_default()).or_default() += *v;
        }
        let want = if case.meter == CPU { &expected.cpu_by_template } else { &expected.active_by_template };
        assert_eq!(&by_group, want, "{via}: {}: per template", case.name);
    }
}

fn usage_request(case: &UsageCase, now_ms: i64) -> UsageRequest {
    UsageRequest {
        org_id: ORG.to_owned(),
        meter: case.meter.to_owned(),
        range: month_containing(now_ms),
        window: case.window,
        group_by: case.group_by.map(str::to_owned),
    }
}

/// The usage path before the rollups: every record of the range (and the
/// carry-in) read and given to the pure engine.
async fn raw_usage(store: &Arc<dyn Store>, meter: &MeterDef, range: Range, now_ms: i64) -> Decimal {
    let query = PointQuery { org_id: ORG, metric: &meter.metric, range, group_by: None };
    let points = store.points(&query).await.expect("points");
    let carry_in = match meter.aggregation {
        meter::Aggregation::Sum | meter::Aggregation::Count => Vec::new(),
        _ => store.carry_in(&query).await.expect("carry-in"),
    };
    let engine_query = UsageQuery { range, window: None, now_ms, grouped: false };
    meter::aggregate(meter, &engine_query, &carry_in, &points).expect("aggregate").total
}

/// Library rows: (name, samples).
async fn library_timings(
    store: &Arc<dyn Store>,
    settings: &Settings,
    expected: &Expected,
) -> Vec<(String, Samples)> {
    let meters = meter::default_meters();
    let service = UsageService::new(store.clone(), meters.clone());
    let mut out = Vec::new();
    for case in USAGE_CASES.into_iter().filter(|c| !settings.skips(c.name)) {
        let now = meterd::clock::now_ms();
        let answer = service.usage(&usage_request(&case, now), now).await.expect("usage");
        let windows: Vec<(Option<String>, Decimal)> =
            answer.windows.iter().map(|w| (w.group.clone(), w.value)).collect();
        verify_usage(&case, expected, answer.total, &windows, "library");
        let samples = sample!(settings.requests, settings.query_budget, {
            let now = meterd::clock::now_ms();
            service.usage(&usage_request(&case, now), now).await.expect("usage").total
        });
        println!("    library  {:<58} {}", case.name, samples.cell());
        out.push((case.name.to_owned(), samples));
    }
    for (name, meter_name, want) in [
        ("usage cpu (sum), month — raw path, no rollups", CPU, expected.cpu),
        (
            "usage active_seconds (integral), month — raw path, no rollups",
            ACTIVE_SECONDS,
            expected.active_seconds,
        ),
    ]
    .into_iter()
    .filter(|(name, ..)| !settings.skips(name))
    {
        let meter = meters.iter().find(|m| m.name == meter_name).expect("a default meter").clone();
        let now = meterd::clock::now_ms();
        let total = raw_usage(store, &meter, month_containing(now), now).await;
        assert_eq!(total, want, "raw path: {meter_name}: total {total}, inserted {want}");
        let samples = sample!(settings.requests, settings.query_budget, {
            let now = meterd::clock::now_ms();
            raw_usage(store, &meter, month_containing(now), now).await
        });
        println!("    library  {name:<58} {}", samples.cell());
        out.push((name.to_owned(), samples));
    }
    out
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// A process's memory from /proc/PID/status, in MiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    rss: f64,
    hwm: f64,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let status = support::ProcStatus::of(pid);
        let field = |name: &str| status.mib(name);
        Self { rss: field("VmRSS:"), hwm: field("VmHWM:") }
    }

    fn cell(&self) -> String {
        format!("{:.0} / {:.0}", self.rss, self.hwm)
    }
}

/// Samples a process's VmRSS every 20 ms and kills it (SIGKILL) above the
/// limit.
struct Watchdog {
    stop: Arc<AtomicBool>,
    tripped: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32, limit_mib: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tripped = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, t, p) = (stop.clone(), tripped.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rss = Memory::of(pid).rss;
                if rss.is_finite() {
                    p.fetch_max((rss * 1024.0) as u64, Ordering::Relaxed);
                    if rss > limit_mib {
                        t.store(true, Ordering::Relaxed);
                        eprintln!(
                            "meterd (pid {pid}) uses {rss:.0} MiB, above the {limit_mib:.0} MiB limit: killing it"
                        );
                        signal(pid, "KILL");
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, tripped, peak_kib, thread: Some(thread) }
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    watchdog: Watchdog,
}

struct Startup {
    listening_s: f64,
    ready_s: f64,
    memory: Memory,
}

/// Why a case was not measured.
struct Skipped(String);

impl Gateway {
    /// `meterd serve` on `database_url` with an admin token; returns once
    /// `/readyz` answers 200.
    async fn start(
        database_url: &str,
        component: &Path,
        cache_dir: &Path,
        limit_mib: f64,
    ) -> Result<(Self, Startup), Skipped> {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let config = support::write_config(dir.path(), component, cache_dir, database_url);
        let text = std::fs::read_to_string(&config).expect("reading the config");
        std::fs::write(
            &config,
            format!("admin_token = \"{ADMIN_TOKEN}\"\nrollup_group_by = [\"template_id\"]\n{text}"),
        )
        .expect("writing the config");
        let started = Instant::now();
        let mut child = spawn_meterd(&config, dir.path());
        let watchdog = Watchdog::start(child.id(), limit_mib);
        let listened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for_listening(&mut child)));
        let addr = match listened {
            Ok(addr) => addr,
            Err(_) if watchdog.tripped() => {
                let _ = child.wait();
                return Err(Skipped(format!(
                    "meterd's RSS passed the {limit_mib:.0} MiB limit during start-up: killed, case skipped"
                )));
            }
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let listening_s = started.elapsed().as_secs_f64();
        let mut gateway = Self { child, _dir: dir, addr, watchdog };
        let mut client = Client::new(addr).await;
        loop {
            if gateway.watchdog.tripped() {
                return Err(Skipped(format!(
                    "meterd's RSS passed the {limit_mib:.0} MiB limit: killed, case skipped"
                )));
            }
            let (status, _) = client.call(Method::GET, "/readyz", None).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "meterd not ready within 300 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready_s = started.elapsed().as_secs_f64();
        let memory = Memory::of(gateway.pid());
        if let Ok(Some(status)) = gateway.child.try_wait() {
            panic!("meterd exited during start-up: {status}");
        }
        Ok((gateway, Startup { listening_s, ready_s, memory }))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (killed after 60 s).
    fn stop(mut self) {
        stop_gracefully(&mut self.child, Duration::from_secs(60));
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

/// One keep-alive connection with the admin token.
struct Client {
    addr: SocketAddr,
    sender: Sender,
    host: HeaderValue,
    auth: HeaderValue,
}

impl Client {
    async fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: connect(addr).await,
            host: host_header(addr),
            auth: HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")).expect("a header value"),
        }
    }

    async fn call(&mut self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Bytes) {
        if self.sender.is_closed() {
            self.sender = connect(self.addr).await;
        }
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .expect("a well-formed request");
        self.sender.ready().await.unwrap_or_else(|e| panic!("{path}: connection: {e}"));
        let response = self.sender.send_request(request).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let bytes =
            response.into_body().collect().await.unwrap_or_else(|e| panic!("{path}: body: {e}")).to_bytes();
        (status, bytes)
    }

    /// A 200 whose body is a `T`, or a panic naming the request.
    async fn json<T: DeserializeOwned>(&mut self, method: Method, path: &str, body: Option<&str>) -> T {
        let (status, bytes) = self.call(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{path}: not a {} ({e}): {}", std::any::type_name::<T>(), String::from_utf8_lossy(&bytes))
        })
    }
}

fn decimal(value: &Quantity) -> Decimal {
    Decimal::from_str(&value.0).unwrap_or_else(|_| panic!("not a decimal: {value}"))
}

const CHECK_BODY: &str = r#"{"action":"sandbox.start","vcpu":2,"memory_mb":1024}"#;

/// HTTP rows: (name, samples).
async fn http_timings(addr: SocketAddr, settings: &Settings, expected: &Expected) -> Vec<(String, Samples)> {
    let mut client = Client::new(addr).await;
    let mut out = Vec::new();
    for case in USAGE_CASES.into_iter().filter(|c| !settings.skips(c.name)) {
        let path = case.path();
        let answer: Usage = client.json(Method::GET, &path, None).await;
        // A window's group: `None` both without grouping and for records
        // without the attribute.
        let windows: Vec<(Option<String>, Decimal)> =
            answer.windows.iter().map(|w| (w.group.clone().flatten(), decimal(&w.value))).collect();
        verify_usage(&case, expected, decimal(&answer.total), &windows, "HTTP");
        let samples = sample!(settings.requests, settings.query_budget, {
            let (status, body) = client.call(Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
        });
        println!("    HTTP     {:<58} {}", case.name, samples.cell());
        out.push((case.name.to_owned(), samples));
    }
    let entitlements = format!("/v1/orgs/{ORG}/entitlements");
    let grants = format!("/v1/orgs/{ORG}/grants");
    let check = format!("/v1/orgs/{ORG}/check");
    let e: Entitlements = client.json(Method::GET, &entitlements, None).await;
    let cpu_used = e.meters.iter().find(|m| m.meter == CPU).map(|m| decimal(&m.used));
    println!(
        "    entitlements: plan {:?}, concurrency {:?}, {CPU} used {}",
        e.org.plan,
        e.concurrency,
        cpu_used.map_or("-".to_owned(), |d| d.to_string())
    );
    if let Some(used) = cpu_used {
        assert_eq!(used, expected.cpu, "entitlements: {CPU} used");
    }
    let c: CheckAnswer = client.json(Method::POST, &check, Some(CHECK_BODY)).await;
    println!("    check: {c:?}");
    for (name, method, path, body) in [
        ("GET entitlements", Method::GET, &entitlements, None),
        ("GET grants", Method::GET, &grants, None),
        ("POST check (sandbox.start)", Method::POST, &check, Some(CHECK_BODY)),
    ] {
        let samples = sample!(settings.requests, settings.query_budget, {
            let (status, bytes) = client.call(method.clone(), path, body).await;
            assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&bytes));
        });
        println!("    HTTP     {name:<58} {}", samples.cell());
        out.push((name.to_owned(), samples));
    }
    out
}

// ---------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------

struct CaseResult {
    label: String,
    records: u64,
    current: u64,
    db_bytes: u64,
    fill_s: f64,
    analyze_s: Option<f64>,
    backfill_s: f64,
    rollup_rows: (u64, u64, u64),
    check_s: f64,
    empty: Option<Startup>,
    startup: Result<Startup, String>,
    after_queries: Option<Memory>,
    library: Vec<(String, Samples)>,
    http: Vec<(String, Samples)>,
}

async fn run_case(
    engine: Engine,
    size: &Size,
    settings: &Settings,
    component: &Path,
    cache: &Path,
) -> CaseResult {
    let label = format!("{} {}", engine.name(), size.name);
    println!("\n== {label}: {} records, {} in the current month", size.total, size.current);
    let database = match engine {
        Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("a temp dir");
            let url = format!("sqlite://{}", dir.path().join("meterd.db").display());
            Database::Sqlite { dir, url }
        }
        Engine::Postgres => {
            let name = format!("meterd_scale_{}_{}", std::process::id(), size.name.replace([':', '.'], "_"));
            Database::Postgres(support::create_database(&settings.postgres, name).await)
        }
    };
    let url = database.url().to_owned();

    // 1. A migrated, empty database.
    let store = open_store(&url).await;
    store.migrate().await.expect("migrating the empty database");
    drop(store);

    // 2. The gateway on it (baseline).
    let empty = match Gateway::start(&url, component, cache, settings.rss_limit_mib).await {
        Ok((gw, startup)) => {
            gw.stop();
            println!(
                "  empty database: listening {:.2} s, ready {:.2} s, VmRSS/VmHWM {} MiB",
                startup.listening_s,
                startup.ready_s,
                startup.memory.cell()
            );
            Some(startup)
        }
        Err(Skipped(why)) => {
            println!("  empty database: {why}");
            None
        }
    };

    // 3. Fill.
    let now_ms = meterd::clock::now_ms();
    let spans = spans(size, now_ms);
    let mut expected = Expected::default();
    let started = Instant::now();
    let records = match engine {
        Engine::Sqlite => fill_sqlite(&url, &spans, settings.seed, &mut expected).await,
        Engine::Postgres => fill_postgres(&url, &spans, settings.seed, &mut expected).await,
    };
    let fill_s = started.elapsed().as_secs_f64();
    let current = spans.last().map_or(0, |s| s.runs * 4);
    println!(
        "  filled {records} records ({current} in the current month) in {fill_s:.1} s: {:.0} records/s",
        records as f64 / fill_s
    );
    let analyze_s = if engine == Engine::Postgres {
        let s = analyze_postgres(&url).await;
        println!("  ANALYZE after filling: {s:.1} s");
        Some(s)
    } else {
        None
    };

    // 4. Back-fill through migrate(), then the check.
    forget_rollups(&url).await;
    let store = open_store(&url).await;
    let started = Instant::now();
    store.migrate().await.expect("migrate (back-fill)");
    let backfill_s = started.elapsed().as_secs_f64();
    let state = rollups_state(&url).await.unwrap_or_default();
    println!(
        "  back-fill (migrate): {backfill_s:.1} s, {:.0} records/s; meterd_state 'rollups' = {state:?}",
        records as f64 / backfill_s
    );
    assert_eq!(state, format!("built from {records} records"), "the back-fill read every record");
    if engine == Engine::Postgres {
        let s = analyze_postgres(&url).await;
        println!("  ANALYZE after the back-fill: {s:.1} s");
    }
    let started = Instant::now();
    let check = store.check_rollups(5).await.expect("check_rollups");
    let check_s = started.elapsed().as_secs_f64();
    println!(
        "  check_rollups: {check_s:.1} s: {} records; {} hours, {} steps, {} months, {} group hours; {} differences",
        check.records, check.hours, check.steps, check.months, check.group_hours, check.differences
    );
    assert_eq!(check.differences, 0, "the rollups differ from the raw records: {:?}", check.examples);
    let db_bytes = database.size_bytes().await;
    println!("  database size: {:.0} MiB", db_bytes as f64 / (1 << 20) as f64);

    // 5. The library, no HTTP.
    println!("  library (p50 / p99 (n)):");
    let library = library_timings(&store, settings, &expected).await;
    drop(store);

    // 6. The gateway on the filled database.
    let (startup, after_queries, http) =
        match Gateway::start(&url, component, cache, settings.rss_limit_mib).await {
            Ok((gw, startup)) => {
                println!(
                    "  gateway: listening {:.2} s, ready {:.2} s, VmRSS/VmHWM {} MiB after start-up",
                    startup.listening_s,
                    startup.ready_s,
                    startup.memory.cell()
                );
                println!("  HTTP (p50 / p99 (n)):");
                let http = http_timings(gw.addr, settings, &expected).await;
                let after = Memory::of(gw.pid());
                let tripped = gw.watchdog.tripped();
                let peak = gw.watchdog.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
                println!(
                    "  gateway VmRSS/VmHWM {} MiB after the queries (watchdog peak {peak:.0} MiB)",
                    after.cell()
                );
                gw.stop();
                assert!(!tripped, "the watchdog killed meterd");
                (Ok(startup), Some(after), http)
            }
            Err(Skipped(why)) => {
                println!("  SKIPPED: {why}");
                (Err(why), None, Vec::new())
            }
        };
    drop(database);
    CaseResult {
        label,
        records,
        current,
        db_bytes,
        fill_s,
        analyze_s,
        backfill_s,
        rollup_rows: (check.hours, check.steps, check.months),
        check_s,
        empty,
        startup,
        after_queries,
        library,
        http,
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(results: &[CaseResult]) {
    println!("\n## Results\n");
    println!(
        "| case | records (current month) | DB MiB | fill s (records/s) | back-fill s (records/s) | rollup rows h/s/m | check s | ready s, empty DB | ready s (listening s) | VmRSS / VmHWM MiB after start | after queries |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (ready, start_mem) = match &r.startup {
            Ok(s) => (format!("{:.2} ({:.2})", s.ready_s, s.listening_s), s.memory.cell()),
            Err(why) => (format!("skipped: {why}"), "–".to_owned()),
        };
        println!(
            "| {} | {} ({}) | {:.0} | {:.1} ({}) {}| {:.1} ({}) | {} / {} / {} | {:.1} | {} | {} | {} | {} |",
            r.label,
            thousands(r.records),
            thousands(r.current),
            r.db_bytes as f64 / (1 << 20) as f64,
            r.fill_s,
            thousands((r.records as f64 / r.fill_s) as u64),
            r.analyze_s.map_or(String::new(), |a| format!("+ ANALYZE {a:.1} ")),
            r.backfill_s,
            thousands((r.records as f64 / r.backfill_s) as u64),
            thousands(r.rollup_rows.0),
            thousands(r.rollup_rows.1),
            thousands(r.rollup_rows.2),
            r.check_s,
            r.empty.as_ref().map_or("–".to_owned(), |e| format!(
                "{:.2} ({} MiB)",
                e.ready_s,
                e.memory.cell()
            )),
            ready,
            start_mem,
            r.after_queries.map_or("–".to_owned(), |m| m.cell()),
        );
    }
    println!("\nLatency, p50 / p99 (samples):\n");
    let mut header = String::from("| query | path |");
    let mut rule = String::from("|---|---|");
    for r in results {
        let _ = write!(header, " {} |", r.label);
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    let mut names: Vec<(String, &'static str)> = Vec::new();
    for r in results {
        for (n, _) in &r.library {
            if !names.iter().any(|(x, p)| x == n && *p == "library") {
                names.push((n.clone(), "library"));
            }
        }
    }
    for r in results {
        for (n, _) in &r.http {
            if !names.iter().any(|(x, p)| x == n && *p == "HTTP") {
                names.push((n.clone(), "HTTP"));
            }
        }
    }
    // HTTP rows first, then the library's, each in run order.
    names.sort_by_key(|(_, p)| if *p == "HTTP" { 0 } else { 1 });
    for (name, path) in names {
        let mut line = format!("| {name} | {path} |");
        for r in results {
            let rows = if path == "HTTP" { &r.http } else { &r.library };
            let cell = rows.iter().find(|(n, _)| *n == name).map_or("–".to_owned(), |(_, s)| s.cell());
            let _ = write!(line, " {cell} |");
        }
        println!("{line}");
    }
}

fn main() {
    let settings = Settings::from_env();
    println!("scale: {}", support::machine_line());
    println!(
        "sizes {:?}, engines {:?}, ≤ {} requests per query (≤ {:.0} s each), RSS limit {:.0} MiB, seed {}",
        settings.sizes.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        settings.engines.iter().map(|e| e.name()).collect::<Vec<_>>(),
        settings.requests,
        settings.query_budget.as_secs_f64(),
        settings.rss_limit_mib,
        settings.seed
    );
    let component: PathBuf = support::component("e2b");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let results = runtime.block_on(async {
        // Warm the compiled-code cache, so no case's start-up compiles the
        // component.
        let cache = tempfile::tempdir().expect("a temp dir");
        let warm = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", warm.path().join("warm.db").display());
        match Gateway::start(&url, &component, cache.path(), settings.rss_limit_mib).await {
            Ok((gw, s)) => {
                println!("warm-up start (compiles the component into the cache): ready {:.2} s", s.ready_s);
                gw.stop();
            }
            Err(Skipped(why)) => panic!("the warm-up gateway did not start: {why}"),
        }
        let mut results = Vec::new();
        for size in &settings.sizes {
            for &engine in &settings.engines {
                results.push(run_case(engine, size, &settings, &component, cache.path()).await);
            }
        }
        results
    });
    report(&results);
    let own = Memory::of(std::process::id());
    println!("\nbench process VmRSS/VmHWM {} MiB", own.cell());
}
