//! One org's usage in the current billing period, kept current commit by
//! commit from what each commit changed in the rollups ([`Effect`]), so an
//! entitlement check never scans stored records and memory does not grow
//! with them.
//!
//! Per metric it keeps:
//! - the period's record count and sum of deltas;
//! - the org level (Σ over subjects) as `carry` (the level at the period
//!   start), the sum `Σδ` and moment `Σδ·(t − P)` of the period's steps up
//!   to the settled instant, and the few steps after it (a provider clock
//!   ahead of ours) one by one. The integral to `now` is then
//!   `(carry + Σδ)·(now − P) − Σδ·(t − P)` plus the pending steps' share:
//!   O(1), whatever the number of records.
//!
//! Per org it keeps the open sandbox runs (`sandbox_active` above zero),
//! which give the concurrency and the sessions still running. What memory
//! does not hold — the peak level (`Max` meters) and closed sessions — the
//! store answers ([`StoreFacts`]).
//!
//! Effects commute: applying one commit's effects before or after
//! another's gives the same standing. Sums are sums; an open run is kept
//! as the number of times it was added less the times it was removed
//! ([`OpenRuns`]), so a removal that arrives before its addition (a
//! replica's own commit stopping a sandbox applied before the feed brings
//! the other replica's earlier commit that started it) is remembered and
//! cancels the addition when it comes.
//!
//! The values equal `meter::aggregate` over the same records (tests check
//! it on random histories). Effects stamped after the period are held
//! aside and applied when it rolls over; steps before it move the carry.

use std::collections::{BTreeMap, HashMap};

use meterd_units::QuantityError;
use rust_decimal::Decimal;

use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::Hour;
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

/// A run of a subject's level above zero: a sandbox session as the store
/// keeps it. `ended_ms` is `None` while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub subject: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
}

/// What one commit changed in one metric's rollups: the effects a standing
/// is kept current by. Each has an exact inverse ([`Effect::inverse`]), so
/// a standing changed inside a transaction that then fails is restored.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Records stamped in the hour starting `at_ms`: how many were added
    /// and what they add to the sum of deltas.
    Records { at_ms: i64, added: i64, delta: Decimal },
    /// The org level's step at `at_ms` changed by `change`.
    Step { at_ms: i64, change: Decimal },
    /// A sandbox run (of `sandbox_active`) was added or removed.
    Run { run: Run, added: bool },
}

impl Effect {
    /// The effect that undoes this one.
    pub fn inverse(&self) -> Effect {
        match self {
            Effect::Records { at_ms, added, delta } => {
                Effect::Records { at_ms: *at_ms, added: -added, delta: -delta }
            }
            Effect::Step { at_ms, change } => Effect::Step { at_ms: *at_ms, change: -change },
            Effect::Run { run, added } => Effect::Run { run: run.clone(), added: !added },
        }
    }

    /// The instant the effect belongs to (a run has none: runs do not
    /// depend on the period).
    fn at_ms(&self) -> Option<i64> {
        match self {
            Effect::Records { at_ms, .. } | Effect::Step { at_ms, .. } => Some(*at_ms),
            Effect::Run { .. } => None,
        }
    }
}

/// A sandbox session as entitlements and notices show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    pub subject: String,
    pub started_ms: i64,
    /// `None` while still running.
    pub ended_ms: Option<i64>,
    /// Length so far (to `now` while running), in milliseconds.
    pub length_ms: i64,
}

impl Session {
    pub fn of(run: &Run, now_ms: i64) -> Self {
        Session {
            subject: run.subject.clone(),
            started_ms: run.started_ms,
            ended_ms: run.ended_ms,
            length_ms: run.ended_ms.unwrap_or(now_ms).saturating_sub(run.started_ms),
        }
    }
}

/// The runs above zero of one subject's level records, `(at, quantity)` in
/// any order: the level after an instant is its greatest quantity (the
/// engine's tie rule), 0 before the first. A run starts at an instant whose
/// level is above zero after one that is not, and ends at the next instant
/// whose level is not.
pub fn runs_of(subject: &str, records: &[(i64, Decimal)]) -> Vec<Run> {
    let mut levels: BTreeMap<i64, Decimal> = BTreeMap::new();
    for &(at, q) in records {
        let level = levels.entry(at).or_insert(q);
        *level = (*level).max(q);
    }
    let mut runs = Vec::new();
    let mut start = None;
    for (at, level) in levels {
        match (start, level > Decimal::ZERO) {
            (None, true) => start = Some(at),
            (Some(s), false) => {
                runs.push(Run { subject: subject.to_owned(), started_ms: s, ended_ms: Some(at) });
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(Run { subject: subject.to_owned(), started_ms: s, ended_ms: None });
    }
    runs
}

/// The run effects that turn `before` into `after` (one subject's runs):
/// removals first, so a subject never holds two open runs.
pub fn run_effects(before: &[Run], after: &[Run]) -> Vec<Effect> {
    let removed = before.iter().filter(|r| !after.contains(r));
    let added = after.iter().filter(|r| !before.contains(r));
    removed
        .map(|r| Effect::Run { run: r.clone(), added: false })
        .chain(added.map(|r| Effect::Run { run: r.clone(), added: true }))
        .collect()
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

/// One metric in the period.
#[derive(Debug, Clone, Default)]
struct MetricStanding {
    delta_sum: Decimal,
    count: i64,
    /// The org level at the period start.
    carry: Decimal,
    /// Σδ and Σδ·(t − P) of the period's steps at or before `settled_to`.
    step_sum: Decimal,
    moment: Decimal,
    /// The period's steps after `settled_to`, by instant.
    pending: BTreeMap<i64, Decimal>,
}

impl MetricStanding {
    fn add_step(
        &mut self,
        period: Range,
        settled_to: i64,
        at_ms: i64,
        change: Decimal,
    ) -> Result<(), QuantityError> {
        if at_ms < period.from_ms {
            self.carry = add(self.carry, change)?;
        } else if at_ms <= settled_to {
            self.add_settled(period, at_ms, change)?;
        } else {
            let step = self.pending.entry(at_ms).or_default();
            *step = add(*step, change)?;
            if step.is_zero() {
                self.pending.remove(&at_ms);
            }
        }
        Ok(())
    }

    /// Adds an in-period step to Σδ and Σδ·(t − P).
    fn add_settled(&mut self, period: Range, at_ms: i64, change: Decimal) -> Result<(), QuantityError> {
        self.step_sum = add(self.step_sum, change)?;
        self.moment = add(self.moment, mul(change, ms(at_ms - period.from_ms))?)?;
        Ok(())
    }

    /// Folds the pending steps at or before `to` into the sums.
    fn settle(&mut self, period: Range, to: i64) -> Result<(), QuantityError> {
        let later = self.pending.split_off(&to.saturating_add(1));
        for (at, change) in std::mem::replace(&mut self.pending, later) {
            self.add_settled(period, at, change)?;
        }
        Ok(())
    }

    /// ∫ level × ms from the period start to `clip` (≥ the settled instant).
    fn integral_ms(&self, period: Range, clip: i64) -> Result<Decimal, QuantityError> {
        let settled = add(self.carry, self.step_sum)?;
        let mut total = mul(settled, ms(clip - period.from_ms))? - self.moment;
        for (&at, &change) in self.pending.range(..clip) {
            total = add(total, mul(change, ms(clip - at))?)?;
        }
        Ok(total)
    }

    /// The level after every step of the period.
    fn latest(&self) -> Result<Decimal, QuantityError> {
        self.pending.values().try_fold(add(self.carry, self.step_sum)?, |sum, s| add(sum, *s))
    }
}

/// One org's standing in one period.
#[derive(Debug, Clone)]
pub struct OrgStanding {
    period: Range,
    /// Steps at or before this instant are in the sums; time only moves
    /// forward here (see [`OrgStanding::roll_to`]).
    settled_to: i64,
    metrics: HashMap<String, MetricStanding>,
    /// Effects stamped after the period, applied when it rolls over.
    ahead: Vec<(String, Effect)>,
    open_runs: OpenRuns,
}

/// The open sandbox runs, kept so that the order their effects arrive in
/// does not matter: per run (subject, start) the number of times it was
/// added less the number of times it was removed. A run is open while that
/// is above zero. Every commit's effects applied once, in any order, leave
/// each run at 1 (open in the store) or 0 (not): the same as commit order.
/// In between a removal applied before its addition is held as −1 (and a
/// subject may briefly count two open runs; it is counted running once,
/// from its latest start). Zero counts are dropped, so the memory is the
/// open runs plus removals still waiting for their addition.
#[derive(Debug, Clone, Default)]
struct OpenRuns {
    /// subject → start → additions − removals (never 0).
    counts: HashMap<String, BTreeMap<i64, i64>>,
    /// Subjects with a run above zero (what `running` answers).
    running: usize,
}

impl OpenRuns {
    fn is_open(starts: Option<&BTreeMap<i64, i64>>) -> bool {
        starts.is_some_and(|s| s.values().any(|n| *n > 0))
    }

    /// Adds `by` (+1: added, −1: removed) to the run of `subject` from
    /// `started_ms`.
    fn change(&mut self, subject: &str, started_ms: i64, by: i64) {
        let was_open = Self::is_open(self.counts.get(subject));
        let starts = self.counts.entry(subject.to_owned()).or_default();
        let n = starts.entry(started_ms).or_insert(0);
        *n += by;
        if *n == 0 {
            starts.remove(&started_ms);
        }
        let is_open = Self::is_open(Some(starts));
        if starts.is_empty() {
            self.counts.remove(subject);
        }
        match (was_open, is_open) {
            (false, true) => self.running += 1,
            (true, false) => self.running -= 1,
            _ => {}
        }
    }

    /// Each running subject with the start of its latest open run.
    fn open(&self) -> impl Iterator<Item = (&String, i64)> + '_ {
        self.counts.iter().filter_map(|(subject, starts)| {
            starts.iter().rev().find(|(_, n)| **n > 0).map(|(&started_ms, _)| (subject, started_ms))
        })
    }
}

impl OrgStanding {
    /// An empty standing for the month containing `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        let period = month_containing(now_ms);
        Self {
            period,
            settled_to: period.from_ms,
            metrics: HashMap::new(),
            ahead: Vec::new(),
            open_runs: OpenRuns::default(),
        }
    }

    pub fn period(&self) -> Range {
        self.period
    }

    /// Brings the standing to `now_ms`: moves to its month if that is later
    /// (sums start again from zero, levels carry over, held-aside effects
    /// apply) and settles the steps up to it. An earlier `now_ms` changes
    /// nothing: answers are for the latest instant seen.
    pub fn roll_to(&mut self, now_ms: i64) -> Result<(), QuantityError> {
        let target = month_containing(now_ms);
        if target.from_ms > self.period.from_ms {
            for metric in self.metrics.values_mut() {
                let carry = metric.latest()?;
                *metric = MetricStanding { carry, ..MetricStanding::default() };
            }
            self.period = target;
            self.settled_to = target.from_ms;
            let ahead = std::mem::take(&mut self.ahead);
            for (metric, effect) in ahead {
                self.apply(&metric, &effect)?;
            }
        }
        if now_ms > self.settled_to {
            self.settled_to = now_ms.min(self.period.to_ms);
            for metric in self.metrics.values_mut() {
                metric.settle(self.period, self.settled_to)?;
            }
        }
        Ok(())
    }

    /// Applies one effect of a commit to `metric`.
    pub fn apply(&mut self, metric: &str, effect: &Effect) -> Result<(), QuantityError> {
        let period = self.period;
        if effect.at_ms().is_some_and(|at| at >= period.to_ms) {
            self.ahead.push((metric.to_owned(), effect.clone()));
            return Ok(());
        }
        match effect {
            Effect::Records { at_ms, added, delta } => {
                if *at_ms >= period.from_ms {
                    let m = self.metrics.entry(metric.to_owned()).or_default();
                    m.count += added;
                    m.delta_sum = add(m.delta_sum, *delta)?;
                }
            }
            Effect::Step { at_ms, change } => {
                let settled_to = self.settled_to;
                self.metrics
                    .entry(metric.to_owned())
                    .or_default()
                    .add_step(period, settled_to, *at_ms, *change)?;
            }
            Effect::Run { run, added } => {
                if run.ended_ms.is_none() {
                    self.open_runs.change(&run.subject, run.started_ms, if *added { 1 } else { -1 });
                }
            }
        }
        Ok(())
    }

    /// Undoes [`OrgStanding::apply`] of `effect` (its transaction did not
    /// commit).
    pub fn revert(&mut self, metric: &str, effect: &Effect) -> Result<(), QuantityError> {
        let inverse = effect.inverse();
        if let Some(i) = self.ahead.iter().position(|(m, e)| m == metric && *e == *effect) {
            self.ahead.swap_remove(i);
            return Ok(());
        }
        self.apply(metric, &inverse)
    }

    /// Seeds one metric from the store (start-up): `carry` is the level at
    /// the period start, `hours` every stored hour from the period start on,
    /// `after_settled` every stored step after `settled_to` (one per
    /// instant). The standing must be fresh and rolled to the same instant.
    pub fn seed(
        &mut self,
        metric: &str,
        carry: Decimal,
        hours: &[(i64, Hour)],
        after_settled: &[(i64, Decimal)],
    ) -> Result<(), QuantityError> {
        let period = self.period;
        let m = self.metrics.entry(metric.to_owned()).or_default();
        m.carry = add(m.carry, carry)?;
        for (start, hour) in hours {
            if *start >= period.to_ms {
                let effect = Effect::Records { at_ms: *start, added: hour.records, delta: hour.delta_sum };
                self.ahead.push((metric.to_owned(), effect));
                continue;
            }
            m.count += hour.records;
            m.delta_sum = add(m.delta_sum, hour.delta_sum)?;
            m.step_sum = add(m.step_sum, hour.level_step)?;
            let offset = mul(hour.level_step, ms(start - period.from_ms))?;
            m.moment = add(m.moment, add(hour.level_moment, offset)?)?;
        }
        // The steps after the settled instant were counted in their hours:
        // take them out again and keep them one by one.
        for &(at, change) in after_settled {
            if at >= period.to_ms {
                self.ahead.push((metric.to_owned(), Effect::Step { at_ms: at, change }));
                continue;
            }
            m.add_settled(period, at, -change)?;
            m.pending.insert(at, change);
        }
        Ok(())
    }

    /// Seeds an open run (start-up).
    pub fn seed_open_run(&mut self, subject: &str, started_ms: i64) {
        self.open_runs.change(subject, started_ms, 1);
    }

    /// The instant steps are settled to (what a start-up seed must read
    /// after).
    pub fn settled_to(&self) -> i64 {
        self.settled_to
    }

    /// A meter's value in the period so far (integrals up to `now_ms`, or
    /// the settled instant if that is later); `None` for a `Max` meter,
    /// which memory does not keep (the store answers it).
    pub fn value(&self, meter: &MeterDef, now_ms: i64) -> Result<Option<Decimal>, QuantityError> {
        let Some(metric) = self.metrics.get(&meter.metric) else {
            return Ok((meter.aggregation != Aggregation::Max).then_some(Decimal::ZERO));
        };
        let clip = now_ms.max(self.settled_to).min(self.period.to_ms).max(self.period.from_ms);
        Ok(Some(match meter.aggregation {
            Aggregation::Sum => metric.delta_sum,
            Aggregation::Count => Decimal::from(metric.count),
            Aggregation::Latest => metric.latest()?,
            Aggregation::Integral => {
                meterd_units::ms_product_to_seconds(metric.integral_ms(self.period, clip)?)?
            }
            Aggregation::Max => return Ok(None),
        }))
    }

    /// Sandboxes running now (open runs).
    pub fn running(&self) -> usize {
        self.open_runs.running
    }

    /// Runs still open that have lasted longer than `limit_ms` by `now_ms`.
    pub fn open_sessions_over(&self, limit_ms: i64, now_ms: i64) -> Vec<Session> {
        self.open_runs
            .open()
            .map(|(subject, started_ms)| {
                Session::of(&Run { subject: subject.clone(), started_ms, ended_ms: None }, now_ms)
            })
            .filter(|s| s.length_ms > limit_ms)
            .collect()
    }
}

/// What a check reads beyond memory, fetched from the store first: the
/// period's value of each `Max` meter, and the closed sessions in the
/// period longer than the plan's limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFacts {
    pub max: BTreeMap<String, Decimal>,
    pub closed_over_limit: Vec<Run>,
}

/// An org's standing as checks, entitlements and rules read it.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    pub org: &'a OrgStanding,
    pub facts: &'a StoreFacts,
}

impl Usage<'_> {
    /// A meter's value in the period; `None` only for a `Max` meter the
    /// facts lack.
    pub fn value(&self, meter: &MeterDef, now_ms: i64) -> Result<Option<Decimal>, QuantityError> {
        Ok(match self.org.value(meter, now_ms)? {
            Some(v) => Some(v),
            None => self.facts.max.get(&meter.name).copied(),
        })
    }

    pub fn running(&self) -> u64 {
        self.org.running() as u64
    }

    /// Every session that reaches into the period and lasted (or has lasted
    /// so far) longer than `limit_ms`, by start then sandbox.
    pub fn sessions_over(&self, limit_ms: i64, now_ms: i64) -> Vec<Session> {
        let period = self.org.period();
        let mut out = self.org.open_sessions_over(limit_ms, now_ms);
        out.extend(
            self.facts
                .closed_over_limit
                .iter()
                .filter(|r| r.ended_ms.is_some_and(|e| e > period.from_ms))
                .map(|r| Session::of(r, now_ms))
                .filter(|s| s.length_ms > limit_ms),
        );
        out.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.subject.cmp(&b.subject)));
        out
    }
}

#[cfg(test)]
pub(crate) mod ledger;
