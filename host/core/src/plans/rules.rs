//! Notification rules: which thresholds an org has crossed. Evaluation is
//! level-triggered and pure — given the org's standing it lists every
//! threshold that holds now — and the store keeps "fired" marks, so each
//! fires at most once per (org, rule, threshold, period) however often it
//! is evaluated.

use rust_decimal::Decimal;
use serde_json::json;

use super::Plan;
use super::standing::Usage;
use crate::meter::MeterDef;

/// What the config asks to be told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Usage at or above these percentages of a quota (sorted, distinct).
    pub quota_percent: Vec<u32>,
    /// Credit balance below these amounts (sorted, distinct).
    pub credit_below: Vec<Decimal>,
    /// Running sandboxes reached the plan's limit.
    pub concurrency_limit: bool,
    /// A sandbox ran longer than the plan's session limit.
    pub session_over_limit: bool,
}

/// A threshold that holds: `rule` is its stable key within the org and
/// period (e.g. `quota:sandbox_cpu_core_seconds:80`).
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub rule: String,
    pub event_type: &'static str,
    pub data: serde_json::Value,
}

pub const QUOTA_THRESHOLD: &str = "quota.threshold_reached";
pub const CREDIT_BELOW: &str = "credit.balance_below";
pub const CONCURRENCY_LIMIT: &str = "concurrency.limit_reached";
pub const SESSION_OVER_LIMIT: &str = "session.over_limit";

/// Quota, concurrency and session thresholds that hold for `org` now.
pub fn usage_crossings(
    rules: &Rules,
    plan: &Plan,
    meters: &[MeterDef],
    org: &Usage<'_>,
    now_ms: i64,
) -> Vec<Crossing> {
    let mut out = commit_crossings(rules, plan, meters, org, now_ms);
    out.extend(session_crossings(rules, plan, org, now_ms));
    out
}

/// The thresholds a commit can cross: quotas and concurrency (O(quotas)).
/// Sessions cross by time passing, so the sweep looks at them.
pub fn commit_crossings(
    rules: &Rules,
    plan: &Plan,
    meters: &[MeterDef],
    org: &Usage<'_>,
    now_ms: i64,
) -> Vec<Crossing> {
    let mut out = Vec::new();
    for (meter_name, quota) in &plan.quotas {
        let Some(meter) = meters.iter().find(|m| &m.name == meter_name) else { continue };
        // A `Max` meter without a value read from the store waits for the sweep.
        let Ok(Some(used)) = org.value(meter, now_ms) else { continue };
        if used <= Decimal::ZERO {
            continue;
        }
        for &percent in &rules.quota_percent {
            // used / limit ≥ percent / 100, without dividing.
            let reached =
                match (used.checked_mul(Decimal::from(100)), quota.limit.checked_mul(Decimal::from(percent)))
                {
                    (Some(u), Some(l)) => u >= l,
                    _ => false,
                };
            if reached {
                out.push(Crossing {
                    rule: format!("quota:{meter_name}:{percent}"),
                    event_type: QUOTA_THRESHOLD,
                    data: json!({
                        "meter": meter_name,
                        "unit": meter.unit,
                        "threshold_percent": percent,
                        "used": meterd_units::format_quantity(used),
                        "quota": meterd_units::format_quantity(quota.limit),
                        "enforcement": quota.enforcement,
                    }),
                });
            }
        }
    }
    if rules.concurrency_limit
        && let Some(limit) = plan.max_concurrent_sandboxes
    {
        let running = org.running();
        if running >= limit {
            out.push(Crossing {
                rule: format!("concurrency:{limit}"),
                event_type: CONCURRENCY_LIMIT,
                data: json!({ "running": running, "limit": limit }),
            });
        }
    }
    out
}

/// Sandbox sessions over the plan's limit (open ones from memory, closed
/// ones from the store's facts).
pub fn session_crossings(rules: &Rules, plan: &Plan, org: &Usage<'_>, now_ms: i64) -> Vec<Crossing> {
    let mut out = Vec::new();
    if rules.session_over_limit
        && let Some(limit_s) = plan.max_session_seconds
    {
        let limit_ms = i64::try_from(limit_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
        for session in org.sessions_over(limit_ms, now_ms) {
            out.push(Crossing {
                // One per sandbox session: each violation is news.
                rule: format!("session:{}:{}", session.subject, session.started_ms),
                event_type: SESSION_OVER_LIMIT,
                data: json!({
                    "sandbox": session.subject,
                    "started_at": crate::time::rfc3339(session.started_ms),
                    "ended_at": session.ended_ms.map(crate::time::rfc3339),
                    "limit_seconds": limit_s,
                }),
            });
        }
    }
    out
}

/// Credit thresholds that hold for a balance.
pub fn credit_crossings(rules: &Rules, balance: Decimal, currency: &str) -> Vec<Crossing> {
    rules
        .credit_below
        .iter()
        .filter(|&&below| balance < below)
        .map(|below| Crossing {
            rule: format!("credit_below:{}", meterd_units::format_quantity(*below)),
            event_type: CREDIT_BELOW,
            data: json!({
                "below": meterd_units::format_quantity(*below),
                "balance": meterd_units::format_money(balance),
                "currency": currency,
            }),
        })
        .collect()
}
