//! Hosted mode end to end: three `meterd` processes on one PostgreSQL
//! database, started at once (migrations race), behind no load balancer but
//! a client that spreads signed webhooks over them, delivering every event
//! twice to two different replicas in random order. Mid-run the replica
//! holding the Daytona poll lease is killed with SIGKILL while its poll
//! request is in flight. Then: every event acknowledged and stored once,
//! exact totals and identical entitlements on the survivors, the polls
//! taken over by another replica after the lease, and every window counted
//! once.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike as _, SecondsFormat, Utc};
use meterd::api::ops::Poll;
use meterd::api::orgs::{CheckAnswer, Entitlements};
use meterd::api::usage::Usage;
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use support::Body;
use support::daytona::{MINUTE, daytona_section_with, now_minute, start_upstream};
use support::postgres::TestDatabase;
use support::{E2B_SECRET, Gateway, Options, e2b_event, e2b_signature};

const REPLICAS: usize = 3;
const ORGS: usize = 6;
/// Sandboxes per org that run and are killed (each: created + killed).
const FINISHED: usize = 20;
/// The poll request held in flight when its replica is killed.
const HELD_REQUEST: usize = 5;
const POLL_LEASE_S: u64 = 12;

/// A small hard CPU quota, to see the same denial on every replica.
const PLANS: &str = r#"
[plans.metered]
[plans.metered.quotas]
sandbox_cpu_core_seconds = { limit = "50", enforcement = "hard" }
"#;

/// xorshift64*: a reproducible shuffle without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

struct Event {
    body: Vec<u8>,
    org: usize,
    /// vCPU-seconds this event adds: vCPUs × execution ms / 1000.
    cpu: Decimal,
}

/// This month's events: per org, `FINISHED` sandboxes created and killed
/// (with execution data) and one created and still running.
fn events() -> Vec<Event> {
    let now = Utc::now();
    let month_start = now.date_naive().with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    // Spread over the last seconds, never before this month began.
    let stamp = |i: usize| {
        let t =
            DateTime::<Utc>::from_timestamp_millis(now.timestamp_millis() - 1_000 - 100 * i as i64).unwrap();
        t.max(month_start).to_rfc3339_opts(SecondsFormat::Millis, true)
    };
    let mut out = Vec::new();
    for org in 0..ORGS {
        let tenant = format!("r-org-{org}");
        for s in 0..=FINISHED {
            let sandbox = format!("r-sbx-{org}-{s}");
            let created = format!("r-{org}-{s}-created");
            out.push(Event {
                body: e2b_event(&created, "created", &stamp(2 * s + 1), &sandbox, &tenant, None),
                org,
                cpu: Decimal::ZERO,
            });
            if s < FINISHED {
                let (vcpu, ms) = (1 + (s % 4) as u64, 1_000 + 37 * (s + org) as u64);
                out.push(Event {
                    body: e2b_event(
                        &format!("r-{org}-{s}-killed"),
                        "killed",
                        &stamp(2 * s),
                        &sandbox,
                        &tenant,
                        Some((vcpu, 512, ms)),
                    ),
                    org,
                    cpu: Decimal::from(vcpu * ms) / Decimal::from(1_000),
                });
            }
        }
    }
    out
}

/// Sends every (event, replica) delivery from `workers` concurrent tasks.
/// A delivery that fails (its replica was killed) is sent again to a live
/// replica, as a provider retries. Returns per event how often it was
/// acknowledged, and how many sends failed.
async fn deliver(
    bases: Arc<Vec<String>>,
    bodies: Arc<Vec<Vec<u8>>>,
    deliveries: Vec<(usize, usize)>,
    dead: Arc<Mutex<Option<usize>>>,
    sent: Arc<AtomicUsize>,
    workers: usize,
) -> (Vec<usize>, usize) {
    let queue = Arc::new(Mutex::new(deliveries));
    let failed = Arc::new(AtomicUsize::new(0));
    let acks = Arc::new(Mutex::new(vec![0usize; bodies.len()]));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (queue, acks, client, bases, bodies, dead, sent, failed) = (
            queue.clone(),
            acks.clone(),
            client.clone(),
            bases.clone(),
            bodies.clone(),
            dead.clone(),
            sent.clone(),
            failed.clone(),
        );
        tasks.spawn(async move {
            loop {
                let Some((event, first)) = queue.lock().unwrap().pop() else { return };
                let body = &bodies[event];
                let mut replica = first;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let response = client
                        .post(format!("{}/v1/ingest/e2b", bases[replica]))
                        .header("e2b-signature", e2b_signature(E2B_SECRET, body))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 200 => {
                            acks.lock().unwrap()[event] += 1;
                            break;
                        }
                        Ok(r) if r.status() != 503 => {
                            panic!("event {event} refused by replica {replica}: {}", r.status())
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "event {event} never acknowledged");
                            let down = *dead.lock().unwrap();
                            replica = (replica + 1) % bases.len();
                            if Some(replica) == down {
                                replica = (replica + 1) % bases.len();
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a delivery worker failed");
    }
    (Arc::try_unwrap(acks).unwrap().into_inner().unwrap(), failed.load(Ordering::Relaxed))
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn get<T: Serialize + DeserializeOwned>(client: &reqwest::Client, url: String) -> T {
    let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let (status, body) = Body::of(response).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    body.json()
}

/// The poll state of the Daytona target as a replica reports it.
async fn poll_state(gw: &Gateway) -> Option<Poll> {
    gw.poll_state("daytona", support::daytona::ORG).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_count_every_event_once_through_a_kill_9_and_hand_over_polls() {
    let db = TestDatabase::fresh("meterd_e2e").await;
    let (upstream_url, upstream) = start_upstream().await;
    // The holder's fifth request hangs until long after it is killed.
    upstream.lock().unwrap().hold = Some((HELD_REQUEST, Duration::from_secs(120)));
    let start = now_minute() - 20 * MINUTE;
    let tuning = format!(
        "lookback = \"0m\"\nhttp_timeout_ms = 180000\nmax_windows_per_poll = 1\npoll_lease = \"{POLL_LEASE_S}s\"\n"
    );
    let section = daytona_section_with(&upstream_url, "http://127.0.0.1:*", start, &tuning, "");
    let options = || Options {
        plugins: vec!["e2b", "daytona"],
        database: Some(db.url.clone()),
        sections: format!("{PLANS}\n{section}"),
        ..Options::default()
    };
    // All three start at once: they race to migrate the empty database.
    let mut gateways: Vec<Gateway> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let starting: Vec<_> = (0..REPLICAS).map(|_| s.spawn(|| Gateway::start(options()))).collect();
            starting.into_iter().map(|h| h.join().expect("a gateway failed to start")).collect()
        })
    });
    let client = reqwest::Client::new();

    let events = events();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut deliveries = Vec::new();
    for event in 0..events.len() {
        let first = rng.below(REPLICAS);
        let second = (first + 1 + rng.below(REPLICAS - 1)) % REPLICAS;
        deliveries.extend([(event, first), (event, second)]);
    }
    rng.shuffle(&mut deliveries);
    let total_deliveries = deliveries.len();
    let bases = Arc::new(gateways.iter().map(|g| g.base.clone()).collect::<Vec<_>>());
    let bodies = Arc::new(events.iter().map(|e| e.body.clone()).collect::<Vec<_>>());
    let dead = Arc::new(Mutex::new(None));
    let sent = Arc::new(AtomicUsize::new(0));
    let sending = tokio::spawn(deliver(bases.clone(), bodies, deliveries, dead.clone(), sent.clone(), 12));

    // Once a third is delivered and the poll request is held, kill the
    // replica whose poller holds the lease (and so the held request).
    let deadline = Instant::now() + Duration::from_secs(90);
    while sent.load(Ordering::Relaxed) < total_deliveries / 3
        || upstream.lock().unwrap().requests.len() < HELD_REQUEST
    {
        assert!(Instant::now() < deadline, "neither a third delivered nor the poll request held within 90 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let state = poll_state(&gateways[0]).await.expect("the Daytona target has a poll state");
    let holder = state.lease_holder.expect("a lease holder");
    let victim = gateways
        .iter()
        .position(|g| g.pid().is_some_and(|pid| holder.split(':').nth(1) == Some(&pid.to_string())))
        .unwrap_or_else(|| panic!("no replica holds the lease {holder}"));
    *dead.lock().unwrap() = Some(victim);
    gateways[victim].kill9();
    let killed_at = Instant::now();
    let held_window = upstream.lock().unwrap().requests[HELD_REQUEST - 1];
    let (acks, failed_sends) = sending.await.expect("delivering");
    assert!(failed_sends > 0, "deliveries to the killed replica failed and were sent elsewhere");
    let live: Vec<&Gateway> =
        gateways.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, g)| g).collect();

    // Every event acknowledged; each stored exactly once.
    assert!(acks.iter().all(|a| *a >= 1), "every event acknowledged at least once");
    let mut conn = db.connect().await;
    let (stored, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM deliveries WHERE plugin = 'e2b'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((stored, distinct), (events.len() as i64, events.len() as i64));

    // Exact totals, and the same entitlements on every survivor (the
    // killed replica's commits included), converging within seconds.
    let mut expected_cpu = [Decimal::ZERO; ORGS];
    for e in &events {
        expected_cpu[e.org] += e.cpu;
    }
    let month = now_minute() - 40 * 24 * 60 * MINUTE;
    for (org, expected) in expected_cpu.iter().enumerate() {
        for gw in &live {
            let usage: Usage = get(
                &client,
                gw.url(&format!(
                    "/v1/orgs/r-org-{org}/usage?meter=sandbox_cpu_core_seconds&from={}&to={}",
                    iso(month),
                    iso(now_minute() + 2 * MINUTE)
                )),
            )
            .await;
            let total: Decimal = usage.total.0.parse().expect("a decimal total");
            assert_eq!(total, *expected, "org {org} on {}", gw.base);
        }
    }
    let converge_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut views = BTreeMap::new();
        for gw in &live {
            for org in 0..ORGS {
                let e: Entitlements =
                    get(&client, gw.url(&format!("/v1/orgs/r-org-{org}/entitlements"))).await;
                let cpu = e
                    .meters
                    .iter()
                    .find(|m| m.meter == "sandbox_cpu_core_seconds")
                    .expect("the CPU meter")
                    .used
                    .0
                    .parse::<Decimal>()
                    .expect("a decimal");
                views.insert((gw.base.clone(), org), (cpu, Some(e.concurrency.running)));
            }
        }
        let right =
            views.iter().all(|((_, org), (cpu, running))| *cpu == expected_cpu[*org] && *running == Some(1));
        if right {
            break;
        }
        assert!(Instant::now() < converge_deadline, "entitlements did not converge: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A plan assigned through one replica limits checks on every replica.
    let (status, body) = live[0].put_json("/v1/orgs/r-org-0", &json!({"plan": "metered"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(expected_cpu[0] > Decimal::from(50), "org 0 is over the 50 vCPU-s quota");
    for gw in &live {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, d) = gw
                .post_json(
                    "/v1/orgs/r-org-0/check",
                    &json!({"meter": "sandbox_cpu_core_seconds", "quantity": "1"}),
                )
                .await;
            assert_eq!(status, 200, "{d}");
            let decision: CheckAnswer = d.json();
            if !decision.allow {
                assert_eq!(decision.reasons[0].code, "quota_exhausted", "{d}");
                break;
            }
            assert!(Instant::now() < deadline, "{} never saw the plan change: {d}", gw.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Polls: another replica took the lease over after it lapsed and went
    // on from the held window; every window was counted once.
    let settled = now_minute() - MINUTE;
    let deadline = Instant::now() + Duration::from_secs(90);
    let state = loop {
        if let Some(s) = poll_state(live[0]).await
            && s.cursor.as_deref().and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| c >= settled)
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the polls were not taken over and caught up within 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new_holder = state.lease_holder.as_deref().expect("a lease holder");
    assert_ne!(new_holder, holder, "another replica holds the lease");
    let cursor: i64 = state.cursor.as_deref().and_then(|c| c.parse().ok()).expect("a cursor");
    let (requests, arrived) = {
        let u = upstream.lock().unwrap();
        (u.requests.clone(), u.arrived.clone())
    };
    let mut counts: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for w in &requests {
        *counts.entry(*w).or_default() += 1;
    }
    let twice: BTreeSet<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(w, _)| *w).collect();
    assert_eq!(twice, BTreeSet::from([held_window]), "only the window in flight at the kill is asked again");
    assert_eq!(counts[&held_window], 2);
    let mut at = start;
    for (from, to) in counts.keys().filter(|(_, to)| *to <= cursor) {
        assert_eq!((*from, to - from), (at, MINUTE), "windows tile [start, cursor): {counts:?}");
        at = *to;
    }
    assert_eq!(at, cursor);
    let retaken = requests.iter().rposition(|w| *w == held_window).unwrap();
    let takeover = arrived[retaken].duration_since(killed_at);
    eprintln!("poll lease taken over {takeover:?} after the kill (lease {POLL_LEASE_S} s)");
    let minutes = (cursor - start) / MINUTE;
    let usage: Usage = get(
        &client,
        live[1].url(&format!(
            "/v1/orgs/acme/usage?meter=sandbox_cpu_core_seconds&from={}&to={}",
            iso(start + 1_000),
            iso(cursor + 1_000)
        )),
    )
    .await;
    assert_eq!(usage.total.0, (60 * minutes).to_string(), "each window counted once");
}
