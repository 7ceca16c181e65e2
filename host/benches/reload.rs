//! Hot reload: how long from a component landing in the plugins directory
//! (renamed into place) to the new version serving, and what a swap does to
//! webhook throughput.
//!
//! Runs the real `meterd` release binary with the e2b component and swaps
//! it with the test-only rebuild (`tests/plugins/e2b-next`, another
//! `info()` version) back and forth.
//!
//! - `latency`: time from the rename to `GET /v1/plugins` showing the new
//!   version, polled every millisecond; once with the compiled-code cache
//!   emptied before each swap (so it includes compilation) and once with
//!   both versions cached. Idle gateway.
//! - `throughput`: closed-loop signed webhooks over `METERD_BENCH_CONNECTIONS`
//!   (default 32) keep-alive connections for `METERD_BENCH_SECONDS` (default
//!   8) without swaps, then as long again with a swap every 500 ms; reports
//!   webhooks/s, failures and the slowest request of each.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meterd::api::ops::Plugins;
use support::{E2B_SECRET, e2b_signature, env_number, env_seconds, filters, format_ns, percentile, selected};

struct Gateway {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        std::fs::copy(support::component("e2b"), plugins.join("e2b.wasm")).expect("e2b");
        let config = dir.path().join("meterd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://{}\"\nplugins_dir = \"{}\"\ncache_dir = \"{}\"\n\n[plugins.e2b]\nsignature_secret = \"{E2B_SECRET}\"\n",
                dir.path().join("meterd.db").display(),
                plugins.display(),
                dir.path().join("cache").display()
            ),
        )
        .expect("config");
        let mut child = support::serve_command(&config, dir.path())
            .env("METERD_LOG", "error")
            .spawn()
            .expect("starting meterd");
        let addr = meterd_testkit::gateway::listening(&mut child, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!("http://{addr}");
        Self { child, base, dir }
    }

    fn plugin_file(&self) -> PathBuf {
        self.dir.path().join("plugins").join("e2b.wasm")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("writing the component");
    std::fs::rename(&tmp, path).expect("renaming it into place");
}

async fn serving_version(client: &reqwest::Client, base: &str) -> String {
    let body: Plugins = client
        .get(format!("{base}/v1/plugins"))
        .send()
        .await
        .expect("GET /v1/plugins")
        .json()
        .await
        .expect("the plugins' status");
    body.plugins.into_iter().find(|p| p.name == "e2b").map_or_else(|| "-".to_owned(), |p| p.version)
}

/// Renames `bytes` into place and waits until `version` serves.
async fn swap(gw: &Gateway, client: &reqwest::Client, bytes: &[u8], version: &str) -> Duration {
    let start = Instant::now();
    replace_atomically(&gw.plugin_file(), bytes);
    loop {
        if serving_version(client, &gw.base).await == version {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{version} never served");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Versions {
    original: Vec<u8>,
    original_version: String,
    rebuilt: Vec<u8>,
    rebuilt_version: String,
}

async fn latency(gw: &Gateway, versions: &Versions, rounds: usize) {
    let client = reqwest::Client::new();
    for cached in [false, true] {
        let mut samples = Vec::new();
        for round in 0..rounds {
            if !cached {
                let _ = std::fs::remove_dir_all(gw.cache_dir());
            }
            let (bytes, version) = if round % 2 == 0 {
                (&versions.rebuilt, &versions.rebuilt_version)
            } else {
                (&versions.original, &versions.original_version)
            };
            samples.push(swap(gw, &client, bytes, version).await.as_nanos() as f64);
            // Let the gateway settle between swaps.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "latency   {:<22} n={rounds:<3} median {:>9}  p90 {:>9}  max {:>9}",
            if cached { "cached (no compile)" } else { "compile (cache emptied)" },
            format_ns(percentile(&samples, 50.0)),
            format_ns(percentile(&samples, 90.0)),
            format_ns(*samples.last().unwrap_or(&0.0)),
        );
    }
}

/// Closed-loop webhooks for `seconds`; with `swaps`, swaps versions every
/// 500 ms meanwhile. Prints the rate, failures and slowest request.
async fn throughput(gw: &Gateway, versions: &Versions, connections: usize, seconds: Duration, swaps: bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, slowest) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let run = format!("{}-{}", if swaps { "swap" } else { "steady" }, std::process::id());
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (stop, ok, failed, slowest) = (stop.clone(), ok.clone(), failed.clone(), slowest.clone());
        let url = format!("{}/v1/ingest/e2b", gw.base);
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = serde_json::json!({
                    "id": format!("{run}-{c}-{n}"), "version": "v2", "type": "sandbox.lifecycle.killed",
                    "timestamp": "2025-08-10T12:00:00Z", "sandbox_id": format!("sbx-{c}"),
                    "sandbox_team_id": "bench-org", "sandbox_template_id": "base",
                    "event_data": { "execution": { "vcpu_count": 2, "memory_mb": 512, "execution_time": 1000 } },
                })
                .to_string();
                let signature = e2b_signature(E2B_SECRET, body.as_bytes());
                let start = Instant::now();
                let answer = client
                    .post(&url)
                    .header("e2b-signature", signature)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                slowest.fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match answer {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    let mut swapped = 0;
    if swaps {
        let client = reqwest::Client::new();
        while start.elapsed() < seconds {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (bytes, version) = if swapped % 2 == 0 {
                (&versions.rebuilt, &versions.rebuilt_version)
            } else {
                (&versions.original, &versions.original_version)
            };
            swap(gw, &client, bytes, version).await;
            swapped += 1;
        }
    } else {
        tokio::time::sleep(seconds).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "throughput {:<21} {:>7.0} webhooks/s  failed {:<3} slowest {:>9}  swaps {swapped}",
        if swaps { "with a swap every 500 ms" } else { "steady" },
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        format_ns(slowest.load(Ordering::Relaxed) as f64),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed: the run is INVALID");
}

#[tokio::main]
async fn main() {
    let filters = filters();
    println!("reload bench on {}", support::machine_line());
    let versions = Versions {
        original: std::fs::read(support::component("e2b")).expect("e2b"),
        original_version: env!("CARGO_PKG_VERSION").to_owned(),
        rebuilt: std::fs::read(meterd_plugin_build::test_component("e2b").expect("e2b-next"))
            .expect("e2b-next"),
        rebuilt_version: "0.1.1-next".to_owned(),
    };
    if selected(&filters, "latency") {
        let gw = Gateway::start();
        latency(&gw, &versions, env_number("METERD_BENCH_ROUNDS", 10)).await;
    }
    if selected(&filters, "throughput") {
        let gw = Gateway::start();
        let connections = env_number("METERD_BENCH_CONNECTIONS", 32);
        let seconds = env_seconds("METERD_BENCH_SECONDS", 8.0);
        throughput(&gw, &versions, connections, Duration::from_secs(1), false).await; // warm-up
        throughput(&gw, &versions, connections, seconds, false).await;
        throughput(&gw, &versions, connections, seconds, true).await;
    }
}
