//! Grouped rollups, for the attribute keys the operator declares
//! (`rollup_group_by`).
//!
//! **Sums and counts**: per (org, metric, attribute key, attribute value)
//! and UTC hour, the sum of delta quantities and the record counts. A sum
//! or count grouped by such a key reads these hours and raw records only at
//! the range's ragged ends, like an ungrouped one.
//!
//! **Levels** (integral, latest, max): a subject's level belongs to the
//! group of the record in force, so the level of one group is a step
//! function like the org level, summed over the subjects whose record in
//! force carries that value. The rollup tables keep it as a series of its
//! own, [`level_series`] (`metric/key/cell` — neither a metric nor a key
//! may hold `/`), in the same hours, steps and months as every metric, so
//! the ungrouped query answers each group. A level record written moves
//! level between groups at its instant and at its subject's next instant
//! ([`GroupNeighbourhood::level_changes`]), as it changes the org level's
//! steps there. A group is named by a level record carrying its value
//! stamped before the range's end ([`merge_levels`]).
//!
//! A record without the key belongs to the group `None` (the engine's
//! rule). The stored `cell` text keeps the two apart: `""` for `None`,
//! `"=" + value` otherwise; cells order as the engine orders groups.

use std::collections::BTreeMap;

use meterd_units::QuantityError;
use rust_decimal::Decimal;

use super::query::{ReadPlan, RollupInput, evaluate};
use super::{Hour, SeriesKey, hour_of};
use crate::meter::engine::{EngineError, Point, UsageQuery, UsageReport};
use crate::meter::merge::Merged;
use crate::meter::period::Range;
use crate::meter::{Aggregation, Kind, MeterDef};

/// The stored form of a group value.
pub fn cell_of(value: Option<&str>) -> String {
    value.map(|v| format!("={v}")).unwrap_or_default()
}

/// The group value a stored cell names (`None`: records without the key).
pub fn value_of(cell: &str) -> Option<String> {
    cell.strip_prefix('=').map(str::to_owned)
}

/// One group's records over one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupHour {
    pub delta_sum: Decimal,
    /// Records of any kind (what a count counts).
    pub records: i64,
    /// Delta records (whether a grouped sum names the group).
    pub deltas: i64,
}

impl GroupHour {
    pub fn add(&mut self, other: &GroupHour) -> Result<(), QuantityError> {
        self.delta_sum =
            self.delta_sum.checked_add(other.delta_sum).ok_or(QuantityError::Overflow("group sum"))?;
        self.records += other.records;
        self.deltas += other.deltas;
        Ok(())
    }

    /// What one record written changes: `delta` is its change of the delta
    /// sum (new quantity less the one it replaced), `new` whether it is a
    /// new record rather than a correction.
    pub fn of_record(kind: Kind, delta: Decimal, new: bool) -> GroupHour {
        let delta_kind = kind == Kind::Delta;
        GroupHour {
            delta_sum: if delta_kind { delta } else { Decimal::ZERO },
            records: i64::from(new),
            deltas: i64::from(new && delta_kind),
        }
    }
}

/// A grouped hour's key: (series, attribute key, cell, hour start).
pub type GroupHourKey = (SeriesKey, String, String, i64);

/// The group hours one record counts in: one per declared key.
pub fn keys_of<'a>(
    group_by: &'a [String],
    series: &'a SeriesKey,
    attributes: &'a BTreeMap<String, String>,
    at_ms: i64,
) -> impl Iterator<Item = GroupHourKey> + 'a {
    group_by.iter().map(move |key| {
        let cell = cell_of(attributes.get(key).map(String::as_str));
        (series.clone(), key.clone(), cell, hour_of(at_ms))
    })
}

/// The hour-aligned ranges a grouped query reads as group hours: the
/// plan's months and hours (group hours have no month summaries).
pub fn hour_ranges(plan: &ReadPlan) -> Vec<Range> {
    let mut ranges: Vec<Range> = plan.months.iter().chain(&plan.hours).copied().collect();
    ranges.sort_by_key(|r| r.from_ms);
    ranges
}

/// What the store read for a grouped query's plan: the group hours of its
/// [`hour_ranges`] (every cell), and the raw records of its raw and ahead
/// ranges with `group` set to the key's value.
#[derive(Debug, Clone, Default)]
pub struct GroupInput {
    /// (cell, hour start, hour).
    pub hours: Vec<(String, i64, GroupHour)>,
    pub raw: Vec<Point>,
    pub ahead: Vec<Point>,
}

/// A sum or count grouped by a declared key, from [`GroupInput`]; equal
/// to `meter::aggregate` over the range's records grouped by the key.
pub fn evaluate_grouped(
    meter: &MeterDef,
    query: &UsageQuery,
    input: &GroupInput,
) -> Result<UsageReport, EngineError> {
    let GroupInput { hours, raw, ahead } = input;
    let count = match meter.aggregation {
        Aggregation::Sum => false,
        Aggregation::Count => true,
        _ => return Err(EngineError::Plan("group hours answer sums and counts only")),
    };
    let range = query.range;
    // What names a group: a record in the range (a delta record, for a sum).
    let counts = |records: i64, deltas: i64| if count { records } else { deltas };
    let point_counts = |p: &Point| i64::from(count || p.kind == Kind::Delta);
    // Every group the hours or the raw records name, with its parts and how
    // many of its records lie in the range.
    let mut groups: BTreeMap<Option<String>, (RollupInput, i64)> = BTreeMap::new();
    for (cell, start, h) in hours {
        let (input, named) = groups.entry(value_of(cell)).or_default();
        input.hours.push((*start, Hour { delta_sum: h.delta_sum, records: h.records, ..Hour::default() }));
        if range.contains(*start) {
            *named += counts(h.records, h.deltas);
        }
    }
    for p in raw {
        let (input, named) = groups.entry(p.group.clone()).or_default();
        input.points.push(p.clone());
        if range.contains(p.at_ms) {
            *named += point_counts(p);
        }
    }
    // An hour summed whole gives back what lies after the range's end.
    for p in ahead {
        let (input, named) = groups.entry(p.group.clone()).or_default();
        input.ahead_points.push(p.clone());
        if p.at_ms >= range.to_ms && range.contains(hour_of(p.at_ms)) {
            *named -= point_counts(p);
        }
    }
    let ungrouped = UsageQuery { grouped: false, ..*query };
    let mut merged = Merged::new(query)?;
    for (group, (input, named)) in groups {
        let part = evaluate(meter, &ungrouped, &input)?;
        merged.add_group(&part, group, named > 0)?;
    }
    Ok(merged.finish())
}

/// The rollup series that holds the level of the group `cell` of `key` on
/// `metric`.
pub fn level_series(metric: &str, key: &str, cell: &str) -> String {
    format!("{metric}/{key}/{cell}")
}

/// Whether a rollup series is a group's level (see [`level_series`]) rather
/// than a metric: standings and the change feed follow metrics only.
pub fn is_level_series(metric: &str) -> bool {
    metric.contains('/')
}

/// A level record's quantity and its cell under each declared key (in the
/// order of `rollup_group_by`).
pub type CellRecord = (Decimal, Vec<String>);

/// What a transaction wrote at one instant of a subject: (quantity now,
/// quantity before: `None` for an insert, cells). A correction keeps the
/// cells.
pub type CellWrite = (Decimal, Option<Decimal>, Vec<String>);

/// One subject's level records around the instants a transaction wrote,
/// with their cells: [`super::write::Neighbourhood`] for groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupNeighbourhood {
    /// Instant → every record stored at it now (after the writes), for each
    /// written instant and the subject's instants just before and after it.
    pub stored: BTreeMap<i64, Vec<CellRecord>>,
    /// Instant → what the transaction wrote there.
    pub written: BTreeMap<i64, Vec<CellWrite>>,
}

/// The record in force after an instant holding `records`, under the key
/// at `key`: the greatest (quantity, cell), the engine's tie rule.
fn in_force_cell(records: &[CellRecord], key: usize) -> Option<(Decimal, &str)> {
    records.iter().filter_map(|(q, cells)| Some((*q, cells.get(key)?.as_str()))).max()
}

impl GroupNeighbourhood {
    /// The records at `at` before the transaction's writes, undone last
    /// first.
    fn before(&self, at: i64) -> Vec<CellRecord> {
        let mut records = self.stored.get(&at).cloned().unwrap_or_default();
        for (now, was, cells) in self.written.get(&at).into_iter().flatten().rev() {
            if let Some(i) = records.iter().position(|(q, c)| q == now && c == cells) {
                records.swap_remove(i);
            }
            records.extend(was.map(|q| (q, cells.clone())));
        }
        records
    }

    /// The level each group gains at `at` in one state (`records` gives an
    /// instant's records in that state): the record in force at `at` adds
    /// its quantity to its group, the one before it takes its own away.
    fn moves(
        &self,
        at: i64,
        key: usize,
        records: &impl Fn(i64) -> Vec<CellRecord>,
    ) -> Vec<(String, Decimal)> {
        let here = records(at);
        let Some((q, cell)) = in_force_cell(&here, key) else { return Vec::new() };
        let mut out = vec![(cell.to_owned(), q)];
        let earlier = self.stored.range(..at).rev().map(|(&t, _)| records(t));
        let was = earlier.filter_map(|r| in_force_cell(&r, key).map(|(q, c)| (q, c.to_owned()))).next();
        if let Some((was, was_cell)) = was {
            out.push((was_cell, -was));
        }
        out
    }

    /// How the groups' levels change, per declared key (by index among
    /// `keys` keys): (key, cell, instant, change), non-zero only, in order.
    pub fn level_changes(&self, keys: usize) -> Result<Vec<(usize, String, i64, Decimal)>, QuantityError> {
        let touched = super::write::touched(&self.written, &self.stored);
        let now = |t: i64| self.stored.get(&t).cloned().unwrap_or_default();
        let before = |t: i64| self.before(t);
        let mut changes: BTreeMap<(usize, String, i64), Decimal> = BTreeMap::new();
        for key in 0..keys {
            for &at in &touched {
                let after = self.moves(at, key, &now);
                let undone = self.moves(at, key, &before).into_iter().map(|(c, q)| (c, -q));
                for (cell, q) in after.into_iter().chain(undone) {
                    let sum = changes.entry((key, cell, at)).or_default();
                    *sum = sum.checked_add(q).ok_or(QuantityError::Overflow("group level step"))?;
                }
            }
        }
        Ok(changes.into_iter().filter(|(_, q)| !q.is_zero()).map(|((k, c, at), q)| (k, c, at, q)).collect())
    }
}

/// A level aggregation grouped by a declared key, from reports the rollups
/// answer: `ungrouped`, the org level's (its total: a maximum is not the
/// sum of the groups'), and each named group's report from its
/// [`level_series`]. A group is named when a level record carrying its
/// value is stamped before the range ends (its value may be 0 throughout).
pub fn merge_levels(
    query: &UsageQuery,
    ungrouped: &UsageReport,
    groups: Vec<(Option<String>, UsageReport)>,
) -> Result<UsageReport, EngineError> {
    let mut merged = Merged::new(query)?;
    for (group, part) in groups {
        merged.add_group(&part, group, true)?;
    }
    Ok(UsageReport { total: ungrouped.total, ..merged.finish() })
}

/// What the store read for a level aggregation grouped by a declared key:
/// the series' own [`RollupInput`] and, per named group's cell (in order),
/// its level series' for the same plan.
#[derive(Debug, Clone, Default)]
pub struct GroupLevelInput {
    pub ungrouped: RollupInput,
    pub groups: Vec<(String, RollupInput)>,
}

/// An integral, latest or max grouped by a declared key, from
/// [`GroupLevelInput`]: each group's level series answered as an
/// ungrouped series, merged by [`merge_levels`].
pub fn evaluate_grouped_levels(
    meter: &MeterDef,
    query: &UsageQuery,
    input: &GroupLevelInput,
) -> Result<UsageReport, EngineError> {
    if !super::query::is_level(meter.aggregation) {
        return Err(EngineError::Plan("group level series answer integrals, latest and max only"));
    }
    let alone = UsageQuery { grouped: false, ..*query };
    let ungrouped = evaluate(meter, &alone, &input.ungrouped)?;
    let mut groups = Vec::with_capacity(input.groups.len());
    for (cell, part) in &input.groups {
        groups.push((value_of(cell), evaluate(meter, &alone, part)?));
    }
    merge_levels(query, &ungrouped, groups)
}
