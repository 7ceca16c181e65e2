//! The SQLite engine: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it is acknowledged), one writer connection, a small reader pool.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{CommitOutcome, Delivery, PointQuery, Store, StoreError};
use crate::meter::{Kind, Point};

/// SQLite allows 32,766 bound parameters per statement; stay well under.
const DELIVERY_ROWS_PER_INSERT: usize = 2_000;
const RECORD_ROWS_PER_INSERT: usize = 1_000;
const READERS: u32 = 4;

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
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
        kind: Kind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("record kind {kind:?}")))?,
        subject: row.try_get("subject")?,
        quantity: meterd_units::parse_quantity(&quantity)
            .map_err(|e| StoreError::Corrupt(format!("stored quantity: {e}")))?,
        at_ms: row.try_get("at_ms")?,
        group: row.try_get("grp")?,
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
            insert
                .push(" ON CONFLICT (plugin, event_id) DO NOTHING RETURNING id, plugin, event_id");
            for row in insert.build().fetch_all(&mut *tx).await? {
                new_ids.insert(
                    (row.try_get("plugin")?, row.try_get("event_id")?),
                    row.try_get("id")?,
                );
            }
        }
        // The first delivery of a key claims its id; any other is a duplicate.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for d in batch {
            match new_ids.remove(&(d.plugin.clone(), d.event_id.clone())) {
                Some(id) => {
                    outcomes.push(CommitOutcome { duplicate: false });
                    records.extend(d.records.iter().enumerate().map(|(seq, r)| (d, id, seq, r)));
                }
                None => outcomes.push(CommitOutcome { duplicate: true }),
            }
        }
        for chunk in records.chunks(RECORD_ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO usage_records (plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes) ",
            );
            insert.push_values(chunk, |mut row, (d, id, seq, r)| {
                let attributes =
                    serde_json::to_string(&r.attributes).unwrap_or_else(|_| "{}".to_owned());
                row.push_bind(&d.plugin)
                    .push_bind(&r.event_id)
                    .push_bind(*seq as i64)
                    .push_bind(*id)
                    .push_bind(&r.org_id)
                    .push_bind(&r.subject)
                    .push_bind(&r.metric)
                    .push_bind(r.kind.as_str())
                    .push_bind(meterd_units::format_quantity(r.quantity))
                    .push_bind(r.at_ms)
                    .push_bind(r.window_start_ms)
                    .push_bind(attributes);
            });
            insert.push(" ON CONFLICT (plugin, event_id, seq) DO NOTHING");
            insert.build().execute(&mut *tx).await?;
        }
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
}
