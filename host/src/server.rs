//! Wiring: open the store, load the plugins, start the committer, serve
//! HTTP, and shut down gracefully (stop accepting, finish in-flight
//! requests, drain the commit queue).

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{AppState, LiveHttp, router};
use crate::ingest::Ingest;
use crate::notifications::Notifier;
use crate::orgs::{Orgs, Policy};
use crate::poller::Pollers;
use crate::registry::PluginRegistry;
use crate::reload::Reloader;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::{GroupCommitter, PostgresStore, SqliteStore, Store};
use crate::usage::UsageService;

/// Concurrent calls one plugin may have in flight.
pub const MAX_CONCURRENT_CALLS_PER_PLUGIN: usize = 32;

pub fn runtime_settings(config: &Config) -> RuntimeSettings {
    RuntimeSettings {
        call_timeout: config.plugin_timeout,
        memory_limit_bytes: config.plugin_memory_bytes,
        cache_dir: Some(config.cache_dir.clone()),
        ..RuntimeSettings::default()
    }
}

/// Opens the configured database and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if config.database.starts_with("sqlite:") {
        Arc::new(
            SqliteStore::open(&config.database)
                .await
                .with_context(|| format!("opening {}", config.database))?
                .with_group_by(config.rollup_group_by.clone()),
        )
    } else {
        Arc::new(
            PostgresStore::open(&config.database)
                .await
                .context("opening the PostgreSQL database")?
                .with_group_by(config.rollup_group_by.clone()),
        )
    };
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

/// Loads the plugins directory, if one is configured.
pub fn load_plugins(config: &Config) -> anyhow::Result<PluginRegistry> {
    let Some(dir) = &config.plugins_dir else {
        tracing::warn!("no plugins_dir configured: no ingest routes are served");
        return Ok(PluginRegistry::empty());
    };
    let runtime = Runtime::new(runtime_settings(config)).context("starting the plugin runtime")?;
    PluginRegistry::load_dir(runtime, dir, config, MAX_CONCURRENT_CALLS_PER_PLUGIN).map_err(Into::into)
}

/// Whether `serve` watches files for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// When a plugins directory or a config file is configured.
    Default,
    On,
    Off,
}

/// What the orgs service needs from the config.
pub fn policy(config: &Config) -> Policy {
    Policy {
        book: config.plans.clone(),
        rules: config.rules.clone(),
        meters: config.meters.clone(),
        endpoints: config.notifications.endpoints.keys().cloned().collect(),
    }
}

/// Serves `config` until SIGINT or SIGTERM: binds its `listen` address,
/// [`start`]s, and says where it listens on stdout (tests and operators
/// read that line to find the port).
pub async fn serve(config: Config, watch: Watch) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let database = crate::store::redact_url(&config.database);
    let running = start(config, listener, watch, shutdown_signal()).await?;
    println!(
        "meterd listening on http://{} (database {database}, plugins: {})",
        running.addr,
        if running.plugins.is_empty() { "none".to_owned() } else { running.plugins.join(", ") }
    );
    running.stopped().await
}

/// A gateway serving on its listener.
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The plugins it serves, as `name version`.
    pub plugins: Vec<String>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the gateway has stopped: `shutdown` resolved, in-flight
    /// requests finished, background tasks stopped, the commit queue drained.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("the gateway task panicked")?
    }
}

/// Starts a gateway for `config` on `listener` (its `listen` is not used):
/// opens and migrates the store, loads the plugins, builds the standings,
/// and serves until `shutdown` resolves, then shuts down gracefully.
/// Returns once it is serving; an error before that (store, plugins, keys,
/// watcher) is returned here.
pub async fn start(
    config: Config,
    listener: TcpListener,
    watch: Watch,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let store = open_store(&config).await?;
    let plugins = Arc::new(tokio::task::block_in_place(|| load_plugins(&config))?);
    // Listening for other replicas' commits starts before the standings'
    // snapshot is read, so whatever commits in between is not missed.
    let feed = store.listen().await.context("listening for other replicas' commits")?;
    // Standings are built before the first commit, and kept current by the
    // hook (and the feed) from then on.
    let orgs = Orgs::load(store.clone(), policy(&config), crate::clock::now_ms())
        .await
        .context("building org standings from the store")?;
    store.set_commit_hook(orgs.clone());
    let notifier = Notifier::new(store.clone(), orgs.clone(), config.notifications.clone())
        .context("starting the notifier")?;
    let (committer, commit_task) = GroupCommitter::start(store.clone()).context("starting the committer")?;
    let state = Arc::new(AppState {
        ingest: Ingest::new(plugins.clone(), committer),
        usage: UsageService::new(store.clone(), config.meters.clone()),
        orgs,
        notifier: notifier.clone(),
        plugins: plugins.clone(),
        replays: Arc::new(crate::replay::Replays::new(store.clone(), plugins.clone())),
        store,
        live: std::sync::RwLock::new(LiveHttp::from_config(&config)),
        reloader: std::sync::OnceLock::new(),
        keys: crate::keys::KeyRing::default(),
    });
    state.refresh_keys().await.context("reading the API keys")?;
    let addr = listener.local_addr()?;
    let names: Vec<String> =
        plugins.plugins().iter().map(|p| format!("{} {}", p.info().name, p.info().version)).collect();
    let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
    let reloader =
        Reloader::new(state.clone(), Pollers::new(state.store.clone(), poller_id()), config.clone());
    let _ = state.reloader.set(Arc::downgrade(&reloader));
    reloader.reconcile_pollers().await;
    let watching = match watch {
        Watch::On => true,
        Watch::Off => false,
        Watch::Default => config.plugins_dir.is_some() || config.path.is_some(),
    };
    if watching {
        reloader.watch(background_stopped.clone()).map_err(anyhow::Error::msg)?;
    }
    let follow_task =
        feed.map(|feed| tokio::spawn(state.orgs.clone().follow(feed, background_stopped.clone())));
    let keys_task = tokio::spawn(refresh_keys(state.clone(), background_stopped.clone()));
    let purge_task = tokio::spawn(purge_payloads(
        state.store.clone(),
        config.payload_retention,
        background_stopped.clone(),
    ));
    let notifier_task = tokio::spawn(notifier.run(background_stopped));
    let task = tokio::spawn(async move {
        axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown).await?;
        // In-flight requests are done; pollers finish the run they are in;
        // the last committer handle goes with the state, and the task
        // drains what is queued before it ends.
        let _ = stop_background.send(true);
        reloader.stop_pollers().await;
        drop(reloader);
        drop(state);
        let _ = notifier_task.await;
        let _ = keys_task.await;
        let _ = purge_task.await;
        if let Some(task) = follow_task {
            let _ = task.await;
        }
        commit_task.await.context("the committer task failed")?;
        tracing::info!("meterd stopped");
        Ok(())
    });
    Ok(Running { addr, plugins: names, task })
}

/// Re-reads the API keys every `keys::REFRESH`: keys created or revoked by
/// another replica or the CLI take effect here within that.
async fn refresh_keys(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::keys::REFRESH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.refresh_keys().await {
            tracing::warn!(error = %e, "re-reading the API keys failed; keeping the last ones");
        }
    }
}

/// Empties raw payloads older than `retention` (their dedup keys stay): at
/// start, then every tenth of the retention, at least every second and at
/// most every hour. Replicas may all run it; the update is idempotent.
async fn purge_payloads(
    store: Arc<dyn crate::store::Store>,
    retention: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every =
        (retention / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = crate::clock::now_ms();
        match store.purge_payloads(now.saturating_sub(retention_ms), now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "emptied raw payloads past their retention"),
            Err(e) => tracing::warn!(error = %e, "emptying old raw payloads failed; will retry"),
        }
    }
}

/// This process's name as a lease holder: unique per process start.
fn poller_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!(
        "{}:{}:{}",
        if host.is_empty() { "meterd" } else { &host },
        std::process::id(),
        crate::clock::now_ms()
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway started in process on the test's own listener serves,
    /// stops when told (draining everything), and starts again on the same
    /// database.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_gateway_starts_on_its_listener_stops_when_told_and_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("meterd.toml");
        let database = format!("sqlite://{}", dir.path().join("meterd.db").display());
        std::fs::write(&file, format!("database = \"{database}\"\n")).expect("config");
        let config = Config::load(Some(&file), Vec::new()).expect("config loads");
        for round in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("listener");
            let addr = listener.local_addr().expect("address");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let running = start(config.clone(), listener, Watch::Off, async {
                let _ = stopped.await;
            })
            .await
            .expect("starts");
            assert_eq!(running.addr, addr, "round {round}");
            assert!(running.plugins.is_empty());
            let base = format!("http://{addr}");
            let health = reqwest::get(format!("{base}/healthz")).await.expect("healthz");
            assert_eq!(health.status(), 200, "round {round}");
            let ready = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
            assert_eq!(ready.status(), 200, "round {round}");
            // Loopback without keys is open (README "API keys").
            let entitlements =
                reqwest::get(format!("{base}/v1/orgs/acme/entitlements")).await.expect("entitlements");
            assert_eq!(entitlements.status(), 200, "round {round}");
            let body: crate::api::orgs::Entitlements = entitlements.json().await.expect("typed answer");
            assert_eq!((body.org.org.as_str(), body.org.assigned), ("acme", false));
            stop.send(()).expect("the gateway waits for the signal");
            running.stopped().await.expect("stops cleanly");
            assert!(reqwest::get(format!("{base}/healthz")).await.is_err(), "round {round}: still serving");
        }
    }
}
