//! Operating a gateway: `/metrics` moves by exactly what happened and is
//! well-formed Prometheus text, request ids come back (given or made), and
//! `--log-format json` / `METERD_LOG_FORMAT=json` write one JSON object a
//! line with no secret in any of them.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterd::api::ops::Receipt;
use support::{E2B_SECRET, Gateway, Options, e2b_event, e2b_signature, meterd_command};

/// One scrape: every sample, by its series as written (`name{labels}`).
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// A series' value; one that is not there yet is 0.
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(gw: &Gateway) -> Scrape {
    let response = gw.client.get(gw.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "/metrics needs no token");
    let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse(&response.text().await.expect("metrics body"))
}

/// Parses the exposition, failing on any line that is not `# HELP name …`,
/// `# TYPE name counter|gauge|histogram` or `name{labels} value` of a
/// family declared above it; counters must end in `_total`.
fn parse(text: &str) -> Scrape {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').unwrap_or_else(|| panic!("bad comment {line:?}"));
            let (name, value) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(metric_name(name).is_some_and(|(n, tail)| n == name && tail.is_empty()), "{line:?}");
            match keyword {
                "HELP" => assert!(!value.is_empty(), "{line:?}"),
                "TYPE" => {
                    assert!(["counter", "gauge", "histogram"].contains(&value), "{line:?}");
                    assert!(
                        value != "counter" || name.ends_with("_total"),
                        "counter without _total: {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), value.to_owned()).is_none(),
                        "declared twice: {line:?}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (name, rest) = metric_name(line).unwrap_or_else(|| panic!("no metric name in {line:?}"));
        let rest = match rest.strip_prefix('{') {
            Some(labels) => labels_end(labels).unwrap_or_else(|| panic!("bad labels in {line:?}")),
            None => rest,
        };
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its # TYPE: {line:?}");
        let series = &line[..line.len() - rest.len()];
        assert!(samples.insert(series.to_owned(), value).is_none(), "series twice: {line:?}");
    }
    Scrape(samples)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` at the start of `s`, and what follows.
fn metric_name(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(s.len());
    let name = &s[..end];
    name.chars().next().filter(|c| !c.is_ascii_digit()).map(|_| (name, &s[end..]))
}

/// Reads `k="v",…}` (values with `\\`, `\"`, `\n` escapes); returns what
/// follows the closing brace.
fn labels_end(mut s: &str) -> Option<&str> {
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let (key, rest) = metric_name(s)?;
        if key.is_empty() || key.contains(':') {
            return None;
        }
        let mut chars = rest.strip_prefix("=\"")?.char_indices();
        let close = loop {
            match chars.next()? {
                (_, '\\') => {
                    let (_, escaped) = chars.next()?;
                    if !['\\', '"', 'n'].contains(&escaped) {
                        return None;
                    }
                }
                (i, '"') => break i,
                _ => {}
            }
        };
        let after = &rest[2 + close + 1..];
        s = after.strip_prefix(',').unwrap_or(after);
    }
}

/// Every histogram series: buckets never decrease and `+Inf` equals `_count`.
fn check_histograms(scrape: &Scrape) {
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for (series, value) in &scrape.0 {
        let Some((name, labels)) = series.split_once("_bucket{") else { continue };
        let (others, le) = labels.rsplit_once("le=\"").expect("a bucket has le");
        let key = format!("{name}{{{}}}", others.trim_end_matches(','));
        // The map is sorted by text, not by bound: compare against +Inf.
        if le == "+Inf\"}" {
            let count_series = if others.is_empty() {
                format!("{name}_count")
            } else {
                format!("{name}_count{{{}}}", others.trim_end_matches(','))
            };
            assert_eq!(Some(value), scrape.0.get(&count_series), "{series} vs {count_series}");
            last.insert(key, *value);
        }
    }
    for (series, value) in &scrape.0 {
        let Some((name, labels)) = series.split_once("_bucket{") else { continue };
        let (others, _) = labels.rsplit_once("le=\"").expect("a bucket has le");
        let key = format!("{name}{{{}}}", others.trim_end_matches(','));
        assert!(*value <= last[&key], "{series} is above its +Inf bucket");
    }
}

/// Waits until `series` has moved to at least `target` (reloads are
/// asynchronous).
async fn wait_for(gw: &Gateway, series: &str, target: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if scrape(gw).await.get(series) >= target {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ingest(outcome: &str, plugin: &str) -> String {
    format!("meterd_ingest_requests_total{{plugin=\"{plugin}\",outcome=\"{outcome}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_happened_and_logs_are_json_without_secrets() {
    let mut gw = Gateway::start(Options {
        plugins: vec!["e2b", "chaos"],
        serve_args: vec!["--log-format", "json"],
        capture_stderr: true,
        env: vec![("METERD_LOG", "meterd=debug,warn")],
        // Small, so the oversized body below is small too.
        extra_config: "max_body_bytes = 4096\n".to_owned(),
        ..Options::default()
    });
    let before = scrape(&gw).await;
    check_histograms(&before);
    assert_eq!(before.get(&format!("meterd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);

    // N accepted webhooks (3 records each), one redelivery, one bad
    // signature, one plugin trap, one unknown plugin.
    const N: usize = 5;
    let mut signatures = Vec::new();
    for i in 0..N {
        let body = e2b_event(
            &format!("m{i}"),
            "killed",
            "2025-08-10T12:00:00Z",
            "sbx",
            "org-m",
            Some((2, 512, 1000)),
        );
        signatures.push(e2b_signature(E2B_SECRET, &body));
        let (status, receipt) = gw.e2b(&body).await;
        assert_eq!(status, 200, "{receipt}");
        assert_eq!(receipt.json::<Receipt>().records, 3, "{receipt}");
    }
    let first = e2b_event("m0", "killed", "2025-08-10T12:00:00Z", "sbx", "org-m", Some((2, 512, 1000)));
    let (status, receipt) = gw.e2b(&first).await;
    assert_eq!(status, 200, "{receipt}");
    assert!(receipt.json::<Receipt>().duplicate, "{receipt}");
    let wrong = e2b_signature("not-the-secret", &first);
    let (status, _) = gw.ingest("e2b", &first, &[("e2b-signature", &wrong)]).await;
    assert_eq!(status, 401);
    signatures.push(wrong);
    let trap = gw
        .client
        .post(gw.url("/v1/ingest/chaos"))
        .header("x-request-id", "chaos-trap-1")
        .body("trap")
        .send()
        .await
        .expect("POST chaos");
    assert_eq!(trap.status(), 500);
    assert_eq!(trap.headers()["x-request-id"], "chaos-trap-1", "echoed on errors too");
    let (status, _) = gw.ingest("no-such-plugin", b"{}", &[]).await;
    assert_eq!(status, 404);
    let oversized = vec![b' '; 5_000];
    assert_eq!(gw.ingest("e2b", &oversized, &[]).await.0, 413);

    let after = scrape(&gw).await;
    check_histograms(&after);
    let moved = |series: &str| after.get(series) - before.get(series);
    assert_eq!(moved(&ingest("accepted", "e2b")), N as f64);
    assert_eq!(moved(&ingest("duplicate", "e2b")), 1.0);
    assert_eq!(moved(&ingest("unauthorized", "e2b")), 1.0);
    assert_eq!(moved(&ingest("plugin_error", "chaos")), 1.0);
    assert_eq!(moved(&ingest("not_found", "(unknown)")), 1.0, "unknown names share one series");
    assert_eq!(moved(&ingest("too_large", "e2b")), 1.0, "refused before the plugin runs");
    assert!(!after.0.keys().any(|s| s.contains("no-such-plugin")), "a client's typo is not a series");
    assert_eq!(moved("meterd_records_committed_total"), (3 * N) as f64);
    assert_eq!(moved("meterd_duplicates_total"), 1.0);
    assert_eq!(moved("meterd_plugin_traps_total{plugin=\"chaos\",kind=\"trap\"}"), 1.0);
    // Every e2b delivery reached the plugin (the bad signature too).
    let e2b_calls = "meterd_plugin_call_seconds_count{plugin=\"e2b\",call=\"handle-webhook\"}";
    assert_eq!(moved(e2b_calls), (N + 2) as f64);
    assert_eq!(moved("meterd_plugin_call_seconds_count{plugin=\"chaos\",call=\"handle-webhook\"}"), 1.0);
    // Each call ran in one place: inline or on a blocking thread.
    let threads = |plugin: &str| {
        ["inline", "blocking"].map(|thread| {
            moved(&format!("meterd_plugin_call_threads_total{{plugin=\"{plugin}\",thread=\"{thread}\"}}"))
        })
    };
    assert_eq!(threads("e2b").iter().sum::<f64>(), (N + 2) as f64);
    assert_eq!(threads("chaos").iter().sum::<f64>(), 1.0);
    // Sent one at a time: N + 1 deliveries committed, one transaction each.
    assert_eq!(moved("meterd_commit_batch_size_sum"), (N + 1) as f64);
    assert_eq!(moved("meterd_commit_batch_size_count"), (N + 1) as f64);
    assert_eq!(moved("meterd_commit_seconds_count"), (N + 1) as f64);
    assert!(moved("meterd_commit_seconds_sum") > 0.0);

    // Config reloads, applied and refused.
    let ok = "meterd_reloads_total{what=\"config\",result=\"ok\"}";
    let refused = "meterd_reloads_total{what=\"config\",result=\"refused\"}";
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    std::fs::write(gw.config_path(), format!("{config}\n# touched\n")).expect("touching the config");
    wait_for(&gw, ok, after.get(ok) + 1.0).await;
    std::fs::write(gw.config_path(), format!("no_such_key = 1\n{config}")).expect("breaking the config");
    wait_for(&gw, refused, after.get(refused) + 1.0).await;
    std::fs::write(gw.config_path(), &config).expect("restoring the config");
    wait_for(&gw, ok, after.get(ok) + 2.0).await;

    // Request ids: a sane one is echoed, a missing or unsafe one replaced
    // by a fresh one.
    let id_of = |response: &reqwest::Response| {
        response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    let given = gw.client.get(gw.url("/healthz")).header("x-request-id", "abc-123.X_y").send().await.unwrap();
    assert_eq!(id_of(&given), "abc-123.X_y");
    let mut made = Vec::new();
    for header in [None, Some("has space"), Some("a/b"), Some(&*"x".repeat(65))] {
        let mut request = gw.client.get(gw.url("/v1/no/such/route"));
        if let Some(value) = header {
            request = request.header("x-request-id", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404);
        let id = id_of(&response);
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{header:?} → {id:?}");
        made.push(id);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 4, "every made id is new");

    // Logs: every line is a JSON object, the failed request's line carries
    // its id and route, and no secret or signature appears anywhere. (Log
    // lines are read by key: they are tracing's JSON, no API type.)
    gw.stop();
    let log = gw.stderr_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.iter().all(serde_json::Value::is_object));
    assert!(
        lines.iter().any(|l| l["message"] == "plugin loaded"),
        "the start-up lines are in the file:\n{log}"
    );
    let failed = lines
        .iter()
        .find(|l| l["target"] == "meterd::http::error" && l["code"] == "plugin_failed")
        .unwrap_or_else(|| panic!("the 500 is logged:\n{log}"));
    assert_eq!(failed["span"]["id"], "chaos-trap-1", "{failed}");
    assert_eq!(failed["span"]["path"], "/v1/ingest/{plugin}", "{failed}");
    assert_eq!(failed["span"]["method"], "POST", "{failed}");
    assert_secret_free(&log, &signatures);

    // METERD_LOG_FORMAT does the same for every command, and is not taken
    // for a config key.
    let output = meterd_command()
        .env("METERD_LOG_FORMAT", "json")
        .env("METERD_LOG", "info")
        .arg("--config")
        .arg(gw.config_path())
        .args(["plugins", "list"])
        .output()
        .expect("meterd plugins list");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("chaos"));
    assert!(stderr.lines().count() > 0);
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
    }
    assert_secret_free(&stderr, &signatures);
    let refused = meterd_command().args(["--log-format", "yaml", "migrate"]).output().expect("meterd");
    assert_eq!(refused.status.code(), Some(2), "an unknown format is a usage error");
}

fn assert_secret_free(log: &str, signatures: &[String]) {
    assert!(!log.contains(E2B_SECRET), "the E2B secret was logged:\n{log}");
    for signature in signatures {
        assert!(!log.contains(signature.as_str()), "a signature was logged:\n{log}");
    }
}
