//! Wiring: open the store, load the plugins, start the committer, serve
//! HTTP, and shut down gracefully (stop accepting, finish in-flight
//! requests, drain the commit queue).

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::ingest::Ingest;
use crate::notify::Notifier;
use crate::orgs::{Orgs, Policy};
use crate::plugins::PluginRegistry;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::{GroupCommitter, SqliteStore, Store};
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
    let store =
        SqliteStore::open(&config.database).await.with_context(|| format!("opening {}", config.database))?;
    store.migrate().await.context("migrating the database")?;
    Ok(Arc::new(store))
}

/// Loads the plugins directory, if one is configured.
pub fn load_plugins(config: &Config) -> anyhow::Result<PluginRegistry> {
    let Some(dir) = &config.plugins_dir else {
        tracing::warn!("no plugins_dir configured: no ingest routes are served");
        return Ok(PluginRegistry::empty());
    };
    let runtime = Runtime::new(runtime_settings(config)).context("starting the plugin runtime")?;
    PluginRegistry::load_dir(&runtime, dir, config, MAX_CONCURRENT_CALLS_PER_PLUGIN).map_err(Into::into)
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

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let plugins = Arc::new(tokio::task::block_in_place(|| load_plugins(&config))?);
    // Standings are built before the first commit, and kept current by the
    // hook from then on.
    let orgs = Orgs::load(store.clone(), policy(&config), crate::clock::now_ms())
        .await
        .context("building org standings from the store")?;
    store.set_commit_hook(orgs.clone());
    let notifier = Notifier::new(store.clone(), orgs.clone(), config.notifications.clone())
        .context("starting the notifier")?;
    let (committer, commit_task) = GroupCommitter::start(store.clone());
    let state = Arc::new(AppState {
        ingest: Ingest::new(plugins.clone(), committer),
        usage: UsageService::new(store.clone(), config.meters.clone()),
        orgs,
        plugins: plugins.clone(),
        store,
        admin_token: config.admin_token.clone(),
        max_body_bytes: config.max_body_bytes,
    });
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let names: Vec<String> =
        plugins.plugins().map(|p| format!("{} {}", p.info().name, p.info().version)).collect();
    // Tests and operators read this line to find the port.
    println!(
        "meterd listening on http://{addr} (database {}, plugins: {})",
        config.database,
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    );
    let (stop_polling, polling_stopped) = tokio::sync::watch::channel(false);
    let mut pollers =
        crate::poller::start(&plugins, state.store.clone(), poller_id(), polling_stopped.clone());
    let notifier_task = tokio::spawn(notifier.run(polling_stopped));
    axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown_signal()).await?;
    // In-flight requests are done; pollers finish the run they are in; the
    // last committer handle goes with the state, and the task drains what
    // is queued before it ends.
    let _ = stop_polling.send(true);
    while pollers.join_next().await.is_some() {}
    drop(state);
    let _ = notifier_task.await;
    commit_task.await.context("the committer task failed")?;
    tracing::info!("meterd stopped");
    Ok(())
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
