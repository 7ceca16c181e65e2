//! What both benchmarks share: knobs from the environment, order
//! statistics, the E2B signature, fixtures and freshly built components.
//!
//! The benchmarks use a small hand-written harness rather than a framework:
//! the numbers that matter here (median ns/op, latency percentiles measured
//! from the scheduled send time) are a few lines each, and a framework
//! would add a heavy dependency tree to every `cargo bench` build.

#![allow(dead_code)] // each benchmark uses a different part

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The secret the E2B fixtures are signed with (tests/fixtures/e2b).
pub const E2B_SECRET: &str = "test-signature-secret-1";

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

/// base64(SHA-256(secret ‖ body)): E2B's webhook signature.
pub fn e2b_signature(secret: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.update(body);
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// A file under the repository's tests/fixtures.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// Builds every plugin once per process (incremental: seconds when nothing
/// changed), so a benchmark never measures a stale component, and returns
/// where `name` is.
pub fn component(name: &str) -> PathBuf {
    meterd_plugin_build::component(name).expect("building the plugins")
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
