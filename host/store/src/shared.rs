//! The statements that are the same on both engines, written once over
//! [`Engine`] and called by both engines' trait impls (`Records` and `Keys`
//! are implemented here, once, for any store with [`Connections`]): record reads for
//! grouped queries, poll state, plans, grants and fired notices, the
//! outbox's bookkeeping, replay sets and pages, corrections, API keys,
//! and the rollup reads (`RollupTx`'s provided methods).
//! What really differs stays with each engine: the commit path (SQLite's
//! one writer and its savepoints, PostgreSQL's replica-safe inserts),
//! locking (`FOR UPDATE`, `SKIP LOCKED`, table locks), the feed, and
//! statements whose dialects differ.

use async_trait::async_trait;
use rust_decimal::Decimal;

use super::engine::{Connections, Engine, Sql, sql};
use super::rows::{self, StoredRow as _};
use super::{
    DeliveryCursor, Keys, NewGrant, Notice, OrgPlan, PointKey, PointQuery, PollCommit, PollState, Records,
    ReplaySet, StoreError, StoredDelivery, key_scope_columns,
};
use crate::ApiKey;
use crate::meter::Point;
use crate::meter::period::Range;
use crate::meter::rollup::groups::{GroupHour, cell_of};
use crate::meter::rollup::{Hour, Month, SeriesKey, hour_of};
use crate::plans::credits::Grant;
use crate::plans::standing::Run;

// Reading raw records (`Records`).

/// `select` with `{grp}` the value of the grouping attribute, its key
/// bound as $1 (see [`of_metric`]).
fn grouped<DB: Engine>(select: &str) -> String {
    select.replace("{grp}", &DB::attribute("$1"))
}

/// A [`grouped`] read of one org's metric, with $1 the grouping
/// attribute's key, $2 the org and $3 the metric bound.
fn of_metric<'q, DB: Engine>(
    text: &'q str,
    (group_by, org_id, metric): (Option<&str>, &'q str, &'q str),
) -> Sql<'q, DB> {
    sql::<DB>(text).bind(DB::attribute_key(group_by)).bind(org_id).bind(metric)
}

/// Records of one org and metric with `at` in `range` (`Records::points`,
/// `RollupTx::points_in`).
pub(super) async fn points<DB: Engine>(
    conn: &mut DB::Connection,
    (group_by, org_id, metric): (Option<&str>, &str, &str),
    range: Range,
) -> Result<Vec<Point>, StoreError> {
    let text = grouped::<DB>(
        "SELECT kind, subject, quantity, at_ms, {grp} AS grp FROM usage_records
         WHERE org_id = $2 AND metric = $3 AND at_ms >= $4 AND at_ms < $5",
    );
    let rows = of_metric::<DB>(&text, (group_by, org_id, metric))
        .bind(range.from_ms)
        .bind(range.to_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(rows::point).collect()
}

/// See `Records::carry_in`.
pub(super) async fn carry_in<DB: Engine>(
    conn: &mut DB::Connection,
    q: &PointQuery<'_>,
) -> Result<Vec<Point>, StoreError> {
    let text = grouped::<DB>(
        "SELECT kind, subject, quantity, at_ms, grp FROM (
             SELECT kind, subject, quantity, at_ms, {grp} AS grp,
                    RANK() OVER (PARTITION BY subject ORDER BY at_ms DESC) AS latest
             FROM usage_records
             WHERE org_id = $2 AND metric = $3 AND kind = 'level' AND at_ms < $4
         ) ranked WHERE latest = 1",
    );
    let rows = of_metric::<DB>(&text, (q.group_by, q.org_id, q.metric))
        .bind(q.range.from_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(rows::point).collect()
}

/// See `Records::points_page`.
pub(super) async fn points_page<DB: Engine>(
    conn: &mut DB::Connection,
    q: &PointQuery<'_>,
    after: Option<PointKey>,
    limit: u32,
) -> Result<Vec<(PointKey, Point)>, StoreError> {
    let (at, id) = after.unwrap_or((i64::MIN, i64::MIN));
    // $4 is the later of the range start and the cursor's time.
    let text = grouped::<DB>(
        "SELECT id, kind, subject, quantity, at_ms, {grp} AS grp FROM usage_records
         WHERE org_id = $2 AND metric = $3 AND at_ms >= $4 AND at_ms < $5 AND (at_ms > $6 OR id > $7)
         ORDER BY at_ms, id LIMIT $8",
    );
    let rows = of_metric::<DB>(&text, (q.group_by, q.org_id, q.metric))
        .bind(q.range.from_ms.max(at))
        .bind(q.range.to_ms)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let point = rows::point(row)?;
            Ok(((point.at_ms, row.column("id")?), point))
        })
        .collect()
}

/// See `Records::level_subjects`.
pub(super) async fn level_subjects<DB: Engine>(
    conn: &mut DB::Connection,
    q: &PointQuery<'_>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    // '' before the first page: subjects are never empty.
    let rows = sql::<DB>(
        "SELECT DISTINCT subject FROM usage_records
         WHERE org_id = $1 AND metric = $2 AND kind = 'level' AND at_ms < $3 AND subject > $4
         ORDER BY subject LIMIT $5",
    )
    .bind(q.org_id)
    .bind(q.metric)
    .bind(q.range.to_ms)
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| row.column("subject")).collect()
}

/// See `Records::levels_of_subjects`.
pub(super) async fn levels_of_subjects<DB: Engine>(
    conn: &mut DB::Connection,
    q: &PointQuery<'_>,
    after: Option<&str>,
    last: &str,
) -> Result<Vec<Point>, StoreError> {
    let text = grouped::<DB>(
        "SELECT kind, subject, quantity, at_ms, {grp} AS grp FROM usage_records
         WHERE org_id = $2 AND metric = $3 AND kind = 'level' AND at_ms < $4
               AND subject > $5 AND subject <= $6",
    );
    let rows = of_metric::<DB>(&text, (q.group_by, q.org_id, q.metric))
        .bind(q.range.to_ms)
        .bind(after.unwrap_or(""))
        .bind(last)
        .fetch_all(conn)
        .await?;
    rows.iter().map(rows::point).collect()
}

/// See `Records::level_groups_before`.
pub(super) async fn level_groups_before<DB: Engine>(
    conn: &mut DB::Connection,
    q: &PointQuery<'_>,
) -> Result<Vec<Option<String>>, StoreError> {
    let text = grouped::<DB>(
        "SELECT DISTINCT {grp} AS grp FROM usage_records
         WHERE org_id = $2 AND metric = $3 AND kind = 'level' AND at_ms < $4",
    );
    let rows = of_metric::<DB>(&text, (q.group_by, q.org_id, q.metric))
        .bind(q.range.from_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| row.column("grp")).collect()
}

#[async_trait]
impl<S: Connections> Records for S {
    async fn level_groups_before(&self, q: &PointQuery<'_>) -> Result<Vec<Option<String>>, StoreError> {
        level_groups_before::<S::Engine>(&mut *self.reader().await?, q).await
    }

    async fn points(&self, q: &PointQuery<'_>) -> Result<Vec<Point>, StoreError> {
        let conn = &mut *self.reader().await?;
        points::<S::Engine>(conn, (q.group_by, q.org_id, q.metric), q.range).await
    }

    async fn carry_in(&self, q: &PointQuery<'_>) -> Result<Vec<Point>, StoreError> {
        carry_in::<S::Engine>(&mut *self.reader().await?, q).await
    }

    async fn points_page(
        &self,
        q: &PointQuery<'_>,
        after: Option<PointKey>,
        limit: u32,
    ) -> Result<Vec<(PointKey, Point)>, StoreError> {
        points_page::<S::Engine>(&mut *self.reader().await?, q, after, limit).await
    }

    async fn level_subjects(
        &self,
        q: &PointQuery<'_>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        level_subjects::<S::Engine>(&mut *self.reader().await?, q, after, limit).await
    }

    async fn levels_of_subjects(
        &self,
        q: &PointQuery<'_>,
        after: Option<&str>,
        last: &str,
    ) -> Result<Vec<Point>, StoreError> {
        levels_of_subjects::<S::Engine>(&mut *self.reader().await?, q, after, last).await
    }
}

// Pull ingestion (`Polls`).

/// See `Polls::acquire_lease`.
pub(super) async fn acquire_lease<DB: Engine>(
    conn: &mut DB::Connection,
    plugin: &str,
    target: &str,
    holder: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<Option<PollState>, StoreError> {
    let row = sql::<DB>(
        "INSERT INTO poll_state (plugin, target, lease_holder, lease_expires_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (plugin, target) DO UPDATE
             SET lease_holder = excluded.lease_holder, lease_expires_ms = excluded.lease_expires_ms
             WHERE poll_state.lease_holder IS NULL OR poll_state.lease_holder = excluded.lease_holder
                   OR poll_state.lease_expires_ms <= $5
         RETURNING *",
    )
    .bind(plugin)
    .bind(target)
    .bind(holder)
    .bind(expires_ms)
    .bind(now_ms)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(rows::poll_state).transpose()
}

/// A committed poll's new cursor (if it has one) and schedule, in the
/// poll's transaction.
pub(super) async fn poll_succeeded<DB: Engine>(
    conn: &mut DB::Connection,
    poll: &PollCommit,
) -> Result<(), StoreError> {
    sql::<DB>(
        "UPDATE poll_state SET cursor = COALESCE($3, cursor), last_success_ms = $4, consecutive_failures = 0,
             next_run_ms = $5, lease_expires_ms = $6
         WHERE plugin = $1 AND target = $2",
    )
    .bind(&poll.plugin)
    .bind(&poll.target)
    .bind(&poll.next_cursor)
    .bind(poll.now_ms)
    .bind(poll.next_run_ms)
    .bind(poll.lease_expires_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// See `Polls::record_poll_failure`.
pub(super) async fn record_poll_failure<DB: Engine>(
    conn: &mut DB::Connection,
    plugin: &str,
    target: &str,
    holder: &str,
    error: &str,
    now_ms: i64,
    next_run_ms: i64,
) -> Result<(), StoreError> {
    sql::<DB>(
        "UPDATE poll_state SET last_error = $4, last_error_ms = $5, consecutive_failures = consecutive_failures + 1, next_run_ms = $6
         WHERE plugin = $1 AND target = $2 AND lease_holder = $3",
    )
    .bind(plugin)
    .bind(target)
    .bind(holder)
    .bind(error)
    .bind(now_ms)
    .bind(next_run_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// See `Polls::poll_states`.
pub(super) async fn poll_states<DB: Engine>(conn: &mut DB::Connection) -> Result<Vec<PollState>, StoreError> {
    let rows = sql::<DB>("SELECT * FROM poll_state ORDER BY plugin, target").fetch_all(conn).await?;
    rows.iter().map(rows::poll_state).collect()
}

// Plans, grants and fired notices (`Plans`).

/// See `Plans::org_plans`.
pub(super) async fn org_plans<DB: Engine>(conn: &mut DB::Connection) -> Result<Vec<OrgPlan>, StoreError> {
    let rows = sql::<DB>("SELECT org_id, plan, assigned_at_ms FROM org_plans").fetch_all(conn).await?;
    rows.iter().map(rows::org_plan).collect()
}

/// Assigns `plan` (replacing the org's plan).
pub(super) async fn assign_plan<DB: Engine>(
    conn: &mut DB::Connection,
    plan: &OrgPlan,
) -> Result<(), StoreError> {
    sql::<DB>(
        "INSERT INTO org_plans (org_id, plan, assigned_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (org_id) DO UPDATE SET plan = excluded.plan, assigned_at_ms = excluded.assigned_at_ms",
    )
    .bind(&plan.org_id)
    .bind(&plan.plan)
    .bind(plan.assigned_at_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a grant; `None` when it is a plan credit already stored.
pub(super) async fn insert_grant<DB: Engine>(
    conn: &mut DB::Connection,
    g: &NewGrant,
) -> Result<Option<Grant>, StoreError> {
    let row = sql::<DB>(
        "INSERT INTO grants (org_id, amount, currency, effective_at_ms, expires_at_ms, priority, created_at_ms, source, plan)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (org_id, plan) DO NOTHING RETURNING *",
    )
    .bind(&g.org_id)
    .bind_decimal(g.amount)
    .bind(&g.currency)
    .bind(g.effective_at_ms)
    .bind(g.expires_at_ms)
    .bind(g.priority)
    .bind(g.created_at_ms)
    .bind(&g.source)
    .bind(&g.plan)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(rows::grant).transpose()
}

/// See `Plans::grants`.
pub(super) async fn grants<DB: Engine>(
    conn: &mut DB::Connection,
    org_id: &str,
) -> Result<Vec<Grant>, StoreError> {
    let rows =
        sql::<DB>("SELECT * FROM grants WHERE org_id = $1 ORDER BY id").bind(org_id).fetch_all(conn).await?;
    rows.iter().map(rows::grant).collect()
}

/// Stores fired marks and, for the marks that are new, outbox rows.
/// Returns the outbox rows added and the (org, rule, period) newly fired.
pub(super) async fn insert_notices<DB: Engine>(
    conn: &mut DB::Connection,
    notices: &[Notice],
    now_ms: i64,
) -> Result<(usize, Vec<(String, String, i64)>), StoreError> {
    let mut rows = 0;
    let mut fired = Vec::new();
    for notice in notices {
        let fresh = sql::<DB>(
            "INSERT INTO notifications_fired (org_id, rule, period_start_ms, fired_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&notice.org_id)
        .bind(&notice.rule)
        .bind(notice.period_start_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?
            == 1;
        if !fresh {
            continue;
        }
        fired.push((notice.org_id.clone(), notice.rule.clone(), notice.period_start_ms));
        for endpoint in &notice.endpoints {
            sql::<DB>(
                "INSERT INTO outbox (message_id, endpoint, event_type, payload, created_at_ms, next_attempt_ms)
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (message_id) DO NOTHING",
            )
            .bind(notice.message_id(endpoint))
            .bind(endpoint)
            .bind(&notice.event_type)
            .bind(&notice.payload)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            rows += 1;
        }
    }
    Ok((rows, fired))
}

/// See `Plans::fired`.
pub(super) async fn fired<DB: Engine>(
    conn: &mut DB::Connection,
    period_start_ms: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sql::<DB>("SELECT org_id, rule FROM notifications_fired WHERE period_start_ms = $1")
        .bind(period_start_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| Ok((row.column("org_id")?, row.column("rule")?))).collect()
}

// The outbox's bookkeeping (`Outbox`).

/// See `Outbox::outbox_delivered`.
pub(super) async fn outbox_delivered<DB: Engine>(
    conn: &mut DB::Connection,
    id: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    sql::<DB>(
        "UPDATE outbox SET delivered_at_ms = $2, attempts = attempts + 1, last_error = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// See `Outbox::outbox_attempt_failed`.
pub(super) async fn outbox_attempt_failed<DB: Engine>(
    conn: &mut DB::Connection,
    id: i64,
    error: &str,
    now_ms: i64,
    retry_at_ms: Option<i64>,
) -> Result<(), StoreError> {
    sql::<DB>(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
             next_attempt_ms = COALESCE($3, next_attempt_ms),
             gave_up_at_ms = CASE WHEN CAST($3 AS BIGINT) IS NULL THEN $4 ELSE NULL END
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_at_ms)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

// Replay reads and the correction audit (`Deliveries`).

/// The deliveries of `plugin` received in `range`: (greatest id, count).
/// The caller makes sure every delivery up to that id has committed.
pub(super) async fn replay_set<DB: Engine>(
    conn: &mut DB::Connection,
    plugin: &str,
    range: Range,
) -> Result<ReplaySet, StoreError> {
    let row = sql::<DB>(
        "SELECT COALESCE(MAX(id), 0) AS up_to_id, COUNT(*) AS total FROM deliveries
         WHERE plugin = $1 AND received_at_ms >= $2 AND received_at_ms < $3",
    )
    .bind(plugin)
    .bind(range.from_ms)
    .bind(range.to_ms)
    .fetch_one(conn)
    .await?;
    let total: i64 = row.column("total")?;
    Ok(ReplaySet { up_to_id: row.column("up_to_id")?, total: total.max(0) as u64 })
}

/// See `Deliveries::deliveries`.
pub(super) async fn deliveries<DB: Engine>(
    conn: &mut DB::Connection,
    plugin: &str,
    range: Range,
    set: &ReplaySet,
    after: Option<DeliveryCursor>,
    limit: i64,
) -> Result<Vec<StoredDelivery>, StoreError> {
    let (after_at, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
    let rows = sql::<DB>(
        "SELECT id, event_id, received_at_ms, path, query, headers, body, payload_purged_at_ms
         FROM deliveries
         WHERE plugin = $1 AND received_at_ms >= $2 AND received_at_ms < $3 AND id <= $4
           AND (received_at_ms, id) > ($5, $6)
         ORDER BY received_at_ms, id LIMIT $7",
    )
    .bind(plugin)
    .bind(range.from_ms)
    .bind(range.to_ms)
    .bind(set.up_to_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| rows::delivery(row, plugin)).collect()
}

/// See `Deliveries::corrections`.
pub(super) async fn corrections<DB: Engine>(
    conn: &mut DB::Connection,
    plugin: &str,
    event_id: &str,
) -> Result<Vec<(i64, Decimal, Decimal)>, StoreError> {
    let rows = sql::<DB>(
        "SELECT seq, old_quantity, new_quantity FROM corrections WHERE plugin = $1 AND event_id = $2 ORDER BY id",
    )
    .bind(plugin)
    .bind(event_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.column("seq")?, row.decimal("old_quantity")?, row.decimal("new_quantity")?)))
        .collect()
}

// API keys (`Keys`).

/// See `Keys::insert_api_key`.
pub(super) async fn insert_api_key<DB: Engine>(
    conn: &mut DB::Connection,
    key: &ApiKey,
) -> Result<(), StoreError> {
    let (admin, orgs) = key_scope_columns(&key.scope);
    sql::<DB>(
        "INSERT INTO api_keys (id, secret_hash, admin, orgs, label, created_at_ms, revoked_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.id)
    .bind(&key.secret_hash)
    .bind(admin)
    .bind(orgs)
    .bind(&key.label)
    .bind(key.created_at_ms)
    .bind(key.revoked_at_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// See `Keys::api_keys`.
pub(super) async fn api_keys<DB: Engine>(conn: &mut DB::Connection) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sql::<DB>("SELECT * FROM api_keys ORDER BY created_at_ms, id").fetch_all(conn).await?;
    rows.iter().map(rows::api_key).collect()
}

/// See `Keys::revoke_api_key`.
pub(super) async fn revoke_api_key<DB: Engine>(
    conn: &mut DB::Connection,
    id: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sql::<DB>("UPDATE api_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL")
        .bind(id)
        .bind(now_ms)
        .execute(conn)
        .await?;
    Ok(done == 1)
}

#[async_trait]
impl<S: Connections> Keys for S {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        insert_api_key::<S::Engine>(&mut *self.writer().await?, key).await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        api_keys::<S::Engine>(&mut *self.reader().await?).await
    }

    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        revoke_api_key::<S::Engine>(&mut *self.writer().await?, id, now_ms).await
    }
}

// Rollup reads (`RollupTx`'s provided methods).

/// See `RollupTx::level_cells`. The cells come from the group hours, one
/// index seek each (migration 0013's index on (org, metric, key, cell,
/// hour)), kept when an hour before `to_ms`'s holds a level record of
/// theirs; the records of `to_ms`'s own hour before it are read raw.
pub(super) async fn level_cells<DB: Engine>(
    conn: &mut DB::Connection,
    series: &SeriesKey,
    key: &str,
    to_ms: i64,
) -> Result<Vec<String>, StoreError> {
    let hour = hour_of(to_ms);
    let rows = sql::<DB>(
        "WITH RECURSIVE c(cell) AS (
             SELECT MIN(cell) FROM rollup_group_hours WHERE org_id = $1 AND metric = $2 AND group_key = $3
             UNION ALL
             SELECT (SELECT MIN(g.cell) FROM rollup_group_hours g
                     WHERE g.org_id = $1 AND g.metric = $2 AND g.group_key = $3 AND g.cell > c.cell)
             FROM c WHERE c.cell IS NOT NULL
         )
         SELECT cell FROM c WHERE cell IS NOT NULL AND EXISTS (
             SELECT 1 FROM rollup_group_hours g
             WHERE g.org_id = $1 AND g.metric = $2 AND g.group_key = $3 AND g.cell = c.cell
                   AND g.hour_ms < $4 AND g.records > g.deltas)",
    )
    .bind(&series.org_id)
    .bind(&series.metric)
    .bind(key)
    .bind(hour)
    .fetch_all(&mut *conn)
    .await?;
    let mut cells = std::collections::BTreeSet::new();
    for row in &rows {
        cells.insert(row.column::<String>("cell")?);
    }
    if hour < to_ms {
        let text = grouped::<DB>(
            "SELECT DISTINCT {grp} AS grp FROM usage_records
             WHERE org_id = $2 AND metric = $3 AND kind = 'level' AND at_ms >= $4 AND at_ms < $5",
        );
        let rows = of_metric::<DB>(&text, (Some(key), &series.org_id, &series.metric))
            .bind(hour)
            .bind(to_ms)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            cells.insert(cell_of(row.column::<Option<String>>("grp")?.as_deref()));
        }
    }
    Ok(cells.into_iter().collect())
}

/// See `RollupTx::months_before`.
pub(super) async fn months_before<DB: Engine>(
    conn: &mut DB::Connection,
    month_ms: i64,
) -> Result<Vec<(SeriesKey, Decimal)>, StoreError> {
    let rows = sql::<DB>("SELECT org_id, metric, level_step FROM rollup_months WHERE month_ms < $1")
        .bind(month_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| Ok((rows::series(row)?, row.decimal("level_step")?))).collect()
}

/// See `RollupTx::hours_from`.
pub(super) async fn hours_from<DB: Engine>(
    conn: &mut DB::Connection,
    from_ms: i64,
) -> Result<Vec<(SeriesKey, i64, Hour)>, StoreError> {
    let rows = sql::<DB>("SELECT * FROM rollup_hours WHERE hour_ms >= $1 ORDER BY org_id, metric, hour_ms")
        .bind(from_ms)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| Ok((rows::series(row)?, row.column("hour_ms")?, rows::hour(row)?))).collect()
}

/// See `RollupTx::open_runs`.
pub(super) async fn open_runs<DB: Engine>(
    conn: &mut DB::Connection,
) -> Result<Vec<(String, Run)>, StoreError> {
    let rows = sql::<DB>("SELECT * FROM rollup_runs WHERE ended_ms IS NULL").fetch_all(conn).await?;
    rows.iter().map(rows::run).collect()
}

/// See `Standings::long_runs`.
pub(super) async fn long_runs<DB: Engine>(
    conn: &mut DB::Connection,
    org_id: &str,
    ended_after_ms: i64,
    longer_than_ms: i64,
) -> Result<Vec<Run>, StoreError> {
    let rows = sql::<DB>(
        "SELECT * FROM rollup_runs WHERE org_id = $1 AND length_ms > $2 AND ended_ms > $3
         ORDER BY started_ms, subject",
    )
    .bind(org_id)
    .bind(longer_than_ms)
    .bind(ended_after_ms)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| Ok(rows::run(row)?.1)).collect()
}

/// The rows of `table` of `series` with `time` in `range`, in time order:
/// a rollup table's summaries over a range.
async fn series_in<DB: Engine>(
    conn: &mut DB::Connection,
    (columns, table, time): (&str, &str, &str),
    series: &SeriesKey,
    range: Range,
) -> Result<Vec<DB::Row>, StoreError> {
    let text = format!(
        "SELECT {columns} FROM {table} WHERE org_id = $1 AND metric = $2 AND {time} >= $3 AND {time} < $4 ORDER BY {time}"
    );
    sql::<DB>(&text)
        .bind(&series.org_id)
        .bind(&series.metric)
        .bind(range.from_ms)
        .bind(range.to_ms)
        .fetch_all(conn)
        .await
}

/// See `RollupTx::months_in`.
pub(super) async fn months_in<DB: Engine>(
    conn: &mut DB::Connection,
    series: &SeriesKey,
    range: Range,
) -> Result<Vec<(i64, Month)>, StoreError> {
    let rows = series_in::<DB>(conn, ("*", "rollup_months", "month_ms"), series, range).await?;
    rows.iter().map(|row| Ok((row.column("month_ms")?, rows::month(row)?))).collect()
}

/// See `RollupTx::hours_in`.
pub(super) async fn hours_in<DB: Engine>(
    conn: &mut DB::Connection,
    series: &SeriesKey,
    range: Range,
) -> Result<Vec<(i64, Hour)>, StoreError> {
    let rows = series_in::<DB>(conn, ("*", "rollup_hours", "hour_ms"), series, range).await?;
    rows.iter().map(|row| Ok((row.column("hour_ms")?, rows::hour(row)?))).collect()
}

/// See `RollupTx::steps_in`.
pub(super) async fn steps_in<DB: Engine>(
    conn: &mut DB::Connection,
    series: &SeriesKey,
    range: Range,
) -> Result<Vec<(i64, Decimal)>, StoreError> {
    let rows = series_in::<DB>(conn, ("at_ms, step", "rollup_steps", "at_ms"), series, range).await?;
    rows.iter().map(|row| Ok((row.column("at_ms")?, row.decimal("step")?))).collect()
}

/// See `RollupTx::group_hours_in`.
pub(super) async fn group_hours_in<DB: Engine>(
    conn: &mut DB::Connection,
    series: &SeriesKey,
    key: &str,
    range: Range,
) -> Result<Vec<(String, i64, GroupHour)>, StoreError> {
    let rows = sql::<DB>(
        "SELECT cell, hour_ms, delta_sum, records, deltas FROM rollup_group_hours
         WHERE org_id = $1 AND metric = $2 AND group_key = $3 AND hour_ms >= $4 AND hour_ms < $5",
    )
    .bind(&series.org_id)
    .bind(&series.metric)
    .bind(key)
    .bind(range.from_ms)
    .bind(range.to_ms)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| Ok((row.column("cell")?, row.column("hour_ms")?, rows::group_hour(row)?))).collect()
}
