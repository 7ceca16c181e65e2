//! The PostgreSQL engine, for several gateway replicas on one database.
//!
//! The same contract as the SQLite engine (the same conformance tests run
//! against both), with what sharing a database needs: dedup by unique
//! constraints only (a redelivery that reaches another replica while the
//! first is still committing waits for it and is then a duplicate), record
//! inserts that report only what they really inserted, lease fencing with
//! `SELECT … FOR UPDATE`, outbox rows claimed with `SKIP LOCKED`,
//! migrations under sqlx's advisory lock (replicas may start at once), and
//! the change feed (`feed.rs`): every transaction that changes what
//! in-memory state is built from says so with `NOTIFY`, and [`Store::listen`]
//! follows what the others say.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::mpsc;

use super::engine::Connections;
use super::feed::{self, CHANNEL, FeedEvent, FeedMessage, TxId, Visibility};
use super::postgres_rollup;
use super::rollup::{RollupTx, attributes_column};
use super::rows;
use super::shared;
use super::{
    CommitHook, CommitOutcome, Deliveries, Delivery, DeliveryCursor, Ingest, NewGrant, Notice, OrgChange,
    OrgPlan, Outbox, OutboxCounts, OutboxMessage, PURGE_BATCH, Plans, PollCommit, PollState, Polls,
    RecordCounts, RecordFix, RecordRow, ReplaySet, RollupCheck, Rollups, StandingSnapshot, Standings, Store,
    StoreError, StoredDelivery, StoredRecord, declared, fix_change, headers_column, new_records, org_change,
};
use crate::meter::Aggregation;
use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::SeriesKey;
use crate::meter::rollup::groups::{GroupInput, GroupLevelInput};
use crate::meter::rollup::query::{ReadPlan, RollupInput};
use crate::plans::credits::Grant;
use crate::plans::standing::Run;
use crate::record::UsageRecord;

const CONNECTIONS: u32 = 8;
/// How long a replica's notifier owns the outbox rows it took.
const OUTBOX_CLAIM_MS: i64 = 60_000;
/// The `application_name` of the connection that listens for the feed
/// (operators and tests find it in `pg_stat_activity` by this name).
pub const FEED_APPLICATION: &str = "meterd-feed";

pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    hook: OnceLock<Arc<dyn CommitHook>>,
    /// The attribute keys rolled up per group (every replica the same).
    group_by: Vec<String>,
}

impl PostgresStore {
    /// Connects to a `postgres://…` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions =
            url.parse().map_err(|e| StoreError::Unavailable(format!("{}: {e}", super::redact_url(url))))?;
        // Plan each statement for its parameters: a generic plan cached
        // while the tables were small would stay (seq scans) as they grow.
        // (The records insert is the exception: `GENERIC_PLANS`.)
        // No JIT: meterd's statements are short, and without statistics the
        // planner's cost estimates grow with the table until every replay
        // page paid 15-200 ms of JIT compilation for 5 ms of work
        // (BENCHMARKS.md "replay").
        let options = options.options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", super::redact_url(url))))?;
        Ok(Self { pool, options, hook: OnceLock::new(), group_by: Vec::new() })
    }

    /// Keeps group hours for these attribute keys (before `migrate`, which
    /// rebuilds the rollups if the database holds other keys').
    pub fn with_group_by(mut self, keys: Vec<String>) -> Self {
        self.group_by = keys;
        self
    }

    /// Like the SQLite engine's: tell the hook, store its notices, commit,
    /// undo the hook's work if the commit fails. The transaction also tells
    /// the feed what it changed.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        changes: Vec<OrgChange>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        // Replicas write too, so no tails are kept (see `store::tails`).
        let maintained =
            super::rollup::maintain(&mut *tx, &changes, &super::rollup::NoTails, &self.group_by).await?;
        super::postgres_rollup::write_rows(&mut tx, &maintained.rows.write).await?;
        let effects = maintained.effects;
        let id = current_tx(&mut tx).await?;
        let hook = self.hook.get();
        let notices = hook.map(|h| h.records_written(Some(id), &effects, now_ms)).unwrap_or_default();
        let result = async {
            let (rows, fired) = shared::insert_notices::<Postgres>(&mut tx, &notices, now_ms).await?;
            notify(&mut tx, id, &FeedMessage { effects: effects.clone(), fired, ..FeedMessage::default() })
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(rows)
        }
        .await;
        match (result, hook) {
            (Ok(rows), Some(hook)) => {
                hook.committed(rows);
                Ok(())
            }
            (Err(e), Some(hook)) => {
                hook.rolled_back(Some(id), &effects, &notices);
                Err(e)
            }
            (result, None) => result.map(|_| ()),
        }
    }
}

/// The id of the transaction `conn` is in (assigning one if it has none).
async fn current_tx(conn: &mut PgConnection) -> Result<TxId, StoreError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text").fetch_one(conn).await?;
    text.parse().map_err(|_| StoreError::Corrupt(format!("transaction id {text:?}")))
}

/// Queues the feed's notifications of what transaction `id` changed; they
/// are sent if and when it commits.
async fn notify(conn: &mut PgConnection, id: TxId, message: &FeedMessage) -> Result<(), StoreError> {
    let payloads = feed::encode(id, message);
    if !payloads.is_empty() {
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Notifies what the transaction `conn` is in changed (outside usage commits).
async fn notify_current(conn: &mut PgConnection, message: &FeedMessage) -> Result<(), StoreError> {
    if message.is_empty() {
        return Ok(());
    }
    let id = current_tx(conn).await?;
    notify(conn, id, message).await
}

/// Insert / duplicate / correction by (plugin, event id, seq), as the SQLite
/// engine does. Another replica may insert the same key concurrently: the
/// insert waits for it and skips the row, and only rows this transaction
/// really inserted are counted and reported.
async fn write_records(
    tx: &mut PgConnection,
    rows: &[RecordRow<'_>],
    now_ms: i64,
    changes: &mut Vec<OrgChange>,
    group_by: &[String],
) -> Result<RecordCounts, StoreError> {
    let mut counts = RecordCounts::default();
    if rows.is_empty() {
        return Ok(counts);
    }
    // The stored records of these events: one index probe per (plugin,
    // event id), joined against arrays, so the plan does not depend on how
    // many keys a batch has (a row-value IN list made PostgreSQL compare
    // texts row by row as the table grew; see BENCHMARKS.md "replicas").
    let keys: std::collections::BTreeSet<(&str, &str)> =
        rows.iter().map(|r| (r.plugin, r.record.event_id.as_str())).collect();
    let (plugins, events): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let found = sqlx::query(
        "SELECT r.plugin, r.event_id, r.seq, r.quantity
         FROM unnest($1::text[], $2::text[]) AS k(plugin, event_id)
         JOIN usage_records r ON r.plugin = k.plugin AND r.event_id = k.event_id",
    )
    .bind(&plugins)
    .bind(&events)
    .fetch_all(&mut *tx)
    .await?;
    let mut existing: HashMap<(String, String, i64), Decimal> = HashMap::with_capacity(found.len());
    for found in found {
        existing.insert(
            (found.try_get("plugin")?, found.try_get("event_id")?, found.try_get("seq")?),
            found.try_get("quantity")?,
        );
    }
    let mut fresh: Vec<&RecordRow> = Vec::new();
    let mut fresh_keys = std::collections::HashSet::new();
    // Later rows of a new key: settled after the insert, in batch order.
    let mut repeats: Vec<&RecordRow> = Vec::new();
    for row in rows {
        match existing.get(&(row.plugin.to_owned(), row.record.event_id.clone(), row.seq)) {
            None if !fresh_keys.insert((row.plugin, row.record.event_id.as_str(), row.seq)) => {
                repeats.push(row)
            }
            None => fresh.push(row),
            Some(stored) if *stored == row.record.quantity => counts.duplicates += 1,
            Some(_) => settle(tx, row, now_ms, changes, &mut counts, group_by).await?,
        }
    }
    let inserted = insert_records(tx, &mut fresh).await?;
    let mut lost = Vec::new();
    for row in &fresh {
        if inserted.contains(&(row.plugin.to_owned(), row.record.event_id.clone(), row.seq)) {
            counts.inserted += 1;
            changes.push(org_change(row.record, None, group_by));
        } else {
            // Another transaction (a replica) inserted this key after the
            // lookup and committed: what it stored may be another quantity.
            lost.push(*row);
        }
    }
    // A new key's later rows revise what its first stored, as they would
    // in a later batch (as on SQLite).
    for row in lost.into_iter().chain(repeats) {
        settle(tx, row, now_ms, changes, &mut counts, group_by).await?;
    }
    Ok(counts)
}

/// Writes `row` over the stored record of its key: locks the row and
/// corrects from what it holds now, since another replica may have written
/// it since any earlier read, and only one of two equal writes may audit
/// and move standings. The same quantity is a duplicate.
async fn settle(
    tx: &mut PgConnection,
    row: &RecordRow<'_>,
    now_ms: i64,
    changes: &mut Vec<OrgChange>,
    counts: &mut RecordCounts,
    group_by: &[String],
) -> Result<(), StoreError> {
    let locked = sqlx::query(
        "SELECT id, quantity, attributes::text AS attributes FROM usage_records
         WHERE plugin = $1 AND event_id = $2 AND seq = $3 FOR UPDATE",
    )
    .bind(row.plugin)
    .bind(&row.record.event_id)
    .bind(row.seq)
    .fetch_one(&mut *tx)
    .await?;
    let (id, current): (i64, Decimal) = (locked.try_get("id")?, locked.try_get("quantity")?);
    if current == row.record.quantity {
        counts.duplicates += 1;
        return Ok(());
    }
    // A correction changes the quantity only: the record stays in the
    // groups of its stored attributes.
    let attributes = declared(&super::rollup::attributes_of(locked.try_get("attributes")?)?, group_by);
    changes.push(OrgChange { attributes, ..org_change(row.record, Some(current), group_by) });
    sqlx::query("UPDATE usage_records SET quantity = $1, delivery_id = $2 WHERE id = $3 AND quantity = $4")
        .bind(row.record.quantity)
        .bind(row.delivery_id)
        .bind(id)
        .bind(current)
        .execute(&mut *tx)
        .await?;
    let correction = Correction { id, plugin: row.plugin, seq: row.seq, record: row.record };
    audit(tx, &correction, current, row.record.quantity, now_ms).await?;
    counts.corrected += 1;
    Ok(())
}

/// A stored record being corrected: its row id and dedup key.
struct Correction<'a> {
    id: i64,
    plugin: &'a str,
    seq: i64,
    record: &'a UsageRecord,
}

/// The audit row of a correction.
async fn audit(
    tx: &mut PgConnection,
    c: &Correction<'_>,
    from: Decimal,
    to: Decimal,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO corrections (record_id, plugin, event_id, seq, old_quantity, new_quantity, corrected_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(c.id)
    .bind(c.plugin)
    .bind(&c.record.event_id)
    .bind(c.seq)
    .bind(from)
    .bind(to)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Inserts records under keys nothing holds; returns the keys (plugin,
/// event id, seq) really inserted (another replica may have won a key).
///
/// One statement whatever the batch's size: the rows go as one array per
/// column (`unnest`), so one prepared statement and one cached plan serve
/// every batch (a `VALUES` row per record made a new statement text for each
/// batch size, parsed and planned with up to 2,232 parameters).
async fn insert_records(
    tx: &mut PgConnection,
    rows: &mut [&RecordRow<'_>],
) -> Result<std::collections::HashSet<(String, String, i64)>, StoreError> {
    // Key order, as for deliveries: `unnest` yields the rows in array order.
    rows.sort_by(|a, b| (a.plugin, &a.record.event_id, a.seq).cmp(&(b.plugin, &b.record.event_id, b.seq)));
    // Planned once per connection, not per call: see `GENERIC_PLANS`.
    sqlx::query(GENERIC_PLANS).execute(&mut *tx).await?;
    let inserted = sqlx::query(
        "INSERT INTO usage_records (plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes)
         SELECT plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes::jsonb
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::numeric[], $10::bigint[], $11::bigint[], $12::text[])
              AS r(plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes)
         ON CONFLICT (plugin, event_id, seq) DO NOTHING RETURNING plugin, event_id, seq",
    )
    .bind(column(rows, |row| row.plugin))
    .bind(column(rows, |row| row.record.event_id.as_str()))
    .bind(column(rows, |row| row.seq))
    .bind(column(rows, |row| row.delivery_id))
    .bind(column(rows, |row| row.record.org_id.as_str()))
    .bind(column(rows, |row| row.record.subject.as_str()))
    .bind(column(rows, |row| row.record.metric.as_str()))
    .bind(column(rows, |row| row.record.kind.as_str()))
    .bind(column(rows, |row| row.record.quantity))
    .bind(column(rows, |row| row.record.at_ms))
    .bind(column(rows, |row| row.record.window_start_ms))
    .bind(column(rows, |row| attributes_column(&row.record.attributes)))
    .fetch_all(&mut *tx)
    .await?;
    // (Had the insert failed, the transaction could only roll back, and the
    // setting with it.)
    sqlx::query(CUSTOM_PLANS).execute(&mut *tx).await?;
    let mut keys = std::collections::HashSet::with_capacity(inserted.len());
    for row in inserted {
        keys.insert((row.try_get("plugin")?, row.try_get("event_id")?, row.try_get("seq")?));
    }
    Ok(keys)
}

/// The records insert and the foreign-key checks it fires (one per row:
/// `SELECT 1 FROM ONLY deliveries x WHERE id = $1 FOR KEY SHARE OF x`) use
/// generic plans, cached per connection. Under the connection's
/// `force_custom_plan` (see [`PostgresStore::open`]) every one of those
/// checks was planned anew: ~19 µs of PostgreSQL's CPU per record, more than
/// the check itself. The insert has no plan to choose (it reads its arrays);
/// the check looks up one primary key, an index scan unless `deliveries`
/// was analyzed while it had a page or so. Such a plan does not outlive the
/// next analysis (autovacuum's, as the table grows, invalidates it) nor the
/// pooled connection (sqlx closes each after 30 minutes), and PostgreSQL
/// takes a never-analyzed table for at least ten pages. Measured in
/// BENCHMARKS.md (issue 18, PostgreSQL).
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
/// What every other statement of a transaction is planned with.
const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// One field of every row: an array for `unnest`.
fn column<'r, R, T>(rows: &[&'r R], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(|row| field(row)).collect()
}

/// A listener whose `LISTEN` has taken effect.
async fn start_listening(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Forwards the feed until the receiver is dropped. A lost connection is
/// re-established here (not inside sqlx, so the moment listening resumes is
/// known) and reported as a gap.
async fn follow_feed(pool: PgPool, mut listener: PgListener, sender: mpsc::UnboundedSender<FeedEvent>) {
    loop {
        let lost = loop {
            let received = tokio::select! {
                () = sender.closed() => return,
                received = listener.try_recv() => received,
            };
            let event = match received {
                Ok(Some(notification)) => match feed::decode(notification.payload()) {
                    Ok((tx, last, message)) => FeedEvent::Committed { tx, last, message },
                    Err(e) => {
                        tracing::error!(error = %e, "an unreadable change notification: rebuilding from the database");
                        FeedEvent::Gap
                    }
                },
                Ok(None) => break "the connection closed".to_owned(),
                Err(e) => break e.to_string(),
            };
            if sender.send(event).is_err() {
                return;
            }
        };
        tracing::warn!(reason = %lost, "lost the change feed's connection; listening again");
        drop(listener);
        let mut delay = Duration::from_millis(100);
        listener = loop {
            match start_listening(&pool).await {
                Ok(listener) => break listener,
                Err(e) => tracing::warn!(error = %e, "could not listen for changes; retrying"),
            }
            tokio::select! {
                () = sender.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        if sender.send(FeedEvent::Gap).is_err() {
            return;
        }
    }
}

#[async_trait]
impl Rollups for PostgresStore {
    async fn rollup_input(
        &self,
        series: &SeriesKey,
        plan: &ReadPlan,
        aggregation: Aggregation,
        from_ms: i64,
    ) -> Result<RollupInput, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let input = super::rollup::read_input(&mut *tx, series, plan, aggregation, from_ms).await?;
        tx.commit().await?;
        Ok(input)
    }

    fn group_by(&self) -> &[String] {
        &self.group_by
    }

    async fn group_input(
        &self,
        series: &SeriesKey,
        key: &str,
        plan: &ReadPlan,
    ) -> Result<GroupInput, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let input = super::rollup::read_group_input(&mut *tx, series, key, plan).await?;
        tx.commit().await?;
        Ok(input)
    }

    async fn group_level_input(
        &self,
        series: &SeriesKey,
        key: &str,
        plan: &ReadPlan,
        range: Range,
    ) -> Result<GroupLevelInput, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let input = super::rollup::read_group_level_input(&mut *tx, series, key, plan, range).await?;
        tx.commit().await?;
        Ok(input)
    }

    async fn rebuild_rollups(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let records = postgres_rollup::rebuild(&mut tx, &self.group_by).await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn check_rollups(&self, examples: usize) -> Result<RollupCheck, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        let report = postgres_rollup::check(&mut tx, examples, &self.group_by).await;
        tx.rollback().await?;
        report
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds an advisory lock while migrating: replicas starting at
        // once apply each migration exactly once.
        super::migrations::POSTGRES
            .migrator()
            .await?
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        if !postgres_rollup::built(&mut tx, &self.group_by).await? {
            let records = postgres_rollup::rebuild(&mut tx, &self.group_by).await?;
            tracing::info!(records, group_by = ?self.group_by, "rollups built from the stored records");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Ingest for PostgresStore {
    async fn commit(&self, batch: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut new_ids: HashMap<(String, String), i64> = HashMap::with_capacity(batch.len());
        // Rows are inserted in key order, so two replicas committing
        // overlapping batches take the unique-index locks in the same order
        // (no deadlock between them, only a wait).
        let mut ordered: Vec<&Delivery> = batch.iter().collect();
        ordered.sort_by(|a, b| (&a.plugin, &a.event_id).cmp(&(&b.plugin, &b.event_id)));
        // One statement for any batch, as for records (`insert_records`).
        let inserted = sqlx::query(
            "INSERT INTO deliveries (plugin, event_id, received_at_ms, path, query, headers, body, record_count)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                  $7::bytea[], $8::int[])
             ON CONFLICT (plugin, event_id) DO NOTHING RETURNING id, plugin, event_id",
        )
        .bind(column(&ordered, |d| d.plugin.as_str()))
        .bind(column(&ordered, |d| d.event_id.as_str()))
        .bind(column(&ordered, |d| d.received_at_ms))
        .bind(column(&ordered, |d| d.path.as_str()))
        .bind(column(&ordered, |d| d.query.as_deref()))
        .bind(column(&ordered, |d| headers_column(&d.headers)))
        .bind(column(&ordered, |d| d.body.as_slice()))
        .bind(column(&ordered, |d| i32::try_from(d.records.len()).unwrap_or(i32::MAX)))
        .fetch_all(&mut *tx)
        .await?;
        for row in inserted {
            new_ids.insert((row.try_get("plugin")?, row.try_get("event_id")?), row.try_get("id")?);
        }
        let (outcomes, rows) = new_records(batch, new_ids);
        let now_ms = batch.iter().map(|d| d.received_at_ms).max().unwrap_or_default();
        let mut changes = Vec::new();
        write_records(&mut tx, &rows, now_ms, &mut changes, &self.group_by).await?;
        self.finish(tx, changes, now_ms).await?;
        Ok(outcomes)
    }

    fn set_commit_hook(&self, hook: Arc<dyn CommitHook>) {
        if self.hook.set(hook).is_err() {
            tracing::warn!("a commit hook was already installed; keeping the first");
        }
    }
}

#[async_trait]
impl Connections for PostgresStore {
    type Engine = Postgres;

    async fn reader(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    type Writer = PoolConnection<Postgres>;

    async fn writer(&self) -> Result<Self::Writer, StoreError> {
        Ok(self.pool.acquire().await?)
    }
}

#[async_trait]
impl Polls for PostgresStore {
    async fn acquire_lease(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Option<PollState>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        shared::acquire_lease::<Postgres>(&mut conn, plugin, target, holder, now_ms, expires_ms).await
    }

    async fn commit_poll(&self, poll: &PollCommit) -> Result<RecordCounts, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock fences: a replica taking the lease over waits for
        // this commit, and this commit sees a takeover that committed first.
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT lease_holder FROM poll_state WHERE plugin = $1 AND target = $2 FOR UPDATE",
        )
        .bind(&poll.plugin)
        .bind(&poll.target)
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        if holder.as_deref() != Some(poll.holder.as_str()) {
            return Err(StoreError::LeaseLost { plugin: poll.plugin.clone(), target: poll.target.clone() });
        }
        let rows = poll.record_rows();
        let mut changes = Vec::new();
        let counts = write_records(&mut tx, &rows, poll.now_ms, &mut changes, &self.group_by).await?;
        shared::poll_succeeded::<Postgres>(&mut tx, poll).await?;
        self.finish(tx, changes, poll.now_ms).await?;
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
        let mut conn = self.pool.acquire().await?;
        shared::record_poll_failure::<Postgres>(&mut conn, plugin, target, holder, error, now_ms, next_run_ms)
            .await
    }

    async fn poll_states(&self) -> Result<Vec<PollState>, StoreError> {
        shared::poll_states::<Postgres>(&mut *self.pool.acquire().await?).await
    }
}

#[async_trait]
impl Standings for PostgresStore {
    async fn standing_snapshot(&self, now_ms: i64) -> Result<StandingSnapshot, StoreError> {
        // One REPEATABLE READ transaction: every query reads the snapshot
        // its first statement took, and that statement says which
        // transactions the snapshot includes.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let taken: String =
            sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&mut *tx).await?;
        let visibility = Visibility::parse(&taken).map_err(StoreError::Corrupt)?;
        let snapshot = StandingSnapshot {
            series: super::rollup::series_seeds(&mut *tx, now_ms).await?,
            open_runs: RollupTx::open_runs(&mut *tx).await?,
            plans: shared::org_plans::<Postgres>(&mut tx).await?,
            fired: shared::fired::<Postgres>(&mut tx, month_containing(now_ms).from_ms).await?,
            visibility: Some(visibility),
        };
        tx.commit().await?;
        Ok(snapshot)
    }

    async fn long_runs(
        &self,
        org_id: &str,
        ended_after_ms: i64,
        longer_than_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        RollupTx::long_runs(&mut *self.pool.acquire().await?, org_id, ended_after_ms, longer_than_ms).await
    }

    async fn listen(&self) -> Result<Option<mpsc::UnboundedReceiver<FeedEvent>>, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(self.options.clone().application_name(FEED_APPLICATION));
        let listener = start_listening(&pool).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(follow_feed(pool, listener, sender));
        Ok(Some(receiver))
    }
}

#[async_trait]
impl Plans for PostgresStore {
    async fn org_plans(&self) -> Result<Vec<OrgPlan>, StoreError> {
        shared::org_plans::<Postgres>(&mut *self.pool.acquire().await?).await
    }

    async fn assign_plan(&self, plan: &OrgPlan, grants: &[NewGrant]) -> Result<Vec<Grant>, StoreError> {
        let mut tx = self.pool.begin().await?;
        shared::assign_plan::<Postgres>(&mut tx, plan).await?;
        let mut stored = Vec::new();
        for grant in grants {
            stored.extend(shared::insert_grant::<Postgres>(&mut tx, grant).await?);
        }
        let message = FeedMessage {
            plans: vec![plan.clone()],
            grants: if stored.is_empty() { Vec::new() } else { vec![plan.org_id.clone()] },
            ..FeedMessage::default()
        };
        notify_current(&mut tx, &message).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn insert_grant(&self, grant: &NewGrant) -> Result<Grant, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stored = shared::insert_grant::<Postgres>(&mut tx, grant)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("grant for {} not stored", grant.org_id)))?;
        let message = FeedMessage { grants: vec![grant.org_id.clone()], ..FeedMessage::default() };
        notify_current(&mut tx, &message).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn grants(&self, org_id: &str) -> Result<Vec<Grant>, StoreError> {
        shared::grants::<Postgres>(&mut *self.pool.acquire().await?, org_id).await
    }

    async fn record_notices(&self, notices: &[Notice], now_ms: i64) -> Result<usize, StoreError> {
        if notices.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let (rows, fired) = shared::insert_notices::<Postgres>(&mut tx, notices, now_ms).await?;
        notify_current(&mut tx, &FeedMessage { fired, ..FeedMessage::default() }).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn fired(&self, period_start_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        shared::fired::<Postgres>(&mut *self.pool.acquire().await?, period_start_ms).await
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn due_outbox(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
        // Claim the rows: another replica's notifier skips them until the
        // claim lapses (a replica that dies mid-delivery leaves them due again).
        let rows = sqlx::query(
            "UPDATE outbox SET next_attempt_ms = $1 + $3
             WHERE id IN (
                 SELECT id FROM outbox
                 WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL AND next_attempt_ms <= $1
                 ORDER BY next_attempt_ms, id LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             RETURNING id, message_id, endpoint, event_type, payload, created_at_ms, attempts",
        )
        .bind(now_ms)
        .bind(limit)
        .bind(OUTBOX_CLAIM_MS)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<OutboxMessage> = rows.iter().map(rows::outbox_message).collect::<Result<_, _>>()?;
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    async fn outbox_delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        shared::outbox_delivered::<Postgres>(&mut *self.pool.acquire().await?, id, now_ms).await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: i64,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        shared::outbox_attempt_failed::<Postgres>(&mut conn, id, error, now_ms, retry_at_ms).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL) AS pending,
                    COUNT(*) FILTER (WHERE delivered_at_ms IS NOT NULL) AS delivered,
                    COUNT(*) FILTER (WHERE gave_up_at_ms IS NOT NULL) AS gave_up
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        rows::outbox_counts(&row)
    }
}

#[async_trait]
impl Deliveries for PostgresStore {
    async fn purge_payloads(&self, before_ms: i64, now_ms: i64) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let done = sqlx::query(
                "UPDATE deliveries SET body = ''::bytea, headers = '[]', payload_purged_at_ms = $2
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE received_at_ms < $1 AND payload_purged_at_ms IS NULL
                     LIMIT $3
                 )",
            )
            .bind(before_ms)
            .bind(now_ms)
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            purged += done;
            if done < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    async fn replay_set(&self, plugin: &str, range: Range) -> Result<ReplaySet, StoreError> {
        // Ids come from a sequence when a delivery is inserted, not when it
        // commits: a delivery below the greatest id seen may still be in
        // flight. SHARE waits for the transactions writing deliveries and
        // holds new ones back for the two reads, so every id up to the
        // greatest has committed or rolled back, and later ids are greater.
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE deliveries IN SHARE MODE").execute(&mut *tx).await?;
        let set = shared::replay_set::<Postgres>(&mut tx, plugin, range).await?;
        tx.commit().await?;
        Ok(set)
    }

    async fn deliveries(
        &self,
        plugin: &str,
        range: Range,
        set: &ReplaySet,
        after: Option<DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        shared::deliveries::<Postgres>(&mut conn, plugin, range, set, after, limit).await
    }

    async fn delivery_records(
        &self,
        plugin: &str,
        delivery_ids: &[i64],
        event_ids: &[String],
    ) -> Result<Vec<StoredRecord>, StoreError> {
        // Without statistics (no ANALYZE yet) the planner guesses ~0.5 % of
        // the table per key and answers a page's 200 keys with a scan of
        // every record of the plugin, on every page (BENCHMARKS.md
        // "replay"). So each branch is one index probe per key: a LATERAL
        // subquery that `OFFSET 0` keeps from being flattened into a join.
        // The first names no plugin (a delivery's records are its plugin's);
        // the plugin is checked on the rows.
        let rows = sqlx::query(
            "SELECT r.id, r.plugin, r.delivery_id, r.seq, r.event_id, r.org_id, r.subject, r.metric, r.kind, r.quantity,
                    r.at_ms, r.window_start_ms, r.attributes::text AS attributes
             FROM unnest($2::bigint[]) AS d(id)
             CROSS JOIN LATERAL (SELECT * FROM usage_records WHERE delivery_id = d.id OFFSET 0) r
             UNION
             SELECT r.id, r.plugin, r.delivery_id, r.seq, r.event_id, r.org_id, r.subject, r.metric, r.kind, r.quantity,
                    r.at_ms, r.window_start_ms, r.attributes::text AS attributes
             FROM unnest($3::text[]) AS k(event_id)
             CROSS JOIN LATERAL (SELECT * FROM usage_records WHERE plugin = $1 AND event_id = k.event_id OFFSET 0) r
             ORDER BY id",
        )
        .bind(plugin)
        .bind(delivery_ids)
        .bind(event_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<String, _>("plugin")? == plugin {
                records.push(rows::stored_record(row)?);
            }
        }
        Ok(records)
    }

    async fn apply_fixes(&self, plugin: &str, fixes: &[RecordFix], now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (mut ids, mut olds, mut news, mut owners) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut inserts = Vec::new();
        for fix in fixes {
            match fix {
                RecordFix::Correct { record, delivery_id, to } => {
                    ids.push(record.id);
                    olds.push(record.record.quantity);
                    news.push(*to);
                    owners.push(*delivery_id);
                }
                RecordFix::Insert { delivery_id, seq, record } => {
                    inserts.push(RecordRow { plugin, delivery_id: Some(*delivery_id), seq: *seq, record });
                }
            }
        }
        if !ids.is_empty() {
            // Every correction and its audit row in one statement (one round
            // trip per page), each only where the record still holds what
            // the plan read; audit rows in the order of the fixes.
            let corrected: i64 = sqlx::query_scalar(
                "WITH fix AS (
                     SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::bigint[])
                         WITH ORDINALITY AS f(id, old_q, new_q, owner, ord)
                 ), done AS (
                     UPDATE usage_records r SET quantity = fix.new_q, delivery_id = fix.owner FROM fix
                     WHERE r.id = fix.id AND r.quantity = fix.old_q
                     RETURNING r.id, r.plugin, r.event_id, r.seq, fix.old_q, fix.new_q, fix.ord
                 ), audit AS (
                     INSERT INTO corrections (record_id, plugin, event_id, seq, old_quantity, new_quantity, corrected_at_ms)
                     SELECT id, plugin, event_id, seq, old_q, new_q, $5 FROM done ORDER BY ord
                     RETURNING 1
                 )
                 SELECT COUNT(*) FROM audit",
            )
            .bind(&ids)
            .bind(&olds)
            .bind(&news)
            .bind(&owners)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            if corrected != ids.len() as i64 {
                return Err(StoreError::Conflict(format!(
                    "{} of {} records to correct no longer hold what was read",
                    ids.len() as i64 - corrected,
                    ids.len()
                )));
            }
        }
        let mut rows: Vec<&RecordRow> = inserts.iter().collect();
        if insert_records(&mut tx, &mut rows).await?.len() != rows.len() {
            return Err(StoreError::Conflict("a record to insert was stored meanwhile".to_owned()));
        }
        self.finish(tx, fixes.iter().map(|fix| fix_change(fix, &self.group_by)).collect(), now_ms).await
    }

    async fn corrections(
        &self,
        plugin: &str,
        event_id: &str,
    ) -> Result<Vec<(i64, Decimal, Decimal)>, StoreError> {
        shared::corrections::<Postgres>(&mut *self.pool.acquire().await?, plugin, event_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meter::Kind;

    fn record(event_id: &str) -> UsageRecord {
        UsageRecord {
            event_id: event_id.to_owned(),
            org_id: "acme".to_owned(),
            subject: "sbx-1".to_owned(),
            metric: "sandbox_cpu_core_seconds".to_owned(),
            kind: Kind::Delta,
            quantity: Decimal::new(15, 1),
            at_ms: 1_754_513_976_000,
            window_start_ms: None,
            attributes: BTreeMap::from([("template".to_owned(), "base".to_owned())]),
        }
    }

    async fn plan_mode(tx: &mut PgConnection) -> String {
        sqlx::query_scalar("SELECT current_setting('plan_cache_mode')").fetch_one(tx).await.expect("setting")
    }

    /// The records insert runs with generic plans (`GENERIC_PLANS`): what
    /// follows it in the transaction is planned per call again, and the
    /// foreign key to the delivery is still checked.
    #[tokio::test]
    async fn the_records_insert_alone_uses_generic_plans_and_keeps_its_foreign_key() {
        let database = meterd_testkit::postgres::TestDatabase::fresh("meterd_test").await;
        let store = PostgresStore::open(&database.url).await.expect("open");
        store.migrate().await.expect("migrate");
        let mut tx = store.pool.begin().await.expect("begin");
        assert_eq!(plan_mode(&mut tx).await, "force_custom_plan");
        let delivery: i64 = sqlx::query_scalar(
            "INSERT INTO deliveries (plugin, event_id, received_at_ms, headers, body, record_count)
             VALUES ('e2b', 'ev-1', 0, '[]', '', 1) RETURNING id",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("delivery");
        // Eight records: eight foreign-key checks, all on the generic plan.
        let records: Vec<UsageRecord> = (0..8).map(|i| record(&format!("ev-{i}"))).collect();
        let rows: Vec<RecordRow> = records
            .iter()
            .map(|record| RecordRow { plugin: "e2b", delivery_id: Some(delivery), seq: 0, record })
            .collect();
        let inserted = insert_records(&mut tx, &mut rows.iter().collect::<Vec<_>>()).await.expect("insert");
        assert_eq!(inserted.len(), 8);
        assert_eq!(plan_mode(&mut tx).await, "force_custom_plan", "after the insert");
        tx.commit().await.expect("commit");

        // A record naming no stored delivery is refused, as before.
        let orphan = record("ev-orphan");
        let row = RecordRow { plugin: "e2b", delivery_id: Some(delivery + 1_000), seq: 0, record: &orphan };
        let mut tx = store.pool.begin().await.expect("begin");
        let refused = insert_records(&mut tx, &mut [&row]).await.expect_err("no such delivery");
        assert!(refused.to_string().contains("foreign key"), "{refused}");
    }
}
