//! Rollups through the real binary: usage, entitlements and grants answer
//! the same before and after a restart, and after the database is taken
//! back to before the rollups existed (migration 0008 and its back-fill run
//! again at start-up); `meterd rollups check` finds a tampered row and
//! `meterd rollups rebuild` repairs it; declaring `rollup_group_by` rebuilds
//! them with group hours and group levels, and grouped queries (sums and
//! levels) still answer the same, as they do after a database from before
//! group levels (migration 0013) is rebuilt at start-up. On SQLite and on
//! PostgreSQL.

use crate::support;

use std::process::Output;

use chrono::{Datelike as _, Duration, SecondsFormat, Utc};
use meterd::api::orgs::{Entitlements, OrgCredits};
use meterd::api::rollups::RollupCheck;
use meterd::api::usage::Usage;
use support::Body;
use support::postgres::TestDatabase;
use support::{Gateway, Options, e2b_event, meterd_command};

const TOKEN: &str = "rollups-admin-token";

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// 12 sandboxes of org `acme` (and 3 of `other`) started and killed in
/// this month, in an order unlike their timestamps; all are stopped, so
/// integrals no longer grow.
async fn ingest(gw: &Gateway) {
    let now = Utc::now();
    let month_start =
        now.date_naive().with_day(1).expect("day 1").and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    // Times between the month start and an hour ago.
    let span = (now - Duration::hours(1) - month_start).num_seconds().max(60);
    // (sort key, body): kills before creates for every third sandbox, so
    // levels arrive late and out of order.
    let mut events: Vec<((bool, u64), Vec<u8>)> = Vec::new();
    for i in 0..15u64 {
        let org = if i < 12 { "acme" } else { "other" };
        let start = month_start + Duration::seconds((span * (i as i64 * 7 % 15) / 16).max(1));
        let end = start + Duration::seconds(37 + (i as i64 * 911) % (span / 16).max(60));
        let sandbox = format!("sb-{i}");
        let run_ms = (end - start).num_milliseconds() as u64;
        let created = e2b_event(&format!("c{i}"), "created", &rfc3339(start), &sandbox, org, None);
        let killed =
            e2b_event(&format!("k{i}"), "killed", &rfc3339(end), &sandbox, org, Some((2, 512, run_ms)));
        events.push(((i % 3 == 0, i), created));
        events.push(((false, i), killed));
    }
    events.sort_by_key(|(key, _)| *key);
    let events = events.into_iter().map(|(_, body)| body);
    for body in events {
        let (status, answer) = gw.e2b(&body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// A range of this month that starts and ends inside hours.
fn ragged_range() -> String {
    let now = Utc::now();
    let month_start =
        now.date_naive().with_day(1).expect("day 1").and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    format!(
        "&from={}&to={}",
        rfc3339(month_start + Duration::minutes(17) + Duration::milliseconds(3)),
        rfc3339(now - Duration::minutes(59))
    )
}

/// One answer read as its type. `Body::json` refuses an answer with a field
/// the type does not hold, so equal values are equal answers.
#[derive(Debug, PartialEq)]
enum Answer {
    Usage(Usage),
    Entitlements(Entitlements),
    Credits(OrgCredits),
}

/// Everything the API says about `acme`'s usage that rollups feed: each
/// answer read whole as its type, so that whole answers are compared (not
/// only the fields a test names).
async fn answers(gw: &Gateway, ragged: &str) -> Vec<(String, Answer)> {
    let mut out = Vec::new();
    for meter in [
        "sandbox_cpu_core_seconds",
        "sandbox_ram_gibi_seconds",
        "sandbox_active",
        "sandbox_active_max",
        "sandbox_active_seconds",
    ] {
        for extra in ["", "&window=day", "&window=hour", ragged, "&group_by=template_id"] {
            let path = format!("/v1/orgs/acme/usage?meter={meter}{extra}");
            let (status, answer) = gw.get(&path).await;
            assert_eq!(status, 200, "{path}: {answer}");
            out.push((path, Answer::Usage(answer.json())));
        }
    }
    for path in ["/v1/orgs/acme/entitlements", "/v1/orgs/acme/grants", "/v1/orgs/other/entitlements"] {
        let (status, answer) = gw.get(path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let answer = if path.ends_with("/grants") {
            Answer::Credits(answer.json())
        } else {
            Answer::Entitlements(answer.json())
        };
        out.push((path.to_owned(), answer));
    }
    out
}

fn assert_same(before: &[(String, Answer)], after: &[(String, Answer)], when: &str) {
    for ((path, a), (_, b)) in before.iter().zip(after) {
        assert_eq!(a, b, "{when}: {path}");
    }
}

fn rollups_cli(gw: &Gateway, args: &[&str]) -> Output {
    let config = gw.config_path();
    let mut all = vec!["--config", config.to_str().expect("UTF-8"), "rollups"];
    all.extend_from_slice(args);
    meterd_command().args(&all).env("METERD_LOG", "error").output().expect("running meterd")
}

/// The report `rollups check --json` printed, read whole as its type.
fn check_report(out: &Output) -> RollupCheck {
    Body(String::from_utf8_lossy(&out.stdout).into_owned()).json()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// SQL run against the gateway's database (stopped).
enum Db<'a> {
    Sqlite(std::path::PathBuf),
    Postgres(&'a TestDatabase),
}

impl Db<'_> {
    async fn run(&self, statements: &[&str]) {
        use sqlx::Connection as _;
        match self {
            Db::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
                for s in statements {
                    sqlx::query(s).execute(&mut conn).await.unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }
            Db::Postgres(db) => {
                let mut conn = db.connect().await;
                for s in statements {
                    sqlx::query(s).execute(&mut conn).await.unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }
        }
    }
}

async fn same_answers_across_restart_and_backfill(mut gw: Gateway, db: Db<'_>) {
    ingest(&gw).await;
    let ragged = ragged_range();
    let before = answers(&gw, &ragged).await;
    assert!(
        before.iter().any(|(p, v)| p.contains("sandbox_active_seconds")
            && matches!(v, Answer::Usage(usage) if usage.total.0 != "0")),
        "the history has usage: {before:?}"
    );

    gw.restart();
    assert_same(&before, &answers(&gw, &ragged).await, "after a restart");

    // Back to a database from before the rollups: migrations 0008, 0010
    // (month summaries) and 0011 (the level index) undone.
    gw.stop();
    db.run(&[
        "DROP TABLE rollup_hours",
        "DROP TABLE rollup_steps",
        "DROP TABLE rollup_months",
        "DROP TABLE meterd_state",
        "DROP INDEX usage_records_levels_by_subject",
        "DELETE FROM _sqlx_migrations WHERE version IN (8, 10, 11)",
    ])
    .await;
    gw.restart();
    assert_same(&before, &answers(&gw, &ragged).await, "after the back-fill");
    let out = rollups_cli(&gw, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("; 0 rows differ"), "{}", text(&out));

    // A tampered hour is found, named, and repaired by a rebuild.
    db.run(&["UPDATE rollup_hours SET records = records + 1 WHERE org_id = 'acme' AND metric = 'sandbox_active'
              AND hour_ms = (SELECT MIN(hour_ms) FROM rollup_hours WHERE org_id = 'acme' AND metric = 'sandbox_active')"])
        .await;
    let out = rollups_cli(&gw, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = check_report(&out);
    assert_eq!(report.differences, 2, "the stored row and the computed one: {report:?}");
    assert!(
        report.examples.first().is_some_and(|e| e.starts_with("hours acme/sandbox_active@")),
        "{report:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 rollup rows differ"), "{}", text(&out));
    let out = rollups_cli(&gw, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rollups_cli(&gw, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same(&before, &answers(&gw, &ragged).await, "after a rebuild");

    // Declaring `template_id` rebuilds the rollups with its group hours at
    // the next start-up; grouped sums then read them, and answer the same.
    gw.stop();
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    std::fs::write(gw.config_path(), format!("rollup_group_by = [\"template_id\"]\n{config}"))
        .expect("config");
    gw.restart();
    assert_same(&before, &answers(&gw, &ragged).await, "with group hours for template_id");
    let out = rollups_cli(&gw, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = check_report(&out);
    assert!(report.group_hours > 0, "{report:?}");

    // Back to a database from before group levels (migration 0013) that
    // declared the key: its rollups are rebuilt once at start-up, with the
    // templates' level series, and every answer stays the same.
    gw.stop();
    db.run(&[
        "DELETE FROM rollup_steps WHERE metric LIKE '%/%'",
        "DELETE FROM rollup_hours WHERE metric LIKE '%/%'",
        "DELETE FROM rollup_months WHERE metric LIKE '%/%'",
        "DROP INDEX rollup_group_hours_cells",
        "DELETE FROM _sqlx_migrations WHERE version = 13",
        "UPDATE meterd_state SET value = 'template_id' WHERE key = 'rollup_groups'",
    ])
    .await;
    gw.restart();
    assert_same(&before, &answers(&gw, &ragged).await, "after migration 0013's rebuild");
    let out = rollups_cli(&gw, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_answers_survive_a_restart_and_the_back_fill() {
    let gw = Gateway::start(Options { admin_token: Some(TOKEN), ..Options::default() });
    let db = Db::Sqlite(gw.db_path());
    same_answers_across_restart_and_backfill(gw, db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_answers_survive_a_restart_and_the_back_fill() {
    let database = TestDatabase::fresh("meterd_e2e").await;
    let gw = Gateway::start(Options {
        admin_token: Some(TOKEN),
        database: Some(database.url.clone()),
        ..Options::default()
    });
    same_answers_across_restart_and_backfill(gw, Db::Postgres(&database)).await;
}
