//! meterd's persistence behind one trait, so the engines are
//! interchangeable and the same tests run against each. SQLite (embedded,
//! WAL, `synchronous=FULL`) is the default engine; PostgreSQL serves
//! replicas.
//!
//! A crate of its own: it needs no WebAssembly runtime, HTTP server or
//! metrics and cannot reach them, and an edit to the gateway does not
//! recompile it. The gateway writes only through its group committer
//! (`meterd::store::GroupCommitter`), which batches concurrent deliveries
//! into one [`Ingest::commit`] (one fsync for many requests).

mod api_key;
mod checkpoint;
mod engine;
mod feed;
mod migrations;
mod postgres;
mod postgres_rollup;
mod rollup;
mod rows;
mod shared;
mod sqlite;
mod sqlite_direct;
mod sqlite_rollup;
mod sqlite_writer;
mod tails;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use meterd_core::{meter, plans, record};

use crate::meter::period::Range;
use crate::meter::rollup::groups::{GroupInput, GroupLevelInput};
use crate::meter::rollup::query::{ReadPlan, RollupInput};
use crate::meter::rollup::{Hour, SeriesKey};
use crate::meter::{Aggregation, Point};
use crate::plans::credits::Grant;
use crate::plans::standing::{Change, Effect, Run};
use crate::record::UsageRecord;

pub use api_key::{ApiKey, Scope};
pub use feed::{FeedEvent, FeedMessage, TxId, Visibility};
pub use postgres::{FEED_APPLICATION, PostgresStore};
pub use rollup::RollupCheck;
pub use sqlite::SqliteStore;

/// What the store's tests and the gateway's share: a store on each engine
/// (a temporary SQLite file; a fresh PostgreSQL database), records and
/// deliveries to commit, and [`conformance!`].
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

/// One accepted webhook delivery: its raw payload and what it normalized to.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub plugin: String,
    pub event_id: String,
    pub received_at_ms: i64,
    /// The request path below the plugin's route (`/` for the route itself).
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub records: Vec<UsageRecord>,
}

/// What committing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The delivery's (plugin, event id) was already stored: nothing new was
    /// counted.
    pub duplicate: bool,
}

/// A delivery's stored raw payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Kept {
        /// As [`Delivery::path`] and [`Delivery::query`].
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Emptied after the retention period (the dedup key stays).
    Purged { at_ms: i64 },
}

/// A stored delivery as replay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub id: i64,
    pub event_id: String,
    pub received_at_ms: i64,
    pub payload: Payload,
}

/// Where a page of [`Store::deliveries`] ends: the next page starts after
/// this (received at, id).
pub type DeliveryCursor = (i64, i64);

/// A stored usage record, with its row id and the delivery that last set it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub id: i64,
    /// `None`: set by a poll.
    pub delivery_id: Option<i64>,
    pub seq: i64,
    pub record: UsageRecord,
}

/// One repair of stored usage (the gateway's replay makes them). Each
/// applies only if the database still holds what it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordFix {
    /// Sets a stored record's quantity (zero withdraws it), with an audit
    /// row, and makes `delivery_id` its owner; `record.record.quantity` is
    /// the quantity it must still have.
    Correct { record: StoredRecord, delivery_id: i64, to: rust_decimal::Decimal },
    /// Stores a record a delivery now yields under a key nothing holds.
    Insert { delivery_id: i64, seq: i64, record: UsageRecord },
}

/// Deliveries whose payload one purge statement empties at most, so a
/// large backlog is purged in short transactions.
pub(crate) const PURGE_BATCH: i64 = 5_000;

/// What writing a set of records did, by the dedup key
/// (plugin, event id, seq).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecordCounts {
    pub inserted: usize,
    /// Same key, same quantity: already counted.
    pub duplicates: usize,
    /// Same key, another quantity: replaced, with an audit row.
    pub corrected: usize,
}

/// One poll's answer, to be committed together with the cursor it advances.
#[derive(Debug, Clone)]
pub struct PollCommit {
    pub plugin: String,
    pub target: String,
    /// The lease holder committing; the commit is refused if it lost the lease.
    pub holder: String,
    pub records: Vec<UsageRecord>,
    /// `None` keeps the stored cursor.
    pub next_cursor: Option<String>,
    pub now_ms: i64,
    pub next_run_ms: i64,
    pub lease_expires_ms: i64,
}

/// The stored state of one (plugin, target) poller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PollState {
    pub plugin: String,
    pub target: String,
    pub cursor: Option<String>,
    pub lease_holder: Option<String>,
    pub lease_expires_ms: i64,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub consecutive_failures: i64,
    pub next_run_ms: i64,
}

/// A database URL as it may be shown: the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// One record to write, with its dedup key parts (both engines).
pub(crate) struct RecordRow<'a> {
    pub plugin: &'a str,
    pub delivery_id: Option<i64>,
    pub seq: i64,
    pub record: &'a UsageRecord,
}

/// What committing `batch` does, given the ids of the deliveries that were
/// new by key (both engines): one outcome per delivery (the first of a new
/// key claims its id; any other is a duplicate), and the records of the
/// new ones to write.
pub(crate) fn new_records<'a>(
    batch: &'a [Delivery],
    mut new_ids: std::collections::HashMap<(String, String), i64>,
) -> (Vec<CommitOutcome>, Vec<RecordRow<'a>>) {
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
    (outcomes, rows)
}

impl PollCommit {
    /// The poll's records to write (set by no delivery).
    pub(crate) fn record_rows(&self) -> Vec<RecordRow<'_>> {
        with_seqs(&self.records)
            .into_iter()
            .map(|(seq, record)| RecordRow { plugin: &self.plugin, delivery_id: None, seq, record })
            .collect()
    }
}

/// The change a written record makes, for the commit hook: an insert
/// (`previous` is `None`) or a correction from `previous`, with the
/// record's values of the `group_by` keys (the only attributes the
/// rollups read; copying them all is a cost per record on the writer).
pub(crate) fn org_change(
    record: &UsageRecord,
    previous: Option<rust_decimal::Decimal>,
    group_by: &[String],
) -> OrgChange {
    OrgChange {
        org_id: record.org_id.clone(),
        change: Change {
            subject: record.subject.clone(),
            metric: record.metric.clone(),
            kind: record.kind,
            at_ms: record.at_ms,
            quantity: record.quantity,
            previous,
        },
        attributes: declared(&record.attributes, group_by),
    }
}

/// The attributes among `group_by`'s keys.
pub(crate) fn declared(
    attributes: &BTreeMap<String, String>,
    group_by: &[String],
) -> BTreeMap<String, String> {
    group_by.iter().filter_map(|key| Some((key.clone(), attributes.get(key)?.clone()))).collect()
}

/// A delivery's headers as both engines store them: JSON text, read back
/// by [`payload_from_columns`].
pub(crate) fn headers_column(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

/// A delivery's payload from its stored columns (both engines); `what`
/// names the delivery in an error.
pub(crate) fn payload_from_columns(
    purged_at_ms: Option<i64>,
    path: String,
    query: Option<String>,
    headers: &str,
    body: Vec<u8>,
    what: &str,
) -> Result<Payload, StoreError> {
    if let Some(at_ms) = purged_at_ms {
        return Ok(Payload::Purged { at_ms });
    }
    let headers =
        serde_json::from_str(headers).map_err(|e| StoreError::Corrupt(format!("headers of {what}: {e}")))?;
    Ok(Payload::Kept { path, query, headers, body })
}

/// The change a fix makes, for the commit hook: a correction from the
/// stored quantity, or an insert.
pub(crate) fn fix_change(fix: &RecordFix, group_by: &[String]) -> OrgChange {
    match fix {
        RecordFix::Correct { record, to, .. } => {
            let corrected = UsageRecord { quantity: *to, ..record.record.clone() };
            org_change(&corrected, Some(record.record.quantity), group_by)
        }
        RecordFix::Insert { record, .. } => org_change(record, None, group_by),
    }
}

/// The stored columns of an API key: (admin, orgs as a JSON array).
pub(crate) fn key_scope_columns(scope: &Scope) -> (bool, String) {
    match scope {
        Scope::Admin => (true, "[]".to_owned()),
        Scope::Orgs(orgs) => (false, serde_json::to_string(orgs).unwrap_or_else(|_| "[]".to_owned())),
    }
}

/// An API key from its stored columns.
pub(crate) fn key_from_columns(
    id: String,
    secret_hash: String,
    admin: bool,
    orgs: &str,
    label: Option<String>,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
) -> Result<ApiKey, StoreError> {
    let scope = if admin {
        Scope::Admin
    } else {
        Scope::Orgs(
            serde_json::from_str(orgs).map_err(|e| StoreError::Corrupt(format!("key {id} orgs: {e}")))?,
        )
    };
    Ok(ApiKey { id, secret_hash, scope, label, created_at_ms, revoked_at_ms })
}

/// Gives each record its `seq`: how many records before it in the same
/// answer share its event id (see the WIT `usage-record` docs).
pub fn with_seqs(records: &[UsageRecord]) -> Vec<(i64, &UsageRecord)> {
    let mut seen: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    records
        .iter()
        .map(|r| {
            let n = seen.entry(r.event_id.as_str()).or_insert(0);
            let seq = *n;
            *n += 1;
            (seq, r)
        })
        .collect()
}

/// A record change as committed, with the org it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgChange {
    pub org_id: String,
    pub change: Change,
    /// The stored record's values of the declared `rollup_group_by` keys
    /// (a correction keeps the stored ones), for the grouped rollups.
    pub attributes: BTreeMap<String, String>,
}

/// What a commit changed in one org's metric (see [`Effect`]): what
/// standings are kept current by, here and on other replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgEffect {
    pub org_id: String,
    pub metric: String,
    pub effect: Effect,
}

/// A crossed threshold to store: a fired mark for (org, rule, period) and,
/// if that mark is new, one outbox row per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub org_id: String,
    pub rule: String,
    pub period_start_ms: i64,
    pub event_type: String,
    /// The exact body every endpoint receives.
    pub payload: String,
    pub endpoints: Vec<String>,
}

impl Notice {
    /// The Standard Webhooks `webhook-id` of this notice at `endpoint`:
    /// stable, so a receiver can recognize a redelivery.
    pub fn message_id(&self, endpoint: &str) -> String {
        let mut hash = Sha256::new();
        for part in [self.org_id.as_str(), self.rule.as_str(), &self.period_start_ms.to_string(), endpoint] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        format!("msg_{}", &hex::encode(hash.finalize())[..32])
    }
}

/// Called by the engine inside every transaction that writes usage
/// records, so in-memory state follows the database exactly and the
/// notifications a commit causes are stored in its transaction.
///
/// `tx` is the transaction's id where the engine has a change feed
/// (PostgreSQL): the feed later reports the same id back once committed.
pub trait CommitHook: Send + Sync {
    /// The records were written (the transaction has not committed yet):
    /// apply what they changed and return the notices that causes.
    fn records_written(&self, tx: Option<TxId>, effects: &[OrgEffect], now_ms: i64) -> Vec<Notice>;
    /// The commit failed: undo what `records_written` did (unless the feed
    /// has meanwhile reported `tx` committed after all).
    fn rolled_back(&self, tx: Option<TxId>, effects: &[OrgEffect], notices: &[Notice]);
    /// The transaction committed, with `outbox_rows` new outbox rows.
    fn committed(&self, outbox_rows: usize);
}

/// The plan an org was assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgPlan {
    pub org_id: String,
    pub plan: String,
    pub assigned_at_ms: i64,
}

/// Everything in-memory org state is built from, read at one instant:
/// O(series × hours of the period + open sandboxes), never the records.
#[derive(Debug, Clone, Default)]
pub struct StandingSnapshot {
    /// One per (org, metric) with rollups in the period or a level carried
    /// into it.
    pub series: Vec<SeriesSeed>,
    /// Every open sandbox run, by org.
    pub open_runs: Vec<(String, Run)>,
    pub plans: Vec<OrgPlan>,
    /// (org, rule) fired for the period.
    pub fired: Vec<(String, String)>,
    /// Which transactions the snapshot includes (engines with a feed).
    pub visibility: Option<Visibility>,
}

/// One series as a standing is seeded from (see `OrgStanding::seed`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesSeed {
    pub org_id: String,
    pub metric: String,
    /// The org level at the period start (Σ month steps before it).
    pub carry: Decimal,
    /// Every stored hour from the period start on.
    pub hours: Vec<(i64, Hour)>,
    /// Every stored step after the snapshot's `now`.
    pub steps_after: Vec<(i64, Decimal)>,
}

/// A grant to store. `plan` is set for a plan's one-time credit, which is
/// stored at most once per (org, plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub org_id: String,
    pub amount: rust_decimal::Decimal,
    pub currency: String,
    pub effective_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub priority: i32,
    pub created_at_ms: i64,
    pub source: String,
    pub plan: Option<String>,
}

/// One outbox row to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: i64,
    pub message_id: String,
    pub endpoint: String,
    pub event_type: String,
    pub payload: String,
    pub created_at_ms: i64,
    pub attempts: i64,
}

/// What is in the outbox, for status pages and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub delivered: i64,
    pub gave_up: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the poll lease of {plugin}/{target} is held by another poller")]
    LeaseLost { plugin: String, target: String },
    /// A conditional write found the data changed since it was read.
    #[error("changed concurrently: {0}")]
    Conflict(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Which records a usage query reads.
#[derive(Debug, Clone)]
pub struct PointQuery<'a> {
    pub org_id: &'a str,
    pub metric: &'a str,
    pub range: Range,
    /// The attribute whose value becomes each point's group.
    pub group_by: Option<&'a str>,
}

/// The rollups (`meter::rollup`): kept by every usage commit, read by
/// usage queries, rebuilt and checked against the raw records.
#[async_trait]
pub trait Rollups: Send + Sync {
    /// What `plan` names for one series, read in one snapshot.
    async fn rollup_input(
        &self,
        series: &SeriesKey,
        plan: &ReadPlan,
        aggregation: Aggregation,
        from_ms: i64,
    ) -> Result<RollupInput, StoreError>;

    /// The attribute keys this store keeps group hours for (see
    /// `meter::rollup::groups`), as configured by `rollup_group_by`.
    fn group_by(&self) -> &[String];

    /// What `plan` names for a sum or count of one series grouped by a key
    /// of [`Rollups::group_by`], read in one snapshot.
    async fn group_input(
        &self,
        series: &SeriesKey,
        key: &str,
        plan: &ReadPlan,
    ) -> Result<GroupInput, StoreError>;

    /// What `plan` names for a level aggregation (integral, latest, max) of
    /// one series grouped by a key of [`Rollups::group_by`]: the series'
    /// own input and each group's level series' input (the groups a level
    /// record names before `range` ends), read in one snapshot.
    async fn group_level_input(
        &self,
        series: &SeriesKey,
        key: &str,
        plan: &ReadPlan,
        range: Range,
    ) -> Result<GroupLevelInput, StoreError>;

    /// Replaces the rollups by a recomputation from the raw records (one
    /// transaction; record writers wait); returns the records read.
    async fn rebuild_rollups(&self) -> Result<u64, StoreError>;

    /// Recomputes the rollups from the raw records and compares them with
    /// the stored ones, naming up to `examples` differences.
    async fn check_rollups(&self, examples: usize) -> Result<RollupCheck, StoreError>;
}

/// Writing what webhooks deliver, and the hook every usage transaction calls.
#[async_trait]
pub trait Ingest: Send + Sync {
    /// Commits all deliveries in one transaction, deduplicating by
    /// (plugin, event id) and records by (plugin, event id, seq). Returns one
    /// outcome per delivery, in order; a repeat within `batch` is a duplicate.
    async fn commit(&self, batch: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError>;

    /// Installs the hook called inside every transaction that writes usage
    /// records (once, before the first commit).
    fn set_commit_hook(&self, hook: Arc<dyn CommitHook>);
}

/// Reading raw usage records (grouped usage queries).
#[async_trait]
pub trait Records: Send + Sync {
    /// Records of one org and metric with `at` in the range.
    async fn points(&self, query: &PointQuery<'_>) -> Result<Vec<Point>, StoreError>;

    /// For each subject, its last level (all tied at that instant) before
    /// `query.range.from_ms`: what holds when the range starts.
    async fn carry_in(&self, query: &PointQuery<'_>) -> Result<Vec<Point>, StoreError>;

    // Paged reads, so a grouped query never holds all of a range's records.

    /// Up to `limit` of [`Records::points`] in (time, id) order, after
    /// `after` (the key of the previous page's last record).
    async fn points_page(
        &self,
        query: &PointQuery<'_>,
        after: Option<PointKey>,
        limit: u32,
    ) -> Result<Vec<(PointKey, Point)>, StoreError>;

    /// The next `limit` subjects after `after`, in order, with a level record
    /// stamped before the range ends.
    async fn level_subjects(
        &self,
        query: &PointQuery<'_>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Every level record stamped before the range ends of the subjects
    /// after `after` up to and including `last` (any order).
    async fn levels_of_subjects(
        &self,
        query: &PointQuery<'_>,
        after: Option<&str>,
        last: &str,
    ) -> Result<Vec<Point>, StoreError>;
    /// The values of the grouping attribute that level records stamped
    /// before the range carry (each names its group in a grouped level
    /// query, see `meter::rollup::groups::merge_levels`).
    async fn level_groups_before(&self, query: &PointQuery<'_>) -> Result<Vec<Option<String>>, StoreError>;
}

/// Where a page of records ends: (time, record id).
pub type PointKey = (i64, i64);

/// See [`Deliveries::replay_set`]: the deliveries with an id up to
/// `up_to_id` (every one of them had committed when the set was taken;
/// later ones have greater ids), `total` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySet {
    pub up_to_id: i64,
    pub total: u64,
}

/// Pull ingestion: leases, fenced poll commits and poller state.
#[async_trait]
pub trait Polls: Send + Sync {
    /// Takes or renews the lease of (plugin, target) for `holder` until
    /// `expires_ms`, if it is free, expired or already `holder`'s. Returns
    /// the state when the lease is now held by `holder`, `None` otherwise.
    async fn acquire_lease(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Option<PollState>, StoreError>;

    /// Commits a poll's records and its new cursor in one transaction,
    /// only while `holder` still holds the lease (else `LeaseLost`).
    async fn commit_poll(&self, poll: &PollCommit) -> Result<RecordCounts, StoreError>;

    /// Notes a failed poll run and when to try again.
    async fn record_poll_failure(
        &self,
        plugin: &str,
        target: &str,
        holder: &str,
        error: &str,
        now_ms: i64,
        next_run_ms: i64,
    ) -> Result<(), StoreError>;

    /// Every poller's state, by plugin and target.
    async fn poll_states(&self) -> Result<Vec<PollState>, StoreError>;
}

/// What in-memory org standings are built from, and the change feed.
#[async_trait]
pub trait Standings: Plans + Send + Sync {
    /// What in-memory state for the period containing `now_ms` is built
    /// from (see [`StandingSnapshot`]), read in one snapshot; engines with a
    /// feed say which transactions it includes.
    async fn standing_snapshot(&self, now_ms: i64) -> Result<StandingSnapshot, StoreError>;

    /// The closed sandbox runs of `org_id` that ended after `ended_after_ms`
    /// and lasted longer than `longer_than_ms` (index seek: only such runs
    /// are read).
    async fn long_runs(
        &self,
        org_id: &str,
        ended_after_ms: i64,
        longer_than_ms: i64,
    ) -> Result<Vec<Run>, StoreError>;

    /// Starts following what other processes commit (see [`feed`]): `None`
    /// for an engine that has one writer process. Listening has begun when
    /// this returns, so a snapshot taken afterwards misses nothing.
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<FeedEvent>>, StoreError> {
        Ok(None)
    }
}

/// Plan assignments, credit grants and fired notices.
#[async_trait]
pub trait Plans: Send + Sync {
    /// Every assigned plan.
    async fn org_plans(&self) -> Result<Vec<OrgPlan>, StoreError>;

    /// Assigns a plan and stores grants in one transaction; a plan credit
    /// whose (org, plan) is already stored is skipped. Returns the grants
    /// actually stored.
    async fn assign_plan(&self, plan: &OrgPlan, grants: &[NewGrant]) -> Result<Vec<Grant>, StoreError>;

    /// Stores one API grant.
    async fn insert_grant(&self, grant: &NewGrant) -> Result<Grant, StoreError>;

    /// An org's grants.
    async fn grants(&self, org_id: &str) -> Result<Vec<Grant>, StoreError>;

    /// Stores notices outside a usage commit (time-driven rules), in one
    /// transaction. Returns how many outbox rows were added.
    async fn record_notices(&self, notices: &[Notice], now_ms: i64) -> Result<usize, StoreError>;

    /// (org, rule) of every notice fired for the period starting at
    /// `period_start_ms`.
    async fn fired(&self, period_start_ms: i64) -> Result<Vec<(String, String)>, StoreError>;
}

/// The notification outbox.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Undelivered outbox rows due at `now_ms`, oldest first.
    async fn due_outbox(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxMessage>, StoreError>;

    /// Marks an outbox row delivered.
    async fn outbox_delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError>;

    /// Notes a failed attempt: retry at `retry_at_ms`, or give up if `None`.
    async fn outbox_attempt_failed(
        &self,
        id: i64,
        error: &str,
        now_ms: i64,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError>;

    /// How many outbox rows are pending, delivered, given up.
    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;
}

/// Stored deliveries: payload retention, replay reads and fixes, the correction audit.
#[async_trait]
pub trait Deliveries: Send + Sync {
    /// Empties the payload (body and headers) of every delivery received
    /// before `before_ms`, keeping the row and so its dedup key; returns
    /// how many were emptied.
    async fn purge_payloads(&self, before_ms: i64, now_ms: i64) -> Result<u64, StoreError>;

    /// The deliveries a replay of `plugin` over `range` covers: those
    /// received in `range` and committed when it starts. A delivery is
    /// stamped when it arrives and committed later, so "received before
    /// `to`" alone would let deliveries join (or, behind a page already
    /// read, be skipped) while the replay runs.
    async fn replay_set(&self, plugin: &str, range: Range) -> Result<ReplaySet, StoreError>;

    /// Up to `limit` deliveries of `set`, in the order received (ties by
    /// id), starting after `after`.
    async fn deliveries(
        &self,
        plugin: &str,
        range: Range,
        set: &ReplaySet,
        after: Option<DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StoredDelivery>, StoreError>;

    /// The records of `plugin` that one of `delivery_ids` last set, or whose
    /// event id is one of `event_ids`.
    async fn delivery_records(
        &self,
        plugin: &str,
        delivery_ids: &[i64],
        event_ids: &[String],
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Applies `fixes` in one transaction, through the commit hook, with an
    /// audit row per correction; `Conflict` (and nothing written) if any
    /// record no longer holds what its fix was computed from.
    async fn apply_fixes(&self, plugin: &str, fixes: &[RecordFix], now_ms: i64) -> Result<(), StoreError>;

    /// The audit trail of one event's records: (seq, old, new quantity) of
    /// every correction, oldest first.
    async fn corrections(
        &self,
        plugin: &str,
        event_id: &str,
    ) -> Result<Vec<(i64, rust_decimal::Decimal, rust_decimal::Decimal)>, StoreError>;
}

/// API keys.
#[async_trait]
pub trait Keys: Send + Sync {
    /// Stores a new API key.
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Every API key, revoked ones included, oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes the active key `id`; `false` if there is none.
    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
}

/// A whole store: every part, as the engines implement it and callers
/// hold it (`Arc<dyn Store>`). Each part is a trait of its own, so code
/// names the concern it uses (`use meterd_store::Polls`).
#[async_trait]
pub trait Store:
    Ingest + Records + Rollups + Polls + Standings + Plans + Outbox + Deliveries + Keys + Send + Sync + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Cheap liveness check for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}
