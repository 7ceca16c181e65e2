//! Running the gateway: configuration errors, the admin token, readiness,
//! the plugins listing (HTTP and CLI), the compiled-component cache across
//! restarts, graceful shutdown.

use crate::support;

use meterd::api::ErrorBody;
use meterd::api::ops::Plugins;
use meterd::api::usage::Usage;
use support::{ADMIN_TOKEN, Body, Gateway, Options, component, meterd_command};

fn meterd(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    meterd_command().args(args).current_dir(dir).env("METERD_LOG", "error").output().expect("running meterd")
}

#[test]
fn config_errors_name_file_key_and_problem_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("listen = 8080\n", "key `listen`"),
        ("databse = \"sqlite://x.db\"\n", "databse"),
        ("listen = \"0.0.0.0:8080\"\n", "admin_token"),
        ("[meters.m]\nmetric = \"x\"\naggregation = \"avg\"\nunit = \"u\"\n", "meters.m.aggregation"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = meterd(&["serve", "--config", path.to_str().unwrap()], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains("config error in") && stderr.contains("bad.toml"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr} should mention {expected}");
    }
    let out = meterd(&["serve", "--config", "/nonexistent/meterd.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn a_log_filter_that_does_not_parse_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = meterd_command()
        .args(["migrate"])
        .current_dir(dir.path())
        .env("METERD_LOG", "meterd=loud")
        .output()
        .expect("running meterd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("meterd: METERD_LOG=\"meterd=loud\" is not a log filter"), "{stderr}");
    assert!(!dir.path().join("meterd.db").exists(), "nothing ran: {:?}", std::fs::read_dir(dir.path()));
}

#[test]
fn migrate_and_plugins_list_work_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(component("e2b"), plugins.join("e2b.wasm")).unwrap();
    std::fs::write(plugins.join("broken.wasm"), b"\0asm not really").unwrap();
    std::fs::write(
        dir.path().join("meterd.toml"),
        format!(
            "database = \"sqlite://{}/m.db\"\nplugins_dir = \"{}\"\ncache_dir = \"{}/cache\"\n",
            dir.path().display(),
            plugins.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = meterd(&["migrate"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("m.db").exists());

    let out = meterd(&["plugins", "list"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A refused file makes the listing fail, and says why, beside the good one.
    assert!(!out.status.success());
    let e2b_line =
        stdout.lines().find(|l| l.starts_with("e2b ")).unwrap_or_else(|| panic!("no e2b line in {stdout}"));
    assert!(e2b_line.contains("0.1.0") && e2b_line.contains("push"), "{e2b_line}");
    let hash = e2b_line.split_whitespace().last().unwrap();
    assert_eq!(hash.len(), 64, "a sha-256 in hex: {e2b_line}");
    assert!(stdout.contains("refused") && stdout.contains("broken.wasm"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_the_org_routes_but_not_ingest_or_health() {
    let gw = Gateway::start(Options { admin_token: Some(ADMIN_TOKEN), ..Options::default() });
    let usage = gw.url("/v1/orgs/acme/usage?meter=sandbox_cpu_core_seconds");
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some("Basic abc")] {
        let mut request = gw.client.get(&usage);
        if let Some(value) = auth {
            request = request.header("authorization", value);
        }
        let (status, body) = Body::of(request.send().await.expect("GET usage")).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body.json::<ErrorBody>().error.code, "unauthorized");
    }
    let (status, body) = gw.get("/v1/orgs/acme/usage?meter=sandbox_cpu_core_seconds").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.json::<Usage>().total.0, "0");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(gw.client.get(gw.url(path)).send().await.unwrap().status().as_u16(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_query_errors_are_400_with_a_reason() {
    let gw = Gateway::start(Options::default());
    let cases = [
        ("/v1/orgs/a/usage", "missing `meter`"),
        ("/v1/orgs/a/usage?meter=nope", "unknown meter"),
        ("/v1/orgs/a/usage?meter=sandbox_active&from=yesterday", "RFC 3339"),
        (
            "/v1/orgs/a/usage?meter=sandbox_active&from=2025-09-01T00:00:00Z&to=2025-08-01T00:00:00Z",
            "bad range",
        ),
        ("/v1/orgs/a/usage?meter=sandbox_active&window=week", "hour, day or month"),
        ("/v1/orgs/a/usage?meter=sandbox_active&group_by=bad%20key", "group_by"),
        (
            "/v1/orgs/a/usage?meter=sandbox_active&from=2000-01-01T00:00:00Z&to=2025-01-01T00:00:00Z&window=hour",
            "windows",
        ),
        ("/v1/orgs/a/usage?meter=sandbox_active&colour=red", "colour"),
    ];
    for (path, expected) in cases {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body.json::<ErrorBody>().error.message;
        assert!(message.contains(expected), "{path}: {message:?} should mention {expected:?}");
    }
    // The default range is the current calendar month.
    let (status, body) = gw.get("/v1/orgs/a/usage?meter=sandbox_cpu_core_seconds").await;
    assert_eq!(status, 200);
    let usage: Usage = body.json();
    assert!(usage.from.0.ends_with("-01T00:00:00Z"), "{body}");
    assert_eq!(usage.windows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_load_compiled_components_from_the_cache_and_shutdown_is_clean() {
    let mut gw = Gateway::start(Options::default());
    let (_, body) = gw.get("/v1/plugins").await;
    let first = body.json::<Plugins>().plugins.into_iter().next().expect("a plugin");
    assert_eq!(first.name, "e2b");
    assert!(!first.compiled_from_cache, "{body}");
    let cached: Vec<_> =
        std::fs::read_dir(gw.dir.path().join("cache")).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(cached.len(), 1, "one compiled artifact");

    let status = gw.stop();
    assert!(status.success(), "SIGTERM gives a clean exit: {status}");
    gw.restart_after_kill9();
    let (_, body) = gw.get("/v1/plugins").await;
    let second = body.json::<Plugins>().plugins.into_iter().next().expect("a plugin");
    assert!(second.compiled_from_cache, "{body}");
    assert_eq!(second.hash, first.hash);

    // A corrupt cache entry is recompiled, not trusted.
    gw.kill9();
    for entry in std::fs::read_dir(gw.dir.path().join("cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    gw.restart_after_kill9();
    let (_, body) = gw.get("/v1/plugins").await;
    assert!(!body.json::<Plugins>().plugins[0].compiled_from_cache, "{body}");
    let body =
        support::e2b_event("c1", "killed", "2025-08-10T12:00:00Z", "sbx", "org-c", Some((1, 1024, 1000)));
    assert_eq!(gw.e2b(&body).await.0, 200);
}
