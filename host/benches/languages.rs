//! What a plugin in another language costs: load time (compile, or read
//! the compiled-code cache, then instantiate and call `info()`) and the
//! cost of one webhook call on a warm instance, for the Python
//! (componentize-py) and JavaScript (componentize-js) signed-JSON
//! adapters, next to the Rust E2B adapter doing comparable work (verify a
//! body signature, parse JSON, build records).
//!
//! Run: `cargo bench -p meterd --bench languages` (filters: words after
//! `--` select plugins by name). Knobs: `METERD_BENCH_SAMPLES` (default 15
//! samples of the call cost), `METERD_BENCH_SAMPLE_SECONDS` (default 0.2),
//! `METERD_BENCH_LOADS` (default 3 loads of each kind).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meterd::plugin::{InboundRequest, PluginSettings};
use meterd::runtime::{LoadedPlugin, Runtime, RuntimeSettings};
use meterd_testkit::signed_json_signature;

use support::{E2B_SECRET, component, e2b_signature, fixture, format_ns, median, percentile};

const SECRET: &str = "bench-secret";

/// One plugin under test: its component and a request it accepts.
struct Subject {
    name: &'static str,
    component: PathBuf,
    settings: PluginSettings,
    request: InboundRequest,
}

fn signed_json_request() -> InboundRequest {
    let body = r#"{"id":"evt-bench","org":"acme","records":[{"subject":"sbx-1","metric":"sandbox_cpu_core_seconds","kind":"delta","quantity":"144.246","at":"2025-08-06T20:59:36.123Z","window_start":"2025-08-06T20:58:24Z","attributes":{"template_id":"base"}},{"subject":"sbx-1","metric":"sandbox_ram_gibi_seconds","kind":"delta","quantity":"36.0615","at":"2025-08-06T20:59:36.123Z","window_start":"2025-08-06T20:58:24Z","attributes":{"template_id":"base"}},{"subject":"sbx-1","metric":"sandbox_active","kind":"level","quantity":"0","at":"2025-08-06T20:59:36.123Z"}]}"#;
    InboundRequest {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: None,
        headers: vec![("x-meterd-signature".to_owned(), signed_json_signature(SECRET, body.as_bytes()))],
        body: body.as_bytes().to_vec(),
    }
}

fn e2b_request() -> InboundRequest {
    let body = fixture("e2b/webhook-killed.constructed.body.json");
    let signature = e2b_signature(E2B_SECRET, &body);
    InboundRequest {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: None,
        headers: vec![("e2b-signature".to_owned(), signature)],
        body,
    }
}

fn subjects() -> Vec<Subject> {
    let signed_json = |name: &'static str| Subject {
        name,
        component: meterd_testkit::language_component(name),
        settings: PluginSettings::from([("signature_secret".to_owned(), SECRET.to_owned())]),
        request: signed_json_request(),
    };
    vec![
        Subject {
            name: "e2b (Rust)",
            component: component("e2b"),
            settings: PluginSettings::from([
                ("signature_secret".to_owned(), E2B_SECRET.to_owned()),
                ("org_metadata_key".to_owned(), "tenant".to_owned()),
            ]),
            request: e2b_request(),
        },
        signed_json("signed-json-py"),
        signed_json("signed-json-js"),
    ]
}

fn main() {
    let filters = support::filters();
    let samples = support::env_number("METERD_BENCH_SAMPLES", 15usize).max(1);
    let sample_time = support::env_seconds("METERD_BENCH_SAMPLE_SECONDS", 0.2);
    let loads = support::env_number("METERD_BENCH_LOADS", 3usize).max(1);
    println!("{}", support::machine_line());
    println!(
        "{:<16} {:>9} {:>14} {:>14} {:>12} {:>12} {:>12}",
        "plugin", "size MiB", "load, compile", "load, cached", "call p50", "call p99", "calls/s/core"
    );
    for subject in subjects().into_iter().filter(|s| support::selected(&filters, s.name)) {
        let bytes = std::fs::read(&subject.component).expect("reading the component");
        let cache = tempfile::tempdir().expect("temp dir");
        let (mut compile, mut cached) = (Vec::new(), Vec::new());
        for _ in 0..loads {
            // A fresh cache directory: the load compiles.
            let empty = tempfile::tempdir().expect("temp dir");
            compile.push(load_seconds(&bytes, &subject, Some(empty.path().to_owned())).0);
            // The shared one: the first load fills it, the rest read it.
            let (seconds, from_cache) = load_seconds(&bytes, &subject, Some(cache.path().to_owned()));
            if from_cache {
                cached.push(seconds);
            }
        }
        let (_, _, plugin) = load(&bytes, &subject, Some(cache.path().to_owned()));
        let (p50, p99, per_second) = call_cost(&plugin, &subject.request, samples, sample_time);
        println!(
            "{:<16} {:>9.1} {:>13.2}s {:>13.3}s {:>12} {:>12} {:>12.0}",
            subject.name,
            bytes.len() as f64 / (1 << 20) as f64,
            median(&mut compile),
            if cached.is_empty() { f64::NAN } else { median(&mut cached) },
            format_ns(p50),
            format_ns(p99),
            per_second,
        );
    }
}

fn load(bytes: &[u8], subject: &Subject, cache_dir: Option<PathBuf>) -> (f64, bool, LoadedPlugin) {
    let runtime = Runtime::new(RuntimeSettings { cache_dir, ..RuntimeSettings::default() }).expect("runtime");
    let started = Instant::now();
    let plugin = runtime.load(bytes, subject.settings.clone()).expect("the plugin loads");
    (started.elapsed().as_secs_f64(), plugin.compiled_from_cache(), plugin)
}

fn load_seconds(bytes: &[u8], subject: &Subject, cache_dir: Option<PathBuf>) -> (f64, bool) {
    let (seconds, from_cache, _) = load(bytes, subject, cache_dir);
    (seconds, from_cache)
}

/// Per-call p50 and p99 (ns) over `samples` samples of `sample_time` each
/// on a warm instance, and calls per second on one core.
fn call_cost(
    plugin: &LoadedPlugin,
    request: &InboundRequest,
    samples: usize,
    sample_time: Duration,
) -> (f64, f64, f64) {
    // Warm up: the first call makes the instance.
    for _ in 0..20 {
        plugin.handle_webhook(request).expect("the plugin accepts the request");
    }
    let mut per_call = Vec::new();
    let mut sample_means = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        let mut calls = 0u32;
        while started.elapsed() < sample_time {
            let call = Instant::now();
            let outcome = plugin.handle_webhook(request).expect("the plugin accepts the request");
            per_call.push(call.elapsed().as_nanos() as f64);
            std::hint::black_box(outcome);
            calls += 1;
        }
        sample_means.push(started.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    per_call.sort_by(f64::total_cmp);
    let mean = median(&mut sample_means);
    (percentile(&per_call, 50.0), percentile(&per_call, 99.0), 1e9 / mean)
}
