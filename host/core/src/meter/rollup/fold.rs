//! The rollup tables (and the sandbox runs) computed from raw records in one pass: the back-fill
//! of a database that has records but no rollups, and the check that
//! recomputes them and compares.
//!
//! Records must arrive grouped by (org, metric) and in time order within
//! each; memory is the levels
//! in force of one series' subjects (those not at 0, with their cells when
//! keys are declared), whatever the number
//! of records. Output accumulates in [`Fold::output`] for the caller to
//! write in batches. The declared keys' group levels come out as series of
//! their own (`groups::level_series`), folded beside their metric.

use std::collections::{BTreeMap, HashMap, HashSet};

use meterd_units::QuantityError;
use rust_decimal::Decimal;

use super::groups::{GroupHour, GroupHourKey, cell_of, level_series};
use super::{Hour, Month, SeriesKey, hour_of};
use crate::meter::Kind;
use crate::meter::period::month_containing;
use crate::plans::SANDBOX_ACTIVE_METRIC;
use crate::plans::standing::Run;

/// Rows the fold has finished, in (org, metric, time) order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FoldOutput {
    /// (series, instant, net step), non-zero steps only.
    pub steps: Vec<(SeriesKey, i64, Decimal)>,
    /// (series, hour start, hour).
    pub hours: Vec<(SeriesKey, i64, Hour)>,
    /// (series, month start, month): the sum of its hours, non-zero only.
    pub months: Vec<(SeriesKey, i64, Month)>,
    /// (org, run) of every sandbox run (`sandbox_active` above zero).
    pub runs: Vec<(String, Run)>,
    /// Every group hour of the declared keys.
    pub group_hours: Vec<(GroupHourKey, GroupHour)>,
}

impl FoldOutput {
    pub fn len(&self) -> usize {
        self.steps.len() + self.hours.len() + self.months.len() + self.runs.len() + self.group_hours.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("records out of order: ({0}) after ({1})")]
    OutOfOrder(String, String),
    #[error(transparent)]
    Quantity(#[from] QuantityError),
}

/// One raw record as the fold reads it.
#[derive(Debug, Clone, Copy)]
pub struct FoldRecord<'a> {
    pub org_id: &'a str,
    pub metric: &'a str,
    pub subject: &'a str,
    pub kind: Kind,
    pub quantity: Decimal,
    pub at_ms: i64,
    /// Read only for the declared group keys.
    pub attributes: &'a BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct Fold {
    /// The attribute keys rolled up per group.
    group_by: Vec<String>,
    /// The current hour's group hours, by (key, cell).
    group_hour: BTreeMap<(String, String), GroupHour>,
    series: Option<SeriesKey>,
    /// Series already read: a series' records must be contiguous (in
    /// whatever order the database sorts series).
    finished: HashSet<SeriesKey>,
    /// Each subject's level in force and its cells (one per declared key),
    /// absent when 0.
    in_force: HashMap<String, (Decimal, Vec<String>)>,
    /// The instant being read and each subject's record in force at it:
    /// the greatest quantity and, per key, the greatest cell among the
    /// records holding it (the engine's tie rule).
    instant: Option<i64>,
    at_instant: HashMap<String, (Decimal, Vec<String>)>,
    summaries: Summaries,
    /// The current series' group levels, by level series.
    group_levels: BTreeMap<String, Summaries>,
    /// Sandbox series only: each running subject's run start.
    run_starts: HashMap<String, i64>,
    pub output: FoldOutput,
}

impl Fold {
    /// A fold that also rolls up the groups of `group_by`'s keys.
    pub fn new(group_by: &[String]) -> Self {
        Self { group_by: group_by.to_vec(), ..Self::default() }
    }

    pub fn push(&mut self, r: FoldRecord<'_>) -> Result<(), FoldError> {
        let same_series = self.series.as_ref().is_some_and(|s| s.org_id == r.org_id && s.metric == r.metric);
        if !same_series {
            let key = SeriesKey { org_id: r.org_id.to_owned(), metric: r.metric.to_owned() };
            if self.finished.contains(&key) {
                return Err(FoldError::OutOfOrder(
                    format!("{}, {}", r.org_id, r.metric),
                    "other series after its records".to_owned(),
                ));
            }
            self.finish_series()?;
            if let Some(done) = self.series.replace(key) {
                self.finished.insert(done);
            }
        }
        match self.instant {
            Some(t) if t > r.at_ms => {
                return Err(FoldError::OutOfOrder(format!("at {}", r.at_ms), format!("at {t}")));
            }
            Some(t) if t == r.at_ms => {}
            _ => {
                self.finish_instant()?;
                self.instant = Some(r.at_ms);
            }
        }
        let start = hour_of(r.at_ms);
        if self.summaries.hour.as_ref().is_none_or(|(h, _)| *h != start) {
            self.finish_hour()?;
        }
        let delta = if r.kind == Kind::Delta { r.quantity } else { Decimal::ZERO };
        if let Some(series) = &self.series {
            self.summaries.hour_at(series, r.at_ms, &mut self.output)?.add_record(delta, true)?;
        }
        for key in &self.group_by {
            let cell = cell_of(r.attributes.get(key).map(String::as_str));
            let group = self.group_hour.entry((key.clone(), cell)).or_default();
            group.add(&GroupHour::of_record(r.kind, r.quantity, true))?;
        }
        if r.kind == Kind::Level {
            let cells: Vec<String> =
                self.group_by.iter().map(|k| cell_of(r.attributes.get(k).map(String::as_str))).collect();
            match self.at_instant.get_mut(r.subject) {
                None => {
                    self.at_instant.insert(r.subject.to_owned(), (r.quantity, cells));
                }
                Some((q, held)) if r.quantity > *q => (*q, *held) = (r.quantity, cells),
                Some((q, held)) if r.quantity == *q => {
                    for (h, c) in held.iter_mut().zip(cells) {
                        if c > *h {
                            *h = c;
                        }
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Ends the input: everything read is in [`Fold::output`].
    pub fn finish(&mut self) -> Result<(), FoldError> {
        self.finish_series()?;
        self.series = None;
        Ok(())
    }

    fn finish_series(&mut self) -> Result<(), FoldError> {
        self.finish_instant()?;
        self.finish_hour()?;
        if let Some(series) = &self.series {
            self.summaries.finish(series, &mut self.output)?;
            for (metric, mut levels) in std::mem::take(&mut self.group_levels) {
                let group = SeriesKey { metric, ..series.clone() };
                levels.finish(&group, &mut self.output)?;
            }
            for (subject, started_ms) in self.run_starts.drain() {
                self.output.runs.push((series.org_id.clone(), Run { subject, started_ms, ended_ms: None }));
            }
        }
        self.in_force.clear();
        Ok(())
    }

    /// Writes the group hours of the hour being read out (the hour itself
    /// goes out with its summaries, when the next one starts).
    fn finish_hour(&mut self) -> Result<(), FoldError> {
        let (Some(series), Some((start, _))) = (&self.series, &self.summaries.hour) else { return Ok(()) };
        for ((key, cell), group) in std::mem::take(&mut self.group_hour) {
            self.output.group_hours.push(((series.clone(), key, cell, *start), group));
        }
        Ok(())
    }

    /// The org level's step at the instant just read, and the groups'.
    fn finish_instant(&mut self) -> Result<(), FoldError> {
        let Some(at) = self.instant.take() else { return Ok(()) };
        let overflow = || QuantityError::Overflow("level step");
        let mut step = Decimal::ZERO;
        // (key, cell) → the change of that group's level at `at`.
        let mut moves: BTreeMap<(usize, String), Decimal> = BTreeMap::new();
        let sandboxes = self.series.as_ref().is_some_and(|s| s.metric == SANDBOX_ACTIVE_METRIC);
        for (subject, (q, cells)) in self.at_instant.drain() {
            let was = self.in_force.get(&subject).map(|(q, _)| *q).unwrap_or(Decimal::ZERO);
            if sandboxes {
                let (running, runs) = (was > Decimal::ZERO, q > Decimal::ZERO);
                if !running && runs {
                    self.run_starts.insert(subject.clone(), at);
                } else if running
                    && !runs
                    && let (Some(series), Some(started_ms)) = (&self.series, self.run_starts.remove(&subject))
                {
                    let run = Run { subject: subject.clone(), started_ms, ended_ms: Some(at) };
                    self.output.runs.push((series.org_id.clone(), run));
                }
            }
            step = step.checked_add(q.checked_sub(was).ok_or_else(overflow)?).ok_or_else(overflow)?;
            let leaving = self.in_force.get(&subject).map(|(q, cells)| (-*q, cells.as_slice()));
            for (amount, held) in leaving.into_iter().chain([(q, cells.as_slice())]) {
                for (key, cell) in held.iter().enumerate() {
                    let sum = moves.entry((key, cell.clone())).or_default();
                    *sum = sum.checked_add(amount).ok_or_else(overflow)?;
                }
            }
            if q.is_zero() {
                self.in_force.remove(&subject);
            } else {
                self.in_force.insert(subject, (q, cells));
            }
        }
        let Some(series) = &self.series else { return Ok(()) };
        for ((key, cell), change) in moves.into_iter().filter(|(_, c)| !c.is_zero()) {
            let metric = level_series(&series.metric, &self.group_by[key], &cell);
            let group = SeriesKey { org_id: series.org_id.clone(), metric: metric.clone() };
            let levels = self.group_levels.entry(metric).or_default();
            levels.step(&group, at, change, &mut self.output)?;
        }
        if !step.is_zero() {
            self.summaries.step(series, at, step, &mut self.output)?;
        }
        Ok(())
    }
}

/// One series' hour and month being summed, written out as each ends.
#[derive(Debug, Default)]
struct Summaries {
    hour: Option<(i64, Hour)>,
    month: Option<(i64, Month)>,
}

impl Summaries {
    /// The hour holding `at`, the hour before it written out first.
    fn hour_at(&mut self, series: &SeriesKey, at: i64, out: &mut FoldOutput) -> Result<&mut Hour, FoldError> {
        let start = hour_of(at);
        if self.hour.as_ref().is_some_and(|(h, _)| *h != start) {
            self.finish_hour(series, out)?;
        }
        Ok(&mut self.hour.get_or_insert_with(|| (start, Hour::default())).1)
    }

    /// A step of the series' level, in time order.
    fn step(
        &mut self,
        series: &SeriesKey,
        at: i64,
        step: Decimal,
        out: &mut FoldOutput,
    ) -> Result<(), FoldError> {
        out.steps.push((series.clone(), at, step));
        let start = hour_of(at);
        self.hour_at(series, at, out)?.append_steps(start, &[(at, step)])?;
        Ok(())
    }

    /// Writes the hour out and adds it to its month.
    fn finish_hour(&mut self, series: &SeriesKey, out: &mut FoldOutput) -> Result<(), FoldError> {
        let Some((start, hour)) = self.hour.take() else { return Ok(()) };
        let month = month_containing(start).from_ms;
        if self.month.as_ref().is_some_and(|(m, _)| *m != month) {
            self.finish_month(series, out);
        }
        let (_, sum) = self.month.get_or_insert_with(|| (month, Month::default()));
        sum.add(&Month::of_hour(&hour, start - month)?)?;
        out.hours.push((series.clone(), start, hour));
        Ok(())
    }

    fn finish_month(&mut self, series: &SeriesKey, out: &mut FoldOutput) {
        if let Some((month, sum)) = self.month.take()
            && !sum.is_zero()
        {
            out.months.push((series.clone(), month, sum));
        }
    }

    fn finish(&mut self, series: &SeriesKey, out: &mut FoldOutput) -> Result<(), FoldError> {
        self.finish_hour(series, out)?;
        self.finish_month(series, out);
        Ok(())
    }
}
