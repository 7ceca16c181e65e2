//! Hot reload under load: plugins and config change while signed webhooks
//! keep arriving, and not one request fails.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meterd::api::ops::{Plugin, Plugins, Reload};
use meterd::api::orgs::CheckAnswer;
use serde_json::json;
use support::{Gateway, Options, e2b_event};

/// Webhooks sent continuously by a few clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let url = gw.url("/v1/ingest/e2b");
                let http = gw.client.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let body = e2b_event(
                            &format!("load-{client}-{n}"),
                            "killed",
                            "2025-08-10T12:00:00Z",
                            &format!("sbx-{client}"),
                            "load-org",
                            Some((1, 512, 1_000)),
                        );
                        let signature = support::e2b_signature(support::E2B_SECRET, &body);
                        let sent = http
                            .post(&url)
                            .header("e2b-signature", signature)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().as_u16() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                errors.lock().unwrap().push(format!("{status}: {text}"));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(e.to_string());
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, errors, tasks }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns (acknowledged, failed).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }

    /// Waits until `more` further webhooks were acknowledged.
    async fn wait_for_progress(&self, more: u64) {
        let target = self.ok() + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok() < target {
            assert!(Instant::now() < deadline, "ingest stalled at {} acknowledged", self.ok());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Writes `bytes` the way deploy tools do: a temporary file, then a rename.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn plugins(gw: &Gateway) -> Plugins {
    let (status, body) = gw.get("/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    body.json()
}

fn plugin<'a>(status: &'a Plugins, name: &str) -> Option<&'a Plugin> {
    status.plugins.iter().find(|p| p.name == name)
}

/// Hot reload's part of the status (there once the gateway serves).
fn reload(status: &Plugins) -> &Reload {
    status.reload.as_ref().unwrap_or_else(|| panic!("no reload status: {status:#?}"))
}

/// Polls `/v1/plugins` until `check` holds; returns how long it took.
async fn wait_for(gw: &Gateway, what: &str, check: impl Fn(&Plugins) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let status = plugins(gw).await;
        if check(&status) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never saw {what}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn version_is(status: &Plugins, version: &str) -> bool {
    plugin(status, "e2b").is_some_and(|p| p.version == version)
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_are_swapped_refused_added_and_removed_under_load_without_a_failed_request() {
    let gw = Gateway::start(Options { plugins: vec!["e2b", "chaos"], ..Options::default() });
    let dir = gw.dir.path().join("plugins");
    let e2b_file = dir.join("e2b.wasm");
    let original = std::fs::read(&e2b_file).unwrap();
    let rebuilt = std::fs::read(meterd_plugin_build::test_component("e2b").unwrap()).unwrap();
    let status = plugins(&gw).await;
    assert!(reload(&status).watching, "{status:?}");
    let e2b = plugin(&status, "e2b").expect("e2b loaded");
    let old_version = e2b.version.clone();
    assert_eq!(e2b.wit_version, "0.1.0");

    let load = Load::start(&gw, 8);
    load.wait_for_progress(50).await;

    // A rebuilt component (another info() version) lands by rename.
    replace_atomically(&e2b_file, &rebuilt);
    let took = wait_for(&gw, "the rebuilt e2b serving", |s| version_is(s, "0.1.1-next")).await;
    eprintln!("rebuilt e2b serving {took:?} after the rename (under load)");
    assert!(took < Duration::from_secs(5), "swap took {took:?}");
    load.wait_for_progress(50).await;

    // A truncated component, then something that is not a component at all,
    // then a component built against another WIT major: each is refused
    // with the reason, and the rebuilt version keeps serving.
    let wit_next = std::fs::read(meterd_plugin_build::test_component("wit-next").unwrap()).unwrap();
    for (bytes, says) in [
        (&original[..original.len() / 2], "not a valid WebAssembly component"),
        (&b"this is not wasm"[..], "not a valid WebAssembly component"),
        (&wit_next[..], "meterd:provider@1.0.0"),
    ] {
        // Plain writes (truncate, then write): the watcher may see the file
        // half-written; it must never load it.
        let refusals = reload(&plugins(&gw).await).plugin_reload_failures;
        std::fs::write(&e2b_file, bytes).unwrap();
        wait_for(&gw, says, |s| {
            reload(s).plugin_reload_failures > refusals
                && plugin(s, "e2b")
                    .is_some_and(|p| p.last_reload_error.as_ref().is_some_and(|e| e.error.contains(says)))
        })
        .await;
        let status = plugins(&gw).await;
        assert!(version_is(&status, "0.1.1-next"), "the rebuilt version still serves: {status:#?}");
        let failure = status.failures.first().unwrap_or_else(|| panic!("a failure: {status:#?}"));
        assert!(failure.file.ends_with("e2b.wasm"), "{status:#?}");
        load.wait_for_progress(20).await;
    }
    let error = plugin(&plugins(&gw).await, "e2b")
        .and_then(|p| p.last_reload_error.clone())
        .expect("e2b's last reload error")
        .error;
    assert!(error.contains("accepts meterd:provider@0.1.x"), "names both versions: {error}");
    // The CLI shows the same from the running gateway, and exits 1.
    let listed = support::meterd_command()
        .args(["plugins", "list", "--url", &gw.base, "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("e2b") && l.contains("0.1.1-next") && l.contains("0.1.0")),
        "{stdout}"
    );
    assert!(stdout.contains("refused") && stdout.contains("meterd:provider@1.0.0"), "{stdout}");

    // The original comes back: it serves and the error is gone.
    std::fs::write(&e2b_file, &original).unwrap();
    wait_for(&gw, "the original e2b back", |s| {
        version_is(s, &old_version) && plugin(s, "e2b").is_some_and(|p| p.last_reload_error.is_none())
    })
    .await;

    // Removing a file unloads that plugin only; a new file adds one.
    let chaos = std::fs::read(dir.join("chaos.wasm")).unwrap();
    std::fs::remove_file(dir.join("chaos.wasm")).unwrap();
    wait_for(&gw, "chaos unloaded", |s| plugin(s, "chaos").is_none()).await;
    let (status, _) = gw.ingest("chaos", b"ok:after-removal", &[]).await;
    assert_eq!(status, 404);
    replace_atomically(&dir.join("chaos.wasm"), &chaos);
    wait_for(&gw, "chaos loaded again", |s| plugin(s, "chaos").is_some()).await;
    let (status, receipt) = gw.ingest("chaos", b"ok:after-adding", &[]).await;
    assert_eq!(status, 200, "{receipt}");

    load.wait_for_progress(50).await;
    let (acknowledged, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "no request failed during reloads: {errors:?}");
    // Every acknowledged webhook was committed, once.
    assert_eq!(gw.count_rows("deliveries").await, acknowledged as i64 + 1, "plus the one chaos call");
    let status = plugins(&gw).await;
    assert!(reload(&status).plugin_reload_failures >= 3, "{:#?}", status.reload);
}

/// `base` (the config `Gateway::start` wrote, up to its plan) with the
/// plan's quota set to `limit`.
fn config_with_quota(base: &str, limit: &str) -> String {
    let base = base.split("\n[plans.metered]").next().unwrap();
    format!(
        "{base}\n[plans.metered]\n[plans.metered.quotas]\nsandbox_cpu_core_seconds = {{ limit = \"{limit}\", enforcement = \"hard\" }}\n"
    )
}

async fn allows(gw: &Gateway, quantity: &str) -> bool {
    let (status, answer) = gw
        .post_json("/v1/orgs/acme/check", &json!({"meter": "sandbox_cpu_core_seconds", "quantity": quantity}))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer.json::<CheckAnswer>().allow
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_config_replaces_the_running_one_and_an_invalid_one_is_refused() {
    let gw = Gateway::start(Options {
        sections: "[plans.metered]\n[plans.metered.quotas]\nsandbox_cpu_core_seconds = { limit = \"10\", enforcement = \"hard\" }\n".into(),
        ..Options::default()
    });
    gw.put_json("/v1/orgs/acme", &json!({"plan": "metered"})).await;
    assert!(!allows(&gw, "500").await, "500 is over the quota of 10");
    let load = Load::start(&gw, 4);
    load.wait_for_progress(20).await;

    // Invalid: an unknown key. The running config stays, the error shows.
    let path = gw.config_path();
    let base = std::fs::read_to_string(&path).unwrap();
    let valid = config_with_quota(&base, "1000");
    replace_atomically(&path, format!("bogus_key = 1\n{valid}").as_bytes());
    wait_for(&gw, "the config error", |s| {
        reload(s).config.last_error.as_deref().is_some_and(|e| e.contains("bogus_key"))
    })
    .await;
    assert!(!allows(&gw, "500").await, "the old quota still applies");
    load.wait_for_progress(20).await;

    // Valid, with a new quota: the next check uses it. A changed listen
    // address is reported as needing a restart, not applied.
    let moved = valid.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    assert_ne!(moved, valid);
    replace_atomically(&path, moved.as_bytes());
    wait_for(&gw, "the new config", |s| reload(s).config.last_error.is_none()).await;
    assert!(allows(&gw, "500").await, "the new quota of 1000 applies");
    let status = plugins(&gw).await;
    let restart = &reload(&status).config.restart_required;
    assert!(restart.iter().any(|r| r.starts_with("listen")), "{status:#?}");

    // Edited in place (not renamed), as some editors do.
    std::fs::write(&path, config_with_quota(&base, "100")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while allows(&gw, "500").await {
        assert!(Instant::now() < deadline, "the in-place edit was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (acknowledged, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(gw.count_rows("deliveries").await, acknowledged as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_watch_file_changes_are_left_alone() {
    let gw = Gateway::start(Options { serve_args: vec!["--no-watch"], ..Options::default() });
    let status = plugins(&gw).await;
    assert!(!reload(&status).watching, "{status:?}");
    let old_version = plugin(&status, "e2b").expect("e2b loaded").version.clone();
    let rebuilt = std::fs::read(meterd_plugin_build::test_component("e2b").unwrap()).unwrap();
    replace_atomically(&gw.dir.path().join("plugins").join("e2b.wasm"), &rebuilt);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(plugin(&plugins(&gw).await, "e2b").expect("e2b loaded").version, old_version);
}
