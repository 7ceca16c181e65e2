//! Entitlements and checks: an org's standing held against its plan.
//!
//! A hard quota denies once usage in the period reaches it (`used ≥
//! quota`), and denies a request that would take usage past it; a soft
//! quota never denies (it shows up as a warning). A `sandbox.start` is
//! denied by the concurrency limit, the per-sandbox size limits, and every
//! used-up hard quota on a `sandbox_*` meter (a running sandbox consumes
//! them). A denial names every limit that denies, not just the first.

use rust_decimal::Decimal;
use serde::Serialize;

use super::standing::{Session, Usage};
use super::{Enforcement, Plan, SANDBOX_METRIC_PREFIX};
use crate::meter::MeterDef;
use meterd_units::QuantityError;

/// What a caller is about to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SandboxStart { vcpu: Option<u64>, memory_mb: Option<u64> },
    Consume { meter: String, quantity: Decimal },
}

/// One limit that denies (or, as a warning, one soft quota past its limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// `quota_exhausted`, `quota_would_exceed`, `concurrency_limit`,
    /// `sandbox_vcpu_limit`, `sandbox_memory_limit`, `soft_quota_exceeded`.
    pub code: &'static str,
    /// The meter or plan limit concerned.
    pub limit: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<Reason>,
    pub warnings: Vec<Reason>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("unknown meter {meter:?}; known meters: {known}")]
    UnknownMeter { meter: String, known: String },
    #[error("`quantity` must not be negative")]
    NegativeQuantity,
    #[error("{0}")]
    Quantity(#[from] QuantityError),
    /// A `Max` meter's value was not fetched from the store (a caller bug).
    #[error("the value of meter {0:?} was not read from the store")]
    NotRead(String),
}

/// A meter's value, which must be known (see [`Usage::value`]).
fn value_of(org: &Usage<'_>, meter: &MeterDef, now_ms: i64) -> Result<Decimal, CheckError> {
    org.value(meter, now_ms)?.ok_or_else(|| CheckError::NotRead(meter.name.clone()))
}

/// One meter against the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEntitlement {
    pub meter: String,
    pub unit: String,
    pub used: Decimal,
    pub quota: Option<Decimal>,
    pub remaining: Option<Decimal>,
    pub enforcement: Option<Enforcement>,
    pub has_access: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Concurrency {
    pub running: u64,
    pub limit: Option<u64>,
    pub has_access: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    pub limit_seconds: Option<u64>,
    pub over_limit: Vec<Session>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlements {
    pub meters: Vec<MeterEntitlement>,
    pub concurrency: Concurrency,
    pub sessions: Sessions,
}

fn find<'a>(meters: &'a [MeterDef], name: &str) -> Result<&'a MeterDef, CheckError> {
    meters.iter().find(|m| m.name == name).ok_or_else(|| CheckError::UnknownMeter {
        meter: name.to_owned(),
        known: meters.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// Every meter's standing against the plan, concurrency and sessions.
pub fn entitlements(
    plan: &Plan,
    meters: &[MeterDef],
    org: &Usage<'_>,
    now_ms: i64,
) -> Result<Entitlements, CheckError> {
    let mut out = Vec::with_capacity(meters.len());
    for meter in meters {
        let used = value_of(org, meter, now_ms)?;
        let quota = plan.quotas.get(&meter.name);
        out.push(MeterEntitlement {
            meter: meter.name.clone(),
            unit: meter.unit.clone(),
            used,
            quota: quota.map(|q| q.limit),
            remaining: quota.map(|q| (q.limit - used).max(Decimal::ZERO)),
            enforcement: quota.map(|q| q.enforcement),
            has_access: quota.is_none_or(|q| q.enforcement == Enforcement::Soft || used < q.limit),
        });
    }
    let running = org.running();
    let limit_ms =
        plan.max_session_seconds.map(|s| i64::try_from(s.saturating_mul(1_000)).unwrap_or(i64::MAX));
    Ok(Entitlements {
        meters: out,
        concurrency: Concurrency {
            running,
            limit: plan.max_concurrent_sandboxes,
            has_access: plan.max_concurrent_sandboxes.is_none_or(|l| running < l),
        },
        sessions: Sessions {
            limit_seconds: plan.max_session_seconds,
            over_limit: limit_ms.map(|l| org.sessions_over(l, now_ms)).unwrap_or_default(),
        },
    })
}

/// May the org do `action` now?
pub fn check(
    plan: &Plan,
    meters: &[MeterDef],
    org: &Usage<'_>,
    action: &Action,
    now_ms: i64,
) -> Result<Decision, CheckError> {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let q = meterd_units::format_quantity;
    match action {
        Action::Consume { meter, quantity } => {
            if quantity.is_sign_negative() && !quantity.is_zero() {
                return Err(CheckError::NegativeQuantity);
            }
            let def = find(meters, meter)?;
            if let Some(quota) = plan.quotas.get(meter) {
                let used = value_of(org, def, now_ms)?;
                let after = used.checked_add(*quantity).ok_or(QuantityError::Overflow("used + quantity"))?;
                let over = |code, message: String| Reason { code, limit: meter.clone(), message };
                match quota.enforcement {
                    Enforcement::Hard if used >= quota.limit => reasons.push(over(
                        "quota_exhausted",
                        format!("{meter}: {} of {} {} used (hard quota)", q(used), q(quota.limit), def.unit),
                    )),
                    Enforcement::Hard if after > quota.limit => reasons.push(over(
                        "quota_would_exceed",
                        format!(
                            "{meter}: {} used + {} requested exceeds the hard quota of {} {}",
                            q(used),
                            q(*quantity),
                            q(quota.limit),
                            def.unit
                        ),
                    )),
                    Enforcement::Soft if after > quota.limit => warnings.push(over(
                        "soft_quota_exceeded",
                        format!("{meter}: {} of {} {} (soft quota)", q(after), q(quota.limit), def.unit),
                    )),
                    _ => {}
                }
            }
        }
        Action::SandboxStart { vcpu, memory_mb } => {
            if let Some(limit) = plan.max_concurrent_sandboxes {
                let running = org.running();
                if running >= limit {
                    reasons.push(Reason {
                        code: "concurrency_limit",
                        limit: "max_concurrent_sandboxes".to_owned(),
                        message: format!(
                            "{running} of {limit} concurrent sandboxes are running (plan {})",
                            plan.name
                        ),
                    });
                }
            }
            for (requested, limit, code, name, unit) in [
                (vcpu, plan.max_sandbox_vcpu, "sandbox_vcpu_limit", "max_sandbox_vcpu", "vCPU"),
                (
                    memory_mb,
                    plan.max_sandbox_memory_mb,
                    "sandbox_memory_limit",
                    "max_sandbox_memory_mb",
                    "MB",
                ),
            ] {
                if let (Some(requested), Some(limit)) = (requested, limit)
                    && *requested > limit
                {
                    reasons.push(Reason {
                        code,
                        limit: name.to_owned(),
                        message: format!("{requested} {unit} requested; plan {} allows {limit}", plan.name),
                    });
                }
            }
            for (meter_name, quota) in &plan.quotas {
                let def = find(meters, meter_name)?;
                if !def.metric.starts_with(SANDBOX_METRIC_PREFIX) {
                    continue;
                }
                let used = value_of(org, def, now_ms)?;
                if used >= quota.limit {
                    let message =
                        format!("{meter_name}: {} of {} {} used", q(used), q(quota.limit), def.unit);
                    let reason = |code| Reason { code, limit: meter_name.clone(), message: message.clone() };
                    match quota.enforcement {
                        Enforcement::Hard => reasons.push(reason("quota_exhausted")),
                        Enforcement::Soft => warnings.push(reason("soft_quota_exceeded")),
                    }
                }
            }
        }
    }
    Ok(Decision { allow: reasons.is_empty(), reasons, warnings })
}
