//! Keeping the rollup tables (see `meter::rollup`) in the transaction that
//! writes records, for both engines: the algorithm is here once, each
//! engine supplies the statements ([`RollupTx`]).
//!
//! Per transaction: the level records written are grouped by subject; the
//! subjects are locked (PostgreSQL: two replicas writing one subject's
//! levels would each miss the other's record); their neighbourhoods (and
//! the sandboxes' runs) are built from the writer's tails where those
//! answer, else read, and turned into step and run changes; then the
//! hours, steps and months touched are loaded (hours locked, in key order,
//! so replicas lock rows in one order), changed, and written at the end.
//! An hour whose new steps do not all come after its last one is
//! re-summarized from its stored steps plus this transaction's.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use rust_decimal::Decimal;

use sqlx::Database;

use super::engine::Engine;
use super::shared;
use super::{OrgChange, OrgEffect, SeriesSeed, StoreError};
use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::fold::{Fold, FoldError, FoldOutput, FoldRecord};
use crate::meter::rollup::groups::{
    self, CellWrite, GroupHour, GroupHourKey, GroupInput, GroupLevelInput, GroupNeighbourhood,
};
use crate::meter::rollup::query::{ReadPlan, RollupInput};
use crate::meter::rollup::tail::Tail;
use crate::meter::rollup::write::{Neighbourhood, Written};
use crate::meter::rollup::{HOUR_MS, Hour, Month, SeriesKey, hour_of};
use crate::meter::{Aggregation, Kind, Point};
use crate::plans::SANDBOX_ACTIVE_METRIC;
use crate::plans::standing::{Effect, Run, run_effects, runs_of};

/// A subject of one series.
pub(super) type SubjectKey = (SeriesKey, String);

/// The tails of the subjects a transaction wrote, to remember once it has
/// committed (`None`: forget the subject's).
pub(super) type SubjectTails = Vec<(SubjectKey, Option<Tail>)>;

/// A transaction's level writes, per subject.
type LevelWrites = BTreeMap<SubjectKey, Written>;

/// Level records of one subject at one instant with one quantity, as a
/// neighbourhood read returns them (grouped: a subject may hold many equal
/// records at one instant).
#[derive(Debug, Clone)]
pub(super) struct LevelRow {
    pub count: i64,
    pub org_id: String,
    pub metric: String,
    pub subject: String,
    pub at_ms: i64,
    pub quantity: Decimal,
    /// The records' attributes as stored (JSON), when asked for: records
    /// are then grouped by them too.
    pub attributes: Option<String>,
}

/// The two forms of an engine's neighbourhood statement `text` (see
/// [`RollupTx::neighbourhoods`]), whose `{attributes}` column and
/// `{group}` grouping are filled with `NULL` and nothing, then with the
/// attributes (`attributes`: the engine's expressions for the two).
pub(super) fn neighbourhood_forms(text: &str, (none, attributes): (&str, &str)) -> [String; 2] {
    [
        text.replace("{attributes}", none).replace("{group}", ""),
        text.replace("{attributes}", attributes).replace("{group}", &format!(", {attributes}")),
    ]
}

/// The statements the algorithm needs, per engine. Every method that
/// takes keys receives them sorted.
#[async_trait]
pub(super) trait RollupTx: Send {
    /// The engine: the reads that are the same on both are provided, written
    /// once (`store::shared`).
    type Engine: Engine;

    /// The connection the provided reads run on.
    fn conn(&mut self) -> &mut <Self::Engine as Database>::Connection;

    /// Serializes writers of these subjects' levels until the transaction
    /// ends (a no-op with one writer).
    async fn lock_subjects(&mut self, subjects: &[SubjectKey]) -> Result<(), StoreError>;
    /// The level records of the subject at `at`, at its last instant before
    /// `at` and at its first instant after it, for each key, grouped by
    /// (subject, instant, quantity) and, `with_attributes`, by their
    /// attributes; each group once.
    async fn neighbourhoods(
        &mut self,
        keys: &[(SubjectKey, i64)],
        with_attributes: bool,
    ) -> Result<Vec<LevelRow>, StoreError>;
    /// The cells of `key` on `series` that a level record carries before
    /// `to_ms`, in order (see `groups::merge_levels`): whole hours from the
    /// group hours, the rest of `to_ms`'s hour from the records.
    async fn level_cells(
        &mut self,
        series: &SeriesKey,
        key: &str,
        to_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        shared::level_cells::<Self::Engine>(self.conn(), series, key, to_ms).await
    }
    /// The stored rows a transaction's rollup write starts from: the hours
    /// (absent: empty), locked; an engine that adds in Rust also reads the
    /// steps and months named (others leave them empty).
    async fn load_rows(&mut self, keys: &RowKeys) -> Result<StoredRows, StoreError>;
    /// The distinct (instant, quantity) pairs of each subject's level
    /// records at or after its bound, as (subject, instant, quantity): a
    /// sandbox's history from where its runs can change, to find them.
    async fn subject_levels(
        &mut self,
        subjects: &[(SubjectKey, i64)],
    ) -> Result<Vec<(SubjectKey, i64, Decimal)>, StoreError>;
    /// The stored runs of these (org, subject)s.
    async fn stored_runs(&mut self, subjects: &[(String, String)]) -> Result<Vec<(String, Run)>, StoreError>;

    // Reads for standings.

    /// Every month's net step before `month_ms`.
    async fn months_before(&mut self, month_ms: i64) -> Result<Vec<(SeriesKey, Decimal)>, StoreError> {
        shared::months_before::<Self::Engine>(self.conn(), month_ms).await
    }
    /// Every hour from `from_ms` on, by series then time.
    async fn hours_from(&mut self, from_ms: i64) -> Result<Vec<(SeriesKey, i64, Hour)>, StoreError> {
        shared::hours_from::<Self::Engine>(self.conn(), from_ms).await
    }
    /// The steps after `after_ms` of every series with an hour from
    /// `hours_from_ms` on (one seek per series).
    async fn steps_after(
        &mut self,
        hours_from_ms: i64,
        after_ms: i64,
    ) -> Result<Vec<(SeriesKey, i64, Decimal)>, StoreError>;
    /// Every open sandbox run, by org.
    async fn open_runs(&mut self) -> Result<Vec<(String, Run)>, StoreError> {
        shared::open_runs::<Self::Engine>(self.conn()).await
    }
    /// See `Standings::long_runs`.
    async fn long_runs(
        &mut self,
        org_id: &str,
        ended_after_ms: i64,
        longer_than_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        shared::long_runs::<Self::Engine>(self.conn(), org_id, ended_after_ms, longer_than_ms).await
    }

    // Reads for usage queries.

    /// Month summaries of `series` starting in `range`, in time order.
    async fn months_in(&mut self, series: &SeriesKey, range: Range) -> Result<Vec<(i64, Month)>, StoreError> {
        shared::months_in::<Self::Engine>(self.conn(), series, range).await
    }
    /// Hour summaries of `series` starting in `range`, in time order.
    async fn hours_in(&mut self, series: &SeriesKey, range: Range) -> Result<Vec<(i64, Hour)>, StoreError> {
        shared::hours_in::<Self::Engine>(self.conn(), series, range).await
    }
    /// Steps of `series` in `range`, in time order.
    async fn steps_in(
        &mut self,
        series: &SeriesKey,
        range: Range,
    ) -> Result<Vec<(i64, Decimal)>, StoreError> {
        shared::steps_in::<Self::Engine>(self.conn(), series, range).await
    }
    /// The org level just before `at_ms`: months before its month, hours of
    /// its month before its hour, steps of its hour before it.
    async fn level_before(&mut self, series: &SeriesKey, at_ms: i64) -> Result<Decimal, StoreError>;
    /// [`read_input`] of a level aggregation for several series of one org
    /// (a grouped level query's metric and its groups' level series), in
    /// `metrics`' order. An engine whose every statement is a round trip
    /// reads each part of the plan for all of them at once.
    async fn level_inputs(
        &mut self,
        org_id: &str,
        metrics: &[String],
        plan: &ReadPlan,
        from_ms: i64,
    ) -> Result<Vec<RollupInput>, StoreError>
    where
        Self: Sized,
    {
        let mut out = Vec::with_capacity(metrics.len());
        for metric in metrics {
            let series = SeriesKey { org_id: org_id.to_owned(), metric: metric.clone() };
            out.push(read_input(self, &series, plan, Aggregation::Integral, from_ms).await?);
        }
        Ok(out)
    }
    /// Raw records of `series` in `range` (any order), with `group` the
    /// value of the attribute `group_by` names (none: `None`).
    async fn points_in(
        &mut self,
        series: &SeriesKey,
        range: Range,
        group_by: Option<&str>,
    ) -> Result<Vec<Point>, StoreError> {
        let of = (group_by, series.org_id.as_str(), series.metric.as_str());
        shared::points::<Self::Engine>(self.conn(), of, range).await
    }
    /// The group hours of `series` under `key` starting in `range`, every
    /// cell: (cell, hour start, hour).
    async fn group_hours_in(
        &mut self,
        series: &SeriesKey,
        key: &str,
        range: Range,
    ) -> Result<Vec<(String, i64, GroupHour)>, StoreError> {
        shared::group_hours_in::<Self::Engine>(self.conn(), series, key, range).await
    }
}

/// See [`RollupTx::load_rows`].
#[derive(Debug, Default)]
pub(super) struct StoredRows {
    pub hours: BTreeMap<(SeriesKey, i64), Hour>,
    pub steps: BTreeMap<(SeriesKey, i64), Decimal>,
    pub months: BTreeMap<(SeriesKey, i64), Month>,
    pub group_hours: BTreeMap<GroupHourKey, GroupHour>,
    /// SQLite's `data_version`, read by the same statement (see
    /// `store::tails`); `None` elsewhere.
    pub data_version: Option<i64>,
}

/// Everything one transaction changes in the rollups, written at once.
#[derive(Debug, Default)]
pub(super) struct RollupWrite {
    /// Changes of the org level's step, per (series, instant).
    pub steps: Vec<((SeriesKey, i64), Decimal)>,
    /// New hour summaries.
    pub hours: Vec<((SeriesKey, i64), Hour)>,
    /// Hours left with no records and no steps (only a group level series'
    /// can be): their rows are deleted.
    pub hours_removed: Vec<(SeriesKey, i64)>,
    /// Changes of each month's fields.
    pub months: Vec<((SeriesKey, i64), Month)>,
    pub runs_removed: Vec<(String, Run)>,
    pub runs_added: Vec<(String, Run)>,
    /// Changes of the declared keys' group hours, in key order.
    pub group_hours: Vec<(GroupHourKey, GroupHour)>,
}

/// Everything a usage query's [`ReadPlan`] names, read by one transaction
/// (one snapshot).
pub(super) async fn read_input(
    tx: &mut impl RollupTx,
    series: &SeriesKey,
    plan: &ReadPlan,
    aggregation: Aggregation,
    from_ms: i64,
) -> Result<RollupInput, StoreError> {
    let level = crate::meter::rollup::query::is_level(aggregation);
    let mut input = RollupInput::default();
    if level {
        input.before = tx.level_before(series, from_ms).await?;
    }
    for range in &plan.months {
        input.months.extend(tx.months_in(series, *range).await?);
    }
    for range in &plan.hours {
        input.hours.extend(tx.hours_in(series, *range).await?);
    }
    if let Some(range) = plan.ahead {
        if level {
            input.ahead = tx.steps_in(series, range).await?;
        } else {
            input.ahead_points = tx.points_in(series, range, None).await?;
        }
    }
    for range in &plan.raw {
        if level {
            input.steps.extend(tx.steps_in(series, *range).await?);
        } else {
            input.points.extend(tx.points_in(series, *range, None).await?);
        }
    }
    Ok(input)
}

/// What a sum or count grouped by the declared `key` reads for `plan`
/// (see `meter::rollup::groups`), in one transaction (one snapshot).
pub(super) async fn read_group_input(
    tx: &mut impl RollupTx,
    series: &SeriesKey,
    key: &str,
    plan: &ReadPlan,
) -> Result<GroupInput, StoreError> {
    let mut input = GroupInput::default();
    for range in groups::hour_ranges(plan) {
        input.hours.extend(tx.group_hours_in(series, key, range).await?);
    }
    for range in &plan.raw {
        input.raw.extend(tx.points_in(series, *range, Some(key)).await?);
    }
    if let Some(range) = plan.ahead {
        input.ahead = tx.points_in(series, range, Some(key)).await?;
    }
    Ok(input)
}

/// What a level aggregation grouped by the declared `key` reads for `plan`
/// (see `meter::rollup::groups`): the series' own input and each named
/// group's level series' input, in one transaction (one snapshot).
pub(super) async fn read_group_level_input(
    tx: &mut impl RollupTx,
    series: &SeriesKey,
    key: &str,
    plan: &ReadPlan,
    range: Range,
) -> Result<GroupLevelInput, StoreError> {
    let cells = tx.level_cells(series, key, range.to_ms).await?;
    let mut metrics = vec![series.metric.clone()];
    metrics.extend(cells.iter().map(|cell| groups::level_series(&series.metric, key, cell)));
    let mut inputs = tx.level_inputs(&series.org_id, &metrics, plan, range.from_ms).await?.into_iter();
    let ungrouped = inputs.next().unwrap_or_default();
    Ok(GroupLevelInput { ungrouped, groups: cells.into_iter().zip(inputs).collect() })
}

/// What standings for the period containing `now_ms` are seeded from: per
/// series the carry (months before the period), the hours from the period
/// start on and the steps after `now_ms`; read by one transaction.
pub(super) async fn series_seeds(tx: &mut impl RollupTx, now_ms: i64) -> Result<Vec<SeriesSeed>, StoreError> {
    let period = month_containing(now_ms);
    let mut out: BTreeMap<SeriesKey, SeriesSeed> = BTreeMap::new();
    for (key, step) in tx.months_before(period.from_ms).await? {
        let s = seed_of(&mut out, key);
        s.carry = plus(s.carry, step)?;
    }
    for (key, start, hour) in tx.hours_from(period.from_ms).await? {
        seed_of(&mut out, key).hours.push((start, hour));
    }
    for (key, at, step) in tx.steps_after(period.from_ms, now_ms).await? {
        seed_of(&mut out, key).steps_after.push((at, step));
    }
    // Group level series are for grouped queries; standings follow metrics.
    out.retain(|key, _| !groups::is_level_series(&key.metric));
    Ok(out.into_values().filter(|s| !s.carry.is_zero() || !s.hours.is_empty()).collect())
}

fn seed_of(seeds: &mut BTreeMap<SeriesKey, SeriesSeed>, key: SeriesKey) -> &mut SeriesSeed {
    seeds.entry(key.clone()).or_insert_with(|| SeriesSeed {
        org_id: key.org_id,
        metric: key.metric,
        ..SeriesSeed::default()
    })
}

fn series(change: &OrgChange) -> SeriesKey {
    SeriesKey { org_id: change.org_id.clone(), metric: change.change.metric.clone() }
}

fn overflow(e: meterd_units::QuantityError) -> StoreError {
    StoreError::Corrupt(format!("rollup arithmetic: {e}"))
}

fn plus(a: Decimal, b: Decimal) -> Result<Decimal, StoreError> {
    a.checked_add(b).ok_or_else(|| overflow(meterd_units::QuantityError::Overflow("rollup sum")))
}

/// What [`maintain`] found: the rows to write, the effects, for the
/// standings, and the tails of the subjects written (`None`: forget it),
/// for a store that keeps tails to remember once the transaction has
/// committed.
#[derive(Default)]
pub(super) struct Maintained {
    /// Written by the engine itself before it commits: SQLite's with the
    /// `COMMIT`, in one lock of its handle (`sqlite_rollup::write_rows`).
    pub rows: RowsToWrite,
    pub effects: Vec<OrgEffect>,
    pub tails: SubjectTails,
}

/// A transaction's rollup changes over the stored rows they start from:
/// steps, months and group hours are added to (a step or month that
/// becomes zero has no row), hours replaced, runs removed and stored (a run
/// in both, one key, is stored as added).
#[derive(Debug, Default)]
pub(super) struct RowsToWrite {
    /// What `load_rows` returned.
    pub stored: StoredRows,
    pub write: RollupWrite,
}

/// The tails a store remembers (see `meter::rollup::tail`).
pub(super) trait Tails: Sync {
    fn tail(&self, subject: &SubjectKey) -> Option<Tail>;
    /// Whether the tails are true of the database at `data_version`; if
    /// not, forgets them and remembers the version.
    fn validate(&self, data_version: i64) -> bool;
}

/// A store with more than one writer keeps no tails.
pub(super) struct NoTails;

impl Tails for NoTails {
    fn tail(&self, _subject: &SubjectKey) -> Option<Tail> {
        None
    }
    fn validate(&self, _data_version: i64) -> bool {
        true
    }
}

/// A subject's neighbourhood after the writes, and the tail it was built
/// from (`None`: read from the store).
struct Hood {
    hood: Neighbourhood,
    tail: Option<Tail>,
    /// With the records' cells, when keys are declared.
    groups: Option<GroupNeighbourhood>,
}

/// A transaction's level writes with their cells (one per declared key),
/// per subject.
type CellWrites = BTreeMap<SubjectKey, BTreeMap<i64, Vec<CellWrite>>>;

/// Works out how the rollups change with `changes`, in the transaction
/// that made them; returns the rows the engine is to write before it
/// commits and what they change, for the standings.
///
/// SQLite writes nothing before the end, so when the statement that loads
/// the rows shows the tails were stale (another connection committed), the
/// work is done again from reads alone, in the same transaction.
pub(super) async fn maintain(
    tx: &mut impl RollupTx,
    changes: &[OrgChange],
    tails: &dyn Tails,
    group_by: &[String],
) -> Result<Maintained, StoreError> {
    match maintain_with(tx, changes, Some(tails), group_by).await? {
        Some(done) => Ok(done),
        None => maintain_with(tx, changes, None, group_by)
            .await?
            .ok_or_else(|| StoreError::Corrupt("rollups: stale tails without tails".to_owned())),
    }
}

/// [`maintain`] once; `None` when it used tails that turned out stale.
async fn maintain_with(
    tx: &mut impl RollupTx,
    changes: &[OrgChange],
    tails: Option<&dyn Tails>,
    group_by: &[String],
) -> Result<Option<Maintained>, StoreError> {
    let planned = plan(tx, changes, tails, group_by).await?;
    let stored = tx.load_rows(&planned.keys).await?;
    if planned.stale(tails, &stored) {
        return Ok(None);
    }
    let mut all_steps = BTreeMap::new();
    for (series, hour) in planned.resummarized(&stored) {
        let stored_steps = tx.steps_in(&series, Range { from_ms: hour, to_ms: hour + HOUR_MS }).await?;
        all_steps.insert((series, hour), stored_steps);
    }
    planned.finish(stored, all_steps).map(Some)
}

/// The rollup rows a transaction touches ([`RollupTx::load_rows`] reads
/// them), in key order.
#[derive(Debug, Default)]
pub(super) struct RowKeys {
    pub hours: Vec<(SeriesKey, i64)>,
    pub steps: Vec<(SeriesKey, i64)>,
    pub months: Vec<(SeriesKey, i64)>,
    pub group_hours: Vec<GroupHourKey>,
}

/// A transaction's rollup changes worked out from its records and the
/// neighbourhoods of its levels (every read but the rows': [`plan`]); with
/// the stored rows they touch, [`Planned::finish`] works out the rest
/// without reading, so an engine may run it where reads are cheap
/// (SQLite: in the lock of its handle that the `COMMIT` takes).
pub(super) struct Planned {
    pub keys: RowKeys,
    /// What each record adds to its hour's sum and count.
    records: BTreeMap<(SeriesKey, i64), (Decimal, i64)>,
    /// And to its group hours.
    group_hours: BTreeMap<GroupHourKey, GroupHour>,
    hoods: BTreeMap<SubjectKey, Hood>,
    /// The org level steps' changes (group level steps are written as
    /// steps too, in `step_rows`, but are no effect).
    steps: BTreeMap<(SeriesKey, i64), Decimal>,
    step_rows: Vec<((SeriesKey, i64), Decimal)>,
    /// The steps each touched hour gains.
    by_hour: BTreeMap<(SeriesKey, i64), Vec<(i64, Decimal)>>,
    runs: RunChanges,
}

/// Works out a transaction's rollup changes up to the rows they touch
/// (see [`Planned`]).
pub(super) async fn plan(
    tx: &mut impl RollupTx,
    changes: &[OrgChange],
    tails: Option<&dyn Tails>,
    group_by: &[String],
) -> Result<Planned, StoreError> {
    // What each record adds to its hour's sum and count.
    let mut records: BTreeMap<(SeriesKey, i64), (Decimal, i64)> = BTreeMap::new();
    // And to its group hours.
    let mut group_hours: BTreeMap<GroupHourKey, GroupHour> = BTreeMap::new();
    // Level writes by subject and instant (with their cells too when keys
    // are declared).
    let mut levels: LevelWrites = BTreeMap::new();
    let mut cell_writes: CellWrites = BTreeMap::new();
    for c in changes {
        let entry = records.entry((series(c), hour_of(c.change.at_ms))).or_insert((Decimal::ZERO, 0));
        if c.change.kind == Kind::Delta {
            let change = c
                .change
                .quantity
                .checked_sub(c.change.previous.unwrap_or(Decimal::ZERO))
                .ok_or_else(|| overflow(meterd_units::QuantityError::Overflow("rollup sum")))?;
            entry.0 = plus(entry.0, change)?;
        }
        if c.change.previous.is_none() {
            entry.1 += 1;
        }
        if !group_by.is_empty() {
            let delta = c.change.quantity.checked_sub(c.change.previous.unwrap_or(Decimal::ZERO));
            let delta = delta.ok_or_else(|| overflow(meterd_units::QuantityError::Overflow("group sum")))?;
            let change = GroupHour::of_record(c.change.kind, delta, c.change.previous.is_none());
            for key in groups::keys_of(group_by, &series(c), &c.attributes, c.change.at_ms) {
                group_hours.entry(key).or_default().add(&change).map_err(overflow)?;
            }
        }
        if c.change.kind == Kind::Level {
            let subject = (series(c), c.change.subject.clone());
            if !group_by.is_empty() {
                let cells = group_by.iter().map(|k| groups::cell_of(c.attributes.get(k).map(String::as_str)));
                let written =
                    cell_writes.entry(subject.clone()).or_default().entry(c.change.at_ms).or_default();
                written.push((c.change.quantity, c.change.previous, cells.collect()));
            }
            levels
                .entry(subject)
                .or_default()
                .entry(c.change.at_ms)
                .or_default()
                .push((c.change.quantity, c.change.previous));
        }
    }
    let hoods = neighbourhoods(tx, levels, cell_writes, tails, group_by).await?;
    let steps = step_changes(&hoods)?;
    let group_steps = group_level_changes(&hoods, group_by)?;
    let runs = runs(tx, &hoods).await?;

    // The hours touched (by records or steps) and their months.
    let mut by_hour: BTreeMap<(SeriesKey, i64), Vec<(i64, Decimal)>> = BTreeMap::new();
    for ((s, at), change) in steps.iter().chain(&group_steps) {
        by_hour.entry((s.clone(), hour_of(*at))).or_default().push((*at, *change));
    }
    let hour_keys: BTreeSet<(SeriesKey, i64)> = records.keys().chain(by_hour.keys()).cloned().collect();
    let hour_keys: Vec<(SeriesKey, i64)> = hour_keys.into_iter().collect();
    let month_keys: BTreeSet<(SeriesKey, i64)> =
        hour_keys.iter().map(|(s, h)| (s.clone(), month_containing(*h).from_ms)).collect();
    let month_keys: Vec<(SeriesKey, i64)> = month_keys.into_iter().collect();
    // Group level steps are written as steps (of their own series), but are
    // no effect: standings follow metrics.
    let all_steps: BTreeMap<&(SeriesKey, i64), Decimal> =
        steps.iter().chain(&group_steps).map(|(k, s)| (k, *s)).collect();
    let step_rows: Vec<((SeriesKey, i64), Decimal)> =
        all_steps.iter().map(|(k, s)| ((*k).clone(), *s)).collect();
    let step_keys: Vec<(SeriesKey, i64)> = all_steps.keys().map(|k| (*k).clone()).collect();
    let group_keys: Vec<GroupHourKey> = group_hours.keys().cloned().collect();
    let keys = RowKeys { hours: hour_keys, steps: step_keys, months: month_keys, group_hours: group_keys };
    Ok(Planned { keys, records, group_hours, hoods, steps, step_rows, by_hour, runs })
}

impl Planned {
    /// Whether `stored` shows that tails this plan used were stale (another
    /// connection committed since they were kept): the plan must then be
    /// made again from reads alone. Tells `tails` the version it saw.
    pub fn stale(&self, tails: Option<&dyn Tails>, stored: &StoredRows) -> bool {
        let stale = match (tails, stored.data_version) {
            (Some(tails), Some(version)) => !tails.validate(version),
            _ => false,
        };
        stale && self.hoods.values().any(|h| h.tail.is_some())
    }

    /// The hours whose new steps do not all come after their stored ones:
    /// [`Planned::finish`] re-summarizes them from all their stored steps.
    pub fn resummarized(&self, stored: &StoredRows) -> Vec<(SeriesKey, i64)> {
        self.by_hour
            .iter()
            .filter(|(key, new_steps)| stored.hours.get(key).is_some_and(|h| !h.can_append(new_steps)))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The rows to write over `stored` and what they change, given the
    /// stored steps of each hour [`Planned::resummarized`] named.
    pub fn finish(
        self,
        mut stored: StoredRows,
        mut stored_steps: BTreeMap<(SeriesKey, i64), Vec<(i64, Decimal)>>,
    ) -> Result<Maintained, StoreError> {
        let Planned { keys, records, group_hours, hoods, steps, step_rows, by_hour, runs } = self;
        let mut out = Vec::with_capacity(keys.hours.len());
        let mut empty_hours = Vec::new();
        // Each month changes by what its hours changed by.
        let mut months: BTreeMap<(SeriesKey, i64), Month> = BTreeMap::new();
        let mut hours = std::mem::take(&mut stored.hours);
        for key in keys.hours {
            let was = hours.remove(&key).unwrap_or_default();
            let mut hour = was.clone();
            if let Some((delta, new)) = records.get(&key) {
                hour.delta_sum = plus(hour.delta_sum, *delta)?;
                hour.records += new;
            }
            if let Some(new_steps) = by_hour.get(&key) {
                if hour.can_append(new_steps) {
                    hour.append_steps(key.1, new_steps).map_err(overflow)?;
                } else {
                    let stored_steps = stored_steps.remove(&key).ok_or_else(|| {
                        StoreError::Corrupt("rollups: an hour to re-summarize without its steps".to_owned())
                    })?;
                    let all = with_changes(stored_steps, new_steps)?;
                    hour.resummarize(key.1, &all).map_err(overflow)?;
                }
            }
            let month = month_containing(key.1).from_ms;
            let offset = key.1 - month;
            let change = Month::of_hour(&hour, offset)
                .and_then(|now| now.minus(&Month::of_hour(&was, offset)?))
                .map_err(overflow)?;
            months.entry((key.0.clone(), month)).or_default().add(&change).map_err(overflow)?;
            if hour == Hour::default() {
                // No records and no steps (a group's level moved there and
                // back): no row, as the fold leaves none.
                empty_hours.push(key);
            } else {
                out.push((key, hour));
            }
        }
        let write = RollupWrite {
            steps: step_rows,
            hours: out,
            hours_removed: empty_hours,
            months: months.into_iter().filter(|(_, m)| !m.is_zero()).collect(),
            runs_removed: runs.removed,
            runs_added: runs.added,
            group_hours: group_hours.into_iter().collect(),
        };
        let tails = hoods
            .iter()
            .map(|(key, h)| (key.clone(), Tail::after(&h.hood, runs.after.get(key).map(Vec::as_slice))))
            .collect();
        let effect =
            |s: &SeriesKey, effect| OrgEffect { org_id: s.org_id.clone(), metric: s.metric.clone(), effect };
        let mut effects: Vec<OrgEffect> = records
            .iter()
            .map(|((s, hour), (delta, added))| {
                effect(s, Effect::Records { at_ms: *hour, added: *added, delta: *delta })
            })
            .collect();
        effects.extend(
            steps.iter().map(|((s, at), change)| effect(s, Effect::Step { at_ms: *at, change: *change })),
        );
        effects.extend(runs.effects);
        Ok(Maintained { rows: RowsToWrite { stored, write }, effects, tails })
    }
}

/// An hour's stored steps (in time order) with this transaction's changes
/// added: the steps it will hold.
fn with_changes(
    stored: Vec<(i64, Decimal)>,
    changes: &[(i64, Decimal)],
) -> Result<Vec<(i64, Decimal)>, StoreError> {
    let mut all: BTreeMap<i64, Decimal> = stored.into_iter().collect();
    for (at, change) in changes {
        let step = all.entry(*at).or_default();
        *step = plus(*step, *change)?;
    }
    Ok(all.into_iter().filter(|(_, step)| !step.is_zero()).collect())
}

/// What recomputing the written sandboxes' runs found.
struct RunChanges {
    /// Removals before additions, per subject.
    effects: Vec<OrgEffect>,
    removed: Vec<(String, Run)>,
    added: Vec<(String, Run)>,
    /// Each sandbox's runs from where they were recomputed, as (start, end).
    after: BTreeMap<SubjectKey, Vec<(i64, Option<i64>)>>,
}

/// Where a sandbox's runs are recomputed from: its stored runs from some
/// instant on, and its records from there on.
struct RunSource {
    before: Vec<Run>,
    history: Vec<(i64, Decimal)>,
}

/// Recomputes the runs of the sandboxes written: what changed, to store.
///
/// A sandbox whose tail answered needs no read ([`Tail::run_window`]).
/// Otherwise nothing before its first written instant changed, so its runs
/// are recomputed from the start of its last stored run that starts at or
/// before that instant (the level is not above zero just before a run
/// starts, so the runs from there on depend only on the records from
/// there on): the read is one run and what follows, not the history.
async fn runs(tx: &mut impl RollupTx, hoods: &BTreeMap<SubjectKey, Hood>) -> Result<RunChanges, StoreError> {
    let mut sources: BTreeMap<&SubjectKey, RunSource> = BTreeMap::new();
    // Sandboxes the tails do not answer for, with the first instant written.
    let mut unread: Vec<(&SubjectKey, i64)> = Vec::new();
    for (key, h) in hoods.iter().filter(|(key, _)| key.0.metric == SANDBOX_ACTIVE_METRIC) {
        match h.tail.as_ref().and_then(|t| t.run_window(&h.hood)) {
            Some(window) => {
                let before = window.stored.map(|(started_ms, ended_ms)| Run {
                    subject: key.1.clone(),
                    started_ms,
                    ended_ms,
                });
                sources
                    .insert(key, RunSource { before: before.into_iter().collect(), history: window.history });
            }
            None => unread.extend(h.hood.written.keys().next().map(|first| (key, *first))),
        }
    }
    read_run_sources(tx, &unread, &mut sources).await?;
    let (mut removed, mut added, mut effects) = (Vec::new(), Vec::new(), Vec::new());
    let mut after_runs = BTreeMap::new();
    for (key, source) in sources {
        let org = &key.0.org_id;
        let after = runs_of(&key.1, &source.history);
        for e in run_effects(&source.before, &after) {
            if let Effect::Run { run, added: is_added } = &e {
                if *is_added {
                    added.push((org.clone(), run.clone()))
                } else {
                    removed.push((org.clone(), run.clone()))
                }
            }
            effects.push(OrgEffect { org_id: org.clone(), metric: key.0.metric.clone(), effect: e });
        }
        after_runs.insert(key.clone(), after.into_iter().map(|r| (r.started_ms, r.ended_ms)).collect());
    }
    Ok(RunChanges { effects, removed, added, after: after_runs })
}

/// Reads the run sources of `sandboxes` (each with its first written
/// instant) from the store into `sources`.
async fn read_run_sources<'k>(
    tx: &mut impl RollupTx,
    sandboxes: &[(&'k SubjectKey, i64)],
    sources: &mut BTreeMap<&'k SubjectKey, RunSource>,
) -> Result<(), StoreError> {
    if sandboxes.is_empty() {
        return Ok(());
    }
    let subjects: Vec<(String, String)> =
        sandboxes.iter().map(|((s, subject), _)| (s.org_id.clone(), subject.clone())).collect();
    let mut stored: BTreeMap<(String, String), Vec<Run>> = BTreeMap::new();
    for (org, run) in tx.stored_runs(&subjects).await? {
        stored.entry((org, run.subject.clone())).or_default().push(run);
    }
    let bounded: Vec<(SubjectKey, i64)> = sandboxes
        .iter()
        .map(|((s, subject), first)| {
            let runs = stored.get(&(s.org_id.clone(), subject.clone())).map(Vec::as_slice).unwrap_or(&[]);
            let from = runs.iter().map(|r| r.started_ms).filter(|start| start <= first).max();
            ((s.clone(), subject.clone()), from.unwrap_or(i64::MIN))
        })
        .collect();
    let mut history: BTreeMap<SubjectKey, Vec<(i64, Decimal)>> = BTreeMap::new();
    for (key, at, quantity) in tx.subject_levels(&bounded).await? {
        history.entry(key).or_default().push((at, quantity));
    }
    for ((key, _), (_, from)) in sandboxes.iter().zip(&bounded) {
        let mut before = stored.remove(&(key.0.org_id.clone(), key.1.clone())).unwrap_or_default();
        before.retain(|r| r.started_ms >= *from);
        let history = history.remove(*key).unwrap_or_default();
        sources.insert(key, RunSource { before, history });
    }
    Ok(())
}

/// Each written subject's neighbourhood after the writes: built from its
/// tail when that answers, else read from the store. With keys declared
/// (`group_by`), every neighbourhood is read, with the records' cells
/// (tails keep no cells).
async fn neighbourhoods(
    tx: &mut impl RollupTx,
    levels: LevelWrites,
    mut cell_writes: CellWrites,
    tails: Option<&dyn Tails>,
    group_by: &[String],
) -> Result<BTreeMap<SubjectKey, Hood>, StoreError> {
    let keys = group_by.len();
    let mut out = BTreeMap::new();
    if levels.is_empty() {
        return Ok(out);
    }
    let subjects: Vec<SubjectKey> = levels.keys().cloned().collect();
    tx.lock_subjects(&subjects).await?;
    let tails = tails.filter(|_| keys == 0);
    let mut unread: LevelWrites = BTreeMap::new();
    for (subject, written) in levels {
        match tails.and_then(|t| t.tail(&subject)).filter(|t| t.covers(&written)) {
            Some(tail) => {
                let hood = Hood { hood: tail.neighbourhood(written), tail: Some(tail), groups: None };
                out.insert(subject, hood);
            }
            None => {
                unread.insert(subject, written);
            }
        }
    }
    if unread.is_empty() {
        return Ok(out);
    }
    let at: Vec<(SubjectKey, i64)> =
        unread.iter().flat_map(|(s, at)| at.keys().map(move |t| (s.clone(), *t))).collect();
    let mut read: BTreeMap<SubjectKey, (Neighbourhood, GroupNeighbourhood)> = BTreeMap::new();
    for row in tx.neighbourhoods(&at, keys > 0).await? {
        let key = (SeriesKey { org_id: row.org_id, metric: row.metric }, row.subject);
        let (hood, groups) = read.entry(key).or_default();
        let copies = usize::try_from(row.count).unwrap_or(0);
        hood.stored.entry(row.at_ms).or_default().extend(std::iter::repeat_n(row.quantity, copies));
        if let Some(json) = &row.attributes {
            let attributes = attributes_of(json)?;
            let cells: Vec<String> =
                group_by.iter().map(|k| groups::cell_of(attributes.get(k).map(String::as_str))).collect();
            let stored = groups.stored.entry(row.at_ms).or_default();
            stored.extend(std::iter::repeat_n((row.quantity, cells), copies));
        }
    }
    for (subject, written) in unread {
        let (mut hood, groups) = read.remove(&subject).unwrap_or_default();
        hood.written = written;
        let groups = (keys > 0).then(|| GroupNeighbourhood {
            written: cell_writes.remove(&subject).unwrap_or_default(),
            ..groups
        });
        out.insert(subject, Hood { hood, tail: None, groups });
    }
    Ok(out)
}

/// The org level's step changes (summed over subjects) that the level
/// writes cause, by (series, instant).
fn step_changes(
    hoods: &BTreeMap<SubjectKey, Hood>,
) -> Result<BTreeMap<(SeriesKey, i64), Decimal>, StoreError> {
    let mut out: BTreeMap<(SeriesKey, i64), Decimal> = BTreeMap::new();
    for (subject, h) in hoods {
        for (at, change) in h.hood.step_changes().map_err(overflow)? {
            let sum = out.entry((subject.0.clone(), at)).or_default();
            *sum = plus(*sum, change)?;
        }
    }
    out.retain(|_, s| !s.is_zero());
    Ok(out)
}

/// The group level steps' changes (summed over subjects) that the level
/// writes cause, by (group level series, instant).
fn group_level_changes(
    hoods: &BTreeMap<SubjectKey, Hood>,
    group_by: &[String],
) -> Result<BTreeMap<(SeriesKey, i64), Decimal>, StoreError> {
    let mut out: BTreeMap<(SeriesKey, i64), Decimal> = BTreeMap::new();
    for ((series, _), h) in hoods {
        let Some(groups) = &h.groups else { continue };
        for (key, cell, at, change) in groups.level_changes(group_by.len()).map_err(overflow)? {
            let metric = groups::level_series(&series.metric, &group_by[key], &cell);
            let sum = out.entry((SeriesKey { org_id: series.org_id.clone(), metric }, at)).or_default();
            *sum = plus(*sum, change)?;
        }
    }
    out.retain(|_, s| !s.is_zero());
    Ok(out)
}

/// Records per page of a rebuild or check.
pub(super) const REBUILD_PAGE: usize = 10_000;

/// One raw record as a rebuild reads it.
pub(super) struct RebuildRow {
    pub org_id: String,
    pub metric: String,
    pub subject: String,
    pub kind: String,
    pub quantity: Decimal,
    pub at_ms: i64,
    /// Read only when keys are declared (else empty).
    pub attributes: BTreeMap<String, String>,
}

/// Where a rebuild reads records and writes rollup rows, per engine.
#[async_trait]
pub(super) trait RebuildTx: Send {
    /// The next page of records grouped by (org, metric), in time order
    /// within each; shorter than [`REBUILD_PAGE`] at the end.
    async fn next_records(&mut self) -> Result<Vec<RebuildRow>, StoreError>;
    /// Writes finished rows to the tables being built.
    async fn write_rows(&mut self, out: FoldOutput) -> Result<(), StoreError>;
}

/// Folds every record into the tables `tx` builds; returns how many were
/// read. Memory: one page, one series' levels in force, and the rows not
/// yet written.
pub(super) async fn fold_records(tx: &mut impl RebuildTx, group_by: &[String]) -> Result<u64, StoreError> {
    let corrupt = |e: FoldError| StoreError::Corrupt(format!("rollup rebuild: {e}"));
    let mut fold = Fold::new(group_by);
    let mut read = 0u64;
    loop {
        let rows = tx.next_records().await?;
        for row in &rows {
            let kind = Kind::parse(&row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("record kind {:?}", row.kind)))?;
            fold.push(FoldRecord {
                org_id: &row.org_id,
                metric: &row.metric,
                subject: &row.subject,
                kind,
                quantity: row.quantity,
                at_ms: row.at_ms,
                attributes: &row.attributes,
            })
            .map_err(corrupt)?;
        }
        read += rows.len() as u64;
        if rows.len() < REBUILD_PAGE {
            break;
        }
        if fold.output.len() >= REBUILD_PAGE {
            tx.write_rows(std::mem::take(&mut fold.output)).await?;
        }
    }
    fold.finish().map_err(corrupt)?;
    tx.write_rows(std::mem::take(&mut fold.output)).await?;
    Ok(read)
}

/// What `meterd_state` says of the rollups, one SQL text and one rule for
/// both engines: the `rollups` row (they were built) and `rollup_groups`
/// (for which group keys).
pub(super) mod build_state {
    const BUILT: &str = "rollups";
    const GROUPS: &str = "rollup_groups";
    pub const READ: &str = "SELECT key, value FROM meterd_state WHERE key IN ('rollups', 'rollup_groups')";
    /// $1 key, $2 value.
    pub const WRITE: &str = "INSERT INTO meterd_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

    /// Whether rollups built as `rows` (what [`READ`] returned) serve
    /// `group_by`: a database migrated from before rollups has records but
    /// none; one built with other keys has the wrong group hours, and one
    /// built before group levels (migration 0013) has no group levels.
    pub fn built(rows: &[(String, String)], group_by: &[String]) -> bool {
        let value = |key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        value(BUILT).is_some() && value(GROUPS).unwrap_or_default() == groups_value(group_by)
    }

    /// The rows [`WRITE`] stores after a build from `records` records.
    pub fn rows(records: u64, group_by: &[String]) -> [(&'static str, String); 2] {
        [(BUILT, format!("built from {records} records")), (GROUPS, groups_value(group_by))]
    }

    /// What the `rollup_groups` row says: the keys, marked as holding group
    /// levels (no keys: nothing to mark, so such a database is not rebuilt).
    fn groups_value(group_by: &[String]) -> String {
        if group_by.is_empty() { String::new() } else { format!("levels:{}", group_by.join(",")) }
    }
}

/// A record's attributes as both engines store them: JSON text, read back
/// by [`attributes_of`].
pub(super) fn attributes_column(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".to_owned())
}

/// A record's attributes from their stored JSON text.
pub(super) fn attributes_of(json: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("stored attributes: {e}")))
}

/// A row a check found on one side only: (org, metric, time, values as
/// text, "stored" or "computed").
pub(super) type DiffRow = (String, String, i64, String, String);

impl RollupCheck {
    /// Counts one table's stored rows and differences, keeping the first
    /// `examples` differences.
    pub(super) fn add_table(&mut self, table: &str, stored: i64, diff: &[DiffRow], examples: usize) {
        let stored = u64::try_from(stored).unwrap_or(0);
        match table {
            "hours" => self.hours = stored,
            "group_hours" => self.group_hours = stored,
            "steps" => self.steps = stored,
            "runs" => self.runs = stored,
            _ => self.months = stored,
        }
        self.differences += diff.len() as u64;
        for (org, metric, t, v, side) in diff.iter().take(examples.saturating_sub(self.examples.len())) {
            self.examples.push(format!("{table} {org}/{metric}@{t}: {side} {v}"));
        }
    }
}

/// What the check found: how many rows differ per table, and the first few.
/// Also the report `meterd rollups check --json` prints (a CLI contract,
/// `api::rollups::RollupCheck`), so it reads back as well as it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollupCheck {
    pub records: u64,
    pub hours: u64,
    pub steps: u64,
    pub months: u64,
    pub runs: u64,
    pub group_hours: u64,
    /// Rows that differ from a recomputation from the raw records.
    pub differences: u64,
    /// The first differences, e.g. `hours acme/sandbox_active@1754...: stored … computed …`.
    pub examples: Vec<String>,
}
