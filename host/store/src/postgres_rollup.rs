//! The PostgreSQL engine's rollup statements. Sums of steps and months are
//! additive upserts (replicas may add to one row at once); hours are read
//! `FOR UPDATE` and written back; a subject's level writers are
//! serialized by a transaction-scoped advisory lock. Key lists go in as
//! arrays, in key order.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::StoreError;
use super::rollup::{
    DiffRow, LevelRow, REBUILD_PAGE, RebuildRow, RebuildTx, RollupCheck, RollupTx, RollupWrite, RowKeys,
    StoredRows, SubjectKey, build_state, fold_records,
};
use super::rows::{self, StoredRow as _};
use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::fold::FoldOutput;
use crate::meter::rollup::groups::{GroupHour, GroupHourKey};
use crate::meter::rollup::query::{ReadPlan, RollupInput};
use crate::meter::rollup::{Hour, Month, SeriesKey, hour_of};
use crate::plans::standing::Run;

const ROWS_PER_WRITE: usize = 2_000;
/// The rollup tables, as `rollup_{name}` (a check builds `check_{name}`).
const TABLES: [&str; 5] = ["hours", "steps", "months", "runs", "group_hours"];
/// The advisory lock a rebuild holds (replicas starting together back-fill
/// once).
const REBUILD_LOCK: i64 = 0x6d65_7465_7264_0001;

/// (orgs, metrics, times) columns of a key list.
fn columns<'a>(keys: impl Iterator<Item = &'a (SeriesKey, i64)>) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (s, t) in keys {
        out.0.push(s.org_id.as_str());
        out.1.push(s.metric.as_str());
        out.2.push(*t);
    }
    out
}

/// (orgs, metrics, subjects, times) columns of a subject key list.
fn subject_columns(keys: &[(SubjectKey, i64)]) -> (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) {
    let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for ((s, subject), t) in keys {
        cols.0.push(&s.org_id);
        cols.1.push(&s.metric);
        cols.2.push(subject);
        cols.3.push(*t);
    }
    cols
}

/// Adds to (series, time) values, deleting those that become zero.
async fn add_values(
    conn: &mut PgConnection,
    table: &str,
    time: &str,
    value: &str,
    rows: &[((SeriesKey, i64), Decimal)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (orgs, metrics, times) = columns(rows.iter().map(|(k, _)| k));
    let values: Vec<Decimal> = rows.iter().map(|(_, v)| *v).collect();
    sqlx::query(&format!(
        "INSERT INTO {table} (org_id, metric, {time}, {value})
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::numeric[])
         ON CONFLICT (org_id, metric, {time}) DO UPDATE SET {value} = {table}.{value} + excluded.{value}"
    ))
    .bind(&orgs)
    .bind(&metrics)
    .bind(&times)
    .bind(&values)
    .execute(&mut *conn)
    .await?;
    delete_keys(conn, (table, time), rows.iter().map(|(k, _)| k), &format!("AND t.{value} = 0")).await?;
    Ok(())
}

async fn write_runs(conn: &mut PgConnection, table: &str, rows: &[(String, Run)]) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Postgres>::new(format!(
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

async fn add_steps(conn: &mut PgConnection, rows: &[((SeriesKey, i64), Decimal)]) -> Result<(), StoreError> {
    add_values(conn, "rollup_steps", "at_ms", "step", rows).await
}

async fn load_hours(
    conn: &mut PgConnection,
    keys: &[(SeriesKey, i64)],
) -> Result<BTreeMap<(SeriesKey, i64), Hour>, StoreError> {
    let (orgs, metrics, times) = columns(keys.iter());
    // Rows must exist to be locked: another replica may be adding the
    // same new hour.
    sqlx::query(
        "INSERT INTO rollup_hours (org_id, metric, hour_ms, delta_sum, records, level_step, level_moment, level_open)
         SELECT k.org_id, k.metric, k.hour_ms, 0, 0, 0, 0, 0
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(org_id, metric, hour_ms)
         ON CONFLICT (org_id, metric, hour_ms) DO NOTHING",
    )
    .bind(&orgs)
    .bind(&metrics)
    .bind(&times)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT h.* FROM rollup_hours h
         JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS k(org_id, metric, hour_ms)
           ON h.org_id = k.org_id AND h.metric = k.metric AND h.hour_ms = k.hour_ms
         ORDER BY h.org_id, h.metric, h.hour_ms
         FOR UPDATE OF h",
    )
    .bind(&orgs)
    .bind(&metrics)
    .bind(&times)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|row| Ok((rows::series_at(row, "hour_ms")?, rows::hour(row)?))).collect()
}

async fn save_hours(conn: &mut PgConnection, rows: &[((SeriesKey, i64), Hour)]) -> Result<(), StoreError> {
    write_hours(conn, "rollup_hours", rows).await
}

/// Deletes the rows of `table` at these (series, `time`) keys for which
/// `condition` (on `t`, e.g. `AND t.step = 0`) holds.
async fn delete_keys<'k>(
    conn: &mut PgConnection,
    (table, time): (&str, &str),
    keys: impl Iterator<Item = &'k (SeriesKey, i64)>,
    condition: &str,
) -> Result<(), StoreError> {
    let (orgs, metrics, times) = columns(keys);
    if orgs.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "DELETE FROM {table} t USING unnest($1::text[], $2::text[], $3::bigint[]) AS k(org_id, metric, at)
         WHERE t.org_id = k.org_id AND t.metric = k.metric AND t.{time} = k.at {condition}"
    ))
    .bind(&orgs)
    .bind(&metrics)
    .bind(&times)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes hours left with no records and no steps (see
/// `RollupWrite::hours_removed`), locked by `load_hours` already.
async fn remove_hours(conn: &mut PgConnection, keys: &[(SeriesKey, i64)]) -> Result<(), StoreError> {
    delete_keys(conn, ("rollup_hours", "hour_ms"), keys.iter(), "").await
}

async fn add_months(conn: &mut PgConnection, rows: &[((SeriesKey, i64), Month)]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (orgs, metrics, times) = columns(rows.iter().map(|(k, _)| k));
    let field = |f: fn(&Month) -> Decimal| -> Vec<Decimal> { rows.iter().map(|(_, m)| f(m)).collect() };
    let records: Vec<i64> = rows.iter().map(|(_, m)| m.records).collect();
    // Additive: replicas may add to one month at once.
    sqlx::query(
        "INSERT INTO rollup_months (org_id, metric, month_ms, level_step, delta_sum, records, level_moment)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::numeric[], $5::numeric[], $6::bigint[], $7::numeric[])
         ON CONFLICT (org_id, metric, month_ms) DO UPDATE SET
             level_step = rollup_months.level_step + excluded.level_step,
             delta_sum = rollup_months.delta_sum + excluded.delta_sum,
             records = rollup_months.records + excluded.records,
             level_moment = rollup_months.level_moment + excluded.level_moment",
    )
    .bind(&orgs)
    .bind(&metrics)
    .bind(&times)
    .bind(field(|m| m.level_step))
    .bind(field(|m| m.delta_sum))
    .bind(&records)
    .bind(field(|m| m.level_moment))
    .execute(&mut *conn)
    .await?;
    let zero = "AND t.level_step = 0 AND t.delta_sum = 0 AND t.records = 0 AND t.level_moment = 0";
    delete_keys(conn, ("rollup_months", "month_ms"), rows.iter().map(|(k, _)| k), zero).await
}

/// Adds group hours into `table` (additive: replicas may add to one row at
/// once; a rebuild writes each row once into an empty table). `rows` in
/// key order, so replicas lock rows in one order.
async fn add_group_hours(
    conn: &mut PgConnection,
    table: &str,
    rows: &[(GroupHourKey, GroupHour)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let texts =
            |f: fn(&(GroupHourKey, GroupHour)) -> &str| -> Vec<&str> { chunk.iter().map(f).collect() };
        let numbers =
            |f: fn(&(GroupHourKey, GroupHour)) -> i64| -> Vec<i64> { chunk.iter().map(f).collect() };
        let sums: Vec<Decimal> = chunk.iter().map(|(_, g)| g.delta_sum).collect();
        sqlx::query(&format!(
            "INSERT INTO {table} (org_id, metric, group_key, hour_ms, cell, delta_sum, records, deltas)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::numeric[],
                                  $7::bigint[], $8::bigint[])
             ON CONFLICT (org_id, metric, group_key, hour_ms, cell) DO UPDATE SET
                 delta_sum = {table}.delta_sum + excluded.delta_sum,
                 records = {table}.records + excluded.records,
                 deltas = {table}.deltas + excluded.deltas"
        ))
        .bind(texts(|((s, _, _, _), _)| &s.org_id))
        .bind(texts(|((s, _, _, _), _)| &s.metric))
        .bind(texts(|((_, key, _, _), _)| key))
        .bind(numbers(|((_, _, _, hour), _)| *hour))
        .bind(texts(|((_, _, cell, _), _)| cell))
        .bind(&sums)
        .bind(numbers(|(_, g)| g.records))
        .bind(numbers(|(_, g)| g.deltas))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn change_runs(
    conn: &mut PgConnection,
    removed: &[(String, Run)],
    added: &[(String, Run)],
) -> Result<(), StoreError> {
    if !removed.is_empty() {
        let orgs: Vec<&str> = removed.iter().map(|(o, _)| o.as_str()).collect();
        let subjects: Vec<&str> = removed.iter().map(|(_, r)| r.subject.as_str()).collect();
        let starts: Vec<i64> = removed.iter().map(|(_, r)| r.started_ms).collect();
        sqlx::query(
            "DELETE FROM rollup_runs r USING unnest($1::text[], $2::text[], $3::bigint[]) AS k(org_id, subject, started_ms)
             WHERE r.org_id = k.org_id AND r.subject = k.subject AND r.started_ms = k.started_ms",
        )
        .bind(&orgs)
        .bind(&subjects)
        .bind(&starts)
        .execute(&mut *conn)
        .await?;
    }
    write_runs(conn, "rollup_runs", added).await
}

/// The level records around written instants (`RollupTx::neighbourhoods`),
/// grouped by (subject, instant, quantity); the second form by attributes
/// too. One index probe per key and bound (LATERAL … OFFSET 0: see
/// `delivery_records`).
static NEIGHBOURHOODS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let text = "WITH k AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(org_id, metric, subject, at_ms)
             ), b AS (
                 SELECT k.org_id, k.metric, k.subject,
                        COALESCE((SELECT p.at_ms FROM usage_records p
                                  WHERE p.org_id = k.org_id AND p.metric = k.metric AND p.subject = k.subject
                                        AND p.at_ms < k.at_ms AND p.kind = 'level'
                                  ORDER BY p.at_ms DESC LIMIT 1), k.at_ms) AS lo,
                        COALESCE((SELECT n.at_ms FROM usage_records n
                                  WHERE n.org_id = k.org_id AND n.metric = k.metric AND n.subject = k.subject
                                        AND n.at_ms > k.at_ms AND n.kind = 'level'
                                  ORDER BY n.at_ms LIMIT 1), k.at_ms) AS hi
                 FROM k
             ), i AS (
                 SELECT org_id, metric, subject, lo AS at_ms FROM b
                 UNION SELECT org_id, metric, subject, at_ms FROM k
                 UNION SELECT org_id, metric, subject, hi FROM b
             )
             SELECT r.org_id, r.metric, r.subject, r.at_ms, r.quantity, r.attributes, r.n
             FROM i CROSS JOIN LATERAL (
                 SELECT org_id, metric, subject, at_ms, quantity, {attributes} AS attributes, COUNT(*) AS n
                 FROM usage_records r
                 WHERE r.org_id = i.org_id AND r.metric = i.metric AND r.subject = i.subject
                       AND r.at_ms = i.at_ms AND r.kind = 'level'
                 GROUP BY org_id, metric, subject, at_ms, quantity{group}
                 OFFSET 0
             ) r";
    super::rollup::neighbourhood_forms(text, ("NULL::text", "attributes::text"))
});

/// Writes a transaction's rollup changes (`rollup::RowsToWrite`). Steps, months
/// and group hours are additive upserts (replicas may add to one row at
/// once), so nothing stored is read for them.
pub(super) async fn write_rows(conn: &mut PgConnection, write: &RollupWrite) -> Result<(), StoreError> {
    add_steps(conn, &write.steps).await?;
    save_hours(conn, &write.hours).await?;
    remove_hours(conn, &write.hours_removed).await?;
    add_months(conn, &write.months).await?;
    add_group_hours(conn, "rollup_group_hours", &write.group_hours).await?;
    change_runs(conn, &write.runs_removed, &write.runs_added).await
}

#[async_trait]
impl RollupTx for PgConnection {
    type Engine = Postgres;

    fn conn(&mut self) -> &mut PgConnection {
        self
    }

    async fn load_rows(&mut self, keys: &RowKeys) -> Result<StoredRows, StoreError> {
        // Steps, months and group hours take additive upserts (replicas may
        // add to one row at once): nothing to read for them.
        Ok(StoredRows { hours: load_hours(self, &keys.hours).await?, ..StoredRows::default() })
    }

    async fn lock_subjects(&mut self, subjects: &[SubjectKey]) -> Result<(), StoreError> {
        let names: Vec<String> = subjects
            .iter()
            .map(|(s, subject)| format!("{}\u{1f}{}\u{1f}{subject}", s.org_id, s.metric))
            .collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(s, 0))
             FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n",
        )
        .bind(&names)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn neighbourhoods(
        &mut self,
        keys: &[(SubjectKey, i64)],
        with_attributes: bool,
    ) -> Result<Vec<LevelRow>, StoreError> {
        let cols = subject_columns(keys);
        let rows = sqlx::query(NEIGHBOURHOODS[usize::from(with_attributes)].as_str())
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .fetch_all(&mut *self)
            .await?;
        rows.iter().map(rows::level_row).collect()
    }

    async fn subject_levels(
        &mut self,
        subjects: &[(SubjectKey, i64)],
    ) -> Result<Vec<(SubjectKey, i64, Decimal)>, StoreError> {
        let cols = subject_columns(subjects);
        let rows = sqlx::query(
            "SELECT r.org_id, r.metric, r.subject, r.at_ms, r.quantity
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(org_id, metric, subject, from_ms)
             CROSS JOIN LATERAL (
                 SELECT DISTINCT r.org_id, r.metric, r.subject, r.at_ms, r.quantity FROM usage_records r
                 WHERE r.org_id = k.org_id AND r.metric = k.metric AND r.subject = k.subject
                       AND r.at_ms >= k.from_ms AND r.kind = 'level'
             ) r",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(rows::subject_level).collect()
    }

    async fn stored_runs(&mut self, subjects: &[(String, String)]) -> Result<Vec<(String, Run)>, StoreError> {
        let (orgs, names): (Vec<&str>, Vec<&str>) =
            subjects.iter().map(|(o, s)| (o.as_str(), s.as_str())).unzip();
        let rows = sqlx::query(
            "SELECT r.* FROM unnest($1::text[], $2::text[]) AS k(org_id, subject)
             JOIN rollup_runs r ON r.org_id = k.org_id AND r.subject = k.subject",
        )
        .bind(&orgs)
        .bind(&names)
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
             FROM (SELECT DISTINCT org_id, metric FROM rollup_hours WHERE hour_ms >= $1) AS k
             CROSS JOIN LATERAL (
                 SELECT * FROM rollup_steps s WHERE s.org_id = k.org_id AND s.metric = k.metric AND s.at_ms > $2
                 OFFSET 0
             ) s
             ORDER BY s.org_id, s.metric, s.at_ms",
        )
        .bind(hours_from_ms)
        .bind(after_ms)
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(|row| Ok((rows::series(row)?, row.try_get("at_ms")?, row.decimal("step")?))).collect()
    }

    async fn level_inputs(
        &mut self,
        org_id: &str,
        metrics: &[String],
        plan: &ReadPlan,
        from_ms: i64,
    ) -> Result<Vec<RollupInput>, StoreError> {
        let mut inputs: BTreeMap<String, RollupInput> =
            metrics.iter().map(|m| (m.clone(), RollupInput::default())).collect();
        let rows = sqlx::query(
            "SELECT m.metric,
                    COALESCE((SELECT SUM(level_step) FROM rollup_months
                              WHERE org_id = $1 AND metric = m.metric AND month_ms < $3), 0)
                  + COALESCE((SELECT SUM(level_step) FROM rollup_hours
                              WHERE org_id = $1 AND metric = m.metric AND hour_ms >= $3 AND hour_ms < $4), 0)
                  + COALESCE((SELECT SUM(step) FROM rollup_steps
                              WHERE org_id = $1 AND metric = m.metric AND at_ms >= $4 AND at_ms < $5), 0) AS level
             FROM unnest($2::text[]) AS m(metric)",
        )
        .bind(org_id)
        .bind(metrics)
        .bind(month_containing(from_ms).from_ms)
        .bind(hour_of(from_ms))
        .bind(from_ms)
        .fetch_all(&mut *self)
        .await?;
        for row in &rows {
            if let Some(input) = inputs.get_mut(&row.try_get::<String, _>("metric")?) {
                input.before = row.decimal("level")?;
            }
        }
        // Each part of the plan for every series at once.
        let of_metrics = |table: &str, time: &str| {
            format!(
                "SELECT * FROM {table} WHERE org_id = $1 AND metric = ANY($2) AND {time} >= $3 AND {time} < $4"
            )
        };
        for (ranges, table, time) in
            [(&plan.months, "rollup_months", "month_ms"), (&plan.hours, "rollup_hours", "hour_ms")]
        {
            for range in ranges.iter().copied() {
                for row in fetch_range(self, &of_metrics(table, time), org_id, metrics, range).await? {
                    let input = inputs.entry(row.try_get("metric")?).or_default();
                    let at: i64 = row.try_get(time)?;
                    match time {
                        "month_ms" => input.months.push((at, rows::month(&row)?)),
                        _ => input.hours.push((at, rows::hour(&row)?)),
                    }
                }
            }
        }
        for (range, ahead) in plan.raw.iter().map(|r| (*r, false)).chain(plan.ahead.map(|r| (r, true))) {
            for row in fetch_range(self, &of_metrics("rollup_steps", "at_ms"), org_id, metrics, range).await?
            {
                let metric: String = row.try_get("metric")?;
                let step = (row.try_get("at_ms")?, row.decimal("step")?);
                let input = inputs.entry(metric).or_default();
                if ahead { input.ahead.push(step) } else { input.steps.push(step) }
            }
        }
        Ok(metrics.iter().map(|m| inputs.remove(m).unwrap_or_default()).collect())
    }

    async fn level_before(&mut self, series: &SeriesKey, at_ms: i64) -> Result<Decimal, StoreError> {
        let level: Option<Decimal> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT SUM(level_step) FROM rollup_months WHERE org_id = $1 AND metric = $2 AND month_ms < $3), 0)
                  + COALESCE((SELECT SUM(level_step) FROM rollup_hours WHERE org_id = $1 AND metric = $2 AND hour_ms >= $3 AND hour_ms < $4), 0)
                  + COALESCE((SELECT SUM(step) FROM rollup_steps WHERE org_id = $1 AND metric = $2 AND at_ms >= $4 AND at_ms < $5), 0)",
        )
        .bind(&series.org_id)
        .bind(&series.metric)
        .bind(month_containing(at_ms).from_ms)
        .bind(hour_of(at_ms))
        .bind(at_ms)
        .fetch_one(&mut *self)
        .await?;
        Ok(level.unwrap_or(Decimal::ZERO))
    }
}

/// Rows of `text` (binding $1 org, $2 metrics, $3 and $4 a range).
async fn fetch_range(
    conn: &mut PgConnection,
    text: &str,
    org_id: &str,
    metrics: &[String],
    range: Range,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    Ok(sqlx::query(text)
        .bind(org_id)
        .bind(metrics)
        .bind(range.from_ms)
        .bind(range.to_ms)
        .fetch_all(conn)
        .await?)
}

/// Writes hours, replacing what is there.
async fn write_hours(
    conn: &mut PgConnection,
    table: &str,
    rows: &[((SeriesKey, i64), Hour)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO {table} (org_id, metric, hour_ms, delta_sum, records, level_step, level_moment, level_open, level_peak, level_last_at_ms) "
        ));
        insert.push_values(chunk, |mut b, ((s, h), hour)| {
            b.push_bind(&s.org_id)
                .push_bind(&s.metric)
                .push_bind(*h)
                .push_bind(hour.delta_sum)
                .push_bind(hour.records)
                .push_bind(hour.level_step)
                .push_bind(hour.level_moment)
                .push_bind(hour.level_open)
                .push_bind(hour.level_peak)
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

async fn write_values(
    conn: &mut PgConnection,
    table: &str,
    time: &str,
    value: &str,
    rows: &[((SeriesKey, i64), Decimal)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert =
            QueryBuilder::<Postgres>::new(format!("INSERT INTO {table} (org_id, metric, {time}, {value}) "));
        insert.push_values(chunk, |mut b, ((s, t), v)| {
            b.push_bind(&s.org_id).push_bind(&s.metric).push_bind(*t).push_bind(*v);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_months(
    conn: &mut PgConnection,
    table: &str,
    rows: &[(SeriesKey, i64, Month)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_WRITE) {
        let mut insert = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO {table} (org_id, metric, month_ms, level_step, delta_sum, records, level_moment) "
        ));
        insert.push_values(chunk, |mut b, (s, m, month)| {
            b.push_bind(&s.org_id)
                .push_bind(&s.metric)
                .push_bind(*m)
                .push_bind(month.level_step)
                .push_bind(month.delta_sum)
                .push_bind(month.records)
                .push_bind(month.level_moment);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_output(conn: &mut PgConnection, prefix: &str, out: FoldOutput) -> Result<(), StoreError> {
    let hours: Vec<((SeriesKey, i64), Hour)> = out.hours.into_iter().map(|(s, h, x)| ((s, h), x)).collect();
    write_hours(conn, &format!("{prefix}_hours"), &hours).await?;
    let steps: Vec<((SeriesKey, i64), Decimal)> =
        out.steps.into_iter().map(|(s, t, v)| ((s, t), v)).collect();
    write_values(conn, &format!("{prefix}_steps"), "at_ms", "step", &steps).await?;
    write_months(conn, &format!("{prefix}_months"), &out.months).await?;
    add_group_hours(conn, &format!("{prefix}_group_hours"), &out.group_hours).await?;
    write_runs(conn, &format!("{prefix}_runs"), &out.runs).await
}

/// Records read through a cursor into the `{prefix}_…` tables.
struct Rebuild<'a> {
    conn: &'a mut PgConnection,
    prefix: &'a str,
}

#[async_trait]
impl RebuildTx for Rebuild<'_> {
    async fn next_records(&mut self) -> Result<Vec<RebuildRow>, StoreError> {
        let rows = sqlx::query(&format!("FETCH {REBUILD_PAGE} FROM rollup_records"))
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter().map(rows::rebuild_row).collect()
    }

    async fn write_rows(&mut self, out: FoldOutput) -> Result<(), StoreError> {
        write_output(self.conn, self.prefix, out).await
    }
}

/// Recomputes the `{prefix}_…` tables (empty) from every raw record;
/// returns how many records were read.
async fn fold_into(conn: &mut PgConnection, prefix: &str, group_by: &[String]) -> Result<u64, StoreError> {
    // Attributes are read (and parsed) only when keys are declared.
    let attributes = if group_by.is_empty() { "'{}'" } else { "attributes::text" };
    sqlx::query(&format!(
        "DECLARE rollup_records NO SCROLL CURSOR FOR
         SELECT org_id, metric, subject, kind, quantity, at_ms, {attributes} AS attributes FROM usage_records
         ORDER BY org_id, metric, at_ms"
    ))
    .execute(&mut *conn)
    .await?;
    let read = fold_records(&mut Rebuild { conn: &mut *conn, prefix }, group_by).await?;
    sqlx::query("CLOSE rollup_records").execute(&mut *conn).await?;
    Ok(read)
}

/// Whether the rollups were ever built; waits for a rebuild another
/// replica is running (call in the transaction that may rebuild).
/// Replicas must declare the same `rollup_group_by`, or each start-up of
/// one rebuilds what the other built.
pub(super) async fn built(tx: &mut PgConnection, group_by: &[String]) -> Result<bool, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REBUILD_LOCK).execute(&mut *tx).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(build_state::READ).fetch_all(&mut *tx).await?;
    Ok(build_state::built(&rows, group_by))
}

/// Replaces the rollups by a recomputation from the raw records, in `tx`.
pub(super) async fn rebuild(tx: &mut PgConnection, group_by: &[String]) -> Result<u64, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REBUILD_LOCK).execute(&mut *tx).await?;
    // Writers of records lock the rollup rows they change; this lock keeps
    // them out for the rebuild's length.
    sqlx::query(
        "LOCK TABLE rollup_hours, rollup_steps, rollup_months, rollup_runs, rollup_group_hours IN EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await?;
    for table in TABLES {
        sqlx::query(&format!("DELETE FROM rollup_{table}")).execute(&mut *tx).await?;
    }
    let records = fold_into(tx, "rollup", group_by).await?;
    for (key, value) in build_state::rows(records, group_by) {
        sqlx::query(build_state::WRITE).bind(key).bind(value).execute(&mut *tx).await?;
    }
    Ok(records)
}

/// Recomputes the rollups into temporary tables in `tx` (a REPEATABLE READ
/// transaction the caller rolls back) and compares them with the stored
/// ones.
pub(super) async fn check(
    tx: &mut PgConnection,
    examples: usize,
    group_by: &[String],
) -> Result<RollupCheck, StoreError> {
    for table in TABLES {
        sqlx::query(&format!(
            "CREATE TEMP TABLE check_{table} (LIKE rollup_{table} INCLUDING ALL) ON COMMIT DROP"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let records = fold_into(tx, "check", group_by).await?;
    let mut report = RollupCheck { records, ..RollupCheck::default() };
    for (name, second, time) in [
        ("hours", "metric", "hour_ms"),
        ("steps", "metric", "at_ms"),
        ("months", "metric", "month_ms"),
        ("runs", "subject", "started_ms"),
        ("group_hours", "metric", "hour_ms"),
    ] {
        let stored: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM rollup_{name}")).fetch_one(&mut *tx).await?;
        let diff: Vec<DiffRow> = sqlx::query_as(&format!(
            "SELECT d.org_id, d.{second}, d.{time} AS t, d::text AS v, 'stored' AS side
             FROM (SELECT * FROM rollup_{name} EXCEPT SELECT * FROM check_{name}) d
             UNION ALL
             SELECT d.org_id, d.{second}, d.{time}, d::text, 'computed'
             FROM (SELECT * FROM check_{name} EXCEPT SELECT * FROM rollup_{name}) d
             ORDER BY 1, 2, 3, 5 DESC"
        ))
        .fetch_all(&mut *tx)
        .await?;
        report.add_table(name, stored, &diff, examples);
    }
    Ok(report)
}
