//! The set of loaded plugins, by name, and the way calls reach them: on a
//! blocking thread (a call is CPU-bound wasm with a deadline) or, for a
//! proven-fast compute-only plugin, inline (`inline_calls`), at most
//! `max_concurrent_calls` at a time per plugin, and calls of compute-only
//! plugins (no `http_allow`) at most [`compute_slots`] at a time in all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::inline_calls::{CallSpeed, INLINE_WAIT, inline_slots, thread_cpu_time};
use crate::metrics;
use crate::plugin::{AdapterInfo, InboundRequest, PluginSettings, PollOutcome, WebhookOutcome};
use crate::runtime::{CallError, LoadError, LoadedPlugin, Runtime};

/// One plugin as the gateway serves it.
pub struct PluginHandle {
    plugin: LoadedPlugin,
    pub file: PathBuf,
    pub loaded_at_ms: i64,
    calls: Semaphore,
    /// The registry's compute slots, for a compute-only plugin; `None` for
    /// one whose calls may wait on the network (they would hold a slot
    /// while idle).
    compute_slots: Option<Arc<Semaphore>>,
    /// The registry's inline slots, for a compute-only plugin that imports
    /// no WASI (`LoadedPlugin::runs_on_async_workers`).
    inline_slots: Option<Arc<Semaphore>>,
    /// How long its calls take: whether they may run inline.
    speed: CallSpeed,
    quarantine: crate::quarantine::Quarantine,
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

    /// The `meterd:provider` version the component was built against.
    pub fn wit_version(&self) -> &str {
        self.plugin.wit_version()
    }

    /// The plugin's config section, secrets included: never log or show it
    /// without [`crate::plugin::redacted`].
    pub fn settings(&self) -> &PluginSettings {
        self.plugin.settings()
    }

    pub async fn targets(self: &Arc<Self>) -> Result<Vec<String>, CallError> {
        let this = self.clone();
        self.run("targets", move || this.plugin.targets()).await
    }

    pub async fn poll(
        self: &Arc<Self>,
        target: &str,
        cursor: Option<String>,
    ) -> Result<PollOutcome, CallError> {
        let (this, target) = (self.clone(), target.to_owned());
        self.run("poll", move || this.plugin.poll(&target, cursor.as_deref())).await
    }

    pub async fn handle_webhook(
        self: &Arc<Self>,
        request: Arc<InboundRequest>,
    ) -> Result<WebhookOutcome, CallError> {
        self.handle_webhook_at(request, None).await
    }

    /// [`Self::handle_webhook`] as of `now_ms` (the plugin's `now-ms`), for
    /// replaying a stored payload.
    pub async fn handle_webhook_at(
        self: &Arc<Self>,
        request: Arc<InboundRequest>,
        now_ms: Option<i64>,
    ) -> Result<WebhookOutcome, CallError> {
        let this = self.clone();
        self.run("handle-webhook", move || this.plugin.handle_webhook_at(&request, now_ms)).await
    }

    /// Runs `call` (the WIT function `call_name`) once a permit (and,
    /// compute-only, a compute slot) is free, unless the plugin is
    /// quarantined: inline if `inline_calls` allows it, else on a blocking
    /// thread. Its time (not the wait for a permit) goes to the metrics and
    /// the plugin's call speed, any trap to the metrics and the quarantine.
    async fn run<R: Send + 'static>(
        &self,
        call_name: &'static str,
        call: impl FnOnce() -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        let name = self.info().name.clone();
        if let Err(retry_after_ms) = self.quarantine.admit(crate::clock::now_ms()) {
            return Err(CallError::Quarantined { plugin: name, retry_after_ms });
        }
        let shutting_down = |_| CallError::Instantiate {
            plugin: name.clone(),
            message: "the plugin is shutting down".to_owned(),
        };
        let _permit = self.calls.acquire().await.map_err(shutting_down)?;
        let _compute_slot = match &self.compute_slots {
            Some(slots) => Some(slots.acquire().await.map_err(shutting_down)?),
            None => None,
        };
        // Only plugins that take compute slots have inline slots.
        let inline = match &self.inline_slots {
            Some(slots) if self.speed.inline_ok(crate::clock::now_ms()) => {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => tokio::time::timeout(INLINE_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        // A call that held the slot meanwhile may have been slow.
                        .filter(|_| self.speed.inline_ok(crate::clock::now_ms())),
                }
            }
            _ => None,
        };
        let plugin = name.clone();
        // The caller's span (a webhook's request id) follows the call onto
        // the blocking thread, so the plugin's log lines and traps carry it.
        let span = tracing::Span::current();
        let timed = move || {
            let _in_span = span.enter();
            let (started, cpu_before) = (std::time::Instant::now(), thread_cpu_time());
            let result = call();
            metrics::PLUGIN_CALL_SECONDS.observe_duration([&plugin, call_name], started.elapsed());
            (result, thread_cpu_time().saturating_sub(cpu_before))
        };
        let thread = if inline.is_some() { "inline" } else { "blocking" };
        metrics::PLUGIN_CALL_THREADS.inc([&name, thread]);
        // A panic inline fails the call as one on a blocking thread would,
        // not the request's task.
        let ran = match inline {
            Some(_inline_slot) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(timed))
                .map_err(|_| "the call panicked".to_owned()),
            None => tokio::task::spawn_blocking(timed).await.map_err(|e| e.to_string()),
        };
        let result = match ran {
            Ok((result, cpu)) => {
                self.speed.record(cpu, crate::clock::now_ms());
                result
            }
            Err(e) => Err(CallError::Trap {
                plugin: name.clone(),
                message: format!("the host thread running the call failed: {e}"),
            }),
        };
        let kind = result.as_ref().err().and_then(CallError::trap_kind);
        if let Some(kind) = kind {
            metrics::PLUGIN_TRAPS.inc([&name, kind]);
        }
        // An instance the pool could not provide says nothing about the
        // plugin: it neither counts as a trap nor closes a quarantine.
        if kind != Some("instantiate")
            && let Some(cool_down_ms) = self.quarantine.record(kind.is_some(), crate::clock::now_ms())
        {
            tracing::warn!(plugin = %name, cool_down_ms, "plugin quarantined after repeated traps: its calls are refused until the cool-down ends");
        }
        result
    }
}

/// A plugin file that could not be loaded (or reloaded), and why. While a
/// refused file's older version keeps serving, this is its last reload error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
    pub at_ms: i64,
}

/// What one [`PluginRegistry::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Plugins loaded or replaced (by name).
    pub loaded: Vec<String>,
    /// Plugins whose file went away.
    pub unloaded: Vec<String>,
    /// Files refused this time.
    pub refused: Vec<PathBuf>,
    /// Files that changed while being read (still being written): left for
    /// the next event.
    pub unsettled: Vec<PathBuf>,
}

/// The plugins loaded from the plugins directory, by name, swappable while
/// serving: a caller takes an `Arc` of the current handle, so a call in
/// flight finishes on the version it started with, and a replaced or
/// removed version is dropped when its last call ends.
pub struct PluginRegistry {
    runtime: Option<Runtime>,
    dir: Option<PathBuf>,
    max_concurrent_calls: usize,
    compute_slots: Arc<Semaphore>,
    inline_slots: Arc<Semaphore>,
    state: RwLock<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    plugins: BTreeMap<String, Arc<PluginHandle>>,
    /// By file: the last refusal, cleared when the file loads.
    failures: BTreeMap<PathBuf, LoadFailure>,
    reloads: u64,
    reload_failures: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the plugins directory {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
}

impl PluginRegistry {
    pub fn empty() -> Self {
        Self {
            runtime: None,
            dir: None,
            max_concurrent_calls: 1,
            compute_slots: Arc::new(Semaphore::new(compute_slots())),
            inline_slots: Arc::new(Semaphore::new(inline_slots())),
            state: RwLock::default(),
        }
    }

    /// Loads every `*.wasm` in `dir`. A file that fails is reported in
    /// [`failures`](Self::failures) and skipped; the others still load.
    pub fn load_dir(
        runtime: Runtime,
        dir: &Path,
        config: &Config,
        max_concurrent_calls: usize,
    ) -> Result<Self, RegistryError> {
        let registry = Self {
            runtime: Some(runtime),
            dir: Some(dir.to_owned()),
            max_concurrent_calls,
            compute_slots: Arc::new(Semaphore::new(compute_slots())),
            inline_slots: Arc::new(Semaphore::new(inline_slots())),
            state: RwLock::default(),
        };
        registry.sync(config)?;
        let mut state = registry.write();
        // The first load is not a reload.
        (state.reloads, state.reload_failures) = (0, 0);
        drop(state);
        Ok(registry)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RegistryState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn get(&self, name: &str) -> Option<Arc<PluginHandle>> {
        self.read().plugins.get(name).cloned()
    }

    /// The plugins serving now, by name.
    pub fn plugins(&self) -> Vec<Arc<PluginHandle>> {
        self.read().plugins.values().cloned().collect()
    }

    pub fn failures(&self) -> Vec<LoadFailure> {
        self.read().failures.values().cloned().collect()
    }

    /// (reloads done, reloads refused) since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        let state = self.read();
        (state.reloads, state.reload_failures)
    }

    /// Brings the loaded plugins in line with the directory and `config`:
    /// a new or changed file (or a changed `[plugins.<name>]` section) is
    /// compiled, pre-instantiated and canaried (`info()`, WIT version,
    /// name) off to the side, then swapped in; a file that fails any step
    /// is refused with the reason and its older version keeps serving; a
    /// removed file's plugin is unloaded. Blocking (compiles): call it off
    /// the async threads.
    pub fn sync(&self, config: &Config) -> Result<SyncReport, RegistryError> {
        let (Some(runtime), Some(dir)) = (&self.runtime, &self.dir) else {
            return Ok(SyncReport::default());
        };
        let files = wasm_files(dir)?;
        let mut report = SyncReport::default();
        let mut seen_names = Vec::new();
        for file in &files {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            seen_names.push(stem.clone());
            let bytes = match read_settled(file) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    report.unsettled.push(file.clone());
                    continue;
                }
                // Gone between listing and reading: the next event says so.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.refuse(file, format!("cannot read: {e}"), &mut report);
                    continue;
                }
            };
            let settings = config.plugins.get(&stem).cloned().unwrap_or_default();
            let hash = crate::runtime::component_hash(&bytes);
            if let Some(current) = self.get(&stem)
                && current.hash() == hash
                && current.settings() == &settings
                && current.file == *file
            {
                self.write().failures.remove(file);
                continue;
            }
            let limits = CallLimits {
                per_plugin: self.max_concurrent_calls,
                compute_slots: &self.compute_slots,
                inline_slots: &self.inline_slots,
            };
            match load_bytes(runtime, file, &stem, &bytes, settings, limits) {
                Ok(handle) => {
                    tracing::info!(plugin = %stem, version = %handle.info().version, hash = %handle.hash(), wit = %handle.wit_version(), "plugin loaded");
                    let mut state = self.write();
                    state.plugins.insert(stem.clone(), Arc::new(handle));
                    state.failures.remove(file);
                    state.reloads += 1;
                    report.loaded.push(stem);
                }
                Err(error) => self.refuse(file, error, &mut report),
            }
        }
        let mut state = self.write();
        let gone: Vec<String> =
            state.plugins.keys().filter(|name| !seen_names.contains(name)).cloned().collect();
        for name in gone {
            // In-flight calls hold their own Arc; the plugin is dropped when
            // the last one returns.
            state.plugins.remove(&name);
            tracing::info!(plugin = %name, "plugin file removed: unloaded");
            report.unloaded.push(name);
        }
        state.failures.retain(|file, _| files.contains(file));
        Ok(report)
    }

    fn refuse(&self, file: &Path, error: String, report: &mut SyncReport) {
        tracing::error!(file = %file.display(), %error, "plugin refused");
        let mut state = self.write();
        state.failures.insert(
            file.to_owned(),
            LoadFailure { file: file.to_owned(), error, at_ms: crate::clock::now_ms() },
        );
        state.reload_failures += 1;
        report.refused.push(file.to_owned());
    }
}

/// The `*.wasm` files of `dir`, sorted.
fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| RegistryError::Dir { dir: dir.to_owned(), error })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The file's bytes, or `None` if its size or modification time changed
/// while it was read (a writer is still at it).
fn read_settled(file: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let stamp = |m: std::fs::Metadata| (m.len(), m.modified().ok());
    let before = stamp(std::fs::metadata(file)?);
    let bytes = std::fs::read(file)?;
    let after = stamp(std::fs::metadata(file)?);
    Ok((before == after && before.0 == bytes.len() as u64).then_some(bytes))
}

/// How many calls of compute-only plugins run at once, in all: twice the
/// cores. A call is pure CPU, so more threads than cores only queue at the
/// OS scheduler, where a burst of them (a commit answers a whole batch of
/// webhooks at once) crowds out the one database writer; one runaway call
/// (up to its deadline) still leaves the others slots.
pub fn compute_slots() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The call limits a loaded plugin gets.
struct CallLimits<'a> {
    per_plugin: usize,
    compute_slots: &'a Arc<Semaphore>,
    inline_slots: &'a Arc<Semaphore>,
}

fn load_bytes(
    runtime: &Runtime,
    file: &Path,
    stem: &str,
    bytes: &[u8],
    settings: PluginSettings,
    limits: CallLimits<'_>,
) -> Result<PluginHandle, String> {
    let plugin = runtime.load(bytes, settings).map_err(|e: LoadError| e.to_string())?;
    // The file name is the route: a mismatch would route webhooks to a
    // plugin configured under another name.
    if plugin.info().name != stem {
        return Err(format!(
            "the component calls itself {:?} but the file is named {stem:?}.wasm; rename one",
            plugin.info().name
        ));
    }
    let compute_slots = plugin.compute_only().then(|| limits.compute_slots.clone());
    let inline_slots = plugin.runs_on_async_workers().then(|| limits.inline_slots.clone());
    Ok(PluginHandle {
        plugin,
        file: file.to_owned(),
        loaded_at_ms: crate::clock::now_ms(),
        calls: Semaphore::new(limits.per_plugin),
        compute_slots,
        inline_slots,
        speed: CallSpeed::default(),
        quarantine: crate::quarantine::Quarantine::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeSettings;

    /// A registry serving the chaos test plugin under `config` (TOML).
    fn chaos_registry(config: &str) -> (tempfile::TempDir, PluginRegistry) {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        let chaos = meterd_plugin_build::test_component("chaos").expect("building the test plugins");
        std::fs::copy(chaos, plugins.join("chaos.wasm")).expect("copying chaos");
        let file = dir.path().join("meterd.toml");
        std::fs::write(&file, config).expect("config");
        let config = Config::load(Some(&file), Vec::new()).expect("config loads");
        let runtime = Runtime::new(RuntimeSettings::default()).expect("runtime");
        let registry = PluginRegistry::load_dir(runtime, &plugins, &config, 32).expect("registry");
        (dir, registry)
    }

    /// A webhook that makes the chaos plugin loop to its deadline.
    fn looping() -> Arc<InboundRequest> {
        Arc::new(InboundRequest {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: None,
            headers: Vec::new(),
            body: b"loop".to_vec(),
        })
    }

    /// Runs more looping calls (each to its deadline) than there are
    /// compute slots, all at once, and returns the fewest slots seen free
    /// while they ran.
    async fn fewest_free_slots(registry: &PluginRegistry) -> usize {
        let chaos = registry.get("chaos").expect("chaos is loaded");
        let request = looping();
        let calls: Vec<_> = (0..compute_slots() + 2)
            .map(|_| {
                let (chaos, request) = (chaos.clone(), request.clone());
                tokio::spawn(async move { chaos.handle_webhook(request).await })
            })
            .collect();
        let mut fewest = compute_slots();
        while !calls.iter().all(|call| call.is_finished()) {
            fewest = fewest.min(registry.compute_slots.available_permits());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        for call in calls {
            let outcome = call.await.expect("the call's task");
            assert!(matches!(outcome, Err(CallError::Timeout { .. })), "{outcome:?}");
        }
        fewest
    }

    /// A compute-only plugin's calls take the shared slots (all of them,
    /// while more calls than slots loop); a plugin that may send HTTP takes
    /// none, and every slot is free again afterwards.
    #[tokio::test(flavor = "multi_thread")]
    async fn compute_only_calls_share_the_slots_and_networked_ones_take_none() {
        let (_dir, compute_only) = chaos_registry("");
        assert_eq!(fewest_free_slots(&compute_only).await, 0);
        assert_eq!(compute_only.compute_slots.available_permits(), compute_slots());
        let (_dir, networked) = chaos_registry("[plugins.chaos]\nhttp_allow = [\"http://127.0.0.1:9\"]\n");
        assert_eq!(fewest_free_slots(&networked).await, compute_slots());
    }

    /// The thread a trivial call of `plugin` runs on.
    async fn thread_of_a_call(plugin: &Arc<PluginHandle>) -> std::thread::ThreadId {
        plugin.run("probe", || Ok(std::thread::current().id())).await.expect("the probe call")
    }

    /// The chaos plugin once a streak of fast calls, each on a blocking
    /// thread, has proven it fast: its next call runs on this thread.
    async fn proven_fast(registry: &PluginRegistry) -> Arc<PluginHandle> {
        let chaos = registry.get("chaos").expect("chaos is loaded");
        let here = std::thread::current().id();
        for _ in 0..crate::inline_calls::FAST_STREAK {
            assert_ne!(thread_of_a_call(&chaos).await, here, "not proven fast yet");
        }
        assert_eq!(thread_of_a_call(&chaos).await, here, "proven fast: inline");
        chaos
    }

    /// A compute-only plugin's calls run on a blocking thread until a
    /// streak of fast ones, then on the caller's thread; one slow call (a
    /// runaway to its deadline) sends them back to blocking threads.
    #[tokio::test(flavor = "current_thread")]
    async fn proven_fast_compute_only_calls_run_inline_until_one_is_slow() {
        let (_dir, registry) = chaos_registry("");
        let chaos = proven_fast(&registry).await;
        let here = std::thread::current().id();
        let outcome = chaos.handle_webhook(looping()).await;
        assert!(matches!(outcome, Err(CallError::Timeout { .. })), "{outcome:?}");
        for _ in 0..=crate::inline_calls::FAST_STREAK {
            assert_ne!(thread_of_a_call(&chaos).await, here, "slow once: off the workers for the cool-down");
        }
    }

    /// A proven-fast call that finds every inline slot taken (by calls on
    /// other workers) waits for one rather than going to a blocking thread;
    /// one that stays taken past [`INLINE_WAIT`] sends it there.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_waits_briefly_for_a_busy_inline_slot() {
        let (_dir, registry) = chaos_registry("");
        let chaos = proven_fast(&registry).await;
        let here = std::thread::current().id();
        let slots = chaos.inline_slots.clone().expect("a compute-only plugin has inline slots");
        let all = u32::try_from(inline_slots()).expect("a few slots");
        let taken = slots.clone().acquire_many_owned(all).await.expect("the slots");
        // Freed while the call waits (this runtime runs the task then).
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(taken);
        });
        assert_eq!(thread_of_a_call(&chaos).await, here, "waited for the slot, then ran inline");
        let taken = slots.acquire_many_owned(all).await.expect("the slots again");
        assert_ne!(thread_of_a_call(&chaos).await, here, "the slots stayed taken: a blocking thread");
        drop(taken);
        assert_eq!(thread_of_a_call(&chaos).await, here, "inline again");
    }

    /// A plugin that may send HTTP never runs inline: its calls could wait
    /// on the network while holding a worker.
    #[tokio::test(flavor = "current_thread")]
    async fn networked_calls_never_run_inline() {
        let (_dir, registry) = chaos_registry("[plugins.chaos]\nhttp_allow = [\"http://127.0.0.1:9\"]\n");
        let chaos = registry.get("chaos").expect("chaos is loaded");
        let here = std::thread::current().id();
        for _ in 0..=2 * crate::inline_calls::FAST_STREAK {
            assert_ne!(thread_of_a_call(&chaos).await, here);
        }
    }
}
