//! The gateway's store tests: its group committer, API keys as `keys`
//! mints them, and usage read in pages, each on both engines (the store's
//! own conformance suite is in `meterd_store`).

use std::collections::BTreeMap;
use std::sync::Arc;

use meterd_store::testing::{delivery, levels_before, query, record};

use super::*;
use crate::meter::Kind;
use crate::meter::period::Range;
use crate::record::UsageRecord;

meterd_store::conformance!(
    the_committer_commits_on_its_own_thread_and_drains_before_it_ends,
    api_keys_are_stored_without_secrets_and_revoked_once,
    grouped_queries_read_in_pages_equal_the_engine_over_the_whole_range,
);

/// The names of the threads the commit hook was called on.
#[derive(Default)]
struct HookThreads(std::sync::Mutex<Vec<String>>);

impl CommitHook for HookThreads {
    fn records_written(&self, _: Option<TxId>, _: &[OrgEffect], _: i64) -> Vec<Notice> {
        let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
        self.0.lock().expect("names").push(name);
        Vec::new()
    }
    fn rolled_back(&self, _: Option<TxId>, _: &[OrgEffect], _: &[Notice]) {}
    fn committed(&self, _: usize) {}
}

async fn the_committer_commits_on_its_own_thread_and_drains_before_it_ends(store: Arc<dyn Store>) {
    let threads = Arc::new(HookThreads::default());
    store.set_commit_hook(threads.clone());
    let (committer, task) = GroupCommitter::start(store.clone()).expect("committer");
    let mut callers = Vec::new();
    for n in 0..16 {
        let committer = committer.clone();
        let id = format!("own-thread-{n}");
        callers
            .push(tokio::spawn(async move { committer.commit(delivery(&id, vec![record(&id, 1)])).await }));
    }
    for caller in callers {
        let outcome = caller.await.expect("caller").expect("commit");
        assert!(!outcome.duplicate);
    }
    // The task ends once the last handle is gone and the queue is drained.
    drop(committer);
    task.await.expect("the committer thread ended cleanly");
    let names = threads.0.lock().expect("names").clone();
    assert!(!names.is_empty(), "the hook saw no commit");
    assert!(names.iter().all(|name| name == "meterd-commit"), "commits ran on {names:?}");
}

async fn api_keys_are_stored_without_secrets_and_revoked_once(store: Arc<dyn Store>) {
    use crate::keys::{self, Scope};
    let orgs = Scope::Orgs(["acme".to_owned(), "other \"org\"".to_owned()].into_iter().collect());
    let (tenant_token, tenant) = keys::create(store.as_ref(), orgs, Some("ci".into()), 10).await.unwrap();
    let (_, admin) = keys::create(store.as_ref(), Scope::Admin, None, 11).await.unwrap();
    let stored = store.api_keys().await.unwrap();
    assert_eq!(stored, [tenant.clone(), admin.clone()]);
    assert!(stored.iter().all(|k| !tenant_token.contains(&k.secret_hash)), "the secret is never stored");
    assert!(store.revoke_api_key(&tenant.id, 20).await.unwrap());
    assert!(!store.revoke_api_key(&tenant.id, 21).await.unwrap(), "revoked once");
    assert!(!store.revoke_api_key("nope", 21).await.unwrap());
    let after = store.api_keys().await.unwrap();
    assert_eq!(after[0].revoked_at_ms, Some(20));
    assert_eq!(after[1].revoked_at_ms, None);
    // The same id twice is refused by the database.
    assert!(store.insert_api_key(&admin).await.is_err());
}

/// Grouped usage read a page at a time (pages of 3 records or 2 subjects,
/// so every query spans many) equals the engine over the whole range's
/// records and carry-in, on random histories with late records and groups
/// that change under a subject.
async fn grouped_queries_read_in_pages_equal_the_engine_over_the_whole_range(store: Arc<dyn Store>) {
    use crate::meter::period::WindowSize;
    use crate::meter::{Aggregation, MeterDef, UsageQuery, aggregate};
    use crate::usage::{Pages, grouped};
    use meterd_core::testing::Rng;

    const BASE: i64 = 1_756_670_400_000;
    const HOUR: i64 = 3_600_000;
    let mut rng = Rng::new(20261203);
    let subjects = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    let groups = [None, Some("alpha"), Some("beta"), Some("gamma")];
    for batch in 0..40 {
        let records = (0..1 + rng.below(4))
            .map(|i| {
                let mut attributes = BTreeMap::new();
                if let Some(g) = rng.pick(&groups) {
                    attributes.insert("template".to_owned(), g.to_owned());
                }
                UsageRecord {
                    event_id: format!("g{batch}-{i}"),
                    org_id: "acme".to_owned(),
                    subject: rng.pick(&subjects).to_owned(),
                    metric: "g".to_owned(),
                    kind: if rng.chance(65) { Kind::Level } else { Kind::Delta },
                    quantity: rng.quantity(),
                    // Late and out of order: anywhere in a 30-hour span,
                    // half of them at a few shared instants (ties, and
                    // instants that a page of records would split).
                    at_ms: if rng.chance(50) {
                        BASE + rng.between(0, 30 * HOUR)
                    } else {
                        BASE + [0, HOUR, 7 * HOUR + 5, 20 * HOUR][rng.below(4)]
                    },
                    window_start_ms: None,
                    attributes,
                }
            })
            .collect();
        store.commit(&[delivery(&format!("g{batch}"), records)]).await.expect("commit");
    }
    let pages = Pages { points: 3, subjects: 2 };
    for _ in 0..25 {
        let from = BASE + rng.between(-2 * HOUR, 25 * HOUR);
        let to = from + rng.between(1, 30 * HOUR);
        let window = [None, Some(WindowSize::Hour), Some(WindowSize::Day)][rng.below(3)];
        let now_ms = BASE + rng.between(0, 40 * HOUR);
        let engine_query =
            UsageQuery { range: Range { from_ms: from, to_ms: to }, window, now_ms, grouped: true };
        let q = query("g", from, to, Some("template"));
        let points = store.points(&q).await.expect("points");
        let carry = levels_before(store.as_ref(), "g", from, "template").await;
        for aggregation in Aggregation::ALL {
            let meter = MeterDef { name: "x".into(), metric: "g".into(), aggregation, unit: "u".into() };
            let want = aggregate(&meter, &engine_query, &carry, &points).expect("engine");
            let got = grouped(store.as_ref(), &meter, &engine_query, &q, pages).await.expect("paged");
            assert_eq!(got, want, "paged: {aggregation:?} {engine_query:?}");
            // `template` is declared: the rollups answer the same.
            let usage = crate::usage::UsageService::new(store.clone(), vec![meter.clone()]);
            let request = crate::usage::UsageRequest {
                org_id: "acme".to_owned(),
                meter: "x".to_owned(),
                range: engine_query.range,
                window,
                group_by: Some("template".to_owned()),
            };
            let answer = usage.usage(&request, now_ms).await.expect("usage");
            assert_eq!(
                (answer.total, answer.windows),
                (want.total, want.windows),
                "rollups: {aggregation:?}"
            );
        }
    }
}
