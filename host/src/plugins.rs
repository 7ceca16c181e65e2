//! The set of loaded plugins, by name, and the way calls reach them: on a
//! blocking thread (a call is CPU-bound wasm with a deadline), at most
//! `max_concurrent_calls` at a time per plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::plugin::{AdapterInfo, InboundRequest, PluginSettings, PollOutcome, WebhookOutcome};
use crate::runtime::{CallError, LoadError, LoadedPlugin, Runtime};

/// One plugin as the gateway serves it.
pub struct PluginHandle {
    plugin: LoadedPlugin,
    pub file: PathBuf,
    pub loaded_at_ms: i64,
    calls: Semaphore,
}

impl PluginHandle {
    pub fn info(&self) -> &AdapterInfo {
        self.plugin.info()
    }

    pub fn hash(&self) -> &str {
        self.plugin.hash()
    }

    pub fn compiled_from_cache(&self) -> bool {
        self.plugin.compiled_from_cache()
    }

    /// The plugin's config section, secrets included: never log or show it
    /// without [`crate::plugin::redacted`].
    pub fn settings(&self) -> &PluginSettings {
        self.plugin.settings()
    }

    pub async fn targets(self: &Arc<Self>) -> Result<Vec<String>, CallError> {
        let this = self.clone();
        self.run(move || this.plugin.targets()).await
    }

    pub async fn poll(
        self: &Arc<Self>,
        target: &str,
        cursor: Option<String>,
    ) -> Result<PollOutcome, CallError> {
        let (this, target) = (self.clone(), target.to_owned());
        self.run(move || this.plugin.poll(&target, cursor.as_deref())).await
    }

    pub async fn handle_webhook(
        self: &Arc<Self>,
        request: Arc<InboundRequest>,
    ) -> Result<WebhookOutcome, CallError> {
        let this = self.clone();
        self.run(move || this.plugin.handle_webhook(&request)).await
    }

    async fn run<R: Send + 'static>(
        &self,
        call: impl FnOnce() -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        let name = self.info().name.clone();
        let _permit = self.calls.acquire().await.map_err(|_| CallError::Instantiate {
            plugin: name.clone(),
            message: "the plugin is shutting down".to_owned(),
        })?;
        tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
            Err(CallError::Trap {
                plugin: name,
                message: format!("the host thread running the call failed: {e}"),
            })
        })
    }
}

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
}

/// Every plugin found in the plugins directory.
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<PluginHandle>>,
    failures: Vec<LoadFailure>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the plugins directory {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
}

impl PluginRegistry {
    pub fn empty() -> Self {
        Self { plugins: BTreeMap::new(), failures: Vec::new() }
    }

    /// Loads every `*.wasm` in `dir`. A file that fails is reported in
    /// [`failures`](Self::failures) and skipped; the others still load.
    pub fn load_dir(
        runtime: &Runtime,
        dir: &Path,
        config: &Config,
        max_concurrent_calls: usize,
    ) -> Result<Self, RegistryError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|error| RegistryError::Dir { dir: dir.to_owned(), error })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "wasm") && p.is_file())
            .collect();
        files.sort();
        let mut registry = Self::empty();
        for file in files {
            match load_file(runtime, &file, config, max_concurrent_calls) {
                Ok(handle) => {
                    let name = handle.info().name.clone();
                    tracing::info!(plugin = %name, version = %handle.info().version, hash = %handle.hash(), "plugin loaded");
                    registry.plugins.insert(name, Arc::new(handle));
                }
                Err(error) => {
                    tracing::error!(file = %file.display(), %error, "plugin refused");
                    registry.failures.push(LoadFailure { file, error });
                }
            }
        }
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Option<Arc<PluginHandle>> {
        self.plugins.get(name).cloned()
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<PluginHandle>> {
        self.plugins.values()
    }

    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }
}

fn load_file(
    runtime: &Runtime,
    file: &Path,
    config: &Config,
    max_concurrent_calls: usize,
) -> Result<PluginHandle, String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let settings = config.plugins.get(&stem).cloned().unwrap_or_default();
    let plugin = runtime.load(&bytes, settings).map_err(|e: LoadError| e.to_string())?;
    // The file name is the route: a mismatch would route webhooks to a
    // plugin configured under another name.
    if plugin.info().name != stem {
        return Err(format!(
            "the component calls itself {:?} but the file is named {stem:?}.wasm; rename one",
            plugin.info().name
        ));
    }
    Ok(PluginHandle {
        plugin,
        file: file.to_owned(),
        loaded_at_ms: crate::clock::now_ms(),
        calls: Semaphore::new(max_concurrent_calls),
    })
}
