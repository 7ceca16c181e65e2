//! The SQLite engine: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it is acknowledged), one writer connection, a small reader pool,
//! WAL checkpoints on a connection of their own (`store::checkpoint`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::checkpoint::{self, Checkpointer};
use super::engine::Connections;
use super::rollup::{
    self, Maintained, NoTails, Planned, RollupTx, RowsToWrite, SubjectTails, attributes_column,
};
use super::rows;
use super::shared;
use super::sqlite_direct::{Direct, Value};
use super::sqlite_rollup;
use super::sqlite_writer::{Step, WriteTx, Writer, WriterGuard};
use super::tails::TailMemory;
use super::{
    CommitHook, CommitOutcome, Deliveries, Delivery, DeliveryCursor, Ingest, NewGrant, Notice, OrgChange,
    OrgEffect, OrgPlan, Outbox, OutboxCounts, OutboxMessage, PURGE_BATCH, Plans, PollCommit, PollState,
    Polls, RecordCounts, RecordFix, RecordRow, ReplaySet, RollupCheck, Rollups, StandingSnapshot, Standings,
    Store, StoreError, StoredDelivery, StoredRecord, declared, fix_change, headers_column, new_records,
    org_change,
};
use crate::meter::Aggregation;
use crate::meter::period::{Range, month_containing};
use crate::meter::rollup::groups::{GroupInput, GroupLevelInput};
use crate::meter::rollup::query::{ReadPlan, RollupInput};
use crate::meter::rollup::{HOUR_MS, SeriesKey};
use crate::plans::credits::Grant;
use crate::plans::standing::Run;
use crate::record::UsageRecord;

/// SQLite allows 32,766 bound parameters per statement; stay well under.
const KEYS_PER_LOOKUP: usize = 2_000;
const READERS: u32 = 4;

pub struct SqliteStore {
    /// The one writer connection (`store::sqlite_writer`).
    writer: Writer,
    pub(super) readers: SqlitePool,
    hook: OnceLock<Arc<dyn CommitHook>>,
    /// The one writer's memory of subjects' tails.
    pub(super) tails: TailMemory,
    /// The attribute keys rolled up per group.
    group_by: Vec<String>,
    checkpointer: Checkpointer,
    /// How to open a connection of its own (the rollup check's).
    options: SqliteConnectOptions,
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
        let writer = options
            .clone()
            .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string())
            // A multi-row statement that may have to be undone (the
            // rollup upserts) journals the pages it changes; past 64 KiB
            // SQLite moves that journal to a temporary file, created,
            // unlinked and written on every commit. Kept in memory it is
            // bounded by the batch. (The check, whose temporary tables
            // hold whole rollups, runs on a connection of its own.)
            .pragma("temp_store", "memory")
            .connect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let checkpointer = Checkpointer::start(&options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Ok(Self {
            writer: Writer::new(writer),
            readers,
            hook: OnceLock::new(),
            tails: TailMemory::default(),
            group_by: Vec::new(),
            checkpointer,
            options,
        })
    }

    /// Keeps group hours for these attribute keys (before `migrate`, which
    /// rebuilds the rollups if the database holds other keys').
    pub fn with_group_by(mut self, keys: Vec<String>) -> Self {
        self.group_by = keys;
        self
    }

    /// Commits `tx` after bringing the rollups up to date, telling the hook
    /// what it changed and storing the notices that causes; undoes the
    /// hook's work if the commit fails. Remembers the tails of the subjects
    /// written once committed (and wakes the checkpointer), and forgets all
    /// tails on any error.
    async fn finish(&self, tx: WriteTx<'_>, changes: Vec<OrgChange>, now_ms: i64) -> Result<(), StoreError> {
        // This transaction holds the one writer connection, so whoever holds
        // the guard has committed already and is only settling its tails.
        let _settling = self.tails.settle().await;
        match self.maintain_and_commit(tx, changes, now_ms).await {
            Ok(tails) => {
                self.tails.remember(tails);
                self.checkpointer.committed();
                Ok(())
            }
            Err(e) => {
                self.tails.forget();
                Err(e)
            }
        }
    }

    async fn maintain_and_commit(
        &self,
        mut tx: WriteTx<'_>,
        changes: Vec<OrgChange>,
        now_ms: i64,
    ) -> Result<SubjectTails, StoreError> {
        if changes.is_empty() {
            return self.commit_maintained(tx, Maintained::default(), now_ms).await;
        }
        // Every read but the rows' (none in the steady state: the tails
        // answer), then the rest in the lock of the handle that the
        // `COMMIT` takes: loading the rows is no round trip of its own.
        let planned = rollup::plan(&mut *tx, &changes, Some(&self.tails), &self.group_by).await?;
        match tx.with_handle(|direct| self.finish_in_lock(direct, planned, now_ms)).await? {
            Step::Committed(tails) => Ok(tails),
            Step::Open(Unfinished::Noticed { maintained, notices }) => {
                let Maintained { rows, effects, tails } = *maintained;
                self.commit_noticed(tx, &rows, &effects, &notices, now_ms).await?;
                Ok(tails)
            }
            // The tails were stale (another connection committed): the
            // work again from reads alone, in the same transaction.
            Step::Open(Unfinished::Stale) => {
                let maintained = rollup::maintain(&mut *tx, &changes, &NoTails, &self.group_by).await?;
                self.commit_maintained(tx, maintained, now_ms).await
            }
        }
    }

    /// Loads a planned commit's rollup rows on the handle, works out the
    /// rest, and writes and commits — unless the tails were stale, or the
    /// commit hook has notices to insert first (through sqlx).
    fn finish_in_lock(
        &self,
        direct: &mut Direct<'_>,
        planned: Planned,
        now_ms: i64,
    ) -> Result<Step<SubjectTails, Unfinished>, StoreError> {
        let stored = sqlite_rollup::load_rows_direct(direct, &planned.keys)?;
        if planned.stale(Some(&self.tails), &stored) {
            return Ok(Step::Open(Unfinished::Stale));
        }
        let mut stored_steps = BTreeMap::new();
        for (series, hour) in planned.resummarized(&stored) {
            let range = Range { from_ms: hour, to_ms: hour + HOUR_MS };
            let steps = sqlite_rollup::steps_in_direct(direct, &series, range)?;
            stored_steps.insert((series, hour), steps);
        }
        let maintained = planned.finish(stored, stored_steps)?;
        let hook = self.hook.get().filter(|_| !maintained.effects.is_empty());
        let notices = hook.map(|h| h.records_written(None, &maintained.effects, now_ms)).unwrap_or_default();
        if !notices.is_empty() {
            return Ok(Step::Open(Unfinished::Noticed { maintained: Box::new(maintained), notices }));
        }
        let written =
            sqlite_rollup::write_rows(direct, &maintained.rows).and_then(|()| direct.execute_batch("COMMIT"));
        match (written, hook) {
            (Ok(()), hook) => hook.into_iter().for_each(|h| h.committed(0)),
            (Err(e), hook) => {
                hook.into_iter().for_each(|h| h.rolled_back(None, &maintained.effects, &notices));
                return Err(e);
            }
        }
        Ok(Step::Committed(maintained.tails))
    }

    /// Writes `maintained`'s rows and commits, the commit hook's notices
    /// first when it has any.
    async fn commit_maintained(
        &self,
        tx: WriteTx<'_>,
        maintained: Maintained,
        now_ms: i64,
    ) -> Result<SubjectTails, StoreError> {
        let Maintained { rows, effects, tails } = maintained;
        match self.hook.get().filter(|_| !effects.is_empty()) {
            None => tx.commit_after(|direct| sqlite_rollup::write_rows(direct, &rows)).await?,
            Some(hook) => {
                let notices = hook.records_written(None, &effects, now_ms);
                self.commit_noticed(tx, &rows, &effects, &notices, now_ms).await?;
            }
        }
        Ok(tails)
    }

    /// Inserts the notices the commit hook gave for `effects`, writes the
    /// rollup rows and commits; tells the hook how it went.
    async fn commit_noticed(
        &self,
        mut tx: WriteTx<'_>,
        rows: &RowsToWrite,
        effects: &[OrgEffect],
        notices: &[Notice],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = async {
            let (fired, _) = shared::insert_notices::<Sqlite>(&mut tx, notices, now_ms).await?;
            tx.commit_after(|direct| sqlite_rollup::write_rows(direct, rows)).await?;
            Ok::<_, StoreError>(fired)
        }
        .await;
        let Some(hook) = self.hook.get() else { return result.map(|_| ()) };
        match result {
            Ok(fired) => {
                hook.committed(fired);
                Ok(())
            }
            Err(e) => {
                hook.rolled_back(None, effects, notices);
                Err(e)
            }
        }
    }
}

/// Why a commit's last step on the handle ([`SqliteStore::finish_in_lock`])
/// left the transaction open.
enum Unfinished {
    /// Worked out, but the hook's notices go in first (nothing written).
    Noticed { maintained: Box<Maintained>, notices: Vec<Notice> },
    /// The tails were stale: nothing worked out.
    Stale,
}

/// Writes records by their dedup key (plugin, event id, seq): a new key is
/// inserted; a known key with the same quantity is a duplicate; a known key
/// with another quantity is a correction (quantity replaced, audit row kept).
async fn write_records(
    tx: &mut WriteTx<'_>,
    rows: &[RecordRow<'_>],
    now_ms: i64,
    changes: &mut Vec<OrgChange>,
    group_by: &[String],
) -> Result<RecordCounts, StoreError> {
    if rows.is_empty() {
        return Ok(RecordCounts::default());
    }
    let inserted = {
        let mut direct = tx.direct().await?;
        insert_first_of_keys(&mut direct, rows)?
    };
    resolve_records(tx, rows, inserted, now_ms, changes, group_by).await
}

/// The rows that insert the first of their keys in `rows`, and whether
/// each was new: the first half of [`write_records`], on a handle the
/// caller has locked already (ingest's, which inserted the deliveries).
fn insert_first_of_keys(direct: &mut Direct<'_>, rows: &[RecordRow<'_>]) -> Result<FirstInserts, StoreError> {
    let mut seen = HashSet::with_capacity(rows.len());
    let first: Vec<bool> =
        rows.iter().map(|row| seen.insert((row.plugin, row.record.event_id.as_str(), row.seq))).collect();
    let firsts: Vec<&RecordRow> = rows.iter().zip(&first).filter(|(_, f)| **f).map(|(r, _)| r).collect();
    let inserted = insert_records(direct, &firsts)?;
    Ok(FirstInserts { first, inserted })
}

/// Which rows of a batch were the first of their key, and of those, in
/// order, which inserted it.
struct FirstInserts {
    first: Vec<bool>,
    inserted: Vec<bool>,
}

/// The second half of [`write_records`]: counts the rows that inserted
/// their key and settles the rest (duplicates and corrections) against
/// what is stored.
async fn resolve_records(
    tx: &mut SqliteConnection,
    rows: &[RecordRow<'_>],
    FirstInserts { first, inserted }: FirstInserts,
    now_ms: i64,
    changes: &mut Vec<OrgChange>,
    group_by: &[String],
) -> Result<RecordCounts, StoreError> {
    let mut counts = RecordCounts::default();
    let mut inserted = inserted.into_iter();
    // Per row: whether this row inserted its key.
    let new: Vec<bool> = first.iter().map(|f| *f && inserted.next().unwrap_or(false)).collect();
    // The rest are stored already: look up what they hold now.
    let stored_keys: Vec<&RecordRow> =
        rows.iter().zip(first.iter().zip(&new)).filter(|(_, (f, n))| **f && !**n).map(|(r, _)| r).collect();
    let mut stored = lookup_records(tx, &stored_keys).await?;
    for (row, is_new) in rows.iter().zip(new) {
        if is_new {
            counts.inserted += 1;
            changes.push(org_change(row.record, None, group_by));
            continue;
        }
        let key = record_key(row);
        // The key is stored: from before the batch, or by an earlier row of
        // it, which this row then revises as it would in a later batch (so
        // what is stored does not depend on how deliveries were batched).
        if !stored.contains_key(&key) {
            stored.extend(lookup_records(tx, &[row]).await?);
        }
        let (id, current, attributes) = stored
            .get_mut(&key)
            .ok_or_else(|| StoreError::Corrupt(format!("record {key:?} neither inserted nor stored")))?;
        let quantity = meterd_units::format_quantity(row.record.quantity);
        if *current == quantity {
            counts.duplicates += 1;
            continue;
        }
        let previous = meterd_units::parse_quantity(current)
            .map_err(|e| StoreError::Corrupt(format!("stored quantity: {e}")))?;
        let correction = Correction { id: *id, plugin: row.plugin, seq: row.seq, record: row.record };
        if !correct(tx, &correction, current, &quantity, row.delivery_id, now_ms).await? {
            return Err(StoreError::Corrupt(format!("record {key:?} changed under the one writer")));
        }
        // A later row of this key in the batch corrects from this one.
        *current = quantity;
        // A correction changes the quantity only: the record stays in the
        // groups of its stored attributes.
        let attributes = declared(&super::rollup::attributes_of(attributes)?, group_by);
        changes.push(OrgChange { attributes, ..org_change(row.record, Some(previous), group_by) });
        counts.corrected += 1;
    }
    Ok(counts)
}

/// A record's dedup key: (plugin, event id, seq).
type OwnedKey = (String, String, i64);

fn record_key(row: &RecordRow<'_>) -> OwnedKey {
    (row.plugin.to_owned(), row.record.event_id.clone(), row.seq)
}

/// The stored (row id, quantity text, attributes JSON) of these records'
/// keys.
async fn lookup_records(
    tx: &mut SqliteConnection,
    rows: &[&RecordRow<'_>],
) -> Result<HashMap<OwnedKey, (i64, String, String)>, StoreError> {
    let mut out = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(KEYS_PER_LOOKUP) {
        let mut lookup = QueryBuilder::<Sqlite>::new(
            "SELECT id, plugin, event_id, seq, quantity, attributes FROM usage_records WHERE (plugin, event_id) IN (",
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
            out.insert(
                (found.try_get("plugin")?, found.try_get("event_id")?, found.try_get("seq")?),
                (found.try_get("id")?, found.try_get("quantity")?, found.try_get("attributes")?),
            );
        }
    }
    Ok(out)
}

/// A stored record to correct: its row id and dedup key.
struct Correction<'a> {
    id: i64,
    plugin: &'a str,
    seq: i64,
    record: &'a UsageRecord,
}

/// Replaces a record's quantity if it is still `from` (texts in canonical
/// form), makes `delivery_id` the delivery that last set it, and keeps an
/// audit row. Returns whether the record was still `from`.
async fn correct(
    tx: &mut SqliteConnection,
    c: &Correction<'_>,
    from: &str,
    to: &str,
    delivery_id: Option<i64>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE usage_records SET quantity = ?1, delivery_id = ?2 WHERE id = ?3 AND quantity = ?4",
    )
    .bind(to)
    .bind(delivery_id)
    .bind(c.id)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO corrections (record_id, plugin, event_id, seq, old_quantity, new_quantity, corrected_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
    Ok(true)
}

const DELIVERY_INSERT: &str = "INSERT INTO deliveries \
    (plugin, event_id, received_at_ms, path, query, headers, body, record_count) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (plugin, event_id) DO NOTHING";

/// Inserts deliveries whose keys are new, a row at a time on the writer's
/// own handle (`sqlite_direct`); returns the new ones' ids by key.
fn insert_deliveries(
    direct: &mut Direct<'_>,
    batch: &[Delivery],
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let headers: Vec<String> = batch.iter().map(|d| headers_column(&d.headers)).collect();
    let mut insert = direct.prepare(DELIVERY_INSERT)?;
    let mut ids = HashMap::with_capacity(batch.len());
    for (d, headers) in batch.iter().zip(&headers) {
        let row = insert.insert(&[
            d.plugin.as_str().into(),
            d.event_id.as_str().into(),
            d.received_at_ms.into(),
            d.path.as_str().into(),
            d.query.as_deref().into(),
            headers.as_str().into(),
            Value::Blob(&d.body),
            (d.records.len() as i64).into(),
        ])?;
        // A key stored before, or twice in the batch, is skipped: the
        // first delivery of a new key gets its id, the rest are duplicates.
        if row.changes == 1 {
            ids.insert((d.plugin.clone(), d.event_id.clone()), row.rowid);
        }
    }
    Ok(ids)
}

const RECORD_INSERT: &str = "INSERT INTO usage_records \
    (plugin, event_id, seq, delivery_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (plugin, event_id, seq) DO NOTHING";

/// Inserts records whose keys are new, a row at a time on the writer's own
/// handle (`sqlite_direct`); answers for each row whether it was inserted
/// (a stored key is skipped).
fn insert_records(direct: &mut Direct<'_>, rows: &[&RecordRow<'_>]) -> Result<Vec<bool>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            let attributes = attributes_column(&row.record.attributes);
            (meterd_units::format_quantity(row.record.quantity), attributes)
        })
        .collect();
    let mut insert = direct.prepare(RECORD_INSERT)?;
    let mut inserted = Vec::with_capacity(rows.len());
    for (row, (quantity, attributes)) in rows.iter().zip(&texts) {
        let r = row.record;
        let step = insert.insert(&[
            row.plugin.into(),
            r.event_id.as_str().into(),
            row.seq.into(),
            row.delivery_id.into(),
            r.org_id.as_str().into(),
            r.subject.as_str().into(),
            r.metric.as_str().into(),
            r.kind.as_str().into(),
            quantity.as_str().into(),
            r.at_ms.into(),
            r.window_start_ms.into(),
            attributes.as_str().into(),
        ])?;
        inserted.push(step.changes == 1);
    }
    Ok(inserted)
}

#[async_trait]
impl Rollups for SqliteStore {
    async fn rollup_input(
        &self,
        series: &SeriesKey,
        plan: &ReadPlan,
        aggregation: Aggregation,
        from_ms: i64,
    ) -> Result<RollupInput, StoreError> {
        // A read transaction: one snapshot of the WAL for every part.
        let mut tx = self.readers.begin().await?;
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
        let mut tx = self.readers.begin().await?;
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
        let mut tx = self.readers.begin().await?;
        let input = super::rollup::read_group_level_input(&mut *tx, series, key, plan, range).await?;
        tx.commit().await?;
        Ok(input)
    }

    async fn rebuild_rollups(&self) -> Result<u64, StoreError> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
        let records = sqlite_rollup::rebuild(&mut tx, &self.group_by).await?;
        tx.commit().await?;
        Ok(records)
    }

    /// On a connection of its own: its temporary tables (whole rollups)
    /// stay on disk, and commits go on beside it (it reads one snapshot).
    async fn check_rollups(&self, examples: usize) -> Result<RollupCheck, StoreError> {
        let mut conn = self.options.connect().await?;
        let report = sqlite_rollup::check(&mut conn, examples, &self.group_by).await;
        let _ = conn.close().await;
        report
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await?;
        super::migrations::SQLITE
            .migrator()
            .await?
            .run_direct(&mut *writer)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let mut tx = writer.begin().await?;
        if !sqlite_rollup::built(&mut tx, &self.group_by).await? {
            let records = sqlite_rollup::rebuild(&mut tx, &self.group_by).await?;
            tracing::info!(records, group_by = ?self.group_by, "rollups built from the stored records");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }
}

#[async_trait]
impl Ingest for SqliteStore {
    async fn commit(&self, batch: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with_first_statement();
        // One lock of the handle (one round trip to sqlx's worker) for the
        // `BEGIN`, the deliveries, learning which are new, and their
        // records.
        let (outcomes, rows, inserted) = {
            let mut direct = tx.direct().await?;
            direct.execute_batch("BEGIN")?;
            let new_ids = insert_deliveries(&mut direct, batch)?;
            let (outcomes, rows) = new_records(batch, new_ids);
            let inserted = insert_first_of_keys(&mut direct, &rows)?;
            (outcomes, rows, inserted)
        };
        let now_ms = batch.iter().map(|d| d.received_at_ms).max().unwrap_or_default();
        let mut changes = Vec::new();
        resolve_records(&mut tx, &rows, inserted, now_ms, &mut changes, &self.group_by).await?;
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
impl Connections for SqliteStore {
    type Engine = Sqlite;

    async fn reader(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        Ok(self.readers.acquire().await?)
    }

    type Writer = WriterGuard;

    async fn writer(&self) -> Result<WriterGuard, StoreError> {
        self.writer.lock().await
    }
}

#[async_trait]
impl Polls for SqliteStore {
    async fn acquire_lease(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Option<PollState>, StoreError> {
        let mut conn = self.writer.lock().await?;
        shared::acquire_lease::<Sqlite>(&mut conn, plugin, target, holder, now_ms, expires_ms).await
    }

    async fn commit_poll(&self, poll: &PollCommit) -> Result<RecordCounts, StoreError> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
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
        let rows = poll.record_rows();
        let mut changes = Vec::new();
        let counts = write_records(&mut tx, &rows, poll.now_ms, &mut changes, &self.group_by).await?;
        shared::poll_succeeded::<Sqlite>(&mut tx, poll).await?;
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
        let mut conn = self.writer.lock().await?;
        shared::record_poll_failure::<Sqlite>(&mut conn, plugin, target, holder, error, now_ms, next_run_ms)
            .await
    }

    async fn poll_states(&self) -> Result<Vec<PollState>, StoreError> {
        shared::poll_states::<Sqlite>(&mut *self.readers.acquire().await?).await
    }
}

#[async_trait]
impl Standings for SqliteStore {
    async fn standing_snapshot(&self, now_ms: i64) -> Result<StandingSnapshot, StoreError> {
        // One read transaction: the rollups read are one snapshot.
        let mut tx = self.readers.begin().await?;
        let series = super::rollup::series_seeds(&mut *tx, now_ms).await?;
        let open_runs = RollupTx::open_runs(&mut *tx).await?;
        tx.rollback().await?;
        Ok(StandingSnapshot {
            series,
            open_runs,
            plans: self.org_plans().await?,
            fired: self.fired(month_containing(now_ms).from_ms).await?,
            visibility: None,
        })
    }

    async fn long_runs(
        &self,
        org_id: &str,
        ended_after_ms: i64,
        longer_than_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        RollupTx::long_runs(&mut *conn, org_id, ended_after_ms, longer_than_ms).await
    }
}

#[async_trait]
impl Plans for SqliteStore {
    async fn org_plans(&self) -> Result<Vec<OrgPlan>, StoreError> {
        shared::org_plans::<Sqlite>(&mut *self.readers.acquire().await?).await
    }

    async fn assign_plan(&self, plan: &OrgPlan, grants: &[NewGrant]) -> Result<Vec<Grant>, StoreError> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
        shared::assign_plan::<Sqlite>(&mut tx, plan).await?;
        let mut stored = Vec::new();
        for grant in grants {
            stored.extend(shared::insert_grant::<Sqlite>(&mut tx, grant).await?);
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn insert_grant(&self, grant: &NewGrant) -> Result<Grant, StoreError> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
        let stored = shared::insert_grant::<Sqlite>(&mut tx, grant)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("grant for {} not stored", grant.org_id)))?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn grants(&self, org_id: &str) -> Result<Vec<Grant>, StoreError> {
        shared::grants::<Sqlite>(&mut *self.readers.acquire().await?, org_id).await
    }

    async fn record_notices(&self, notices: &[Notice], now_ms: i64) -> Result<usize, StoreError> {
        if notices.is_empty() {
            return Ok(0);
        }
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
        let (rows, _) = shared::insert_notices::<Sqlite>(&mut tx, notices, now_ms).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn fired(&self, period_start_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        shared::fired::<Sqlite>(&mut *self.readers.acquire().await?, period_start_ms).await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn due_outbox(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, message_id, endpoint, event_type, payload, created_at_ms, attempts FROM outbox
             WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, id LIMIT ?2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(rows::outbox_message).collect()
    }

    async fn outbox_delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        shared::outbox_delivered::<Sqlite>(&mut *self.writer.lock().await?, id, now_ms).await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: i64,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await?;
        shared::outbox_attempt_failed::<Sqlite>(&mut conn, id, error, now_ms, retry_at_ms).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(delivered_at_ms IS NULL AND gave_up_at_ms IS NULL), 0) AS pending,
                    COALESCE(SUM(delivered_at_ms IS NOT NULL), 0) AS delivered,
                    COALESCE(SUM(gave_up_at_ms IS NOT NULL), 0) AS gave_up
             FROM outbox",
        )
        .fetch_one(&self.readers)
        .await?;
        rows::outbox_counts(&row)
    }
}

#[async_trait]
impl Deliveries for SqliteStore {
    async fn purge_payloads(&self, before_ms: i64, now_ms: i64) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let done = sqlx::query(
                "UPDATE deliveries SET body = x'', headers = '[]', payload_purged_at_ms = ?2
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE received_at_ms < ?1 AND payload_purged_at_ms IS NULL
                     LIMIT ?3
                 )",
            )
            .bind(before_ms)
            .bind(now_ms)
            .bind(PURGE_BATCH)
            .execute(&mut *self.writer.lock().await?)
            .await?
            .rows_affected();
            purged += done;
            if done < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    async fn replay_set(&self, plugin: &str, range: Range) -> Result<ReplaySet, StoreError> {
        // One writer commits in id order: every delivery up to the greatest
        // id this snapshot sees has committed, and later ones get greater ids.
        shared::replay_set::<Sqlite>(&mut *self.readers.acquire().await?, plugin, range).await
    }

    async fn deliveries(
        &self,
        plugin: &str,
        range: Range,
        set: &ReplaySet,
        after: Option<DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        shared::deliveries::<Sqlite>(&mut conn, plugin, range, set, after, limit).await
    }

    async fn delivery_records(
        &self,
        plugin: &str,
        delivery_ids: &[i64],
        event_ids: &[String],
    ) -> Result<Vec<StoredRecord>, StoreError> {
        // The lists go in as JSON arrays (no bound-parameter limit). `+plugin`
        // keeps the planner off the (plugin, …) unique index in the first
        // branch, which would scan every record of the plugin.
        let rows = sqlx::query(
            "SELECT id, delivery_id, seq, event_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes
             FROM usage_records WHERE +plugin = ?1 AND delivery_id IN (SELECT value FROM json_each(?2))
             UNION
             SELECT id, delivery_id, seq, event_id, org_id, subject, metric, kind, quantity, at_ms, window_start_ms, attributes
             FROM usage_records WHERE plugin = ?1 AND event_id IN (SELECT value FROM json_each(?3))
             ORDER BY id",
        )
        .bind(plugin)
        .bind(serde_json::to_string(delivery_ids).unwrap_or_else(|_| "[]".to_owned()))
        .bind(serde_json::to_string(event_ids).unwrap_or_else(|_| "[]".to_owned()))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(rows::stored_record).collect()
    }

    async fn apply_fixes(&self, plugin: &str, fixes: &[RecordFix], now_ms: i64) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin().await?;
        let mut inserts = Vec::new();
        for fix in fixes {
            match fix {
                RecordFix::Correct { record, delivery_id, to } => {
                    let correction =
                        Correction { id: record.id, plugin, seq: record.seq, record: &record.record };
                    let from = meterd_units::format_quantity(record.record.quantity);
                    let to = meterd_units::format_quantity(*to);
                    if !correct(&mut tx, &correction, &from, &to, Some(*delivery_id), now_ms).await? {
                        return Err(StoreError::Conflict(format!(
                            "record {}#{} is no longer {from}",
                            record.record.event_id, record.seq
                        )));
                    }
                }
                RecordFix::Insert { delivery_id, seq, record } => {
                    inserts.push(RecordRow { plugin, delivery_id: Some(*delivery_id), seq: *seq, record });
                }
            }
        }
        let rows: Vec<&RecordRow> = inserts.iter().collect();
        if !insert_records(&mut tx.direct().await?, &rows)?.into_iter().all(|new| new) {
            return Err(StoreError::Conflict("a record to insert was stored meanwhile".to_owned()));
        }
        self.finish(tx, fixes.iter().map(|fix| fix_change(fix, &self.group_by)).collect(), now_ms).await
    }

    async fn corrections(
        &self,
        plugin: &str,
        event_id: &str,
    ) -> Result<Vec<(i64, rust_decimal::Decimal, rust_decimal::Decimal)>, StoreError> {
        shared::corrections::<Sqlite>(&mut *self.readers.acquire().await?, plugin, event_id).await
    }
}
