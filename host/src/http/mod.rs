//! The HTTP interface (axum). Handlers are thin: they parse, call the
//! domain services (`ingest`, `usage`), and map errors to the API's one
//! error shape.

mod error;
mod keys;
mod openapi;
mod orgs;
mod replay;
#[cfg(test)]
mod tests;
mod ui;
mod usage;

use std::sync::{Arc, OnceLock, RwLock, Weak};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawPathParams, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use usage::rfc3339;

use crate::api::Time;
use crate::api::ops::{ConfigReload, Reload, ReloadError};
use crate::api::ops::{Failure, Health, HealthStatus, Plugin, Plugins, Poll, Ready, ReadyStatus, Receipt};
use crate::config::Config;
use crate::ingest::Ingest;
use crate::keys::{Denied, KeyRing, Principal};
use crate::notifications::Notifier;
use crate::orgs::Orgs;
use crate::plugin::InboundRequest;
use crate::registry::PluginRegistry;
use crate::reload::Reloader;
use crate::store::Store;
use crate::usage::UsageService;

/// What every handler may use.
pub struct AppState {
    pub ingest: Ingest,
    pub usage: UsageService,
    pub orgs: Arc<Orgs>,
    pub notifier: Arc<Notifier>,
    pub plugins: Arc<PluginRegistry>,
    /// Replay jobs started on this gateway.
    pub replays: Arc<crate::replay::Replays>,
    pub store: Arc<dyn Store>,
    /// HTTP settings a config reload may change.
    pub live: RwLock<LiveHttp>,
    /// Set once serving starts: reload status for `/v1/plugins`.
    pub reloader: OnceLock<Weak<Reloader>>,
    /// The API keys, as of the last refresh.
    pub keys: KeyRing,
}

/// The HTTP settings that change with the config, without a restart.
#[derive(Debug, Clone)]
pub struct LiveHttp {
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
}

impl LiveHttp {
    pub fn from_config(config: &Config) -> Self {
        Self { admin_token: config.admin_token.clone(), max_body_bytes: config.max_body_bytes }
    }
}

impl AppState {
    /// Re-reads the API keys after this process changed them.
    pub async fn refresh_keys(&self) -> Result<(), crate::store::StoreError> {
        self.keys.refresh(self.store.as_ref()).await
    }

    pub fn live(&self) -> LiveHttp {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies every part of a validated config that can change while
    /// serving (plugins are synced by the caller).
    pub fn apply_live_config(&self, config: &Config) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = LiveHttp::from_config(config);
        self.usage.set_meters(config.meters.clone());
        self.orgs.set_policy(crate::server::policy(config));
        self.notifier.set_settings(config.notifications.clone());
    }
}

/// The routes behind `authorize`: orgs, plugins, keys, replays.
fn guarded_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(orgs::list_orgs))
        .routes(routes!(orgs::put_org, orgs::get_org))
        .routes(routes!(usage::usage))
        .routes(routes!(orgs::entitlements))
        .routes(routes!(orgs::check))
        .routes(routes!(orgs::post_grant, orgs::get_grants))
        .routes(routes!(list_plugins))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(replay::start))
        .routes(routes!(replay::get))
}

/// Ingest (authenticated by provider signatures) and operations routes.
fn open_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi::openapi_json))
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(open_routes().merge(guarded_routes()).into_openapi())
}

pub fn router(state: Arc<AppState>) -> Router {
    let guarded = guarded_routes().route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let (routes, _) = open_routes().merge(guarded).split_for_parts();
    routes
        // The catch-all form of ingest; `openapi::finish` documents it.
        .route("/v1/ingest/{plugin}/{*path}", post(ingest_path))
        // The dashboard: static files, not part of the API or its document.
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(state)
        .layer(middleware::from_fn(request_id))
}

/// Whether a tenant key may call a guarded route: listing its orgs, reading
/// an org's plan, usage, entitlements and grants, and checks. Everything
/// else (assigning plans, granting credit, plugins, keys, replays) needs an
/// admin credential.
fn tenant_may_call(method: &axum::http::Method, route: &str) -> bool {
    use axum::http::Method;
    match route {
        "/v1/orgs" | "/v1/orgs/{org}" | "/v1/orgs/{org}/grants" => method == Method::GET,
        "/v1/orgs/{org}/usage" | "/v1/orgs/{org}/entitlements" | "/v1/orgs/{org}/check" => true,
        _ => false,
    }
}

/// Authenticates the bearer token (an API key or `admin_token`) and
/// authorizes the route. A tenant asking about an org outside its scope
/// gets 404, exactly as for an org that does not exist; a tenant on an
/// admin route of its own org, or on `/v1/plugins` or `/v1/keys`, gets 403.
async fn authorize(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = match state.keys.authenticate(bearer, state.live().admin_token.as_deref()) {
        Ok(principal) => principal,
        Err(Denied::Missing) => {
            return ApiError::unauthorized("this route needs Authorization: Bearer <API key or admin_token>")
                .into_response();
        }
        Err(Denied::Invalid) => {
            return ApiError::unauthorized("the bearer token is not an active API key nor the admin token")
                .into_response();
        }
    };
    if let Principal::Tenant(_) = &principal {
        let org = params.iter().find(|(name, _)| *name == "org").map(|(_, value)| value.to_owned());
        if let Some(org) = &org
            && !principal.may_read(org)
        {
            return ApiError::not_found(format!("no org {org:?}")).into_response();
        }
        if !tenant_may_call(request.method(), route.as_str()) {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an admin key")
                .into_response();
        }
    }
    // Handlers that answer per caller (`GET /v1/orgs`) read who it is.
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[utoipa::path(
    post,
    path = "/v1/ingest/{plugin}",
    tag = "ingest",
    summary = "A provider webhook: verified and normalized by the plugin, committed, then answered",
    params(("plugin" = String, Path, description = "The plugin (its file name in plugins_dir)")),
    request_body(content = String, description = "The provider's payload, as sent", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Committed (or a duplicate)", body = Receipt),
        (status = 400, description = "Malformed body (the message says what is wrong)", body = error::ErrorBody),
        (status = 401, description = "Missing or wrong provider signature", body = error::ErrorBody),
        (status = 404, description = "No such plugin, or one that only polls", body = error::ErrorBody),
        (status = 413, description = "Body over max_body_bytes", body = error::ErrorBody),
        (status = 500, description = "The plugin failed (trap, CPU deadline, memory, bad output)", body = error::ErrorBody),
        (status = 503, description = "The store could not commit, or the plugin is quarantined after repeated traps (`Retry-After`); retry", body = error::ErrorBody),
    )
)]
async fn ingest(
    state: State<Arc<AppState>>,
    Path(plugin): Path<String>,
    request: Request,
) -> Result<Json<Receipt>, ApiError> {
    ingest_inner(state, plugin, "/".to_owned(), request).await
}

async fn ingest_path(
    state: State<Arc<AppState>>,
    Path((plugin, path)): Path<(String, String)>,
    request: Request,
) -> Result<Json<Receipt>, ApiError> {
    ingest_inner(state, plugin, format!("/{path}"), request).await
}

async fn ingest_inner(
    State(state): State<Arc<AppState>>,
    plugin: String,
    path: String,
    request: Request,
) -> Result<Json<Receipt>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = match read_body(body, &parts.headers, state.live().max_body_bytes).await {
        Ok(body) => body,
        Err(e) => {
            // Refused before the plugin runs: counted here, under the plugin
            // only if it exists (a client's typo must not make a series).
            let known = state.plugins.plugins().iter().any(|p| p.info().name == plugin);
            let name = if known { plugin.as_str() } else { crate::metrics::UNKNOWN_PLUGIN };
            let outcome = if e.status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "bad_request" };
            crate::metrics::INGEST_REQUESTS.inc([name, outcome]);
            return Err(e);
        }
    };
    let inbound = InboundRequest {
        method: parts.method.as_str().to_owned(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect(),
        body,
    };
    Ok(Json(state.ingest.webhook(&plugin, inbound).await?.into()))
}

/// How much of an oversized body is read and thrown away before the 413 is
/// sent, and for how long at most: a client that writes its whole body
/// before reading (most HTTP clients) then gets the answer rather than a
/// broken pipe. A body declared larger than this is refused at once.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body up to `limit` bytes; more is a 413, whatever the
/// Content-Length claimed, sent once the rest of the body is drained.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is larger than the {limit}-byte limit"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limit as u64) {
        if len <= DRAIN_MAX_BYTES {
            drain(body).await;
        }
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > limit {
            drain(body).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// Reads and discards the rest of a body, up to [`DRAIN_MAX_BYTES`] and
/// [`DRAIN_MAX_TIME`] (then the connection closes).
async fn drain(mut body: Body) {
    use http_body_util::BodyExt as _;
    let discard = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, discard).await;
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "The process is up",
    responses((status = 200, description = "Up", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: HealthStatus::Ok })
}

/// `GET /metrics`, in the Prometheus text format. Unauthenticated like
/// `/healthz`, because scrapers seldom carry a token: it holds counts and
/// plugin names, never usage or org ids. Serve it on an internal network.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Counters and histograms in the Prometheus text format",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", body = String, content_type = "text/plain"))
)]
async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render()).into_response()
}

/// The header that carries a request's id both ways.
const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id — the caller's `x-request-id` if it is a sane
/// token, else a new one — logs inside a `request` span carrying it, the
/// method and the route template (not the path, which holds org ids), and
/// echoes it on the response, so a caller's report finds our log lines.
async fn request_id(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| sane_request_id(id))
        .map_or_else(new_request_id, str::to_owned);
    let path = request.extensions().get::<axum::extract::MatchedPath>().map_or("(no route)", |r| r.as_str());
    // At error level, so the span (and the id) is kept whatever level
    // METERD_LOG lets events through at.
    let span = tracing::error_span!("request", id = %id, method = %request.method(), path);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// At most 64 of `[A-Za-z0-9._-]`: safe to log and to echo as a header.
fn sane_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A new request id: 32 hex digits, a per-process random key's hash of a
/// counter, so ids do not repeat within a process or line up across replicas.
fn new_request_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: std::sync::LazyLock<RandomState> = std::sync::LazyLock::new(RandomState::new);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:016x}", KEY.hash_one((n, 0u8)), KEY.hash_one((n, 1u8)))
}

/// Ready when the store answers and the plugins directory has been loaded.
/// Also says how the org standings follow other replicas (`replication`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "The store answers and the plugins are loaded; replication status",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "The store does not answer", body = error::ErrorBody),
    )
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Ready {
            status: ReadyStatus::Ready,
            plugins: state.plugins.plugins().len(),
            replication: state.orgs.replication_status().into(),
        })
        .into_response(),
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("store: {e}")).into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    summary = "Loaded plugins, refused files, poll state and reload status (admin)",
    responses(
        (status = 200, description = "Plugins, refused files and reload status", body = Plugins),
        (status = 503, description = "The store does not answer", body = error::ErrorBody),
        error::AdminErrors,
    ),
    security(("bearer" = []))
)]
async fn list_plugins(State(state): State<Arc<AppState>>) -> Result<Json<Plugins>, ApiError> {
    let polls =
        state.store.poll_states().await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
        })?;
    let failures = state.plugins.failures();
    let plugins = state
        .plugins
        .plugins()
        .iter()
        .map(|p| {
            let info = p.info();
            Plugin {
                name: info.name.clone(),
                version: info.version.clone(),
                modes: info.modes().to_owned(),
                description: info.description.clone(),
                hash: p.hash().to_owned(),
                wit_version: p.wit_version().to_owned(),
                compiled_from_cache: p.compiled_from_cache(),
                file: p.file.display().to_string(),
                loaded_at: Time::at(p.loaded_at_ms),
                last_reload_error: failures
                    .iter()
                    .find(|f| f.file == p.file)
                    .map(|f| ReloadError { error: f.error.clone(), at: Time::at(f.at_ms) }),
                config: crate::plugin::redacted(p.settings()),
                polls: polls.iter().filter(|s| s.plugin == info.name).map(Poll::from).collect(),
            }
        })
        .collect();
    let (plugin_reloads, plugin_reload_failures) = state.plugins.reload_counts();
    let reload = state.reloader.get().and_then(Weak::upgrade).map(|r| Reload {
        watching: r.watching.load(std::sync::atomic::Ordering::Relaxed),
        host_wit: format!("{}@{}", crate::runtime::WIT_PACKAGE, crate::runtime::WIT_VERSION),
        accepts_wit: crate::runtime::accepted_wit_versions(),
        plugin_reloads,
        plugin_reload_failures,
        config: ConfigReload::from(&r.config_status()),
    });
    Ok(Json(Plugins { plugins, failures: failures.iter().map(Failure::from).collect(), reload }))
}
