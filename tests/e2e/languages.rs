//! Plugins in other languages, against the real binary: the Python
//! (componentize-py) and JavaScript (componentize-js) signed-JSON adapters
//! pass the same conformance cases and meter the same through a gateway,
//! under the locked-down WASI p2 (their stdout reaches the gateway's log);
//! and `meterd plugins new` scaffolds a Rust plugin whose component passes
//! its own conformance cases.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;

use meterd::api::ErrorBody;
use meterd_plugin_build::languages::compile_cache_lease;
use meterd_testkit::{language_component, signed_json_signature};
use support::{Gateway, Options, meterd_command};

const SECRET: &str = "signed-json-e2e-secret";
const PLUGINS: [&str; 2] = ["signed-json-py", "signed-json-js"];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn meterd(args: &[&str], dir: &Path) -> Output {
    meterd_command().args(args).current_dir(dir).env("METERD_LOG", "error").output().expect("running meterd")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `meterd plugins test COMPONENT --fixtures FIXTURES [EXTRA…]`.
fn plugins_test(component: &Path, fixtures: &Path, extra: &[&str], dir: &Path) -> Output {
    meterd(&[&["plugins", "test", path(component), "--fixtures", path(fixtures)], extra].concat(), dir)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sign(body: &str) -> String {
    signed_json_signature(SECRET, body.as_bytes())
}

#[test]
fn python_and_javascript_plugins_pass_the_same_conformance_cases() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = repo_path("tests/conformance/signed-json");
    // Compiled once for both tests of this file (the gateway's loads them).
    let cache = compile_cache_lease().expect("the shared compile cache");
    for name in PLUGINS {
        let out = plugins_test(
            &language_component(name),
            &fixtures,
            &["--cache-dir", path(&cache.dir)],
            dir.path(),
        );
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}{}", text(&out.stderr));
        for case in
            ["accepted-delta-and-level", "wrong-secret", "quantity-as-json-number", "metric-the-host-refuses"]
        {
            assert!(stdout.lines().any(|l| l == format!("ok {case}")), "{name}: {case} in {stdout}");
        }
        assert!(stdout.ends_with(&format!("{name}: 9 cases, 9 ok, 0 failed\n")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_meter_the_same_through_the_gateway() {
    let sections: String = PLUGINS
        .iter()
        .map(|name| {
            format!("[plugins.{name}]\nsignature_secret = \"{SECRET}\"\nlog_deliveries = \"true\"\n\n")
        })
        .collect();
    let cache = compile_cache_lease().expect("the shared compile cache");
    let gw = Gateway::start(Options {
        plugins: vec![],
        components: PLUGINS.iter().map(|name| (*name, language_component(name))).collect(),
        sections,
        capture_stderr: true,
        // Their stdout lines are logged at info.
        env: vec![("METERD_LOG", "info")],
        cache_dir: Some(cache.dir.clone()),
        ..Options::default()
    });
    drop(cache);
    for name in PLUGINS {
        let org = format!("org-{name}");
        for (i, quantity) in ["1.25", "2.5", "0.125"].iter().enumerate() {
            let body = format!(
                r#"{{"id":"evt-{i}","org":"{org}","records":[{{"subject":"sbx-{i}","metric":"sandbox_cpu_core_seconds","kind":"delta","quantity":"{quantity}","at":"2025-08-06T20:5{i}:00Z","attributes":{{"template_id":"base"}}}}]}}"#
            );
            let signature = sign(&body);
            let headers = [("x-meterd-signature", signature.as_str()), ("content-type", "application/json")];
            let (status, answer) = gw.ingest(name, body.as_bytes(), &headers).await;
            assert_eq!(status, 200, "{name} evt-{i}: {answer}");
            // A redelivery is acknowledged and counted once.
            let (status, answer) = gw.ingest(name, body.as_bytes(), &headers).await;
            assert_eq!(status, 200, "{name} redelivered evt-{i}: {answer}");
        }
        let forged = r#"{"id":"evt-x","org":"org-x","records":[]}"#;
        let (status, answer) =
            gw.ingest(name, forged.as_bytes(), &[("x-meterd-signature", &sign("something else"))]).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert!(answer.json::<ErrorBody>().error.message.contains("does not match the body"), "{answer}");
        assert_eq!(gw.total(&org, "sandbox_cpu_core_seconds").await, "3.875", "{name}");
    }
    let log = gw.stderr_log();
    for name in PLUGINS {
        let line = format!("{name}: event evt-2 for org-{name}: 1 records");
        assert!(log.contains(&line), "{line:?} (the plugin's stdout) is not in the gateway's log:\n{log}");
    }
}

#[test]
fn a_scaffolded_plugin_builds_and_passes_its_own_conformance_cases() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sdk = repo_path("plugins/sdk");
    let parent = dir.path().join("work");
    let parent_arg = parent.to_str().expect("a UTF-8 path");
    let sdk_arg = sdk.to_str().expect("a UTF-8 path");
    let new_acme = ["plugins", "new", "acme-cloud", "--dir", parent_arg, "--sdk", sdk_arg];
    let out = meterd(&new_acme, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("meterd-plugin-build -- --crate"), "{}", text(&out.stdout));
    // The same name again is refused with a line that says why, exit 2.
    let again = meterd(&new_acme, dir.path());
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    let bad = meterd(&["plugins", "new", "Acme Cloud", "--dir", parent_arg], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("must be 1-40 characters"), "{}", text(&bad.stderr));

    let crate_dir = parent.join("acme-cloud");
    let component =
        meterd_plugin_build::build_lone_crate(&crate_dir).expect("building the scaffolded plugin for wasm");
    let out = plugins_test(&component, &crate_dir.join("conformance"), &[], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.ends_with("acme-cloud: 6 cases, 6 ok, 0 failed\n"), "{stdout}");
}
