//! Cost of one poll cycle of the Daytona plugin: `poll(target, cursor)`
//! through meterd's runtime against a local server speaking the analytics
//! API (one new window plus eight re-read look-back windows = 9 HTTP GETs),
//! then committing its 36 records with the cursor to a real SQLite file.
//!
//! For scale it also measures the same 9 GETs sent straight from the host
//! (the network floor the plugin cannot go below).
//!
//! Run: `cargo bench -p meterd --bench poll`. Knob: `METERD_BENCH_SAMPLES`
//! (cycles per case, default 200).

mod support;

use std::time::Instant;

use meterd::plugin::PluginSettings;
use meterd::store::{PollCommit, Polls, SqliteStore, Store};

use support::{format_ns, percentile};

const MINUTE: i64 = 60_000;
const ORG: &str = "bench-org";
const BODY: &str = r#"{"totalCPUSeconds": 60.0, "totalRAMGBSeconds": 120.0, "totalDiskGBSeconds": 300.0, "totalGPUSeconds": 0, "sandboxCount": 1}"#;

async fn start_upstream() -> String {
    let app = axum::Router::new().route(
        "/organization/{org}/usage/aggregated",
        axum::routing::get(|| async { ([("content-type", "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn report(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<52} median {:>10}  p99 {:>10}  ({} cycles)",
        format_ns(percentile(&samples, 0.5)),
        format_ns(percentile(&samples, 0.99)),
        samples.len()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(run());
}

async fn run() {
    println!("{}", support::machine_line());
    let samples: usize = support::env_number("METERD_BENCH_SAMPLES", 200);
    let url = start_upstream().await;
    let now_minute = meterd::clock::now_ms() / MINUTE * MINUTE;
    let settings = PluginSettings::from([
        ("analytics_url".to_owned(), url.clone()),
        ("api_key".to_owned(), "bench-key".to_owned()),
        ("organizations".to_owned(), format!("[\"{ORG}\"]")),
        ("window".to_owned(), "1m".to_owned()),
        ("settle_lag".to_owned(), "0m".to_owned()),
        ("lookback".to_owned(), "8m".to_owned()),
        ("max_windows_per_poll".to_owned(), "1".to_owned()),
        ("http_allow".to_owned(), "[\"http://127.0.0.1:*\"]".to_owned()),
    ]);
    let plugin = support::load_plugin("daytona", settings).await;
    // A cursor a minute back: every cycle reads 1 new + 8 look-back windows.
    let cursor = (now_minute - MINUTE).to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("poll.db").display()))
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    store.acquire_lease("daytona", ORG, "bench", 0, i64::MAX).await.expect("lease");

    let (mut poll_ns, mut commit_ns, mut floor_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut records_per_poll = 0;
    for i in 0..samples + 10 {
        let (p, c) = (plugin.clone(), cursor.clone());
        let started = Instant::now();
        let outcome =
            tokio::task::spawn_blocking(move || p.poll(ORG, Some(&c))).await.expect("task").expect("poll");
        let polled = started.elapsed();
        records_per_poll = outcome.records.len();
        let records = meterd::record::validate_all(outcome.records).expect("valid records");
        let commit = PollCommit {
            plugin: "daytona".into(),
            target: ORG.into(),
            holder: "bench".into(),
            records,
            next_cursor: outcome.next_cursor,
            now_ms: meterd::clock::now_ms(),
            next_run_ms: 0,
            lease_expires_ms: i64::MAX,
        };
        let started = Instant::now();
        store.commit_poll(&commit).await.expect("commit");
        let committed = started.elapsed();
        if i >= 10 {
            poll_ns.push(polled.as_nanos() as f64);
            commit_ns.push(committed.as_nanos() as f64);
        }
    }
    let client = reqwest::Client::new();
    for i in 0..samples + 10 {
        let started = Instant::now();
        for w in 0..9 {
            let to = now_minute - w * MINUTE;
            let response = client
                .get(format!("{url}/organization/{ORG}/usage/aggregated?from={}&to={to}", to - MINUTE))
                .bearer_auth("bench-key")
                .send()
                .await
                .expect("GET");
            response.bytes().await.expect("body");
        }
        if i >= 10 {
            floor_ns.push(started.elapsed().as_nanos() as f64);
        }
    }
    println!("one cycle = 9 windows → {records_per_poll} records");
    report("poll (wasm + 9 http-send GETs), per cycle", poll_ns);
    report("commit records + cursor (SQLite, FULL sync), per cycle", commit_ns);
    report("same 9 GETs straight from the host (floor)", floor_ns);
}
