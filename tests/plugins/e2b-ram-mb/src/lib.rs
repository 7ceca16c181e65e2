//! Test-only: E2B 0.0.9, the release before the RAM fix.
//!
//! 0.0.9 read E2B's `memory_mb` as decimal megabytes: it computed RAM as
//! GB-seconds, memory_mb / 1000 × execution_time / 1000, where the fixed
//! adapter computes GiB-seconds, memory_mb / 1024 × execution_time / 1000.
//! So every `sandbox_ram_gibi_seconds` record it gave is exactly 1.024 × the
//! right value; `sandbox_cpu_core_seconds` and `sandbox_active` are right.
//!
//! It is the real adapter's source (`plugins/e2b/src/lib.rs`, compiled here
//! as a module with the `embedded` feature, so that file's own export is
//! left out) plus [`apply_ram_bug`], exported as plugin `e2b` version 0.0.9
//! to `target/test-plugins/e2b-ram-mb.wasm`. A replay test ingests with it,
//! swaps in the real adapter and checks that replay corrects exactly the
//! RAM meter.

#[path = "../../../../plugins/e2b/src/lib.rs"]
mod e2b;

pub use e2b::*;

use meterd_plugin_sdk::{
    AdapterError, AdapterInfo, Capabilities, Guest, HttpRequest, PollOutcome, WebhookOutcome,
};
use rust_decimal::Decimal;

/// How far 0.0.9's RAM is off: (memory_mb / 1000) / (memory_mb / 1024).
pub const RAM_BUG_FACTOR: Decimal = Decimal::from_parts(1_024, 0, 0, false, 3);

/// 0.0.9's records from the fixed adapter's: every `sandbox_ram_gibi_seconds`
/// quantity × [`RAM_BUG_FACTOR`], exactly (decimal, no floats); other
/// records unchanged.
pub fn apply_ram_bug(mut outcome: WebhookOutcome) -> Result<WebhookOutcome, AdapterError> {
    for record in outcome.records.iter_mut().filter(|r| r.metric == METRIC_RAM) {
        let right = meterd_units::parse_quantity(&record.quantity)
            .map_err(|e| AdapterError::Internal(format!("{METRIC_RAM} quantity: {e}")))?;
        let buggy = right
            .checked_mul(RAM_BUG_FACTOR)
            .ok_or_else(|| AdapterError::Malformed(format!("{METRIC_RAM} quantity {right} overflows")))?;
        record.quantity = meterd_units::format_quantity(buggy);
    }
    Ok(outcome)
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct E2bRamMb;

impl Guest for E2bRamMb {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "e2b".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PUSH,
            description: DESCRIPTION.to_owned(),
        }
    }

    fn handle_webhook(req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        apply_ram_bug(handle(req)?)
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        Ok(Vec::new())
    }

    fn poll(_target: String, _cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        Err(AdapterError::Unsupported("e2b pushes lifecycle webhooks; it has nothing to poll".to_owned()))
    }
}

#[cfg(target_arch = "wasm32")]
meterd_plugin_sdk::export_adapter!(E2bRamMb with_types_in meterd_plugin_sdk);

#[cfg(test)]
mod tests {
    use super::*;
    use meterd_plugin_sdk::{UsageKind, UsageRecord};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/e2b");

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {path}: {e}"))
    }

    fn quantities(outcome: &WebhookOutcome) -> Vec<(&str, &str, UsageKind)> {
        outcome.records.iter().map(|r| (r.metric.as_str(), r.quantity.as_str(), r.kind)).collect()
    }

    #[test]
    fn the_factor_is_exactly_1_024() {
        assert_eq!(RAM_BUG_FACTOR, Decimal::new(1_024, 3));
        assert_eq!(RAM_BUG_FACTOR.to_string(), "1.024");
    }

    #[test]
    fn killed_event_ram_is_1_024_times_the_real_value_and_the_rest_unchanged() {
        let body = fixture("webhook-killed.constructed.body.json");
        let real = normalize(&body, "tenant").unwrap();
        let buggy = apply_ram_bug(real.clone()).unwrap();
        // 512 MiB × 72,123 ms: 36.0615 GiB-s right, 512 / 1000 × 72.123 =
        // 36.926976 "GB-s" in 0.0.9.
        assert_eq!(
            quantities(&real),
            vec![
                (METRIC_CPU, "144.246", UsageKind::Delta),
                (METRIC_RAM, "36.0615", UsageKind::Delta),
                (METRIC_ACTIVE, "0", UsageKind::Level),
            ]
        );
        assert_eq!(
            quantities(&buggy),
            vec![
                (METRIC_CPU, "144.246", UsageKind::Delta),
                (METRIC_RAM, "36.926976", UsageKind::Delta),
                (METRIC_ACTIVE, "0", UsageKind::Level),
            ]
        );
        let q = |o: &WebhookOutcome, metric: &str| {
            meterd_units::parse_quantity(&o.records.iter().find(|r| r.metric == metric).unwrap().quantity)
                .unwrap()
        };
        assert_eq!(q(&buggy, METRIC_RAM), q(&real, METRIC_RAM) * Decimal::new(1_024, 3));
        // Everything but the RAM quantity is the real adapter's, record by record.
        assert_eq!(buggy.event_id, real.event_id);
        assert_eq!(buggy.records.len(), real.records.len());
        for (b, r) in buggy.records.iter().zip(&real.records) {
            if r.metric == METRIC_RAM {
                assert_eq!(
                    UsageRecord { quantity: r.quantity.clone(), ..b.clone() },
                    *r,
                    "only the quantity differs"
                );
            } else {
                assert_eq!(b, r);
            }
        }
    }

    #[test]
    fn ram_is_exactly_decimal_megabyte_seconds() {
        // 0.0.9's formula, memory_mb × execution_time / 10⁶, on the docs
        // payload and on sizes whose GiB value is not a short decimal.
        let text = String::from_utf8(fixture("webhook-payload.docs-pr197.v2.json")).unwrap();
        let docs = text.replace("<sandbox-event-type>", "sandbox.lifecycle.paused");
        let mut bodies = vec![(docs, Decimal::new(512 * 1_000, 6))];
        for (memory_mb, ms) in [(1_u64, 1_u64), (3, 7), (8_192, 3_600_000), (1_000, 999)] {
            let body = serde_json::json!({
                "id": "ev", "type": "sandbox.lifecycle.killed", "timestamp": "2025-08-06T20:58:24Z",
                "sandbox_id": "sbx", "sandbox_team_id": "team",
                "event_data": {"execution": {"vcpu_count": 2, "memory_mb": memory_mb, "execution_time": ms}},
            });
            bodies.push((body.to_string(), Decimal::from(memory_mb * ms) / Decimal::from(1_000_000)));
        }
        for (body, expected) in bodies {
            let real = normalize(body.as_bytes(), "org_id").unwrap();
            let buggy = apply_ram_bug(real.clone()).unwrap();
            let ram = buggy.records.iter().find(|r| r.metric == METRIC_RAM).unwrap();
            assert_eq!(ram.quantity, meterd_units::format_quantity(expected), "{body}");
            let cpu = |o: &WebhookOutcome| o.records.iter().find(|r| r.metric == METRIC_CPU).unwrap().clone();
            assert_eq!(cpu(&buggy), cpu(&real));
        }
    }

    #[test]
    fn events_without_ram_are_unchanged() {
        let body = serde_json::json!({
            "id": "ev-1", "type": "sandbox.lifecycle.created", "timestamp": "2025-08-06T20:58:24Z",
            "sandbox_id": "sbx", "sandbox_team_id": "team",
        });
        let real = normalize(body.to_string().as_bytes(), "org_id").unwrap();
        assert_eq!(apply_ram_bug(real.clone()).unwrap(), real);
    }

    #[test]
    fn info_is_e2b_0_0_9() {
        let info = E2bRamMb::info();
        assert_eq!((info.name.as_str(), info.version.as_str()), ("e2b", "0.0.9"));
        assert_eq!(info.capabilities, Capabilities::PUSH);
        assert_eq!(info.description, DESCRIPTION);
    }
}
