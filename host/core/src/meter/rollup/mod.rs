//! Rollups: what the store keeps beside the raw records so that a usage
//! query reads O(hours) rows instead of O(records). Pure: no I/O.
//!
//! Per (org, metric) the store keeps three tables, all written in the
//! transaction that writes the records:
//!
//! - **hours** ([`Hour`]): per UTC hour, the sum of delta quantities, the
//!   record count, and the org level's steps summarized (net step, moment,
//!   opening step, peak, last instant) — enough for sum, count, integral,
//!   latest and max over whole hours in O(1) each;
//! - **steps**: the org level's net step at each instant (Σ over subjects of
//!   the change of that subject's level in force), for the parts of a query
//!   that are not whole hours and to re-summarize an hour after a late record;
//! - **months** ([`Month`]): per calendar month the additive part of its
//!   hours (sum of deltas, count, net step, moment), so the level in force
//!   at any time is a sum over months and hours, not over history, and a
//!   sum, count or integral over many months (credits since a grant began)
//!   reads one row per month.
//!
//! A subject's level in force after an instant is the greatest quantity
//! recorded at it (the engine's tie rule), and 0 before its first record. A
//! late, out-of-order or corrected level changes the step at its own instant
//! and at the subject's next instant, nowhere else ([`write::Neighbourhood::step_changes`]);
//! so maintaining the rollups costs O(records written), and an hour whose
//! steps did not arrive in order is re-summarized from its steps.
//!
//! For declared attribute keys, [`groups`] keeps group hours (sums and
//! counts per attribute value and hour) beside them.
//!
//! [`fold::Fold`] computes the same tables from raw records (back-fill and
//! the check), [`query::evaluate`] answers a usage query from them; the
//! tests hold both to `meter::aggregate` over the raw records.

pub mod fold;
pub mod groups;
pub mod query;
pub mod tail;
pub mod write;

#[cfg(test)]
mod tests;

use meterd_units::QuantityError;
use rust_decimal::Decimal;

pub use super::period::HOUR_MS;

/// The start of the UTC hour containing `at_ms`.
pub fn hour_of(at_ms: i64) -> i64 {
    at_ms.saturating_sub(at_ms.rem_euclid(HOUR_MS))
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_add(b).ok_or(QuantityError::Overflow("rollup sum"))
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_mul(b).ok_or(QuantityError::Overflow("rollup moment"))
}

/// One org's metric over one UTC hour.
///
/// The level fields describe the org level `L` (Σ over subjects of the
/// level in force) relative to `L(start−)`, the level just before the hour:
/// with `Δᵢ` the step at instant `tᵢ` of the hour,
/// `∫ L over the hour = L(start−) × 1 h + level_step × 1 h − level_moment`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hour {
    /// Σ quantity of the delta records stamped in the hour.
    pub delta_sum: Decimal,
    /// Records of either kind stamped in the hour.
    pub records: i64,
    /// Σ Δᵢ: how much the level changed over the hour.
    pub level_step: Decimal,
    /// Σ Δᵢ × (tᵢ − start), in level × ms.
    pub level_moment: Decimal,
    /// The step at the hour's first millisecond (0 if none): what a window
    /// starting at the hour sees first.
    pub level_open: Decimal,
    /// max over the hour's instants of `Σ Δ up to and including it`; `None`
    /// when the hour has no step.
    pub level_peak: Option<Decimal>,
    /// The hour's last instant with a step.
    pub level_last_at: Option<i64>,
}

impl Hour {
    /// Counts one record written (or corrected: `new_record` false) in the
    /// hour; `delta_change` is what it adds to the sum of deltas.
    pub fn add_record(&mut self, delta_change: Decimal, new_record: bool) -> Result<(), QuantityError> {
        self.delta_sum = add(self.delta_sum, delta_change)?;
        if new_record {
            self.records += 1;
        }
        Ok(())
    }

    /// Whether `steps` (sorted, one per instant) all come after the hour's
    /// last step, so [`Hour::append_steps`] can add them without the
    /// hour's other steps.
    pub fn can_append(&self, steps: &[(i64, Decimal)]) -> bool {
        match (self.level_last_at, steps.first()) {
            (Some(last), Some(&(first, _))) => first > last,
            _ => true,
        }
    }

    /// Adds steps that come after every step the hour has (see
    /// [`Hour::can_append`]); `start` is the hour's start.
    pub fn append_steps(&mut self, start: i64, steps: &[(i64, Decimal)]) -> Result<(), QuantityError> {
        for &(at, step) in steps {
            if step.is_zero() {
                continue;
            }
            self.level_step = add(self.level_step, step)?;
            self.level_moment = add(self.level_moment, mul(step, Decimal::from(at - start))?)?;
            if at == start {
                self.level_open = add(self.level_open, step)?;
            }
            let running = self.level_step;
            self.level_peak = Some(self.level_peak.map_or(running, |p| p.max(running)));
            self.level_last_at = Some(self.level_last_at.map_or(at, |l| l.max(at)));
        }
        Ok(())
    }

    /// Replaces the level fields by the summary of all the hour's steps
    /// (sorted, one per instant).
    pub fn resummarize(&mut self, start: i64, steps: &[(i64, Decimal)]) -> Result<(), QuantityError> {
        self.level_step = Decimal::ZERO;
        self.level_moment = Decimal::ZERO;
        self.level_open = Decimal::ZERO;
        self.level_peak = None;
        self.level_last_at = None;
        self.append_steps(start, steps)
    }
}

/// One org's metric over one calendar month: the sum of its hours'
/// additive fields, with the moment taken from the month's start, so
/// `∫ L over [start, start + d) = L(start−) × d + level_step × d − level_moment`
/// holds for a month as for an hour (when no step lies in the month after
/// `start + d`). Latest and max need each hour's peak and read hours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Month {
    pub delta_sum: Decimal,
    pub records: i64,
    pub level_step: Decimal,
    /// Σ Δᵢ × (tᵢ − month start), in level × ms.
    pub level_moment: Decimal,
}

impl Month {
    /// What `hour`, starting `offset_ms` after the month's start, adds to
    /// its month.
    pub fn of_hour(hour: &Hour, offset_ms: i64) -> Result<Month, QuantityError> {
        Ok(Month {
            delta_sum: hour.delta_sum,
            records: hour.records,
            level_step: hour.level_step,
            level_moment: add(hour.level_moment, mul(hour.level_step, Decimal::from(offset_ms))?)?,
        })
    }

    pub fn add(&mut self, other: &Month) -> Result<(), QuantityError> {
        self.delta_sum = add(self.delta_sum, other.delta_sum)?;
        self.records =
            self.records.checked_add(other.records).ok_or(QuantityError::Overflow("rollup count"))?;
        self.level_step = add(self.level_step, other.level_step)?;
        self.level_moment = add(self.level_moment, other.level_moment)?;
        Ok(())
    }

    /// `self − other`, field by field: what changing an hour from `other`
    /// to `self` does to its month.
    pub fn minus(&self, other: &Month) -> Result<Month, QuantityError> {
        let negated = Month {
            delta_sum: -other.delta_sum,
            records: -other.records,
            level_step: -other.level_step,
            level_moment: -other.level_moment,
        };
        let mut out = self.clone();
        out.add(&negated)?;
        Ok(out)
    }

    /// Whether every field is zero (such a month has no row).
    pub fn is_zero(&self) -> bool {
        self.delta_sum.is_zero()
            && self.records == 0
            && self.level_step.is_zero()
            && self.level_moment.is_zero()
    }
}

/// One org's metric, as the rollup tables key it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub org_id: String,
    pub metric: String,
}
