//! E2B webhooks through the real gateway: exact totals, dedup, every kind
//! of bad input answered as the API says with nothing stored, and totals
//! that survive kill -9.

use crate::support;

use meterd::api::ErrorBody;
use meterd::api::ops::Receipt;
use meterd::api::usage::Usage;
use support::{Body, Gateway, Options, e2b_event, fixture, quantity};

#[tokio::test(flavor = "multi_thread")]
async fn the_fixture_delivery_gives_exact_meters_once() {
    let gw = Gateway::start(Options::default());
    let body = fixture("e2b/webhook-killed.constructed.body.json");
    let headers: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&fixture("e2b/webhook-killed.constructed.headers.json")).unwrap();
    // Exactly the headers E2B's docs describe, with the constructed signature.
    let send: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("e2b-"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, receipt) = gw.ingest("e2b", &body, &send).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        receipt.json::<Receipt>(),
        Receipt { event_id: "9b2f6a4e-0d1c-4c59-9a51-2f6f3f0f7c11".to_owned(), records: 3, duplicate: false }
    );
    // A redelivery is acknowledged and counts nothing.
    let (status, again) = gw.ingest("e2b", &body, &send).await;
    assert_eq!(status, 200);
    assert!(again.json::<Receipt>().duplicate, "{again}");

    assert_eq!(gw.total("acme", "sandbox_cpu_core_seconds").await, "144.246");
    assert_eq!(gw.total("acme", "sandbox_ram_gibi_seconds").await, "36.0615");
    assert_eq!(gw.count_rows("deliveries").await, 1);
    assert_eq!(gw.count_rows("usage_records").await, 3);

    let (status, body) = gw
        .get("/v1/orgs/acme/usage?meter=sandbox_cpu_core_seconds&from=2025-08-06T00:00:00Z&to=2025-08-07T00:00:00Z&window=hour&group_by=template_id")
        .await;
    assert_eq!(status, 200, "{body}");
    let usage: Usage = body.json();
    assert_eq!(usage.unit, "vCPU-seconds");
    assert_eq!(usage.from.0, "2025-08-06T00:00:00Z");
    let windows = &usage.windows;
    assert_eq!(windows.len(), 24);
    let hour_20 = &windows[20];
    assert_eq!(hour_20.start.0, "2025-08-06T20:00:00Z");
    assert_eq!(hour_20.value, quantity("144.246"));
    assert_eq!(hour_20.group, Some(Some("rki5dems9wqfm4r03t7g".to_owned())));
    assert_eq!(windows[19].value, quantity("0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_lifecycles_give_exact_totals_per_org_despite_redeliveries() {
    let gw = Gateway::start(Options::default());
    // Two orgs; org-a has two sandboxes that overlap, org-b one.
    // (vcpu, memory_mb, execution_time ms)
    let events = [
        e2b_event("a1", "created", "2025-08-10T10:00:00Z", "sbx-1", "org-a", None),
        e2b_event("a2", "created", "2025-08-10T10:30:00Z", "sbx-2", "org-a", None),
        e2b_event("a3", "paused", "2025-08-10T11:00:00Z", "sbx-1", "org-a", Some((2, 512, 3_600_000))),
        e2b_event("a4", "resumed", "2025-08-10T12:00:00Z", "sbx-1", "org-a", None),
        e2b_event("a5", "killed", "2025-08-10T12:00:01.5Z", "sbx-1", "org-a", Some((2, 512, 1_500))),
        e2b_event("a6", "killed", "2025-08-10T11:30:00Z", "sbx-2", "org-a", Some((8, 3_000, 3_600_001))),
        e2b_event("b1", "created", "2025-08-11T00:00:00Z", "sbx-3", "org-b", None),
        e2b_event("b2", "killed", "2025-08-11T00:00:07Z", "sbx-3", "org-b", Some((1, 1, 7))),
        e2b_event("u1", "updated", "2025-08-11T00:00:08Z", "sbx-3", "org-b", None),
    ];
    // Deliver in reverse order (late and out of order), then all again.
    for body in events.iter().rev() {
        let (status, receipt) = gw.e2b(body).await;
        assert_eq!(status, 200, "{receipt}");
        assert!(!receipt.json::<Receipt>().duplicate, "{receipt}");
    }
    for body in &events {
        let (status, receipt) = gw.e2b(body).await;
        assert_eq!(status, 200, "{receipt}");
        assert!(receipt.json::<Receipt>().duplicate, "{receipt}");
    }
    // org-a CPU: 2×3600 + 2×1.5 + 8×3600.001 = 7200 + 3 + 28800.008
    assert_eq!(gw.total("org-a", "sandbox_cpu_core_seconds").await, "36003.008");
    // org-a RAM: 0.5×3600 + 0.5×1.5 + (3000/1024)×3600.001 = 1800 + 0.75 + 10546.8779296875
    assert_eq!(gw.total("org-a", "sandbox_ram_gibi_seconds").await, "12347.6279296875");
    // org-b: 1 vCPU × 7 ms; 1 MiB × 7 ms = 7/1,024,000 GiB·s, exactly.
    assert_eq!(gw.total("org-b", "sandbox_cpu_core_seconds").await, "0.007");
    assert_eq!(gw.total("org-b", "sandbox_ram_gibi_seconds").await, "0.0000068359375");
    // Active time from the levels: sbx-1 10:00-11:00 and 12:00-12:00:01.5,
    // sbx-2 10:30-11:30 → 3600 + 1.5 + 3600 sandbox-seconds.
    assert_eq!(gw.total("org-a", "sandbox_active_seconds").await, "7201.5");
    assert_eq!(gw.total("org-a", "sandbox_active_max").await, "2");
    assert_eq!(gw.total("org-a", "sandbox_active").await, "0");
    // Another org sees nothing.
    assert_eq!(gw.total("org-c", "sandbox_cpu_core_seconds").await, "0");
    assert_eq!(gw.count_rows("deliveries").await, events.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_answered_clearly_and_store_nothing() {
    let gw = Gateway::start(Options { extra_config: "max_body_bytes = 4096".into(), ..Options::default() });
    let good = e2b_event("g1", "killed", "2025-08-10T12:00:00Z", "sbx", "org-x", Some((2, 512, 1000)));
    let signature = support::e2b_signature(support::E2B_SECRET, &good);
    let wrong = support::e2b_signature("not-the-secret", &good);

    // (what, body, headers, expected status, expected words in the message)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no signature", good.clone(), vec![], 401, "missing e2b-signature"),
        ("wrong secret", good.clone(), vec![("e2b-signature", wrong)], 401, "does not match"),
        (
            "tampered body",
            good.replace_bytes("org-x", "org-y"),
            vec![("e2b-signature", signature.clone())],
            401,
            "does not match",
        ),
        ("signature not base64", good.clone(), vec![("e2b-signature", "%%%".into())], 401, "not base64"),
        (
            "malformed JSON",
            b"{\"id\": ".to_vec(),
            vec![("e2b-signature", support::e2b_signature(support::E2B_SECRET, b"{\"id\": "))],
            400,
            "not an E2B v2 webhook event",
        ),
        (
            "oversize body",
            vec![b' '; 5000],
            vec![("e2b-signature", signature.clone())],
            413,
            "4096-byte limit",
        ),
    ];
    for (name, body, headers, status, message) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, answer) = gw.ingest("e2b", &body, &headers).await;
        assert_eq!(got, status, "{name}: {answer}");
        // An error answer: reading it as one checks it has a code, as text.
        let text = answer.json::<ErrorBody>().error.message;
        assert!(text.contains(message), "{name}: {text:?} should mention {message:?}");
    }
    let (status, answer) = gw.ingest("nope", &good, &[("e2b-signature", &signature)]).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.json::<ErrorBody>().error.message.contains("nope"), "{answer}");

    assert_eq!(gw.count_rows("deliveries").await, 0);
    assert_eq!(gw.count_rows("usage_records").await, 0);
    // …and the good delivery still goes through afterwards.
    let (status, receipt) = gw.e2b(&good).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt.json::<Receipt>().records, 3);
    assert_eq!(gw.total("org-x", "sandbox_cpu_core_seconds").await, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_deliveries_survive_kill_9() {
    let mut gw = Gateway::start(Options::default());
    let mut tasks = Vec::new();
    // 200 concurrent deliveries: group commit batches them.
    for i in 0..200 {
        let body = e2b_event(
            &format!("k{i}"),
            "killed",
            "2025-08-12T00:00:00Z",
            &format!("s{i}"),
            "org-k",
            Some((1, 1024, 1000)),
        );
        let client = gw.client.clone();
        let url = gw.url("/v1/ingest/e2b");
        let signature = support::e2b_signature(support::E2B_SECRET, &body);
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("e2b-signature", signature)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    gw.restart_after_kill9();
    assert_eq!(gw.total("org-k", "sandbox_cpu_core_seconds").await, "200");
    assert_eq!(gw.total("org-k", "sandbox_ram_gibi_seconds").await, "200");
    assert_eq!(gw.count_rows("deliveries").await, 200);
}

trait ReplaceBytes {
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8_lossy(self).replace(from, to).into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_payloads_are_emptied_after_their_retention_and_still_deduplicate() {
    let gw =
        Gateway::start(Options { extra_config: "payload_retention = \"2s\"".into(), ..Options::default() });
    let body = e2b_event(
        "kept-then-purged",
        "killed",
        "2025-08-10T10:00:00Z",
        "sbx",
        "org-p",
        Some((2, 512, 1_500)),
    );
    let (status, receipt) = gw.e2b(&body).await;
    assert_eq!(status, 200, "{receipt}");
    assert!(!receipt.json::<Receipt>().duplicate, "{receipt}");
    let url = format!("sqlite://{}?mode=ro", gw.db_path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("opening the test database");
    let stored = || async {
        sqlx::query_as::<_, (i64, String, Option<i64>)>(
            "SELECT length(body), headers, payload_purged_at_ms FROM deliveries WHERE event_id = 'kept-then-purged'",
        )
        .fetch_one(&pool)
        .await
        .expect("the delivery row")
    };
    let (length, _, purged) = stored().await;
    assert!(length as usize == body.len() && purged.is_none(), "kept while within the retention");
    // The request's path and query are kept with it (for replay).
    let with_query =
        e2b_event("with-query", "killed", "2025-08-10T10:00:00Z", "sbx", "org-p", Some((1, 512, 1_000)));
    let response = gw
        .client
        .post(gw.url("/v1/ingest/e2b?source=test&n=1"))
        .header("e2b-signature", support::e2b_signature(support::E2B_SECRET, &with_query))
        .body(with_query.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let (path, query): (String, Option<String>) =
        sqlx::query_as("SELECT path, query FROM deliveries WHERE event_id = 'with-query'")
            .fetch_one(&pool)
            .await
            .expect("the delivery row");
    assert_eq!((path.as_str(), query.as_deref()), ("/", Some("source=test&n=1")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (length, headers, purged) = loop {
        let row = stored().await;
        if row.2.is_some() {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "the payload was not emptied within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!((length, headers.as_str()), (0, "[]"), "body and headers emptied");
    assert!(purged.is_some());
    // The row, and so the dedup key, stays: a late redelivery counts nothing.
    let (status, receipt) = gw.e2b(&body).await;
    assert_eq!(status, 200, "{receipt}");
    assert!(receipt.json::<Receipt>().duplicate, "{receipt}");
    assert_eq!(gw.total("org-p", "sandbox_cpu_core_seconds").await, "4");
    pool.close().await;
}

/// Sends a request whose body is far over `max_body_bytes` over a raw
/// connection, as a provider's client does: the whole body first, then the
/// answer. Returns the answer, or what failed (a write cut off by the
/// server closing is what clients report as a broken pipe).
async fn oversized_exchange(addr: &str, body_len: usize, chunked: bool) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut read, mut write) = stream.into_split();
    let framing =
        if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {body_len}") };
    let head = format!(
        "POST /v1/ingest/e2b HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            if chunked {
                write.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                write.write_all(&chunk[..n]).await?;
                write.write_all(b"\r\n").await?;
            } else {
                write.write_all(&chunk[..n]).await?;
            }
            sent += n;
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        write.flush().await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let result = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), read.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                // Stop at the end of the (small, length-framed) JSON answer.
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break Ok(());
                }
            }
            Ok(Err(e)) => break Err(format!("read: {e} after {} bytes", answer.len())),
            Err(_) => break Err("no answer within 20 s".to_owned()),
        }
    };
    let written = writer.await.map_err(|e| format!("writer: {e}"))?;
    written.map_err(|e| format!("writing the body: {e}"))?;
    result.map(|()| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_gets_its_413_answer_not_a_reset() {
    let gw =
        Gateway::start(Options { extra_config: "max_body_bytes = 65536\n".to_owned(), ..Options::default() });
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    for (round, (len, chunked)) in [(4 << 20, false), (4 << 20, true), (300_000, false), (300_000, true)]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let answer = oversized_exchange(&addr, len, chunked).await;
        let answer = answer.unwrap_or_else(|e| panic!("round {round} ({len} bytes, chunked {chunked}): {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "round {round}: {answer}");
        assert!(answer.contains("65536-byte limit"), "round {round}: {answer}");
    }
    // Nothing was stored, and the gateway still serves.
    assert_eq!(gw.count_rows("deliveries").await, 0);
    let (status, _) = gw
        .e2b(&e2b_event("ok", "killed", "2025-08-10T12:00:00Z", "sbx", "org-z", Some((1, 512, 1000))))
        .await;
    assert_eq!(status, 200);
}

/// One E2B kill worth exactly 1 vCPU-second and 1 GiB-second.
fn unit_kill(i: usize) -> Vec<u8> {
    e2b_event(
        &format!("u{i}"),
        "killed",
        "2025-08-12T00:00:00Z",
        &format!("s{i}"),
        "org-u",
        Some((1, 1024, 1000)),
    )
}

/// POSTs a signed E2B webhook to `base`: its status and, for a 200, whether
/// the receipt says duplicate; `None` when no whole answer came (refused,
/// reset, timed out, cut off).
async fn post_e2b(client: &reqwest::Client, base: &str, body: &[u8]) -> Option<(u16, bool)> {
    let signature = support::e2b_signature(support::E2B_SECRET, body);
    let response = client
        .post(format!("{base}/v1/ingest/e2b"))
        .header("e2b-signature", signature)
        .timeout(std::time::Duration::from_secs(5))
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    let duplicate = status == 200 && serde_json::from_str::<Receipt>(&text).ok()?.duplicate;
    Some((status, duplicate))
}

/// Every webhook delivered three times at once: one delivery of each is
/// new, the others duplicates, and the totals count each event once.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_storm_counts_every_event_once() {
    const EVENTS: usize = 300;
    let gw = Gateway::start(Options::default());
    let mut tasks = Vec::new();
    for i in 0..EVENTS {
        for _ in 0..3 {
            let (client, base, body) = (gw.client.clone(), gw.base.clone(), unit_kill(i));
            tasks.push(tokio::spawn(async move { (i, post_e2b(&client, &base, &body).await) }));
        }
    }
    let mut new = vec![0; EVENTS];
    for task in tasks {
        let (i, answer) = task.await.expect("sender");
        match answer {
            Some((200, duplicate)) => new[i] += usize::from(!duplicate),
            other => panic!("event {i}: {other:?}"),
        }
    }
    assert!(new.iter().all(|n| *n == 1), "each event new exactly once: {new:?}");
    assert_eq!(gw.total("org-u", "sandbox_cpu_core_seconds").await, EVENTS.to_string());
    assert_eq!(gw.total("org-u", "sandbox_ram_gibi_seconds").await, EVENTS.to_string());
    assert_eq!(gw.count_rows("deliveries").await, EVENTS as i64);
}

/// kill -9 twenty times under signed webhook load. Senders redeliver every
/// webhook that got no 200 until one does (as providers retry). After each
/// restart every delivery acknowledged before the kill is stored; at the
/// end each event is counted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_under_load_keeps_every_acknowledged_delivery_once() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 250;
    let mut gw = Gateway::start(Options::default());
    let base = Arc::new(RwLock::new(gw.base.clone()));
    let acked = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (client, base, acked, done) = (gw.client.clone(), base.clone(), acked.clone(), done.clone());
            tokio::spawn(async move {
                let mut pending: std::collections::VecDeque<usize> =
                    (s * PER_SENDER..(s + 1) * PER_SENDER).collect();
                let mut redelivered = 0;
                while let Some(i) = pending.pop_front() {
                    let url = base.read().expect("base").clone();
                    match post_e2b(&client, &url, &unit_kill(i)).await {
                        Some((200, _)) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            redelivered += 1;
                            pending.push_back(i);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                    // Paced, so that the load lasts through the kills.
                    if !done.load(Ordering::Relaxed) {
                        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
                    }
                }
                redelivered
            })
        })
        .collect();
    for round in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let before_kill = acked.load(Ordering::SeqCst);
        tokio::task::block_in_place(|| gw.restart_after_kill9());
        *base.write().expect("base") = gw.base.clone();
        let stored = gw.count_rows("deliveries").await;
        assert!(
            stored >= before_kill as i64,
            "round {round}: {stored} stored, {before_kill} acknowledged before the kill"
        );
    }
    done.store(true, Ordering::Relaxed);
    let mut redelivered = 0;
    for sender in senders {
        redelivered += sender.await.expect("sender");
    }
    let events = SENDERS * PER_SENDER;
    assert_eq!(acked.load(Ordering::SeqCst), events);
    assert!(redelivered > 0, "some webhooks met a dead gateway and were redelivered");
    assert_eq!(gw.count_rows("deliveries").await, events as i64);
    assert_eq!(gw.total("org-u", "sandbox_cpu_core_seconds").await, events.to_string());
    assert_eq!(gw.total("org-u", "sandbox_ram_gibi_seconds").await, events.to_string());
}

/// A plugin that keeps hitting its CPU deadline is quarantined: after five
/// traps in a row its calls are refused at once (503, `Retry-After`), so it
/// no longer holds a core; after the cool-down one call runs as a probe,
/// and one that does not trap ends the quarantine. Other plugins serve on.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_keeps_trapping_is_quarantined_and_probed_back() {
    let gw = Gateway::start(Options { plugins: vec!["e2b", "chaos"], ..Options::default() });
    let chaos = |body: &'static str| {
        let (client, url) = (gw.client.clone(), gw.url("/v1/ingest/chaos"));
        async move {
            let started = std::time::Instant::now();
            let response = client.post(url).body(body).send().await.expect("POST chaos");
            let retry_after =
                response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
            let (status, answer) = Body::of(response).await;
            // Every answer is JSON: a receipt, or an error.
            if status == 200 {
                answer.json::<Receipt>();
            } else {
                answer.json::<ErrorBody>();
            }
            (status, retry_after, answer, started.elapsed())
        }
    };
    for i in 0..5 {
        let (status, _, answer, _) = chaos("loop").await;
        assert_eq!(status, 500, "trap {i}: {answer}");
    }
    let (status, retry_after, answer, took) = chaos("loop").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer.json::<ErrorBody>().error.code, "plugin_quarantined", "{answer}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took < std::time::Duration::from_millis(100), "refused without running: {took:?}");
    // Even a good call waits out the cool-down; e2b is not affected.
    assert_eq!(chaos("ok:during").await.0, 503);
    let body = e2b_event("q1", "killed", "2025-08-10T12:00:00Z", "sbx", "org-q", Some((1, 512, 1000)));
    assert_eq!(gw.e2b(&body).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, _, answer, _) = chaos("ok:probe").await;
    assert_eq!(status, 200, "the probe runs and closes the quarantine: {answer}");
    let (status, _, answer, _) = chaos("loop").await;
    assert_eq!(status, 500, "one trap after a success is not a quarantine: {answer}");
}
