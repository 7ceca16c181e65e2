//! The generated bindings of the `meterd:provider` world, the host side of
//! its imports (`host` interface), and conversions to the host's own types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use wasmtime_wasi::{WasiCtxView, WasiView};

use super::wasi::{PinnedClock, Wasi};
use crate::meter::Kind;
use crate::outbound::HttpPolicy;
use crate::plugin::{
    AdapterError, AdapterInfo, InboundRequest, OutboundRequest, PluginSettings, PollOutcome, RawRecord,
    WebhookOutcome,
};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider",
});

use self::meterd::provider::types as wit;

/// The `meterd:provider` imports and the locked-down WASI p2 (`wasi`).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Provider::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}

/// Longest log line a plugin may write; the rest is cut.
pub(super) const MAX_LOG_LINE: usize = 4096;

/// `message` cut to [`MAX_LOG_LINE`] bytes (at a character boundary, with
/// `…` when cut).
pub(super) fn cut_log_line(mut message: String) -> String {
    if message.len() > MAX_LOG_LINE {
        let mut cut = MAX_LOG_LINE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// What a plugin's store holds: who it is, its config section, its HTTP
/// policy, its memory limiter, and the CPU-time account of the current call.
pub struct PluginState {
    plugin: Arc<str>,
    settings: Arc<PluginSettings>,
    http: Arc<HttpPolicy>,
    /// The async runtime `http-send` runs on; calls come from its blocking
    /// threads. `None` outside a runtime (then `http-send` refuses).
    handle: Option<tokio::runtime::Handle>,
    limits: MemoryLimiter,
    cpu: CpuAccount,
    /// What `now-ms` (and WASI's wall clock) answers in the current call:
    /// the real clock, or pinned by a replay to when the payload was first
    /// received.
    clock: PinnedClock,
    /// Made on the first WASI call: Rust plugins import no WASI and never
    /// pay for it.
    wasi: Option<Wasi>,
}

/// CPU time of one call: wall time since it started minus time spent
/// waiting in `http-send`, against the plugin's budget.
struct CpuAccount {
    budget: Duration,
    started: Instant,
    waiting: Duration,
}

impl CpuAccount {
    /// Budget left, or `None` when it is spent.
    fn left(&self) -> Option<Duration> {
        let used = self.started.elapsed().saturating_sub(self.waiting);
        self.budget.checked_sub(used).filter(|left| !left.is_zero())
    }
}

impl PluginState {
    pub fn new(
        plugin: &str,
        settings: Arc<PluginSettings>,
        http: Arc<HttpPolicy>,
        memory_limit_bytes: usize,
        cpu_budget: Duration,
    ) -> Self {
        let plugin: Arc<str> = if plugin.is_empty() { Arc::from("(loading)") } else { Arc::from(plugin) };
        Self {
            plugin,
            settings,
            http,
            handle: tokio::runtime::Handle::try_current().ok(),
            limits: MemoryLimiter {
                inner: StoreLimitsBuilder::new().memory_size(memory_limit_bytes).build(),
                hit: false,
            },
            cpu: CpuAccount { budget: cpu_budget, started: Instant::now(), waiting: Duration::ZERO },
            clock: PinnedClock::new(),
            wasi: None,
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// Arms the state for one call; `clock` pins `now-ms` (see the field).
    pub fn reset_for_call(&mut self, clock: Option<i64>) {
        self.clock.pin(clock);
        self.limits.hit = false;
        self.cpu.started = Instant::now();
        self.cpu.waiting = Duration::ZERO;
        if self.handle.is_none() {
            self.handle = tokio::runtime::Handle::try_current().ok();
        }
    }

    /// CPU budget left in this call (`None`: spent). The epoch callback asks
    /// this when the deadline tick comes, so network waits never count.
    pub fn cpu_left(&self) -> Option<Duration> {
        self.cpu.left()
    }

    /// Whether this call was refused memory: the trap that usually follows
    /// (Rust aborts on allocation failure) is then reported as out-of-memory.
    pub fn memory_limit_hit(&self) -> bool {
        self.limits.hit
    }
}

/// `StoreLimits` that also remembers that it said no.
struct MemoryLimiter {
    inner: StoreLimits,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

impl wit::Host for PluginState {}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(|| Wasi::new(&self.plugin, &self.clock));
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl self::meterd::provider::host::Host for PluginState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        let message = cut_log_line(message);
        let plugin = &*self.plugin;
        match level {
            wit::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            wit::LogLevel::Info => tracing::info!(plugin, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            wit::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }

    fn now_ms(&mut self) -> i64 {
        self.clock.now_ms()
    }

    fn http_send(&mut self, req: wit::OutboundRequest) -> Result<wit::OutboundResponse, String> {
        let handle = self
            .handle
            .clone()
            .ok_or_else(|| "http-send is not available here (no async runtime)".to_owned())?;
        let request =
            OutboundRequest { method: req.method, url: req.url, headers: req.headers, body: req.body };
        let policy = self.http.clone();
        let waited = Instant::now();
        let result = handle.block_on(crate::outbound::send(&policy, request));
        self.cpu.waiting += waited.elapsed();
        if let Err(error) = &result {
            tracing::debug!(plugin = &*self.plugin, %error, "http-send failed");
        }
        result.map(|r| wit::OutboundResponse { status: r.status, headers: r.headers, body: r.body })
    }
}

pub fn request_to_wit(request: &InboundRequest) -> wit::HttpRequest {
    wit::HttpRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
    }
}

pub fn info_from_wit(info: wit::AdapterInfo) -> AdapterInfo {
    AdapterInfo {
        name: info.name,
        version: info.version,
        push: info.capabilities.contains(wit::Capabilities::PUSH),
        pull: info.capabilities.contains(wit::Capabilities::PULL),
        description: info.description,
    }
}

pub fn webhook_outcome_from_wit(outcome: wit::WebhookOutcome) -> WebhookOutcome {
    WebhookOutcome {
        event_id: outcome.event_id,
        records: outcome.records.into_iter().map(record_from_wit).collect(),
    }
}

fn record_from_wit(r: wit::UsageRecord) -> RawRecord {
    RawRecord {
        event_id: r.event_id,
        org_id: r.org_id,
        subject: r.subject,
        metric: r.metric,
        kind: match r.kind {
            wit::UsageKind::Delta => Kind::Delta,
            wit::UsageKind::Level => Kind::Level,
        },
        quantity: r.quantity,
        at_ms: r.at,
        window_start_ms: r.window_start,
        attributes: r.attributes,
    }
}

pub fn poll_outcome_from_wit(outcome: wit::PollOutcome) -> PollOutcome {
    PollOutcome {
        records: outcome.records.into_iter().map(record_from_wit).collect(),
        next_cursor: outcome.next_cursor,
        more: outcome.more,
    }
}

pub fn error_from_wit(e: wit::AdapterError) -> AdapterError {
    match e {
        wit::AdapterError::Unauthorized(m) => AdapterError::Unauthorized(m),
        wit::AdapterError::Malformed(m) => AdapterError::Malformed(m),
        wit::AdapterError::Unsupported(m) => AdapterError::Unsupported(m),
        wit::AdapterError::Config(m) => AdapterError::Config(m),
        wit::AdapterError::Upstream(m) => AdapterError::Upstream(m),
        wit::AdapterError::Internal(m) => AdapterError::Internal(m),
    }
}
