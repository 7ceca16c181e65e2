//! The SQLite engine's rollup statements. Decimals are canonical TEXT, so
//! sums are computed in Rust: the one writer connection reads, adds and
//! writes within the transaction. Key lists go in as JSON arrays.

use std::collections::HashSet;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::StoreError;
use super::rollup::{
    DiffRow, LevelRow, REBUILD_PAGE, RebuildRow, RebuildTx, RollupCheck, RollupTx, RowKeys, RowsToWrite,
    StoredRows, SubjectKey, build_state, fold_records,
};
use super::rows::{self, StoredRow as _};
use super::sqlite_direct::{Direct, Value};
use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::fold::FoldOutput;
use crate::meter::rollup::groups::{GroupHour, GroupHourKey};
use crate::meter::rollup::{Hour, Month, SeriesKey, hour_of};
use crate::plans::standing::Run;

/// Rows per multi-row statement (SQLite allows 32,766 parameters).
const ROWS_PER_WRITE: usize = 2_000;

fn text(d: Decimal) -> String {
    meterd_units::format_quantity(d)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

fn series_keys<'a>(keys: impl Iterator<Item = &'a (SeriesKey, i64)>) -> String {
    let list: Vec<(&str, &str, i64)> =
        keys.map(|(s, t)| (s.org_id.as_str(), s.metric.as_str(), *t)).collect();
    json(&list)
}

/// `FROM … JOIN table` on the (org, metric, time) keys of a JSON list bound
/// as `param`: one primary-key probe per key (a row-value `IN (SELECT …)`
/// would use only (org, metric) and scan the series).
fn by_keys(param: &str, table: &str, time: &str) -> String {
    format!(
        "FROM json_each({param}) AS k JOIN {table} AS t ON t.org_id = json_extract(k.value, '$[0]')
         AND t.metric = json_extract(k.value, '$[1]') AND t.{time} = json_extract(k.value, '$[2]')"
    )
}

/// The rows a commit's rollup write starts from, and `data_version`, in one
/// statement: ?1 hour keys, ?2 step keys, ?3 month keys, ?4 group hour keys
/// (JSON). Columns are the hours' (steps put `step` in `delta_sum`; months
/// and group hours leave the columns they lack NULL); `tbl` says which
/// table a row is from.
static LOAD_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT 'h' AS tbl, t.org_id, t.metric, t.hour_ms AS at_ms, t.delta_sum, t.records, t.level_step,
                t.level_moment, t.level_open, t.level_peak, t.level_last_at_ms, NULL AS group_key, NULL AS cell,
                NULL AS deltas {hours}
         UNION ALL
         SELECT 's', t.org_id, t.metric, t.at_ms, t.step, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL {steps}
         UNION ALL
         SELECT 'm', t.org_id, t.metric, t.month_ms, t.delta_sum, t.records, t.level_step, t.level_moment,
                NULL, NULL, NULL, NULL, NULL, NULL {months}
         UNION ALL
         SELECT 'g', t.org_id, t.metric, t.hour_ms, t.delta_sum, t.records, NULL, NULL, NULL, NULL, NULL,
                t.group_key, t.cell, t.deltas
         FROM json_each(?4) AS k JOIN {groups} AS t ON t.org_id = json_extract(k.value, '$[0]')
         AND t.metric = json_extract(k.value, '$[1]') AND t.group_key = json_extract(k.value, '$[2]')
         AND t.hour_ms = json_extract(k.value, '$[4]') AND t.cell = json_extract(k.value, '$[3]')
         UNION ALL
         SELECT 'v', NULL, NULL, data_version, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
         FROM pragma_data_version",
        hours = by_keys("?1", LIVE.hours, "hour_ms"),
        steps = by_keys("?2", LIVE.steps, "at_ms"),
        months = by_keys("?3", LIVE.months, "month_ms"),
        groups = LIVE.group_hours,
    )
});

/// [`LOAD_ROWS`]' rows as one JSON text: read by sqlx (one row to hand
/// over) or on the writer's handle, in the lock its `COMMIT` takes
/// ([`load_rows_direct`]), and decoded alike ([`stored_rows`]).
static LOAD_ROWS_JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT json_group_array(json_array(tbl, org_id, metric, at_ms, delta_sum, records, level_step,
                level_moment, level_open, level_peak, level_last_at_ms, group_key, cell, deltas))
         FROM ({})",
        LOAD_ROWS.as_str()
    )
});

/// One row of [`LOAD_ROWS_JSON`], its columns in order.
type LoadedRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// The rows [`LOAD_ROWS_JSON`] answered.
fn stored_rows(json: &str) -> Result<StoredRows, StoreError> {
    fn given<T>(value: Option<T>, column: &str) -> Result<T, StoreError> {
        value.ok_or_else(|| StoreError::Corrupt(format!("rollup rows: {column} is null")))
    }
    let rows: Vec<LoadedRow> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("rollup rows: {e}")))?;
    let mut stored = StoredRows::default();
    for row in rows {
        let (
            tbl,
            org_id,
            metric,
            at_ms,
            delta_sum,
            records,
            step,
            moment,
            open,
            peak,
            last_at,
            group,
            cell,
            deltas,
        ) = row;
        let at_ms = given(at_ms, "at_ms")?;
        if tbl == "v" {
            stored.data_version = Some(at_ms);
            continue;
        }
        let key = (SeriesKey { org_id: given(org_id, "org_id")?, metric: given(metric, "metric")? }, at_ms);
        let delta_sum = decimal(&given(delta_sum, "delta_sum")?)?;
        match tbl.as_str() {
            "s" => {
                stored.steps.insert(key, delta_sum);
            }
            "h" => {
                let hour = Hour {
                    delta_sum,
                    records: given(records, "records")?,
                    level_step: decimal(&given(step, "level_step")?)?,
                    level_moment: decimal(&given(moment, "level_moment")?)?,
                    level_open: decimal(&given(open, "level_open")?)?,
                    level_peak: peak.as_deref().map(decimal).transpose()?,
                    level_last_at: last_at,
                };
                stored.hours.insert(key, hour);
            }
            "m" => {
                let month = Month {
                    delta_sum,
                    records: given(records, "records")?,
                    level_step: decimal(&given(step, "level_step")?)?,
                    level_moment: decimal(&given(moment, "level_moment")?)?,
                };
                stored.months.insert(key, month);
            }
            "g" => {
                let (series, hour) = key;
                let records = given(records, "records")?;
                let group_hour = GroupHour { delta_sum, records, deltas: given(deltas, "deltas")? };
                stored
                    .group_hours
                    .insert((series, given(group, "group_key")?, given(cell, "cell")?, hour), group_hour);
            }
            other => return Err(StoreError::Corrupt(format!("rollup rows: table {other:?}"))),
        }
    }
    Ok(stored)
}

/// The four JSON key lists [`LOAD_ROWS`] binds, in order.
fn load_rows_params(keys: &RowKeys) -> [String; 4] {
    [
        series_keys(keys.hours.iter()),
        series_keys(keys.steps.iter()),
        series_keys(keys.months.iter()),
        group_keys_json(keys.group_hours.iter()),
    ]
}

/// [`RollupTx::load_rows`] on the writer's own handle.
pub(super) fn load_rows_direct(direct: &mut Direct<'_>, keys: &RowKeys) -> Result<StoredRows, StoreError> {
    let params = load_rows_params(keys);
    let values = params.each_ref().map(|p| Value::Text(p));
    stored_rows(&direct.prepare(LOAD_ROWS_JSON.as_str())?.text(&values)?)
}

/// A series' steps in a range, as [`RollupTx::steps_in`] reads them.
static STEPS_IN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    json_rows_query(
        "json_array(at_ms, step)",
        "rollup_steps WHERE org_id = ?1 AND metric = ?2 AND at_ms >= ?3 AND at_ms < ?4 ORDER BY at_ms",
    )
});

/// [`RollupTx::steps_in`] on the writer's own handle.
pub(super) fn steps_in_direct(
    direct: &mut Direct<'_>,
    series: &SeriesKey,
    range: Range,
) -> Result<Vec<(i64, Decimal)>, StoreError> {
    let values = [
        Value::Text(&series.org_id),
        Value::Text(&series.metric),
        Value::Int(range.from_ms),
        Value::Int(range.to_ms),
    ];
    steps(&direct.prepare(STEPS_IN.as_str())?.text(&values)?)
}

/// The steps [`STEPS_IN`] answered.
fn steps(json: &str) -> Result<Vec<(i64, Decimal)>, StoreError> {
    let rows: Vec<(i64, String)> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("rollup steps: {e}")))?;
    rows.into_iter().map(|(at, step)| Ok((at, decimal(&step)?))).collect()
}

/// Group hour keys as the JSON list `LOAD_ROWS` reads.
fn group_keys_json<'a>(keys: impl Iterator<Item = &'a GroupHourKey>) -> String {
    let list: Vec<(&str, &str, &str, &str, i64)> = keys
        .map(|(s, key, cell, h)| (s.org_id.as_str(), s.metric.as_str(), key.as_str(), cell.as_str(), *h))
        .collect();
    json(&list)
}

/// Group hours as the JSON rows [`group_hours_upsert`] reads.
fn group_rows_json<'a>(rows: impl Iterator<Item = (&'a GroupHourKey, &'a GroupHour)>) -> String {
    let list: Vec<serde_json::Value> = rows
        .map(|((s, key, cell, h), g)| {
            serde_json::json!([s.org_id, s.metric, key, h, cell, text(g.delta_sum), g.records, g.deltas])
        })
        .collect();
    json(&list)
}

/// Writes group hours (a JSON list bound as one plain `?`) into `table`,
/// replacing what is there: commits ([`GROUP_HOURS_UPSERT`]), rebuilds and the
/// check all write them with this statement.
fn group_hours_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (org_id, metric, group_key, hour_ms, cell, delta_sum, records, deltas)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]'), json_extract(value, '$[7]')
    FROM json_each(?) WHERE true
    ON CONFLICT (org_id, metric, group_key, hour_ms, cell) DO UPDATE SET delta_sum = excluded.delta_sum,
        records = excluded.records, deltas = excluded.deltas"
    )
}

/// A commit's rollup rows, one statement per table, each reading a JSON
/// array of rows bound as `?1` (values as canonical decimal text), run on
/// the writer's own handle with the `COMMIT` ([`write_rows`]). `WHERE true`
/// lets `ON CONFLICT` follow a SELECT.
const STEPS_UPSERT: &str = "
    INSERT INTO rollup_steps (org_id, metric, at_ms, step)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]')
    FROM json_each(?1) WHERE true
    ON CONFLICT (org_id, metric, at_ms) DO UPDATE SET step = excluded.step";
const HOURS_UPSERT: &str = "
    INSERT INTO rollup_hours (org_id, metric, hour_ms, delta_sum, records, level_step, level_moment, level_open,
                              level_peak, level_last_at_ms)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'),
           json_extract(value, '$[9]')
    FROM json_each(?1) WHERE true
    ON CONFLICT (org_id, metric, hour_ms) DO UPDATE SET delta_sum = excluded.delta_sum, records = excluded.records,
        level_step = excluded.level_step, level_moment = excluded.level_moment, level_open = excluded.level_open,
        level_peak = excluded.level_peak, level_last_at_ms = excluded.level_last_at_ms";
const MONTHS_UPSERT: &str = "
    INSERT INTO rollup_months (org_id, metric, month_ms, level_step, delta_sum, records, level_moment)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]')
    FROM json_each(?1) WHERE true
    ON CONFLICT (org_id, metric, month_ms) DO UPDATE SET level_step = excluded.level_step,
        delta_sum = excluded.delta_sum, records = excluded.records, level_moment = excluded.level_moment";
const RUNS_UPSERT: &str = "
    INSERT INTO rollup_runs (org_id, subject, started_ms, ended_ms, length_ms)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]')
    FROM json_each(?1) WHERE true
    ON CONFLICT (org_id, subject, started_ms) DO UPDATE SET ended_ms = excluded.ended_ms,
        length_ms = excluded.length_ms";
static GROUP_HOURS_UPSERT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| group_hours_upsert(LIVE.group_hours));
/// A step, month or hour that became empty, and a run no longer there.
const STEP_DELETE: &str = "DELETE FROM rollup_steps WHERE org_id = ?1 AND metric = ?2 AND at_ms = ?3";
const MONTH_DELETE: &str = "DELETE FROM rollup_months WHERE org_id = ?1 AND metric = ?2 AND month_ms = ?3";
const HOUR_DELETE: &str = "DELETE FROM rollup_hours WHERE org_id = ?1 AND metric = ?2 AND hour_ms = ?3";
const RUN_DELETE: &str = "DELETE FROM rollup_runs WHERE org_id = ?1 AND subject = ?2 AND started_ms = ?3";

/// The level records around written instants (`RollupTx::neighbourhoods`),
/// grouped by (subject, instant, quantity); the second form by attributes too.
static NEIGHBOURHOODS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let text = "WITH k AS (
                 SELECT json_extract(value, '$[0]') AS org_id, json_extract(value, '$[1]') AS metric,
                        json_extract(value, '$[2]') AS subject, json_extract(value, '$[3]') AS at_ms
                 FROM json_each(?1)
             ), b AS (
                 SELECT k.org_id, k.metric, k.subject,
                        COALESCE((SELECT r.at_ms FROM usage_records r
                                  WHERE r.org_id = k.org_id AND r.metric = k.metric AND r.subject = k.subject
                                        AND r.at_ms < k.at_ms AND r.kind = 'level'
                                  ORDER BY r.at_ms DESC LIMIT 1), k.at_ms) AS lo,
                        COALESCE((SELECT r.at_ms FROM usage_records r
                                  WHERE r.org_id = k.org_id AND r.metric = k.metric AND r.subject = k.subject
                                        AND r.at_ms > k.at_ms AND r.kind = 'level'
                                  ORDER BY r.at_ms LIMIT 1), k.at_ms) AS hi
                 FROM k
             ), i AS (
                 SELECT org_id, metric, subject, lo AS at_ms FROM b
                 UNION SELECT org_id, metric, subject, at_ms FROM k
                 UNION SELECT org_id, metric, subject, hi FROM b
             )
             SELECT r.org_id, r.metric, r.subject, r.at_ms, r.quantity, {attributes} AS attributes, COUNT(*) AS n
             FROM i JOIN usage_records r
               ON r.org_id = i.org_id AND r.metric = i.metric AND r.subject = i.subject AND r.at_ms = i.at_ms
             WHERE r.kind = 'level'
             GROUP BY r.org_id, r.metric, r.subject, r.at_ms, r.quantity{group}";
    super::rollup::neighbourhood_forms(text, ("NULL", "r.attributes"))
});

/// The statement of a [`json_rows`] read: each row's `row` expression
/// over `from`, gathered into one JSON array.
fn json_rows_query(row: &str, from: &str) -> String {
    format!("SELECT json_group_array(json(r)) AS rows FROM (SELECT {row} AS r FROM {from})")
}

/// The rows of a range read (`FROM …`, binding ?1 org, ?2 metric, ?3 and
/// ?4 the range, ?5 a group key) as one JSON array built by SQLite:
/// sqlx's SQLite driver hands each row over from its worker thread on its
/// own (~6 µs a row under load, BENCHMARKS.md), and a usage query's hours
/// are hundreds of rows. Decimals stay canonical text inside the JSON.
async fn json_rows<T: serde::de::DeserializeOwned>(
    conn: &mut SqliteConnection,
    row: &str,
    from: &str,
    (series, range, key): (&SeriesKey, Range, Option<&str>),
) -> Result<Vec<T>, StoreError> {
    let text = json_rows_query(row, from);
    let mut query =
        sqlx::query(&text).bind(&series.org_id).bind(&series.metric).bind(range.from_ms).bind(range.to_ms);
    if let Some(key) = key {
        query = query.bind(key);
    }
    let json: String = query.fetch_one(&mut *conn).await?.try_get("rows")?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("rollup rows: {e}")))
}

fn decimal(text: &str) -> Result<Decimal, StoreError> {
    meterd_units::parse_quantity(text)
        .map_err(|e| StoreError::Corrupt(format!("stored decimal {text:?}: {e}")))
}

/// Table names, so a check can rebuild into temporary copies.
#[derive(Clone, Copy)]
struct Tables {
    hours: &'static str,
    steps: &'static str,
    months: &'static str,
    runs: &'static str,
    group_hours: &'static str,
}

const LIVE: Tables = Tables {
    hours: "rollup_hours",
    steps: "rollup_steps",
    months: "rollup_months",
    runs: "rollup_runs",
    group_hours: "rollup_group_hours",
};
const CHECK: Tables = Tables {
    hours: "check_hours",
    steps: "check_steps",
    months: "check_months",
    runs: "check_runs",
    group_hours: "check_group_hours",
};

async fn write_runs(
    conn: &mut SqliteConnection,
    table: &str,
    rows: &[(String, Run)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (org_id, subject, started_ms, ended_ms, length_ms) "
        ));
        insert.push_values(chunk, |mut b, (org, run)| {
            b.push_bind(org)
                .push_bind(&run.subject)
                .push_bind(run.started_ms)
                .push_bind(run.ended_ms)
                .push_bind(run.ended_ms.map(|e| e - run.started_ms));
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_hours(
    conn: &mut SqliteConnection,
    table: &str,
    rows: &[((SeriesKey, i64), Hour)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (org_id, metric, hour_ms, delta_sum, records, level_step, level_moment, level_open, level_peak, level_last_at_ms) "
        ));
        insert.push_values(chunk, |mut b, ((s, h), hour)| {
            b.push_bind(&s.org_id)
                .push_bind(&s.metric)
                .push_bind(*h)
                .push_bind(text(hour.delta_sum))
                .push_bind(hour.records)
                .push_bind(text(hour.level_step))
                .push_bind(text(hour.level_moment))
                .push_bind(text(hour.level_open))
                .push_bind(hour.level_peak.map(text))
                .push_bind(hour.level_last_at);
        });
        insert.push(
            " ON CONFLICT (org_id, metric, hour_ms) DO UPDATE SET delta_sum = excluded.delta_sum, records = excluded.records,
              level_step = excluded.level_step, level_moment = excluded.level_moment, level_open = excluded.level_open,
              level_peak = excluded.level_peak, level_last_at_ms = excluded.level_last_at_ms",
        );
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_months(
    conn: &mut SqliteConnection,
    table: &str,
    rows: &[((SeriesKey, i64), Month)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} (org_id, metric, month_ms, level_step, delta_sum, records, level_moment) "
        ));
        insert.push_values(chunk, |mut b, ((s, m), month)| {
            b.push_bind(&s.org_id)
                .push_bind(&s.metric)
                .push_bind(*m)
                .push_bind(text(month.level_step))
                .push_bind(text(month.delta_sum))
                .push_bind(month.records)
                .push_bind(text(month.level_moment));
        });
        insert.push(
            " ON CONFLICT (org_id, metric, month_ms) DO UPDATE SET level_step = excluded.level_step,
              delta_sum = excluded.delta_sum, records = excluded.records, level_moment = excluded.level_moment",
        );
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes (series, time, value) rows of a steps table, replacing what is
/// there.
async fn write_values(
    conn: &mut SqliteConnection,
    table: &str,
    time: &str,
    value: &str,
    rows: &[((SeriesKey, i64), Decimal)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO {table} (org_id, metric, {time}, {value}) "));
        insert.push_values(chunk, |mut b, ((s, t), v)| {
            b.push_bind(&s.org_id).push_bind(&s.metric).push_bind(*t).push_bind(text(*v));
        });
        insert
            .push(format!(" ON CONFLICT (org_id, metric, {time}) DO UPDATE SET {value} = excluded.{value}"));
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait]
impl RollupTx for SqliteConnection {
    type Engine = Sqlite;

    fn conn(&mut self) -> &mut SqliteConnection {
        self
    }

    // Range reads as one JSON row (see `json_rows`).

    async fn hours_in(&mut self, series: &SeriesKey, range: Range) -> Result<Vec<(i64, Hour)>, StoreError> {
        type Row = (i64, String, i64, String, String, String, Option<String>, Option<i64>);
        let rows: Vec<Row> = json_rows(
            self,
            "json_array(hour_ms, delta_sum, records, level_step, level_moment, level_open, level_peak,
                        level_last_at_ms)",
            "rollup_hours WHERE org_id = ?1 AND metric = ?2 AND hour_ms >= ?3 AND hour_ms < ?4 ORDER BY hour_ms",
            (series, range, None),
        )
        .await?;
        rows.into_iter()
            .map(|(at, delta_sum, records, step, moment, open, peak, last_at)| {
                let hour = Hour {
                    delta_sum: decimal(&delta_sum)?,
                    records,
                    level_step: decimal(&step)?,
                    level_moment: decimal(&moment)?,
                    level_open: decimal(&open)?,
                    level_peak: peak.as_deref().map(decimal).transpose()?,
                    level_last_at: last_at,
                };
                Ok((at, hour))
            })
            .collect()
    }

    async fn steps_in(
        &mut self,
        series: &SeriesKey,
        range: Range,
    ) -> Result<Vec<(i64, Decimal)>, StoreError> {
        let json: String = sqlx::query(STEPS_IN.as_str())
            .bind(&series.org_id)
            .bind(&series.metric)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .fetch_one(&mut *self)
            .await?
            .try_get("rows")?;
        steps(&json)
    }

    async fn group_hours_in(
        &mut self,
        series: &SeriesKey,
        key: &str,
        range: Range,
    ) -> Result<Vec<(String, i64, GroupHour)>, StoreError> {
        let rows: Vec<(String, i64, String, i64, i64)> = json_rows(
            self,
            "json_array(cell, hour_ms, delta_sum, records, deltas)",
            "rollup_group_hours WHERE org_id = ?1 AND metric = ?2 AND hour_ms >= ?3 AND hour_ms < ?4
             AND group_key = ?5",
            (series, range, Some(key)),
        )
        .await?;
        rows.into_iter()
            .map(|(cell, at, delta_sum, records, deltas)| {
                Ok((cell, at, GroupHour { delta_sum: decimal(&delta_sum)?, records, deltas }))
            })
            .collect()
    }

    async fn load_rows(&mut self, keys: &RowKeys) -> Result<StoredRows, StoreError> {
        let mut query = sqlx::query(LOAD_ROWS_JSON.as_str());
        for param in load_rows_params(keys) {
            query = query.bind(param);
        }
        let json: String = query.fetch_one(&mut *self).await?.try_get(0)?;
        stored_rows(&json)
    }

    async fn lock_subjects(&mut self, _subjects: &[SubjectKey]) -> Result<(), StoreError> {
        // One writer connection: transactions are serialized already.
        Ok(())
    }

    async fn neighbourhoods(
        &mut self,
        keys: &[(SubjectKey, i64)],
        with_attributes: bool,
    ) -> Result<Vec<LevelRow>, StoreError> {
        let list: Vec<(&str, &str, &str, i64)> = keys
            .iter()
            .map(|((s, subject), t)| (s.org_id.as_str(), s.metric.as_str(), subject.as_str(), *t))
            .collect();
        let rows = sqlx::query(NEIGHBOURHOODS[usize::from(with_attributes)].as_str())
            .bind(json(&list))
            .fetch_all(&mut *self)
            .await?;
        rows.iter().map(rows::level_row).collect()
    }

    async fn subject_levels(
        &mut self,
        subjects: &[(SubjectKey, i64)],
    ) -> Result<Vec<(SubjectKey, i64, Decimal)>, StoreError> {
        let list: Vec<(&str, &str, &str, i64)> = subjects
            .iter()
            .map(|((s, subject), from)| (s.org_id.as_str(), s.metric.as_str(), subject.as_str(), *from))
            .collect();
        let rows = sqlx::query(
            "SELECT DISTINCT r.org_id, r.metric, r.subject, r.at_ms, r.quantity
             FROM json_each(?1) AS k CROSS JOIN usage_records r
               ON r.org_id = json_extract(k.value, '$[0]') AND r.metric = json_extract(k.value, '$[1]')
              AND r.subject = json_extract(k.value, '$[2]') AND r.at_ms >= json_extract(k.value, '$[3]')
             WHERE r.kind = 'level'",
        )
        .bind(json(&list))
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(rows::subject_level).collect()
    }

    async fn stored_runs(&mut self, subjects: &[(String, String)]) -> Result<Vec<(String, Run)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.* FROM json_each(?1) AS k CROSS JOIN rollup_runs r
               ON r.org_id = json_extract(k.value, '$[0]') AND r.subject = json_extract(k.value, '$[1]')",
        )
        .bind(json(&subjects))
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(rows::run).collect()
    }

    async fn steps_after(
        &mut self,
        hours_from_ms: i64,
        after_ms: i64,
    ) -> Result<Vec<(SeriesKey, i64, Decimal)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.org_id, s.metric, s.at_ms, s.step
             FROM (SELECT DISTINCT org_id, metric FROM rollup_hours WHERE hour_ms >= ?1) AS k
             CROSS JOIN rollup_steps s ON s.org_id = k.org_id AND s.metric = k.metric AND s.at_ms > ?2
             ORDER BY s.org_id, s.metric, s.at_ms",
        )
        .bind(hours_from_ms)
        .bind(after_ms)
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(|row| Ok((rows::series(row)?, row.try_get("at_ms")?, row.decimal("step")?))).collect()
    }

    async fn level_before(&mut self, series: &SeriesKey, at_ms: i64) -> Result<Decimal, StoreError> {
        let month = month_containing(at_ms).from_ms;
        let hour = hour_of(at_ms);
        let rows = sqlx::query(
            "SELECT level_step AS v FROM rollup_months WHERE org_id = ?1 AND metric = ?2 AND month_ms < ?3
             UNION ALL
             SELECT level_step FROM rollup_hours WHERE org_id = ?1 AND metric = ?2 AND hour_ms >= ?3 AND hour_ms < ?4
             UNION ALL
             SELECT step FROM rollup_steps WHERE org_id = ?1 AND metric = ?2 AND at_ms >= ?4 AND at_ms < ?5",
        )
        .bind(&series.org_id)
        .bind(&series.metric)
        .bind(month)
        .bind(hour)
        .bind(at_ms)
        .fetch_all(&mut *self)
        .await?;
        let mut level = Decimal::ZERO;
        for row in &rows {
            level = level
                .checked_add(row.decimal("v")?)
                .ok_or_else(|| StoreError::Corrupt("level overflows".to_owned()))?;
        }
        Ok(level)
    }
}

/// A run as [`RUNS_UPSERT`] reads it: org, subject, start, end, length.
type RunRow<'a> = (&'a str, &'a str, i64, Option<i64>, Option<i64>);

/// Writes a transaction's rollup changes (`rollup::RowsToWrite`) on the
/// writer's own handle, whose lock the `COMMIT` that follows shares: a
/// commit's rollup write takes no round trip to sqlx's worker of its own.
/// Steps, months and group hours are the stored row plus the change.
pub(super) fn write_rows(direct: &mut Direct<'_>, rows: &RowsToWrite) -> Result<(), StoreError> {
    let RowsToWrite { stored, write } = rows;
    let corrupt = |e: meterd_units::QuantityError| StoreError::Corrupt(format!("rollup sum: {e}"));
    // Steps and months: what is stored plus the changes; a row that
    // becomes zero is deleted (rare: a step corrected back to nothing).
    let (mut steps, mut zero_steps) = (Vec::new(), Vec::new());
    for (key, change) in &write.steps {
        let was = stored.steps.get(key).copied().unwrap_or(Decimal::ZERO);
        let now =
            was.checked_add(*change).ok_or(meterd_units::QuantityError::Overflow("step")).map_err(corrupt)?;
        if now.is_zero() {
            zero_steps.push(key);
        } else {
            steps.push((key.0.org_id.as_str(), key.0.metric.as_str(), key.1, text(now)));
        }
    }
    let (mut months, mut zero_months) = (Vec::new(), Vec::new());
    for (key, change) in &write.months {
        let mut month = stored.months.get(key).cloned().unwrap_or_default();
        month.add(change).map_err(corrupt)?;
        if month.is_zero() {
            zero_months.push(key);
        } else {
            months.push((
                key.0.org_id.as_str(),
                key.0.metric.as_str(),
                key.1,
                text(month.level_step),
                text(month.delta_sum),
                month.records,
                text(month.level_moment),
            ));
        }
    }
    let hours: Vec<serde_json::Value> = write
        .hours
        .iter()
        .map(|((s, h), hour)| {
            serde_json::json!([
                s.org_id,
                s.metric,
                h,
                text(hour.delta_sum),
                hour.records,
                text(hour.level_step),
                text(hour.level_moment),
                text(hour.level_open),
                hour.level_peak.map(text),
                hour.level_last_at
            ])
        })
        .collect();
    let runs: Vec<RunRow<'_>> = write
        .runs_added
        .iter()
        .map(|(org, r)| {
            (org.as_str(), r.subject.as_str(), r.started_ms, r.ended_ms, r.ended_ms.map(|e| e - r.started_ms))
        })
        .collect();
    let mut group_hours = Vec::with_capacity(write.group_hours.len());
    for (key, change) in &write.group_hours {
        let mut group = stored.group_hours.get(key).copied().unwrap_or_default();
        group.add(change).map_err(corrupt)?;
        group_hours.push((key, group));
    }
    // Each table's rows as the JSON its statement reads; none, no statement.
    let upserts = [
        (STEPS_UPSERT, (!steps.is_empty()).then(|| json(&steps))),
        (HOURS_UPSERT, (!hours.is_empty()).then(|| json(&hours))),
        (MONTHS_UPSERT, (!months.is_empty()).then(|| json(&months))),
        (RUNS_UPSERT, (!runs.is_empty()).then(|| json(&runs))),
        (
            GROUP_HOURS_UPSERT.as_str(),
            (!group_hours.is_empty()).then(|| group_rows_json(group_hours.iter().map(|(k, g)| (*k, g)))),
        ),
    ];
    for (statement, rows) in &upserts {
        if let Some(rows) = rows {
            direct.prepare(statement)?.insert(&[rows.as_str().into()])?;
        }
    }
    let empty_hours: Vec<&(SeriesKey, i64)> = write.hours_removed.iter().collect();
    for (statement, keys) in
        [(STEP_DELETE, &zero_steps), (MONTH_DELETE, &zero_months), (HOUR_DELETE, &empty_hours)]
    {
        for (series, t) in keys.iter().copied() {
            direct.prepare(statement)?.insert(&[
                series.org_id.as_str().into(),
                series.metric.as_str().into(),
                (*t).into(),
            ])?;
        }
    }
    // A run that ends is removed open and added ended under one key:
    // the insert replaced it, so only runs no longer there are deleted.
    let replaced: HashSet<(&str, &str, i64)> = write
        .runs_added
        .iter()
        .map(|(org, run)| (org.as_str(), run.subject.as_str(), run.started_ms))
        .collect();
    let gone = write
        .runs_removed
        .iter()
        .filter(|(org, run)| !replaced.contains(&(org.as_str(), run.subject.as_str(), run.started_ms)));
    for (org, run) in gone {
        direct.prepare(RUN_DELETE)?.insert(&[
            org.as_str().into(),
            run.subject.as_str().into(),
            run.started_ms.into(),
        ])?;
    }
    Ok(())
}

async fn write_output(
    conn: &mut SqliteConnection,
    tables: Tables,
    out: FoldOutput,
) -> Result<(), StoreError> {
    let hours: Vec<((SeriesKey, i64), Hour)> = out.hours.into_iter().map(|(s, h, x)| ((s, h), x)).collect();
    write_hours(conn, tables.hours, &hours).await?;
    let steps: Vec<((SeriesKey, i64), Decimal)> =
        out.steps.into_iter().map(|(s, t, v)| ((s, t), v)).collect();
    write_values(conn, tables.steps, "at_ms", "step", &steps).await?;
    let months: Vec<((SeriesKey, i64), Month)> =
        out.months.into_iter().map(|(s, m, v)| ((s, m), v)).collect();
    write_months(conn, tables.months, &months).await?;
    write_runs(conn, tables.runs, &out.runs).await?;
    if !out.group_hours.is_empty() {
        sqlx::query(&group_hours_upsert(tables.group_hours))
            .bind(group_rows_json(out.group_hours.iter().map(|(k, g)| (k, g))))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Records read page by page (keyset on the index order) into `tables`.
struct Rebuild<'a> {
    conn: &'a mut SqliteConnection,
    tables: Tables,
    after: (String, String, i64, i64),
    /// Attributes are read (and parsed) only when keys are declared.
    attributes: bool,
}

#[async_trait]
impl RebuildTx for Rebuild<'_> {
    async fn next_records(&mut self) -> Result<Vec<RebuildRow>, StoreError> {
        let attributes = if self.attributes { "attributes" } else { "'{}' AS attributes" };
        let rows = sqlx::query(&format!(
            "SELECT id, org_id, metric, subject, kind, quantity, at_ms, {attributes} FROM usage_records
             WHERE (org_id, metric, at_ms, id) > (?1, ?2, ?3, ?4)
             ORDER BY org_id, metric, at_ms, id LIMIT ?5"
        ))
        .bind(&self.after.0)
        .bind(&self.after.1)
        .bind(self.after.2)
        .bind(self.after.3)
        .bind(REBUILD_PAGE as i64)
        .fetch_all(&mut *self.conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = rows::rebuild_row(row)?;
            self.after = (record.org_id.clone(), record.metric.clone(), record.at_ms, row.try_get("id")?);
            out.push(record);
        }
        Ok(out)
    }

    async fn write_rows(&mut self, out: FoldOutput) -> Result<(), StoreError> {
        write_output(self.conn, self.tables, out).await
    }
}

/// Recomputes `tables` (empty) from every raw record; returns how many
/// records were read.
async fn fold_into(
    conn: &mut SqliteConnection,
    tables: Tables,
    group_by: &[String],
) -> Result<u64, StoreError> {
    let start = (String::new(), String::new(), i64::MIN, i64::MIN);
    let mut rebuild = Rebuild { conn, tables, after: start, attributes: !group_by.is_empty() };
    fold_records(&mut rebuild, group_by).await
}

/// Whether this database's rollups were built, with the group keys
/// `group_by` (a database migrated from before rollups has records but
/// none; one built with other keys has the wrong group hours).
pub(super) async fn built(conn: &mut SqliteConnection, group_by: &[String]) -> Result<bool, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(build_state::READ).fetch_all(&mut *conn).await?;
    Ok(build_state::built(&rows, group_by))
}

/// Replaces the rollups by a recomputation from the raw records; `tx` is
/// the transaction it happens in.
pub(super) async fn rebuild(tx: &mut SqliteConnection, group_by: &[String]) -> Result<u64, StoreError> {
    for table in [LIVE.hours, LIVE.steps, LIVE.months, LIVE.runs, LIVE.group_hours] {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
    }
    let records = fold_into(tx, LIVE, group_by).await?;
    for (key, value) in build_state::rows(records, group_by) {
        sqlx::query(build_state::WRITE).bind(key).bind(value).execute(&mut *tx).await?;
    }
    Ok(records)
}

/// Recomputes the rollups into temporary tables and compares them with the
/// stored ones; writes nothing else.
pub(super) async fn check(
    conn: &mut SqliteConnection,
    examples: usize,
    group_by: &[String],
) -> Result<RollupCheck, StoreError> {
    for (table, time, columns) in [
        (
            CHECK.hours,
            "hour_ms",
            "delta_sum TEXT, records INTEGER, level_step TEXT, level_moment TEXT, level_open TEXT, level_peak TEXT, level_last_at_ms INTEGER",
        ),
        (CHECK.steps, "at_ms", "step TEXT"),
        (CHECK.months, "month_ms", "level_step TEXT, delta_sum TEXT, records INTEGER, level_moment TEXT"),
        (CHECK.runs, "started_ms", "ended_ms INTEGER, length_ms INTEGER"),
    ] {
        let second = if table == CHECK.runs { "subject" } else { "metric" };
        sqlx::query(&format!("DROP TABLE IF EXISTS temp.{table}")).execute(&mut *conn).await?;
        sqlx::query(&format!(
            "CREATE TEMP TABLE {table} (org_id TEXT, {second} TEXT, {time} INTEGER, {columns}, PRIMARY KEY (org_id, {second}, {time}))"
        ))
        .execute(&mut *conn)
        .await?;
    }
    // The live table's columns in its order, so that EXCEPT compares rows.
    sqlx::query(&format!("DROP TABLE IF EXISTS temp.{}", CHECK.group_hours)).execute(&mut *conn).await?;
    sqlx::query(&format!(
        "CREATE TEMP TABLE {} (org_id TEXT, metric TEXT, group_key TEXT, hour_ms INTEGER, cell TEXT, delta_sum TEXT,
         records INTEGER, deltas INTEGER, PRIMARY KEY (org_id, metric, group_key, hour_ms, cell))",
        CHECK.group_hours
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    // A read transaction: the records and rollups compared are one snapshot.
    let result = async {
        let records = fold_into(conn, CHECK, group_by).await?;
        let mut report = RollupCheck { records, ..RollupCheck::default() };
        for (name, live, check, time, values) in [
            ("hours", LIVE.hours, CHECK.hours, "hour_ms", "delta_sum, records, level_step, level_moment, level_open, level_peak, level_last_at_ms"),
            ("steps", LIVE.steps, CHECK.steps, "at_ms", "step"),
            ("months", LIVE.months, CHECK.months, "month_ms", "level_step, delta_sum, records, level_moment"),
            ("runs", LIVE.runs, CHECK.runs, "started_ms", "ended_ms, length_ms"),
            ("group_hours", LIVE.group_hours, CHECK.group_hours, "hour_ms", "group_key, cell, delta_sum, records, deltas"),
        ] {
            let second = if name == "runs" { "subject" } else { "metric" };
            let stored: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {live}")).fetch_one(&mut *conn).await?;
            // Rows present on one side only, or with other values.
            let diff: Vec<DiffRow> = sqlx::query_as(&format!(
                "SELECT org_id, {second}, {time}, json_array({values}) AS v, 'stored' AS side FROM (SELECT * FROM {live} EXCEPT SELECT * FROM {check})
                 UNION ALL
                 SELECT org_id, {second}, {time}, json_array({values}), 'computed' FROM (SELECT * FROM {check} EXCEPT SELECT * FROM {live})
                 ORDER BY 1, 2, 3, 5 DESC"
            ))
            .fetch_all(&mut *conn)
            .await?;
            report.add_table(name, stored, &diff, examples);
        }
        Ok::<_, StoreError>(report)
    }
    .await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    for table in [CHECK.hours, CHECK.steps, CHECK.months, CHECK.runs, CHECK.group_hours] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS temp.{table}")).execute(&mut *conn).await;
    }
    result
}
