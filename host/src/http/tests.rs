//! The router as `server` builds it, on a loopback listener with a temporary
//! SQLite store: the dashboard's files and headers, and `GET /v1/orgs`
//! scoped by key.

use std::sync::Arc;

use super::{AppState, LiveHttp, router};
use crate::config::Config;
use crate::keys::Scope;
use crate::orgs::Orgs;

const ADMIN: &str = "unit-admin-token-0123456789";

/// A gateway's router over a fresh SQLite file (no plugins), served on
/// loopback; the base URL, the state and the directory that holds the file.
async fn serve() -> (String, Arc<AppState>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("meterd.toml");
    let database = format!("sqlite://{}", dir.path().join("meterd.db").display());
    std::fs::write(&file, format!("database = \"{database}\"\nadmin_token = \"{ADMIN}\"\n")).expect("config");
    let config = Config::load(Some(&file), Vec::new()).expect("config loads");
    let store = crate::server::open_store(&config).await.expect("store");
    let plugins = Arc::new(crate::registry::PluginRegistry::empty());
    let orgs = Orgs::load(store.clone(), crate::server::policy(&config), crate::clock::now_ms())
        .await
        .expect("orgs");
    store.set_commit_hook(orgs.clone());
    let notifier =
        crate::notifications::Notifier::new(store.clone(), orgs.clone(), config.notifications.clone())
            .expect("notifier");
    let (committer, _commit_task) = crate::store::GroupCommitter::start(store.clone()).expect("committer");
    let state = Arc::new(AppState {
        ingest: crate::ingest::Ingest::new(plugins.clone(), committer),
        usage: crate::usage::UsageService::new(store.clone(), config.meters.clone()),
        orgs,
        notifier,
        plugins: plugins.clone(),
        replays: Arc::new(crate::replay::Replays::new(store.clone(), plugins)),
        store,
        live: std::sync::RwLock::new(LiveHttp::from_config(&config)),
        reloader: std::sync::OnceLock::new(),
        keys: crate::keys::KeyRing::default(),
    });
    state.refresh_keys().await.expect("keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let addr = listener.local_addr().expect("address");
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_with_its_types_csp_and_cache_validators() {
    let (base, _state, _dir) = serve().await;
    let client = reqwest::Client::new();
    for (path, content_type, contains) in [
        ("/ui", "text/html; charset=utf-8", "<script src=\"/ui/app.js\" defer></script>"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "Authorization"),
        ("/ui/app.css", "text/css; charset=utf-8", ".bar"),
        ("/ui/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8", "uPlot"),
        ("/ui/vendor/uPlot.min.css", "text/css; charset=utf-8", ".uplot"),
        ("/ui/vendor/uPlot.LICENSE", "text/plain; charset=utf-8", "MIT"),
    ] {
        let response = client.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert!(header("content-security-policy").starts_with("default-src 'self'"), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let etag = header("etag");
        assert!(etag.starts_with('"') && etag.len() == 34, "{path}: {etag}");
        let body = response.text().await.expect("body");
        assert!(body.contains(contains), "{path} lacks {contains:?}");
        // Revalidation: the same bytes answer 304 without a body.
        let again =
            client.get(format!("{base}{path}")).header("if-none-match", &etag).send().await.expect("GET");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers().get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
        assert!(again.text().await.expect("body").is_empty());
    }
    // The page holds no inline script or style (the CSP would block them).
    let page = client.get(format!("{base}/ui")).send().await.expect("GET").text().await.expect("body");
    assert!(!page.contains("<script>") && !page.contains("style=") && !page.contains("<style"), "{page}");
    let response = client.get(format!("{base}/ui/nothing.js")).send().await.expect("GET");
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("content-security-policy"));
    let slash = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{base}/ui/"))
        .send()
        .await
        .expect("GET");
    assert_eq!(slash.status(), 308);
    assert_eq!(slash.headers().get("location").and_then(|v| v.to_str().ok()), Some("/ui"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_org_list_is_every_known_org_for_an_admin_and_its_scope_for_a_tenant() {
    let (base, state, _dir) = serve().await;
    let now = crate::clock::now_ms();
    for org in ["org-a", "org-b", "org-c"] {
        state.orgs.assign(org, "pro", now).await.expect("assign");
    }
    let scope = Scope::Orgs(["org-a".to_owned(), "never-seen".to_owned()].into());
    let (tenant, _) = crate::keys::create(state.store.as_ref(), scope, None, now).await.expect("key");
    state.refresh_keys().await.expect("keys");
    let client = reqwest::Client::new();
    let list = |token: &str| {
        let request = client.get(format!("{base}/v1/orgs")).bearer_auth(token);
        async move {
            let response = request.send().await.expect("GET /v1/orgs");
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let ids = |body: &serde_json::Value| -> Vec<String> {
        body["orgs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["org"].as_str().map(str::to_owned))
            .collect()
    };

    let (status, admin) = list(ADMIN).await;
    assert_eq!(status, 200, "{admin}");
    assert_eq!(admin["scope"], "admin");
    assert_eq!(ids(&admin), ["org-a", "org-b", "org-c"]);
    let typed: crate::api::orgs::OrgList = serde_json::from_value(admin.clone()).expect("the typed answer");
    assert!(typed.orgs.iter().all(|o| o.plan == "pro" && o.assigned));

    // A tenant sees exactly its scope: an org it may read that the gateway
    // has never seen too (on the default plan), and nothing else.
    let (status, mine) = list(&tenant).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["scope"], "orgs");
    assert_eq!(ids(&mine), ["never-seen", "org-a"]);
    assert_eq!(mine["orgs"][0]["assigned"], false);
    assert_eq!(mine["orgs"][1]["plan"], "pro");

    for token in ["wrong", ""] {
        let (status, body) = list(token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    let none = client.get(format!("{base}/v1/orgs")).send().await.expect("GET");
    assert_eq!(none.status(), 401);
}
