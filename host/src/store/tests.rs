//! The store against a real SQLite file: dedup, corrections with their
//! audit trail, poll leases (exclusive, expiring, fenced) and cursors.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::*;
use crate::meter::Kind;

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    (dir, store)
}

fn record(event_id: &str, quantity: i64) -> UsageRecord {
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

fn poll(holder: &str, records: Vec<UsageRecord>, cursor: &str) -> PollCommit {
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

async fn total(store: &SqliteStore) -> Decimal {
    let q = PointQuery {
        org_id: "acme",
        metric: "sandbox_cpu_core_seconds",
        range: crate::meter::period::Range::new(0, i64::MAX).unwrap(),
        group_by: None,
    };
    store.points(&q).await.unwrap().iter().map(|p| p.quantity).sum()
}

#[test]
fn seqs_count_earlier_records_with_the_same_event_id() {
    let records = [record("a", 1), record("b", 1), record("a", 2), record("a", 3)];
    let seqs: Vec<i64> = with_seqs(&records).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [0, 0, 1, 2]);
}

#[tokio::test]
async fn a_revised_window_is_a_correction_applied_once_with_an_audit_row() {
    let (_dir, store) = store().await;
    assert!(store.acquire_lease("daytona", "d-org", "me", 0, 10_000).await.unwrap().is_some());
    let first = store.commit_poll(&poll("me", vec![record("w1", 10), record("w2", 5)], "c1")).await.unwrap();
    assert_eq!(first, RecordCounts { inserted: 2, duplicates: 0, corrected: 0 });
    // The same window re-read: duplicates. Then revised: one correction.
    let again = store.commit_poll(&poll("me", vec![record("w1", 10), record("w2", 5)], "c2")).await.unwrap();
    assert_eq!(again, RecordCounts { inserted: 0, duplicates: 2, corrected: 0 });
    let revised = store
        .commit_poll(&poll("me", vec![record("w1", 12), record("w2", 5), record("w3", 1)], "c3"))
        .await
        .unwrap();
    assert_eq!(revised, RecordCounts { inserted: 1, duplicates: 1, corrected: 1 });
    // Applying the same revision again changes nothing more.
    let replay = store.commit_poll(&poll("me", vec![record("w1", 12)], "c3")).await.unwrap();
    assert_eq!(replay, RecordCounts { inserted: 0, duplicates: 1, corrected: 0 });
    assert_eq!(total(&store).await, Decimal::from(12 + 5 + 1));
    let audit: Vec<(String, String)> = sqlx::query_as("SELECT old_quantity, new_quantity FROM corrections")
        .fetch_all(&store.readers)
        .await
        .unwrap();
    assert_eq!(audit, vec![("10".to_owned(), "12".to_owned())]);
    let states = store.poll_states().await.unwrap();
    assert_eq!(states[0].cursor.as_deref(), Some("c3"));
    assert_eq!(states[0].last_success_ms, Some(1_000));
}

#[tokio::test]
async fn a_lease_is_exclusive_until_it_expires_and_fences_stale_holders() {
    let (_dir, store) = store().await;
    assert!(store.acquire_lease("daytona", "d-org", "a", 0, 1_000).await.unwrap().is_some());
    assert!(store.acquire_lease("daytona", "d-org", "b", 500, 1_500).await.unwrap().is_none(), "held by a");
    assert!(store.acquire_lease("daytona", "d-org", "a", 600, 1_600).await.unwrap().is_some(), "a renews");
    assert!(
        store.acquire_lease("daytona", "other", "b", 600, 1_600).await.unwrap().is_some(),
        "targets are independent"
    );
    // a stops renewing; after expiry b takes over, and a's late commit is refused.
    let taken = store
        .acquire_lease("daytona", "d-org", "b", 1_600, 2_600)
        .await
        .unwrap()
        .expect("expired lease is free");
    assert_eq!(taken.lease_holder.as_deref(), Some("b"));
    let late = store.commit_poll(&poll("a", vec![record("w1", 10)], "c1")).await;
    assert!(matches!(late, Err(StoreError::LeaseLost { .. })), "{late:?}");
    assert_eq!(total(&store).await, Decimal::ZERO, "nothing from the fenced commit");
    store.record_poll_failure("daytona", "d-org", "b", "upstream 500", 1_700, 5_000).await.unwrap();
    store.record_poll_failure("daytona", "d-org", "b", "upstream 502", 1_800, 9_000).await.unwrap();
    let state = store.poll_states().await.unwrap().into_iter().find(|s| s.target == "d-org").unwrap();
    assert_eq!(
        (state.consecutive_failures, state.last_error.as_deref(), state.next_run_ms),
        (2, Some("upstream 502"), 9_000)
    );
}
