//! The dashboard (`/ui`) in headless Debian Chromium: a real gateway with
//! signed E2B usage for two orgs, a tenant key for one of them made over
//! `/v1/keys`, and `tests/ui/dashboard.mjs` (playwright-core driving
//! /usr/bin/chromium, both installed by `tests/ui/install.sh`, which
//! `make test` runs first) checking that the page shows exactly what the API
//! answers, that the tenant cannot see the other org, and that the admin
//! sees the plugins. With `METERD_UI_SCREENSHOTS=<dir>` (relative to the
//! repository) the script saves the screenshots README.md shows:
//! `METERD_UI_SCREENSHOTS=host/ui/screenshots cargo test --release -p meterd --test e2e ui::`.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Datelike as _;
use meterd::api::keys::CreatedKey;
use meterd::api::ops::Plugins;
use serde_json::json;
use support::{ADMIN_TOKEN, Gateway, Options, e2b_event};

/// A plan with quotas, so the page has bars to draw (a hard one and a soft one).
const TEAM_PLAN: &str = r#"
[plans.team]
max_concurrent_sandboxes = 5
max_session_seconds = 86400
one_time_credit = "50"
[plans.team.quotas]
sandbox_cpu_core_seconds = { limit = "120", enforcement = "hard" }
sandbox_ram_gibi_seconds = { limit = "40", enforcement = "soft" }
"#;

/// An admin GET, read as the API's type.
async fn admin_get<T: serde::de::DeserializeOwned>(gw: &Gateway, path: &str) -> T {
    let response = gw.client.get(gw.url(path)).bearer_auth(ADMIN_TOKEN).send().await.expect("GET");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("the API's answer")
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_apis_numbers_and_only_the_keys_orgs() {
    let script = repo().join("tests/ui/dashboard.mjs");
    let installed = repo().join("tests/ui/node_modules/playwright-core");
    assert!(
        installed.is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium and tests/ui/node_modules: run `make ui-browser` \
         (tests/ui/install.sh; `make test` does it first)"
    );
    // A polling plugin whose store does not answer (a loopback port nobody
    // listens on), so the admin view has a poll target, failing, to show.
    let closed =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let s3 = format!(
        "[plugins.s3-storage]\nendpoint = \"http://{closed}\"\naccess_key_id = \"AKIAUI\"\n\
         secret_access_key = \"ui-secret\"\nhttp_allow = [\"http://{closed}\"]\ninterval = \"1h\"\n\
         poll_backoff = \"10m\"\npoll_backoff_max = \"30m\"\n\
         [[plugins.s3-storage.targets]]\norg = \"acme\"\nbucket = \"acme-data\"\n"
    );
    let gw = Gateway::start(Options {
        plugins: vec!["e2b", "s3-storage"],
        admin_token: Some(ADMIN_TOKEN),
        sections: format!("{TEAM_PLAN}\n{s3}"),
        ..Options::default()
    });
    // Its first poll fails; the next is 10 minutes away, so the state holds
    // still while the page is read.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let plugins: Plugins = admin_get(&gw, "/v1/plugins").await;
        let polls = plugins.plugins.iter().flat_map(|p| &p.polls);
        if polls.into_iter().any(|p| p.target == "acme-data/" && p.consecutive_failures > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the s3-storage target never failed a poll: {plugins:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (org_a, org_b) = ("acme", "globex");
    let (status, body) = gw.put_json(&format!("/v1/orgs/{org_a}"), &json!({"plan": "team"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .post_json(
            &format!("/v1/orgs/{org_a}/grants"),
            &json!({"amount": "25", "currency": "USD", "priority": 10}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Usage this month, spread over the hours before now (never before the
    // month began): sandboxes that ran and were killed, one still running.
    let now = chrono::Utc::now();
    let month_start = now
        .date_naive()
        .with_day(1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .expect("the month's start");
    let at = |minutes_ago: i64| (now - chrono::Duration::minutes(minutes_ago)).max(month_start).to_rfc3339();
    // (org, minutes ago, vCPU, MiB, milliseconds)
    let runs: [(&str, i64, u64, u64, u64); 7] = [
        (org_a, 50 * 60, 2, 1024, 9_000),
        (org_a, 30 * 60, 4, 2048, 7_500),
        (org_a, 20 * 60, 2, 512, 6_000),
        (org_a, 6 * 60, 8, 4096, 3_000),
        (org_a, 90, 2, 1024, 10_500),
        (org_b, 40 * 60, 1, 512, 4_000),
        (org_b, 3 * 60, 2, 2048, 8_000),
    ];
    let mut cpu_a = 0u64; // vCPU-milliseconds
    for (i, (org, ago, vcpu, mib, ms)) in runs.iter().enumerate() {
        let sandbox = format!("sbx-{i}");
        for (suffix, kind, time, execution) in
            [("c", "created", at(ago + 5), None), ("k", "killed", at(*ago), Some((*vcpu, *mib, *ms)))]
        {
            let event = e2b_event(&format!("ui-{i}-{suffix}"), kind, &time, &sandbox, org, execution);
            let (status, body) = gw.e2b(&event).await;
            assert_eq!(status, 200, "{body}");
        }
        if *org == org_a {
            cpu_a += vcpu * ms;
        }
    }
    let running = e2b_event("ui-running", "created", &at(15), "sbx-running", org_a, None);
    let (status, body) = gw.e2b(&running).await;
    assert_eq!(status, 200, "{body}");
    // What the test itself expects the page to show, beside what the API says.
    assert_eq!(cpu_a % 1000, 0, "whole vCPU-seconds keep the expected text simple");
    let cpu_a = (cpu_a / 1000).to_string();

    let response = gw
        .client
        .post(gw.url("/v1/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"orgs": [org_a], "label": "dashboard test"}))
        .send()
        .await
        .expect("POST /v1/keys");
    assert_eq!(response.status(), 201);
    let tenant = response.json::<CreatedKey>().await.expect("the new key").token;

    let mut command = Command::new("node");
    command
        .arg(&script)
        .env("METERD_URL", &gw.base)
        .env("TENANT_KEY", &tenant)
        .env("ADMIN_KEY", ADMIN_TOKEN)
        .env("ORG_A", org_a)
        .env("ORG_B", org_b)
        .env("EXPECT", json!({ "sandbox_cpu_core_seconds": cpu_a }).to_string())
        .current_dir(repo().join("tests/ui"));
    match std::env::var_os("METERD_UI_SCREENSHOTS") {
        // A relative directory is the repository's (cargo runs tests in host/).
        Some(dir) => command.env("SCREENSHOT_DIR", repo().join(dir)),
        None => command.env_remove("SCREENSHOT_DIR"),
    };
    let output = command.output().expect("running node tests/ui/dashboard.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tests/ui/dashboard.mjs failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
}
