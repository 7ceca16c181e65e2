//! API keys and tenant isolation through the real gateway: keys made with
//! the CLI and over HTTP, each scope on each kind of route, revocation (at
//! once over HTTP, within the refresh from the CLI), no key and wrong keys,
//! and the admin token as the bootstrap credential.

use crate::support;

use std::time::{Duration, Instant};

use meterd::api::ErrorBody;
use meterd::api::keys::{CreatedKey, KeyScope, Keys, Revoked};
use meterd::api::usage::Usage;
use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Body, Gateway, Options, e2b_event, quantity};

/// Calls the gateway with `token` as the bearer (or none).
async fn call(
    gw: &Gateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Body) {
    let mut request = gw.client.request(method, gw.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Body::of(request.send().await.expect("request")).await
}

/// The code of an error answer.
fn code(body: &Body) -> String {
    body.json::<ErrorBody>().error.code
}

/// Runs the CLI against the gateway's config; returns stdout.
fn cli(gw: &Gateway, args: &[&str]) -> String {
    let output = support::meterd_command()
        .arg("--config")
        .arg(gw.config_path())
        .args(args)
        .output()
        .expect("running meterd");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "meterd {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Waits until `path` answers `status` with `token` (keys made by the CLI
/// reach a running gateway within its refresh).
async fn wait_for_status(gw: &Gateway, path: &str, token: Option<&str>, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = call(gw, Method::GET, path, token, None).await;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}: {got} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ingest_usage(gw: &Gateway) {
    for (id, org) in [("k1", "org-a"), ("k2", "org-b")] {
        let body = e2b_event(id, "killed", "2025-08-10T10:00:00Z", "sbx", org, Some((2, 512, 1_000)));
        let (status, receipt) = gw.e2b(&body).await;
        assert_eq!(status, 200, "ingest needs no key, only the provider's signature: {receipt}");
    }
}

const USAGE: &str = "usage?meter=sandbox_cpu_core_seconds&from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread")]
async fn each_scope_reaches_exactly_its_routes_and_revoked_or_wrong_keys_none() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    ingest_usage(&gw).await;

    // A tenant key from the CLI, shown once on stdout.
    let tenant =
        cli(&gw, &["keys", "create", "--org", "org-a", "--label", "acme dashboard"]).trim().to_owned();
    assert!(tenant.starts_with("mk_"), "{tenant}");
    let own = format!("/v1/orgs/org-a/{USAGE}");
    wait_for_status(&gw, &own, Some(&tenant), 200).await;

    // An admin key over HTTP, with the bootstrap admin token.
    let (status, created) =
        call(&gw, Method::POST, "/v1/keys", Some(ADMIN_TOKEN), Some(json!({"admin": true, "label": "ops"})))
            .await;
    assert_eq!(status, 201, "{created}");
    let created: CreatedKey = created.json();
    let admin = created.token;
    assert_eq!(created.key.scope, KeyScope::Admin);

    // Admin: everything.
    for path in [format!("/v1/orgs/org-b/{USAGE}"), "/v1/plugins".to_owned(), "/v1/keys".to_owned()] {
        assert_eq!(call(&gw, Method::GET, &path, Some(&admin), None).await.0, 200, "{path}");
    }
    // Tenant on its own org: reads and checks.
    let (status, usage) = call(&gw, Method::GET, &own, Some(&tenant), None).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage.json::<Usage>().total, quantity("2"));
    for path in ["/v1/orgs/org-a", "/v1/orgs/org-a/entitlements", "/v1/orgs/org-a/grants"] {
        assert_eq!(call(&gw, Method::GET, path, Some(&tenant), None).await.0, 200, "{path}");
    }
    let check = json!({"meter": "sandbox_cpu_core_seconds", "quantity": "1"});
    assert_eq!(
        call(&gw, Method::POST, "/v1/orgs/org-a/check", Some(&tenant), Some(check.clone())).await.0,
        200
    );
    // … but not what only an admin may do to it.
    let (status, body) =
        call(&gw, Method::PUT, "/v1/orgs/org-a", Some(&tenant), Some(json!({"plan": "pro"}))).await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"), "{body}");
    let grant = json!({"amount": "5", "currency": "USD"});
    assert_eq!(call(&gw, Method::POST, "/v1/orgs/org-a/grants", Some(&tenant), Some(grant)).await.0, 403);
    // Tenant on another org: as if it did not exist (org-b does have usage).
    let (status, body) =
        call(&gw, Method::GET, &format!("/v1/orgs/org-b/{USAGE}"), Some(&tenant), None).await;
    assert_eq!((status, code(&body).as_str()), (404, "not_found"), "{body}");
    let (never, never_body) =
        call(&gw, Method::GET, "/v1/orgs/no-such-org/entitlements", Some(&tenant), None).await;
    let (other, other_body) =
        call(&gw, Method::GET, "/v1/orgs/org-b/entitlements", Some(&tenant), None).await;
    assert_eq!(never, other);
    assert_eq!(
        never_body.json::<ErrorBody>().error.message.replace("no-such-org", "X"),
        other_body.json::<ErrorBody>().error.message.replace("org-b", "X"),
        "an org outside the scope looks exactly like one that does not exist"
    );
    assert_eq!(call(&gw, Method::POST, "/v1/orgs/org-b/check", Some(&tenant), Some(check)).await.0, 404);
    assert_eq!(
        call(&gw, Method::PUT, "/v1/orgs/org-b", Some(&tenant), Some(json!({"plan": "pro"}))).await.0,
        404
    );
    // Tenant on admin routes.
    for path in ["/v1/plugins", "/v1/keys"] {
        assert_eq!(call(&gw, Method::GET, path, Some(&tenant), None).await.0, 403, "{path}");
    }
    // No key, and wrong keys of every shape.
    assert_eq!(call(&gw, Method::GET, &own, None, None).await.0, 401);
    let forged = format!("{}{}", &tenant[..16], "0".repeat(64));
    for wrong in [forged.as_str(), "mk_0123_abcd", "not-a-key", "e2e-admin-token-0123456788"] {
        let (status, body) = call(&gw, Method::GET, &own, Some(wrong), None).await;
        assert_eq!((status, code(&body).as_str()), (401, "unauthorized"), "{wrong}: {body}");
    }

    // Listings never show a secret.
    let (_, listed) = call(&gw, Method::GET, "/v1/keys", Some(&admin), None).await;
    let text = listed.text();
    assert!(!text.contains(&tenant[16..]) && !text.contains(&admin[16..]), "a secret leaked: {text}");
    assert_eq!(listed.json::<Keys>().keys.len(), 2);
    assert!(cli(&gw, &["keys", "list"]).contains("acme dashboard"));

    // Revoked over HTTP: refused at once.
    let tenant_id = &tenant[3..15];
    let (status, revoked) =
        call(&gw, Method::DELETE, &format!("/v1/keys/{tenant_id}"), Some(&admin), None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked.json::<Revoked>().id, tenant_id);
    assert_eq!(call(&gw, Method::GET, &own, Some(&tenant), None).await.0, 401);
    assert_eq!(call(&gw, Method::DELETE, &format!("/v1/keys/{tenant_id}"), Some(&admin), None).await.0, 404);
    // Revoked with the CLI: refused within the refresh.
    let admin_id = &admin[3..15];
    assert!(cli(&gw, &["keys", "revoke", admin_id]).contains(admin_id));
    wait_for_status(&gw, "/v1/plugins", Some(&admin), 401).await;
    // The admin token still works; ingest never needed a key.
    assert_eq!(call(&gw, Method::GET, "/v1/keys", Some(ADMIN_TOKEN), None).await.0, 200);
    let body = e2b_event("k3", "killed", "2025-08-10T11:00:00Z", "sbx", "org-a", Some((1, 512, 1_000)));
    assert_eq!(gw.e2b(&body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_token_the_first_key_closes_the_open_loopback_api() {
    let gw = Gateway::start(Options::default());
    ingest_usage(&gw).await;
    let path = format!("/v1/orgs/org-a/{USAGE}");
    assert_eq!(
        call(&gw, Method::GET, &path, None, None).await.0,
        200,
        "open on loopback with no credentials"
    );
    let (status, body) = call(&gw, Method::POST, "/v1/keys", None, Some(json!({"orgs": []}))).await;
    assert_eq!(status, 400, "a key needs a scope: {body}");
    let (status, body) =
        call(&gw, Method::POST, "/v1/keys", None, Some(json!({"orgs": ["org-a"], "admin": false}))).await;
    assert_eq!(status, 201, "{body}");
    let tenant = body.json::<CreatedKey>().token;
    assert_eq!(call(&gw, Method::GET, &path, None, None).await.0, 401, "closed once a key exists");
    assert_eq!(call(&gw, Method::GET, &path, Some(&tenant), None).await.0, 200);
    let output = support::meterd_command()
        .arg("--config")
        .arg(gw.config_path())
        .args(["keys", "create", "--admin", "--org", "org-a"])
        .output()
        .expect("running meterd");
    assert_eq!(output.status.code(), Some(2), "--admin and --org conflict");
    let output = support::meterd_command()
        .arg("--config")
        .arg(gw.config_path())
        .args(["keys", "revoke", "nope"])
        .output()
        .expect("running meterd");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no active key \"nope\""));
}
