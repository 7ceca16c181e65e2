//! Plans, quotas, entitlement checks, credits and threshold notifications,
//! end to end: the real binary, real E2B webhooks, a real receiver that
//! verifies Standard Webhooks signatures.

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use meterd::api::ErrorBody;
use meterd::api::orgs::{
    AssignedOrg, CheckAnswer, Concurrency, Enforcement, Entitlements, Grant, GrantStatus, MeterEntitlement,
    Org, OrgCredits, Reason,
};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Gateway, Options, e2b_event, quantity as q};

/// A test plan with small limits, and fast notification retries.
const PLANS: &str = r#"
[plans.metered]
max_concurrent_sandboxes = 2
max_session_seconds = 60
one_time_credit = "5"
[plans.metered.quotas]
sandbox_cpu_core_seconds = { limit = "10", enforcement = "hard" }
sandbox_ram_gibi_seconds = { limit = "1", enforcement = "soft" }
"#;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn gateway(sections: String) -> Gateway {
    Gateway::start(Options { sections: format!("{PLANS}\n{sections}"), ..Options::default() })
}

/// An RFC 3339 time `seconds_ago` before now.
fn ago(seconds_ago: i64) -> String {
    (Utc::now() - chrono::Duration::seconds(seconds_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn check(gw: &Gateway, org: &str, body: Value) -> CheckAnswer {
    let (status, answer) = gw.post_json(&format!("/v1/orgs/{org}/check"), &body).await;
    assert_eq!(status, 200, "check {body}: {answer}");
    answer.json()
}

fn codes(reasons: &[Reason]) -> Vec<String> {
    reasons.iter().map(|r| r.code.clone()).collect()
}

async fn entitlements(gw: &Gateway, org: &str) -> Entitlements {
    let (status, e) = gw.get(&format!("/v1/orgs/{org}/entitlements")).await;
    assert_eq!(status, 200, "{e}");
    e.json()
}

fn meter<'a>(entitlements: &'a Entitlements, name: &str) -> &'a MeterEntitlement {
    entitlements
        .meters
        .iter()
        .find(|m| m.meter == name)
        .unwrap_or_else(|| panic!("no {name}: {entitlements:?}"))
}

/// The message of an error answer.
fn error_message(answer: &support::Body) -> String {
    answer.json::<ErrorBody>().error.message
}

async fn ingest_ok(gw: &Gateway, body: &[u8]) {
    let (status, receipt) = gw.e2b(body).await;
    assert_eq!(status, 200, "{receipt}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_assigned_persisted_and_refused_when_unknown() {
    let mut gw = gateway(String::new());
    let (status, body) = gw.get("/v1/orgs/acme").await;
    assert_eq!(status, 200, "{body}");
    let org: Org = body.json();
    assert_eq!((org.plan.as_str(), org.assigned), ("hobby", false));
    assert!(org.period.start.0.ends_with("-01T00:00:00Z"), "{body}");

    let (status, body) = gw.put_json("/v1/orgs/acme", &json!({"plan": "pro"})).await;
    assert_eq!(status, 200, "{body}");
    let put: AssignedOrg = body.json();
    assert_eq!(put.org.plan, "pro");
    // Leaving the default plan keeps its credit (from the start) and adds pro's.
    let sources: Vec<&str> = put.granted.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(sources, ["plan:hobby", "plan:pro"], "{body}");

    // Back and forth: no plan's credit is granted twice.
    gw.put_json("/v1/orgs/acme", &json!({"plan": "hobby"})).await;
    let (_, body) = gw.put_json("/v1/orgs/acme", &json!({"plan": "pro"})).await;
    assert!(body.json::<AssignedOrg>().granted.is_empty(), "{body}");

    let (status, bad) = gw.put_json("/v1/orgs/acme", &json!({"plan": "platinum"})).await;
    assert_eq!(status, 400, "{bad}");
    let message = error_message(&bad);
    assert!(message.contains("platinum") && message.contains("enterprise"), "{message}");
    let (status, bad) = gw.put_json("/v1/orgs/acme", &json!({"plan": 7})).await;
    assert_eq!(status, 400, "{bad}");

    gw.restart();
    let (_, body) = gw.get("/v1/orgs/acme").await;
    let org: Org = body.json();
    assert_eq!((org.plan.as_str(), org.assigned), ("pro", true), "{body}");
    let (_, body) = gw.get("/v1/orgs/acme/grants").await;
    let grants: OrgCredits = body.json();
    assert_eq!(grants.credits.balance, q("200"), "two $100 plan credits, nothing spent: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_quota_denies_at_the_exact_boundary_and_a_soft_one_never_does() {
    let gw = gateway(String::new());
    gw.put_json("/v1/orgs/q", &json!({"plan": "metered"})).await;
    // 2 vCPU × 2.5 s = 5 vCPU-seconds; 1024 MiB × 2.5 s = 2.5 GiB-seconds.
    ingest_ok(&gw, &e2b_event("q-1", "killed", &ago(30), "sbx-1", "q", Some((2, 1024, 2_500)))).await;

    let cpu = |quantity: &str| json!({"meter": "sandbox_cpu_core_seconds", "quantity": quantity});
    let d = check(&gw, "q", cpu("5")).await;
    assert!(d.allow, "5 used + 5 = 10 is within the quota: {d:?}");
    let d = check(&gw, "q", cpu("5.000001")).await;
    assert_eq!((d.allow, codes(&d.reasons)), (false, vec!["quota_would_exceed".to_owned()]));
    let d = check(&gw, "q", json!({"action": "sandbox.start", "vcpu": 2, "memory_mb": 512})).await;
    assert!(d.allow, "{d:?}");

    // Exactly at the quota: used == quota denies everything that consumes it.
    ingest_ok(&gw, &e2b_event("q-2", "killed", &ago(20), "sbx-2", "q", Some((2, 1024, 2_500)))).await;
    let d = check(&gw, "q", cpu("0")).await;
    assert_eq!(codes(&d.reasons), ["quota_exhausted"], "{d:?}");
    assert!(!d.allow);
    let d = check(&gw, "q", json!({"action": "sandbox.start"})).await;
    assert_eq!((d.allow, codes(&d.reasons)), (false, vec!["quota_exhausted".to_owned()]));
    assert_eq!(d.reasons[0].limit, "sandbox_cpu_core_seconds", "{d:?}");

    // The soft RAM quota (1 GiB-s) is long past: a warning, never a denial.
    let d = check(&gw, "q", json!({"meter": "sandbox_ram_gibi_seconds", "quantity": "100"})).await;
    assert_eq!((d.allow, codes(&d.warnings)), (true, vec!["soft_quota_exceeded".to_owned()]));

    let e = entitlements(&gw, "q").await;
    let cpu = meter(&e, "sandbox_cpu_core_seconds");
    assert_eq!(
        (&cpu.used, &cpu.quota, &cpu.remaining, cpu.has_access),
        (&q("10"), &Some(q("10")), &Some(q("0")), false),
        "{cpu:?}"
    );
    let ram = meter(&e, "sandbox_ram_gibi_seconds");
    assert_eq!((&ram.used, ram.has_access), (&q("5"), true), "{ram:?}");
    assert_eq!(ram.enforcement, Some(Enforcement::Soft));

    // A redelivery changes nothing; bad requests are 400s that say why.
    ingest_ok(&gw, &e2b_event("q-2", "killed", &ago(20), "sbx-2", "q", Some((2, 1024, 2_500)))).await;
    assert_eq!(meter(&entitlements(&gw, "q").await, "sandbox_cpu_core_seconds").used, q("10"));
    for (body, says) in [
        (json!({"meter": "nope", "quantity": "1"}), "unknown meter"),
        (json!({"meter": "sandbox_cpu_core_seconds", "quantity": "-1"}), "negative"),
        (json!({"meter": "sandbox_cpu_core_seconds", "quantity": "1e3"}), "quantity"),
        (json!({"action": "sandbox.fly"}), "unknown action"),
        (json!({}), "give"),
    ] {
        let (status, answer) = gw.post_json("/v1/orgs/q/check", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(error_message(&answer).contains(says), "{body}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_follows_lifecycle_webhooks_in_any_order() {
    let gw = gateway(String::new());
    gw.put_json("/v1/orgs/c", &json!({"plan": "metered"})).await;
    // a: created, paused, resumed (running); b: created (running);
    // c: created, killed. Delivered out of order.
    let events = [
        ("c-killed", "killed", 10, "c"),
        ("a-resumed", "resumed", 20, "a"),
        ("b-created", "created", 30, "b"),
        ("a-paused", "paused", 40, "a"),
        ("c-created", "created", 45, "c"),
        ("a-created", "created", 50, "a"),
    ];
    for (id, kind, seconds_ago, sandbox) in events {
        ingest_ok(&gw, &e2b_event(id, kind, &ago(seconds_ago), sandbox, "c", None)).await;
    }
    let e = entitlements(&gw, "c").await;
    assert_eq!(e.concurrency, Concurrency { running: 2, limit: Some(2), has_access: false }, "{e:?}");
    let d = check(&gw, "c", json!({"action": "sandbox.start", "vcpu": 2})).await;
    assert_eq!((d.allow, codes(&d.reasons)), (false, vec!["concurrency_limit".to_owned()]));
    assert_eq!(d.reasons[0].limit, "max_concurrent_sandboxes");

    ingest_ok(&gw, &e2b_event("b-killed", "killed", &ago(5), "b", "c", None)).await;
    let d = check(&gw, "c", json!({"action": "sandbox.start"})).await;
    assert!(d.allow, "{d:?}");
    // The default plan (hobby) allows 20.
    let d = check(&gw, "other-org", json!({"action": "sandbox.start"})).await;
    assert!(d.allow, "{d:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_and_balance_equal_the_hand_computed_values() {
    let gw = gateway(String::new());
    let org = "spender";
    // Never assigned: on hobby, with its $100 credit from the start (priority 50).
    let grant = |amount: &str, expires: Option<&str>, priority: i32| {
        json!({"amount": amount, "currency": "USD", "effective_at": "2025-08-01T00:00:00Z",
               "expires_at": expires, "priority": priority})
    };
    let (status, g1) = gw
        .post_json(&format!("/v1/orgs/{org}/grants"), &grant("0.5", Some("2025-08-15T00:00:00Z"), 10))
        .await;
    assert_eq!(status, 201, "{g1}");
    let g1: Grant = g1.json();
    let (status, g2) = gw.post_json(&format!("/v1/orgs/{org}/grants"), &grant("0.2", None, 60)).await;
    assert_eq!(status, 201, "{g2}");
    let g2: Grant = g2.json();
    assert_eq!((&g1.amount, &g2.amount), (&q("0.5"), &q("0.2")));

    // Before G1 expires: 8 vCPU, 4096 MiB for 10 h → 288,000 vCPU-s × 0.000014
    // = 4.032 and 144,000 GiB-s × 0.0000045 = 0.648: $4.68. Burns G1 (priority
    // 10) fully ($0.5), then the hobby credit (50) by $4.18.
    ingest_ok(
        &gw,
        &e2b_event("s-1", "killed", "2025-08-10T00:00:00Z", "sbx-1", org, Some((8, 4_096, 36_000_000))),
    )
    .await;
    // After G1 expired: 2 vCPU, 512 MiB for 1 h → 7,200 × 0.000014 = 0.1008 and
    // 1,800 × 0.0000045 = 0.0081: $0.1089, from the hobby credit.
    ingest_ok(
        &gw,
        &e2b_event("s-2", "killed", "2025-08-20T00:00:00Z", "sbx-2", org, Some((2, 512, 3_600_000))),
    )
    .await;

    let (status, body) = gw.get(&format!("/v1/orgs/{org}/grants")).await;
    assert_eq!(status, 200, "{body}");
    let c = body.json::<OrgCredits>().credits;
    assert_eq!(c.spend, q("4.7889"), "{body}");
    assert_eq!(c.uncovered, q("0"), "{body}");
    // 100 − 4.18 − 0.1089 = 95.7111, plus G2's untouched 0.2.
    assert_eq!(c.balance, q("95.9111"), "{body}");
    let by_source: BTreeMap<String, (String, String, GrantStatus)> = c
        .grants
        .iter()
        .map(|g| {
            let key = format!("{}:{}", g.grant.source, g.grant.amount);
            (key, (g.used.to_string(), g.remaining.to_string(), g.status))
        })
        .collect();
    let expect =
        |used: &str, remaining: &str, status: GrantStatus| (used.to_owned(), remaining.to_owned(), status);
    assert_eq!(by_source["api:0.5"], expect("0.5", "0", GrantStatus::Expired), "{body}");
    assert_eq!(by_source["plan:hobby:100"], expect("4.2889", "95.7111", GrantStatus::Active), "{body}");
    assert_eq!(by_source["api:0.2"], expect("0", "0.2", GrantStatus::Active), "{body}");
    // The order grants burn in: priority first.
    let order: Vec<&str> = c.grants.iter().map(|g| g.grant.amount.0.as_str()).collect();
    assert_eq!(order, ["0.5", "100", "0.2"]);
    // Entitlements carry the same credit numbers.
    assert_eq!(entitlements(&gw, org).await.credits.balance, q("95.9111"));

    for (body, says) in [
        (json!({"amount": "1", "currency": "EUR"}), "currency"),
        (json!({"amount": "0", "currency": "USD"}), "greater than 0"),
        (json!({"amount": "1.5e2", "currency": "USD"}), "amount"),
        (
            json!({"amount": "1", "currency": "USD", "effective_at": "2025-08-02T00:00:00Z", "expires_at": "2025-08-01T00:00:00Z"}),
            "after",
        ),
        (json!({"amount": "1", "currency": "USD", "effective_at": "yesterday"}), "RFC 3339"),
    ] {
        let (status, answer) = gw.post_json(&format!("/v1/orgs/{org}/grants"), &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(error_message(&answer).contains(says), "{body}: {answer}");
    }
}

/// A local webhook receiver that verifies every signature and can be
/// switched down (answers 503). The notices it gets are read as JSON by
/// key: they are the gateway's outgoing webhooks, not API answers, and
/// `meterd::api` has no type for them.
#[derive(Default)]
struct Receiver {
    up: std::sync::atomic::AtomicBool,
    /// Every request: (webhook-id, answered 2xx, parsed body).
    seen: Mutex<Vec<(String, bool, Value)>>,
}

impl Receiver {
    async fn start() -> (Arc<Self>, String) {
        let receiver = Arc::new(Receiver::default());
        receiver.set_up(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let shared = shared.clone();
                async move { shared.receive(&headers, &body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }

    fn receive(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        let header =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let (id, timestamp, signature) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let key =
            base64::engine::general_purpose::STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected =
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(signature, expected, "the signature of {id} verifies");
        let sent_at: i64 = timestamp.parse().expect("webhook-timestamp is seconds");
        assert!((Utc::now().timestamp() - sent_at).abs() < 60, "timestamp is current");
        let up = self.up.load(std::sync::atomic::Ordering::SeqCst);
        self.seen.lock().unwrap().push((id, up, serde_json::from_slice(body).expect("JSON body")));
        if up { axum::http::StatusCode::NO_CONTENT } else { axum::http::StatusCode::SERVICE_UNAVAILABLE }
    }

    /// Delivered (2xx) messages as (rule, count of 2xx for its id).
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, _, body) in self.seen.lock().unwrap().iter().filter(|(_, ok, _)| *ok) {
            let key = format!(
                "{}|{}",
                body["data"]["org"].as_str().unwrap(),
                body["data"]["rule"].as_str().unwrap()
            );
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }

    fn failed_attempts(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|(_, ok, _)| !ok).count()
    }

    /// Waits for a 2xx delivery whose "org|rule" starts with `key`.
    async fn wait_for(&self, key: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.seen.lock().unwrap().iter().find_map(|(_, ok, body)| {
                let k = format!("{}|{}", body["data"]["org"].as_str()?, body["data"]["rule"].as_str()?);
                (*ok && k.starts_with(key)).then(|| body.clone())
            });
            if let Some(body) = found {
                return body;
            }
            assert!(Instant::now() < deadline, "no delivery of {key}; seen: {:?}", self.delivered());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_failures(&self, at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.failed_attempts() < at_least {
            assert!(Instant::now() < deadline, "the gateway never tried the receiver while it was down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn notifications(url: &str) -> String {
    format!(
        "[notifications]\nquota_percent = [50, 100]\ncredit_below = [\"104.9999\"]\nretry_schedule = [\"300ms\", \"600ms\"]\nsweep_interval = \"200ms\"\n[notifications.endpoints.receiver]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn thresholds_notify_once_signed_and_survive_a_down_receiver_and_a_restart() {
    let (receiver, url) = Receiver::start().await;
    let mut gw = gateway(notifications(&url));
    gw.put_json("/v1/orgs/n1", &json!({"plan": "metered"})).await;

    // 5 of 10 vCPU-seconds: 50 %. A redelivery and more usage below 100 %
    // fire nothing new.
    ingest_ok(&gw, &e2b_event("n1-a", "killed", &ago(30), "sbx-a", "n1", Some((2, 1, 2_500)))).await;
    let fifty = receiver.wait_for("n1|quota:sandbox_cpu_core_seconds:50").await;
    assert_eq!(fifty["type"], "quota.threshold_reached");
    assert_eq!(
        (fifty["data"]["used"].as_str(), fifty["data"]["quota"].as_str()),
        (Some("5"), Some("10")),
        "{fifty}"
    );
    ingest_ok(&gw, &e2b_event("n1-a", "killed", &ago(30), "sbx-a", "n1", Some((2, 1, 2_500)))).await;
    ingest_ok(&gw, &e2b_event("n1-b", "killed", &ago(29), "sbx-b", "n1", Some((1, 1, 2_000)))).await;
    ingest_ok(&gw, &e2b_event("n1-c", "killed", &ago(28), "sbx-c", "n1", Some((1, 1, 3_000)))).await;
    receiver.wait_for("n1|quota:sandbox_cpu_core_seconds:100").await;

    // A session over the plan's 60 s, and the concurrency limit (2) reached.
    ingest_ok(&gw, &e2b_event("n1-long", "created", &ago(120), "sbx-long", "n1", None)).await;
    ingest_ok(&gw, &e2b_event("n1-short", "created", &ago(5), "sbx-short", "n1", None)).await;
    let session = receiver.wait_for("n1|session:sbx-long:").await;
    assert_eq!(
        (session["type"].as_str(), session["data"]["limit_seconds"].as_u64()),
        (Some("session.over_limit"), Some(60))
    );
    receiver.wait_for("n1|concurrency:2").await;
    let e = entitlements(&gw, "n1").await;
    assert_eq!(e.sessions.limit_seconds, Some(60), "{e:?}");
    let over = &e.sessions.over_limit;
    assert_eq!(over.len(), 1, "only sbx-long runs longer than 60 s: {e:?}");
    assert_eq!((over[0].sandbox.as_str(), over[0].ended_at.is_none()), ("sbx-long", true), "{e:?}");
    let seconds: f64 = over[0].seconds.0.parse().expect("seconds are a decimal");
    assert!((120.0..180.0).contains(&seconds), "running for about 120 s: {e:?}");
    // n1 has the hobby credit (from the start) and metered's $5: $105, less
    // 10 vCPU-s × 0.000014 = 0.00014 and 7,500 MiB·ms of RAM
    // (0.00732421875 GiB-s × 0.0000045): 104.999859967041015625 < 104.9999.
    let credit = receiver.wait_for("n1|credit_below:104.9999").await;
    assert_eq!(credit["data"]["balance"], "104.99986", "shown to 6 places, half-even: {credit}");

    // The receiver goes down: a new crossing is retried until it is back.
    receiver.set_up(false);
    gw.put_json("/v1/orgs/n2", &json!({"plan": "metered"})).await;
    ingest_ok(&gw, &e2b_event("n2-a", "killed", &ago(30), "sbx-a", "n2", Some((5, 1, 1_000)))).await;
    receiver.wait_for_failures(1).await;
    receiver.set_up(true);
    receiver.wait_for("n2|quota:sandbox_cpu_core_seconds:50").await;

    // Down again, and the gateway is killed with a notice still undelivered:
    // the restarted gateway delivers it.
    receiver.set_up(false);
    let failures = receiver.failed_attempts();
    gw.put_json("/v1/orgs/n3", &json!({"plan": "metered"})).await;
    ingest_ok(&gw, &e2b_event("n3-a", "killed", &ago(30), "sbx-a", "n3", Some((10, 1, 1_000)))).await;
    receiver.wait_for_failures(failures + 1).await;
    gw.kill9();
    receiver.set_up(true);
    gw.restart();
    receiver.wait_for("n3|quota:sandbox_cpu_core_seconds:100").await;

    // Let sweeps and retries run a while: nothing fires twice, nothing that
    // got a 2xx is sent again, even across the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = receiver.delivered();
    assert!(delivered.values().all(|&n| n == 1), "each notice delivered once: {delivered:?}");
    let keys: Vec<&str> = delivered.keys().map(String::as_str).collect();
    for expected in [
        "n1|quota:sandbox_cpu_core_seconds:50",
        "n1|quota:sandbox_cpu_core_seconds:100",
        "n1|concurrency:2",
        "n2|quota:sandbox_cpu_core_seconds:50",
        "n3|quota:sandbox_cpu_core_seconds:50",
        "n3|quota:sandbox_cpu_core_seconds:100",
        "n1|credit_below:104.9999",
        "n3|credit_below:104.9999",
    ] {
        assert!(keys.contains(&expected), "{expected} delivered: {keys:?}");
    }
    let sessions: Vec<&&str> = keys.iter().filter(|k| k.starts_with("n1|session:")).collect();
    assert_eq!(sessions.len(), 1, "only the long sandbox is over 60 s: {keys:?}");
    assert!(sessions[0].starts_with("n1|session:sbx-long:"), "{keys:?}");
    // n2 spent only 5 vCPU-s: 104.99993 is not below 104.9999.
    assert!(!keys.iter().any(|k| k.starts_with("n2|credit")), "{keys:?}");
    let ids: Vec<String> =
        receiver.seen.lock().unwrap().iter().filter(|(_, ok, _)| *ok).map(|(id, _, _)| id.clone()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "webhook-ids are unique per notice");
}

/// A sandbox that started last month and is still running is one session,
/// measured from its real start — also after a restart, when only the last
/// level before the month is loaded from the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_spanning_the_month_start_keeps_its_start_across_a_restart() {
    use chrono::Datelike;
    let mut gw = gateway(String::new());
    gw.put_json("/v1/orgs/s", &json!({"plan": "metered"})).await;
    let now = Utc::now();
    let month_start = now.date_naive().with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let rfc = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let started = month_start - chrono::Duration::hours(3);
    // Created, paused, resumed before the month began; still running.
    ingest_ok(
        &gw,
        &e2b_event("s-created", "created", &rfc(started - chrono::Duration::hours(5)), "sbx", "s", None),
    )
    .await;
    ingest_ok(
        &gw,
        &e2b_event("s-paused", "paused", &rfc(started - chrono::Duration::hours(1)), "sbx", "s", None),
    )
    .await;
    ingest_ok(&gw, &e2b_event("s-resumed", "resumed", &rfc(started), "sbx", "s", None)).await;
    // Reported running again (another resume event) an hour later.
    ingest_ok(
        &gw,
        &e2b_event("s-again", "resumed", &rfc(started + chrono::Duration::hours(1)), "sbx", "s", None),
    )
    .await;
    for round in ["before", "after"] {
        let e = entitlements(&gw, "s").await;
        let over = &e.sessions.over_limit;
        assert_eq!(over.len(), 1, "{round} the restart: {e:?}");
        assert_eq!(over[0].started_at.0, rfc(started).replace(".000Z", "Z"), "{round} the restart: {e:?}");
        assert_eq!(e.concurrency.running, 1, "{round} the restart: {e:?}");
        gw.restart();
    }
}
