//! The aggregation engine: stored records of one metric → per-window values
//! and a total.
//!
//! The engine is pure: the caller loads every relevant record and the engine
//! sorts them itself, so arrival order (late or out-of-order records) never
//! changes a result. Arithmetic is exact `Decimal` and checked; an overflow is
//! an error, never a wrap or a float.

use meterd_units::QuantityError;
use rust_decimal::Decimal;
use std::cmp::Ordering;

use super::period::{self, PeriodError, Range};
use super::{Aggregation, Kind, MeterDef};

/// One stored usage record, as the engine sees it (already filtered to the meter's metric by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub kind: Kind,
    pub subject: String,
    pub quantity: Decimal,
    pub at_ms: i64,
    /// The value of the group-by attribute on this record, when the query groups (None: attribute absent or not grouping).
    pub group: Option<String>,
}

/// What to compute for one meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    pub range: Range,
    /// None: one window spanning the whole range.
    pub window: Option<period::WindowSize>,
    /// Integrals never extend past `now_ms` (the future has no usage yet).
    pub now_ms: i64,
    /// Whether output windows are split per group.
    pub grouped: bool,
}

/// A meter's value in one window (and one group, when grouping).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowValue {
    pub start_ms: i64,
    pub end_ms: i64,
    pub group: Option<String>,
    pub value: Decimal,
}

/// A meter's values over a query range.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// Over the whole range and all groups combined.
    pub total: Decimal,
    /// Window by window in time order; within a window, groups with `None`
    /// first, then lexicographically.
    pub windows: Vec<WindowValue>,
}

/// Why a report could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Period(#[from] PeriodError),
    #[error(transparent)]
    Quantity(#[from] QuantityError),
    /// The rollup reader was handed summaries its plan does not allow.
    #[error("rollup query: {0}")]
    Plan(&'static str),
}

/// Aggregates one meter over `query.range`.
///
/// `points`: the meter metric's records with range.from_ms <= at_ms < range.to_ms, in ANY order.
/// `carry_in`: level records stamped before range.from_ms, any order: at
/// least each subject's records at its last instant before the range (the
/// one in force at its start). A grouped query names the group of every
/// carry-in record, so the store passes every level record before the
/// range (`meter::rollup::groups::merge_levels` states the rule).
///
/// Records outside those contracts are ignored rather than guessed at: a
/// point outside the range, and a carry-in record that is not a Level record
/// before the range. Carry-in only matters to level aggregations (Integral,
/// Latest, Max); Sum and Count look at `points` alone.
///
/// Levels form one step function per subject: a record's quantity holds from
/// its `at_ms` until the subject's next record (0 before its first). Ties
/// (same subject, same `at_ms`) are broken so the result does not depend on
/// input order: the record with the greatest `(quantity, group)` (`None` the
/// lowest group) is the one in force after that instant; the others hold for
/// no time at all. Records of different subjects at one instant take effect
/// together, so Max never sees a half-applied instant.
pub fn aggregate(
    meter: &MeterDef,
    query: &UsageQuery,
    carry_in: &[Point],
    points: &[Point],
) -> Result<UsageReport, EngineError> {
    // `Range`'s fields are public, so a hand-built one may be empty.
    let range = Range::new(query.range.from_ms, query.range.to_ms)?;
    let windows = match query.window {
        None => vec![range],
        Some(size) => period::windows(range, size)?,
    };
    let in_range = points.iter().filter(|p| range.contains(p.at_ms));
    let levels = |aggregation| level_aggregate(aggregation, &windows, query, carry_in, points);
    match meter.aggregation {
        Aggregation::Sum => {
            let deltas = canonical(in_range.filter(|p| p.kind == Kind::Delta));
            sum(&windows, query.grouped, &deltas)
        }
        Aggregation::Count => count(&windows, query.grouped, &canonical(in_range)),
        Aggregation::Integral => levels(LevelAggregation::Integral),
        Aggregation::Latest => levels(LevelAggregation::Latest),
        Aggregation::Max => levels(LevelAggregation::Max),
    }
}

/// The aggregations computed from level step functions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LevelAggregation {
    Integral,
    Latest,
    Max,
}

/// Integral, Latest or Max: collects the level records and carry-in.
fn level_aggregate(
    aggregation: LevelAggregation,
    windows: &[Range],
    query: &UsageQuery,
    carry_in: &[Point],
    points: &[Point],
) -> Result<UsageReport, EngineError> {
    let range = query.range;
    let carried = carry_in.iter().filter(|p| p.at_ms < range.from_ms);
    let current = points.iter().filter(|p| range.contains(p.at_ms));
    let mut events: Vec<&Point> = carried.chain(current).filter(|p| p.kind == Kind::Level).collect();
    events
        .sort_by(|a, b| a.subject.cmp(&b.subject).then(a.at_ms.cmp(&b.at_ms)).then_with(|| tie_order(a, b)));
    level_report(aggregation, windows, query, &events)
}

/// The points in one total order, so sums are added in the same order (and
/// overflow, if any, is found at the same place) whatever the input order.
fn canonical<'a>(points: impl Iterator<Item = &'a Point>) -> Vec<&'a Point> {
    let mut out: Vec<&Point> = points.collect();
    out.sort_by(|a, b| {
        a.at_ms
            .cmp(&b.at_ms)
            .then_with(|| a.subject.cmp(&b.subject))
            .then_with(|| a.kind.as_str().cmp(b.kind.as_str()))
            .then_with(|| tie_order(a, b))
    });
    out
}

/// Order among records of one subject at one instant; the last one wins.
/// After `(quantity, group)` the exact representation decides (`1.0` vs
/// `1.00`), so even the scale of a result is independent of input order.
fn tie_order(a: &Point, b: &Point) -> Ordering {
    a.quantity
        .cmp(&b.quantity)
        .then_with(|| a.group.cmp(&b.group))
        .then_with(|| a.quantity.serialize().cmp(&b.quantity.serialize()))
}

/// The output groups (sorted: `None` first, then lexicographic) and each
/// point's index into them. Without grouping, or with nothing to group,
/// there is the single group `None`.
fn assign_groups(grouped: bool, points: &[&Point]) -> (Vec<Option<String>>, Vec<usize>) {
    if !grouped || points.is_empty() {
        return (vec![None], vec![0; points.len()]);
    }
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[a].group.cmp(&points[b].group));
    let mut keys: Vec<Option<String>> = Vec::new();
    let mut index = vec![0; points.len()];
    for i in order {
        let group = &points[i].group;
        if keys.last() != Some(group) {
            keys.push(group.clone());
        }
        index[i] = keys.len() - 1;
    }
    (keys, index)
}

/// Index of the window containing `at_ms`, if any (windows are sorted and
/// contiguous).
fn window_of(windows: &[Range], at_ms: i64) -> Option<usize> {
    let i = windows.partition_point(|w| w.to_ms <= at_ms);
    windows.get(i).filter(|w| w.from_ms <= at_ms).map(|_| i)
}

/// Lays out `cells` (window-major, one per group) as the dense output.
fn dense(windows: &[Range], keys: &[Option<String>], cells: Vec<Decimal>) -> Vec<WindowValue> {
    let mut cells = cells.into_iter();
    let mut out = Vec::with_capacity(windows.len() * keys.len());
    for w in windows {
        for (key, value) in keys.iter().zip(cells.by_ref()) {
            out.push(WindowValue { start_ms: w.from_ms, end_ms: w.to_ms, group: key.clone(), value });
        }
    }
    out
}

fn add(a: Decimal, b: Decimal, what: &'static str) -> Result<Decimal, QuantityError> {
    a.checked_add(b).ok_or(QuantityError::Overflow(what))
}

fn sub(a: Decimal, b: Decimal, what: &'static str) -> Result<Decimal, QuantityError> {
    a.checked_sub(b).ok_or(QuantityError::Overflow(what))
}

/// Sum of delta quantities per window and group; `deltas` in canonical order.
fn sum(windows: &[Range], grouped: bool, deltas: &[&Point]) -> Result<UsageReport, EngineError> {
    let (keys, group_of) = assign_groups(grouped, deltas);
    let mut cells = vec![Decimal::ZERO; windows.len() * keys.len()];
    let mut total = Decimal::ZERO;
    for (p, g) in deltas.iter().zip(group_of) {
        let Some(w) = window_of(windows, p.at_ms) else {
            continue;
        };
        let cell = &mut cells[w * keys.len() + g];
        *cell = add(*cell, p.quantity, "sum of deltas")?;
        total = add(total, p.quantity, "sum of deltas")?;
    }
    Ok(UsageReport { total, windows: dense(windows, &keys, cells) })
}

/// Number of records per window and group.
fn count(windows: &[Range], grouped: bool, points: &[&Point]) -> Result<UsageReport, EngineError> {
    let (keys, group_of) = assign_groups(grouped, points);
    let mut cells = vec![0u64; windows.len() * keys.len()];
    let mut total = 0u64;
    for (p, g) in points.iter().zip(group_of) {
        let Some(w) = window_of(windows, p.at_ms) else {
            continue;
        };
        let cell = &mut cells[w * keys.len() + g];
        *cell = cell.checked_add(1).ok_or(QuantityError::Overflow("record count"))?;
        total = total.checked_add(1).ok_or(QuantityError::Overflow("record count"))?;
    }
    let cells = cells.into_iter().map(Decimal::from).collect();
    Ok(UsageReport { total: Decimal::from(total), windows: dense(windows, &keys, cells) })
}

/// A subject's level changing at `at_ms`: it leaves `before` (group, value)
/// and takes `after`.
struct Step {
    at_ms: i64,
    before: Option<(usize, Decimal)>,
    after: (usize, Decimal),
}

/// Current level per group and for the whole organization.
struct Levels {
    group: Vec<Decimal>,
    org: Decimal,
}

impl Levels {
    fn apply(&mut self, step: &Step) -> Result<(), QuantityError> {
        const WHAT: &str = "sum of levels";
        if let Some((g, value)) = step.before {
            self.group[g] = sub(self.group[g], value, WHAT)?;
            self.org = sub(self.org, value, WHAT)?;
        }
        let (g, value) = step.after;
        self.group[g] = add(self.group[g], value, WHAT)?;
        self.org = add(self.org, value, WHAT)?;
        Ok(())
    }
}

/// Level × milliseconds accrued so far in one window, per group and for the
/// organization. Accrual is lazy (a group accrues only when its level
/// changes, and at the window end), so work is proportional to records, not
/// records × groups.
struct Accrual {
    /// Integration stops here: `min(window end, now)`, never before the
    /// window start.
    clip: i64,
    group_ms: Vec<Decimal>,
    group_since: Vec<i64>,
    org_ms: Decimal,
    org_since: i64,
}

impl Accrual {
    fn new(window: &Range, now_ms: i64, groups: usize) -> Accrual {
        Accrual {
            clip: window.to_ms.min(now_ms).max(window.from_ms),
            group_ms: vec![Decimal::ZERO; groups],
            group_since: vec![window.from_ms; groups],
            org_ms: Decimal::ZERO,
            org_since: window.from_ms,
        }
    }

    /// `level × (min(upto, clip) − since)` added to `acc`, `since` advanced.
    fn accrue(acc: &mut Decimal, since: &mut i64, level: Decimal, upto: i64) -> Result<(), EngineError> {
        if upto <= *since {
            return Ok(());
        }
        // The distance between two i64 times may not fit in i64 (up to 2^64),
        // but it always fits in a Decimal's 96 bits.
        let ms = i128::from(upto) - i128::from(*since);
        let ms = Decimal::try_from_i128_with_scale(ms, 0).map_err(|_| QuantityError::Overflow("duration"))?;
        let product = level.checked_mul(ms).ok_or(QuantityError::Overflow("level × ms"))?;
        *acc = add(*acc, product, "level × ms")?;
        *since = upto;
        Ok(())
    }

    fn group(&mut self, g: usize, level: Decimal, upto: i64) -> Result<(), EngineError> {
        let upto = upto.min(self.clip);
        Self::accrue(&mut self.group_ms[g], &mut self.group_since[g], level, upto)
    }

    fn org(&mut self, level: Decimal, upto: i64) -> Result<(), EngineError> {
        let upto = upto.min(self.clip);
        Self::accrue(&mut self.org_ms, &mut self.org_since, level, upto)
    }
}

/// Integral, Latest or Max from level records sorted by (subject, at_ms,
/// tie order).
fn level_report(
    aggregation: LevelAggregation,
    windows: &[Range],
    query: &UsageQuery,
    events: &[&Point],
) -> Result<UsageReport, EngineError> {
    let (keys, group_of) = assign_groups(query.grouped, events);
    let groups = keys.len();

    // One step per (subject, instant): the last record of each run of equal
    // (subject, at_ms) is the one in force afterwards.
    let mut steps: Vec<Step> = Vec::new();
    let mut in_force: Option<(&str, usize, Decimal)> = None;
    for (i, p) in events.iter().enumerate() {
        let superseded =
            events.get(i + 1).is_some_and(|next| next.subject == p.subject && next.at_ms == p.at_ms);
        if superseded {
            continue;
        }
        let before = match in_force {
            Some((subject, g, value)) if subject == p.subject => Some((g, value)),
            _ => None,
        };
        steps.push(Step { at_ms: p.at_ms, before, after: (group_of[i], p.quantity) });
        in_force = Some((&p.subject, group_of[i], p.quantity));
    }
    // Stable: steps at one instant stay in subject order, so sums are added
    // in the same order every time.
    steps.sort_by_key(|s| s.at_ms);

    let integral = aggregation == LevelAggregation::Integral;
    let max = aggregation == LevelAggregation::Max;
    let mut levels = Levels { group: vec![Decimal::ZERO; groups], org: Decimal::ZERO };
    let mut next = 0;
    let mut cells = Vec::with_capacity(windows.len() * groups);
    let mut total_ms = Decimal::ZERO;
    let mut total_max: Option<Decimal> = None;
    let mut touched: Vec<usize> = Vec::new();

    for w in windows {
        // Everything at or before the window start is in force at its start
        // (for the first window this includes carry-in).
        while let Some(step) = steps.get(next).filter(|s| s.at_ms <= w.from_ms) {
            levels.apply(step)?;
            next += 1;
        }
        let mut accrual = Accrual::new(w, query.now_ms, groups);
        let mut group_max = levels.group.clone();
        let mut org_max = levels.org;

        while let Some(t) = steps.get(next).map(|s| s.at_ms).filter(|&t| t < w.to_ms) {
            if integral {
                accrual.org(levels.org, t)?;
            }
            touched.clear();
            while let Some(step) = steps.get(next).filter(|s| s.at_ms == t) {
                let first = touched.len();
                touched.extend(step.before.map(|(g, _)| g));
                touched.push(step.after.0);
                if integral {
                    // Accrue the old levels up to now, before they change.
                    for &g in &touched[first..] {
                        accrual.group(g, levels.group[g], t)?;
                    }
                }
                levels.apply(step)?;
                next += 1;
            }
            // Only after the whole instant: no half-applied maxima.
            if max {
                for &g in &touched {
                    group_max[g] = group_max[g].max(levels.group[g]);
                }
                org_max = org_max.max(levels.org);
            }
        }

        match aggregation {
            LevelAggregation::Integral => {
                accrual.org(levels.org, w.to_ms)?;
                total_ms = add(total_ms, accrual.org_ms, "level × ms")?;
                for g in 0..groups {
                    accrual.group(g, levels.group[g], w.to_ms)?;
                    cells.push(meterd_units::ms_product_to_seconds(accrual.group_ms[g])?);
                }
            }
            // All steps before the window end have been applied.
            LevelAggregation::Latest => cells.extend_from_slice(&levels.group),
            LevelAggregation::Max => {
                cells.extend(group_max);
                total_max = Some(total_max.map_or(org_max, |m| m.max(org_max)));
            }
        }
    }

    let total = match aggregation {
        LevelAggregation::Integral => meterd_units::ms_product_to_seconds(total_ms)?,
        LevelAggregation::Latest => levels.org,
        // Windows cover the range, so there is at least one.
        LevelAggregation::Max => total_max.unwrap_or(Decimal::ZERO),
    };
    Ok(UsageReport { total, windows: dense(windows, &keys, cells) })
}
