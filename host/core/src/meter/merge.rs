//! Adding up reports of disjoint parts of one query, so a grouped query can
//! be answered a page at a time instead of from all of its records at once.
//!
//! A sum or count is additive over any split of the records; an integral
//! or latest is additive over a split by subject (each subject's step
//! function is whole in one part, with its carry-in). Max is not additive
//! over subjects (it needs every subject at once), but it is over a split
//! of the range by time, each part starting from the levels in force at
//! its start ([`MaxMerged`]).

use std::collections::{BTreeMap, BTreeSet};

use meterd_units::QuantityError;
use rust_decimal::Decimal;

use super::engine::{EngineError, Point, UsageQuery, UsageReport, WindowValue, aggregate};
use super::period::{self, Range};
use super::{Aggregation, Kind, MeterDef};

/// Whether a part's records make the engine name their groups: the engine
/// reports the single group `None` for a part with none, which must not add
/// a `None` column to the whole.
fn names_groups(aggregation: Aggregation, range: Range, carry_in: &[Point], points: &[Point]) -> bool {
    let in_range = |p: &&Point| range.contains(p.at_ms);
    match aggregation {
        Aggregation::Sum => points.iter().filter(in_range).any(|p| p.kind == Kind::Delta),
        Aggregation::Count => points.iter().any(|p| range.contains(p.at_ms)),
        Aggregation::Integral | Aggregation::Latest | Aggregation::Max => {
            carry_in.iter().filter(|p| p.at_ms < range.from_ms).any(|p| p.kind == Kind::Level)
                || points.iter().filter(in_range).any(|p| p.kind == Kind::Level)
        }
    }
}

/// The sum of part reports over one query's windows.
#[derive(Debug, Clone)]
pub struct Merged {
    windows: Vec<Range>,
    total: Decimal,
    /// Per window, per group.
    cells: Vec<BTreeMap<Option<String>, Decimal>>,
    /// Every group some part named (all windows show all of them).
    groups: BTreeSet<Option<String>>,
}

/// The windows the engine reports for `query`.
fn query_windows(query: &UsageQuery) -> Result<Vec<Range>, EngineError> {
    let range = Range::new(query.range.from_ms, query.range.to_ms)?;
    Ok(match query.window {
        None => vec![range],
        Some(size) => period::windows(range, size)?,
    })
}

/// A merged report laid out as the engine lays it out: window by window,
/// groups `None` first then in order (only `None` when no part named one),
/// `value(window index, group)` in each cell.
fn layout(
    windows: &[Range],
    groups: BTreeSet<Option<String>>,
    value: impl Fn(usize, &Option<String>) -> Decimal,
) -> Vec<WindowValue> {
    let groups: Vec<Option<String>> =
        if groups.is_empty() { vec![None] } else { groups.into_iter().collect() };
    let mut out = Vec::with_capacity(windows.len() * groups.len());
    for (i, range) in windows.iter().enumerate() {
        for g in &groups {
            out.push(WindowValue {
                start_ms: range.from_ms,
                end_ms: range.to_ms,
                group: g.clone(),
                value: value(i, g),
            });
        }
    }
    out
}

impl Merged {
    /// Nothing yet, over the windows the engine reports for `query`.
    pub fn new(query: &UsageQuery) -> Result<Self, EngineError> {
        let windows = query_windows(query)?;
        let cells = vec![BTreeMap::new(); windows.len()];
        Ok(Self { windows, total: Decimal::ZERO, cells, groups: BTreeSet::new() })
    }

    /// Runs the engine over one part (whole subjects with their carry-in,
    /// for a level aggregation) and adds its report.
    pub fn add_part(
        &mut self,
        meter: &MeterDef,
        query: &UsageQuery,
        carry_in: &[Point],
        points: &[Point],
    ) -> Result<(), EngineError> {
        let part = aggregate(meter, query, carry_in, points)?;
        let names = names_groups(meter.aggregation, query.range, carry_in, points);
        Ok(self.add(&part, names)?)
    }

    /// Adds the ungrouped report of one group's records as that group's
    /// part; `named`: whether the group had records that name it (see
    /// [`names_groups`]).
    pub fn add_group(
        &mut self,
        part: &UsageReport,
        group: Option<String>,
        named: bool,
    ) -> Result<(), QuantityError> {
        let windows =
            part.windows.iter().map(|w| WindowValue { group: group.clone(), ..w.clone() }).collect();
        self.add(&UsageReport { total: part.total, windows }, named)
    }

    /// Adds one part's report; `names_groups` as [`names_groups`] says.
    fn add(&mut self, part: &UsageReport, names_groups: bool) -> Result<(), QuantityError> {
        let add = |a: Decimal, b: Decimal| a.checked_add(b).ok_or(QuantityError::Overflow("merged usage"));
        self.total = add(self.total, part.total)?;
        if !names_groups {
            return Ok(());
        }
        for w in &part.windows {
            let i = self.windows.partition_point(|r| r.from_ms < w.start_ms);
            if let Some(cells) = self.cells.get_mut(i) {
                let v = cells.entry(w.group.clone()).or_insert(Decimal::ZERO);
                *v = add(*v, w.value)?;
            }
            self.groups.insert(w.group.clone());
        }
        Ok(())
    }

    /// The whole report, laid out as the engine lays it out: window by
    /// window, groups `None` first then in order, zeros included.
    pub fn finish(self) -> UsageReport {
        let cells = self.cells;
        let windows =
            layout(&self.windows, self.groups, |i, g| cells[i].get(g).copied().unwrap_or(Decimal::ZERO));
        UsageReport { total: self.total, windows }
    }
}

/// The maximum over time parts of one query's range, each part a
/// sub-range evaluated with the levels in force at its start as carry-in:
/// a window's maximum is the greatest of its parts' maxima, and so is the
/// total. A group a part does not name had level 0 throughout that part
/// (nothing of it was in force), which counts too.
#[derive(Debug, Clone)]
pub struct MaxMerged {
    windows: Vec<Range>,
    total: Option<Decimal>,
    /// Per window, per group: the greatest value a part reported and in
    /// how many parts the group was named.
    cells: Vec<BTreeMap<Option<String>, (Decimal, u32)>>,
    /// Per window, how many parts overlapped it.
    parts: Vec<u32>,
    groups: BTreeSet<Option<String>>,
}

impl MaxMerged {
    pub fn new(query: &UsageQuery) -> Result<Self, EngineError> {
        let windows = query_windows(query)?;
        let n = windows.len();
        Ok(Self {
            windows,
            total: None,
            cells: vec![BTreeMap::new(); n],
            parts: vec![0; n],
            groups: BTreeSet::new(),
        })
    }

    /// Runs the engine over the part `sub` of the range (`carry_in`: the
    /// records in force at its start; `points`: its records) and adds it.
    pub fn add_part(
        &mut self,
        meter: &MeterDef,
        query: &UsageQuery,
        sub: Range,
        carry_in: &[Point],
        points: &[Point],
    ) -> Result<(), EngineError> {
        let part_query = UsageQuery { range: sub, ..*query };
        let part = aggregate(meter, &part_query, carry_in, points)?;
        self.total = Some(self.total.map_or(part.total, |t| t.max(part.total)));
        for (i, w) in self.windows.iter().enumerate() {
            if w.from_ms < sub.to_ms && sub.from_ms < w.to_ms {
                self.parts[i] += 1;
            }
        }
        if !names_groups(meter.aggregation, sub, carry_in, points) {
            return Ok(());
        }
        for w in &part.windows {
            let i = self.windows.partition_point(|r| r.to_ms <= w.start_ms);
            if let Some(cells) = self.cells.get_mut(i) {
                let (v, named) = cells.entry(w.group.clone()).or_insert((w.value, 0));
                *v = (*v).max(w.value);
                *named += 1;
            }
            self.groups.insert(w.group.clone());
        }
        Ok(())
    }

    /// Names groups no part may name: those of level records before the
    /// range (a group named and in force in no part is 0).
    pub fn name_groups(&mut self, groups: impl IntoIterator<Item = Option<String>>) {
        self.groups.extend(groups);
    }

    /// The whole report, laid out as [`Merged::finish`] lays it out.
    pub fn finish(self) -> UsageReport {
        let (cells, parts) = (self.cells, self.parts);
        let windows = layout(&self.windows, self.groups, |i, g| match cells[i].get(g) {
            // Some part overlapping the window had the group at 0.
            Some((v, named)) if *named < parts[i] => (*v).max(Decimal::ZERO),
            Some((v, _)) => *v,
            None => Decimal::ZERO,
        });
        UsageReport { total: self.total.unwrap_or(Decimal::ZERO), windows }
    }
}
