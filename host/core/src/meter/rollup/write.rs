//! What a transaction's level records change in the org level's steps.
//!
//! A subject's level in force after instant `t` is `v(t)`, the greatest
//! quantity recorded at `t`; the subject's step at `t` is
//! `v(t) − v(previous instant)` (0 before its first instant). Inserting or
//! correcting a record at `t` can change `v(t)` only, so only the steps at
//! `t` and at the subject's next instant change. The store reads the
//! subject's records at `t` and at the instants just before and after it
//! (after the transaction's writes) and this module compares the steps of
//! that neighbourhood before and after.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use meterd_units::QuantityError;
use rust_decimal::Decimal;

/// Instant → what a transaction wrote there: (quantity now, quantity
/// before: `None` for an insert).
pub type Written = BTreeMap<i64, Vec<(Decimal, Option<Decimal>)>>;

/// One subject's level records around the instants a transaction wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Neighbourhood {
    /// Instant → every quantity stored at it now (after the writes), for
    /// each written instant and the subject's instants just before and
    /// just after it.
    pub stored: BTreeMap<i64, Vec<Decimal>>,
    pub written: Written,
}

/// The instants whose steps a transaction's writes can change: each written
/// instant and the subject's next stored instant after it, in order.
pub fn touched<W, S>(written: &BTreeMap<i64, W>, stored: &BTreeMap<i64, S>) -> Vec<i64> {
    let mut touched: Vec<i64> = Vec::new();
    for &at in written.keys() {
        touched.push(at);
        if let Some((&next, _)) = stored.range((Excluded(at), Unbounded)).next() {
            touched.push(next);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    touched
}

/// The level in force after an instant holding `quantities` (`None`: no
/// record there).
fn in_force(quantities: &[Decimal]) -> Option<Decimal> {
    quantities.iter().copied().max()
}

impl Neighbourhood {
    /// The level in force after `at` now.
    fn now(&self, at: i64) -> Option<Decimal> {
        self.stored.get(&at).and_then(|q| in_force(q))
    }

    /// The level in force after `at` before the transaction's writes,
    /// undone last first (a record inserted and then corrected, or
    /// corrected twice, in one transaction).
    fn before(&self, at: i64) -> Option<Decimal> {
        let mut quantities = self.stored.get(&at).cloned().unwrap_or_default();
        for (now, was) in self.written.get(&at).into_iter().flatten().rev() {
            if let Some(i) = quantities.iter().position(|q| q == now) {
                quantities.swap_remove(i);
            }
            quantities.extend(*was);
        }
        in_force(&quantities)
    }

    /// The subject's step at `at` in one state (`value` gives the level in
    /// force after an instant in that state).
    fn step(&self, at: i64, value: impl Fn(i64) -> Option<Decimal>) -> Result<Decimal, QuantityError> {
        let Some(v) = value(at) else { return Ok(Decimal::ZERO) };
        let previous = self.stored.range(..at).rev().find_map(|(&t, _)| value(t)).unwrap_or(Decimal::ZERO);
        v.checked_sub(previous).ok_or(QuantityError::Overflow("level step"))
    }

    /// How the subject's steps change: (instant, change), non-zero only, in
    /// time order.
    pub fn step_changes(&self) -> Result<Vec<(i64, Decimal)>, QuantityError> {
        let mut out = Vec::new();
        for at in touched(&self.written, &self.stored) {
            let now = self.step(at, |t| self.now(t))?;
            let before = self.step(at, |t| self.before(t))?;
            let change = now.checked_sub(before).ok_or(QuantityError::Overflow("level step"))?;
            if !change.is_zero() {
                out.push((at, change));
            }
        }
        Ok(out)
    }
}
