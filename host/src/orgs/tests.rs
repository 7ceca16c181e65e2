//! Replicas in one process, each with its own store on one fresh PostgreSQL
//! database: every replica's standings must come to equal what a fresh load
//! from the database gives, whoever committed what, and after the feed's
//! connection is cut.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tokio::sync::watch;

use super::{Orgs, Policy};
use crate::config::Config;
use crate::meter::Kind;
use crate::meter::period::month_containing;
use crate::record::UsageRecord;
use crate::store::{Delivery, PollCommit, PostgresStore, Store};
use meterd_store::testing::{Engine, postgres};

fn policy() -> Policy {
    let config = Config::parse("test", "", Vec::<(String, String)>::new()).expect("default config");
    crate::server::policy(&config)
}

struct Replica {
    store: Arc<dyn Store>,
    orgs: Arc<Orgs>,
    _stop: watch::Sender<bool>,
}

/// A store on `url` with its standings following the feed, as `serve` wires it.
async fn replica(url: &str) -> Replica {
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(url).await.expect("open"));
    let feed = store.listen().await.expect("listen").expect("PostgreSQL has a feed");
    let orgs = Orgs::load(store.clone(), policy(), crate::clock::now_ms()).await.expect("load");
    store.set_commit_hook(orgs.clone());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(orgs.clone().follow(feed, stopped));
    Replica { store, orgs, _stop: stop }
}

/// A replica whose feed the test can hold back: while `hold` is true,
/// what the feed reports waits (in order) before the replica sees it.
async fn replica_with_held_feed(url: &str) -> (Replica, watch::Sender<bool>) {
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(url).await.expect("open"));
    let mut feed = store.listen().await.expect("listen").expect("PostgreSQL has a feed");
    let orgs = Orgs::load(store.clone(), policy(), crate::clock::now_ms()).await.expect("load");
    store.set_commit_hook(orgs.clone());
    let (hold, mut held) = watch::channel(false);
    let (forward, delayed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = feed.recv().await {
            if held.wait_for(|h| !h).await.is_err() || forward.send(event).is_err() {
                return;
            }
        }
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(orgs.clone().follow(delayed, stopped));
    (Replica { store, orgs, _stop: stop }, hold)
}

/// This month, `offset_ms` after it began (never after now).
fn this_month(offset_ms: i64) -> i64 {
    let now = crate::clock::now_ms();
    (month_containing(now).from_ms + offset_ms).min(now)
}

fn record(
    event: &str,
    org: &str,
    subject: &str,
    metric: &str,
    kind: Kind,
    at_ms: i64,
    q: i64,
) -> UsageRecord {
    UsageRecord {
        event_id: event.to_owned(),
        org_id: org.to_owned(),
        subject: subject.to_owned(),
        metric: metric.to_owned(),
        kind,
        quantity: Decimal::from(q),
        at_ms,
        window_start_ms: None,
        attributes: BTreeMap::new(),
    }
}

/// Event `n`: CPU seconds for one of four orgs, and a sandbox that starts
/// (even n) or stops (odd n, the sandbox of n − 1, in the same org).
fn delivery(n: usize) -> Delivery {
    let org = format!("org-{}", n / 2 % 4);
    let sandbox = format!("sbx-{}", n / 2);
    let at = this_month(1_000 + n as i64);
    let event = format!("ev-{n}");
    Delivery {
        plugin: "e2b".to_owned(),
        event_id: event.clone(),
        received_at_ms: crate::clock::now_ms(),
        path: "/".to_owned(),
        query: None,
        headers: Vec::new(),
        body: b"{}".to_vec(),
        records: vec![
            record(&event, &org, &sandbox, "sandbox_cpu_core_seconds", Kind::Delta, at, n as i64 % 7 + 1),
            record(&event, &org, &sandbox, "sandbox_active", Kind::Level, at, i64::from(n.is_multiple_of(2))),
        ],
    }
}

const ORGS: [&str; 5] = ["org-0", "org-1", "org-2", "org-3", "org-poll"];

/// Waits until every replica's view of every org equals a fresh load from
/// the database (what a restarted replica would see).
async fn assert_converges(replicas: &[Replica]) {
    let now = crate::clock::now_ms();
    let truth = Orgs::load(replicas[0].store.clone(), policy(), now).await.expect("load");
    let mut expected = Vec::new();
    for o in ORGS {
        expected.push(truth.entitlements(o, now).await.expect("entitlements"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen: Vec<Vec<_>> = Vec::new();
        for r in replicas {
            let mut of_replica = Vec::new();
            for o in ORGS {
                of_replica.push(r.orgs.entitlements(o, now).await.expect("entitlements"));
            }
            seen.push(of_replica);
        }
        let unconfirmed: Vec<usize> =
            replicas.iter().map(|r| r.orgs.replication_status().unconfirmed).collect();
        if seen.iter().all(|s| *s == expected) && unconfirmed.iter().all(|u| *u == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: expected {expected:#?}\nseen {seen:#?}\nunconfirmed {unconfirmed:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Commits events `range` through the replicas, each event twice on two
/// different replicas, from concurrent tasks.
async fn commit_twice(replicas: &[Replica], range: std::ops::Range<usize>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, replica) in replicas.iter().enumerate() {
        let store = replica.store.clone();
        let n = replicas.len();
        let events: Vec<usize> = range.clone().filter(|e| e % n == i || (e + 1) % n == i).collect();
        tasks.spawn(async move {
            for chunk in events.chunks(5) {
                let batch: Vec<Delivery> = chunk.iter().map(|e| delivery(*e)).collect();
                store.commit(&batch).await.expect("commit");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("committer task");
    }
}

fn poll(holder: &str, quantity: i64, cursor: &str) -> PollCommit {
    let now = crate::clock::now_ms();
    PollCommit {
        plugin: "daytona".into(),
        target: "t".into(),
        holder: holder.into(),
        records: vec![record(
            "w-1",
            "org-poll",
            "d",
            "sandbox_cpu_core_seconds",
            Kind::Delta,
            this_month(5),
            quantity,
        )],
        next_cursor: Some(cursor.into()),
        now_ms: now,
        next_run_ms: now,
        lease_expires_ms: now + 60_000,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_sees_every_commit_once_corrections_and_plans_included() {
    let engine: Engine = postgres().await;
    let replicas = [replica(&engine.url).await, replica(&engine.url).await, replica(&engine.url).await];
    commit_twice(&replicas, 0..120).await;
    // A polled window on one replica, then revised: a correction.
    let now = crate::clock::now_ms();
    let lease =
        replicas[2].store.acquire_lease("daytona", "t", "r2", now, now + 60_000).await.expect("lease");
    assert!(lease.is_some());
    replicas[2].store.commit_poll(&poll("r2", 10, "1")).await.expect("poll");
    let counts = replicas[2].store.commit_poll(&poll("r2", 14, "2")).await.expect("revision");
    assert_eq!(counts.corrected, 1);
    // A plan assigned on one replica.
    replicas[1].orgs.assign("org-1", "pro", crate::clock::now_ms()).await.expect("assign");
    assert_converges(&replicas).await;
    for r in &replicas {
        assert_eq!(r.orgs.view("org-1", now).expect("view").plan, "pro");
        let (_, e) = r.orgs.entitlements("org-poll", now).await.expect("entitlements");
        let cpu = e.meters.iter().find(|m| m.meter == "sandbox_cpu_core_seconds").expect("cpu meter");
        assert_eq!(cpu.used, Decimal::from(14), "the revision replaced the window's 10");
    }
    // 120 events: 60 sandboxes started and stopped, none running.
    for org in ["org-0", "org-1", "org-2", "org-3"] {
        let (_, e) = replicas[1].orgs.entitlements(org, crate::clock::now_ms()).await.expect("entitlements");
        assert_eq!(e.concurrency.running, 0, "{org}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_feed_connection_is_repaired_by_a_rebuild_while_commits_go_on() {
    let engine: Engine = postgres().await;
    let replicas = [replica(&engine.url).await, replica(&engine.url).await];
    commit_twice(&replicas, 0..40).await;
    let during = async {
        commit_twice(&replicas, 40..200).await;
    };
    let cut = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&engine.url).await.expect("connect");
        let cut: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(crate::store::FEED_APPLICATION)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        assert_eq!(cut, 2, "one feed connection per replica");
    };
    tokio::join!(during, cut);
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas.iter().any(|r| r.orgs.replication_status().rebuilds == 0) {
        assert!(Instant::now() < deadline, "no rebuild after the feed was cut");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    commit_twice(&replicas, 200..240).await;
    assert_converges(&replicas).await;
}

/// The race of a replica's own commit against the feed: replica 1 starts
/// sandbox sbx-2 (event 4), then replica 0 stops it (event 5) while its
/// feed has not yet brought event 4. Replica 0 applies its own commit's
/// effects first ("remove the open run, add the closed one"), then event 4
/// ("add the open run") arrives: the sandbox must end stopped, as the
/// database has it, not running forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_applied_before_the_feed_brings_its_start_is_not_lost() {
    let engine: Engine = postgres().await;
    let (slow, hold) = replica_with_held_feed(&engine.url).await;
    let replicas = [slow, replica(&engine.url).await];
    hold.send_replace(true);
    replicas[1].store.commit(&[delivery(4)]).await.expect("start on replica 1");
    replicas[0].store.commit(&[delivery(5)]).await.expect("stop on replica 0");
    let now = crate::clock::now_ms();
    let (_, e) = replicas[0].orgs.entitlements("org-2", now).await.expect("entitlements");
    assert_eq!(e.concurrency.running, 0, "before the feed brought the start");
    hold.send_replace(false);
    assert_converges(&replicas).await;
    for r in &replicas {
        let (_, e) = r.orgs.entitlements("org-2", crate::clock::now_ms()).await.expect("entitlements");
        assert_eq!(e.concurrency.running, 0);
    }
}
