//! The SQLite engine's one writer connection and its transactions.
//!
//! The connection is held (behind a mutex), not pooled: sqlx's pool pings a
//! connection on every release and every acquire, two round trips to its
//! worker thread in every commit's serial path. Transactions are begun and
//! ended by plain `BEGIN` / `COMMIT` statements rather than sqlx's
//! `Transaction`, so that a commit's `BEGIN` can ride with its first
//! statement (one round trip fewer per webhook batch). sqlx does not track
//! such a transaction, so one left open by a holder dropped mid-way (a
//! failed or cancelled write) is rolled back at once, on a task that holds
//! the writer until it is done (it held SQLite's write lock meanwhile), or
//! by the next holder before it gets the connection.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::SqliteConnection;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::StoreError;
use super::sqlite_direct::{CachedConnection, Direct};

/// The writer connection.
pub(super) struct Writer(Arc<Mutex<Held>>);

struct Held {
    conn: CachedConnection,
    /// A transaction was begun and not yet committed or rolled back.
    open: bool,
}

impl Writer {
    pub(super) fn new(conn: SqliteConnection) -> Self {
        Self(Arc::new(Mutex::new(Held { conn: CachedConnection::new(conn), open: false })))
    }

    /// The connection, once no one else holds it, with no transaction left
    /// open.
    pub(super) async fn lock(&self) -> Result<WriterGuard, StoreError> {
        let mut held = self.0.clone().lock_owned().await;
        // Left open by a holder dropped outside any runtime (see
        // `WriterGuard`'s drop).
        if held.open {
            held.roll_back().await;
        }
        Ok(WriterGuard(Some(held)))
    }
}

impl Held {
    async fn roll_back(&mut self) {
        // An error here is mostly "no transaction is active" (its BEGIN
        // failed, or SQLite rolled it back itself); should one be open
        // still, the next BEGIN fails and marks it again.
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *self.conn).await {
            tracing::debug!(error = %e, "rolling back a transaction left open");
        }
        self.open = false;
    }
}

/// The writer, held until dropped; derefs to the connection.
pub(super) struct WriterGuard(Option<OwnedMutexGuard<Held>>);

impl WriterGuard {
    fn held(&self) -> &Held {
        self.0.as_ref().expect("a WriterGuard holds the writer until it is dropped")
    }

    fn held_mut(&mut self) -> &mut Held {
        self.0.as_mut().expect("a WriterGuard holds the writer until it is dropped")
    }

    /// Begins a transaction (`BEGIN`, one round trip).
    pub(super) async fn begin(&mut self) -> Result<WriteTx<'_>, StoreError> {
        let held = self.held_mut();
        held.open = true;
        sqlx::query("BEGIN").execute(&mut *held.conn).await?;
        Ok(WriteTx(self))
    }

    /// A transaction whose `BEGIN` the caller sends itself, with its first
    /// statement (ingest begins it in the round trip of its first inserts,
    /// `sqlite_direct`).
    pub(super) fn begin_with_first_statement(&mut self) -> WriteTx<'_> {
        self.held_mut().open = true;
        WriteTx(self)
    }
}

impl Drop for WriterGuard {
    /// A transaction left open (a failed or cancelled write) holds SQLite's
    /// write lock: every other connection to the file, the checkpointer's
    /// or another process's, would wait for the writer's next holder. So it
    /// is rolled back at once, on a task that holds the writer until then.
    /// Outside a runtime, the next holder rolls it back.
    fn drop(&mut self) {
        let Some(mut held) = self.0.take().filter(|held| held.open) else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { held.roll_back().await });
        }
    }
}

impl Deref for WriterGuard {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.held().conn
    }
}

impl DerefMut for WriterGuard {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.held_mut().conn
    }
}

/// How a [`WriteTx::with_handle`] step left the transaction.
pub(super) enum Step<C, O> {
    /// Committed by the step's own `COMMIT`.
    Committed(C),
    /// Still open.
    Open(O),
}

/// A write transaction on the held writer; derefs to the connection.
/// Dropped without [`WriteTx::commit`], it is rolled back when its
/// [`WriterGuard`] is dropped.
pub(super) struct WriteTx<'g>(&'g mut WriterGuard);

impl WriteTx<'_> {
    /// Commits on the caller's thread, on the connection's own handle
    /// ([`Direct`]): writing the WAL frames and syncing them is the
    /// largest step of a webhook batch, and there it runs on the committer
    /// thread, already on a CPU, while sqlx's worker only hands the handle
    /// over. (Through sqlx, the worker thread had to get a CPU for all of
    /// it: at 5,000 webhooks/s the p99 was worse in seven rounds of eight
    /// and equal in the eighth; BENCHMARKS.md, issue 18.)
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        self.commit_after(|_| Ok(())).await
    }

    /// Runs `last` on the handle, then commits, in one lock of it: one
    /// round trip to sqlx's worker for a commit's last statements and the
    /// `COMMIT` (a rollup write, `sqlite_rollup::write_rows`, after reads
    /// through sqlx; ingest's steady state uses [`WriteTx::with_handle`]).
    pub(super) async fn commit_after(
        mut self,
        last: impl FnOnce(&mut Direct<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.with_handle(|direct| {
            last(direct)?;
            direct.execute_batch("COMMIT")?;
            Ok(Step::<(), ()>::Committed(()))
        })
        .await
        .map(|_| ())
    }

    /// Runs `step` in one lock of the handle; `step` either commits (its
    /// own `COMMIT`) or leaves the transaction open for what follows.
    pub(super) async fn with_handle<C, O>(
        &mut self,
        step: impl FnOnce(&mut Direct<'_>) -> Result<Step<C, O>, StoreError>,
    ) -> Result<Step<C, O>, StoreError> {
        let mut direct = self.direct().await?;
        let done = step(&mut direct);
        drop(direct);
        if let Ok(Step::Committed(_)) = &done {
            self.0.held_mut().open = false;
        }
        done
    }

    /// The connection's own handle, for statements run on the caller's
    /// thread (`sqlite_direct`): one round trip to sqlx's worker to take.
    pub(super) async fn direct(&mut self) -> Result<Direct<'_>, StoreError> {
        self.0.held_mut().conn.direct().await
    }
}

impl Deref for WriteTx<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.0.held().conn
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.0.held_mut().conn
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{ConnectOptions as _, Row as _};

    use super::*;

    /// A first statement's leading `BEGIN`.
    const BEGIN: &str = "BEGIN; ";

    async fn writer(dir: &tempfile::TempDir) -> Writer {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true);
        let mut conn = options.connect().await.expect("open");
        sqlx::query("CREATE TABLE t (n INTEGER)").execute(&mut conn).await.expect("create");
        Writer::new(conn)
    }

    async fn count(writer: &Writer) -> i64 {
        let mut guard = writer.lock().await.expect("lock");
        sqlx::query("SELECT COUNT(*) AS n FROM t").fetch_one(&mut *guard).await.expect("count").get("n")
    }

    #[tokio::test]
    async fn a_transaction_begun_with_its_first_statement_commits() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        let mut guard = writer.lock().await.expect("lock");
        let mut tx = guard.begin_with_first_statement();
        sqlx::query(&format!("{}INSERT INTO t VALUES (1)", BEGIN)).execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
        drop(guard);
        assert_eq!(count(&writer).await, 1);
    }

    #[tokio::test]
    async fn a_transaction_left_open_is_rolled_back_by_the_next_holder() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        for separate_begin in [true, false] {
            let mut guard = writer.lock().await.expect("lock");
            let mut tx = if separate_begin {
                guard.begin().await.expect("begin")
            } else {
                let mut tx = guard.begin_with_first_statement();
                sqlx::query(BEGIN).execute(&mut *tx).await.expect("begin");
                tx
            };
            sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.expect("insert");
            // Dropped without a commit: a failed or cancelled write.
            drop(guard);
            assert_eq!(count(&writer).await, 0, "begun with its first statement: {}", !separate_begin);
        }
        // The writer still begins and commits.
        let mut guard = writer.lock().await.expect("lock");
        let mut tx = guard.begin().await.expect("begin");
        sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
        drop(guard);
        assert_eq!(count(&writer).await, 1);
    }

    /// Another connection to the file can write as soon as a holder with a
    /// failed transaction lets go, not only after the writer's next holder.
    #[tokio::test]
    async fn a_transaction_left_open_does_not_keep_other_connections_from_writing() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        let mut guard = writer.lock().await.expect("lock");
        let mut tx = guard.begin().await.expect("begin");
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.expect("insert");
        // A failed write: dropped without a commit, and no one locks the
        // writer again.
        drop(guard);
        let mut other = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .busy_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .expect("another connection");
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut other)
            .await
            .expect("the other connection writes");
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t").fetch_all(&mut other).await.expect("read");
        assert_eq!(rows, [2], "the dropped transaction's row was rolled back");
    }

    #[tokio::test]
    async fn a_failed_first_statement_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        let mut guard = writer.lock().await.expect("lock");
        let mut tx = guard.begin_with_first_statement();
        let wrong = sqlx::query(&format!("{}INSERT INTO missing VALUES (1)", BEGIN)).execute(&mut *tx).await;
        assert!(wrong.is_err());
        drop(guard);
        // The next holder's rollback finds the transaction the BEGIN opened.
        let mut guard = writer.lock().await.expect("lock after a failed statement");
        let tx = guard.begin().await.expect("begin");
        tx.commit().await.expect("commit");
    }
}
