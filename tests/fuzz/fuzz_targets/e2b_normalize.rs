//! E2B's normalization (`normalize`): a verified webhook body → records.
//!
//! Input: the body (seeds: E2B's documented and constructed payloads).
//!
//! Properties, read back from the same body with serde_json: a refusal is
//! `Malformed`; an accepted event keeps its non-blank `id` on every record;
//! types other than `sandbox.lifecycle.{created,resumed,paused,killed}` give
//! no records; the others end with one `sandbox_active` level (1 for
//! created/resumed, 0 for paused/killed) at the event's `timestamp`, and a
//! pause or kill with `event_data.execution` first gives the two deltas
//! vcpu_count × execution_time / 1000 and memory_mb × execution_time /
//! 1,024,000, exact (checked in integer arithmetic) whenever they fit in
//! 28 digits, with `window_start` = `started_at`; an execution is refused
//! only when a product overflows the 96-bit decimal; the organization is
//! the metadata key's non-blank string, else the team; every record passes
//! the host's field checks. The metadata key only changes `org_id`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd_fuzz::{accepted_json, check_record, exact_quotient, significant_digits};
use meterd_plugin_e2b::{METRIC_ACTIVE, METRIC_CPU, METRIC_RAM, normalize};
use meterd_plugin_sdk::time::parse_rfc3339_ms;
use meterd_plugin_sdk::{AdapterError, UsageKind, WebhookOutcome};
use rust_decimal::Decimal;
use serde_json::Value;

const KEY: &str = "org_id";
const OTHER_KEY: &str = "tenant";

fuzz_target!(|body: &[u8]| {
    let outcome = normalize(body, KEY);
    let other = normalize(body, OTHER_KEY);
    match (&outcome, &other) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.event_id, b.event_id);
            assert_eq!(a.records.len(), b.records.len());
            for (x, y) in a.records.iter().zip(&b.records) {
                let mut y = y.clone();
                y.org_id = x.org_id.clone();
                assert_eq!(x, &y, "the metadata key changed more than org_id");
            }
            check(body, a, KEY);
            check(body, b, OTHER_KEY);
        }
        (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
            // Only the organization may differ.
            assert!(
                matches!(e, AdapterError::Malformed(m) if m.contains("organization") || m.contains("sandbox_metadata")),
                "{e:?}"
            );
            check(body, a, if outcome.is_ok() { KEY } else { OTHER_KEY });
        }
        (Err(a), Err(b)) => {
            check_refusal(body, a);
            check_refusal(body, b);
        }
    }
});

fn check(body: &[u8], out: &WebhookOutcome, key: &str) {
    let Some(event) = accepted_json(body) else { return };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    assert_eq!(Some(&out.event_id), text(&event["id"]).as_ref());
    assert!(!out.event_id.trim().is_empty());
    let kind = event["type"].as_str().expect("an accepted event has a type");
    let stops = match kind.strip_prefix("sandbox.lifecycle.") {
        Some("created" | "resumed") => false,
        Some("paused" | "killed") => true,
        _ => {
            assert!(out.records.is_empty(), "{kind:?} gave records");
            return;
        }
    };
    for r in &out.records {
        check_record(r);
        assert_eq!(r.event_id, out.event_id);
        assert_eq!(Some(&r.subject), text(&event["sandbox_id"]).as_ref());
        assert_eq!(Some(r.at), event["timestamp"].as_str().and_then(parse_rfc3339_ms));
        assert_eq!(r.attributes[0], ("sandbox_id".to_owned(), r.subject.clone()));
    }
    let data = &event["event_data"];
    let org = match &data["sandbox_metadata"][key] {
        Value::String(org) if !org.trim().is_empty() => org.clone(),
        Value::Null if data["sandbox_metadata"].get(key).is_none() => {
            text(&event["sandbox_team_id"]).expect("no org without a team")
        }
        other => panic!("accepted metadata {key} = {other}"),
    };
    assert!(out.records.iter().all(|r| r.org_id == org));

    let level = out.records.last().expect("a lifecycle event gives a level");
    assert_eq!(
        (level.metric.as_str(), level.kind, level.quantity.as_str()),
        (METRIC_ACTIVE, UsageKind::Level, if stops { "0" } else { "1" })
    );
    let execution = &data["execution"];
    if !stops || execution.is_null() {
        assert_eq!(out.records.len(), 1);
        return;
    }
    assert_eq!(out.records.len(), 3);
    let number = |field: &str| execution[field].as_u64().expect("accepted execution numbers are u64");
    let (vcpus, mib, ms) = (number("vcpu_count"), number("memory_mb"), number("execution_time"));
    let window_start = execution["started_at"].as_str().map(|t| parse_rfc3339_ms(t).expect("accepted"));
    for (record, metric, product, divisor) in [
        (&out.records[0], METRIC_CPU, u128::from(vcpus) * u128::from(ms), 1_000u128),
        (&out.records[1], METRIC_RAM, u128::from(mib) * u128::from(ms), 1_024_000),
    ] {
        assert_eq!((record.metric.as_str(), record.kind), (metric, UsageKind::Delta));
        assert_eq!(record.window_start, window_start);
        let exact = exact_quotient(product, divisor).expect("1000 and 1024000 divide powers of ten");
        if significant_digits(&exact) <= 28 {
            assert_eq!(record.quantity, exact, "{metric}: {product} / {divisor}");
        } else {
            // Rounded to 96 bits: the same integer part, or one more when
            // the rounding carried.
            let whole = |t: &str| t.split('.').next().unwrap_or("").parse::<u128>().unwrap_or(u128::MAX);
            let (got, want) = (whole(&record.quantity), whole(&exact));
            assert!(got == want || got == want + 1, "{metric}: {} for {exact}", record.quantity);
        }
    }
}

/// A refusal of the execution's numbers is an overflow of the 96-bit
/// decimal, nothing less.
fn check_refusal(body: &[u8], error: &AdapterError) {
    let AdapterError::Malformed(message) = error else { panic!("{error:?}") };
    if !message.starts_with("`event_data.execution`: ") {
        return;
    }
    let Some(event) = accepted_json(body) else { return };
    let number = |field: &str| u128::from(event["event_data"]["execution"][field].as_u64().expect("u64"));
    let max = Decimal::MAX.mantissa() as u128;
    let ms = number("execution_time");
    assert!(
        number("vcpu_count") * ms > max || number("memory_mb") * ms > max,
        "{message}: the products fit a decimal"
    );
}
