//! The store conformance suite (see [`crate::testing`]): every test runs
//! unchanged against both engines. The gateway's own store tests (its
//! group committer, API keys, paged usage) are in `meterd::store`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::*;
use crate::meter::Kind;
use crate::meter::period::Range;
use crate::plans::standing::{Effect, Run};
use crate::testing::*;

crate::conformance!(
    a_redelivery_is_a_duplicate_and_counts_nothing,
    a_revised_window_is_a_correction_applied_once_with_an_audit_row,
    a_lease_is_exclusive_until_it_expires_and_fences_stale_holders,
    queries_read_the_range_and_the_levels_in_force_when_it_starts,
    plans_and_grants_are_stored_and_a_plan_credit_once,
    a_notice_fires_once_and_its_outbox_rows_are_delivered_or_given_up,
    standings_load_the_period_and_the_start_of_running_sessions,
    concurrent_commits_of_one_event_count_it_once,
    old_payloads_are_purged_and_still_deduplicate,
    replay_reads_deliveries_in_order_and_applies_fixes_only_to_what_it_read,
    a_correction_moves_a_record_to_the_delivery_that_made_it,
    rollups_equal_the_engine_on_random_histories_and_after_a_rebuild,
    two_writers_correcting_one_record_audit_it_once,
    corrections_of_one_record_in_one_batch_apply_in_order,
    a_replay_set_is_what_had_committed_when_it_was_taken,
);

#[test]
fn seqs_count_earlier_records_with_the_same_event_id() {
    let records = [record("a", 1), record("b", 1), record("a", 2), record("a", 3)];
    let seqs: Vec<i64> = with_seqs(&records).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [0, 0, 1, 2]);
}

async fn a_redelivery_is_a_duplicate_and_counts_nothing(store: Arc<dyn Store>) {
    let first = store.commit(&[delivery("e1", vec![record("e1", 3)])]).await.unwrap();
    assert_eq!(first, [CommitOutcome { duplicate: false }]);
    // Again, alone and twice within one batch next to a new one.
    let again = store
        .commit(&[
            delivery("e1", vec![record("e1", 3)]),
            delivery("e2", vec![record("e2", 4)]),
            delivery("e2", vec![record("e2", 4)]),
        ])
        .await
        .unwrap();
    let duplicates: Vec<bool> = again.iter().map(|o| o.duplicate).collect();
    assert_eq!(duplicates, [true, false, true]);
    assert_eq!(total(store.as_ref()).await, Decimal::from(7));
}

async fn a_revised_window_is_a_correction_applied_once_with_an_audit_row(store: Arc<dyn Store>) {
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
    assert_eq!(total(store.as_ref()).await, Decimal::from(12 + 5 + 1));
    let audit = store.corrections("daytona", "w1").await.unwrap();
    assert_eq!(audit, vec![(0, Decimal::from(10), Decimal::from(12))]);
    let states = store.poll_states().await.unwrap();
    assert_eq!(states[0].cursor.as_deref(), Some("c3"));
    assert_eq!(states[0].last_success_ms, Some(1_000));
}

/// Deliveries in one commit batch revise the same record, stored before or
/// new in the batch: the batch reads as the deliveries arriving one after
/// the other, so what is stored does not depend on how they were batched.
async fn corrections_of_one_record_in_one_batch_apply_in_order(store: Arc<dyn Store>) {
    let t = 1_754_513_976_000;
    store.commit(&[delivery("d1", vec![record("x", 1), level("lx", "sb-1", t, 1)])]).await.unwrap();
    let batch = [
        delivery(
            "d2",
            vec![record("x", 2), record("y", 7), level("lx", "sb-1", t, 2), level("ly", "sb-2", t, 4)],
        ),
        delivery(
            "d3",
            vec![record("x", 3), record("y", 9), level("lx", "sb-1", t, 3), level("ly", "sb-2", t, 6)],
        ),
        delivery("d4", vec![record("x", 3), record("y", 9)]),
    ];
    let outcomes = store.commit(&batch).await.unwrap();
    assert!(outcomes.iter().all(|o| !o.duplicate), "{outcomes:?}");
    // x: 1 → 2 → 3, then 3 again (a duplicate); y: new in d2 as 7, revised
    // by d3 to 9, then 9 again. The levels likewise (lx 1 → 2 → 3; ly new
    // as 4, then 6).
    assert_eq!(total(store.as_ref()).await, Decimal::from(3 + 9));
    let audit = store.corrections("e2b", "x").await.unwrap();
    assert_eq!(audit, vec![(0, Decimal::from(1), Decimal::from(2)), (0, Decimal::from(2), Decimal::from(3))]);
    let audit = store.corrections("e2b", "y").await.unwrap();
    assert_eq!(audit, vec![(0, Decimal::from(7), Decimal::from(9))]);
    let audit = store.corrections("e2b", "ly").await.unwrap();
    assert_eq!(audit, vec![(0, Decimal::from(4), Decimal::from(6))]);
    let check = store.check_rollups(5).await.unwrap();
    assert_eq!(check.differences, 0, "{:?}", check.examples);
}

async fn a_lease_is_exclusive_until_it_expires_and_fences_stale_holders(store: Arc<dyn Store>) {
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
    assert_eq!(total(store.as_ref()).await, Decimal::ZERO, "nothing from the fenced commit");
    store.record_poll_failure("daytona", "d-org", "b", "upstream 500", 1_700, 5_000).await.unwrap();
    store.record_poll_failure("daytona", "d-org", "b", "upstream 502", 1_800, 9_000).await.unwrap();
    let state = store.poll_states().await.unwrap().into_iter().find(|s| s.target == "d-org").unwrap();
    assert_eq!(
        (state.consecutive_failures, state.last_error.as_deref(), state.next_run_ms),
        (2, Some("upstream 502"), 9_000)
    );
}

async fn queries_read_the_range_and_the_levels_in_force_when_it_starts(store: Arc<dyn Store>) {
    store
        .commit(&[delivery(
            "levels",
            vec![
                level("l1", "a", 100, 1),
                level("l2", "a", 200, 0),
                level("l3", "a", 300, 1),
                level("l4", "b", 150, 1),
                level("l5", "b", 500, 0),
            ],
        )])
        .await
        .unwrap();
    // Carry-in at 250: a's last level before is 0 (at 200), b's is 1 (at 150).
    let q = query("sandbox_active", 250, 1_000, Some("template"));
    let mut carry: Vec<(String, i64, Decimal, Option<String>)> = store
        .carry_in(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.subject, p.at_ms, p.quantity, p.group))
        .collect();
    carry.sort();
    assert_eq!(
        carry,
        vec![
            ("a".to_owned(), 200, Decimal::ZERO, Some("t-a".to_owned())),
            ("b".to_owned(), 150, Decimal::ONE, Some("t-b".to_owned())),
        ]
    );
    let mut points: Vec<(String, i64)> =
        store.points(&q).await.unwrap().into_iter().map(|p| (p.subject, p.at_ms)).collect();
    points.sort();
    assert_eq!(points, vec![("a".to_owned(), 300), ("b".to_owned(), 500)]);
    // Exact decimals survive the round trip.
    let mut exact = record("exact", 0);
    exact.quantity = meterd_units::parse_quantity("0.0000000000000000000000000001").unwrap();
    store.commit(&[delivery("exact", vec![exact.clone()])]).await.unwrap();
    let found = store.points(&query("sandbox_cpu_core_seconds", 0, i64::MAX, None)).await.unwrap();
    assert_eq!(found.iter().map(|p| p.quantity).collect::<Vec<_>>(), vec![exact.quantity]);
}

async fn plans_and_grants_are_stored_and_a_plan_credit_once(store: Arc<dyn Store>) {
    let grant = |plan: Option<&str>, amount: &str| NewGrant {
        org_id: "acme".to_owned(),
        amount: meterd_units::parse_quantity(amount).unwrap(),
        currency: "USD".to_owned(),
        effective_at_ms: 0,
        expires_at_ms: Some(5_000),
        priority: 10,
        created_at_ms: 1,
        source: plan.map_or("api".to_owned(), |p| format!("plan:{p}")),
        plan: plan.map(str::to_owned),
    };
    let assignment =
        |plan: &str, at: i64| OrgPlan { org_id: "acme".into(), plan: plan.into(), assigned_at_ms: at };
    let stored = store.assign_plan(&assignment("pro", 10), &[grant(Some("pro"), "100")]).await.unwrap();
    assert_eq!(stored.len(), 1);
    let again = store.assign_plan(&assignment("pro", 20), &[grant(Some("pro"), "100")]).await.unwrap();
    assert!(again.is_empty(), "a plan's credit is granted once");
    let api = store.insert_grant(&grant(None, "0.000001")).await.unwrap();
    let api2 = store.insert_grant(&grant(None, "2.5")).await.unwrap();
    assert_ne!(api.id, api2.id, "API grants never conflict");
    assert_eq!(store.org_plans().await.unwrap(), vec![assignment("pro", 20)]);
    let grants = store.grants("acme").await.unwrap();
    let amounts: Vec<String> = grants.iter().map(|g| meterd_units::format_quantity(g.amount)).collect();
    assert_eq!(amounts, ["100", "0.000001", "2.5"]);
    assert_eq!((grants[0].expires_at_ms, grants[0].priority), (Some(5_000), 10));
    assert!(store.grants("other").await.unwrap().is_empty());
}

async fn a_notice_fires_once_and_its_outbox_rows_are_delivered_or_given_up(store: Arc<dyn Store>) {
    let notice = Notice {
        org_id: "acme".into(),
        rule: "quota:cpu:80".into(),
        period_start_ms: 1_000,
        event_type: "quota.threshold_reached".into(),
        payload: "{\"type\":\"quota.threshold_reached\"}".into(),
        endpoints: vec!["a".into(), "b".into()],
    };
    assert_eq!(store.record_notices(std::slice::from_ref(&notice), 5_000).await.unwrap(), 2);
    assert_eq!(store.record_notices(std::slice::from_ref(&notice), 6_000).await.unwrap(), 0, "fired once");
    let next_period = Notice { period_start_ms: 2_000, ..notice.clone() };
    assert_eq!(store.record_notices(std::slice::from_ref(&next_period), 6_000).await.unwrap(), 2);
    assert_eq!(store.fired(1_000).await.unwrap(), vec![("acme".to_owned(), "quota:cpu:80".to_owned())]);

    let due = store.due_outbox(6_000, 10).await.unwrap();
    assert_eq!(due.len(), 4);
    assert_eq!(due[0].message_id, notice.message_id("a"));
    assert_eq!(due[0].payload, notice.payload);
    store.outbox_delivered(due[0].id, 6_100).await.unwrap();
    store.outbox_attempt_failed(due[1].id, "503", 6_100, Some(9_000)).await.unwrap();
    store.outbox_attempt_failed(due[2].id, "503", 6_100, None).await.unwrap();
    let later = store.due_outbox(9_000, 10).await.unwrap();
    let ids: Vec<i64> = later.iter().map(|m| m.id).collect();
    assert!(ids.contains(&due[1].id) && !ids.contains(&due[0].id) && !ids.contains(&due[2].id), "{later:?}");
    assert_eq!(later.iter().find(|m| m.id == due[1].id).unwrap().attempts, 1);
    let counts = store.outbox_counts().await.unwrap();
    assert_eq!(counts, OutboxCounts { pending: 2, delivered: 1, gave_up: 1 });
}

async fn standings_load_the_period_and_the_start_of_running_sessions(store: Arc<dyn Store>) {
    // February 1970; a: on at 100, off at 200, on at 300 and 400 (still
    // running); b: on at 150, off at 500, on again in the period; c: on
    // after `now` (a provider clock ahead). A delta before and one in the
    // period.
    const P: i64 = 2_678_400_000;
    let now = P + 10_000;
    let mut before = record("d-before", 7);
    before.at_ms = 900;
    let mut inside = record("d-inside", 3);
    inside.at_ms = P + 1_500;
    store
        .commit(&[delivery(
            "history",
            vec![
                level("l1", "a", 100, 1),
                level("l2", "a", 200, 0),
                level("l3", "a", 300, 1),
                level("l4", "a", 400, 1),
                level("l5", "b", 150, 1),
                level("l6", "b", 500, 0),
                level("l7", "b", P + 1_200, 1),
                level("l8", "c", P + 20_000, 1),
                before,
                inside,
            ],
        )])
        .await
        .unwrap();
    let snapshot = store.standing_snapshot(now).await.unwrap();
    let seed = |metric: &str| {
        snapshot.series.iter().find(|s| s.metric == metric).unwrap_or_else(|| panic!("a seed of {metric}"))
    };
    let active = seed("sandbox_active");
    assert_eq!((active.org_id.as_str(), active.carry), ("acme", Decimal::ONE), "a runs into the period");
    assert_eq!(active.hours.len(), 1);
    assert_eq!(active.hours[0].0, P);
    assert_eq!((active.hours[0].1.records, active.hours[0].1.level_step), (2, Decimal::from(2)));
    assert_eq!(active.steps_after, vec![(P + 20_000, Decimal::ONE)], "only c's step is after now");
    let cpu = seed("sandbox_cpu_core_seconds");
    assert_eq!((cpu.carry, cpu.hours.len(), cpu.hours[0].1.delta_sum), (Decimal::ZERO, 1, Decimal::from(3)));
    assert_eq!(snapshot.series.len(), 2);

    let run = |subject: &str, started_ms, ended_ms| Run { subject: subject.to_owned(), started_ms, ended_ms };
    let mut open = snapshot.open_runs.clone();
    open.sort();
    assert_eq!(
        open,
        vec![
            ("acme".to_owned(), run("a", 300, None)),
            ("acme".to_owned(), run("b", P + 1_200, None)),
            ("acme".to_owned(), run("c", P + 20_000, None)),
        ]
    );
    // Closed runs: a [100, 200) and b [150, 500); "longer than" is strict.
    assert_eq!(
        store.long_runs("acme", 0, 99).await.unwrap(),
        vec![run("a", 100, Some(200)), run("b", 150, Some(500))]
    );
    assert_eq!(store.long_runs("acme", 0, 100).await.unwrap(), vec![run("b", 150, Some(500))]);
    assert_eq!(
        store.long_runs("acme", 250, 0).await.unwrap(),
        vec![run("b", 150, Some(500))],
        "ended after 250"
    );
    assert!(store.long_runs("other", 0, 0).await.unwrap().is_empty());

    // A late record that joins b's two runs into one: the runs follow.
    store.commit(&[delivery("late", vec![level("l9", "b", 500, 1)])]).await.unwrap();
    assert_eq!(store.long_runs("acme", 0, 99).await.unwrap(), vec![run("a", 100, Some(200))]);
    let open = store.standing_snapshot(now).await.unwrap().open_runs;
    assert!(open.contains(&("acme".to_owned(), run("b", 150, None))), "{open:?}");
}

async fn concurrent_commits_of_one_event_count_it_once(store: Arc<dyn Store>) {
    // Many writers deliver the same events at once (replicas do on
    // PostgreSQL; on SQLite the writer serializes them).
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut fresh = 0;
            for n in 0..20 {
                let id = format!("shared-{n}");
                let batch =
                    [delivery(&id, vec![record(&id, 1)]), delivery(&format!("own-{writer}-{n}"), vec![])];
                let outcomes = store.commit(&batch).await.expect("commit");
                fresh += usize::from(!outcomes[0].duplicate);
            }
            fresh
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        fresh += t.await.unwrap();
    }
    assert_eq!(fresh, 20, "each shared event is new exactly once");
    assert_eq!(total(store.as_ref()).await, Decimal::from(20));
}

async fn old_payloads_are_purged_and_still_deduplicate(store: Arc<dyn Store>) {
    let old = Delivery { received_at_ms: 1_000, ..delivery("old", vec![record("old", 2)]) };
    let new = Delivery {
        received_at_ms: 5_000,
        path: "/hooks/a b/ü".to_owned(),
        query: Some("x=1&y=%20".to_owned()),
        ..delivery("new", vec![record("new", 3)])
    };
    store.commit(&[old.clone(), new.clone()]).await.unwrap();
    assert_eq!(store.purge_payloads(3_000, 9_000).await.unwrap(), 1);
    assert_eq!(store.purge_payloads(3_000, 9_001).await.unwrap(), 0, "purged once");
    let payloads: Vec<(String, Payload)> = store
        .deliveries(
            "e2b",
            range(0, 10_000),
            &store.replay_set("e2b", range(0, 10_000)).await.unwrap(),
            None,
            10,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.event_id, d.payload))
        .collect();
    assert_eq!(
        payloads,
        [
            ("old".to_owned(), Payload::Purged { at_ms: 9_000 }),
            (
                "new".to_owned(),
                Payload::Kept {
                    path: new.path.clone(),
                    query: new.query.clone(),
                    headers: new.headers.clone(),
                    body: new.body.clone()
                }
            ),
        ]
    );
    // The dedup key outlives the payload; usage is untouched.
    assert_eq!(store.commit(&[old]).await.unwrap(), [CommitOutcome { duplicate: true }]);
    assert_eq!(total(store.as_ref()).await, Decimal::from(5));
}

/// Records what the store tells the commit hook.
#[derive(Default)]
struct RecordingHook(std::sync::Mutex<Vec<OrgEffect>>);

impl CommitHook for RecordingHook {
    fn records_written(&self, _tx: Option<TxId>, effects: &[OrgEffect], _now_ms: i64) -> Vec<Notice> {
        self.0.lock().unwrap().extend_from_slice(effects);
        Vec::new()
    }
    fn rolled_back(&self, _tx: Option<TxId>, effects: &[OrgEffect], _notices: &[Notice]) {
        self.0.lock().unwrap().retain(|c| !effects.contains(c));
    }
    fn committed(&self, _outbox_rows: usize) {}
}

fn range(from_ms: i64, to_ms: i64) -> Range {
    Range::new(from_ms, to_ms).unwrap()
}

async fn replay_reads_deliveries_in_order_and_applies_fixes_only_to_what_it_read(store: Arc<dyn Store>) {
    let hook = Arc::new(RecordingHook::default());
    store.set_commit_hook(hook.clone());
    // Committed out of order; two received at the same instant (ties by id).
    let at = |event: &str, ms: i64, records| Delivery { received_at_ms: ms, ..delivery(event, records) };
    store.commit(&[at("c", 3_000, vec![record("c", 5)])]).await.unwrap();
    store.commit(&[at("a", 1_000, vec![record("a", 2), record("a", 3)])]).await.unwrap();
    store.commit(&[at("b1", 2_000, vec![record("b1", 4)]), at("b2", 2_000, vec![])]).await.unwrap();
    store
        .commit(&[Delivery { plugin: "other".into(), ..at("x", 2_000, vec![record("x", 1)]) }])
        .await
        .unwrap();
    hook.0.lock().unwrap().clear();

    assert_eq!(store.replay_set("e2b", range(0, 10_000)).await.unwrap().total, 4);
    assert_eq!(store.replay_set("e2b", range(1_500, 3_000)).await.unwrap().total, 2, "[from, to)");
    // Paged one at a time, in the order received.
    let mut seen = Vec::new();
    let mut after = None;
    while let Some(d) = store
        .deliveries(
            "e2b",
            range(0, 10_000),
            &store.replay_set("e2b", range(0, 10_000)).await.unwrap(),
            after,
            1,
        )
        .await
        .unwrap()
        .pop()
    {
        after = Some((d.received_at_ms, d.id));
        seen.push(d);
    }
    let events: Vec<&str> = seen.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(events, ["a", "b1", "b2", "c"]);
    assert!(matches!(&seen[0].payload, Payload::Kept { body, .. } if body == b"{}"));
    let page = store
        .deliveries(
            "e2b",
            range(1_000, 2_001),
            &store.replay_set("e2b", range(1_000, 2_001)).await.unwrap(),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 3);

    // A's records: by delivery, and by event id.
    let a = &seen[0];
    let by_delivery = store.delivery_records("e2b", &[a.id], &[]).await.unwrap();
    let by_event = store.delivery_records("e2b", &[], &["a".to_owned()]).await.unwrap();
    let both = store.delivery_records("e2b", &[a.id], &["a".to_owned(), "c".to_owned()]).await.unwrap();
    assert_eq!(by_delivery, by_event);
    assert_eq!(both.len(), 3, "each record once");
    assert_eq!(by_delivery.len(), 2);
    assert_eq!(by_delivery[1].seq, 1);
    assert_eq!(by_delivery[1].delivery_id, Some(a.id));
    assert_eq!(by_delivery[1].record, record("a", 3));
    assert!(store.delivery_records("other", &[a.id], &[]).await.unwrap().is_empty(), "per plugin");

    // Correct a#1 3 → 6, withdraw a#0, add a#2: one transaction.
    let added = UsageRecord { metric: "sandbox_ram_gibi_seconds".into(), ..record("a", 7) };
    let fixes = vec![
        RecordFix::Correct { record: by_delivery[1].clone(), delivery_id: a.id, to: Decimal::from(6) },
        RecordFix::Correct { record: by_delivery[0].clone(), delivery_id: a.id, to: Decimal::ZERO },
        RecordFix::Insert { delivery_id: a.id, seq: 2, record: added.clone() },
    ];
    store.apply_fixes("e2b", &fixes, 9_000).await.unwrap();
    assert_eq!(total(store.as_ref()).await, Decimal::from(6 + 4 + 5 + 1));
    let audit = store.corrections("e2b", "a").await.unwrap();
    assert_eq!(audit, vec![(1, Decimal::from(3), Decimal::from(6)), (0, Decimal::from(2), Decimal::ZERO)]);
    let now = store.delivery_records("e2b", &[a.id], &[]).await.unwrap();
    assert_eq!(now.len(), 3);
    assert_eq!((now[2].seq, &now[2].record, now[2].delivery_id), (2, &added, Some(a.id)));
    // The hook heard what the fixes changed per metric and hour: the CPU
    // corrections (+3, −2) added no record, the RAM insert one.
    let hour = crate::meter::rollup::hour_of(record("a", 0).at_ms);
    let heard: Vec<(String, Effect)> =
        hook.0.lock().unwrap().iter().map(|e| (e.metric.clone(), e.effect.clone())).collect();
    assert_eq!(
        heard,
        [
            (
                "sandbox_cpu_core_seconds".to_owned(),
                Effect::Records { at_ms: hour, added: 0, delta: Decimal::ONE }
            ),
            (
                "sandbox_ram_gibi_seconds".to_owned(),
                Effect::Records { at_ms: hour, added: 1, delta: Decimal::from(7) }
            ),
        ]
    );

    // Fixes computed from what is no longer stored: refused, nothing written.
    hook.0.lock().unwrap().clear();
    let c = store.delivery_records("e2b", &[seen[3].id], &[]).await.unwrap();
    let stale = vec![
        RecordFix::Correct { record: c[0].clone(), delivery_id: seen[3].id, to: Decimal::from(50) },
        RecordFix::Correct { record: by_delivery[1].clone(), delivery_id: a.id, to: Decimal::from(9) },
    ];
    assert!(matches!(store.apply_fixes("e2b", &stale, 9_100).await, Err(StoreError::Conflict(_))));
    let taken = vec![RecordFix::Insert { delivery_id: a.id, seq: 2, record: added.clone() }];
    assert!(matches!(store.apply_fixes("e2b", &taken, 9_100).await, Err(StoreError::Conflict(_))));
    assert_eq!(total(store.as_ref()).await, Decimal::from(6 + 4 + 5 + 1), "c was not corrected either");
    assert_eq!(store.corrections("e2b", "c").await.unwrap(), vec![]);
    assert!(hook.0.lock().unwrap().is_empty(), "rolled back");
}

/// Deliveries are stamped on arrival and committed later: one received
/// earlier than a page already read, or within the range, that commits
/// while a replay pages is not in its set (it was neither counted nor, for
/// the earlier one, reachable behind the cursor).
async fn a_replay_set_is_what_had_committed_when_it_was_taken(store: Arc<dyn Store>) {
    let at = |event: &str, received_at_ms: i64| Delivery { received_at_ms, ..delivery(event, vec![]) };
    for (i, t) in [1_000, 2_000, 3_000, 4_000, 5_000].into_iter().enumerate() {
        store.commit(&[at(&format!("d{i}"), t)]).await.unwrap();
    }
    let whole = range(0, 10_000);
    let set = store.replay_set("e2b", whole).await.unwrap();
    assert_eq!(set.total, 5);
    let first = store.deliveries("e2b", whole, &set, None, 2).await.unwrap();
    // Two more commit meanwhile: one received before the cursor, one after.
    store.commit(&[at("late-early", 500), at("late-inside", 4_500)]).await.unwrap();
    let mut seen: Vec<String> = first.iter().map(|d| d.event_id.clone()).collect();
    let mut after = first.last().map(|d| (d.received_at_ms, d.id));
    loop {
        let page = store.deliveries("e2b", whole, &set, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.received_at_ms, last.id));
        seen.extend(page.iter().map(|d| d.event_id.clone()));
    }
    assert_eq!(seen, ["d0", "d1", "d2", "d3", "d4"]);
    assert_eq!(seen.len() as u64, set.total);
    // A set taken now has them.
    assert_eq!(store.replay_set("e2b", whole).await.unwrap().total, 7);
}

async fn a_correction_moves_a_record_to_the_delivery_that_made_it(store: Arc<dyn Store>) {
    // Delivery "first" reports fact "f"; a later delivery revises it.
    store.commit(&[delivery("first", vec![record("f", 1)])]).await.unwrap();
    store.commit(&[delivery("second", vec![record("f", 2)])]).await.unwrap();
    store.commit(&[delivery("third", vec![record("f", 2)])]).await.unwrap();
    let deliveries = store
        .deliveries(
            "e2b",
            range(0, 10_000),
            &store.replay_set("e2b", range(0, 10_000)).await.unwrap(),
            None,
            10,
        )
        .await
        .unwrap();
    let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
    let records = store.delivery_records("e2b", &ids, &[]).await.unwrap();
    assert_eq!(records.len(), 1);
    // The correction moved it; the duplicate did not.
    assert_eq!(records[0].delivery_id, Some(ids[1]));
    assert_eq!(records[0].record.quantity, Decimal::from(2));
    // A poll's correction makes it the poll's.
    assert!(store.acquire_lease("e2b", "d-org", "me", 0, 10_000).await.unwrap().is_some());
    let polled = PollCommit { plugin: "e2b".into(), ..poll("me", vec![record("f", 3)], "c1") };
    store.commit_poll(&polled).await.unwrap();
    let records = store.delivery_records("e2b", &[], &["f".to_owned()]).await.unwrap();
    assert_eq!((records[0].delivery_id, records[0].record.quantity), (None, Decimal::from(3)));
}

/// Random webhooks (three at a time), polls that insert and correct, and
/// replay fixes, around hour and month boundaries; then every rollup
/// answer must equal the engine's over the raw records, the check must
/// find nothing, and a rebuild must change nothing.
async fn rollups_equal_the_engine_on_random_histories_and_after_a_rebuild(store: Arc<dyn Store>) {
    use crate::meter::period::month_containing;
    use crate::meter::rollup::{HOUR_MS, SeriesKey, query as rollup_query};
    use crate::meter::{Aggregation, MeterDef, UsageQuery, aggregate};
    use meterd_core::testing::Rng;

    // The sandbox metric, so that runs are kept (and checked) too.
    const M: &str = crate::plans::SANDBOX_ACTIVE_METRIC;
    // 2025-08-31T20:00:00Z: the history crosses into September.
    const BASE: i64 = 1_756_670_400_000;
    let mut rng = Rng::new(20251202);
    let mut pool: Vec<i64> = (0..14).map(|_| BASE + rng.between(-2 * HOUR_MS, 6 * HOUR_MS)).collect();
    pool.extend([BASE, BASE + HOUR_MS, month_containing(BASE + 5 * HOUR_MS).from_ms]);
    let subjects = ["sb-a", "sb-b", "sb-c"];
    // Half the records arrive in order, after every instant of the pool (the
    // usual case, which SQLite's writer answers from its tails), half late.
    let mut clock = BASE + 6 * HOUR_MS;
    let mut make = |rng: &mut Rng, event_id: String| UsageRecord {
        event_id,
        org_id: "acme".to_owned(),
        subject: rng.pick(&subjects).to_owned(),
        metric: M.to_owned(),
        kind: if rng.chance(70) { Kind::Level } else { Kind::Delta },
        quantity: rng.quantity(),
        at_ms: if rng.chance(50) {
            clock += rng.between(0, 3) * 60_000;
            clock
        } else {
            rng.pick(&pool)
        },
        window_start_ms: None,
        attributes: match rng.below(3) {
            0 => BTreeMap::new(),
            n => BTreeMap::from([("template".to_owned(), format!("t{n}"))]),
        },
    };
    assert!(store.acquire_lease("poller", "t", "me", 0, i64::MAX).await.unwrap().is_some());
    let mut polled: Vec<UsageRecord> = Vec::new();
    for round in 0..30 {
        let mut writers = Vec::new();
        for w in 0..3 {
            let records: Vec<UsageRecord> =
                (0..1 + rng.below(3)).map(|_| make(&mut rng, format!("w{round}-{w}"))).collect();
            let store = store.clone();
            let d = delivery(&format!("w{round}-{w}"), records);
            writers.push(tokio::spawn(async move { store.commit(&[d]).await }));
        }
        for w in writers {
            w.await.expect("writer").expect("commit");
        }
        if rng.chance(60) {
            let record = match polled.len() {
                n if n > 0 && rng.chance(50) => {
                    let mut again = polled[rng.below(n)].clone();
                    again.quantity = rng.quantity();
                    again
                }
                _ => make(&mut rng, format!("p{round}")),
            };
            polled.push(record.clone());
            let commit = PollCommit {
                plugin: "poller".into(),
                target: "t".into(),
                holder: "me".into(),
                records: vec![record],
                next_cursor: None,
                now_ms: 1,
                next_run_ms: 1,
                lease_expires_ms: i64::MAX,
            };
            store.commit_poll(&commit).await.expect("poll");
        }
    }
    let events: Vec<String> = (0..10).map(|r| format!("w{r}-0")).collect();
    let stored = store.delivery_records("e2b", &[], &events).await.expect("records");
    let fixes: Vec<RecordFix> = stored
        .iter()
        .filter_map(|r| {
            let to = rng.quantity();
            (to != r.record.quantity).then(|| RecordFix::Correct {
                record: r.clone(),
                delivery_id: r.delivery_id.expect("a webhook's record"),
                to,
            })
        })
        .take(4)
        .collect();
    assert!(!fixes.is_empty());
    store.apply_fixes("e2b", &fixes, 2).await.expect("fixes");

    let series = SeriesKey { org_id: "acme".to_owned(), metric: M.to_owned() };
    let queries: Vec<UsageQuery> = (0..60).map(|_| rng.usage_query(BASE)).collect();
    for pass in ["as written", "after a rebuild"] {
        let report = store.check_rollups(5).await.expect("check");
        assert_eq!(report.differences, 0, "{pass}: {:?}", report.examples);
        assert!(
            report.records > 60
                && report.hours > 0
                && report.steps > 0
                && report.runs > 3
                && report.group_hours > 0,
            "{pass}: {report:?}"
        );
        for query_ in &queries {
            for aggregation in Aggregation::ALL {
                let meter = MeterDef { name: "x".into(), metric: M.into(), aggregation, unit: "u".into() };
                let raw = query(M, query_.range.from_ms, query_.range.to_ms, None);
                let points = store.points(&raw).await.expect("points");
                let carry = store.carry_in(&raw).await.expect("carry-in");
                let want = aggregate(&meter, query_, &carry, &points).expect("engine");
                let plan = rollup_query::plan(query_.range, aggregation, query_.now_ms, query_.window);
                let input = store
                    .rollup_input(&series, &plan, aggregation, query_.range.from_ms)
                    .await
                    .expect("input");
                let got = rollup_query::evaluate(&meter, query_, &input).expect("rollups");
                assert_eq!(got, want, "{pass}: {aggregation:?} {query_:?}");
                // Grouped by the declared key: sums and counts from the
                // group hours, levels from the groups' level series.
                let grouped = UsageQuery { grouped: true, ..*query_ };
                let raw = query(M, query_.range.from_ms, query_.range.to_ms, Some("template"));
                let points = store.points(&raw).await.expect("points");
                let got = if matches!(aggregation, Aggregation::Sum | Aggregation::Count) {
                    let input = store.group_input(&series, "template", &plan).await.expect("group input");
                    crate::meter::rollup::groups::evaluate_grouped(&meter, &grouped, &input).expect("groups")
                } else {
                    let input = store
                        .group_level_input(&series, "template", &plan, query_.range)
                        .await
                        .expect("group level input");
                    crate::meter::rollup::groups::evaluate_grouped_levels(&meter, &grouped, &input)
                        .expect("group levels")
                };
                let carry = levels_before(store.as_ref(), M, query_.range.from_ms, "template").await;
                let want = aggregate(&meter, &grouped, &carry, &points).expect("engine");
                assert_eq!(got, want, "{pass}: grouped {aggregation:?} {query_:?}");
            }
        }
        store.rebuild_rollups().await.expect("rebuild");
    }
}

/// A Daytona poll by the holder of `target`'s lease writing `keys` with
/// `quantity` each.
fn keys_polled(keys: &[UsageRecord], target: &str, quantity: i64) -> PollCommit {
    PollCommit {
        plugin: "daytona".into(),
        target: target.into(),
        holder: target.into(),
        records: keys
            .iter()
            .map(|r| UsageRecord { quantity: Decimal::from(quantity), ..r.clone() })
            .collect(),
        next_cursor: None,
        now_ms: 1,
        next_run_ms: 1,
        lease_expires_ms: i64::MAX,
    }
}

/// Two pollers (two targets of one plugin) correct the same records to the
/// same new quantities at once: each record is corrected once, with one
/// audit row, and the other write is a duplicate.
async fn two_writers_correcting_one_record_audit_it_once(store: Arc<dyn Store>) {
    let keys: Vec<UsageRecord> = (0..20).map(|i| record(&format!("ev{i}"), 1)).collect();
    for target in ["t1", "t2"] {
        assert!(store.acquire_lease("daytona", target, target, 0, i64::MAX).await.unwrap().is_some());
    }
    let commit = |target: &str, quantity: i64| keys_polled(&keys, target, quantity);
    store.commit_poll(&commit("t1", 1)).await.expect("first");
    let (a, b) = (store.clone(), store.clone());
    let (c1, c2) = (commit("t1", 2), commit("t2", 2));
    let first = tokio::spawn(async move { a.commit_poll(&c1).await });
    let second = tokio::spawn(async move { b.commit_poll(&c2).await });
    let first = first.await.expect("task").expect("commit");
    let second = second.await.expect("task").expect("commit");
    assert_eq!(first.corrected + second.corrected, 20, "{first:?} {second:?}");
    assert_eq!(first.duplicates + second.duplicates, 20, "{first:?} {second:?}");
    for i in 0..20 {
        let audit = store.corrections("daytona", &format!("ev{i}")).await.unwrap();
        assert_eq!(audit.len(), 1, "ev{i}: {audit:?}");
    }
}

/// SQLite's writer answers in-order levels from its tails; a commit by
/// another connection (here a second store on the file, as another process
/// would be) must make it read again: a level written between its last
/// instant and the other writer's would otherwise miss the step after it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_tails_answer_in_order_levels_and_are_dropped_when_another_writer_commits() {
    let engine = sqlite().await;
    let other = SqliteStore::open(&engine.url).await.expect("second store");
    let ours = SqliteStore::open(&engine.url).await.expect("store");
    let sandbox = |event: &str, at_ms: i64, quantity: i64| {
        let mut r = level(event, "sb-x", at_ms, quantity);
        r.metric = crate::plans::SANDBOX_ACTIVE_METRIC.to_owned();
        delivery(event, vec![r])
    };
    let t = 1_754_513_976_000;
    for (n, quantity) in [1, 0, 1].into_iter().enumerate() {
        let event = format!("ours-{n}");
        ours.commit(&[sandbox(&event, t + n as i64 * 1_000, quantity)]).await.expect("commit");
    }
    assert_eq!(ours.tails.len(), 1, "the writer keeps the subject's tail");
    other.commit(&[sandbox("other", t + 10_000, 3)]).await.expect("other commit");
    ours.commit(&[sandbox("late-for-us", t + 5_000, 2)]).await.expect("commit");
    let report = ours.check_rollups(5).await.expect("check");
    assert_eq!(report.differences, 0, "{:?}", report.examples);
    assert_eq!(report.runs, 2, "{report:?}");
}

/// SQLite writes a commit's rollup rows on its handle in the lock the
/// `COMMIT` takes (`SqliteStore::finish_in_lock`). When that write fails, nothing
/// of the batch is committed and the caller gets the reason; the writer
/// goes on, its kept statements prepared again after another connection
/// changed the schema.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_failed_rollup_write_commits_nothing_and_the_writer_goes_on() {
    use sqlx::Connection as _;
    let engine = sqlite().await;
    let store = engine.store.clone();
    store.commit(&[delivery("before", vec![record("before", 1)])]).await.expect("first commit");
    let mut other = sqlx::SqliteConnection::connect(&engine.url).await.expect("second connection");
    for (name, event) in [("refuse_new_hours", "INSERT"), ("refuse_hour_updates", "UPDATE")] {
        sqlx::query(&format!(
            "CREATE TRIGGER {name} BEFORE {event} ON rollup_hours \
             BEGIN SELECT RAISE(ABORT, 'hours refused by the test'); END"
        ))
        .execute(&mut other)
        .await
        .expect("trigger");
    }
    let batch = [delivery("during", vec![record("during", 2)])];
    let refused = store.commit(&batch).await.expect_err("the rollup write is refused");
    assert!(refused.to_string().contains("hours refused by the test"), "{refused}");
    for name in ["refuse_new_hours", "refuse_hour_updates"] {
        sqlx::query(&format!("DROP TRIGGER {name}")).execute(&mut other).await.expect("drop trigger");
    }
    let outcomes = store.commit(&batch).await.expect("the same batch, once the hours are accepted");
    assert!(!outcomes[0].duplicate, "the refused commit stored its delivery");
    assert_eq!(total(store.as_ref()).await, Decimal::from(1 + 2));
    let report = store.check_rollups(5).await.expect("check");
    assert_eq!(report.differences, 0, "{:?}", report.examples);
}

/// The writer leaves checkpoints to the background checkpointer: what a
/// commit wrote reaches the database file soon after, although the WAL
/// stays far below any automatic checkpoint's threshold (2 MiB is ~520
/// pages; SQLite's default is 1,000, the writer's backstop 10,000).
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_checkpoints_run_beside_the_commits() {
    let engine = sqlite().await;
    let path = std::path::PathBuf::from(engine.url.trim_start_matches("sqlite://"));
    let size = || std::fs::metadata(&path).map(|m| m.len()).expect("database file");
    let before = size();
    let mut big = delivery("big", vec![record("big", 1)]);
    big.body = vec![b'x'; 2 << 20];
    engine.store.commit(&[big]).await.expect("commit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while size() < before + (2 << 20) {
        assert!(std::time::Instant::now() < deadline, "the database file stayed at {} bytes", size());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(total(engine.store.as_ref()).await, Decimal::from(1));
}

/// Two replicas write the same new keys with different quantities, and the
/// second one's insert meets the first one's committed rows (it looked the
/// keys up before they existed). Its quantities must still land, as
/// corrections with an audit row each, not be counted as duplicates and
/// dropped. The interleaving is forced: a third connection holds a lock on
/// the records table until both writers wait at their insert.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_another_replica_inserts_meanwhile_is_corrected_not_dropped() {
    use sqlx::Connection as _;
    let engine = postgres().await;
    let (one, two): (Arc<dyn Store>, Arc<dyn Store>) = (
        Arc::new(PostgresStore::open(&engine.url).await.expect("replica one").with_group_by(group_by())),
        Arc::new(PostgresStore::open(&engine.url).await.expect("replica two").with_group_by(group_by())),
    );
    for (store, target) in [(&one, "t1"), (&two, "t2")] {
        assert!(store.acquire_lease("daytona", target, target, 0, i64::MAX).await.unwrap().is_some());
    }
    let keys: Vec<UsageRecord> = (0..10).map(|i| record(&format!("ev{i}"), 0)).collect();
    let commit = |target: &str, quantity: i64| keys_polled(&keys, target, quantity);
    let mut gate = sqlx::PgConnection::connect(&engine.url).await.expect("gate connection");
    sqlx::query("BEGIN").execute(&mut gate).await.unwrap();
    sqlx::query("LOCK TABLE usage_records IN EXCLUSIVE MODE").execute(&mut gate).await.unwrap();
    let (c1, c2) = (commit("t1", 1), commit("t2", 2));
    let first = tokio::spawn(async move { one.commit_poll(&c1).await });
    let second = tokio::spawn(async move { two.commit_poll(&c2).await });
    // Both have looked the keys up and wait to insert them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE relation = 'usage_records'::regclass AND NOT granted",
        )
        .fetch_one(&mut gate)
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the writers never reached their insert");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sqlx::query("COMMIT").execute(&mut gate).await.unwrap();
    let first = first.await.expect("task").expect("commit");
    let second = second.await.expect("task").expect("commit");
    // Whichever inserted, the other corrected every key to its quantity.
    let (inserter, corrector, last) =
        if first.inserted > 0 { (first, second, 2) } else { (second, first, 1) };
    assert_eq!((inserter.inserted, inserter.corrected, inserter.duplicates), (10, 0, 0), "{inserter:?}");
    assert_eq!((corrector.inserted, corrector.corrected, corrector.duplicates), (0, 10, 0), "{corrector:?}");
    let store = engine.store.clone();
    for i in 0..10 {
        let audit = store.corrections("daytona", &format!("ev{i}")).await.unwrap();
        assert_eq!(audit, vec![(0, Decimal::from(3 - last), Decimal::from(last))], "ev{i}");
    }
    assert_eq!(total(store.as_ref()).await, Decimal::from(10 * last));
    let report = store.check_rollups(5).await.expect("check");
    assert_eq!(report.differences, 0, "{:?}", report.examples);
}
