//! E2B adapter: verifies E2B's lifecycle webhooks and turns them into usage
//! records.
//!
//! * Signature: `e2b-signature` = base64(SHA-256(secret ‖ raw body)), a plain
//!   hash of the concatenation (not an HMAC), in the standard or URL-safe
//!   alphabet, padded or not.
//! * `paused` / `killed` events carrying `event_data.execution` give deltas:
//!   `sandbox_cpu_core_seconds` = vcpu_count × execution_time / 1000 and
//!   `sandbox_ram_gibi_seconds` = memory_mb / 1024 × execution_time / 1000.
//! * `created` / `resumed` / `paused` / `killed` give a `sandbox_active`
//!   level (1 or 0) for the sandbox.
//! * Every other event type is accepted and gives no record.
//!
//! Config (`[plugins.e2b]`): `signature_secret` (required),
//! `org_metadata_key` (default `org_id`): the sandbox metadata key that names
//! the meterd organization; without it the E2B team id is the organization.
//!
//! Test-only crates compile this file as a module (`#[path]`). One that
//! declares a feature `embedded` exports its own adapter (built on
//! [`handle`]): this file's export and unit tests are then left out.

use std::collections::BTreeMap;

use meterd_plugin_sdk::json::read_object;
use meterd_plugin_sdk::signature::{constant_time_eq, decode_base64_any, sha256};
use meterd_plugin_sdk::time::parse_rfc3339_ms;
use meterd_plugin_sdk::{
    AdapterError, AdapterInfo, Capabilities, Guest, HttpRequest, PollOutcome, UsageKind, UsageRecord,
    WebhookOutcome, host,
};
use serde::Deserialize;

pub const SIGNATURE_HEADER: &str = "e2b-signature";
pub const SIGNATURE_VERSION_HEADER: &str = "e2b-signature-version";
pub const DEFAULT_ORG_METADATA_KEY: &str = "org_id";

pub const METRIC_CPU: &str = "sandbox_cpu_core_seconds";
pub const METRIC_RAM: &str = "sandbox_ram_gibi_seconds";
pub const METRIC_ACTIVE: &str = "sandbox_active";

/// `info().description`.
pub const DESCRIPTION: &str =
    "E2B sandbox lifecycle webhooks: vCPU-seconds, RAM GiB-seconds, active sandboxes";

/// Checks `e2b-signature` against SHA-256(secret ‖ body).
pub fn verify_signature(
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    version: Option<&str>,
) -> Result<(), AdapterError> {
    if let Some(version) = version
        && version != "v1"
    {
        return Err(AdapterError::Unauthorized(format!(
            "unsupported {SIGNATURE_VERSION_HEADER} {version:?} (this adapter verifies v1)"
        )));
    }
    let signature =
        signature.ok_or_else(|| AdapterError::Unauthorized(format!("missing {SIGNATURE_HEADER} header")))?;
    let given = decode_base64_any(signature)
        .ok_or_else(|| AdapterError::Unauthorized(format!("{SIGNATURE_HEADER} header is not base64")))?;
    let expected = sha256(&[secret.as_bytes(), body]);
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(AdapterError::Unauthorized(format!("{SIGNATURE_HEADER} does not match the body")))
    }
}

/// The v2 webhook body, snake_case, as E2B's event struct serializes it.
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    timestamp: String,
    #[serde(default)]
    event_data: Option<EventData>,
    sandbox_id: String,
    #[serde(default)]
    sandbox_template_id: Option<String>,
    #[serde(default)]
    sandbox_team_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct EventData {
    #[serde(default)]
    execution: Option<Execution>,
    #[serde(default)]
    kill_reason: Option<String>,
    #[serde(default)]
    sandbox_metadata: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct Execution {
    #[serde(default)]
    started_at: Option<String>,
    vcpu_count: u64,
    memory_mb: u64,
    /// Milliseconds.
    execution_time: u64,
}

/// What a lifecycle event type means for metering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Starts,
    Stops,
    Other,
}

fn lifecycle(event_type: &str) -> Lifecycle {
    match event_type.strip_prefix("sandbox.lifecycle.") {
        Some("created" | "resumed") => Lifecycle::Starts,
        Some("paused" | "killed") => Lifecycle::Stops,
        _ => Lifecycle::Other,
    }
}

fn malformed(message: impl Into<String>) -> AdapterError {
    AdapterError::Malformed(message.into())
}

/// Turns a verified webhook body into usage records.
pub fn normalize(body: &[u8], org_metadata_key: &str) -> Result<WebhookOutcome, AdapterError> {
    // One event per body: anything after it but whitespace (a second event,
    // say) is refused, not silently dropped.
    let event: Event = read_object(body, "body is not an E2B v2 webhook event").map_err(malformed)?;
    if event.id.trim().is_empty() {
        return Err(malformed("`id` is empty"));
    }
    let kind = lifecycle(&event.event_type);
    if kind == Lifecycle::Other {
        return Ok(WebhookOutcome { event_id: event.id, records: Vec::new() });
    }
    if event.sandbox_id.trim().is_empty() {
        return Err(malformed("`sandbox_id` is empty"));
    }
    let at = parse_rfc3339_ms(&event.timestamp)
        .ok_or_else(|| malformed(format!("`timestamp` {:?} is not an RFC 3339 time", event.timestamp)))?;
    let data = event.event_data.unwrap_or_default();
    let org_id = org_of(&data, event.sandbox_team_id.as_deref(), org_metadata_key)?;

    let mut attributes = vec![("sandbox_id".to_owned(), event.sandbox_id.clone())];
    if let Some(template) = event.sandbox_template_id.filter(|t| !t.is_empty()) {
        attributes.push(("template_id".to_owned(), template));
    }
    if let Some(reason) = data.kill_reason.filter(|r| !r.is_empty()) {
        attributes.push(("kill_reason".to_owned(), reason));
    }
    let record = |metric: &str, kind: UsageKind, quantity: String, window_start: Option<i64>| UsageRecord {
        event_id: event.id.clone(),
        org_id: org_id.clone(),
        subject: event.sandbox_id.clone(),
        metric: metric.to_owned(),
        kind,
        quantity,
        at,
        window_start,
        attributes: attributes.clone(),
    };

    let mut records = Vec::with_capacity(3);
    if kind == Lifecycle::Stops
        && let Some(exec) = data.execution
    {
        let window_start = match exec.started_at.as_deref() {
            Some(text) => Some(parse_rfc3339_ms(text).ok_or_else(|| {
                malformed(format!("`event_data.execution.started_at` {text:?} is not an RFC 3339 time"))
            })?),
            None => None,
        };
        let quantity = |r: Result<_, meterd_units::QuantityError>| {
            r.map(meterd_units::format_quantity)
                .map_err(|e| malformed(format!("`event_data.execution`: {e}")))
        };
        let cpu = quantity(meterd_units::count_ms_to_seconds(exec.vcpu_count, exec.execution_time))?;
        let ram = quantity(meterd_units::mib_ms_to_gib_seconds(exec.memory_mb, exec.execution_time))?;
        records.push(record(METRIC_CPU, UsageKind::Delta, cpu, window_start));
        records.push(record(METRIC_RAM, UsageKind::Delta, ram, window_start));
    }
    let active = if kind == Lifecycle::Starts { "1" } else { "0" };
    records.push(record(METRIC_ACTIVE, UsageKind::Level, active.to_owned(), None));
    Ok(WebhookOutcome { event_id: event.id, records })
}

/// The organization: the configured metadata key if the sandbox carries it,
/// else the E2B team.
fn org_of(data: &EventData, team: Option<&str>, key: &str) -> Result<String, AdapterError> {
    let from_metadata = data.sandbox_metadata.as_ref().and_then(|m| m.get(key));
    match from_metadata {
        Some(serde_json::Value::String(org)) if !org.trim().is_empty() => Ok(org.clone()),
        Some(other) => Err(malformed(format!(
            "`event_data.sandbox_metadata.{key}` must be a non-empty string, got {other}"
        ))),
        None => team.filter(|t| !t.trim().is_empty()).map(str::to_owned).ok_or_else(|| {
            malformed(format!(
                "no organization: neither `event_data.sandbox_metadata.{key}` nor `sandbox_team_id` is set"
            ))
        }),
    }
}

/// A webhook request, end to end: reads `signature_secret` and
/// `org_metadata_key` from the host's config, verifies the signature,
/// normalizes the body.
pub fn handle(req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
    let secret = host::config("signature_secret")
        .ok_or_else(|| AdapterError::Config("`signature_secret` is not set in [plugins.e2b]".to_owned()))?;
    verify_signature(&secret, &req.body, req.header(SIGNATURE_HEADER), req.header(SIGNATURE_VERSION_HEADER))?;
    let key = host::config("org_metadata_key");
    normalize(&req.body, key.as_deref().unwrap_or(DEFAULT_ORG_METADATA_KEY))
}

#[cfg_attr(not(all(target_arch = "wasm32", not(feature = "embedded"))), allow(dead_code))]
struct E2b;

impl Guest for E2b {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "e2b".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PUSH,
            description: DESCRIPTION.to_owned(),
        }
    }

    fn handle_webhook(req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        handle(req)
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        Ok(Vec::new())
    }

    fn poll(_target: String, _cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        Err(AdapterError::Unsupported("e2b pushes lifecycle webhooks; it has nothing to poll".to_owned()))
    }
}

// `feature = "embedded"` is the feature of the crate compiling this file: a
// crate that embeds it and exports its own adapter declares it.
#[cfg(all(target_arch = "wasm32", not(feature = "embedded")))]
meterd_plugin_sdk::export_adapter!(E2b with_types_in meterd_plugin_sdk);

// The tests read fixtures relative to plugins/e2b; they run here, not in
// crates that embed this file.
#[cfg(all(test, not(feature = "embedded")))]
mod tests;
