//! The SQLite engine: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it is acknowledged), one writer connection, a small reader pool.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::{
    CommitOutcome, Delivery, PointQuery, PollCommit, PollState, RecordCounts, Store, StoreError, with_seqs,
};
use crate::meter::{Kind, Point};
use crate::record::UsageRecord;

/// SQLite allows 32,766 bound parameters per statement; stay well under.
const DELIVERY_ROWS_PER_INSERT: usize = 2_000;
const RECORD_ROWS_PER_INSERT: usize = 1_000;
const KEYS_PER_LOOKUP: usize = 2_000;
const READERS: u32 = 4;

pub struct SqliteStore {
    writer: SqlitePool,
    pub(super) readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://PATH` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Ok(Self { writer, readers })
    }
}

/// `$."key"`: a JSON path naming one attribute (keys are validated to
/// contain no quotes), or none when not grouping.
fn group_path(group_by: Option<&str>) -> Option<String> {
    group_by.map(|key| format!("$.\"{key}\""))
}

fn point_from_row(row: &SqliteRow) -> Result<Point, StoreError> {
    let kind: String = row.try_get("kind")?;
    let quantity: String = row.try_get("quantity")?;
    Ok(Point {
        kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("record kind {kind:?}")))?,
        subject: row.try_get("subject")?,
        quantity: meterd_units::parse_quantity(&quantity)
            .map_err(|e| StoreError::Corrupt(format!("stored quantity: {e}")))?,
        at_ms: row.try_get("at_ms")?,
        group: row.try_get("grp")?,
    })
}

/// One record to write, with its dedup key parts.
struct RecordRow<'a> {
    plugin: &'a str,
    delivery_id: Option<i64>,
    seq: i64,
    record: &'a UsageRecord,
}

/// Writes records by their dedup key (plugin, event id, seq): a new key is
/// inserted; a known key with the same quantity is a duplicate; a known key
/// with another quantity is a correction (quantity replaced, audit row kept).
async fn write_records(
    tx: &mut SqliteConnection,
    rows: &[RecordRow<'_>],
    now_ms: i64,
) -> Result<RecordCounts, StoreError> {
    let mut counts = RecordCounts::default();
    if rows.is_empty() {
        return Ok(counts);
    }
    // What is already stored under these keys.
    let mut existing: HashMap<(String, String, i64), (i64, String)> = HashMap::new();
    for chunk in rows.chunks(KEYS_PER_LOOKUP) {
        let mut lookup = QueryBuilder::<Sqlite>::new(
            "SELECT id, plugin, event_id, seq, quantity FROM usage_records WHERE (plugin, event_id) IN (",
        );
        let mut keys = lookup.separated(", ");
        for row in chunk {
            keys.push("(")
                .push_bind_unseparated(row.plugin)
                .push_unseparated(", ")
                .push_bind_unseparated(&row.record.event_id)
                .push_unseparated(")");
        }
        lookup.push(")");
        for found in lookup.build().fetch_all(&mut *tx).await? {
            existing.insert(
                (found.try_get("plugin")?, found.try_get("event_id")?, found.try_get("seq")?),
                (found.try_get("id")?, found.try_get("quantity")?),
            );
        }
    }
    let mut fresh = Vec::new();
    for row in rows {
        let quantity = meterd_units::format_quantity(row.record.quantity);
        match existing.get(&(row.plugin.to_owned(), row.record.event_id.clone(), row.seq)) {
            None => fresh.push(row),
            Some((_, stored)) if *stored == quantity => counts.duplicates += 1,
            Some((id, stored)) => {
                sqlx::query("UPDATE usage_records SET quantity = ?1 WHERE id = ?2")
                    .bind(&quantity)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO corrections (record_id, plugin, event_id, seq, old_quantity, new_quantity, corrected_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .bind(id)
                .bind(row.plugin)
                .bind(&row.record.event_id)
                .bind(row.seq)
                .bind(stored)
                .bind(&quantity)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                counts.corrected += 1;
            }
        }
    }
    for chunk in fresh.chunks(RECORD_ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO usage_records (plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes) ",
        );
        insert.push_values(chunk, |mut b, row| {
            let r = row.record;
            let attributes = serde_json::to_string(&r.attributes).unwrap_or_else(|_| "{}".to_owned());
            b.push_bind(row.plugin)
                .push_bind(&r.event_id)
                .push_bind(row.seq)
                .push_bind(row.delivery_id)
                .push_bind(&r.org_id)
                .push_bind(&r.subject)
                .push_bind(&r.metric)
                .push_bind(r.kind.as_str())
                .push_bind(meterd_units::format_quantity(r.quantity))
                .push_bind(r.at_ms)
                .push_bind(r.window_start_ms)
                .push_bind(attributes);
        });
        // A key inserted twice in one answer keeps the first.
        insert.push(" ON CONFLICT (plugin, event_id, seq) DO NOTHING");
        counts.inserted += insert.build().execute(&mut *tx).await?.rows_affected() as usize;
    }
    Ok(counts)
}

fn poll_state_from_row(row: &SqliteRow) -> Result<PollState, StoreError> {
    Ok(PollState {
        plugin: row.try_get("plugin")?,
        target: row.try_get("target")?,
        cursor: row.try_get("cursor")?,
        lease_holder: row.try_get("lease_holder")?,
        lease_expires_ms: row.try_get("lease_expires_ms")?,
        last_success_ms: row.try_get("last_success_ms")?,
        last_error: row.try_get("last_error")?,
        last_error_ms: row.try_get("last_error_ms")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        next_run_ms: row.try_get("next_run_ms")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn commit(&self, batch: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut tx = self.writer.begin().await?;
        // Insert the deliveries; RETURNING names the ones that are new.
        let mut new_ids: HashMap<(String, String), i64> = HashMap::with_capacity(batch.len());
        for chunk in batch.chunks(DELIVERY_ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO deliveries (plugin, event_id, received_at_ms, headers, body, record_count) ",
            );
            insert.push_values(chunk, |mut row, d| {
                let headers = serde_json::to_string(&d.headers).unwrap_or_else(|_| "[]".to_owned());
                row.push_bind(&d.plugin)
                    .push_bind(&d.event_id)
                    .push_bind(d.received_at_ms)
                    .push_bind(headers)
                    .push_bind(&d.body)
                    .push_bind(d.records.len() as i64);
            });
            insert.push(" ON CONFLICT (plugin, event_id) DO NOTHING RETURNING id, plugin, event_id");
            for row in insert.build().fetch_all(&mut *tx).await? {
                new_ids.insert((row.try_get("plugin")?, row.try_get("event_id")?), row.try_get("id")?);
            }
        }
        // The first delivery of a key claims its id; any other is a duplicate.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for d in batch {
            match new_ids.remove(&(d.plugin.clone(), d.event_id.clone())) {
                Some(id) => {
                    outcomes.push(CommitOutcome { duplicate: false });
                    rows.extend(with_seqs(&d.records).into_iter().map(|(seq, record)| RecordRow {
                        plugin: &d.plugin,
                        delivery_id: Some(id),
                        seq,
                        record,
                    }));
                }
                None => outcomes.push(CommitOutcome { duplicate: true }),
            }
        }
        let now_ms = batch.iter().map(|d| d.received_at_ms).max().unwrap_or_default();
        write_records(&mut tx, &rows, now_ms).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn points(&self, q: &PointQuery<'_>) -> Result<Vec<Point>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, subject, quantity, at_ms, json_extract(attributes, ?1) AS grp
             FROM usage_records
             WHERE org_id = ?2 AND metric = ?3 AND at_ms >= ?4 AND at_ms < ?5",
        )
        .bind(group_path(q.group_by))
        .bind(q.org_id)
        .bind(q.metric)
        .bind(q.range.from_ms)
        .bind(q.range.to_ms)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(point_from_row).collect()
    }

    async fn carry_in(&self, q: &PointQuery<'_>) -> Result<Vec<Point>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, subject, quantity, at_ms, grp FROM (
                 SELECT kind, subject, quantity, at_ms, json_extract(attributes, ?1) AS grp,
                        RANK() OVER (PARTITION BY subject ORDER BY at_ms DESC) AS latest
                 FROM usage_records
                 WHERE org_id = ?2 AND metric = ?3 AND kind = 'level' AND at_ms < ?4
             ) WHERE latest = 1",
        )
        .bind(group_path(q.group_by))
        .bind(q.org_id)
        .bind(q.metric)
        .bind(q.range.from_ms)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(point_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Option<PollState>, StoreError> {
        let row = sqlx::query(
            "INSERT INTO poll_state (plugin, target, lease_holder, lease_expires_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (plugin, target) DO UPDATE
                 SET lease_holder = excluded.lease_holder, lease_expires_ms = excluded.lease_expires_ms
                 WHERE poll_state.lease_holder IS NULL OR poll_state.lease_holder = excluded.lease_holder
                       OR poll_state.lease_expires_ms <= ?5
             RETURNING *",
        )
        .bind(plugin)
        .bind(target)
        .bind(holder)
        .bind(expires_ms)
        .bind(now_ms)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(poll_state_from_row).transpose()
    }

    async fn commit_poll(&self, poll: &PollCommit) -> Result<RecordCounts, StoreError> {
        let mut tx = self.writer.begin().await?;
        let holder: Option<String> =
            sqlx::query_scalar("SELECT lease_holder FROM poll_state WHERE plugin = ?1 AND target = ?2")
                .bind(&poll.plugin)
                .bind(&poll.target)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        if holder.as_deref() != Some(poll.holder.as_str()) {
            return Err(StoreError::LeaseLost { plugin: poll.plugin.clone(), target: poll.target.clone() });
        }
        let rows: Vec<RecordRow> = with_seqs(&poll.records)
            .into_iter()
            .map(|(seq, record)| RecordRow { plugin: &poll.plugin, delivery_id: None, seq, record })
            .collect();
        let counts = write_records(&mut tx, &rows, poll.now_ms).await?;
        sqlx::query(
            "UPDATE poll_state SET cursor = COALESCE(?3, cursor), last_success_ms = ?4, consecutive_failures = 0,
                 next_run_ms = ?5, lease_expires_ms = ?6
             WHERE plugin = ?1 AND target = ?2",
        )
        .bind(&poll.plugin)
        .bind(&poll.target)
        .bind(&poll.next_cursor)
        .bind(poll.now_ms)
        .bind(poll.next_run_ms)
        .bind(poll.lease_expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts)
    }

    async fn record_poll_failure(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        error: &str,
        now_ms: i64,
        next_run_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE poll_state SET last_error = ?4, last_error_ms = ?5, consecutive_failures = consecutive_failures + 1, next_run_ms = ?6
             WHERE plugin = ?1 AND target = ?2 AND lease_holder = ?3",
        )
        .bind(plugin)
        .bind(target)
        .bind(holder)
        .bind(error)
        .bind(now_ms)
        .bind(next_run_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn poll_states(&self) -> Result<Vec<PollState>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM poll_state ORDER BY plugin, target").fetch_all(&self.readers).await?;
        rows.iter().map(poll_state_from_row).collect()
    }
}
