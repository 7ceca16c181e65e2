//! Credits: grants burned by estimated spend (usage × price), exactly.
//!
//! Usage can only burn a grant that is in force when the usage happens, so
//! time is cut into segments wherever a grant starts or expires; within a
//! segment the set of grants in force is fixed. Each segment's spend burns
//! the grants in force in order: lowest `priority` first, then earliest
//! expiry (never-expiring last), then earliest creation. Spend no grant
//! covers is `uncovered`. The balance is what remains of the grants in
//! force now. All of it is exact; `meterd_units::round_money` is applied
//! only when shown.

use std::cmp::Ordering;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::meter::period::Range;

/// A credit grant. `id` is `None` for the default plan's one-time credit of
/// an org that was never assigned a plan (it is not stored until then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: Option<i64>,
    pub amount: Decimal,
    pub effective_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub priority: i32,
    pub created_at_ms: i64,
    /// `api`, or `plan:<name>` for a plan's one-time credit.
    pub source: String,
}

impl Grant {
    fn in_force(&self, from_ms: i64, to_ms: i64) -> bool {
        self.effective_at_ms <= from_ms && self.expires_at_ms.is_none_or(|e| e >= to_ms)
    }

    fn burn_order(&self, other: &Grant) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| match (self.expires_at_ms, other.expires_at_ms) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.created_at_ms.cmp(&other.created_at_ms))
            .then_with(|| self.id.cmp(&other.id))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Pending,
    Active,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantBalance {
    pub grant: Grant,
    pub used: Decimal,
    pub remaining: Decimal,
    pub status: GrantStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditReport {
    /// Σ remaining of the grants in force now.
    pub balance: Decimal,
    /// Spend over all segments.
    pub spend: Decimal,
    /// Spend no grant in force covered.
    pub uncovered: Decimal,
    /// In burn order.
    pub grants: Vec<GrantBalance>,
}

/// The segments from the earliest grant's start to `now_ms` within which
/// the grants in force do not change. Empty if no grant has started.
pub fn segments(grants: &[Grant], now_ms: i64) -> Vec<Range> {
    let Some(start) = grants.iter().map(|g| g.effective_at_ms).filter(|&t| t < now_ms).min() else {
        return Vec::new();
    };
    let mut cuts: Vec<i64> = grants
        .iter()
        .flat_map(|g| [Some(g.effective_at_ms), g.expires_at_ms])
        .flatten()
        .filter(|&t| t > start && t < now_ms)
        .collect();
    cuts.push(start);
    cuts.push(now_ms);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| Range { from_ms: w[0], to_ms: w[1] }).collect()
}

/// Burns `spend` (one amount per segment of [`segments`]) against `grants`.
pub fn burn(grants: &[Grant], spend: &[(Range, Decimal)], now_ms: i64) -> CreditReport {
    let mut order: Vec<&Grant> = grants.iter().collect();
    order.sort_by(|a, b| a.burn_order(b));
    let mut remaining: Vec<Decimal> = order.iter().map(|g| g.amount).collect();
    let mut total = Decimal::ZERO;
    let mut uncovered = Decimal::ZERO;
    for (segment, amount) in spend {
        total += *amount;
        let mut left = *amount;
        for (i, grant) in order.iter().enumerate() {
            if left <= Decimal::ZERO {
                break;
            }
            if grant.in_force(segment.from_ms, segment.to_ms) {
                let take = left.min(remaining[i]).max(Decimal::ZERO);
                remaining[i] -= take;
                left -= take;
            }
        }
        uncovered += left.max(Decimal::ZERO);
    }
    let mut balance = Decimal::ZERO;
    let grants = order
        .into_iter()
        .zip(remaining)
        .map(|(grant, remaining)| {
            let status = if grant.effective_at_ms > now_ms {
                GrantStatus::Pending
            } else if grant.expires_at_ms.is_some_and(|e| e <= now_ms) {
                GrantStatus::Expired
            } else {
                balance += remaining;
                GrantStatus::Active
            };
            GrantBalance { grant: grant.clone(), used: grant.amount - remaining, remaining, status }
        })
        .collect();
    CreditReport { balance, spend: total, uncovered, grants }
}
