//! `/v1/orgs/{org}`: plans, entitlements, checks and credits on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::text::{Amount, Quantity, RequestQuantity, Time};
use crate::meter::period::Range;
use crate::orgs::{Credits as CreditsOf, OrgView};
use crate::plans::Enforcement as PlanEnforcement;
use crate::plans::check::{self, Decision};
use crate::plans::credits::{Grant as GrantOf, GrantBalance as BalanceOf, GrantStatus as StatusOf};

/// `PUT /v1/orgs/{org}`. The document lists the configured plans.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignPlan {
    /// A plan of the gateway's config.
    pub plan: String,
}

/// The calendar month (UTC) usage is held against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Period {
    pub start: Time,
    /// Exclusive.
    pub end: Time,
}

impl From<Range> for Period {
    fn from(r: Range) -> Self {
        Self { start: Time::at(r.from_ms), end: Time::at(r.to_ms) }
    }
}

/// An org, its plan and its current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Org {
    pub org: String,
    pub plan: String,
    /// False while the org is on the default plan without an assignment.
    pub assigned: bool,
    pub assigned_at: Option<Time>,
    pub period: Period,
}

impl From<&OrgView> for Org {
    fn from(v: &OrgView) -> Self {
        Self {
            org: v.org_id.clone(),
            plan: v.plan.clone(),
            assigned: v.assigned_at_ms.is_some(),
            assigned_at: Time::at_opt(v.assigned_at_ms),
            period: v.period.into(),
        }
    }
}

/// The answer to `GET /v1/orgs`: the orgs the caller's key may read. An
/// admin sees every org the gateway knows now (assigned a plan, or with
/// usage this period); a tenant key exactly the orgs of its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgList {
    /// The caller's kind of key: `admin` (or the admin token) or `orgs`.
    pub scope: super::keys::KeyScope,
    /// By org id.
    pub orgs: Vec<Org>,
}

/// The answer to `PUT /v1/orgs/{org}`: the org on its plan, with the plan's
/// credit if this assignment granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignedOrg {
    #[serde(flatten)]
    pub org: Org,
    pub granted: Vec<Grant>,
}

/// `POST /v1/orgs/{org}/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// Greater than 0, in `currency`.
    pub amount: Amount,
    /// The gateway's currency (the document names it).
    pub currency: String,
    /// Default: now.
    pub effective_at: Option<Time>,
    /// Default: never; after `effective_at`.
    pub expires_at: Option<Time>,
    /// Lower burns first (default 0).
    pub priority: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Pending,
    Active,
    Expired,
}

impl From<StatusOf> for GrantStatus {
    fn from(s: StatusOf) -> Self {
        match s {
            StatusOf::Pending => Self::Pending,
            StatusOf::Active => Self::Active,
            StatusOf::Expired => Self::Expired,
        }
    }
}

/// A credit grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// None for the default plan's credit of an org never assigned a plan.
    pub id: Option<i64>,
    pub amount: Quantity,
    pub effective_at: Time,
    pub expires_at: Option<Time>,
    pub priority: i32,
    /// `api`, or `plan:<name>` for a plan's credit.
    pub source: String,
}

impl From<&GrantOf> for Grant {
    fn from(g: &GrantOf) -> Self {
        Self {
            id: g.id,
            amount: Quantity::money(g.amount),
            effective_at: Time::at(g.effective_at_ms),
            expires_at: Time::at_opt(g.expires_at_ms),
            priority: g.priority,
            source: g.source.clone(),
        }
    }
}

/// A grant with what spend has used of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantBalance {
    #[serde(flatten)]
    pub grant: Grant,
    pub used: Quantity,
    pub remaining: Quantity,
    pub status: GrantStatus,
}

impl From<&BalanceOf> for GrantBalance {
    fn from(b: &BalanceOf) -> Self {
        Self {
            grant: (&b.grant).into(),
            used: Quantity::money(b.used),
            remaining: Quantity::money(b.remaining),
            status: b.status.into(),
        }
    }
}

/// Credit balance and estimated spend (money, rounded only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    pub currency: String,
    pub balance: Quantity,
    pub spend: Quantity,
    /// Spend no grant in force covered.
    pub uncovered: Quantity,
    pub spend_this_period: Quantity,
    /// In burn order.
    pub grants: Vec<GrantBalance>,
}

impl From<&CreditsOf> for Credits {
    fn from(c: &CreditsOf) -> Self {
        let money = Quantity::money;
        Self {
            currency: c.currency.clone(),
            balance: money(c.report.balance),
            spend: money(c.report.spend),
            uncovered: money(c.report.uncovered),
            spend_this_period: money(c.spend_this_period),
            grants: c.report.grants.iter().map(GrantBalance::from).collect(),
        }
    }
}

/// The answer to `GET /v1/orgs/{org}/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgCredits {
    pub org: String,
    #[serde(flatten)]
    pub credits: Credits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Soft,
    Hard,
}

impl From<PlanEnforcement> for Enforcement {
    fn from(e: PlanEnforcement) -> Self {
        match e {
            PlanEnforcement::Soft => Self::Soft,
            PlanEnforcement::Hard => Self::Hard,
        }
    }
}

/// One meter this period against the plan's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeterEntitlement {
    pub meter: String,
    pub unit: String,
    pub used: Quantity,
    pub quota: Option<Quantity>,
    pub remaining: Option<Quantity>,
    pub enforcement: Option<Enforcement>,
    pub has_access: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Concurrency {
    /// Sandboxes running now.
    pub running: u64,
    pub limit: Option<u64>,
    pub has_access: bool,
}

/// A sandbox session longer than the plan allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub sandbox: String,
    pub started_at: Time,
    /// None while it runs.
    pub ended_at: Option<Time>,
    pub seconds: Quantity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sessions {
    pub limit_seconds: Option<u64>,
    pub over_limit: Vec<Session>,
}

/// The answer to `GET /v1/orgs/{org}/entitlements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Entitlements {
    #[serde(flatten)]
    pub org: Org,
    pub meters: Vec<MeterEntitlement>,
    pub concurrency: Concurrency,
    pub sessions: Sessions,
    pub credits: Credits,
}

impl Entitlements {
    pub fn new(view: &OrgView, e: &check::Entitlements, credits: &CreditsOf) -> Self {
        let q = Quantity::of;
        Self {
            org: view.into(),
            meters: e
                .meters
                .iter()
                .map(|m| MeterEntitlement {
                    meter: m.meter.clone(),
                    unit: m.unit.clone(),
                    used: q(m.used),
                    quota: m.quota.map(q),
                    remaining: m.remaining.map(q),
                    enforcement: m.enforcement.map(Enforcement::from),
                    has_access: m.has_access,
                })
                .collect(),
            concurrency: Concurrency {
                running: e.concurrency.running,
                limit: e.concurrency.limit,
                has_access: e.concurrency.has_access,
            },
            sessions: Sessions {
                limit_seconds: e.sessions.limit_seconds,
                over_limit: e
                    .sessions
                    .over_limit
                    .iter()
                    .map(|s| Session {
                        sandbox: s.subject.clone(),
                        started_at: Time::at(s.started_ms),
                        ended_at: Time::at_opt(s.ended_ms),
                        seconds: q(rust_decimal::Decimal::new(s.length_ms, 3)),
                    })
                    .collect(),
            },
            credits: credits.into(),
        }
    }
}

/// One limit that denies, or a soft quota past its limit (a warning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reason {
    /// `quota_exhausted`, `quota_would_exceed`, `concurrency_limit`,
    /// `sandbox_vcpu_limit`, `sandbox_memory_limit`, `soft_quota_exceeded`.
    pub code: String,
    /// The meter or plan limit concerned.
    pub limit: String,
    pub message: String,
}

/// The answer to `POST /v1/orgs/{org}/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckAnswer {
    pub allow: bool,
    /// Every limit that denies (empty when allowed).
    pub reasons: Vec<Reason>,
    pub warnings: Vec<Reason>,
}

impl From<&Decision> for CheckAnswer {
    fn from(d: &Decision) -> Self {
        let reasons = |rs: &[check::Reason]| {
            rs.iter()
                .map(|r| Reason {
                    code: r.code.to_owned(),
                    limit: r.limit.clone(),
                    message: r.message.clone(),
                })
                .collect()
        };
        Self { allow: d.allow, reasons: reasons(&d.reasons), warnings: reasons(&d.warnings) }
    }
}

/// `POST /v1/orgs/{org}/check`: `{"action":"sandbox.start","vcpu":4,
/// "memory_mb":4096}` or `{"meter":"…","quantity":"…"}`. Parsed leniently
/// (every field optional) so a wrong mix gets a message that says which
/// fields go together; the schema states the two forms exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub action: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub vcpu: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub memory_mb: Option<u64>,
    pub meter: Option<String>,
    pub quantity: Option<RequestQuantity>,
}

impl CheckRequest {
    /// The action to check, or what is wrong with the body.
    pub fn action(self) -> Result<check::Action, String> {
        match (self.action.as_deref(), self.meter) {
            (Some(SANDBOX_START), None) if self.quantity.is_none() => {
                Ok(check::Action::SandboxStart { vcpu: self.vcpu, memory_mb: self.memory_mb })
            }
            (Some(SANDBOX_START), _) => {
                Err("`sandbox.start` takes `vcpu` and `memory_mb`, not `meter`/`quantity`".to_owned())
            }
            (Some(other), _) => Err(format!(
                "unknown action {other:?}; use \"sandbox.start\", or give `meter` and `quantity`"
            )),
            (None, Some(meter)) => {
                if self.vcpu.is_some() || self.memory_mb.is_some() {
                    return Err("`vcpu`/`memory_mb` go with `\"action\":\"sandbox.start\"`".to_owned());
                }
                let quantity = match &self.quantity {
                    Some(q) => super::text::parse_decimal("quantity", &q.0)?,
                    None => rust_decimal::Decimal::ZERO,
                };
                Ok(check::Action::Consume { meter, quantity })
            }
            (None, None) => {
                Err("give `\"action\":\"sandbox.start\"` or a `meter` (and `quantity`) to check".to_owned())
            }
        }
    }
}

const SANDBOX_START: &str = "sandbox.start";

/// A count as JSON Schema's `integer` means it: any number without a
/// fraction, `4` or `4.0` (some clients write every number as a float).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // 2^64 as f64 is the first float above u64::MAX.
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(format!("{number} is not a whole number from 0 to {}", u64::MAX))),
    }
}

impl utoipa::PartialSchema for CheckRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let count = serde_json::json!({ "type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX });
        let absent = serde_json::json!({ "type": "null" });
        super::schema_from_json(serde_json::json!({
            "description": "Start a sandbox of this size, or consume a quantity of a meter.",
            "oneOf": [
                {
                    "type": "object",
                    "title": "SandboxStart",
                    "additionalProperties": false,
                    "required": ["action"],
                    "properties": {
                        "action": { "type": "string", "enum": [SANDBOX_START] },
                        "vcpu": count,
                        "memory_mb": count,
                        "meter": absent,
                        "quantity": absent,
                    },
                },
                {
                    "type": "object",
                    "title": "Consume",
                    "additionalProperties": false,
                    "required": ["meter"],
                    "properties": {
                        "meter": { "type": "string", "description": "A configured meter (the document lists them)" },
                        "quantity": {
                            "type": ["string", "null"],
                            "pattern": super::text::REQUEST_DECIMAL_PATTERN,
                            "description": "At least 0 (default 0)",
                        },
                        "action": absent,
                        "vcpu": absent,
                        "memory_mb": absent,
                    },
                },
            ],
        }))
    }
}

impl utoipa::ToSchema for CheckRequest {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_whole_numbers_written_either_way() {
        let parse = |body: &str| serde_json::from_str::<CheckRequest>(body).map(|r| r.vcpu);
        assert_eq!(parse(r#"{"vcpu": 4}"#).unwrap(), Some(4));
        assert_eq!(parse(r#"{"vcpu": 4.0}"#).unwrap(), Some(4));
        assert_eq!(parse(r#"{"vcpu": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert_eq!(parse(r#"{"vcpu": 18446744073709551615}"#).unwrap(), Some(u64::MAX));
        for bad in [r#"{"vcpu": 4.5}"#, r#"{"vcpu": -1}"#, r#"{"vcpu": 1e20}"#, r#"{"vcpu": "4"}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
