//! Native tests of the adapter's pure logic. The analytics response and the
//! signed webhook are constructed fixtures (tests/fixtures/daytona/SOURCES.md);
//! the Svix vector is Svix's published one.

use std::collections::BTreeMap;

use super::*;
use crate::windows::WindowSettings;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/daytona");
const MIN: i64 = 60_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {path}: {e}"))
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

fn windows(window: i64, lag: i64, lookback: i64, start: Option<i64>, max_new: usize) -> WindowSettings {
    WindowSettings {
        window_ms: window * MIN,
        settle_lag_ms: lag * MIN,
        lookback_ms: lookback * MIN,
        start_ms: start,
        max_new,
    }
}

fn spans(ws: &[Window]) -> Vec<(i64, i64)> {
    ws.iter().map(|w| (w.from_ms / MIN, w.to_ms / MIN)).collect()
}

#[test]
fn first_poll_starts_at_the_aligned_start_and_stops_at_the_settle_lag() {
    let s = windows(15, 10, 60, Some(7 * MIN), 24);
    let plan = plan_windows(&s, None, 70 * MIN);
    // start 7 → 0; windows must end by 70 − 10 = 60.
    assert_eq!(spans(&plan.new), [(0, 15), (15, 30), (30, 45), (45, 60)]);
    assert!(plan.reread.is_empty());
    assert_eq!((plan.next_cursor, plan.more), (Some(60 * MIN), false));
}

#[test]
fn consecutive_polls_tile_time_and_reread_the_lookback() {
    let s = windows(15, 10, 30, Some(0), 24);
    let first = plan_windows(&s, None, 70 * MIN);
    let second = plan_windows(&s, first.next_cursor, 100 * MIN);
    assert_eq!(spans(&second.new), [(60, 75), (75, 90)]);
    // The two windows read last inside the 30-minute look-back.
    assert_eq!(spans(&second.reread), [(30, 45), (45, 60)]);
    let third = plan_windows(&s, second.next_cursor, 100 * MIN);
    assert!(third.new.is_empty(), "nothing new is settled");
    assert_eq!(third.next_cursor, Some(90 * MIN));
    assert_eq!(spans(&third.reread), [(60, 75), (75, 90)]);
}

#[test]
fn max_windows_per_poll_says_more() {
    let s = windows(1, 1, 0, Some(0), 3);
    let plan = plan_windows(&s, None, 10 * MIN);
    assert_eq!(spans(&plan.new), [(0, 1), (1, 2), (2, 3)]);
    assert!(plan.more);
    let next = plan_windows(&s, plan.next_cursor, 10 * MIN);
    assert_eq!(spans(&next.new), [(3, 4), (4, 5), (5, 6)]);
    assert!(next.reread.is_empty(), "look-back 0 re-reads nothing");
}

#[test]
fn windows_align_to_a_grid_from_the_epoch_and_rereads_never_precede_start() {
    let s = windows(7, 0, 60, Some(20 * MIN), 24);
    let plan = plan_windows(&s, None, 50 * MIN);
    assert_eq!(spans(&plan.new), [(14, 21), (21, 28), (28, 35), (35, 42), (42, 49)]);
    let again = plan_windows(&s, plan.next_cursor, 50 * MIN);
    assert_eq!(again.reread.first().map(|w| w.from_ms / MIN), Some(14));
}

#[test]
fn without_a_start_the_first_cursor_is_pinned() {
    let s = windows(15, 10, 0, None, 24);
    let plan = plan_windows(&s, None, 100 * MIN);
    assert!(plan.new.is_empty());
    assert_eq!(plan.next_cursor, Some(90 * MIN), "does not drift with now");
}

#[test]
fn the_aggregated_fixture_gives_four_exact_deltas() {
    let window = Window { from_ms: 1_780_300_800_000, to_ms: 1_780_301_700_000 };
    let body = fixture("analytics-usage-aggregated.constructed.json");
    let records = records_for_window(&body, "d-org", "acme", window, false).unwrap();
    let got: Vec<_> = records.iter().map(|r| (r.metric.as_str(), r.quantity.as_str())).collect();
    // 14400 and 36000 GB·s × 10⁹/2³⁰, computed independently.
    assert_eq!(
        got,
        [
            (METRIC_CPU, "7200"),
            (METRIC_RAM, "13411.045074462890625"),
            (METRIC_SSD, "33527.6126861572265625"),
            (METRIC_GPU, "0"),
        ]
    );
    let r = &records[0];
    assert_eq!((r.org_id.as_str(), r.subject.as_str(), r.kind), ("acme", "d-org", UsageKind::Delta));
    assert_eq!((r.at, r.window_start), (window.to_ms, Some(window.from_ms)));
    assert_eq!(
        r.event_id,
        "daytona:d-org:2026-06-01T08:00:00Z/2026-06-01T08:15:00Z:sandbox_cpu_core_seconds"
    );
    let ids: std::collections::BTreeSet<_> = records.iter().map(|r| &r.event_id).collect();
    assert_eq!(ids.len(), 4, "one event id per metric");
}

#[test]
fn gb_is_gib_missing_fields_exponents_and_bad_values() {
    let w = Window { from_ms: 0, to_ms: MIN };
    let quantities = |body: &str, gib: bool| -> Result<Vec<String>, AdapterError> {
        records_for_window(body.as_bytes(), "o", "o", w, gib)
            .map(|rs| rs.into_iter().map(|r| r.quantity).collect())
    };
    assert_eq!(quantities(r#"{"totalRAMGBSeconds": 2.5}"#, true).unwrap(), ["0", "2.5", "0", "0"]);
    // Zero with a huge exponent is exactly zero (the daytona_analytics fuzz
    // target found it refused).
    assert_eq!(quantities(r#"{"totalRAMGBSeconds": 0.000e400000000000000000}"#, false).unwrap()[1], "0");
    assert_eq!(quantities("{}", false).unwrap(), ["0", "0", "0", "0"]);
    assert_eq!(
        quantities(r#"{"totalCPUSeconds": 1.5e3, "totalGPUSeconds": null}"#, false).unwrap()[0],
        "1500"
    );
    // -4.4000003e-37 was found by the daytona_analytics fuzz target: it
    // rounded to 0 and passed as no usage; a total that does not fit is refused.
    for bad in [
        r#"{"totalCPUSeconds": -1}"#,
        r#"{"totalCPUSeconds": "12"}"#,
        "not json",
        r#"{"totalRAMGBSeconds": -4.4000003e-37}"#,
        r#"{"totalCPUSeconds": 4.4e-37}"#,
    ] {
        assert!(matches!(quantities(bad, false), Err(AdapterError::Upstream(_))), "{bad}");
    }
}

#[test]
fn the_usage_request_carries_the_window_and_the_token() {
    let settings = Settings::from_config(lookup(&[
        ("analytics_url", "https://app.daytona.io/api/analytics/"),
        ("api_key", "secret-key"),
        ("organizations", r#"["d-org"]"#),
    ]))
    .unwrap();
    let req = usage_request(&settings, "d-org", Window { from_ms: 0, to_ms: 15 * MIN });
    assert_eq!(
        req.url,
        "https://app.daytona.io/api/analytics/organization/d-org/usage/aggregated?from=1970-01-01T00:00:00Z&to=1970-01-01T00:15:00Z"
    );
    assert!(req.headers.contains(&("authorization".to_owned(), "Bearer secret-key".to_owned())));
}

#[test]
fn config_errors_name_the_key_and_never_the_key_value() {
    let base = [("analytics_url", "https://x"), ("api_key", "sekrit"), ("organizations", r#"["a"]"#)];
    let err = |extra: (&str, &str), drop: &str| {
        let mut pairs: Vec<_> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        pairs.push(extra);
        match Settings::from_config(lookup(&pairs)) {
            Err(AdapterError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    };
    assert!(err(("window", "90s"), "").contains("`window`"));
    assert!(err(("window", "0m"), "").contains("`window`"));
    assert!(err(("settle_lag", "soon"), "").contains("`settle_lag`"));
    assert!(err(("gb_is_gib", "yes"), "").contains("`gb_is_gib`"));
    assert!(err(("start", "yesterday"), "").contains("`start`"));
    assert!(err(("x", "y"), "api_key").contains("`api_key`"));
    assert!(err(("organizations", "d-org"), "organizations").contains("`organizations`"));
    assert!(!err(("window", "90s"), "").contains("sekrit"));
    let ok = Settings::from_config(lookup(&base)).unwrap();
    assert_eq!(
        (ok.windows.window_ms, ok.windows.settle_lag_ms, ok.windows.lookback_ms),
        (15 * MIN, 10 * MIN, 120 * MIN)
    );
    assert_eq!(settings::meterd_org(lookup(&[("org_map.a", "acme")]), "a"), "acme");
    assert_eq!(settings::meterd_org(lookup(&[]), "a"), "a");
}

fn svix_settings(secret: &str) -> WebhookSettings {
    WebhookSettings::from_config(lookup(&[("webhook_secret", secret)])).unwrap()
}

#[test]
fn the_published_svix_vector_verifies_at_its_own_time() {
    let v = json("svix-signature-vector.docs.json");
    let settings = svix_settings(v["secret"].as_str().unwrap());
    let headers = v["headers"].clone();
    let header = |name: &str| headers[name].as_str().map(str::to_owned);
    let body = v["payload"].as_str().unwrap().as_bytes();
    let at = 1_614_265_330_000;
    assert_eq!(verify_svix(&settings, header, body, at).unwrap(), "msg_p5jXN8AQM9LWM0D4loKWxJek");
    // Stale now, and in the future from before it.
    assert!(matches!(verify_svix(&settings, header, body, at + 301_000), Err(AdapterError::Unauthorized(_))));
    assert!(matches!(verify_svix(&settings, header, body, at - 301_000), Err(AdapterError::Unauthorized(_))));
    assert!(verify_svix(&settings, header, body, at + 299_000).is_ok());
    // A changed body does not verify.
    assert!(verify_svix(&settings, header, b"{\"test\": 2432232315}", at).is_err());
}

#[test]
fn several_signatures_webhook_names_and_missing_headers() {
    let signed = json("webhook-sandbox-state-updated.constructed.signed.json");
    let settings = svix_settings(signed["secret"].as_str().unwrap());
    let body = fixture("webhook-sandbox-state-updated.constructed.body.json");
    let at = 1_766_140_200_000;
    let sig = signed["headers"]["svix-signature"].as_str().unwrap().to_owned();
    let with = |pairs: Vec<(&'static str, String)>| {
        move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    };
    let id = || signed["headers"]["svix-id"].as_str().unwrap().to_owned();
    let ts = || "1766140200".to_owned();
    let several = format!("v2,abc v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {sig}");
    assert!(
        verify_svix(
            &settings,
            with(vec![("svix-id", id()), ("svix-timestamp", ts()), ("svix-signature", several)]),
            &body,
            at
        )
        .is_ok()
    );
    assert!(
        verify_svix(
            &settings,
            with(vec![("webhook-id", id()), ("webhook-timestamp", ts()), ("webhook-signature", sig.clone())]),
            &body,
            at
        )
        .is_ok()
    );
    let only_wrong = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    assert!(
        verify_svix(
            &settings,
            with(vec![("svix-id", id()), ("svix-timestamp", ts()), ("svix-signature", only_wrong)]),
            &body,
            at
        )
        .is_err()
    );
    match verify_svix(&settings, with(vec![("svix-id", id()), ("svix-signature", sig)]), &body, at) {
        Err(AdapterError::Unauthorized(m)) => assert!(m.contains("svix-timestamp"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        WebhookSettings::from_config(lookup(&[("webhook_secret", "MfKQ")])),
        Err(AdapterError::Config(_))
    ));
    assert!(matches!(WebhookSettings::from_config(lookup(&[])), Err(AdapterError::Config(_))));
}

#[test]
fn sandbox_states_become_active_levels() {
    let org = |o: &str| if o == "org123" { "acme".to_owned() } else { o.to_owned() };
    let out =
        normalize_webhook(&fixture("webhook-sandbox-state-updated.constructed.body.json"), "msg_1", org)
            .unwrap();
    assert_eq!(out.event_id, "msg_1");
    let r = &out.records[0];
    assert_eq!((r.metric.as_str(), r.quantity.as_str(), r.kind), (METRIC_ACTIVE, "0", UsageKind::Level));
    assert_eq!((r.org_id.as_str(), r.subject.as_str(), r.event_id.as_str()), ("acme", "sandbox123", "msg_1"));
    assert_eq!(r.at, 1_766_140_200_000);
    let created = normalize_webhook(&fixture("webhook-sandbox-created.docs.json"), "msg_2", org).unwrap();
    assert_eq!(created.records[0].quantity, "1");
    for (state, expected) in [
        ("started", Some("1")),
        ("archived", Some("0")),
        ("destroyed", Some("0")),
        ("error", Some("0")),
        ("starting", None),
        ("stopping", None),
    ] {
        let body = format!(
            r#"{{"event":"sandbox.state.updated","timestamp":"2025-12-19T10:30:00Z","id":"s","organizationId":"o","newState":"{state}"}}"#
        );
        let out = normalize_webhook(body.as_bytes(), "m", org).unwrap();
        assert_eq!(out.records.first().map(|r| r.quantity.as_str()), expected, "{state}");
    }
    for other in ["webhook-snapshot-created.docs.json", "webhook-volume-created.docs.json"] {
        assert!(normalize_webhook(&fixture(other), "m", org).unwrap().records.is_empty(), "{other}");
    }
    for (body, expected) in [
        ("{}", "event"),
        (
            r#"{"event":"sandbox.state.updated","id":"s","organizationId":"o","newState":"started"}"#,
            "`timestamp`",
        ),
        (
            r#"{"event":"sandbox.state.updated","timestamp":"x","id":"s","organizationId":"o","newState":"started"}"#,
            "RFC 3339",
        ),
        (
            r#"{"event":"sandbox.state.updated","timestamp":"2025-12-19T10:30:00Z","organizationId":"o","newState":"started"}"#,
            "`id`",
        ),
    ] {
        match normalize_webhook(body.as_bytes(), "m", org) {
            Err(AdapterError::Malformed(m)) => assert!(m.contains(expected), "{m} should mention {expected}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn anything_after_the_json_value_is_refused() {
    // Found by the daytona_webhook and daytona_analytics fuzz targets: text
    // after the JSON object was ignored, so two concatenated events gave
    // only the first, and a response with trailing garbage was read.
    let org = |o: &str| o.to_owned();
    let event = fixture("webhook-sandbox-state-updated.constructed.body.json");
    let twice = [&event[..], b"\n", &event[..]].concat();
    match normalize_webhook(&twice, "m", org) {
        Err(AdapterError::Malformed(m)) => assert!(m.contains("trailing characters"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        normalize_webhook(&[&event[..], b"\n"].concat(), "m", org).is_ok(),
        "trailing whitespace is fine"
    );
    let w = Window { from_ms: 0, to_ms: MIN };
    let body = fixture("analytics-usage-aggregated.constructed.json");
    for tail in [&b"x"[..], b"{}", b"\n]"] {
        let with_tail = [&body[..], tail].concat();
        match records_for_window(&with_tail, "o", "o", w, false) {
            Err(AdapterError::Upstream(m)) => assert!(m.contains("trailing characters"), "{m}"),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(tail)),
        }
    }
}

#[test]
fn an_array_is_not_an_answer_nor_an_event() {
    // Found by the daytona_analytics fuzz target: serde reads a struct from
    // an array of its fields in order, so `[]` was a window of zero usage
    // and `[7200, 0, 0, 0]` a window of 7200 CPU-seconds.
    let w = Window { from_ms: 0, to_ms: MIN };
    for body in ["[]", " [7200, 0, 0, 0]", "\n[null]"] {
        match records_for_window(body.as_bytes(), "o", "o", w, false) {
            Err(AdapterError::Upstream(m)) => assert!(m.contains("JSON array"), "{m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let event = r#"["sandbox.created","2025-12-19T10:30:00Z","s","o","started"]"#;
    match normalize_webhook(event.as_bytes(), "m", |o: &str| o.to_owned()) {
        Err(AdapterError::Malformed(m)) => assert!(m.contains("JSON array"), "{m}"),
        other => panic!("{other:?}"),
    }
}
