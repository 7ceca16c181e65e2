//! What the store's conformance suite and the gateway's store tests share.
//!
//! Every conformance test runs unchanged against both engines — SQLite (a
//! temporary file) and PostgreSQL (a fresh database per test on the server
//! named by `METERD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, created by the test and
//! dropped after it). No server is a failure that says how to start one,
//! never a skip.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::meter::Kind;
use crate::meter::Point;
use crate::meter::period::Range;
use crate::record::UsageRecord;
use crate::{Delivery, PointQuery, PollCommit, PostgresStore, SqliteStore, Store};

/// A store and what keeps its database alive.
pub struct Engine {
    pub store: Arc<dyn Store>,
    /// Where the store is: replicas open more stores on the same URL.
    pub url: String,
    _database: Database,
}

enum Database {
    File(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] meterd_testkit::postgres::TestDatabase),
}

/// A migrated store on a new SQLite file.
pub async fn sqlite() -> Engine {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.expect("open").with_group_by(group_by());
    store.migrate().await.expect("migrate");
    Engine { store: Arc::new(store), url, _database: Database::File(dir) }
}

/// Every conformance store keeps group hours for `template`, so that every
/// test's writes (and its checks) go through them too.
pub fn group_by() -> Vec<String> {
    vec!["template".to_owned()]
}

/// A migrated store on a fresh PostgreSQL database.
pub async fn postgres() -> Engine {
    let database = meterd_testkit::postgres::TestDatabase::fresh("meterd_test").await;
    let store = PostgresStore::open(&database.url).await.expect("open").with_group_by(group_by());
    store.migrate().await.expect("migrate");
    Engine { store: Arc::new(store), url: database.url.clone(), _database: Database::Postgres(database) }
}

/// Declares each test once per engine: `on_sqlite::name`, `on_postgres::name`.
/// Each `name` is an `async fn(Arc<dyn Store>)` beside the macro's call.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let engine = $crate::testing::sqlite().await;
                    super::$name(engine.store.clone()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let engine = $crate::testing::postgres().await;
                    super::$name(engine.store.clone()).await;
                }
            )*
        }
    };
}

/// A CPU delta of `quantity` for org `acme`, event `event_id`.
pub fn record(event_id: &str, quantity: i64) -> UsageRecord {
    UsageRecord {
        event_id: event_id.to_owned(),
        org_id: "acme".to_owned(),
        subject: "d-org".to_owned(),
        metric: "sandbox_cpu_core_seconds".to_owned(),
        kind: Kind::Delta,
        quantity: Decimal::from(quantity),
        at_ms: 1_754_513_976_000,
        window_start_ms: Some(1_754_513_076_000),
        attributes: BTreeMap::new(),
    }
}

/// A `sandbox_active` level of `subject` at `at_ms`, in template `t-<subject>`.
pub fn level(event_id: &str, subject: &str, at_ms: i64, quantity: i64) -> UsageRecord {
    UsageRecord {
        subject: subject.to_owned(),
        metric: "sandbox_active".to_owned(),
        kind: Kind::Level,
        at_ms,
        window_start_ms: None,
        attributes: BTreeMap::from([("template".to_owned(), format!("t-{subject}"))]),
        ..record(event_id, quantity)
    }
}

/// An E2B webhook delivery of `records`.
pub fn delivery(event_id: &str, records: Vec<UsageRecord>) -> Delivery {
    Delivery {
        plugin: "e2b".to_owned(),
        event_id: event_id.to_owned(),
        received_at_ms: 1_000,
        path: "/".to_owned(),
        query: None,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: b"{}".to_vec(),
        records,
    }
}

/// A Daytona poll of target `d-org` by `holder`, advancing to `cursor`.
pub fn poll(holder: &str, records: Vec<UsageRecord>, cursor: &str) -> PollCommit {
    PollCommit {
        plugin: "daytona".into(),
        target: "d-org".into(),
        holder: holder.into(),
        records,
        next_cursor: Some(cursor.into()),
        now_ms: 1_000,
        next_run_ms: 2_000,
        lease_expires_ms: 10_000,
    }
}

/// The points of `acme`'s `metric` in [from, to), grouped by `group_by`.
pub fn query<'a>(metric: &'a str, from_ms: i64, to_ms: i64, group_by: Option<&'a str>) -> PointQuery<'a> {
    PointQuery { org_id: "acme", metric, range: Range::new(from_ms, to_ms).expect("from < to"), group_by }
}

/// Every level record of `metric` before `from_ms`, grouped by `key`: what
/// a grouped level query passes the engine as carry-in (each names its
/// group).
pub async fn levels_before(store: &dyn Store, metric: &str, from_ms: i64, key: &str) -> Vec<Point> {
    let before = query(metric, i64::MIN, from_ms, Some(key));
    let points = store.points(&before).await.expect("points before");
    points.into_iter().filter(|p| p.kind == Kind::Level).collect()
}

/// The sum of every stored `sandbox_cpu_core_seconds` record of `acme`.
pub async fn total(store: &dyn Store) -> Decimal {
    let q = query("sandbox_cpu_core_seconds", 0, i64::MAX, None);
    store.points(&q).await.expect("points").iter().map(|p| p.quantity).sum()
}
