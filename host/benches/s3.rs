//! The s3-storage plugin's cost: CPU per ListObjectsV2 page, and objects
//! listed per second from a real moto_server.
//!
//! 1. `page`: one `poll` call that reads one 1,000-key page from a local
//!    server (always truncated, so every call reads exactly one page),
//!    through meterd's runtime; the same GET sent straight from the host is
//!    the network floor, and the difference is the plugin's own work per
//!    page (signing, parsing 1,000 entries, writing the cursor). The same
//!    work natively (sign + parse) is shown for scale.
//! 2. `moto`: complete scans of a bucket of `METERD_BENCH_S3_OBJECTS`
//!    objects (default 10,000) in moto_server, through the runtime as the
//!    poller drives it (cursor in, `more` → call again), in objects per
//!    second; and the same pages fetched straight from the host.
//!
//! Run: `cargo bench -p meterd --bench s3 [-- page|moto]`. Knob:
//! `METERD_BENCH_SAMPLES` (page calls, default 300). The moto case needs
//! `tests/s3/install.sh` (the test command runs it).

mod support;

#[path = "../../tests/e2e/support/s3.rs"]
mod s3;

use std::sync::Arc;
use std::time::Instant;

use meterd::plugin::PluginSettings;
use meterd::runtime::LoadedPlugin;
use support::{format_ns, percentile};

const KEYS_PER_PAGE: usize = 1_000;

/// A 1,000-key ListObjectsV2 page in AWS's layout, always truncated.
fn synthetic_page() -> String {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n  <Name>bench</Name>\n  <Prefix>tenants/acme/</Prefix>\n  <KeyCount>1000</KeyCount>\n  <MaxKeys>1000</MaxKeys>\n  <EncodingType>url</EncodingType>\n  <IsTruncated>true</IsTruncated>\n  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>\n",
    );
    for i in 0..KEYS_PER_PAGE {
        body.push_str(&format!(
            "  <Contents>\n    <Key>tenants/acme/2026/11/23/part-{i:06}.parquet</Key>\n    <LastModified>2026-11-23T06:00:00.000Z</LastModified>\n    <ETag>&quot;70ee1738b6b21e2c8a43f3a5ab0eee71&quot;</ETag>\n    <Size>{}</Size>\n    <StorageClass>STANDARD</StorageClass>\n  </Contents>\n",
            1_000 + i * 7
        ));
    }
    body.push_str("</ListBucketResult>\n");
    body
}

async fn start_page_server(body: String) -> String {
    let body = Arc::new(body);
    let app = axum::Router::new().route(
        "/{bucket}",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/xml")], body.as_str().to_owned()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn settings(endpoint: &str, bucket: &str, max_keys: u32, pages_per_poll: u32) -> PluginSettings {
    PluginSettings::from([
        ("endpoint".to_owned(), endpoint.to_owned()),
        ("access_key_id".to_owned(), "bench-key".to_owned()),
        ("secret_access_key".to_owned(), "bench-secret".to_owned()),
        ("targets".to_owned(), format!(r#"[{{"org":"acme","bucket":"{bucket}"}}]"#)),
        ("max_keys".to_owned(), max_keys.to_string()),
        ("pages_per_poll".to_owned(), pages_per_poll.to_string()),
        ("http_allow".to_owned(), "[\"http://127.0.0.1:*\"]".to_owned()),
    ])
}

async fn load(settings: PluginSettings) -> Arc<LoadedPlugin> {
    support::load_plugin("s3-storage", settings).await
}

fn report(name: &str, mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let median = percentile(&samples, 0.5);
    println!(
        "{name:<58} median {:>10}  p99 {:>10}  ({} samples)",
        format_ns(median),
        format_ns(percentile(&samples, 0.99)),
        samples.len()
    );
    median
}

async fn page_cost(samples: usize) {
    let body = synthetic_page();
    println!("page: {KEYS_PER_PAGE} keys, {} KiB of XML", body.len() / 1024);
    let url = start_page_server(body.clone()).await;
    let plugin = load(settings(&url, "bench", 1000, 1)).await;
    let mut poll_ns = Vec::new();
    for i in 0..samples + 20 {
        let p = plugin.clone();
        let started = Instant::now();
        let outcome =
            tokio::task::spawn_blocking(move || p.poll("bench/", None)).await.expect("task").expect("poll");
        let elapsed = started.elapsed();
        assert!(outcome.more && outcome.records.is_empty(), "one page per call, scan unfinished");
        if i >= 20 {
            poll_ns.push(elapsed.as_nanos() as f64);
        }
    }
    let client = reqwest::Client::new();
    let mut floor_ns = Vec::new();
    for i in 0..samples + 20 {
        let started = Instant::now();
        let response = client.get(format!("{url}/bench?list-type=2")).send().await.expect("GET");
        response.bytes().await.expect("body");
        if i >= 20 {
            floor_ns.push(started.elapsed().as_nanos() as f64);
        }
    }
    let config = settings(&url, "bench", 1000, 1);
    let native_settings =
        meterd_plugin_s3_storage::Settings::from_config(|k| config.get(k).cloned()).expect("settings");
    let request = meterd_plugin_s3_storage::ListRequest {
        bucket: "bench",
        prefix: "tenants/acme/",
        delimiter: None,
        continuation_token: Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="),
    };
    let mut native_ns = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        let signed = meterd_plugin_s3_storage::list_request(&native_settings, &request, 1_767_225_600_000);
        let page = meterd_plugin_s3_storage::listing::parse_page(body.as_bytes()).expect("page");
        std::hint::black_box((signed, page));
        native_ns.push(started.elapsed().as_nanos() as f64);
    }
    let poll = report("poll: 1 page through the runtime (wasm + http-send)", poll_ns);
    let floor = report("same GET straight from the host (network floor)", floor_ns);
    report("native sign + parse of the page (for scale)", native_ns);
    println!("plugin's own work per page ≈ {} (poll − floor)", format_ns((poll - floor).max(0.0)));
}

async fn moto_rate() {
    let objects: usize = support::env_number("METERD_BENCH_S3_OBJECTS", 10_000);
    let server = tokio::task::spawn_blocking(s3::S3Server::moto).await.expect("moto");
    let n = objects.to_string();
    let server = tokio::task::spawn_blocking(move || {
        server.ctl(&["create-bucket", "bench"]);
        server.ctl(&["put", "bench", "--prefix", "tenants/acme/", "--count", &n, "--size", "512"]);
        server
    })
    .await
    .expect("seeding moto");
    let plugin = load(settings(&server.endpoint, "bench", 1000, 10)).await;
    let mut scan_ns = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut cursor: Option<String> = None;
        let mut calls = 0;
        loop {
            let (p, c) = (plugin.clone(), cursor.clone());
            let outcome = tokio::task::spawn_blocking(move || p.poll("bench/", c.as_deref()))
                .await
                .expect("task")
                .expect("poll");
            calls += 1;
            cursor = outcome.next_cursor;
            if !outcome.more {
                assert_eq!(outcome.records.len(), 2);
                break;
            }
        }
        let elapsed = started.elapsed();
        println!("  scan of {objects} objects: {calls} calls, {:.0} ms", elapsed.as_secs_f64() * 1e3);
        scan_ns.push(elapsed.as_nanos() as f64);
    }
    let client = reqwest::Client::new();
    let mut raw_ns = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/bench?list-type=2&max-keys=1000", server.endpoint);
            if let Some(t) = &token {
                url.push_str(&format!(
                    "&continuation-token={}",
                    meterd_plugin_s3_storage::sigv4::uri_encode(t, false)
                ));
            }
            let body = client.get(url).send().await.expect("GET").bytes().await.expect("body");
            token =
                meterd_plugin_s3_storage::listing::parse_page(&body).expect("page").next_continuation_token;
            if token.is_none() {
                break;
            }
        }
        raw_ns.push(started.elapsed().as_nanos() as f64);
    }
    let scan = report("moto: complete scan through the runtime", scan_ns);
    let raw = report("moto: same pages fetched straight from the host", raw_ns);
    println!(
        "objects listed per second: {:.0} through the plugin, {:.0} raw",
        objects as f64 / (scan / 1e9),
        objects as f64 / (raw / 1e9)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(async {
        println!("{}", support::machine_line());
        let filters = support::filters();
        if support::selected(&filters, "page") {
            page_cost(support::env_number("METERD_BENCH_SAMPLES", 300)).await;
        }
        if support::selected(&filters, "moto") {
            moto_rate().await;
        }
    });
}
