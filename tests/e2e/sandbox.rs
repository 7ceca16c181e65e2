//! The sandbox holds: a plugin call that loops forever, allocates without
//! bound or traps fails alone (HTTP 500 naming the plugin), and the next
//! good call, and every other plugin, carry on.

use crate::support;

use meterd::api::ErrorBody;
use meterd::api::ops::Receipt;
use support::{Gateway, Options, e2b_event};

#[tokio::test(flavor = "multi_thread")]
async fn runaway_plugin_calls_fail_alone_and_the_gateway_keeps_serving() {
    let gw = Gateway::start(Options {
        plugins: vec!["e2b", "chaos"],
        extra_config: "plugin_memory_mib = 32".into(),
        ..Options::default()
    });
    let cases = [("loop", "CPU deadline"), ("alloc", "ran out of memory"), ("trap", "trapped")];
    for round in 0..2 {
        for (command, expected) in cases {
            let (status, answer) = gw.ingest("chaos", command.as_bytes(), &[]).await;
            assert_eq!(status, 500, "{command}: {answer}");
            let error = answer.json::<ErrorBody>().error;
            assert_eq!(error.code, "plugin_failed");
            let message = error.message;
            assert!(message.contains("chaos"), "{command}: the message names the plugin: {message}");
            assert!(message.contains(expected), "{command}: {message:?} should say {expected:?}");

            // The very next call on the same plugin succeeds (a fresh
            // instance replaces the dead one)…
            let id = format!("ok:{round}-{command}");
            let (status, receipt) = gw.ingest("chaos", id.as_bytes(), &[]).await;
            assert_eq!(status, 200, "after {command}: {receipt}");
            assert_eq!(receipt.json::<Receipt>().records, 1);
        }
    }
    // …and other plugins never noticed.
    let body =
        e2b_event("after-chaos", "killed", "2025-08-10T12:00:00Z", "sbx", "org-z", Some((4, 1024, 2500)));
    let (status, receipt) = gw.e2b(&body).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(gw.total("org-z", "sandbox_cpu_core_seconds").await, "10");
    assert_eq!(
        gw.count_rows("deliveries").await,
        7,
        "six good chaos calls and one e2b call, nothing from failures"
    );
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);
}
