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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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
}
