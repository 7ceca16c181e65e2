//! One org's usage in the current billing period, kept current record by
//! record, so entitlement checks never scan stored records.
//!
//! Per metric it keeps what every aggregation needs: the sum and count of
//! the period's records, and each subject's level steps (with the last level
//! before the period as carry-in). Derived values are maintained
//! incrementally: a subject's integral up to its last step, the sum of last
//! levels, `Σ last × since`, and the number of subjects running. So the
//! meter values and the concurrency a check reads cost O(1); an integral is
//! `closed + Σlast × now − Σ(last × since)`.
//!
//! The values equal `meter::aggregate` over the same records for the month
//! (tests check it on random histories): ties at one instant go to the
//! greatest quantity, levels are 0 before a subject's first step,
//! integrals stop at `now`, and Latest/Max see every step in the period.
//!
//! Records stamped after the period are held aside and applied when the
//! period rolls over; records before it count only as carry-in levels.

use std::collections::{BTreeMap, HashMap};

use meterd_units::QuantityError;
use rust_decimal::Decimal;

use crate::meter::period::{Range, month_containing};
use crate::meter::{Aggregation, Kind, MeterDef};

/// A record as it changed the store: inserted (`previous` is `None`) or
/// corrected from `previous` to `quantity`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub subject: String,
    pub metric: String,
    pub kind: Kind,
    pub at_ms: i64,
    pub quantity: Decimal,
    pub previous: Option<Decimal>,
}

impl Change {
    /// The change that undoes this one.
    fn inverse(&self) -> Undo<'_> {
        match self.previous {
            None => Undo::Remove(self),
            Some(previous) => {
                Undo::Correct(Change { quantity: previous, previous: Some(self.quantity), ..self.clone() })
            }
        }
    }
}

enum Undo<'a> {
    Remove(&'a Change),
    Correct(Change),
}

/// A run of a subject's level above zero: a sandbox session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    pub subject: String,
    pub started_ms: i64,
    /// `None` while still running.
    pub ended_ms: Option<i64>,
    /// Length so far (to `now` while running), in milliseconds.
    pub length_ms: i64,
}

const WHAT: &str = "standing";

fn add(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_add(b).ok_or(QuantityError::Overflow(WHAT))
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_mul(b).ok_or(QuantityError::Overflow(WHAT))
}

fn ms(t: i64) -> Decimal {
    Decimal::from(t)
}

/// One subject's level steps and what is derived from them.
#[derive(Debug, Clone, Default)]
struct Steps {
    /// Instant → the quantities recorded at it; the greatest is in force.
    at: BTreeMap<i64, Vec<Decimal>>,
    /// ∫ level × ms from the period start to `since` (derived).
    closed_ms: Decimal,
    /// The level in force after the last step (derived).
    last: Decimal,
    /// `max(last step, period start)`: where the open-ended part begins.
    since: i64,
    /// `(instant of a kept step, when the run above zero it continues
    /// began)`, for runs whose earlier steps were pruned or never loaded.
    carried_run: Option<(i64, i64)>,
}

impl Steps {
    fn in_force(quantities: &[Decimal]) -> Decimal {
        quantities.iter().copied().max().unwrap_or(Decimal::ZERO)
    }

    /// Recomputes the derived fields for `period`.
    fn derive(&mut self, period: Range) -> Result<(), QuantityError> {
        let mut level = Decimal::ZERO;
        let mut since = period.from_ms;
        let mut closed = Decimal::ZERO;
        for (&t, quantities) in &self.at {
            if t > since {
                closed = add(closed, mul(level, ms(t - since))?)?;
                since = t;
            }
            level = Self::in_force(quantities);
        }
        self.closed_ms = closed;
        self.last = level;
        self.since = since;
        Ok(())
    }

    /// ∫ level × ms from the period start to `clip` (slow path, O(steps)).
    fn integral_ms_to(&self, period: Range, clip: i64) -> Result<Decimal, QuantityError> {
        let mut level = Decimal::ZERO;
        let mut since = period.from_ms;
        let mut total = Decimal::ZERO;
        for (&t, quantities) in &self.at {
            if t >= clip {
                break;
            }
            if t > since {
                total = add(total, mul(level, ms(t - since))?)?;
                since = t;
            }
            level = Self::in_force(quantities);
        }
        if clip > since {
            total = add(total, mul(level, ms(clip - since))?)?;
        }
        Ok(total)
    }

    /// Where a run above zero that turns positive at step `t` began: at
    /// `t`, unless `t` is the carried step of a run that began earlier and
    /// no known step lies between that start and `t`.
    fn run_start_at(&self, t: i64, previous_step: Option<i64>) -> i64 {
        match self.carried_run {
            // The step lies within the carried run's span and no known step
            // comes between the run's start and it: the run began earlier.
            Some((at, start)) if (start..=at).contains(&t) && previous_step.is_none_or(|p| p < start) => {
                start
            }
            _ => t,
        }
    }

    /// Runs above zero, as (start, end) with `None` for the running one.
    fn runs(&self) -> Vec<(i64, Option<i64>)> {
        let mut runs = Vec::new();
        let mut start = None;
        let mut previous_step = None;
        for (&t, quantities) in &self.at {
            let positive = Self::in_force(quantities) > Decimal::ZERO;
            let run_start = self.run_start_at(t, previous_step);
            previous_step = Some(t);
            match (start, positive) {
                (None, true) => start = Some(run_start),
                (Some(s), false) => {
                    runs.push((s, Some(t)));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, None));
        }
        runs
    }

    /// Keeps only the last step at or before `from` among the steps before
    /// it (the carry-in of a new period), remembering when the run it
    /// continues began.
    fn prune_before(&mut self, from: i64) {
        let Some((&keep, _)) = self.at.range(..=from).next_back() else { return };
        // The run the kept step continues — or, if the kept step stops a
        // run, the run it stops (a correction of that step to running
        // would continue it).
        let mut start = None;
        let mut continued = None;
        let mut previous_step = None;
        for (&t, quantities) in self.at.range(..=from) {
            if Self::in_force(quantities) <= Decimal::ZERO {
                continued = if t == keep { start } else { None };
                start = None;
            } else if start.is_none() {
                start = Some(self.run_start_at(t, previous_step));
            }
            previous_step = Some(t);
        }
        self.carried_run = start.or(continued).map(|s| (keep, s));
        self.at = self.at.split_off(&keep);
    }
}

/// One metric's records in the period.
#[derive(Debug, Clone, Default)]
struct MetricStanding {
    delta_sum: Decimal,
    count: u64,
    subjects: HashMap<String, Steps>,
    // Aggregates over subjects, maintained on every change:
    closed_ms: Decimal,
    last_sum: Decimal,
    last_since_sum: Decimal,
    running: usize,
    latest_since: i64,
}

impl MetricStanding {
    /// Applies `edit` to one subject's steps, keeping the aggregates.
    fn edit_subject(
        &mut self,
        period: Range,
        subject: &str,
        edit: impl FnOnce(&mut Steps),
    ) -> Result<(), QuantityError> {
        let steps = self.subjects.entry(subject.to_owned()).or_default();
        let (old_closed, old_last, old_since) = (steps.closed_ms, steps.last, steps.since);
        edit(steps);
        steps.derive(period)?;
        let (closed, last, since) = (steps.closed_ms, steps.last, steps.since);
        if steps.at.is_empty() {
            self.subjects.remove(subject);
        }
        self.closed_ms = add(self.closed_ms - old_closed, closed)?;
        self.last_sum = add(self.last_sum - old_last, last)?;
        self.last_since_sum =
            add(self.last_since_sum - mul(old_last, ms(old_since))?, mul(last, ms(since))?)?;
        let was = old_last > Decimal::ZERO;
        let is = last > Decimal::ZERO;
        if was != is {
            if is {
                self.running += 1;
            } else {
                self.running -= 1;
            }
        }
        self.latest_since = self.latest_since.max(since);
        Ok(())
    }

    /// Recomputes every aggregate (after a period roll).
    fn rederive(&mut self, period: Range) -> Result<(), QuantityError> {
        let subjects: Vec<String> = self.subjects.keys().cloned().collect();
        *self = MetricStanding { subjects: std::mem::take(&mut self.subjects), ..Default::default() };
        for subject in subjects {
            if let Some(steps) = self.subjects.get_mut(&subject) {
                steps.prune_before(period.from_ms);
                // Reset the derived fields so edit_subject adds them afresh.
                *steps = Steps {
                    at: std::mem::take(&mut steps.at),
                    carried_run: steps.carried_run,
                    ..Steps::default()
                };
                steps.since = period.from_ms;
            }
            self.edit_subject(period, &subject, |_| {})?;
        }
        Ok(())
    }

    fn integral_ms(&self, period: Range, now_ms: i64) -> Result<Decimal, QuantityError> {
        let clip = now_ms.min(period.to_ms).max(period.from_ms);
        if self.latest_since <= clip {
            // closed + Σ last × (clip − since)
            let open = mul(self.last_sum, ms(clip))? - self.last_since_sum;
            return add(self.closed_ms, open);
        }
        // A step after `now` (a clock ahead of ours): integrate each subject.
        let mut total = Decimal::ZERO;
        for steps in self.subjects.values() {
            total = add(total, steps.integral_ms_to(period, clip)?)?;
        }
        Ok(total)
    }

    /// The org's highest total level in the period (sweep over all steps).
    fn max(&self, period: Range) -> Result<Decimal, QuantityError> {
        let mut changes: BTreeMap<i64, Decimal> = BTreeMap::new();
        for steps in self.subjects.values() {
            let mut level = Decimal::ZERO;
            for (&t, quantities) in &steps.at {
                let next = Steps::in_force(quantities);
                let entry = changes.entry(t.max(period.from_ms)).or_default();
                *entry = add(*entry, next - level)?;
                level = next;
            }
        }
        // Before the first step the org's level is 0, unless steps at or
        // before the period start set it.
        let mut level = Decimal::ZERO;
        let starts_set = changes.keys().next().is_some_and(|&t| t == period.from_ms);
        let mut highest = if starts_set { None } else { Some(Decimal::ZERO) };
        for delta in changes.values() {
            level = add(level, *delta)?;
            highest = Some(highest.map_or(level, |h| h.max(level)));
        }
        Ok(highest.unwrap_or(Decimal::ZERO))
    }
}

/// One org's standing in one period.
#[derive(Debug, Clone)]
pub struct OrgStanding {
    period: Range,
    metrics: HashMap<String, MetricStanding>,
    /// Records stamped after the period, applied when it rolls over.
    ahead: Vec<Change>,
}

impl OrgStanding {
    /// An empty standing for the month containing `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self { period: month_containing(now_ms), metrics: HashMap::new(), ahead: Vec::new() }
    }

    pub fn period(&self) -> Range {
        self.period
    }

    /// Moves to the month containing `now_ms` if that is later: sums start
    /// again from zero, levels carry over, held-aside records apply.
    pub fn roll_to(&mut self, now_ms: i64) -> Result<(), QuantityError> {
        let target = month_containing(now_ms);
        if target.from_ms <= self.period.from_ms {
            return Ok(());
        }
        self.period = target;
        for metric in self.metrics.values_mut() {
            metric.delta_sum = Decimal::ZERO;
            metric.count = 0;
            metric.rederive(target)?;
        }
        let ahead = std::mem::take(&mut self.ahead);
        for change in ahead {
            self.apply(&change)?;
        }
        Ok(())
    }

    /// Applies one committed change.
    pub fn apply(&mut self, change: &Change) -> Result<(), QuantityError> {
        let period = self.period;
        if change.at_ms >= period.to_ms {
            match change.previous {
                None => self.ahead.push(change.clone()),
                Some(previous) => {
                    if let Some(held) = self.ahead.iter_mut().find(|c| same_record(c, change, previous)) {
                        held.quantity = change.quantity;
                    }
                }
            }
            return Ok(());
        }
        let in_period = change.at_ms >= period.from_ms;
        let metric = self.metrics.entry(change.metric.clone()).or_default();
        if in_period {
            if change.previous.is_none() {
                metric.count += 1;
            }
            if change.kind == Kind::Delta {
                let before = change.previous.unwrap_or(Decimal::ZERO);
                metric.delta_sum = add(metric.delta_sum, change.quantity - before)?;
            }
        }
        if change.kind == Kind::Level {
            metric.edit_subject(period, &change.subject, |steps| match change.previous {
                None => steps.at.entry(change.at_ms).or_default().push(change.quantity),
                Some(previous) => {
                    let held = steps
                        .at
                        .get_mut(&change.at_ms)
                        .and_then(|at| at.iter_mut().find(|q| **q == previous));
                    if let Some(q) = held {
                        *q = change.quantity;
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Undoes a change applied by [`OrgStanding::apply`] (its transaction
    /// did not commit).
    pub fn revert(&mut self, change: &Change) -> Result<(), QuantityError> {
        match change.inverse() {
            Undo::Correct(inverse) => self.apply(&inverse),
            Undo::Remove(change) => self.remove(change),
        }
    }

    fn remove(&mut self, change: &Change) -> Result<(), QuantityError> {
        let period = self.period;
        if change.at_ms >= period.to_ms {
            if let Some(i) = self.ahead.iter().position(|c| same_record(c, change, change.quantity)) {
                self.ahead.swap_remove(i);
            }
            return Ok(());
        }
        let Some(metric) = self.metrics.get_mut(&change.metric) else { return Ok(()) };
        if change.at_ms >= period.from_ms {
            metric.count = metric.count.saturating_sub(1);
            if change.kind == Kind::Delta {
                metric.delta_sum = add(metric.delta_sum, -change.quantity)?;
            }
        }
        if change.kind == Kind::Level && metric.subjects.contains_key(&change.subject) {
            metric.edit_subject(period, &change.subject, |steps| {
                if let Some(at) = steps.at.get_mut(&change.at_ms) {
                    if let Some(i) = at.iter().position(|q| *q == change.quantity) {
                        at.swap_remove(i);
                    }
                    if at.is_empty() {
                        steps.at.remove(&change.at_ms);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// A meter's value in the period so far (integrals up to `now_ms`).
    pub fn value(&self, meter: &MeterDef, now_ms: i64) -> Result<Decimal, QuantityError> {
        let Some(metric) = self.metrics.get(&meter.metric) else { return Ok(Decimal::ZERO) };
        match meter.aggregation {
            Aggregation::Sum => Ok(metric.delta_sum),
            Aggregation::Count => Ok(Decimal::from(metric.count)),
            Aggregation::Latest => Ok(metric.last_sum),
            Aggregation::Integral => {
                meterd_units::ms_product_to_seconds(metric.integral_ms(self.period, now_ms)?)
            }
            Aggregation::Max => metric.max(self.period),
        }
    }

    /// Notes that `subject`'s run above zero, continued by its first step,
    /// began at `start_ms` (history the store did not load: only the last
    /// level before the period is loaded).
    pub fn set_run_start(&mut self, metric: &str, subject: &str, start_ms: i64) {
        let from = self.period.from_ms;
        if let Some(steps) = self.metrics.get_mut(metric).and_then(|m| m.subjects.get_mut(subject))
            && let Some((&carried, _)) = steps.at.range(..from).next_back()
        {
            steps.carried_run = Some((carried, start_ms));
        }
    }

    /// Subjects of `metric` whose level is above zero now.
    pub fn running(&self, metric: &str) -> usize {
        self.metrics.get(metric).map_or(0, |m| m.running)
    }

    /// Every run above zero of `metric` that reaches into the period and
    /// lasted (or has lasted so far) longer than `limit_ms`.
    pub fn sessions_over(&self, metric: &str, limit_ms: i64, now_ms: i64) -> Vec<Session> {
        let Some(m) = self.metrics.get(metric) else { return Vec::new() };
        let mut out = Vec::new();
        for (subject, steps) in &m.subjects {
            for (start, end) in steps.runs() {
                let length_ms = end.unwrap_or(now_ms).saturating_sub(start);
                let reaches_period = end.is_none_or(|e| e > self.period.from_ms);
                if reaches_period && length_ms > limit_ms {
                    out.push(Session {
                        subject: subject.clone(),
                        started_ms: start,
                        ended_ms: end,
                        length_ms,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.subject.cmp(&b.subject)));
        out
    }
}

/// Whether `held` is the record `change` corrects (held with `quantity`).
fn same_record(held: &Change, change: &Change, quantity: Decimal) -> bool {
    held.subject == change.subject
        && held.metric == change.metric
        && held.kind == change.kind
        && held.at_ms == change.at_ms
        && held.quantity == quantity
}
