//! Daytona's webhook normalization (`normalize_webhook`): a verified
//! `sandbox.created` / `sandbox.state.updated` body → a `sandbox_active`
//! level.
//!
//! Input: the body (seeds: Daytona's documented webhook examples).
//!
//! Properties, read back from the same body with serde_json: a refusal is
//! `Malformed`; the outcome carries the Svix message id; events other than
//! the two give nothing, and so do states between running and not running;
//! `started` gives level 1, `stopped`/`archived`/`destroyed`/`error`/
//! `build_failed` level 0, at the event's `timestamp`, for the sandbox `id`,
//! in the organization the map gives for `organizationId`, with the
//! `daytona_org` and `state` attributes; every record passes the host's
//! field checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd_fuzz::{accepted_json, check_record};
use meterd_plugin_daytona::{METRIC_ACTIVE, normalize_webhook};
use meterd_plugin_sdk::time::parse_rfc3339_ms;
use meterd_plugin_sdk::{AdapterError, UsageKind};

fuzz_target!(|body: &[u8]| {
    let out = match normalize_webhook(body, "msg_2mEfz1Yk0m6gQ1n9Ahk7nG3Hq8R", |org| format!("m-{org}")) {
        Ok(out) => out,
        Err(AdapterError::Malformed(_)) => return,
        Err(other) => panic!("not Malformed: {other:?}"),
    };
    assert_eq!(out.event_id, "msg_2mEfz1Yk0m6gQ1n9Ahk7nG3Hq8R");
    let Some(event) = accepted_json(body) else { return };
    let text = |field: &str| event[field].as_str().map(str::to_owned);
    let state = match event["event"].as_str() {
        Some("sandbox.created") => text("state"),
        Some("sandbox.state.updated") => text("newState"),
        _ => {
            assert!(out.records.is_empty());
            return;
        }
    }
    .expect("an accepted sandbox event has its state");
    let level = match state.as_str() {
        "started" => "1",
        "stopped" | "archived" | "destroyed" | "error" | "build_failed" => "0",
        _ => {
            assert!(out.records.is_empty(), "state {state:?} gave records");
            return;
        }
    };
    let [record] = &out.records[..] else { panic!("{} records", out.records.len()) };
    check_record(record);
    let org = text("organizationId").expect("accepted without organizationId");
    assert_eq!(record.event_id, out.event_id);
    assert_eq!(
        (record.metric.as_str(), record.kind, record.quantity.as_str()),
        (METRIC_ACTIVE, UsageKind::Level, level)
    );
    assert_eq!(Some(&record.subject), text("id").as_ref());
    assert_eq!(record.org_id, format!("m-{org}"));
    assert_eq!(Some(record.at), text("timestamp").as_deref().and_then(parse_rfc3339_ms));
    assert_eq!(record.attributes, vec![("daytona_org".to_owned(), org), ("state".to_owned(), state)]);
});
