//! The plugin runtime: the only module that touches wasmtime.
//!
//! It owns every wasmtime setting in one place ([`RuntimeSettings`] →
//! [`Runtime::new`]): the pooling allocator, epoch interruption for the
//! per-call CPU deadline, a memory cap per instance, and an on-disk cache of
//! compiled components. A [`LoadedPlugin`] is one component, pre-instantiated
//! once; each call takes a warm instance (or makes one from the
//! `InstancePre`), and puts it back only if the call did not trap, because a
//! trapped instance cannot be entered again.
//!
//! Calls are synchronous and CPU-bound: callers run them on a blocking
//! thread (see `crate::registry`).

mod bindings;
mod cache;
mod wasi;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

use crate::outbound::HttpPolicy;
use crate::plugin::{AdapterError, AdapterInfo, InboundRequest, PluginSettings, PollOutcome, WebhookOutcome};
use bindings::{PluginState, Provider, ProviderPre};

/// How often the epoch advances; the CPU deadline is measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Every knob the runtime has, with the defaults the gateway ships.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// CPU time one plugin call may take before it is cut off.
    pub call_timeout: Duration,
    /// Linear-memory cap of one plugin instance.
    pub memory_limit_bytes: usize,
    /// Instances kept warm per plugin between calls.
    pub warm_instances: usize,
    /// Pooling-allocator slots shared by all plugins (in-flight + warm).
    pub pooled_instances: u32,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(100),
            memory_limit_bytes: 64 << 20,
            warm_instances: 16,
            pooled_instances: 256,
            cache_dir: None,
        }
    }
}

/// The WIT package plugins are built against, and the version this host
/// implements. See ARCHITECTURE.md, "How the WIT package evolves".
pub const WIT_PACKAGE: &str = "meterd:provider";
pub const WIT_VERSION: &str = "0.1.0";

/// Whether a component built against `version` of [`WIT_PACKAGE`] can run
/// here: the same major version (for 0.x, the same minor: 0.x minors may
/// break), any patch; a newer minor than ours is refused, because it may
/// use functions we do not have.
pub fn wit_version_accepted(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    };
    match (parse(version), parse(WIT_VERSION)) {
        (Some((0, minor, _)), Some((0, ours, _))) => minor == ours,
        (Some((major, minor, _)), Some((our_major, our_minor, _))) => {
            major == our_major && minor <= our_minor
        }
        _ => false,
    }
}

/// Which versions [`wit_version_accepted`] takes, for messages.
pub fn accepted_wit_versions() -> String {
    match WIT_VERSION.split('.').collect::<Vec<_>>().as_slice() {
        ["0", minor, _] => format!("{WIT_PACKAGE}@0.{minor}.x"),
        [major, minor, _] => format!("{WIT_PACKAGE}@{major}.0.x to {major}.{minor}.x"),
        _ => format!("{WIT_PACKAGE}@{WIT_VERSION}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the wasm engine could not be configured: {0}")]
    Engine(String),
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("the component does not match the meterd:provider@0.1.0 world: {0}")]
    World(String),
    #[error(
        "the component was built against {found}; this host implements {WIT_PACKAGE}@{WIT_VERSION} and accepts {accepted}"
    )]
    WitVersion { found: String, accepted: String },
    #[error("the component's info() failed: {0}")]
    Canary(#[source] CallError),
    #[error("plugin configuration: {0}")]
    Config(String),
}

/// Why a plugin call produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error of its own.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("plugin {plugin} exceeded its {deadline_ms} ms CPU deadline and was stopped")]
    Timeout { plugin: String, deadline_ms: u128 },
    #[error("plugin {plugin} ran out of memory (limit {limit_bytes} bytes) and was stopped")]
    OutOfMemory { plugin: String, limit_bytes: usize },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
    /// Not called: it trapped too often in a row (`quarantine`).
    #[error("plugin {plugin} is quarantined after repeated traps; retry in {retry_after_ms} ms")]
    Quarantined { plugin: String, retry_after_ms: i64 },
}

impl CallError {
    /// How the sandbox stopped the call, for `meterd_plugin_traps_total`;
    /// `None` when the plugin answered, even with an error of its own.
    pub fn trap_kind(&self) -> Option<&'static str> {
        match self {
            CallError::Adapter(_) | CallError::Quarantined { .. } => None,
            CallError::Timeout { .. } => Some("deadline"),
            CallError::OutOfMemory { .. } => Some("memory"),
            CallError::Trap { .. } => Some("trap"),
            CallError::Instantiate { .. } => Some("instantiate"),
        }
    }
}

/// The wasmtime engine, its linker and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    settings: RuntimeSettings,
    /// Shared with every plugin loaded here: deadlines hold as long as any
    /// plugin can still be called, even after the `Runtime` is gone.
    ticker: Arc<EpochTicker>,
}

impl Runtime {
    pub fn new(settings: RuntimeSettings) -> Result<Self, LoadError> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = settings.pooled_instances;
        pool.total_component_instances(slots)
            // A wit-component component has a few core instances (the
            // module, and shims for its imports).
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .max_memory_size(settings.memory_limit_bytes);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Self { engine, linker, settings, ticker })
    }

    /// Compiles (or loads from the cache), links and pre-instantiates a
    /// component, then calls its `info()` as a canary.
    pub fn load(&self, bytes: &[u8], settings: PluginSettings) -> Result<LoadedPlugin, LoadError> {
        self.load_compiled(&self.compile(bytes)?, settings)
    }

    /// A component's machine code, from the cache when it holds it: what
    /// [`Runtime::load_compiled`] links and pre-instantiates, as often as
    /// there are settings to load it with (the conformance kit loads one
    /// component once per distinct case config).
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let hash = component_hash(bytes);
        let (component, from_cache) = match &self.settings.cache_dir {
            Some(dir) => cache::compile_cached(&self.engine, dir, &hash, bytes)?,
            None => (
                Component::from_binary(&self.engine, bytes)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?,
                false,
            ),
        };
        Ok(Compiled { component, hash, from_cache })
    }

    /// [`Runtime::load`] for a component this runtime compiled.
    pub fn load_compiled(
        &self,
        compiled: &Compiled,
        settings: PluginSettings,
    ) -> Result<LoadedPlugin, LoadError> {
        let http = Arc::new(HttpPolicy::from_settings(&settings).map_err(LoadError::Config)?);
        let Compiled { component, hash, from_cache } = compiled.clone();
        let wit_version = wit_version_of(&self.engine, &component)?;
        let imports_wasi =
            component.component_type().imports(&self.engine).any(|(name, _)| name.starts_with("wasi:"));
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(ProviderPre::new)
            .map_err(|e| LoadError::World(format!("{e:#}")))?;
        let mut plugin = LoadedPlugin {
            info: AdapterInfo {
                name: String::new(),
                version: String::new(),
                push: false,
                pull: false,
                description: String::new(),
            },
            hash,
            from_cache,
            wit_version,
            imports_wasi,
            pre,
            engine: self.engine.clone(),
            _ticker: self.ticker.clone(),
            settings: Arc::new(settings),
            http,
            warm: Mutex::new(Vec::new()),
            max_warm: self.settings.warm_instances,
            deadline_ticks: ticks_for(self.settings.call_timeout),
            call_timeout: self.settings.call_timeout,
            memory_limit_bytes: self.settings.memory_limit_bytes,
        };
        plugin.info = plugin
            .call(|p, store| {
                p.meterd_provider_adapter().call_info(store).map(bindings::info_from_wit).map(Ok)
            })
            .map_err(LoadError::Canary)?;
        // The canary's instance was made before the plugin's name was known
        // (its log lines would say "(loading)"): let real calls make their own.
        plugin.warm.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(plugin)
    }
}

/// A compiled component (cheap to clone: wasmtime shares its code).
#[derive(Clone)]
pub struct Compiled {
    component: Component,
    hash: String,
    from_cache: bool,
}

/// The hash a component is known by (SHA-256, hex): its cache key and the
/// identity reloads compare.
pub fn component_hash(bytes: &[u8]) -> String {
    cache::sha256_hex(bytes)
}

/// The `meterd:provider` version a component exports its adapter at,
/// checked against what this host accepts before it is linked, so an
/// incompatible plugin is refused by name rather than by a link error.
fn wit_version_of(engine: &Engine, component: &Component) -> Result<String, LoadError> {
    let prefix = format!("{WIT_PACKAGE}/adapter@");
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    let Some(version) = exports.iter().find_map(|name| name.strip_prefix(&prefix)) else {
        return Err(LoadError::World(format!(
            "it exports no `{WIT_PACKAGE}/adapter` interface (exports: {})",
            if exports.is_empty() { "none".to_owned() } else { exports.join(", ") }
        )));
    };
    if !wit_version_accepted(version) {
        return Err(LoadError::WitVersion {
            found: format!("{WIT_PACKAGE}@{version}"),
            accepted: accepted_wit_versions(),
        });
    }
    Ok(version.to_owned())
}

/// A warm instance: its store and the bindings into it.
struct Warm {
    store: Store<PluginState>,
    provider: Provider,
}

/// One compiled, pre-instantiated plugin.
pub struct LoadedPlugin {
    info: AdapterInfo,
    /// SHA-256 of the component bytes, hex.
    hash: String,
    /// Whether the compiled code came from the on-disk cache.
    from_cache: bool,
    /// The `meterd:provider` version the component was built against.
    wit_version: String,
    /// Whether it imports any WASI interface (other languages' runtimes).
    imports_wasi: bool,
    pre: ProviderPre<PluginState>,
    engine: Engine,
    _ticker: Arc<EpochTicker>,
    settings: Arc<PluginSettings>,
    http: Arc<HttpPolicy>,
    warm: Mutex<Vec<Warm>>,
    max_warm: usize,
    deadline_ticks: u64,
    call_timeout: Duration,
    memory_limit_bytes: usize,
}

impl LoadedPlugin {
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn compiled_from_cache(&self) -> bool {
        self.from_cache
    }

    pub fn wit_version(&self) -> &str {
        &self.wit_version
    }

    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// Whether every call is pure computation (no `http_allow`, so
    /// `http-send` refuses at once and nothing waits on the network).
    pub fn compute_only(&self) -> bool {
        self.http.allows_none()
    }

    /// Whether a call may run on an async runtime's worker thread: compute
    /// only, and no WASI imports — WASI p2's synchronous bindings block on
    /// the tokio runtime (`in_tokio`), which panics on a worker thread.
    pub fn runs_on_async_workers(&self) -> bool {
        self.compute_only() && !self.imports_wasi
    }

    /// Verifies and normalizes one webhook. Blocks for up to the CPU deadline.
    pub fn handle_webhook(&self, request: &InboundRequest) -> Result<WebhookOutcome, CallError> {
        self.handle_webhook_at(request, None)
    }

    /// [`Self::handle_webhook`] with the plugin's clock (`now-ms`) pinned to
    /// `now_ms` when given: a replayed payload is judged (signature age,
    /// tolerances) as of when it was first received.
    pub fn handle_webhook_at(
        &self,
        request: &InboundRequest,
        now_ms: Option<i64>,
    ) -> Result<WebhookOutcome, CallError> {
        let request = bindings::request_to_wit(request);
        self.call_at(now_ms, |p, store| {
            p.meterd_provider_adapter()
                .call_handle_webhook(store, &request)
                .map(|r| r.map(bindings::webhook_outcome_from_wit).map_err(bindings::error_from_wit))
        })
    }

    /// The poll targets the plugin's configuration names.
    pub fn targets(&self) -> Result<Vec<String>, CallError> {
        self.call(|p, store| {
            p.meterd_provider_adapter().call_targets(store).map(|r| r.map_err(bindings::error_from_wit))
        })
    }

    /// Polls one target from `cursor` on. Blocks for up to the CPU deadline
    /// plus the plugin's own HTTP waits.
    pub fn poll(&self, target: &str, cursor: Option<&str>) -> Result<PollOutcome, CallError> {
        self.call(|p, store| {
            p.meterd_provider_adapter()
                .call_poll(store, target, cursor)
                .map(|r| r.map(bindings::poll_outcome_from_wit).map_err(bindings::error_from_wit))
        })
    }

    /// Runs one call on a warm (or fresh) instance with the CPU deadline and
    /// memory cap armed; a trapped instance is dropped, a healthy one kept.
    fn call<R>(
        &self,
        f: impl FnOnce(&Provider, &mut Store<PluginState>) -> wasmtime::Result<Result<R, AdapterError>>,
    ) -> Result<R, CallError> {
        self.call_at(None, f)
    }

    /// [`Self::call`] with `now-ms` pinned to `clock` when given.
    fn call_at<R>(
        &self,
        clock: Option<i64>,
        f: impl FnOnce(&Provider, &mut Store<PluginState>) -> wasmtime::Result<Result<R, AdapterError>>,
    ) -> Result<R, CallError> {
        let mut warm = match self.take_warm() {
            Some(warm) => warm,
            None => self.instantiate()?,
        };
        warm.store.data_mut().reset_for_call(clock);
        warm.store.set_epoch_deadline(self.deadline_ticks);
        match f(&warm.provider, &mut warm.store) {
            Ok(answer) => {
                self.put_back(warm);
                answer.map_err(CallError::Adapter)
            }
            Err(trap) => Err(self.classify(trap, warm.store.data())),
        }
    }

    fn take_warm(&self) -> Option<Warm> {
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_back(&self, warm: Warm) {
        let mut idle = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_warm {
            idle.push(warm);
        }
    }

    fn instantiate(&self) -> Result<Warm, CallError> {
        let state = PluginState::new(
            &self.info.name,
            self.settings.clone(),
            self.http.clone(),
            self.memory_limit_bytes,
            self.call_timeout,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state.limiter());
        store.set_epoch_deadline(self.deadline_ticks);
        // At the deadline tick, charge only CPU time: time spent waiting in
        // `http-send` extends the deadline by what is left of the budget.
        store.epoch_deadline_callback(|ctx| {
            Ok(match ctx.data().cpu_left() {
                Some(left) => UpdateDeadline::Continue(ticks_for(left)),
                None => UpdateDeadline::Interrupt,
            })
        });
        let provider = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::Instantiate { plugin: self.display_name(), message: format!("{e:#}") })?;
        Ok(Warm { store, provider })
    }

    fn classify(&self, error: wasmtime::Error, state: &PluginState) -> CallError {
        let plugin = self.display_name();
        if state.memory_limit_hit() {
            return CallError::OutOfMemory { plugin, limit_bytes: self.memory_limit_bytes };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                CallError::Timeout { plugin, deadline_ms: self.call_timeout.as_millis() }
            }
            Some(trap) => {
                // The answer names the trap; the wasm backtrace is for the log.
                tracing::warn!(plugin = %plugin, error = %format!("{error:?}"), "plugin trapped");
                CallError::Trap { plugin, message: trap.to_string() }
            }
            None => CallError::Trap { plugin, message: format!("{error:#}") },
        }
    }

    /// The name for error messages: `info().name` once known.
    fn display_name(&self) -> String {
        if self.info.name.is_empty() { "(loading)".to_owned() } else { self.info.name.clone() }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread, so a
/// plugin call that runs past its deadline traps at the next tick.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("meterd-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "epoch ticker did not start: plugin deadlines are off"),
            );
        Self { stop }
    }
}

/// Ticks that cover `timeout` in full: the deadline is counted from the
/// current tick, which may be nearly over, hence one more.
fn ticks_for(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = timeout.as_nanos().div_ceil(tick).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_accepts_its_own_minor_and_any_patch_of_it() {
        assert_eq!(WIT_VERSION, "0.1.0", "update these cases with the version");
        for ok in ["0.1.0", "0.1.7", "0.1.0-rc1"] {
            assert!(wit_version_accepted(ok), "{ok}");
        }
        // 0.x minors may break; majors do; garbage is not a version.
        for refused in ["0.2.0", "0.0.9", "1.0.0", "1.1.0", "0.1", "x.y.z", ""] {
            assert!(!wit_version_accepted(refused), "{refused}");
        }
        assert_eq!(accepted_wit_versions(), "meterd:provider@0.1.x");
    }

    /// A POST of nothing to `/`.
    fn empty_post() -> InboundRequest {
        InboundRequest {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The Python WASI probe on a runtime of its own, compiled once for the
    /// tests that load it (`compile_cache_lease`).
    fn load_python_probe() -> LoadedPlugin {
        let file = meterd_plugin_build::languages::language_component("wasi-probe-py")
            .expect("building the other-language plugins");
        let bytes = std::fs::read(file).expect("reading the probe");
        let cache = meterd_plugin_build::languages::compile_cache_lease().expect("the shared compile cache");
        let runtime =
            Runtime::new(RuntimeSettings { cache_dir: Some(cache.dir.clone()), ..Default::default() })
                .expect("runtime");
        runtime.load(&bytes, PluginSettings::default()).expect("the probe loads")
    }

    /// Only a plugin without WASI imports may run on an async runtime's
    /// workers (`inline_calls`): WASI p2's synchronous bindings block on
    /// the tokio runtime, which panics on a worker thread — as a Python
    /// plugin's call there does (its `print`). The Rust E2B plugin imports
    /// no WASI and answers there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn only_plugins_without_wasi_imports_may_run_on_async_workers() {
        let runtime = Runtime::new(RuntimeSettings::default()).expect("runtime");
        let load = |file: std::path::PathBuf| {
            let bytes = std::fs::read(file).expect("reading the component");
            runtime.load(&bytes, PluginSettings::default()).expect("the component loads")
        };
        let on_this_worker = |plugin: &LoadedPlugin| {
            let request = empty_post();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plugin.handle_webhook(&request)))
        };
        let e2b = load(meterd_plugin_build::test_component("e2b").expect("building the test plugins"));
        assert!(e2b.compute_only() && e2b.runs_on_async_workers());
        assert!(on_this_worker(&e2b).is_ok(), "an unsigned webhook is refused, not a panic");
        let python = load_python_probe();
        assert!(python.compute_only(), "no http_allow");
        assert!(!python.runs_on_async_workers(), "it imports WASI");
        assert!(on_this_worker(&python).is_err(), "WASI blocked on the runtime from its worker");
    }

    /// A Python plugin (componentize-py, so it imports WASI p2) reaches no
    /// environment, file, socket or name, and its wall clock is the pinned
    /// `now-ms` of the call.
    #[test]
    fn a_python_plugin_sees_no_env_files_or_sockets_and_the_pinned_clock() {
        let plugin = load_python_probe();
        let request = empty_post();
        let pinned = 1_754_513_976_123;
        let outcome = plugin.handle_webhook_at(&request, Some(pinned)).expect("the probe answers");
        let seen: std::collections::BTreeMap<String, String> =
            outcome.records[0].attributes.iter().cloned().collect();
        assert_eq!(seen["env"], "0", "{seen:?}");
        for reach in ["read_file", "list_root", "write_file", "connect", "resolve"] {
            assert_ne!(seen[reach], "allowed", "{reach}: {seen:?}");
        }
        assert_eq!(seen["wall_ms"], pinned.to_string(), "WASI's wall clock is now-ms: {seen:?}");
        assert_eq!(seen["now_ms"], pinned.to_string());
        // Unpinned, both read the real clock.
        let outcome = plugin.handle_webhook(&request).expect("the probe answers");
        let seen: std::collections::BTreeMap<String, String> =
            outcome.records[0].attributes.iter().cloned().collect();
        let wall: i64 = seen["wall_ms"].parse().expect("a number");
        assert!((wall - crate::clock::now_ms()).abs() < 60_000, "{seen:?}");
    }
}
