//! Row-at-a-time inserts on the writer's own `sqlite3` handle, for the
//! rows a commit writes per delivery and per record, its rollup rows and
//! the `COMMIT` itself, on the committing thread.
//!
//! Through sqlx a batch insert is one statement text with a placeholder per
//! value: built for each batch, parsed and planned anew for each batch size
//! (its statement cache keys on the text), every value copied for the
//! hand-off to sqlx's worker thread, and whatever it answers sent back row
//! by row. Here the caller takes sqlx's lock on the connection
//! (`LockedSqliteHandle`: sqlx's worker makes no call on the handle while it
//! is held) and steps one prepared single-row statement per row on its own
//! thread, with the values bound in place. SQLite answers each step with
//! the row's changes and rowid, so a batch needs no savepoint and no second
//! query to learn which rows were new.
//!
//! Statements are prepared once per connection and kept
//! ([`CachedConnection`]): preparing the two inserts anew in every commit
//! was ~5 % of the committing thread's CPU at 5,000 webhooks/s.
//!
//! The only `unsafe` of the store is here; each block states what makes it
//! sound.

use std::ffi::{CStr, CString, c_int};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use sqlx::sqlite::LockedSqliteHandle;

use super::StoreError;

/// A connection with the statements [`Direct`] prepared on its handle,
/// kept until the connection is dropped; derefs to the connection for
/// sqlx's queries.
pub(super) struct CachedConnection {
    conn: ManuallyDrop<SqliteConnection>,
    statements: Prepared,
}

/// Statements prepared on one connection's handle, by their text.
#[derive(Default)]
struct Prepared(Vec<(&'static str, NonNull<ffi::sqlite3_stmt>)>);

// SAFETY: a statement is a pointer into its connection, which may move
// between threads as long as one uses it at a time; these are stepped and
// finalized only while that connection's handle is locked away from sqlx's
// worker (`Direct`, `CachedConnection`'s drop).
unsafe impl Send for Prepared {}

impl CachedConnection {
    pub(super) fn new(conn: SqliteConnection) -> Self {
        Self { conn: ManuallyDrop::new(conn), statements: Prepared::default() }
    }

    /// Takes the connection's handle (one round trip to sqlx's worker).
    pub(super) async fn direct(&mut self) -> Result<Direct<'_>, StoreError> {
        Ok(Direct { handle: self.conn.lock_handle().await?, statements: &mut self.statements })
    }
}

impl Deref for CachedConnection {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for CachedConnection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for CachedConnection {
    /// Finalizes the statements, then closes the connection: sqlx closes
    /// its handle with `sqlite3_close`, which fails (and sqlx's worker
    /// panics) while any statement lives. Finalizing needs the handle's
    /// lock, taken asynchronously, so a thread of its own waits for it.
    fn drop(&mut self) {
        // SAFETY: `conn` is taken once, here, and not used after.
        let conn = unsafe { ManuallyDrop::take(&mut self.conn) };
        let statements = std::mem::take(&mut self.statements);
        if statements.0.is_empty() {
            return;
        }
        let closing = std::thread::Builder::new().name("meterd-close".to_owned()).spawn(move || {
            let (mut conn, statements) = (conn, statements);
            futures_executor::block_on(async {
                match conn.lock_handle().await {
                    // SAFETY: each statement was prepared on this handle,
                    // whose lock is held, and is finalized once.
                    Ok(_locked) => statements.0.iter().for_each(|(_, stmt)| unsafe {
                        ffi::sqlite3_finalize(stmt.as_ptr());
                    }),
                    // The worker is gone, and its handle with it.
                    Err(e) => tracing::debug!(error = %e, "no handle to finalize statements on"),
                }
            });
            drop(conn);
        });
        if let Err(e) = closing {
            tracing::error!(error = %e, "no thread to close a SQLite connection on; its worker will fail to close it");
        }
    }
}

/// The writer connection's handle, locked away from sqlx's worker until
/// dropped. Hold it across no `.await`: sqlx's queries on this connection
/// wait for it.
pub(super) struct Direct<'c> {
    handle: LockedSqliteHandle<'c>,
    statements: &'c mut Prepared,
}

impl Direct<'_> {
    fn db(&mut self) -> *mut ffi::sqlite3 {
        self.handle.as_raw_handle().as_ptr()
    }

    /// Runs statements that take no values and answer no rows (`BEGIN`,
    /// `COMMIT`).
    pub(super) fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let text = CString::new(sql).map_err(|_| StoreError::Corrupt(format!("NUL in statement {sql:?}")))?;
        let db = self.db();
        // SAFETY: `db` is an open connection no other thread uses while the
        // lock is held; `text` is NUL-terminated and outlives the call; no
        // callback and no error-message out-pointer are passed.
        let code = unsafe { ffi::sqlite3_exec(db, text.as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
        check(db, code, sql)
    }

    /// One statement, prepared on this connection's first use of `sql` and
    /// kept until the connection is dropped.
    pub(super) fn prepare<'d>(&'d mut self, sql: &'static str) -> Result<Statement<'d>, StoreError> {
        let db = self.db();
        if let Some((_, stmt)) = self.statements.0.iter().find(|(text, _)| *text == sql) {
            return Ok(Statement { db, stmt: *stmt, sql, _locked: PhantomData });
        }
        let length = c_int::try_from(sql.len())
            .map_err(|_| StoreError::Corrupt(format!("statement of {} bytes", sql.len())))?;
        let mut stmt = ptr::null_mut();
        // SAFETY: as in `execute_batch`; SQLite reads `length` bytes of
        // `sql` (no NUL needed) and writes the statement to `stmt`.
        let code =
            unsafe { ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), length, &mut stmt, ptr::null_mut()) };
        check(db, code, sql)?;
        let stmt =
            NonNull::new(stmt).ok_or_else(|| StoreError::Corrupt(format!("empty statement {sql:?}")))?;
        self.statements.0.push((sql, stmt));
        Ok(Statement { db, stmt, sql, _locked: PhantomData })
    }
}

/// A value bound to a statement's parameter, borrowed for one step.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'v> {
    Int(i64),
    Text(&'v str),
    Blob(&'v [u8]),
    Null,
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl<'v> From<&'v str> for Value<'v> {
    fn from(text: &'v str) -> Self {
        Value::Text(text)
    }
}

impl<'v, T: Into<Value<'v>>> From<Option<T>> for Value<'v> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// What one step of an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Inserted {
    /// Rows it inserted: 0 when `ON CONFLICT DO NOTHING` skipped the row.
    pub changes: i64,
    /// The rowid of the connection's last insert.
    pub rowid: i64,
}

/// A prepared statement of a [`Direct`] handle, reset after each use (the
/// connection finalizes it).
pub(super) struct Statement<'d> {
    db: *mut ffi::sqlite3,
    stmt: NonNull<ffi::sqlite3_stmt>,
    sql: &'static str,
    /// Borrows the locked handle: the statement cannot outlive the lock.
    _locked: PhantomData<&'d mut ()>,
}

impl Statement<'_> {
    /// Runs the statement once with `values` bound to `?1, ?2, …`: an
    /// insert (or any statement answering no rows).
    pub(super) fn insert(&mut self, values: &[Value<'_>]) -> Result<Inserted, StoreError> {
        self.once(values, Self::step)
    }

    /// Runs a query once with `values` bound to `?1, ?2, …` and answers
    /// its one row's one text column: a read whose rows SQLite gathers
    /// into one JSON text (`json_group_array`), on the handle's lock.
    pub(super) fn text(&mut self, values: &[Value<'_>]) -> Result<String, StoreError> {
        self.once(values, Self::row_text)
    }

    /// Binds `values`, runs `step`, and resets the statement for its next
    /// use whatever happened.
    fn once<T>(
        &mut self,
        values: &[Value<'_>],
        step: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.bind(values).and_then(|()| step(self));
        // SAFETY: `stmt` is a live statement of `db`. Reset and cleared,
        // it holds no pointer into `values` once this returns (they were
        // bound `SQLITE_STATIC`, i.e. borrowed until then), and `step` has
        // copied out what it read. Their return codes repeat the step's
        // error, already in `result`.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
        result
    }

    fn row_text(&mut self) -> Result<String, StoreError> {
        let stmt = self.stmt.as_ptr();
        // SAFETY: `stmt` is a live statement of `db`, whose values are
        // bound; the lock keeps every other thread off `db`. On a row,
        // column 0's text (as UTF-8) and its length in bytes stay valid
        // until the next step or reset, and are copied before either.
        unsafe {
            match ffi::sqlite3_step(stmt) {
                ffi::SQLITE_ROW => {}
                ffi::SQLITE_DONE => {
                    return Err(StoreError::Corrupt(format!("{:?} answered no row", self.sql)));
                }
                code => return Err(error(self.db, code, self.sql)),
            }
            let text = ffi::sqlite3_column_text(stmt, 0);
            if text.is_null() {
                return Err(StoreError::Corrupt(format!("{:?} answered NULL", self.sql)));
            }
            let length = usize::try_from(ffi::sqlite3_column_bytes(stmt, 0)).unwrap_or(0);
            let bytes = std::slice::from_raw_parts(text, length);
            String::from_utf8(bytes.to_vec())
                .map_err(|_| StoreError::Corrupt(format!("{:?} answered text that is not UTF-8", self.sql)))
        }
    }

    fn bind(&mut self, values: &[Value<'_>]) -> Result<(), StoreError> {
        let stmt = self.stmt.as_ptr();
        for (i, value) in values.iter().enumerate() {
            let index =
                c_int::try_from(i + 1).map_err(|_| StoreError::Corrupt("too many values".to_owned()))?;
            // SAFETY: `stmt` is live; text and blob pointers are valid for
            // their lengths until `insert` clears the bindings (see there),
            // so SQLite may borrow them (`SQLITE_STATIC`). An empty slice's
            // pointer is dangling but not NULL, which SQLite binds as an
            // empty text or blob, never reading it.
            let code = unsafe {
                match *value {
                    Value::Int(n) => ffi::sqlite3_bind_int64(stmt, index, n),
                    Value::Text(text) => ffi::sqlite3_bind_text64(
                        stmt,
                        index,
                        text.as_ptr().cast(),
                        text.len() as u64,
                        ffi::SQLITE_STATIC(),
                        ffi::SQLITE_UTF8 as u8,
                    ),
                    Value::Blob(bytes) => ffi::sqlite3_bind_blob64(
                        stmt,
                        index,
                        bytes.as_ptr().cast(),
                        bytes.len() as u64,
                        ffi::SQLITE_STATIC(),
                    ),
                    Value::Null => ffi::sqlite3_bind_null(stmt, index),
                }
            };
            check(self.db, code, self.sql)?;
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Inserted, StoreError> {
        // SAFETY: `stmt` is a live statement of `db`, whose values are
        // bound; the lock keeps every other thread off `db`.
        unsafe {
            match ffi::sqlite3_step(self.stmt.as_ptr()) {
                ffi::SQLITE_DONE => Ok(Inserted {
                    changes: ffi::sqlite3_changes64(self.db),
                    rowid: ffi::sqlite3_last_insert_rowid(self.db),
                }),
                ffi::SQLITE_ROW => Err(StoreError::Corrupt(format!("{:?} answered a row", self.sql))),
                code => Err(error(self.db, code, self.sql)),
            }
        }
    }
}

fn check(db: *mut ffi::sqlite3, code: c_int, sql: &str) -> Result<(), StoreError> {
    if code == ffi::SQLITE_OK { Ok(()) } else { Err(error(db, code, sql)) }
}

/// SQLite's message for a failed call, as sqlx's errors read.
fn error(db: *mut ffi::sqlite3, code: c_int, sql: &str) -> StoreError {
    // SAFETY: `db` is open; `sqlite3_errmsg` returns a NUL-terminated
    // string SQLite owns until the next call on `db`, copied here at once.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }.to_string_lossy().into_owned();
    let statement: String = sql.chars().take(60).collect();
    StoreError::Unavailable(format!(
        "error returned from database: (code: {code}) {message} (in {statement:?}…)"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::{ConnectOptions as _, Row as _};

    use super::*;

    async fn connection(dir: &tempfile::TempDir) -> CachedConnection {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("d.db"))
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .create_if_missing(true);
        let mut conn = options.connect().await.expect("open");
        sqlx::query(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, n INTEGER, b BLOB NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .expect("create");
        CachedConnection::new(conn)
    }

    const INSERT: &str = "INSERT INTO t (k, n, b) VALUES (?1, ?2, ?3) ON CONFLICT (k) DO NOTHING";

    #[tokio::test]
    async fn inserts_report_new_rows_and_skipped_keys_and_sqlx_sees_them() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = connection(&dir).await;
        {
            let mut direct = conn.direct().await.expect("lock");
            direct.execute_batch("BEGIN").expect("begin");
            let mut insert = direct.prepare(INSERT).expect("prepare");
            let key = String::from("a");
            let first = insert.insert(&[Value::Text(&key), Some(5).into(), Value::Blob(b"body")]).expect("a");
            assert_eq!(first, Inserted { changes: 1, rowid: 1 });
            let empty = insert.insert(&["b".into(), None::<i64>.into(), Value::Blob(&[])]).expect("b");
            assert_eq!(empty.changes, 1);
            let again = insert.insert(&["a".into(), Value::Int(6), Value::Blob(b"other")]).expect("a again");
            assert_eq!(again.changes, 0, "a stored key is skipped");
            direct.execute_batch("COMMIT").expect("commit");
        }
        // sqlx's worker has the connection again and reads what was written.
        let rows =
            sqlx::query("SELECT k, n, b FROM t ORDER BY id").fetch_all(&mut *conn).await.expect("read");
        let read: Vec<(String, Option<i64>, Vec<u8>)> =
            rows.iter().map(|r| (r.get("k"), r.get("n"), r.get("b"))).collect();
        assert_eq!(read, [("a".to_owned(), Some(5), b"body".to_vec()), ("b".to_owned(), None, Vec::new())]);
    }

    #[tokio::test]
    async fn a_query_answers_its_rows_as_one_text_and_runs_again() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = connection(&dir).await;
        sqlx::query("INSERT INTO t (k, n, b) VALUES ('a', 1, x''), ('b', 2, x''), ('é', 3, x'')")
            .execute(&mut *conn)
            .await
            .expect("rows");
        const QUERY: &str =
            "SELECT json_group_array(json_array(k, n)) FROM (SELECT k, n FROM t WHERE n >= ?1 ORDER BY n)";
        let mut direct = conn.direct().await.expect("lock");
        let mut query = direct.prepare(QUERY).expect("prepare");
        assert_eq!(query.text(&[Value::Int(2)]).expect("from 2"), r#"[["b",2],["é",3]]"#);
        assert_eq!(query.text(&[Value::Int(9)]).expect("none"), "[]");
        let mut none = direct.prepare("SELECT k FROM t WHERE n > 100").expect("prepare");
        let error = none.text(&[]).expect_err("no row").to_string();
        assert!(error.contains("answered no row"), "{error}");
        let mut null = direct.prepare("SELECT NULL").expect("prepare");
        assert!(null.text(&[]).expect_err("NULL").to_string().contains("NULL"));
    }

    #[tokio::test]
    async fn a_failed_step_says_why_and_the_statement_still_runs() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = connection(&dir).await;
        let mut direct = conn.direct().await.expect("lock");
        let mut insert = direct.prepare(INSERT).expect("prepare");
        // `b` is NOT NULL.
        let wrong = insert.insert(&["a".into(), Value::Int(1), Value::Null]).expect_err("NULL body");
        assert!(wrong.to_string().contains("NOT NULL constraint failed: t.b"), "{wrong}");
        let right =
            insert.insert(&["a".into(), Value::Int(1), Value::Blob(b"x")]).expect("after the failure");
        assert_eq!(right.changes, 1);
        let unknown = direct.prepare("INSERT INTO missing VALUES (1)").err().expect("no such table");
        assert!(unknown.to_string().contains("no such table: missing"), "{unknown}");
        let syntax = direct.execute_batch("BEGIN NONSENSE").expect_err("syntax");
        assert!(syntax.to_string().contains("syntax error"), "{syntax}");
    }

    #[tokio::test]
    async fn a_statement_is_prepared_once_per_connection_and_runs_again_with_new_values() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = connection(&dir).await;
        let first = {
            let mut direct = conn.direct().await.expect("lock");
            let mut insert = direct.prepare(INSERT).expect("prepare");
            insert.insert(&["a".into(), Value::Int(1), Value::Blob(b"x")]).expect("a");
            insert.stmt
        };
        // A query of sqlx's between two locks of the handle.
        let count = sqlx::query("SELECT COUNT(*) AS n FROM t").fetch_one(&mut *conn).await.expect("count");
        assert_eq!(count.get::<i64, _>("n"), 1);
        let mut direct = conn.direct().await.expect("lock again");
        let mut insert = direct.prepare(INSERT).expect("prepare again");
        assert_eq!(insert.stmt, first, "the second prepare found the first statement");
        let b = insert.insert(&["b".into(), Value::Int(2), Value::Blob(b"y")]).expect("b");
        assert_eq!(b, Inserted { changes: 1, rowid: 2 });
    }

    /// SQLite removes a WAL database's `-wal` file when its last
    /// connection closes, and only if `sqlite3_close` succeeds, which it
    /// does not while a statement lives.
    #[tokio::test]
    async fn a_dropped_connection_finalizes_its_statements_and_closes() {
        let dir = tempfile::tempdir().expect("dir");
        let wal = dir.path().join("d.db-wal");
        let mut conn = connection(&dir).await;
        {
            let mut direct = conn.direct().await.expect("lock");
            let mut insert = direct.prepare(INSERT).expect("prepare");
            insert.insert(&["a".into(), Value::Int(1), Value::Blob(b"x")]).expect("a");
        }
        assert!(wal.exists(), "the open connection has a WAL");
        drop(conn);
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!wal.exists(), "the connection was not closed: a statement outlived it");
    }
}
