//! Hot reload: the plugins directory and the config file are watched
//! (`notify`), bursts of events are debounced, and changes are applied
//! while serving.
//!
//! - A changed component goes through `PluginRegistry::sync` (compile,
//!   pre-instantiate, canary `info()`, WIT version and name checks, then an
//!   atomic swap; a refusal keeps the old version serving).
//! - A changed config is parsed and validated as a whole; if valid, every
//!   live part is replaced at once (meters, plans, notification rules and
//!   endpoints, plugin sections — which reload the plugins they configure —
//!   poll schedules, `admin_token`, `max_body_bytes`); settings that need a
//!   restart are reported as such. If invalid, the running config stays
//!   and the error is reported.
//!
//! Status (`GET /v1/plugins`) shows what was loaded when and the last error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::http::AppState;
use crate::metrics;
use crate::poller::Pollers;

/// Quiet time after the last file event before acting: editors and copies
/// come as bursts (write, chmod, rename).
pub const DEBOUNCE: Duration = Duration::from_millis(75);

/// How often the config file is checked for a change (its contents
/// compared, so an edit within one timestamp tick is seen too).
const CONFIG_POLL: Duration = Duration::from_millis(250);

/// How a config change went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    pub source: String,
    pub loaded_at_ms: i64,
    /// The last refused change, while the config running is older.
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    /// Keys changed in the file that only a restart applies.
    pub restart_required: Vec<String>,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// Applies config and plugin changes to a running gateway.
pub struct Reloader {
    state: Arc<AppState>,
    pollers: tokio::sync::Mutex<Pollers>,
    /// The config file re-read on change (`None`: built-in defaults only).
    config_path: Option<PathBuf>,
    /// The config serving now.
    config: Mutex<Config>,
    status: Mutex<ConfigStatus>,
    /// Whether files are being watched.
    pub watching: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys that cannot change while serving, with their values.
fn fixed_settings(config: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("listen", config.listen.to_string()),
        ("database", crate::store::redact_url(&config.database)),
        ("plugins_dir", format!("{:?}", config.plugins_dir)),
        ("cache_dir", config.cache_dir.display().to_string()),
        ("plugin_timeout_ms", config.plugin_timeout.as_millis().to_string()),
        ("plugin_memory_mib", (config.plugin_memory_bytes >> 20).to_string()),
        ("payload_retention", format!("{:?}", config.payload_retention)),
        ("rollup_group_by", config.rollup_group_by.join(",")),
    ]
}

impl Reloader {
    pub fn new(state: Arc<AppState>, pollers: Pollers, config: Config) -> Arc<Self> {
        let status = ConfigStatus {
            source: config.source.clone(),
            loaded_at_ms: crate::clock::now_ms(),
            ..ConfigStatus::default()
        };
        Arc::new(Self {
            state,
            pollers: tokio::sync::Mutex::new(pollers),
            config_path: config.path.clone(),
            config: Mutex::new(config),
            status: Mutex::new(status),
            watching: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn config_status(&self) -> ConfigStatus {
        lock(&self.status).clone()
    }

    /// Starts or restarts pollers to match the plugins serving now.
    pub async fn reconcile_pollers(&self) {
        self.pollers.lock().await.reconcile(&self.state.plugins);
    }

    /// Stops the pollers (shutdown).
    pub async fn stop_pollers(&self) {
        self.pollers.lock().await.stop().await;
    }

    /// Re-syncs the plugins directory with the running config.
    pub async fn reload_plugins(self: &Arc<Self>) {
        let config = lock(&self.config).clone();
        let this = self.clone();
        let synced = tokio::task::spawn_blocking(move || this.state.plugins.sync(&config)).await;
        match synced {
            Ok(Ok(report)) => {
                metrics::RELOADS.inc_by(["plugin", "ok"], report.loaded.len() as u64);
                metrics::RELOADS.inc_by(["plugin", "refused"], report.refused.len() as u64);
                if !report.loaded.is_empty() || !report.unloaded.is_empty() {
                    tracing::info!(loaded = ?report.loaded, unloaded = ?report.unloaded, "plugins reloaded");
                }
            }
            Ok(Err(e)) => {
                metrics::RELOADS.inc(["plugin", "refused"]);
                tracing::error!(error = %e, "reloading plugins failed");
            }
            Err(e) => {
                metrics::RELOADS.inc(["plugin", "refused"]);
                tracing::error!(error = %e, "the plugin reload task failed");
            }
        }
        self.reconcile_pollers().await;
    }

    /// Re-reads the config file; applies it if valid, else keeps the
    /// running one and records why.
    pub async fn reload_config(self: &Arc<Self>) -> Result<(), String> {
        let loaded = Config::load(self.config_path.as_deref(), std::env::vars());
        let new = match loaded {
            Ok(config) => config,
            Err(e) => {
                metrics::RELOADS.inc(["config", "refused"]);
                let message = e.to_string();
                tracing::error!(error = %message, "config change refused; the running config stays");
                let mut status = lock(&self.status);
                status.last_error = Some(message.clone());
                status.last_error_at_ms = Some(crate::clock::now_ms());
                status.reload_failures += 1;
                return Err(message);
            }
        };
        let (restart_required, changed) = {
            let mut running = lock(&self.config);
            let before = fixed_settings(&running);
            let after = fixed_settings(&new);
            let restart_required: Vec<String> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b.1 != a.1)
                .map(|(b, a)| format!("{} ({} → {}; needs a restart)", b.0, b.1, a.1))
                .collect();
            // Keep what cannot change live, so the status and later diffs
            // compare against what is really running.
            let mut applied = new.clone();
            applied.listen = running.listen;
            applied.database = running.database.clone();
            applied.plugins_dir = running.plugins_dir.clone();
            applied.cache_dir = running.cache_dir.clone();
            applied.plugin_timeout = running.plugin_timeout;
            applied.plugin_memory_bytes = running.plugin_memory_bytes;
            let changed = applied.plugins != running.plugins;
            *running = applied;
            (restart_required, changed)
        };
        self.state.apply_live_config(&new);
        {
            let mut status = lock(&self.status);
            status.loaded_at_ms = crate::clock::now_ms();
            status.source = new.source.clone();
            status.last_error = None;
            status.last_error_at_ms = None;
            status.restart_required = restart_required.clone();
            status.reloads += 1;
        }
        metrics::RELOADS.inc(["config", "ok"]);
        if restart_required.is_empty() {
            tracing::info!(source = %new.source, "config reloaded");
        } else {
            tracing::warn!(source = %new.source, needs_restart = ?restart_required, "config reloaded; some changes need a restart");
        }
        if changed {
            self.reload_plugins().await;
        } else {
            self.reconcile_pollers().await;
        }
        Ok(())
    }

    /// Watches the plugins directory and the config file until `stop`.
    /// Returns an error if the watcher cannot start.
    pub fn watch(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
        let plugins_dir = self.state.plugins.dir().map(Path::to_path_buf);
        // Classified on the watchers' own threads, so only (plugins
        // changed, config changed) reaches the channel. Reads (ours
        // included) are not changes.
        let (tx, mut rx) = mpsc::unbounded_channel::<(bool, bool)>();
        let forward = |changed: fn(&Path) -> bool, config: bool| {
            let tx = tx.clone();
            move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !(event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove()) {
                    return;
                }
                if event.paths.iter().any(|path| changed(path)) {
                    let _ = tx.send((!config, config));
                }
            }
        };
        // Each watcher with the path it watches, kept while watching.
        let mut watchers: Vec<(Box<dyn notify::Watcher + Send>, PathBuf)> = Vec::new();
        if let Some(dir) = &plugins_dir {
            // Only the plugins directory holds components we watch.
            let is_component: fn(&Path) -> bool = |path| path.extension().is_some_and(|e| e == "wasm");
            let watcher = notify::recommended_watcher(forward(is_component, false))
                .map_err(|e| format!("cannot start the file watcher: {e}"))?;
            watchers.push(watching(watcher, dir)?);
        }
        if let Some(file) = &self.config_path {
            // Polled, not watched through its directory: the database
            // usually sits beside the config, and a directory watch queues
            // an event on every write to its WAL (~10 % of the gateway's
            // CPU under webhook load, BENCHMARKS.md). A poll of the path
            // also sees an editor's rename over it.
            let config =
                notify::Config::default().with_poll_interval(CONFIG_POLL).with_compare_contents(true);
            let watcher = notify::PollWatcher::new(forward(|_| true, true), config)
                .map_err(|e| format!("cannot start the config poller: {e}"))?;
            watchers.push(watching(watcher, file)?);
        }
        self.watching.store(true, std::sync::atomic::Ordering::Relaxed);
        let paths: Vec<&PathBuf> = watchers.iter().map(|(_, path)| path).collect();
        tracing::info!(?paths, "watching for plugin and config changes");
        let this = self.clone();
        tokio::spawn(async move {
            // The watchers live as long as this task.
            let _watchers = watchers;
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = stop.changed() => None,
                };
                let Some((mut plugins, mut config)) = event else { break };
                // Debounce: gather until our files have been quiet a while.
                while let Ok(Some((p, c))) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    (plugins, config) = (plugins || p, config || c);
                }
                if config {
                    // A config reload re-syncs plugins whose sections changed;
                    // a changed file needs a sync of its own below.
                    let _ = this.reload_config().await;
                }
                if plugins {
                    this.reload_plugins().await;
                }
            }
            this.watching.store(false, std::sync::atomic::Ordering::Relaxed);
        });
        Ok(())
    }
}

/// `watcher` watching `path` (not its subdirectories), boxed with the path.
fn watching(
    mut watcher: impl notify::Watcher + Send + 'static,
    path: &Path,
) -> Result<(Box<dyn notify::Watcher + Send>, PathBuf), String> {
    watcher
        .watch(path, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
    Ok((Box::new(watcher), path.to_path_buf()))
}
