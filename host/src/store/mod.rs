//! Persistence behind one trait, so the engines are interchangeable and the
//! same tests run against each. SQLite (embedded, WAL, `synchronous=FULL`)
//! is the default engine.
//!
//! Writes arrive only through [`GroupCommitter`], which batches concurrent
//! deliveries into one transaction (one fsync for many requests).

mod group_commit;
mod sqlite;

use async_trait::async_trait;

use crate::meter::Point;
use crate::meter::period::Range;
use crate::record::UsageRecord;

pub use group_commit::GroupCommitter;
pub use sqlite::SqliteStore;

#[cfg(test)]
mod tests;

/// One accepted webhook delivery: its raw payload and what it normalized to.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub plugin: String,
    pub event_id: String,
    pub received_at_ms: i64,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Commits all deliveries in one transaction, deduplicating by
    /// (plugin, event id) and records by (plugin, event id, seq). Returns one
    /// outcome per delivery, in order; a repeat within `batch` is a duplicate.
    async fn commit(&self, batch: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError>;

    /// Records of one org and metric with `at` in the range.
    async fn points(&self, query: &PointQuery<'_>) -> Result<Vec<Point>, StoreError>;

    /// For each subject, its last level (all tied at that instant) before
    /// `query.range.from_ms`: what holds when the range starts.
    async fn carry_in(&self, query: &PointQuery<'_>) -> Result<Vec<Point>, StoreError>;

    /// Cheap liveness check for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

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
