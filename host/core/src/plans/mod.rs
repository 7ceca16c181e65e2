//! Plans, quotas, entitlements, credits and notification rules: the pure
//! domain of "may this org do more?". Nothing here does I/O or reads a
//! clock; `orgs` (the service) and `notify` (delivery) do that.
//!
//! - [`standing`] — one org's usage in the current period, kept current
//!   commit by commit from what each commit changed in the rollups (the
//!   in-memory state checks answer from).
//! - [`check`] — entitlements and the allow/deny decision for an action.
//! - [`credits`] — grants burned by usage × price, the balance.
//! - [`rules`] — which notification thresholds an org has crossed.
//! - [`settings`] — the config file's `[plans]`, `[prices]` and
//!   `[notifications]` sections, validated into the types below.

pub mod check;
pub mod credits;
pub mod rules;
pub mod settings;
pub mod standing;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use rust_decimal::Decimal;

/// The level metric that counts running sandboxes (1 while running, 0
/// otherwise, per sandbox): concurrency and session limits read it.
pub const SANDBOX_ACTIVE_METRIC: &str = "sandbox_active";

/// Metrics a sandbox consumes while it runs start with this: a sandbox
/// start is denied when a hard quota on any of their meters is used up.
pub const SANDBOX_METRIC_PREFIX: &str = "sandbox_";

/// Whether a quota only reports or also denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Reported and notified; the check never denies because of it.
    Soft,
    /// The check denies once usage in the period reaches the quota.
    Hard,
}

/// A monthly quota on one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub limit: Decimal,
    pub enforcement: Enforcement,
}

/// One plan: quotas by meter name, limits that are not sums, the one-time
/// credit an org gets when it first gets the plan, and its prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub quotas: BTreeMap<String, Quota>,
    /// Running sandboxes at once (`sandbox_active` levels); `None`: no limit.
    pub max_concurrent_sandboxes: Option<u64>,
    /// Longest a sandbox may run without a pause; longer is a violation.
    pub max_session_seconds: Option<u64>,
    /// Per-sandbox size limits a `sandbox.start` check enforces.
    pub max_sandbox_vcpu: Option<u64>,
    pub max_sandbox_memory_mb: Option<u64>,
    pub one_time_credit: Option<Decimal>,
    /// Price per unit of each priced meter: the global table with this
    /// plan's overrides applied. Meters not listed are free.
    pub prices: BTreeMap<String, Decimal>,
}

/// Every plan, the one orgs get when never assigned, and the currency
/// prices and grants are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanBook {
    plans: BTreeMap<String, Plan>,
    default_plan: String,
    currency: String,
}

impl PlanBook {
    /// A book whose default plan exists (the only way to make one).
    pub fn new(
        plans: BTreeMap<String, Plan>,
        default_plan: String,
        currency: String,
    ) -> Result<Self, String> {
        if !plans.contains_key(&default_plan) {
            return Err(format!(
                "default_plan {default_plan:?} is not a plan; plans: {}",
                plans.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(Self { plans, default_plan, currency })
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The plan an org is on: its assignment if that plan still exists,
    /// else the default plan.
    pub fn plan_for(&self, assigned: Option<&str>) -> &Plan {
        assigned.and_then(|name| self.plans.get(name)).unwrap_or_else(|| self.default())
    }

    pub fn default(&self) -> &Plan {
        // `new` refuses a book whose default plan does not exist.
        &self.plans[&self.default_plan]
    }

    pub fn names(&self) -> String {
        self.plans.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}
