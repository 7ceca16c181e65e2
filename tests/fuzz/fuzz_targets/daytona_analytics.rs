//! Daytona's analytics response reader (`records_for_window`): the
//! aggregated-usage JSON of one window → four exact deltas.
//!
//! Input: the response body (seeds: the constructed analytics responses).
//!
//! Properties: a refusal is `Upstream`, and an object whose totals are
//! absent, null or whole numbers below 2^53 is never refused; an accepted
//! body is a JSON object whose four totals are absent, null or numbers,
//! none negative; it gives exactly the four deltas (CPU, RAM, SSD, GPU) of
//! the window, each passing the host's field checks, with distinct event
//! ids naming the window; each quantity matches serde_json's float reading
//! of the same number (to 1e-12, the float's own error, or 1e-27: a decimal
//! has 28 places), RAM and disk converted from GB to GiB unless
//! `gb_is_gib`, where they are the number itself; absent or null is 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd_fuzz::{accepted_json, check_record, close_to};
use meterd_plugin_daytona::{METRIC_CPU, METRIC_GPU, METRIC_RAM, METRIC_SSD, Window, records_for_window};
use meterd_plugin_sdk::{AdapterError, UsageKind};
use serde_json::Value;

const WINDOW: Window = Window { from_ms: 1_780_300_800_000, to_ms: 1_780_301_700_000 };
const FIELDS: [(&str, &str, bool); 4] = [
    (METRIC_CPU, "totalCPUSeconds", false),
    (METRIC_RAM, "totalRAMGBSeconds", true),
    (METRIC_SSD, "totalDiskGBSeconds", true),
    (METRIC_GPU, "totalGPUSeconds", false),
];

fuzz_target!(|body: &[u8]| {
    for gb_is_gib in [false, true] {
        match records_for_window(body, "dorg-1", "acme", WINDOW, gb_is_gib) {
            Err(AdapterError::Upstream(_)) => {
                // Refused: then it is not an object of absent, null or small
                // whole-number totals.
                if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
                    let plain = FIELDS.iter().all(|(_, field, _)| match object.get(*field) {
                        None | Some(Value::Null) => true,
                        // Integer literals only: a float of 0.0 may be a non-zero
                        // number too small for f64 (2e-10000000000), rightly refused.
                        Some(Value::Number(n)) => n.as_u64().is_some_and(|v| v < 1 << 53),
                        Some(_) => false,
                    });
                    // serde_json takes the last of a repeated key; the plugin refuses it.
                    let text = String::from_utf8_lossy(body);
                    let repeated = FIELDS.iter().any(|(_, field, _)| text.matches(field).count() > 1);
                    assert!(!plain || repeated, "refused small whole totals: {text}");
                }
            }
            Err(other) => panic!("not Upstream: {other:?}"),
            Ok(records) => {
                let object = match accepted_json(body) {
                    Some(Value::Object(object)) => object,
                    None => continue,
                    Some(other) => panic!("accepted a body that is not a JSON object: {other}"),
                };
                assert_eq!(records.len(), 4);
                let mut ids = std::collections::BTreeSet::new();
                for (record, (metric, field, gb)) in records.iter().zip(FIELDS) {
                    check_record(record);
                    assert_eq!((record.metric.as_str(), record.kind), (metric, UsageKind::Delta));
                    assert_eq!((record.at, record.window_start), (WINDOW.to_ms, Some(WINDOW.from_ms)));
                    assert_eq!((record.org_id.as_str(), record.subject.as_str()), ("acme", "dorg-1"));
                    assert!(record.event_id.contains("dorg-1") && record.event_id.ends_with(metric));
                    assert!(ids.insert(record.event_id.clone()));
                    let quantity = meterd_units::parse_quantity(&record.quantity).unwrap();
                    match object.get(field) {
                        None | Some(Value::Null) => assert_eq!(record.quantity, "0", "{field}"),
                        Some(Value::Number(n)) => {
                            let v = n.as_f64().expect("a JSON number reads as f64");
                            assert!(v >= 0.0, "{field} = {n} accepted");
                            let expected = if gb && !gb_is_gib { v * 1e9 / 1_073_741_824.0 } else { v };
                            assert!(
                                close_to(quantity, expected, 1e-12),
                                "{field} = {n} gave {} (expected about {expected})",
                                record.quantity
                            );
                        }
                        Some(other) => panic!("{field} = {other} accepted"),
                    }
                }
            }
        }
    }
});
