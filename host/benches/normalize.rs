//! Per-event cost of verifying and normalizing one signed E2B webhook:
//! natively (the plugin crate's functions called directly) against the same
//! code compiled to a WebAssembly component and run by meterd's runtime,
//! with a warm instance reused across calls and with a fresh pooled
//! instance per call.
//!
//! Two extra WebAssembly cases split the cost: a request with a wrong
//! signature (the plugin hashes the body and stops before parsing it) and
//! the test-only `chaos` plugin's `ok:` command (no hashing, no JSON: what a
//! call costs before the plugin does any work).
//!
//! Run: `cargo bench -p meterd --bench normalize` (filters: words after
//! `--` select cases by name). Knobs: `METERD_BENCH_SAMPLES` (default 15),
//! `METERD_BENCH_SAMPLE_SECONDS` (default 0.1).

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use meterd::plugin::{InboundRequest, PluginSettings};
use meterd::runtime::{LoadedPlugin, Runtime, RuntimeSettings};
use meterd_plugin_e2b::{normalize, verify_signature};

use support::{E2B_SECRET, format_ns, median, percentile};

const FIXTURE_BODY: &str = "e2b/webhook-killed.constructed.body.json";
const FIXTURE_HEADERS: &str = "e2b/webhook-killed.constructed.headers.json";
const ORG_METADATA_KEY: &str = "tenant";
/// The acceptance target for WebAssembly, as a multiple of native (set for
/// the warm path; the fresh path is judged against it too, for contrast).
const TARGET_RATIO: f64 = 1.5;

// Case names: printed, and matched by command-line filters.
const NATIVE: &str = "native: verify + normalize";
const NATIVE_VERIFY: &str = "native: verify only";
const NATIVE_NORMALIZE: &str = "native: normalize only";
const WASM_WARM: &str = "wasm, warm instance: verify + normalize";
const WASM_FRESH: &str = "wasm, fresh instance per call: verify + normalize";
const WASM_BAD_SIGNATURE: &str = "wasm, warm: bad signature (hash, no parse)";
const WASM_FLOOR: &str = "wasm, warm: chaos `ok:` (call floor)";

/// How long and how often each case runs.
struct Harness {
    warmup: Duration,
    samples: usize,
    sample_time: Duration,
    /// Time spent timing calls one by one, for per-call percentiles.
    latency_time: Duration,
}

impl Harness {
    fn from_env() -> Self {
        Self {
            warmup: Duration::from_millis(300),
            samples: support::env_number("METERD_BENCH_SAMPLES", 15usize).max(1),
            sample_time: support::env_seconds("METERD_BENCH_SAMPLE_SECONDS", 0.1),
            latency_time: Duration::from_millis(500),
        }
    }
}

/// One case's result.
struct Measurement {
    name: &'static str,
    /// Median over samples of the mean time per operation in that sample.
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    /// Percentiles of calls timed one at a time (include ~20 ns of clock).
    call_p50_ns: f64,
    call_p99_ns: f64,
}

/// A named operation to time.
struct Case<'a> {
    name: &'static str,
    op: Box<dyn FnMut() + 'a>,
}

impl<'a> Case<'a> {
    fn new(name: &'static str, op: impl FnMut() + 'a) -> Self {
        Self { name, op: Box::new(op) }
    }
}

/// Times every case: warm-up and batch sizing per case, then `samples`
/// rounds in which each case times one batch (ns/op = batch time / batch
/// size), then single calls for percentiles. Interleaving the rounds makes
/// drift of a shared VM (frequency, neighbours) hit every case alike, which
/// keeps the ratios honest; batches hide the clock's own cost, single calls
/// show the tails.
fn measure_all(cases: &mut [Case<'_>], harness: &Harness) -> Vec<Measurement> {
    let per_op: Vec<f64> = cases.iter_mut().map(|case| warm_up(&mut case.op, harness.warmup)).collect();
    let batches: Vec<u64> =
        per_op.iter().map(|t| ((harness.sample_time.as_secs_f64() / t) as u64).max(1)).collect();
    let mut samples = vec![Vec::with_capacity(harness.samples); cases.len()];
    for _ in 0..harness.samples {
        for (i, case) in cases.iter_mut().enumerate() {
            samples[i].push(time_batch(&mut case.op, batches[i]));
        }
    }
    cases
        .iter_mut()
        .zip(samples)
        .zip(per_op)
        .map(|((case, mut samples), per_op)| {
            let calls = ((harness.latency_time.as_secs_f64() / per_op) as usize).clamp(1_000, 200_000);
            let single = time_calls(&mut case.op, calls);
            let median_ns = median(&mut samples);
            Measurement {
                name: case.name,
                median_ns,
                min_ns: samples[0],
                max_ns: samples[samples.len() - 1],
                call_p50_ns: percentile(&single, 50.0) as f64,
                call_p99_ns: percentile(&single, 99.0) as f64,
            }
        })
        .collect()
}

/// Runs `op` for `duration` and returns the mean seconds per call.
fn warm_up(op: &mut dyn FnMut(), duration: Duration) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < duration {
        op();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// Mean ns per call over `batch` back-to-back calls.
fn time_batch(op: &mut dyn FnMut(), batch: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..batch {
        op();
    }
    start.elapsed().as_nanos() as f64 / batch as f64
}

/// Each of `calls` calls timed on its own, ns, sorted.
fn time_calls(op: &mut dyn FnMut(), calls: usize) -> Vec<u64> {
    let mut times: Vec<u64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed().as_nanos() as u64
        })
        .collect();
    times.sort_unstable();
    times
}

/// The signed fixture delivery, as the gateway would hand it to a plugin.
struct Webhook {
    body: Vec<u8>,
    signature: String,
    request: InboundRequest,
}

impl Webhook {
    /// The fixture body with the fixture's headers, signed afresh (the
    /// benchmark must not depend on the fixture's signature staying valid).
    fn fixture() -> Self {
        let body = support::fixture(FIXTURE_BODY);
        let signature = support::e2b_signature(E2B_SECRET, &body);
        let fixture_headers: BTreeMap<String, String> =
            serde_json::from_slice(&support::fixture(FIXTURE_HEADERS))
                .expect("the headers fixture is a JSON object of strings");
        let headers = fixture_headers
            .into_iter()
            .map(|(name, value)| match name.as_str() {
                "content-type" => (name, "application/json".to_owned()),
                "e2b-signature" => (name, signature.clone()),
                _ => (name, value),
            })
            .collect();
        let request = InboundRequest {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: None,
            headers,
            body: body.clone(),
        };
        Self { body, signature, request }
    }

    /// The same delivery with a signature that does not match.
    fn badly_signed(&self) -> InboundRequest {
        let mut request = self.request.clone();
        let wrong = support::e2b_signature("not-the-secret", &self.body);
        for (name, value) in &mut request.headers {
            if name == "e2b-signature" {
                value.clone_from(&wrong);
            }
        }
        request
    }
}

fn e2b_settings() -> PluginSettings {
    PluginSettings::from([
        ("signature_secret".to_owned(), E2B_SECRET.to_owned()),
        ("org_metadata_key".to_owned(), ORG_METADATA_KEY.to_owned()),
    ])
}

/// Loads a component into a runtime of its own, configured as given.
fn load(component: &[u8], settings: PluginSettings, runtime: RuntimeSettings) -> LoadedPlugin {
    Runtime::new(runtime)
        .expect("starting the plugin runtime")
        .load(component, settings)
        .expect("loading the component")
}

/// The native path, exactly what the component's `handle_webhook` does
/// after reading its config and headers.
fn native_verify_and_normalize(webhook: &Webhook) -> usize {
    verify_signature(E2B_SECRET, &webhook.body, Some(&webhook.signature), Some("v1"))
        .expect("the fixture is correctly signed");
    normalize(&webhook.body, ORG_METADATA_KEY).expect("the fixture normalizes").records.len()
}

/// Checks that the component answers exactly what the native code does, so
/// the two sides of the ratio do the same work.
fn assert_same_answer(webhook: &Webhook, plugin: &LoadedPlugin) {
    let native = normalize(&webhook.body, ORG_METADATA_KEY).expect("native normalize");
    let wasm = plugin.handle_webhook(&webhook.request).expect("the component accepts the fixture");
    assert_eq!(wasm.event_id, native.event_id);
    let native_records: Vec<(&str, &str)> =
        native.records.iter().map(|r| (r.metric.as_str(), r.quantity.as_str())).collect();
    let wasm_records: Vec<(&str, &str)> =
        wasm.records.iter().map(|r| (r.metric.as_str(), r.quantity.as_str())).collect();
    assert_eq!(wasm_records, native_records, "native and WASM disagree");
}

fn print_table(results: &[Measurement]) {
    let native = results.iter().find(|m| m.name == NATIVE).map(|m| m.median_ns);
    println!();
    println!("| case | median ns/op | min–max of samples | per-call p50 | per-call p99 | × native |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in results {
        let ratio = native.map_or("–".to_owned(), |n| format!("{:.2}×", m.median_ns / n));
        println!(
            "| {} | {:.0} | {:.0}–{:.0} | {} | {} | {ratio} |",
            m.name,
            m.median_ns,
            m.min_ns,
            m.max_ns,
            format_ns(m.call_p50_ns),
            format_ns(m.call_p99_ns),
        );
    }
}

/// The targets, judged on medians; the ratio of the fastest samples is
/// printed too, as a shared VM's slow phases inflate medians unevenly.
fn print_verdict(results: &[Measurement]) {
    let find = |name: &str| results.iter().find(|m| m.name == name);
    let Some(native) = find(NATIVE) else {
        return;
    };
    for name in [WASM_WARM, WASM_FRESH] {
        if let Some(wasm) = find(name) {
            let ratio = wasm.median_ns / native.median_ns;
            let verdict = if ratio <= TARGET_RATIO { "met" } else { "NOT met" };
            println!(
                "{name}: {ratio:.2}× native (target ≤ {TARGET_RATIO}×: {verdict}; {} vs {}; fastest samples: {:.2}×)",
                format_ns(wasm.median_ns),
                format_ns(native.median_ns),
                wasm.min_ns / native.min_ns
            );
        }
    }
}

fn main() {
    let harness = Harness::from_env();
    let filters = support::filters();
    let wanted = |name: &str| support::selected(&filters, name);
    println!(
        "normalize benchmark: {} samples × {:?} per case; machine: {}",
        harness.samples,
        harness.sample_time,
        support::machine_line()
    );
    let webhook = Webhook::fixture();
    let e2b = std::fs::read(support::component("e2b")).expect("reading the e2b component");
    let chaos = std::fs::read(support::component("chaos")).expect("reading the chaos component");
    let warm = load(&e2b, e2b_settings(), RuntimeSettings::default());
    let fresh =
        load(&e2b, e2b_settings(), RuntimeSettings { warm_instances: 0, ..RuntimeSettings::default() });
    let floor = load(&chaos, PluginSettings::new(), RuntimeSettings::default());
    assert_same_answer(&webhook, &warm);
    assert_same_answer(&webhook, &fresh);
    let badly_signed = webhook.badly_signed();
    let chaos_request =
        InboundRequest { body: b"ok:bench-event".to_vec(), headers: Vec::new(), ..webhook.request.clone() };

    let mut cases = vec![
        Case::new(NATIVE, || {
            black_box(native_verify_and_normalize(black_box(&webhook)));
        }),
        Case::new(NATIVE_VERIFY, || {
            let body = black_box(&webhook.body);
            black_box(verify_signature(E2B_SECRET, body, Some(&webhook.signature), Some("v1")))
                .expect("signed");
        }),
        Case::new(NATIVE_NORMALIZE, || {
            black_box(normalize(black_box(&webhook.body), ORG_METADATA_KEY)).expect("normalizes");
        }),
        Case::new(WASM_WARM, || {
            black_box(warm.handle_webhook(black_box(&webhook.request))).expect("accepted");
        }),
        Case::new(WASM_FRESH, || {
            black_box(fresh.handle_webhook(black_box(&webhook.request))).expect("accepted");
        }),
        Case::new(WASM_BAD_SIGNATURE, || {
            let answer = black_box(warm.handle_webhook(black_box(&badly_signed)));
            assert!(answer.is_err(), "a wrong signature must be refused");
        }),
        Case::new(WASM_FLOOR, || {
            black_box(floor.handle_webhook(black_box(&chaos_request))).expect("chaos ok");
        }),
    ];
    cases.retain(|case| wanted(case.name));
    let results = measure_all(&mut cases, &harness);
    drop(cases);

    print_table(&results);
    println!();
    print_verdict(&results);
}
