//! Native unit tests of the adapter's pure logic, on E2B's documented and
//! constructed fixtures (see tests/fixtures/e2b/SOURCES.md).

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/e2b");

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {path}: {e}"))
}

fn vector() -> serde_json::Value {
    serde_json::from_slice(&fixture("webhook-signature-vector.constructed.json")).unwrap()
}

fn quantities(outcome: &WebhookOutcome) -> Vec<(&str, &str, UsageKind)> {
    outcome.records.iter().map(|r| (r.metric.as_str(), r.quantity.as_str(), r.kind)).collect()
}

#[test]
fn signature_vector_verifies_in_both_alphabets() {
    let v = vector();
    let body = fixture(v["body_file"].as_str().unwrap());
    let secret = v["secret"].as_str().unwrap();
    let hashed_len = secret.len() + body.len();
    assert_eq!(hashed_len as u64, v["body_sha256_input_len"].as_u64().unwrap());
    for key in ["signature_std_base64_padded", "signature_docs_urlsafe_nopad"] {
        let sig = v[key].as_str().unwrap();
        assert_eq!(verify_signature(secret, &body, Some(sig), Some("v1")), Ok(()), "{key}");
    }
    // Standard alphabet without padding, URL-safe with padding.
    let std_nopad = v["signature_std_base64_padded"].as_str().unwrap().trim_end_matches('=');
    assert_eq!(verify_signature(secret, &body, Some(std_nopad), None), Ok(()));
    let url_pad = format!("{}=", v["signature_docs_urlsafe_nopad"].as_str().unwrap());
    assert_eq!(verify_signature(secret, &body, Some(&url_pad), None), Ok(()));
}

#[test]
fn constructed_headers_carry_a_valid_signature() {
    let headers: BTreeMap<String, String> =
        serde_json::from_slice(&fixture("webhook-killed.constructed.headers.json")).unwrap();
    let body = fixture("webhook-killed.constructed.body.json");
    let secret = vector()["secret"].as_str().unwrap().to_owned();
    let ok = verify_signature(
        &secret,
        &body,
        headers.get(SIGNATURE_HEADER).map(String::as_str),
        headers.get(SIGNATURE_VERSION_HEADER).map(String::as_str),
    );
    assert_eq!(ok, Ok(()));
}

#[test]
fn wrong_missing_or_garbled_signatures_are_unauthorized() {
    let v = vector();
    let body = fixture("webhook-killed.constructed.body.json");
    let sig = v["signature_std_base64_padded"].as_str().unwrap();
    let unauthorized = |r: Result<(), AdapterError>| matches!(r, Err(AdapterError::Unauthorized(_)));
    assert!(unauthorized(verify_signature("other-secret", &body, Some(sig), None)));
    assert!(unauthorized(verify_signature("test-signature-secret-1", b"{}", Some(sig), None)));
    assert!(unauthorized(verify_signature("test-signature-secret-1", &body, None, None)));
    assert!(unauthorized(verify_signature("test-signature-secret-1", &body, Some("!!"), None)));
    assert!(unauthorized(verify_signature("test-signature-secret-1", &body, Some(sig), Some("v2"))));
    // A truncated digest is not a prefix match.
    assert!(unauthorized(verify_signature("test-signature-secret-1", &body, Some(&sig[..20]), None)));
}

#[test]
fn killed_event_gives_exact_deltas_and_an_inactive_level() {
    let out = normalize(&fixture("webhook-killed.constructed.body.json"), "tenant").unwrap();
    assert_eq!(out.event_id, "9b2f6a4e-0d1c-4c59-9a51-2f6f3f0f7c11");
    // 2 vCPU × 72,123 ms; 512 MiB × 72,123 ms.
    assert_eq!(
        quantities(&out),
        vec![
            (METRIC_CPU, "144.246", UsageKind::Delta),
            (METRIC_RAM, "36.0615", UsageKind::Delta),
            (METRIC_ACTIVE, "0", UsageKind::Level),
        ]
    );
    let cpu = &out.records[0];
    assert_eq!(cpu.org_id, "acme", "the configured metadata key names the org");
    assert_eq!(cpu.subject, "i1a2b3c4d5e6f7g8h9j0k");
    assert_eq!(cpu.at, 1_754_513_976_123);
    assert_eq!(cpu.window_start, Some(1_754_513_904_000));
    assert_eq!(
        cpu.attributes,
        vec![
            ("sandbox_id".to_owned(), "i1a2b3c4d5e6f7g8h9j0k".to_owned()),
            ("template_id".to_owned(), "rki5dems9wqfm4r03t7g".to_owned()),
            ("kill_reason".to_owned(), "unknown".to_owned()),
        ]
    );
    assert!(out.records.iter().all(|r| r.event_id == out.event_id));
}

#[test]
fn org_falls_back_to_the_team_when_metadata_lacks_the_key() {
    let out = normalize(&fixture("webhook-killed.constructed.body.json"), "org_id").unwrap();
    assert_eq!(out.records[0].org_id, "460355b3-4f64-48f9-9a16-4442817f79f5");
}

#[test]
fn docs_payload_gives_deltas_from_its_execution() {
    // The docs example keeps a placeholder type; make it a pause.
    let text = String::from_utf8(fixture("webhook-payload.docs-pr197.v2.json")).unwrap();
    let body = text.replace("<sandbox-event-type>", "sandbox.lifecycle.paused");
    let out = normalize(body.as_bytes(), "org_id").unwrap();
    assert_eq!(
        quantities(&out),
        vec![
            (METRIC_CPU, "2", UsageKind::Delta),
            (METRIC_RAM, "0.5", UsageKind::Delta),
            (METRIC_ACTIVE, "0", UsageKind::Level),
        ]
    );
    assert_eq!(out.records[0].org_id, "<your-team-id>");
}

#[test]
fn created_and_resumed_give_an_active_level_only() {
    for event_type in ["sandbox.lifecycle.created", "sandbox.lifecycle.resumed"] {
        let body = serde_json::json!({
            "id": "ev-1", "version": "v2", "type": event_type,
            "timestamp": "2025-08-06T20:58:24Z", "sandbox_id": "sbx", "sandbox_team_id": "team",
        });
        let out = normalize(body.to_string().as_bytes(), "org_id").unwrap();
        assert_eq!(quantities(&out), vec![(METRIC_ACTIVE, "1", UsageKind::Level)], "{event_type}");
        assert_eq!(out.records[0].window_start, None);
    }
}

#[test]
fn pause_without_execution_gives_only_the_level() {
    let body = serde_json::json!({
        "id": "ev-2", "type": "sandbox.lifecycle.paused", "timestamp": "2025-08-06T20:58:24Z",
        "sandbox_id": "sbx", "sandbox_team_id": "team", "event_data": {},
    });
    let out = normalize(body.to_string().as_bytes(), "org_id").unwrap();
    assert_eq!(quantities(&out), vec![(METRIC_ACTIVE, "0", UsageKind::Level)]);
}

#[test]
fn other_event_types_are_accepted_without_records() {
    for event_type in ["sandbox.lifecycle.updated", "sandbox.lifecycle.checkpointed", "sandbox.future.thing"]
    {
        let body = serde_json::json!({
            "id": "ev-3", "type": event_type, "timestamp": "not even checked",
            "sandbox_id": "sbx",
        });
        let out = normalize(body.to_string().as_bytes(), "org_id").unwrap();
        assert_eq!(out.event_id, "ev-3");
        assert!(out.records.is_empty(), "{event_type}");
    }
}

#[test]
fn malformed_bodies_say_what_is_wrong() {
    let cases = [
        (serde_json::json!("not an object").to_string(), "not an E2B v2 webhook event"),
        ("{\"id\":".to_owned(), "not an E2B v2 webhook event"),
        (
            serde_json::json!({"id": "", "type": "sandbox.lifecycle.created", "timestamp": "2025-08-06T20:58:24Z", "sandbox_id": "s", "sandbox_team_id": "t"}).to_string(),
            "`id` is empty",
        ),
        (
            serde_json::json!({"id": "e", "type": "sandbox.lifecycle.created", "timestamp": "yesterday", "sandbox_id": "s", "sandbox_team_id": "t"}).to_string(),
            "`timestamp`",
        ),
        (
            serde_json::json!({"id": "e", "type": "sandbox.lifecycle.created", "timestamp": "2025-08-06T20:58:24Z", "sandbox_id": "s"}).to_string(),
            "no organization",
        ),
        (
            serde_json::json!({"id": "e", "type": "sandbox.lifecycle.killed", "timestamp": "2025-08-06T20:58:24Z", "sandbox_id": "s", "sandbox_team_id": "t",
              "event_data": {"execution": {"vcpu_count": -2, "memory_mb": 512, "execution_time": 10}}}).to_string(),
            "at `event_data.execution.vcpu_count`",
        ),
        (
            serde_json::json!({"id": "e", "type": "sandbox.lifecycle.killed", "timestamp": "2025-08-06T20:58:24Z", "sandbox_id": "s", "sandbox_team_id": "t",
              "event_data": {"sandbox_metadata": {"org_id": 7}}}).to_string(),
            "must be a non-empty string",
        ),
    ];
    for (body, expected) in cases {
        match normalize(body.as_bytes(), "org_id") {
            Err(AdapterError::Malformed(message)) => {
                assert!(message.contains(expected), "{message:?} should mention {expected:?}")
            }
            other => panic!("{body}: expected malformed, got {other:?}"),
        }
    }
}

#[test]
fn anything_after_the_event_is_refused() {
    // Found by the e2b_normalize fuzz target: text after the JSON object was
    // ignored, so a body of two events (or JSON Lines) counted only the first.
    let killed = fixture("webhook-killed.constructed.body.json");
    for tail in [&b"\n  \"s-id>\"\n}\n"[..], b"{\"id\":\"second\"}", b"\n{}\n", b"x"] {
        let body = [&killed[..], tail].concat();
        match normalize(&body, "tenant") {
            Err(AdapterError::Malformed(message)) => {
                assert!(message.contains("trailing characters"), "{message}")
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(tail)),
        }
    }
    let body = [&killed[..], b" \r\n\t"].concat();
    assert_eq!(normalize(&body, "tenant").unwrap().records.len(), 3, "trailing whitespace is fine");
}

#[test]
fn an_array_is_not_an_event() {
    // serde reads a struct from an array of its fields in order; the
    // daytona_analytics fuzz target found `[]` read that way (as zeros).
    let body = r#"["ev-1","sandbox.lifecycle.created","2025-08-06T20:58:24Z",null,"sbx",null,"team"]"#;
    match normalize(body.as_bytes(), "org_id") {
        Err(AdapterError::Malformed(m)) => assert!(m.contains("JSON array"), "{m}"),
        other => panic!("{other:?}"),
    }
}
