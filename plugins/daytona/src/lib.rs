//! Daytona adapter.
//!
//! * Pull: usage per Daytona organization from the analytics API, in
//!   consecutive windows on a whole-minute grid ([`plan_windows`]), read
//!   exactly ([`records_for_window`]); windows inside the look-back are read
//!   again so late revisions arrive as corrections.
//! * Push: Svix-signed webhooks ([`verify_svix`]); sandbox state changes
//!   become `sandbox_active` levels ([`normalize_webhook`]).
//!
//! Config (`[plugins.daytona]`): see [`Settings`] and [`WebhookSettings`].

mod settings;
mod svix;
mod windows;

use meterd_plugin_sdk::json::read_object;
use meterd_plugin_sdk::time::{format_rfc3339_ms, parse_rfc3339_ms};
use meterd_plugin_sdk::{
    AdapterError, AdapterInfo, Capabilities, Guest, HttpRequest, OutboundRequest, PollOutcome, UsageKind,
    UsageRecord, WebhookOutcome, host,
};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

pub use settings::{Settings, WebhookSettings};
pub use svix::verify_svix;
pub use windows::{Plan, Window, plan_windows};

pub const METRIC_CPU: &str = "sandbox_cpu_core_seconds";
pub const METRIC_RAM: &str = "sandbox_ram_gibi_seconds";
pub const METRIC_SSD: &str = "sandbox_ssd_gibi_seconds";
pub const METRIC_GPU: &str = "sandbox_gpu_core_seconds";
pub const METRIC_ACTIVE: &str = "sandbox_active";

fn malformed(message: impl Into<String>) -> AdapterError {
    AdapterError::Malformed(message.into())
}

fn upstream(message: impl Into<String>) -> AdapterError {
    AdapterError::Upstream(message.into())
}

/// The analytics API's aggregated usage; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AggregatedUsage {
    #[serde(default, rename = "totalCPUSeconds")]
    total_cpu_seconds: Option<Box<RawValue>>,
    #[serde(default, rename = "totalRAMGBSeconds")]
    total_ram_gb_seconds: Option<Box<RawValue>>,
    #[serde(default, rename = "totalDiskGBSeconds")]
    total_disk_gb_seconds: Option<Box<RawValue>>,
    #[serde(default, rename = "totalGPUSeconds")]
    total_gpu_seconds: Option<Box<RawValue>>,
}

/// A total read exactly from its JSON text; missing or `null` is 0.
fn total(field: &Option<Box<RawValue>>, name: &str) -> Result<Decimal, AdapterError> {
    let Some(raw) = field else { return Ok(Decimal::ZERO) };
    let text = raw.get().trim();
    if text == "null" {
        return Ok(Decimal::ZERO);
    }
    let value = meterd_units::parse_json_number(text)
        .map_err(|e| upstream(format!("analytics response `{name}`: {e}")))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(upstream(format!("analytics response `{name}` is negative ({text})")));
    }
    Ok(value)
}

/// The four deltas of one window, from an aggregated-usage response body.
/// Always all four (0 where Daytona reports nothing), so a later revision
/// to 0 still corrects the stored value.
pub fn records_for_window(
    body: &[u8],
    daytona_org: &str,
    meterd_org: &str,
    window: Window,
    gb_is_gib: bool,
) -> Result<Vec<UsageRecord>, AdapterError> {
    let usage: AggregatedUsage = read_object(body, "analytics response").map_err(upstream)?;
    let gib = |gb_seconds: Decimal| -> Result<Decimal, AdapterError> {
        if gb_is_gib {
            Ok(gb_seconds)
        } else {
            meterd_units::gb_seconds_to_gib_seconds(gb_seconds).map_err(|e| upstream(e.to_string()))
        }
    };
    let values = [
        (METRIC_CPU, total(&usage.total_cpu_seconds, "totalCPUSeconds")?),
        (METRIC_RAM, gib(total(&usage.total_ram_gb_seconds, "totalRAMGBSeconds")?)?),
        (METRIC_SSD, gib(total(&usage.total_disk_gb_seconds, "totalDiskGBSeconds")?)?),
        (METRIC_GPU, total(&usage.total_gpu_seconds, "totalGPUSeconds")?),
    ];
    let (from, to) = (format_rfc3339_ms(window.from_ms), format_rfc3339_ms(window.to_ms));
    Ok(values
        .into_iter()
        .map(|(metric, quantity)| UsageRecord {
            event_id: format!("daytona:{daytona_org}:{from}/{to}:{metric}"),
            org_id: meterd_org.to_owned(),
            subject: daytona_org.to_owned(),
            metric: metric.to_owned(),
            kind: UsageKind::Delta,
            quantity: meterd_units::format_quantity(quantity),
            at: window.to_ms,
            window_start: Some(window.from_ms),
            attributes: vec![("daytona_org".to_owned(), daytona_org.to_owned())],
        })
        .collect())
}

/// `GET {analytics_url}/organization/{org}/usage/aggregated?from=…&to=…`.
pub fn usage_request(settings: &Settings, daytona_org: &str, window: Window) -> OutboundRequest {
    let encode = |t: String| t.replace('+', "%2B");
    OutboundRequest {
        method: "GET".to_owned(),
        url: format!(
            "{}/organization/{}/usage/aggregated?from={}&to={}",
            settings.analytics_url,
            daytona_org,
            encode(format_rfc3339_ms(window.from_ms)),
            encode(format_rfc3339_ms(window.to_ms)),
        ),
        headers: vec![
            ("authorization".to_owned(), format!("Bearer {}", settings.api_key)),
            ("accept".to_owned(), "application/json".to_owned()),
        ],
        body: Vec::new(),
    }
}

/// A Daytona webhook body (`sandbox.created`, `sandbox.state.updated`, …).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookEvent {
    event: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    new_state: Option<String>,
}

/// Whether a sandbox in `state` is running (1), not running (0), or in
/// between (no record).
fn activity(state: &str) -> Option<&'static str> {
    match state {
        "started" => Some("1"),
        "stopped" | "archived" | "destroyed" | "error" | "build_failed" => Some("0"),
        _ => None,
    }
}

/// Turns a verified webhook into records. `event_id` is the Svix message id.
pub fn normalize_webhook(
    body: &[u8],
    event_id: &str,
    org_map: impl Fn(&str) -> String,
) -> Result<WebhookOutcome, AdapterError> {
    let event: WebhookEvent = read_object(body, "body is not a Daytona webhook event").map_err(malformed)?;
    let outcome = |records| Ok(WebhookOutcome { event_id: event_id.to_owned(), records });
    let state = match event.event.as_str() {
        "sandbox.created" => event.state.as_deref(),
        "sandbox.state.updated" => event.new_state.as_deref(),
        _ => return outcome(Vec::new()),
    };
    let required = |value: Option<String>, field: &str| {
        value.filter(|v| !v.trim().is_empty()).ok_or_else(|| malformed(format!("`{field}` is missing")))
    };
    let field = if event.event == "sandbox.created" { "state" } else { "newState" };
    let state = required(state.map(str::to_owned), field)?;
    let Some(active) = activity(&state) else { return outcome(Vec::new()) };
    let sandbox = required(event.id, "id")?;
    let daytona_org = required(event.organization_id, "organizationId")?;
    let timestamp = required(event.timestamp, "timestamp")?;
    let at = parse_rfc3339_ms(&timestamp)
        .ok_or_else(|| malformed(format!("`timestamp` {timestamp:?} is not an RFC 3339 time")))?;
    outcome(vec![UsageRecord {
        event_id: event_id.to_owned(),
        org_id: org_map(&daytona_org),
        subject: sandbox,
        metric: METRIC_ACTIVE.to_owned(),
        kind: UsageKind::Level,
        quantity: active.to_owned(),
        at,
        window_start: None,
        attributes: vec![("daytona_org".to_owned(), daytona_org), ("state".to_owned(), state)],
    }])
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn config(key: &str) -> Option<String> {
    host::config(key)
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Daytona;

impl Guest for Daytona {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "daytona".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PUSH | Capabilities::PULL,
            description: "Daytona usage from the analytics API (polled) and sandbox state from Svix webhooks"
                .to_owned(),
        }
    }

    fn handle_webhook(req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        let settings = WebhookSettings::from_config(config)?;
        let headers = |name: &str| req.header(name).map(str::to_owned);
        let id = verify_svix(&settings, headers, &req.body, host::now_ms())?;
        normalize_webhook(&req.body, &id, |org| settings::meterd_org(config, org))
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        settings::organizations(config)
    }

    fn poll(target: String, cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        let settings = Settings::from_config(config)?;
        if !settings.organizations.contains(&target) {
            return Err(AdapterError::Config(format!("{target:?} is not in `organizations`")));
        }
        let cursor = match cursor {
            Some(c) => {
                Some(c.parse::<i64>().map_err(|_| AdapterError::Internal(format!("bad cursor {c:?}")))?)
            }
            None => None,
        };
        let plan = plan_windows(&settings.windows, cursor, host::now_ms());
        let meterd_org = settings::meterd_org(config, &target);
        let mut records = Vec::new();
        for window in plan.reread.iter().chain(&plan.new) {
            let response = host::http_send(&usage_request(&settings, &target, *window)).map_err(upstream)?;
            if !(200..300).contains(&response.status) {
                let excerpt: String = String::from_utf8_lossy(&response.body).chars().take(200).collect();
                return Err(upstream(format!("analytics answered {}: {excerpt}", response.status)));
            }
            records.extend(records_for_window(
                &response.body,
                &target,
                &meterd_org,
                *window,
                settings.gb_is_gib,
            )?);
        }
        Ok(PollOutcome { records, next_cursor: plan.next_cursor.map(|c| c.to_string()), more: plan.more })
    }
}

#[cfg(target_arch = "wasm32")]
meterd_plugin_sdk::export_adapter!(Daytona with_types_in meterd_plugin_sdk);

#[cfg(test)]
mod tests;
