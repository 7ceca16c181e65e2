//! Usage queries, apart from HTTP: resolve the meter, read the rollups of
//! the range (whole hours summarized, the ends raw; `meter::rollup`) and
//! evaluate them; a query grouped by a key of `rollup_group_by` reads its
//! group hours (sums, counts) or its groups' level series (integral,
//! latest, max) the same way (`meter::rollup::groups`); a query grouped by
//! any other key reads the range's raw records a page at a time and adds
//! up the pages' reports (`meter::merge`). The query parameters' parsing
//! lives here too (the answer's form is `api::usage`), so that the HTTP API
//! and `meterd usage` cannot disagree.

use std::sync::Arc;

use chrono::DateTime;
use rust_decimal::Decimal;

use crate::meter::period::{Range, WindowSize, month_containing};
use crate::meter::rollup::{self, SeriesKey};
use crate::meter::{self, EngineError, MeterDef, Point, UsageQuery};
use crate::record::valid_attribute_key;
use crate::store::{PointQuery, Store, StoreError};

#[derive(Debug, Clone)]
pub struct UsageRequest {
    pub org_id: String,
    pub meter: String,
    pub range: Range,
    pub window: Option<WindowSize>,
    pub group_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UsageAnswer {
    pub meter: MeterDef,
    pub total: Decimal,
    pub windows: Vec<meter::WindowValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("unknown meter {meter:?}; known meters: {known}")]
    UnknownMeter { meter: String, known: String },
    #[error("group_by {0:?} is not an attribute name (1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', ':')")]
    BadGroupBy(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A query parameter that cannot be used; the message names it and says
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// An RFC 3339 time, as milliseconds; `name` is the parameter, for the
/// message.
pub fn parse_time(name: &str, text: &str) -> Result<i64, ParamError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| {
        ParamError(format!("`{name}` {text:?} is not an RFC 3339 time such as 2025-08-01T00:00:00Z"))
    })
}

/// `hour`, `day` or `month`.
pub fn parse_window(text: &str) -> Result<WindowSize, ParamError> {
    match text {
        "hour" => Ok(WindowSize::Hour),
        "day" => Ok(WindowSize::Day),
        "month" => Ok(WindowSize::Month),
        other => Err(ParamError(format!("`window` {other:?} must be hour, day or month"))),
    }
}

/// The queried range. Missing bounds default to the calendar month (UTC)
/// of the other bound, or of now.
pub fn range(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<Range, ParamError> {
    let from = from.map(|t| parse_time("from", t)).transpose()?;
    let to = to.map(|t| parse_time("to", t)).transpose()?;
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f, t),
        (Some(f), None) => (f, month_containing(f).to_ms),
        (None, Some(t)) => (month_containing(t.saturating_sub(1)).from_ms, t),
        (None, None) => {
            let month = month_containing(now_ms);
            (month.from_ms, month.to_ms)
        }
    };
    Range::new(from, to).map_err(|e| ParamError(format!("bad range: {e}")))
}

pub struct UsageService {
    store: Arc<dyn Store>,
    /// Replaced as a whole when the config changes.
    meters: std::sync::RwLock<Arc<Vec<MeterDef>>>,
}

impl UsageService {
    pub fn new(store: Arc<dyn Store>, meters: Vec<MeterDef>) -> Self {
        Self { store, meters: std::sync::RwLock::new(Arc::new(meters)) }
    }

    fn meters(&self) -> Arc<Vec<MeterDef>> {
        self.meters.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the meter definitions (config reload).
    pub fn set_meters(&self, meters: Vec<MeterDef>) {
        *self.meters.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(meters);
    }

    pub fn meter(&self, name: &str) -> Option<MeterDef> {
        self.meters().iter().find(|m| m.name == name).cloned()
    }

    pub async fn usage(&self, request: &UsageRequest, now_ms: i64) -> Result<UsageAnswer, UsageError> {
        let meters = self.meters();
        let meter = meters.iter().find(|m| m.name == request.meter).cloned().ok_or_else(|| {
            UsageError::UnknownMeter {
                meter: request.meter.clone(),
                known: meters.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            }
        })?;
        if let Some(key) = &request.group_by
            && !valid_attribute_key(key)
        {
            return Err(UsageError::BadGroupBy(key.clone()));
        }
        let engine_query = UsageQuery {
            range: request.range,
            window: request.window,
            now_ms,
            grouped: request.group_by.is_some(),
        };
        let series = SeriesKey { org_id: request.org_id.clone(), metric: meter.metric.clone() };
        if request.group_by.is_none() {
            // Whole months and hours from their summaries, the ragged ends raw.
            let plan = rollup::query::plan(request.range, meter.aggregation, now_ms, request.window);
            let input =
                self.store.rollup_input(&series, &plan, meter.aggregation, request.range.from_ms).await?;
            let report = rollup::query::evaluate(&meter, &engine_query, &input)?;
            return Ok(UsageAnswer { meter, total: report.total, windows: report.windows });
        }
        if let Some(key) = request.group_by.as_deref()
            && self.store.group_by().iter().any(|k| k == key)
        {
            let plan = rollup::query::plan(request.range, meter.aggregation, now_ms, request.window);
            let report = if rollup::query::is_level(meter.aggregation) {
                // A declared key's level: each group's level series, as an
                // ungrouped query reads it.
                let input = self.store.group_level_input(&series, key, &plan, request.range).await?;
                rollup::groups::evaluate_grouped_levels(&meter, &engine_query, &input)?
            } else {
                // A declared key's sum or count: its group hours, the
                // ragged ends raw.
                let input = self.store.group_input(&series, key, &plan).await?;
                rollup::groups::evaluate_grouped(&meter, &engine_query, &input)?
            };
            return Ok(UsageAnswer { meter, total: report.total, windows: report.windows });
        }
        // Grouping by any other attribute reads the range's records, a page
        // at a time.
        let query = PointQuery {
            org_id: &request.org_id,
            metric: &meter.metric,
            range: request.range,
            group_by: request.group_by.as_deref(),
        };
        let report = grouped(self.store.as_ref(), &meter, &engine_query, &query, Pages::DEFAULT).await?;
        Ok(UsageAnswer { meter, total: report.total, windows: report.windows })
    }
}

/// How much a grouped query reads per page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pages {
    /// Records per page of a sum or count.
    pub points: u32,
    /// Subjects per page of an integral or latest (each with its levels up
    /// to the range's end).
    pub subjects: u32,
}

impl Pages {
    pub(crate) const DEFAULT: Pages = Pages { points: 10_000, subjects: 1_000 };
}

/// A query grouped by an attribute, from raw records (an undeclared key, or
/// a level aggregation). Sums, counts, integrals and latest are read a page
/// at a time and the pages' reports added up; max a page at a time in time
/// order, from the levels in force, and the pages' maxima merged. Memory is
/// a page (and for max the subjects in force), not the range.
pub(crate) async fn grouped(
    store: &dyn Store,
    meter: &MeterDef,
    engine_query: &UsageQuery,
    query: &PointQuery<'_>,
    pages: Pages,
) -> Result<meter::UsageReport, UsageError> {
    Ok(match meter.aggregation {
        meter::Aggregation::Sum | meter::Aggregation::Count => {
            grouped_by_time(store, meter, engine_query, query, pages.points).await?
        }
        meter::Aggregation::Integral | meter::Aggregation::Latest => {
            grouped_by_subject(store, meter, engine_query, query, pages.subjects).await?
        }
        meter::Aggregation::Max => {
            grouped_max_by_time(store, meter, engine_query, query, pages.points).await?
        }
    })
}

/// A grouped max, a page of the range's records at a time in time order:
/// each page is a sub-range evaluated from the levels in force at its
/// start (every subject's records at its last instant before it, kept only
/// while not 0), and the pages' maxima are merged (`meter::merge::MaxMerged`).
/// A page never splits an instant. Memory: a page and the subjects in force.
async fn grouped_max_by_time(
    store: &dyn Store,
    meter: &MeterDef,
    engine_query: &UsageQuery,
    query: &PointQuery<'_>,
    page: u32,
) -> Result<meter::UsageReport, UsageError> {
    let mut merged = meter::merge::MaxMerged::new(engine_query)?;
    // Every level record before the range names its group; the first part
    // gets the whole carry-in, levels at 0 too.
    merged.name_groups(store.level_groups_before(query).await?);
    let mut carry_in = store.carry_in(query).await?;
    let mut in_force = InForce::default();
    in_force.replace_with(carry_in.clone());
    let (mut from, mut after) = (query.range.from_ms, None);
    loop {
        let rows = store.points_page(query, after, page).await?;
        let full = rows.len() == page as usize;
        let last_at = rows.last().map(|(key, _)| key.0);
        let (points, to): (Vec<Point>, i64) = match last_at {
            Some(last_at) if full => {
                // Leave the last instant (perhaps continued on the next
                // page) to the next part; a page all of one instant reads
                // that instant whole.
                let cut = rows.partition_point(|(key, _)| key.0 < last_at);
                if cut == 0 {
                    let instant = Range { from_ms: last_at, to_ms: last_at + 1 };
                    let points = store.points(&PointQuery { range: instant, ..*query }).await?;
                    after = Some((last_at, i64::MAX));
                    (points, last_at + 1)
                } else {
                    after = Some(rows[cut - 1].0);
                    (rows.into_iter().take(cut).map(|(_, p)| p).collect(), last_at)
                }
            }
            _ => (rows.into_iter().map(|(_, p)| p).collect(), query.range.to_ms),
        };
        let sub = Range { from_ms: from, to_ms: to };
        merged.add_part(meter, engine_query, sub, &carry_in, &points)?;
        in_force.replace_with(points);
        carry_in = in_force.points();
        if to >= query.range.to_ms {
            break;
        }
        from = to;
    }
    Ok(merged.finish())
}

/// Each subject's level records at its last instant so far, for the
/// subjects whose level in force (the greatest quantity there) is not 0.
#[derive(Default)]
struct InForce(std::collections::HashMap<String, (i64, Vec<Point>)>);

impl InForce {
    /// Takes in the records of the next part (any order; levels count).
    fn replace_with(&mut self, records: Vec<Point>) {
        let mut touched = std::collections::HashSet::new();
        for p in records.into_iter().filter(|p| p.kind == meter::Kind::Level) {
            touched.insert(p.subject.clone());
            match self.0.get_mut(&p.subject) {
                Some((at, points)) if *at == p.at_ms => points.push(p),
                Some((at, _)) if *at > p.at_ms => {}
                _ => {
                    self.0.insert(p.subject.clone(), (p.at_ms, vec![p]));
                }
            }
        }
        // The level in force is the greatest quantity at the last instant.
        for subject in touched {
            let zero = self.0.get(&subject).is_some_and(|(_, points)| {
                points.iter().map(|p| p.quantity).max().is_none_or(|q| q.is_zero())
            });
            if zero {
                self.0.remove(&subject);
            }
        }
    }

    fn points(&self) -> Vec<Point> {
        self.0.values().flat_map(|(_, points)| points.iter().cloned()).collect()
    }
}

/// A grouped sum or count, a page of the range's records at a time.
async fn grouped_by_time(
    store: &dyn Store,
    meter: &MeterDef,
    engine_query: &UsageQuery,
    query: &PointQuery<'_>,
    page: u32,
) -> Result<meter::UsageReport, UsageError> {
    let mut merged = meter::merge::Merged::new(engine_query)?;
    let mut after = None;
    loop {
        let rows = store.points_page(query, after, page).await?;
        let Some((last, _)) = rows.last() else { break };
        after = Some(*last);
        let full = rows.len() == page as usize;
        let points: Vec<Point> = rows.into_iter().map(|(_, p)| p).collect();
        merged.add_part(meter, engine_query, &[], &points)?;
        if !full {
            break;
        }
    }
    Ok(merged.finish())
}

/// A grouped integral or latest, a page of subjects at a time: each
/// subject's step function (with its history before the range as carry-in)
/// is whole in one page.
async fn grouped_by_subject(
    store: &dyn Store,
    meter: &MeterDef,
    engine_query: &UsageQuery,
    query: &PointQuery<'_>,
    page: u32,
) -> Result<meter::UsageReport, UsageError> {
    let mut merged = meter::merge::Merged::new(engine_query)?;
    let mut after: Option<String> = None;
    loop {
        let subjects = store.level_subjects(query, after.as_deref(), page).await?;
        let Some(last) = subjects.last() else { break };
        let records = store.levels_of_subjects(query, after.as_deref(), last).await?;
        // Every record before the range is carry-in: the last of each
        // subject's is in force, and each names its group.
        let (carry_in, points): (Vec<Point>, Vec<Point>) =
            records.into_iter().partition(|p| p.at_ms < query.range.from_ms);
        merged.add_part(meter, engine_query, &carry_in, &points)?;
        if subjects.len() < page as usize {
            break;
        }
        after = Some(last.clone());
    }
    Ok(merged.finish())
}
