//! Grouped rollups: per (org, metric, attribute key, attribute value) and
//! UTC hour, the sum of delta quantities and the record counts, for the
//! attribute keys the operator declares (`rollup_group_by`). A sum or count
//! grouped by such a key reads these hours and raw records only at the
//! range's ragged ends, like an ungrouped one. Levels are not rolled up per
//! group: a subject's level belongs to the group of the record in force,
//! which moves between groups, so grouped integrals, latest and max still
//! read raw records (a page of subjects at a time).
//!
//! A record without the key belongs to the group `None` (the engine's
//! rule). The stored `cell` text keeps the two apart: `""` for `None`,
//! `"=" + value` otherwise.

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
