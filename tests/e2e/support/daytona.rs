//! A local server that speaks Daytona's analytics API (bearer token and
//! from/to checked, changing totals, errors and stalls on demand), and the
//! `[plugins.daytona]` section that polls it.
//!
//! The analytics responses are constructed (no real response body is
//! public; see tests/fixtures/daytona/SOURCES.md): every minute of a window
//! reports 60 CPU-seconds and 120 GB-seconds of RAM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};

pub const API_KEY: &str = "daytona-test-key";
pub const ORG: &str = "d-org-1";
pub const MINUTE: i64 = 60_000;
/// 120 GB·s = 120 × 10⁹ / 2³⁰ GiB·s per minute, exactly.
pub const RAM_GIB_SECONDS_PER_MINUTE: &str = "111.758708953857421875";

/// What the fake analytics API does, changeable while the test runs.
#[derive(Default)]
pub struct Upstream {
    /// Windows asked for, in order: (from ms, to ms).
    pub requests: Vec<(i64, i64)>,
    /// When each request arrived.
    pub arrived: Vec<Instant>,
    /// Answer 500 to this many requests.
    pub fail_next: usize,
    /// Sleep this long before answering.
    pub stall: Duration,
    /// Request number n (1-based) sleeps this long before answering.
    pub hold: Option<(usize, Duration)>,
    /// CPU seconds reported instead of the default for a window.
    pub revised_cpu: BTreeMap<(i64, i64), i64>,
}

pub type Shared = Arc<Mutex<Upstream>>;

fn parse_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

async fn aggregated(
    State(upstream): State<Shared>,
    Path(org): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_KEY}")) {
        return (StatusCode::UNAUTHORIZED, "bad token".to_owned()).into_response();
    }
    let (Some(from), Some(to)) =
        (params.get("from").and_then(|t| parse_ms(t)), params.get("to").and_then(|t| parse_ms(t)))
    else {
        return (StatusCode::BAD_REQUEST, "from and to are required RFC 3339 times".to_owned())
            .into_response();
    };
    if org != ORG || from >= to {
        return (StatusCode::BAD_REQUEST, "bad org or window".to_owned()).into_response();
    }
    let (stall, fail, revised) = {
        let mut u = upstream.lock().unwrap();
        u.requests.push((from, to));
        u.arrived.push(Instant::now());
        let fail = u.fail_next > 0;
        u.fail_next = u.fail_next.saturating_sub(1);
        let stall = match u.hold {
            Some((n, held)) if n == u.requests.len() => held,
            _ => u.stall,
        };
        (stall, fail, u.revised_cpu.get(&(from, to)).copied())
    };
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "analytics is having a bad day".to_owned())
            .into_response();
    }
    let minutes = (to - from) / MINUTE;
    let cpu = revised.unwrap_or(60 * minutes);
    let body = format!(
        r#"{{"totalCPUSeconds": {cpu}.0, "totalRAMGBSeconds": {}.0, "totalDiskGBSeconds": 0, "sandboxCount": 1, "totalPrice": 0.41}}"#,
        120 * minutes
    );
    ([("content-type", "application/json")], body).into_response()
}

/// Starts the fake analytics API on an ephemeral loopback port.
pub async fn start_upstream() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/organization/{org}/usage/aggregated", axum::routing::get(aggregated))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

pub fn now_minute() -> i64 {
    Utc::now().timestamp_millis() / MINUTE * MINUTE
}

/// The `[plugins.daytona]` section: 1-minute windows, 1-minute settle lag,
/// 5-minute look-back, polling every second, from `start`.
pub fn daytona_section(url: &str, allow: &str, start_ms: i64, extra: &str) -> String {
    daytona_section_with(url, allow, start_ms, "lookback = \"5m\"\nhttp_timeout_ms = 1000\n", extra)
}

/// The section with `tuning` (look-back, HTTP timeout, …) set by the caller.
pub fn daytona_section_with(url: &str, allow: &str, start_ms: i64, tuning: &str, extra: &str) -> String {
    let start = DateTime::<Utc>::from_timestamp_millis(start_ms).unwrap().to_rfc3339();
    format!(
        "[plugins.daytona]\nanalytics_url = \"{url}\"\napi_key = \"{API_KEY}\"\norganizations = [\"{ORG}\"]\nwindow = \"1m\"\nsettle_lag = \"1m\"\n{tuning}start = \"{start}\"\ninterval = \"1s\"\npoll_backoff = \"1s\"\npoll_backoff_max = \"2s\"\nhttp_allow = [\"{allow}\"]\nwebhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{extra}\n[plugins.daytona.org_map]\n\"{ORG}\" = \"acme\"\n"
    )
}
