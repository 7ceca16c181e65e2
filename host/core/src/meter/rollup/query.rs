//! A usage query answered from rollups: whole months (sums, counts and
//! integrals over one window or monthly windows) and whole hours from their
//! summaries, the range's ragged ends from raw rows. An integral stops at `now`: the
//! hour holding it is its summary less the steps stamped after `now`
//! (read raw; usually none).
//!
//! The answer equals `meter::aggregate` over the raw records (the tests
//! check it on random histories); it is computed per window in time order
//! from the level before the range, so the work is O(hours + raw rows).

use rust_decimal::Decimal;

use super::{HOUR_MS, Hour, Month, hour_of};
use crate::meter::engine::{EngineError, Point, UsageQuery, UsageReport, WindowValue};
use crate::meter::period::{self, Range, WindowSize, month_containing};
use crate::meter::{Aggregation, Kind, MeterDef};
use meterd_units::QuantityError;

/// What to read for a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Month-aligned ranges read as month summaries.
    pub months: Vec<Range>,
    /// Hour-aligned ranges read as hour summaries.
    pub hours: Vec<Range>,
    /// Ranges read raw: records for sums and counts, steps for levels.
    pub raw: Vec<Range>,
    /// What the last hour summary holds that the answer must not: for an
    /// integral whose range holds `now`, the steps from `now` to the end of
    /// its hour (integration stops at `now`); for a sum or count whose last
    /// hour is read whole though the range ends inside it, the records from
    /// the range's end to the hour's end. Both are stamped ahead of the
    /// clock, so usually none. A month read whole in the same way puts the
    /// month's end where the hour's is.
    pub ahead: Option<Range>,
}

/// Whether `aggregation` reads the level step function (not sums or counts).
pub fn is_level(aggregation: Aggregation) -> bool {
    matches!(aggregation, Aggregation::Integral | Aggregation::Latest | Aggregation::Max)
}

/// Which parts of `range` are whole months, whole hours and raw.
///
/// A range ending at or after `now` inside an hour (credits, a month so
/// far) reads that hour as its summary less what lies [ahead](ReadPlan::ahead)
/// of the range: the current hour is the busiest one to read raw, and what
/// is stamped after `now` is rare. Sums, counts and integrals over one
/// window (or monthly windows) read whole months as month summaries, and
/// the month holding `now` whole in the same way; latest and max cannot
/// subtract and have no month summary, so they read hours and their tail
/// raw.
pub fn plan(range: Range, aggregation: Aggregation, now_ms: i64, window: Option<WindowSize>) -> ReadPlan {
    let subtracts = matches!(aggregation, Aggregation::Sum | Aggregation::Count | Aggregation::Integral);
    let reaches_now = range.to_ms >= now_ms;
    let (first, mut last) = aligned(range, hour_of, |t| hour_of(t).saturating_add(HOUR_MS));
    if subtracts && reaches_now && first <= last && last < range.to_ms {
        last = last.saturating_add(HOUR_MS);
    }
    if first >= last {
        return ReadPlan { months: Vec::new(), hours: Vec::new(), raw: vec![range], ahead: None };
    }
    let mut raw = Vec::new();
    if range.from_ms < first {
        raw.push(Range { from_ms: range.from_ms, to_ms: first });
    }
    if last < range.to_ms {
        raw.push(Range { from_ms: last, to_ms: range.to_ms });
    }
    let (mut months, mut hours) = (Vec::new(), vec![Range { from_ms: first, to_ms: last }]);
    let mut covered = last;
    if subtracts && matches!(window, None | Some(WindowSize::Month)) {
        let whole = Range { from_ms: first, to_ms: last };
        let (m_first, mut m_last) =
            aligned(whole, |t| month_containing(t).from_ms, |t| month_containing(t).to_ms);
        if reaches_now && m_first <= m_last && m_last < last {
            m_last = month_containing(m_last).to_ms;
        }
        if m_first < m_last {
            months.push(Range { from_ms: m_first, to_ms: m_last });
            hours = [Range { from_ms: first, to_ms: m_first }, Range { from_ms: m_last, to_ms: last }]
                .into_iter()
                .filter(|r| r.from_ms < r.to_ms)
                .collect();
            covered = covered.max(m_last);
        }
    }
    let ahead = match aggregation {
        Aggregation::Integral => {
            let holding = |ranges: &[Range]| ranges.iter().any(|r| r.contains(now_ms));
            if holding(&months) {
                Some(Range { from_ms: now_ms, to_ms: month_containing(now_ms).to_ms })
            } else if holding(&hours) {
                Some(Range { from_ms: now_ms, to_ms: hour_of(now_ms).saturating_add(HOUR_MS) })
            } else {
                None
            }
        }
        Aggregation::Sum | Aggregation::Count if covered > range.to_ms => {
            Some(Range { from_ms: range.to_ms, to_ms: covered })
        }
        _ => None,
    };
    ReadPlan { months, hours, raw, ahead }
}

/// The first boundary at or after `range`'s start and the last at or
/// before its end, for boundaries given by `floor` and `next` (the
/// boundary after the one containing a time).
fn aligned(range: Range, floor: impl Fn(i64) -> i64, next: impl Fn(i64) -> i64) -> (i64, i64) {
    let first = floor(range.from_ms);
    let first = if first == range.from_ms { first } else { next(range.from_ms) };
    (first, floor(range.to_ms))
}

/// What the store read for a [`ReadPlan`].
#[derive(Debug, Clone, Default)]
pub struct RollupInput {
    /// The org level just before the range starts (level aggregations).
    pub before: Decimal,
    /// Month summaries in the plan's month ranges, by start (absent: empty).
    pub months: Vec<(i64, Month)>,
    /// Hour summaries in the plan's hour ranges, by start (absent: empty).
    pub hours: Vec<(i64, Hour)>,
    /// Net steps of the org level in the raw ranges (level aggregations).
    pub steps: Vec<(i64, Decimal)>,
    /// Records of the meter's metric in the raw ranges (sums and counts).
    pub points: Vec<Point>,
    /// Net steps in the plan's `ahead` range (integrals).
    pub ahead: Vec<(i64, Decimal)>,
    /// Records in the plan's `ahead` range (sums and counts).
    pub ahead_points: Vec<Point>,
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_add(b).ok_or(QuantityError::Overflow("rollup query"))
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, QuantityError> {
    a.checked_mul(b).ok_or(QuantityError::Overflow("rollup query"))
}

/// Aggregates one meter over `query.range` (ungrouped) from rollups.
pub fn evaluate(
    meter: &MeterDef,
    query: &UsageQuery,
    input: &RollupInput,
) -> Result<UsageReport, EngineError> {
    let range = Range::new(query.range.from_ms, query.range.to_ms)?;
    let windows = match query.window {
        None => vec![range],
        Some(size) => period::windows(range, size)?,
    };
    let mut hours: Vec<&(i64, Hour)> = input.hours.iter().filter(|(h, _)| range.contains(*h)).collect();
    hours.sort_by_key(|(h, _)| *h);
    let mut months: Vec<&(i64, Month)> = input.months.iter().filter(|(m, _)| range.contains(*m)).collect();
    months.sort_by_key(|(m, _)| *m);
    match meter.aggregation {
        Aggregation::Sum | Aggregation::Count => {
            let count = meter.aggregation == Aggregation::Count;
            let mut cells = vec![Decimal::ZERO; windows.len()];
            let mut total = Decimal::ZERO;
            let mut place = |at: i64, value: Decimal| -> Result<(), QuantityError> {
                if let Some(w) = window_of(&windows, at) {
                    cells[w] = add(cells[w], value)?;
                    total = add(total, value)?;
                }
                Ok(())
            };
            for (start, hour) in hours {
                place(*start, if count { Decimal::from(hour.records) } else { hour.delta_sum })?;
            }
            for (start, month) in &months {
                place(*start, if count { Decimal::from(month.records) } else { month.delta_sum })?;
            }
            let value = |p: &Point| match (count, p.kind) {
                (true, _) => Decimal::ONE,
                (false, Kind::Delta) => p.quantity,
                (false, Kind::Level) => Decimal::ZERO,
            };
            for p in input.points.iter().filter(|p| range.contains(p.at_ms)) {
                place(p.at_ms, value(p))?;
            }
            // The last hour or month was summed whole; what it holds after
            // the range ends comes off the window that holds its start.
            let summary_start = |at: i64| {
                let month = month_containing(at).from_ms;
                if months.iter().any(|(m, _)| *m == month) { month } else { hour_of(at) }
            };
            for p in input.ahead_points.iter().filter(|p| p.at_ms >= range.to_ms) {
                place(summary_start(p.at_ms), -value(p))?;
            }
            Ok(report(&windows, cells, total))
        }
        aggregation => levels(aggregation, &windows, query.now_ms, input, &hours, &months),
    }
}

fn report(windows: &[Range], cells: Vec<Decimal>, total: Decimal) -> UsageReport {
    let windows = windows
        .iter()
        .zip(cells)
        .map(|(w, value)| WindowValue { start_ms: w.from_ms, end_ms: w.to_ms, group: None, value })
        .collect();
    UsageReport { total, windows }
}

/// Index of the window containing `at_ms` (windows are sorted and contiguous).
fn window_of(windows: &[Range], at_ms: i64) -> Option<usize> {
    let i = windows.partition_point(|w| w.to_ms <= at_ms);
    windows.get(i).filter(|w| w.from_ms <= at_ms).map(|_| i)
}

/// A piece of the level's history in time order.
enum Piece<'a> {
    Month(i64, &'a Month),
    Hour(i64, &'a Hour),
    Step(i64, Decimal),
}

impl Piece<'_> {
    fn at(&self) -> i64 {
        match self {
            Piece::Month(at, _) | Piece::Hour(at, _) | Piece::Step(at, _) => *at,
        }
    }
}

/// ∫ of the level over [start, upto) of a summary running to `end`, from
/// the level before it, its net step and moment, and the steps in
/// [upto, end) (`later`, all of them): ∫ = L(start−)·d + Σ Δᵢ·(upto − tᵢ) over steps
/// before `upto` = (L + step)·d − moment + Σ Δⱼ·(tⱼ − upto) over the steps
/// at or after it.
fn summary_integral(
    level: Decimal,
    (start, upto): (i64, i64),
    (step, moment): (Decimal, Decimal),
    later: &[(i64, Decimal)],
) -> Result<Decimal, QuantityError> {
    let d = Decimal::from(upto - start);
    let mut part =
        mul(add(level, step)?, d)?.checked_sub(moment).ok_or(QuantityError::Overflow("rollup query"))?;
    for (t, s) in later {
        part = add(part, mul(*s, Decimal::from(t - upto))?)?;
    }
    Ok(part)
}

/// Integral, latest or max per window: a sweep from the level before the
/// range through hour summaries and single steps.
fn levels(
    aggregation: Aggregation,
    windows: &[Range],
    now_ms: i64,
    input: &RollupInput,
    hours: &[&(i64, Hour)],
    months: &[&(i64, Month)],
) -> Result<UsageReport, EngineError> {
    if aggregation == Aggregation::Max && !months.is_empty() {
        return Err(EngineError::Plan("a month summary has no peak"));
    }
    let (before, steps) = (input.before, &input.steps);
    let range = Range { from_ms: windows[0].from_ms, to_ms: windows[windows.len() - 1].to_ms };
    let mut pieces: Vec<Piece> = hours.iter().map(|(h, hour)| Piece::Hour(*h, hour)).collect();
    pieces.extend(months.iter().map(|(m, month)| Piece::Month(*m, month)));
    pieces.extend(steps.iter().filter(|(t, _)| range.contains(*t)).map(|&(t, s)| Piece::Step(t, s)));
    pieces.sort_by_key(Piece::at);

    let mut level = before;
    let mut next = 0;
    let mut cells = Vec::with_capacity(windows.len());
    let mut total_ms = Decimal::ZERO;
    let mut total_max: Option<Decimal> = None;
    for w in windows {
        // Integration stops at `now`, never before the window start.
        let clip = w.to_ms.min(now_ms).max(w.from_ms);
        let mut pos = w.from_ms;
        let mut acc = Decimal::ZERO;
        let accrue =
            |acc: &mut Decimal, pos: &mut i64, level: Decimal, upto: i64| -> Result<(), QuantityError> {
                let upto = upto.min(clip);
                if upto > *pos {
                    *acc = add(*acc, mul(level, Decimal::from(upto - *pos))?)?;
                    *pos = upto;
                }
                Ok(())
            };
        // The level once everything at the window's first instant applied.
        let opening = match pieces.get(next) {
            Some(Piece::Step(t, s)) if *t == w.from_ms => add(level, *s)?,
            Some(Piece::Hour(t, h)) if *t == w.from_ms => add(level, h.level_open)?,
            _ => level,
        };
        let mut max = opening;
        while let Some(piece) = pieces.get(next).filter(|p| p.at() < w.to_ms) {
            match piece {
                Piece::Step(t, s) => {
                    accrue(&mut acc, &mut pos, level, *t)?;
                    level = add(level, *s)?;
                    max = max.max(level);
                }
                Piece::Month(start, month) => {
                    accrue(&mut acc, &mut pos, level, *start)?;
                    if aggregation == Aggregation::Integral && clip > *start {
                        let end = month_containing(*start).to_ms;
                        let upto = clip.min(end);
                        let later: Vec<(i64, Decimal)> =
                            input.ahead.iter().copied().filter(|(t, _)| (upto..end).contains(t)).collect();
                        let summary = (month.level_step, month.level_moment);
                        acc = add(acc, summary_integral(level, (*start, upto), summary, &later)?)?;
                        pos = upto;
                    }
                    level = add(level, month.level_step)?;
                }
                Piece::Hour(start, hour) => {
                    accrue(&mut acc, &mut pos, level, *start)?;
                    let end = start + HOUR_MS;
                    if aggregation == Aggregation::Integral && clip > *start {
                        let upto = clip.min(end);
                        let later: Vec<(i64, Decimal)> =
                            input.ahead.iter().copied().filter(|(t, _)| (upto..end).contains(t)).collect();
                        if upto < end && later.is_empty() && hour.level_last_at.is_some_and(|l| l > upto) {
                            return Err(EngineError::Plan("an hour summary cut before steps not read"));
                        }
                        let summary = (hour.level_step, hour.level_moment);
                        acc = add(acc, summary_integral(level, (*start, upto), summary, &later)?)?;
                        pos = upto;
                    }
                    if let Some(peak) = hour.level_peak {
                        max = max.max(add(level, peak)?);
                    }
                    level = add(level, hour.level_step)?;
                }
            }
            next += 1;
        }
        accrue(&mut acc, &mut pos, level, w.to_ms)?;
        let cell = match aggregation {
            Aggregation::Integral => {
                total_ms = add(total_ms, acc)?;
                meterd_units::ms_product_to_seconds(acc)?
            }
            Aggregation::Max => {
                total_max = Some(total_max.map_or(max, |m| m.max(max)));
                max
            }
            _ => level,
        };
        cells.push(cell);
    }
    let total = match aggregation {
        Aggregation::Integral => meterd_units::ms_product_to_seconds(total_ms)?,
        Aggregation::Max => total_max.unwrap_or(Decimal::ZERO),
        _ => level,
    };
    Ok(report(windows, cells, total))
}
