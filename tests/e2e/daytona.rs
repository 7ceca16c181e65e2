//! Pull ingestion end to end: the real gateway polls a local server that
//! speaks Daytona's analytics API (bearer token and from/to checked,
//! changing totals, errors and stalls on demand), through the real Daytona
//! component; and Svix-signed Daytona webhooks.
//!
//! The analytics responses are constructed (no real response body is
//! public; see tests/fixtures/daytona/SOURCES.md): every minute of a window
//! reports 60 CPU-seconds and 120 GB-seconds of RAM.

use crate::support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use meterd::api::ops::{Plugins, Poll, Receipt};
use meterd::api::usage::Usage;
use support::daytona::{
    API_KEY, MINUTE, ORG, RAM_GIB_SECONDS_PER_MINUTE, Upstream, daytona_section, now_minute, start_upstream,
};
use support::{Gateway, Options};

fn daytona_gateway(section: String) -> Gateway {
    Gateway::start(Options { plugins: vec!["e2b", "daytona"], sections: section, ..Options::default() })
}

/// Waits until the poller's cursor reaches `until_ms`; returns its state.
async fn wait_for_cursor(gw: &Gateway, until_ms: i64) -> Poll {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(state) = gw.poll_state("daytona", ORG).await {
            let cursor = state.cursor.as_deref().and_then(|c| c.parse::<i64>().ok());
            if cursor.is_some_and(|c| c >= until_ms) {
                return state;
            }
        }
        assert!(Instant::now() < deadline, "the poller did not reach {until_ms} within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `check` holds for the Daytona org's poll state.
async fn wait_for_state(gw: &Gateway, what: &str, check: impl Fn(&Poll) -> bool) -> Poll {
    gw.wait_for_poll_state("daytona", ORG, what, check).await
}

/// Usage of windows that start at or after `from` and end at or before
/// `to` (a polled delta is stamped with its window's end).
async fn usage_total(gw: &Gateway, meter: &str, from: i64, to: i64) -> String {
    let (from, to) = (from + 1_000, to + 1_000);
    let iso = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    let (status, body) =
        gw.get(&format!("/v1/orgs/acme/usage?meter={meter}&from={}&to={}", iso(from), iso(to))).await;
    assert_eq!(status, 200, "{body}");
    body.json::<Usage>().total.to_string()
}

/// A poll state's cursor, as a number (the Daytona plugin's cursors are
/// milliseconds).
fn cursor_ms(state: &Poll) -> i64 {
    state.cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no cursor: {state:?}"))
}

fn decimal_times(n: i64, per: &str) -> String {
    let per: rust_decimal::Decimal = per.parse().unwrap();
    meterd_units::format_quantity(per * rust_decimal::Decimal::from(n))
}

/// New windows must tile [start, cursor) exactly: no gap, no overlap.
fn assert_tiles(requests: &[(i64, i64)], start: i64, end: i64) {
    let mut windows: Vec<_> = requests.to_vec();
    windows.sort();
    windows.dedup();
    let mut at = start;
    for (from, to) in windows.iter().filter(|(_, to)| *to <= end) {
        assert_eq!(*from, at, "windows must be consecutive: {windows:?}");
        assert_eq!(to - from, MINUTE);
        at = *to;
    }
    assert_eq!(at, end, "windows cover [start, cursor)");
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_catch_up_exactly_apply_revisions_once_and_survive_kill_9() {
    let (url, upstream) = start_upstream().await;
    let start = now_minute() - 30 * MINUTE;
    let mut gw = daytona_gateway(daytona_section(&url, "http://127.0.0.1:*", start, ""));
    let settled = now_minute() - MINUTE;
    let state = wait_for_cursor(&gw, settled).await;
    let cursor = cursor_ms(&state);
    let minutes = (cursor - start) / MINUTE;
    assert!(minutes >= 29, "caught up over the 30 minutes: {minutes}");
    assert_eq!(usage_total(&gw, "sandbox_cpu_core_seconds", start, cursor).await, (60 * minutes).to_string());
    assert_eq!(
        usage_total(&gw, "sandbox_ram_gibi_seconds", start, cursor).await,
        decimal_times(minutes, RAM_GIB_SECONDS_PER_MINUTE)
    );
    assert_tiles(&upstream.lock().unwrap().requests, start, cursor);
    assert_eq!(state.consecutive_failures, 0);
    assert!(state.last_error.is_none(), "{state:?}");
    // The CLI shows the same poll state, read from the shared database.
    let listing = support::meterd_command()
        .args(["plugins", "list", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success(), "{stdout}{}", String::from_utf8_lossy(&listing.stderr));
    let poll_line = stdout
        .lines()
        .find(|l| l.starts_with("daytona") && l.contains(ORG))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(poll_line.ends_with(" -"), "no last error: {poll_line}");
    // Status shows the plugin's config with its secrets redacted.
    let (_, listing) = gw.get("/v1/plugins").await;
    let text = listing.text();
    assert!(!text.contains(API_KEY) && !text.contains("MfKQ9r8G"), "a secret leaked into /v1/plugins");
    let plugins: Plugins = listing.json();
    let daytona = plugins.plugins.iter().find(|p| p.name == "daytona").expect("the daytona plugin");
    assert_eq!(
        (daytona.config.get("api_key").map(String::as_str), daytona.config.get("window").map(String::as_str)),
        (Some("***"), Some("1m"))
    );

    // Daytona revises the last read window: it is re-read inside the
    // look-back and applied once as a correction.
    let revised = (cursor - MINUTE, cursor);
    upstream.lock().unwrap().revised_cpu.insert(revised, 100);
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = (60 * minutes + 40).to_string();
    while usage_total(&gw, "sandbox_cpu_core_seconds", start, cursor).await != expected {
        assert!(Instant::now() < deadline, "the revision never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let later polls re-read the revised window twice more: still once.
    let reads = |u: &Upstream| u.requests.iter().filter(|w| **w == revised).count();
    let seen = reads(&upstream.lock().unwrap());
    while reads(&upstream.lock().unwrap()) < seen + 2 {
        assert!(Instant::now() < deadline, "the revised window was not re-read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(usage_total(&gw, "sandbox_cpu_core_seconds", start, cursor).await, expected);
    assert_eq!(gw.count_rows("corrections").await, 1, "one audit row for one revision");

    // kill -9 and restart: nothing counted twice, nothing missing.
    gw.restart_after_kill9();
    let later = wait_for_cursor(&gw, now_minute() - MINUTE).await;
    let cursor = cursor_ms(&later);
    let minutes = (cursor - start) / MINUTE;
    assert_eq!(
        usage_total(&gw, "sandbox_cpu_core_seconds", start, cursor).await,
        (60 * minutes + 40).to_string()
    );
    assert_tiles(&upstream.lock().unwrap().requests, start, cursor);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_back_off_and_recover_with_exact_totals() {
    let (url, upstream) = start_upstream().await;
    upstream.lock().unwrap().fail_next = 3;
    let start = now_minute() - 10 * MINUTE;
    let gw = daytona_gateway(daytona_section(&url, "http://127.0.0.1:*", start, ""));
    let failed = wait_for_state(&gw, "a failure", |s| s.consecutive_failures >= 2).await;
    let error = failed.last_error.as_deref().expect("the last error");
    assert!(error.contains("500"), "{error}");
    // Backoff: the next run is scheduled after the failure, not at once.
    assert!(
        Some(failed.next_run.0.as_str()) > failed.last_error_at.as_ref().map(|t| t.0.as_str()),
        "{failed:?}"
    );
    let state = wait_for_cursor(&gw, now_minute() - MINUTE).await;
    assert_eq!(state.consecutive_failures, 0, "{state:?}");
    let cursor = cursor_ms(&state);
    assert_eq!(
        usage_total(&gw, "sandbox_cpu_core_seconds", start, cursor).await,
        (60 * ((cursor - start) / MINUTE)).to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_outside_the_allowlist_is_refused_before_any_connection() {
    let (url, upstream) = start_upstream().await;
    let gw = daytona_gateway(daytona_section(&url, "http://localhost:1", now_minute() - 10 * MINUTE, ""));
    let state = wait_for_state(&gw, "a refusal", |s| s.last_error.is_some()).await;
    let error = state.last_error.as_deref().expect("the last error");
    assert!(error.contains("not allowed"), "{error}");
    assert!(state.cursor.is_none());
    assert!(upstream.lock().unwrap().requests.is_empty(), "no request reached the upstream");
    assert_eq!(gw.count_rows("usage_records").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upstream_is_cut_off_by_the_timeout_and_blocks_nobody_else() {
    let (url, upstream) = start_upstream().await;
    upstream.lock().unwrap().stall = Duration::from_secs(5);
    let gw = daytona_gateway(daytona_section(&url, "http://127.0.0.1:*", now_minute() - 10 * MINUTE, ""));
    // While the poll waits on the network, webhooks to other plugins go on.
    let body = support::e2b_event(
        "during-stall",
        "killed",
        "2025-08-10T12:00:00Z",
        "sbx",
        "org-s",
        Some((2, 512, 1000)),
    );
    for _ in 0..5 {
        assert_eq!(gw.e2b(&body).await.0, 200);
    }
    let state = wait_for_state(&gw, "a timeout", |s| s.last_error.is_some()).await;
    let error = state.last_error.as_deref().expect("the last error");
    // The HTTP timeout (1 s) fired, not the plugin's 100 ms CPU deadline:
    // time waiting on the network is not CPU time.
    assert!(error.contains("timed out after 1000 ms"), "{error}");
    assert!(!error.contains("CPU deadline"), "{error}");
    assert_eq!(gw.count_rows("usage_records").await, 3, "only the e2b records");
}

/// Svix: base64(HMAC-SHA256(secret, "id.timestamp.body")).
fn svix_signature(secret_b64: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD.decode(secret_b64).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn svix_signed_webhooks_are_verified_and_become_sandbox_levels() {
    let (url, _upstream) = start_upstream().await;
    let gw = daytona_gateway(daytona_section(&url, "http://127.0.0.1:*", now_minute() - 2 * MINUTE, ""));
    let secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = |id: &str, state: &str, at: &str| {
        format!(r#"{{"event":"sandbox.state.updated","timestamp":"{at}","id":"{id}","organizationId":"{ORG}","oldState":"starting","newState":"{state}","updatedAt":"{at}"}}"#)
            .into_bytes()
    };
    let send = |msg_id: &str, timestamp: i64, payload: Vec<u8>, signature: String| {
        let gw = &gw;
        let msg_id = msg_id.to_owned();
        async move {
            gw.ingest(
                "daytona",
                &payload,
                &[
                    ("svix-id", &msg_id),
                    ("svix-timestamp", &timestamp.to_string()),
                    ("svix-signature", &signature),
                ],
            )
            .await
        }
    };
    let now = Utc::now().timestamp();
    let started = body("sbx-1", "started", "2025-08-10T10:00:00Z");
    let good = svix_signature(secret, "msg_1", now, &started);
    // Several signatures in one header: one valid is enough.
    let several = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {good}");
    let (status, receipt) = send("msg_1", now, started.clone(), several).await;
    assert_eq!(status, 200, "{receipt}");
    let receipt: Receipt = receipt.json();
    assert_eq!((receipt.event_id.as_str(), receipt.records), ("msg_1", 1));

    let wrong = svix_signature("c2VjcmV0LXRoYXQtaXMtd3Jvbmc=", "msg_2", now, &started);
    assert_eq!(send("msg_2", now, started.clone(), wrong).await.0, 401);
    let stale = now - 600;
    assert_eq!(
        send("msg_3", stale, started.clone(), svix_signature(secret, "msg_3", stale, &started)).await.0,
        401
    );
    assert_eq!(send("msg_4", now, started.clone(), String::new()).await.0, 401);

    let stopped = body("sbx-1", "stopped", "2025-08-10T10:30:00Z");
    let (status, _) =
        send("msg_5", now, stopped.clone(), svix_signature(secret, "msg_5", now, &stopped)).await;
    assert_eq!(status, 200);
    let day = |h: &str| format!("2025-08-10T{h}:00:00Z");
    let (_, usage) = gw
        .get(&format!("/v1/orgs/acme/usage?meter=sandbox_active_seconds&from={}&to={}", day("00"), day("23")))
        .await;
    assert_eq!(usage.json::<Usage>().total.0, "1800", "{usage}");
}
