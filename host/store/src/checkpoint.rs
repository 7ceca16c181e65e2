//! WAL checkpoints off the commit path (SQLite).
//!
//! By default SQLite checkpoints inside the commit that pushes the WAL past
//! 1,000 pages: that commit copies the WAL into the database file and syncs
//! it before it returns, stalling the one writer for milliseconds while
//! webhooks wait (BENCHMARKS.md, "What in the host limits performance").
//! Here the writer's automatic checkpoint is only a backstop far out
//! ([`BACKSTOP_PAGES`]); a task with its own connection runs a `PASSIVE`
//! checkpoint shortly after commits (it never waits for or blocks the
//! writer), so the copy and the database file's sync happen beside the
//! commits instead of in one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row, SqliteConnection};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The writer still checkpoints by itself past this many WAL pages (about
/// 40 MB with 4 KiB pages), should the checkpointer fall behind or fail.
pub(super) const BACKSTOP_PAGES: u32 = 10_000;

/// How long the checkpointer lets commits gather after the first it hears
/// of: one checkpoint then covers all of them. Short, because a checkpoint
/// is a burst of writes to the database file and its sync, and a commit's
/// sync of the WAL that comes meanwhile waits behind it: at 5,000
/// webhooks/s, 50 ms of gathering made checkpoints of 3–17 ms and gave
/// ingest a p99 of ~10 ms, 5 ms one of ~6.6 ms, at the same closed-loop
/// throughput (BENCHMARKS.md, issue 18). A page written again within the
/// window is copied once; across windows it is copied again, so the disk
/// takes ~20 % more bytes per webhook than with 50 ms.
const GATHER: Duration = Duration::from_millis(5);

/// The background checkpointer of one database file; stops when dropped.
pub(super) struct Checkpointer {
    committed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database `options` open, on a connection of
    /// its own.
    pub(super) async fn start(options: &SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let mut connection = options.connect().await?;
        let committed = Arc::new(Notify::new());
        let heard = committed.clone();
        let task = tokio::spawn(async move {
            loop {
                heard.notified().await;
                tokio::time::sleep(GATHER).await;
                match checkpoint(&mut connection).await {
                    // Frames a reader still uses are copied by a later run.
                    Ok(report) if report.checkpointed < report.wal_frames => {
                        tracing::debug!(?report, "WAL checkpoint left frames readers still use")
                    }
                    Ok(_) => {}
                    // The writer's backstop keeps the WAL bounded meanwhile.
                    Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
                }
            }
        });
        Ok(Self { committed, task })
    }

    /// Tells the checkpointer a transaction committed (cheap; never waits).
    pub(super) fn committed(&self) {
        self.committed.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one checkpoint did, as SQLite reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckpointReport {
    /// Frames in the WAL.
    wal_frames: i64,
    /// Of those, frames now copied into the database file.
    checkpointed: i64,
}

/// One `PASSIVE` checkpoint: copies what no reader still needs, without
/// waiting for readers or the writer.
async fn checkpoint(connection: &mut SqliteConnection) -> Result<CheckpointReport, sqlx::Error> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(connection).await?;
    Ok(CheckpointReport { wal_frames: row.try_get(1)?, checkpointed: row.try_get(2)? })
}
