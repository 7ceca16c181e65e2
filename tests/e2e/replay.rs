//! Replay, end to end: a gateway ingests E2B webhooks with a buggy build of
//! the E2B plugin (0.0.9 read `memory_mb` as decimal megabytes: RAM 1.024×
//! too high), the fixed plugin is hot-swapped in, and `meterd replay`
//! (the real binary, against the running gateway) corrects exactly the RAM
//! meter: a dry run first changes nothing, the run corrects every RAM record
//! with an audit row, in-memory entitlements follow (on PostgreSQL on a
//! second replica too), a second run finds nothing to do. On SQLite and on
//! PostgreSQL.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use meterd::api::ErrorBody;
use meterd::api::keys::CreatedKey;
use meterd::api::ops::Plugins;
use meterd::api::orgs::Entitlements;
use meterd::api::replays::{ChangeKind, DeliveryCounts, RecordCounts, ReplayJob, ReplayState};
use meterd::api::usage::Usage;
use rust_decimal::Decimal;
use serde_json::json;
use support::postgres::TestDatabase;
use support::{ADMIN_TOKEN, Body, Gateway, Options, e2b_event, meterd_command};

const PLANS: &str = r#"
[plans.metered.quotas]
sandbox_cpu_core_seconds = { limit = "100000000", enforcement = "hard" }
sandbox_ram_gibi_seconds = { limit = "100000000", enforcement = "hard" }
"#;

const ORGS: [&str; 2] = ["acme", "globex"];
const CPU: &str = "sandbox_cpu_core_seconds";
const RAM: &str = "sandbox_ram_gibi_seconds";
const ACTIVE: &str = "sandbox_active";
/// Sandboxes in the test: each is created and later killed.
const SANDBOXES: usize = 150;
/// Events with no usage (other lifecycle types).
const OTHER_EVENTS: usize = 10;

fn q(text: &str) -> Decimal {
    meterd_units::parse_quantity(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The E2B events of the test, in sending order, and the exact RAM
/// GiB-seconds per org the fixed plugin computes (MiB / 1024 × ms / 1000).
fn events() -> (Vec<Vec<u8>>, BTreeMap<&'static str, Decimal>) {
    let now = Utc::now();
    // Within the last few seconds: this billing period, so entitlements count it.
    let at = |i: usize| rfc3339(now - chrono::Duration::milliseconds(5_000 - i as i64));
    let mut bodies = Vec::new();
    let mut ram: BTreeMap<&str, Decimal> = BTreeMap::new();
    for s in 0..SANDBOXES {
        let org = ORGS[s % 2];
        let sandbox = format!("sbx-{s}");
        let (vcpu, memory_mb, ms) = (1 + s as u64 % 4, [512, 1000, 2048, 3000][s % 4], 1_000 + 37 * s as u64);
        bodies.push(e2b_event(&format!("c-{s}"), "created", &at(2 * s), &sandbox, org, None));
        bodies.push(e2b_event(
            &format!("k-{s}"),
            "killed",
            &at(2 * s + 1),
            &sandbox,
            org,
            Some((vcpu, memory_mb, ms)),
        ));
        *ram.entry(org).or_default() +=
            Decimal::from(memory_mb) / Decimal::from(1024) * Decimal::from(ms) / Decimal::from(1000);
    }
    for i in 0..OTHER_EVENTS {
        bodies.push(e2b_event(&format!("u-{i}"), "updated", &at(2 * SANDBOXES + i), "sbx-0", "acme", None));
    }
    (bodies, ram)
}

/// The meters the test watches, per org: usage totals and entitlement use.
#[derive(Debug, Clone, PartialEq)]
struct Standing {
    totals: BTreeMap<(String, String), Decimal>,
    used: BTreeMap<(String, String), Decimal>,
}

async fn standing(gw: &Gateway) -> Standing {
    let now = Utc::now();
    let (from, to) = (rfc3339(now - chrono::Duration::days(1)), rfc3339(now + chrono::Duration::days(1)));
    let mut totals = BTreeMap::new();
    let mut used = BTreeMap::new();
    for org in ORGS {
        for meter in [CPU, RAM, ACTIVE] {
            let (status, body) =
                gw.get(&format!("/v1/orgs/{org}/usage?meter={meter}&from={from}&to={to}")).await;
            assert_eq!(status, 200, "{body}");
            totals.insert((org.to_owned(), meter.to_owned()), q(&body.json::<Usage>().total.0));
        }
        let (status, e) = gw.get(&format!("/v1/orgs/{org}/entitlements")).await;
        assert_eq!(status, 200, "{e}");
        for m in e.json::<Entitlements>().meters {
            used.insert((org.to_owned(), m.meter), q(&m.used.0));
        }
    }
    Standing { totals, used }
}

/// `meterd replay …` against the gateway, with its config (so its
/// admin_token) and URL.
fn replay(gw: &Gateway, args: &[&str]) -> Output {
    meterd_command()
        .arg("replay")
        .args(args)
        .arg("--url")
        .arg(&gw.base)
        .arg("--config")
        .arg(gw.config_path())
        .output()
        .expect("running meterd replay")
}

/// `meterd replay … --json`: the job as the API shows it.
fn replay_json(gw: &Gateway, args: &[&str]) -> ReplayJob {
    let mut all = args.to_vec();
    all.push("--json");
    let out = replay(gw, &all);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    Body(String::from_utf8_lossy(&out.stdout).into_owned()).json()
}

/// A replay job read from an answer (starting one, or `GET /v1/replays/{id}`).
async fn fetch_job(gw: &Gateway, id: &str) -> ReplayJob {
    let (status, job) = gw.get(&format!("/v1/replays/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job.json()
}

/// (old, new) of every correction, from the gateway's database.
async fn corrections(gw: &Gateway, db: Option<&TestDatabase>) -> Vec<(Decimal, Decimal)> {
    let sql = "SELECT CAST(old_quantity AS TEXT) AS o, CAST(new_quantity AS TEXT) AS n FROM corrections ORDER BY id";
    let rows: Vec<(String, String)> = match db {
        Some(db) => sqlx::query_as(sql).fetch_all(&mut db.connect().await).await.unwrap(),
        None => {
            let url = format!("sqlite://{}?mode=ro", gw.db_path().display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    };
    rows.iter().map(|(o, n)| (q(o), q(n))).collect()
}

fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn e2b_version(gw: &Gateway) -> String {
    let (status, body) = gw.get("/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    let plugins: Plugins = body.json();
    let e2b = plugins.plugins.into_iter().find(|p| p.name == "e2b").expect("e2b is loaded");
    e2b.version
}

async fn replay_after_a_plugin_fix_corrects_exactly_the_meter_it_computed_wrong(db: Option<TestDatabase>) {
    let buggy = meterd_plugin_build::test_component("e2b-ram-mb").expect("building the plugins");
    let mut gw = Gateway::start(Options {
        plugins: vec![],
        components: vec![("e2b", buggy)],
        admin_token: Some(ADMIN_TOKEN),
        sections: PLANS.to_owned(),
        database: db.as_ref().map(|db| db.url.clone()),
        ..Options::default()
    });
    assert_eq!(e2b_version(&gw).await, "0.0.9");
    // On PostgreSQL, a second replica: it hears of the corrections on the
    // change feed, never having run the replay.
    let replica = db.as_ref().map(|db| {
        Gateway::start(Options {
            admin_token: Some(ADMIN_TOKEN),
            sections: PLANS.to_owned(),
            database: Some(db.url.clone()),
            ..Options::default()
        })
    });
    for org in ORGS {
        let (status, body) = gw.put_json(&format!("/v1/orgs/{org}"), &json!({"plan": "metered"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (bodies, right_ram) = events();
    for body in &bodies {
        let (status, receipt) = gw.e2b(body).await;
        assert_eq!(status, 200, "{receipt}");
    }
    let before = standing(&gw).await;
    for org in ORGS {
        let key = (org.to_owned(), RAM.to_owned());
        assert_eq!(before.totals[&key], right_ram[org] * q("1.024"), "the buggy build is 1.024× off");
        assert_eq!(before.used[&key], before.totals[&key]);
    }

    // The fix ships: the real plugin replaces the buggy one, hot.
    let fixed = std::fs::read(support::component("e2b")).unwrap();
    replace_atomically(&gw.dir.path().join("plugins/e2b.wasm"), &fixed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while e2b_version(&gw).await == "0.0.9" {
        assert!(Instant::now() < deadline, "the fixed plugin was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A dry run says what would change and changes nothing.
    let dry = replay_json(&gw, &["--plugin", "e2b", "--dry-run"]);
    let report = &dry.report;
    let deliveries = (2 * SANDBOXES + OTHER_EVENTS) as u64;
    assert_eq!((dry.state, dry.dry_run), (ReplayState::Done, true), "{dry:#?}");
    let sandboxes = SANDBOXES as u64;
    assert_eq!(
        report.deliveries,
        DeliveryCounts {
            total: deliveries,
            done: deliveries,
            changed: sandboxes,
            unchanged: deliveries - sandboxes,
            purged: 0,
            failed: 0
        }
    );
    assert_eq!(
        report.records,
        RecordCounts {
            corrected: sandboxes,
            withdrawn: 0,
            added: 0,
            unchanged: 3 * sandboxes,
            superseded: 0,
            conflicts: 0
        }
    );
    let by_metric = &report.by_metric;
    assert_eq!(by_metric.len(), ORGS.len(), "only RAM changes, in each org: {by_metric:#?}");
    for (m, org) in by_metric.iter().zip(ORGS) {
        assert_eq!((m.org_id.as_str(), m.metric.as_str()), (org, RAM));
        let key = (org.to_owned(), RAM.to_owned());
        assert_eq!((q(&m.before.0), q(&m.after.0)), (before.totals[&key], right_ram[org]));
    }
    assert!(report.changes.iter().all(|c| c.metric == RAM && c.change == ChangeKind::Corrected));
    assert_eq!(standing(&gw).await, before, "a dry run writes nothing");
    assert!(corrections(&gw, db.as_ref()).await.is_empty());

    // The run: a progress bar on stderr, the report on stdout.
    let out = replay(&gw, &["--plugin", "e2b"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&format!("{deliveries}/{deliveries} deliveries  {SANDBOXES} records changed")),
        "{stderr}"
    );
    assert!(stdout.contains(&format!("records: {SANDBOXES} corrected, 0 withdrawn, 0 added")), "{stdout}");
    for org in ORGS {
        let row = stdout.lines().find(|l| l.starts_with(&format!("{org} "))).unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.get(1..3), Some(&[RAM, "75"][..]), "{org}'s row of the per-metric table: {stdout}");
    }

    let after = standing(&gw).await;
    for org in ORGS {
        for meter in [CPU, ACTIVE] {
            let key = (org.to_owned(), meter.to_owned());
            assert_eq!(after.totals[&key], before.totals[&key], "{org} {meter} is untouched");
        }
        let ram = (org.to_owned(), RAM.to_owned());
        assert_eq!(after.totals[&ram], right_ram[org], "{org}: RAM is now exact");
        let cpu = (org.to_owned(), CPU.to_owned());
        assert_eq!(
            (after.used[&ram], after.used[&cpu]),
            (right_ram[org], before.used[&cpu]),
            "standings follow"
        );
    }
    if let Some(replica) = &replica {
        let deadline = Instant::now() + Duration::from_secs(30);
        while standing(replica).await != after {
            assert!(Instant::now() < deadline, "the other replica never saw the corrections");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The same audit trail as any correction: one row per RAM record.
    let audit = corrections(&gw, db.as_ref()).await;
    assert_eq!(audit.len(), SANDBOXES);
    assert!(audit.iter().all(|(old, new)| *old == *new * q("1.024")), "{audit:?}");

    // Again: nothing left to do.
    let again = replay_json(&gw, &["--plugin", "e2b"]);
    assert_eq!(again.report.records.corrected, 0, "{again:#?}");
    assert_eq!(again.report.records.unchanged, 4 * SANDBOXES as u64);
    assert_eq!(corrections(&gw, db.as_ref()).await.len(), SANDBOXES);

    // Rebuilt from the database, the standings are the ones kept in memory.
    assert!(gw.stop().success());
    gw.restart();
    assert_eq!(standing(&gw).await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_corrects_history_on_sqlite() {
    replay_after_a_plugin_fix_corrects_exactly_the_meter_it_computed_wrong(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_corrects_history_on_postgres() {
    replay_after_a_plugin_fix_corrects_exactly_the_meter_it_computed_wrong(Some(
        TestDatabase::fresh("meterd_e2e").await,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn payloads_emptied_by_retention_are_counted_not_replayed() {
    let gw = Gateway::start(Options {
        extra_config: "payload_retention = \"1s\"\n".to_owned(),
        admin_token: Some(ADMIN_TOKEN),
        ..Options::default()
    });
    let body = e2b_event("old-1", "created", &rfc3339(Utc::now()), "sbx-1", "acme", None);
    assert_eq!(gw.e2b(&body).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, started) = gw.post_json("/v1/replays", &json!({"plugin": "e2b", "dry_run": true})).await;
        let id = started.json::<ReplayJob>().id;
        let job = loop {
            let job = fetch_job(&gw, &id).await;
            if job.state != ReplayState::Running {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if job.report.deliveries.purged == 1 {
            assert_eq!(job.report.deliveries.done, 1, "{job:#?}");
            assert_eq!(job.report.records.unchanged, 0);
            break;
        }
        assert!(Instant::now() < deadline, "the payload was never purged: {job:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_refuses_what_it_cannot_do_with_a_clear_error() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    let fails = |args: &[&str], code: i32, says: &str| {
        let out = replay(&gw, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    };
    fails(&["--plugin", "nope"], 2, "no plugin named \"nope\" is loaded");
    fails(&["--plugin", "e2b", "--token", "mk_0123456789ab_wrong"], 2, "refused the replay (401)");
    fails(&["--plugin", "e2b", "--from", "yesterday"], 2, "from");
    fails(&["--plugin", "e2b", "--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"], 2, "range");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = meterd_command()
        .args(["replay", "--plugin", "e2b", "--url", &closed, "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway"));

    // Over HTTP: admins only, and bad bodies are 400s with a message.
    let url = gw.url("/v1/replays");
    let anonymous = gw.client.post(&url).json(&json!({"plugin": "e2b"})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, created) = gw.post_json("/v1/keys", &json!({"orgs": ["acme"]})).await;
    assert_eq!(status, 201, "{created}");
    let tenant = created.json::<CreatedKey>().token;
    let denied =
        gw.client.post(&url).bearer_auth(&tenant).json(&json!({"plugin": "e2b"})).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let (status, body) = gw.post_json("/v1/replays", &json!({"plugin": "e2b", "dryrun": true})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.json::<ErrorBody>().error.message.contains("dryrun"), "{body}");
    let (status, body) = gw.get("/v1/replays/rpl_0000000000000000").await;
    assert_eq!(status, 404, "{body}");
}

/// Daytona's webhooks are Svix-signed, and the signature's timestamp must
/// be within minutes of the plugin's clock: a payload stored days ago is
/// refused today, and accepted as of when it was received, which is how a
/// replay runs it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_payload_is_judged_as_of_when_it_was_received() {
    use base64::Engine as _;
    use meterd::plugin::{AdapterError, InboundRequest};
    use meterd::runtime::CallError;
    use support::daytona::{ORG, daytona_section};

    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(support::component("daytona"), plugins.join("daytona.wasm")).unwrap();
    let text = format!(
        "plugins_dir = \"{}\"\ncache_dir = \"{}\"\n{}",
        plugins.display(),
        dir.path().join("cache").display(),
        daytona_section("http://127.0.0.1:9", "http://127.0.0.1:*", 0, "")
    );
    let config = meterd::config::Config::parse("test", &text, std::iter::empty()).expect("config");
    let registry = tokio::task::block_in_place(|| meterd::server::load_plugins(&config)).expect("plugins");
    let daytona = registry.get("daytona").expect("daytona is loaded");

    let received_ms = Utc::now().timestamp_millis() - 3 * 86_400_000;
    let body = format!(
        r#"{{"event":"sandbox.state.updated","timestamp":"2025-08-10T10:00:00Z","id":"sbx-1","organizationId":"{ORG}","oldState":"starting","newState":"started","updatedAt":"2025-08-10T10:00:00Z"}}"#
    )
    .into_bytes();
    let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let timestamp = received_ms / 1000;
    let signature = meterd::notifications::signing::sign(&key, "msg_old", timestamp, &body);
    let request = std::sync::Arc::new(InboundRequest {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: None,
        headers: vec![
            ("svix-id".to_owned(), "msg_old".to_owned()),
            ("svix-timestamp".to_owned(), timestamp.to_string()),
            ("svix-signature".to_owned(), signature),
        ],
        body,
    });
    match daytona.handle_webhook(request.clone()).await {
        Err(CallError::Adapter(AdapterError::Unauthorized(m))) => {
            assert!(m.contains("svix-timestamp"), "{m}")
        }
        other => panic!("today the signature is days old: {other:?}"),
    }
    let outcome = daytona.handle_webhook_at(request.clone(), Some(received_ms)).await.expect("as of then");
    assert_eq!((outcome.event_id.as_str(), outcome.records.len()), ("msg_old", 1));
    // The pin lasts one call: the next plain call sees today's clock again.
    assert!(daytona.handle_webhook(request).await.is_err());
}

/// The E2B secret was rotated after a payload was stored: the plugin now
/// refuses it. The replay reports that delivery as failed, leaves its
/// records as they are, and `meterd replay` exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_payload_the_plugin_now_refuses_is_reported_and_left_as_stored() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    let body =
        e2b_event("rotated-1", "killed", "2025-08-06T10:00:00Z", "sbx-1", "acme", Some((2, 512, 1500)));
    assert_eq!(gw.e2b(&body).await.0, 200);
    let loaded_at = |status: Body| {
        let plugins: Plugins = status.json();
        plugins.plugins.into_iter().find(|p| p.name == "e2b").map(|p| p.loaded_at)
    };
    let before = loaded_at(gw.get("/v1/plugins").await.1);
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    let rotated = config.replace(support::E2B_SECRET, "the-new-secret-after-rotation");
    assert_ne!(config, rotated);
    replace_atomically(&gw.config_path(), rotated.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    while loaded_at(gw.get("/v1/plugins").await.1) == before {
        assert!(Instant::now() < deadline, "the plugin never took the new secret");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = replay(&gw, &["--plugin", "e2b"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("1 deliveries could not be replayed and 0 records conflict"), "{stderr}");
    assert!(stdout.contains("1 failed"), "{stdout}");
    assert!(
        stdout.contains("failed: delivery rotated-1: unauthorized: e2b-signature does not match the body"),
        "{stdout}"
    );
    assert_eq!(gw.total("acme", CPU).await, "3", "the stored records stay");
    assert_eq!(corrections(&gw, None).await, vec![]);
}

/// Dry-run replays started while webhooks keep arriving: each replays
/// exactly the deliveries it counted at its start (deliveries committing
/// meanwhile are neither added nor skipped), on both engines.
async fn replays_under_concurrent_ingest_replay_exactly_what_they_counted(db: Option<TestDatabase>) {
    let gw = std::sync::Arc::new(Gateway::start(Options {
        admin_token: Some(ADMIN_TOKEN),
        database: db.as_ref().map(|d| d.url.clone()),
        ..Options::default()
    }));
    let event = |i: usize| {
        e2b_event(&format!("live-{i}"), "created", &rfc3339(Utc::now()), &format!("sbx-{i}"), "acme", None)
    };
    for i in 0..300 {
        assert_eq!(gw.e2b(&event(i)).await.0, 200);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 1_000 + w * 100_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = e2b_event(
                        &format!("live-{i}"),
                        "created",
                        &rfc3339(Utc::now()),
                        "sbx-x",
                        "acme",
                        None,
                    );
                    assert_eq!(gw.e2b(&body).await.0, 200);
                    i += 1;
                }
                i - 1_000 - w * 100_000
            })
        })
        .collect();
    let mut totals = Vec::new();
    for _ in 0..3 {
        // Let the senders get ahead, so that deliveries are in flight.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, job) = gw.post_json("/v1/replays", &json!({"plugin": "e2b", "dry_run": true})).await;
        assert_eq!(status, 202, "{job}");
        let id = job.json::<ReplayJob>().id;
        let job = loop {
            let job = fetch_job(&gw, &id).await;
            if job.state != ReplayState::Running {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(job.state, ReplayState::Done, "{job:#?}");
        let deliveries = &job.report.deliveries;
        assert_eq!(deliveries.done, deliveries.total, "{job:#?}");
        totals.push(deliveries.total);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for s in senders {
        sent += s.await.expect("sender");
    }
    assert!(sent > 0 && totals[0] > 300, "{sent} sent, totals {totals:?}");
    assert!(totals.windows(2).all(|w| w[0] < w[1]), "each set holds the one before and more: {totals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_under_concurrent_ingest_on_sqlite() {
    replays_under_concurrent_ingest_replay_exactly_what_they_counted(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_under_concurrent_ingest_on_postgres() {
    replays_under_concurrent_ingest_replay_exactly_what_they_counted(Some(
        TestDatabase::fresh("meterd_e2e").await,
    ))
    .await;
}
