//! S3 storage metering end to end: the real gateway polls real
//! S3-compatible servers on loopback through the real s3-storage component.
//! moto_server pages ListObjectsV2 like AWS; s3s-fs, a third-party
//! implementation, verifies our SigV4 signatures. Buckets and objects are
//! made with the servers' own APIs (boto3, `tests/s3/s3ctl.py`).

use crate::support;

use std::time::{Duration, Instant};

use meterd::api::ops::Poll;
use meterd::api::usage::Usage;
use rust_decimal::Decimal;
use support::s3::S3Server;
use support::{Gateway, Options};

const ACME_OBJECTS: u64 = 2_500;
const ACME_SIZE: u64 = 1_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A `[plugins.s3-storage]` section for `server`, polling every second.
fn section(server: &S3Server, secret: &str, extra: &str) -> String {
    format!(
        "[plugins.s3-storage]\nendpoint = \"{endpoint}\"\nregion = \"{region}\"\naccess_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\nhttp_allow = [\"{endpoint}\"]\ninterval = \"1s\"\npoll_backoff = \"1s\"\npoll_backoff_max = \"2s\"\n{extra}\n",
        endpoint = server.endpoint,
        region = server.region,
        key = server.access_key,
    )
}

fn gateway(sections: String) -> Gateway {
    Gateway::start(Options { plugins: vec!["s3-storage"], sections, ..Options::default() })
}

/// A meter's value for `org` over [from, to).
async fn usage(gw: &Gateway, org: &str, meter: &str, from: i64, to: i64) -> Decimal {
    let (status, body) =
        gw.get(&format!("/v1/orgs/{org}/usage?meter={meter}&from={}&to={}", iso(from), iso(to))).await;
    assert_eq!(status, 200, "{body}");
    body.json::<Usage>().total.0.parse().expect("a decimal total")
}

/// The org's current level of a `latest` meter.
async fn current(gw: &Gateway, org: &str, meter: &str) -> Decimal {
    let now = now_ms();
    usage(gw, org, meter, now - 86_400_000, now + 1).await
}

/// Waits until the org's `meter` reads `expected` (polls run every second).
async fn wait_for(gw: &Gateway, org: &str, meter: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let expected = Decimal::from(expected);
    loop {
        let value = current(gw, org, meter).await;
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{org} {meter} is {value}, never {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `check` holds for a target's poll state.
async fn wait_for_state(gw: &Gateway, target: &str, what: &str, check: impl Fn(&Poll) -> bool) -> Poll {
    gw.wait_for_poll_state("s3-storage", target, what, check).await
}

/// Byte-seconds of a constant level over [from, to): level × ms / 1000, exactly.
fn byte_seconds(level: u64, from: i64, to: i64) -> Decimal {
    Decimal::from(level) * Decimal::from(to - from) / Decimal::from(1000)
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_listings_are_metered_exactly_across_pages_orgs_and_polls() {
    let s3 = S3Server::moto();
    s3.ctl(&["create-bucket", "shared"]);
    s3.ctl(&[
        "put",
        "shared",
        "--prefix",
        "tenants/acme/",
        "--count",
        &ACME_OBJECTS.to_string(),
        "--size",
        &ACME_SIZE.to_string(),
    ]);
    s3.ctl(&["put", "shared", "--prefix", "tenants/globex/", "--count", "3", "--size", "10"]);
    s3.ctl(&["put-one", "shared", "tenants/readme.txt", "--size", "99"]);
    s3.ctl(&["put", "shared", "--prefix", "elsewhere/", "--count", "2", "--size", "7"]);
    s3.ctl(&["create-bucket", "acme-private"]);
    s3.ctl(&["put", "acme-private", "--prefix", "reports/", "--count", "2", "--size", "5"]);
    let oracle = s3.ctl(&["total", "shared", "--prefix", "tenants/acme/"]);
    assert_eq!(oracle["bytes"], ACME_OBJECTS * ACME_SIZE, "{oracle}");

    let targets = "max_keys = 1000\npages_per_poll = 1\n\
        [[plugins.s3-storage.discover]]\nbucket = \"shared\"\ntemplate = \"tenants/{org}/\"\n\
        [[plugins.s3-storage.targets]]\norg = \"acme\"\nbucket = \"acme-private\"\nprefix = \"reports/\"\n\
        [[plugins.s3-storage.targets]]\norg = \"ghost\"\nbucket = \"missing-bucket\"\n";
    let gw = gateway(section(&s3, &s3.secret_key, targets));

    // 2,500 objects at 1,000 a page, one page per call: the scan spans
    // three calls and publishes one exact total; acme's two targets add up.
    let acme_bytes = ACME_OBJECTS * ACME_SIZE + 10;
    wait_for(&gw, "acme", "storage_bytes", acme_bytes).await;
    assert_eq!(current(&gw, "acme", "storage_objects").await, Decimal::from(ACME_OBJECTS + 2));
    wait_for(&gw, "globex", "storage_bytes", 30).await;
    assert_eq!(current(&gw, "globex", "storage_objects").await, Decimal::from(3));

    // A missing bucket is a clear poll error and records nothing.
    let ghost = wait_for_state(&gw, "missing-bucket/", "an error", |s| s.last_error.is_some()).await;
    let error = ghost.last_error.as_deref().expect("the last error");
    assert!(error.contains("NoSuchBucket") && error.contains("missing-bucket"), "{error}");
    assert_eq!(current(&gw, "ghost", "storage_bytes").await, Decimal::ZERO);

    // Byte-seconds over several polls of a constant level are exact.
    let t1 = now_ms();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t2 = now_ms();
    assert_eq!(usage(&gw, "acme", "storage_byte_seconds", t1, t2).await, byte_seconds(acme_bytes, t1, t2));

    // A new org's folder is discovered without a config change.
    s3.ctl(&["put", "shared", "--prefix", "tenants/initech/", "--count", "4", "--size", "25"]);
    wait_for(&gw, "initech", "storage_bytes", 100).await;

    // Deleting objects lowers the level.
    s3.ctl(&["delete", "shared", "--prefix", "tenants/acme/", "--count", "500"]);
    let lowered = acme_bytes - 500 * ACME_SIZE;
    wait_for(&gw, "acme", "storage_bytes", lowered).await;
    let t3 = now_ms();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t4 = now_ms();
    assert_eq!(usage(&gw, "acme", "storage_byte_seconds", t3, t4).await, byte_seconds(lowered, t3, t4));
    // Across the change: the parts add up, and the value lies between the
    // two levels' integrals.
    let whole = usage(&gw, "acme", "storage_byte_seconds", t1, t4).await;
    let middle = usage(&gw, "acme", "storage_byte_seconds", t2, t3).await;
    assert_eq!(whole, byte_seconds(acme_bytes, t1, t2) + middle + byte_seconds(lowered, t3, t4));
    assert!(byte_seconds(lowered, t1, t4) < whole && whole < byte_seconds(acme_bytes, t1, t4), "{whole}");

    // An org whose folder is emptied drops to 0 (its objects are gone).
    s3.ctl(&["delete", "shared", "--prefix", "tenants/globex/"]);
    wait_for(&gw, "globex", "storage_bytes", 0).await;
    assert_eq!(current(&gw, "globex", "storage_objects").await, Decimal::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_longer_than_one_run_resumes_from_its_saved_point_even_after_kill_9() {
    let s3 = S3Server::moto();
    s3.ctl(&["create-bucket", "big"]);
    s3.ctl(&["put", "big", "--prefix", "", "--count", "1500", "--size", "3"]);
    // 10 keys a page, one page a call: 150 calls, more than the 100 rounds
    // one poll run takes before yielding. Starting over would never finish.
    let targets = "max_keys = 10\npages_per_poll = 1\n\
        [[plugins.s3-storage.targets]]\norg = \"acme\"\nbucket = \"big\"\n";
    let mut gw = gateway(section(&s3, &s3.secret_key, targets));
    let state = wait_for_state(&gw, "big/", "a scan in progress", |s| {
        s.cursor.as_deref().is_some_and(|c| c.contains("\"scan\""))
    })
    .await;
    assert_eq!(
        current(&gw, "acme", "storage_bytes").await,
        Decimal::ZERO,
        "a partial listing published: {state:?}"
    );
    gw.restart_after_kill9();
    wait_for(&gw, "acme", "storage_bytes", 4_500).await;
    assert_eq!(current(&gw, "acme", "storage_objects").await, Decimal::from(1_500));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3s_fs_accepts_our_signatures_and_wrong_credentials_record_nothing() {
    let s3 = S3Server::s3s_fs();
    s3.ctl(&["create-bucket", "acme-data"]);
    s3.ctl(&["put", "acme-data", "--prefix", "2026/11/", "--count", "7", "--size", "123"]);
    s3.ctl(&["put-one", "acme-data", "2026/11/with space & plus+%.bin", "--size", "1000"]);
    let oracle = s3.ctl(&["total", "acme-data", "--prefix", "2026/"]);
    assert_eq!(oracle["bytes"], 1_861, "{oracle}");

    let target =
        "[[plugins.s3-storage.targets]]\norg = \"acme\"\nbucket = \"acme-data\"\nprefix = \"2026/\"\n";
    let good = gateway(section(&s3, &s3.secret_key, target));
    wait_for(&good, "acme", "storage_bytes", 1_861).await;
    assert_eq!(current(&good, "acme", "storage_objects").await, Decimal::from(8));
    let state = good.poll_state("s3-storage", "acme-data/2026/").await.expect("the target's poll state");
    assert!(state.last_error.is_none(), "{state:?}");

    let bad = gateway(section(&s3, "not-the-secret", target));
    let state = wait_for_state(&bad, "acme-data/2026/", "an error", |s| s.last_error.is_some()).await;
    let error = state.last_error.as_deref().expect("the last error");
    assert!(error.contains("refused") && error.contains("acme-data") && error.contains("403"), "{error}");
    assert!(!error.contains("not-the-secret"), "the secret leaked into the error: {error}");
    assert_eq!(bad.count_rows("usage_records").await, 0);
    assert_eq!(current(&bad, "acme", "storage_bytes").await, Decimal::ZERO);
}
