//! The OpenAPI document at `GET /openapi.json` against the live router: a
//! valid OpenAPI document (checked by openapi-spec-validator from PyPI,
//! installed by tests/s3/install.sh), every operation complete, and every
//! documented path and method served by the router — none falls through to
//! the "no such route" or "method not allowed" fallbacks. (The other
//! direction holds by construction: routes are registered from the same
//! annotations the document is built from.)

use crate::support;

use std::io::Write as _;
use std::process::Command;

use meterd::api::ErrorBody;
use serde_json::Value;
use support::{ADMIN_TOKEN, Body, Gateway, Options};

/// A path with sample values for its parameters.
fn concrete(path: &str) -> String {
    path.replace("{org}", "acme")
        .replace("{plugin}", "e2b")
        .replace("{id}", "0123456789ab")
        .replace("{path}", "a/b")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_valid_complete_and_every_operation_is_served() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    let response = gw.client.get(gw.url("/openapi.json")).send().await.expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "the document needs no credentials");
    let text = response.text().await.expect("body");
    // The document's own shape is what this test checks: read as untyped
    // JSON, by key (no `meterd::api` type describes an OpenAPI document).
    let doc: Value = serde_json::from_str(&text).expect("JSON");

    // Valid OpenAPI, by an independent validator.
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    let python = support::s3::installed("venv/bin/python");
    let validated = Command::new(python)
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(file.path())
        .output()
        .expect("running openapi-spec-validator");
    assert!(
        validated.status.success(),
        "openapi-spec-validator refused the document: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let what = format!("{} {path}", method.to_uppercase());
            assert!(
                op["operationId"].is_string() && op["summary"].is_string(),
                "{what}: operationId and summary"
            );
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{what}: responses");
            // Every {param} of the path is declared.
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect()
                })
                .unwrap_or_default();
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(['{', '}']);
                assert!(declared.contains(&name), "{what}: path parameter {name} not declared");
            }
            // Served: the router has this method at this path.
            let mut request = gw
                .client
                .request(method.to_uppercase().parse().expect("method"), gw.url(&concrete(path)))
                .bearer_auth(ADMIN_TOKEN);
            if method != "get" && method != "delete" {
                request = request.header("content-type", "application/json").body("{}");
            }
            let (status, body) = Body::of(request.send().await.expect("request")).await;
            // Any answer (a success of any operation, or an error): only an
            // error body is read, as one.
            let error = serde_json::from_str::<ErrorBody>(body.text()).ok();
            assert_ne!(status, 405, "{what} is documented but not served: {body}");
            assert!(
                !(status == 404 && error.is_some_and(|e| e.error.message == "no such route")),
                "{what} is documented but not served: {body}"
            );
        }
    }
    // Every route meterd serves today (see README "HTTP API").
    let expected = [
        "/v1/ingest/{plugin}",
        "/v1/ingest/{plugin}/{path}",
        "/v1/orgs",
        "/v1/orgs/{org}",
        "/v1/orgs/{org}/usage",
        "/v1/orgs/{org}/entitlements",
        "/v1/orgs/{org}/check",
        "/v1/orgs/{org}/grants",
        "/v1/plugins",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/replays",
        "/v1/replays/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ];
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort();
    let mut wanted = expected.to_vec();
    wanted.sort();
    assert_eq!(documented, wanted);
    assert_eq!(operations, 20, "one operation per route and method");
    // An undocumented path really is not served.
    let (status, body) = gw.get("/v1/not-a-route").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body.json::<ErrorBody>().error.message, "no such route");
}

/// schemathesis (PyPI, installed by tests/s3/install.sh) against the live
/// gateway with an admin token: every phase (the document's examples, its
/// boundary values, random valid and invalid requests, and stateful
/// sequences that feed one answer into the next request) and every check
/// (no 5xx, every status, header and body as documented, invalid requests
/// refused, valid ones accepted). The run must end with no failure.
/// Its settings, and why each is what it is: tests/e2e/schemathesis.toml.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_against_the_live_gateway() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    // Something to find: an org on a plan, with a grant and usage.
    let (status, _) = gw.put_json("/v1/orgs/acme", &serde_json::json!({"plan": "pro"})).await;
    assert_eq!(status, 200);
    let now = chrono::Utc::now();
    let at = |minutes_ago: i64| (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    for (id, kind, time, execution) in
        [("st-1", "created", at(30), None), ("st-2", "killed", at(5), Some((2, 1024, 1_500_000)))]
    {
        let (status, body) = gw.e2b(&support::e2b_event(id, kind, &time, "sbx-1", "acme", execution)).await;
        assert_eq!(status, 200, "{body}");
    }

    let st = support::s3::installed("venv/bin/st");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/schemathesis.toml");
    let output = Command::new(st)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(gw.url("/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .env("NO_COLOR", "1")
        // Its cache (.schemathesis/) goes with the gateway's directory.
        .current_dir(gw.dir.path())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It ran, and tested every operation it selected (all but the
    // document's own, 19 today).
    let line = |prefix: &str| stdout.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned));
    assert_eq!(line("Selected: "), Some("19/19".to_owned()), "{stdout}");
    assert_eq!(line("Tested: "), Some("19".to_owned()), "{stdout}");
}
