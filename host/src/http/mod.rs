//! The HTTP interface (axum). Handlers are thin: they parse, call the
//! domain services (`ingest`, `usage`), and map errors to the API's one
//! error shape.

mod error;
mod orgs;
mod usage;

use std::sync::{Arc, OnceLock, RwLock, Weak};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub use error::ApiError;
pub use usage::rfc3339;

use crate::config::Config;
use crate::ingest::{Ingest, Receipt};
use crate::notify::Notifier;
use crate::orgs::Orgs;
use crate::plugin::InboundRequest;
use crate::plugins::PluginRegistry;
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
    pub store: Arc<dyn Store>,
    /// HTTP settings a config reload may change.
    pub live: RwLock<LiveHttp>,
    /// Set once serving starts: reload status for `/v1/plugins`.
    pub reloader: OnceLock<Weak<Reloader>>,
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

pub fn router(state: Arc<AppState>) -> Router {
    let orgs = Router::new()
        .route("/v1/orgs/{org}", put(orgs::put_org).get(orgs::get_org))
        .route("/v1/orgs/{org}/usage", get(usage::usage))
        .route("/v1/orgs/{org}/entitlements", get(orgs::entitlements))
        .route("/v1/orgs/{org}/check", post(orgs::check))
        .route("/v1/orgs/{org}/grants", post(orgs::post_grant).get(orgs::get_grants))
        .route("/v1/plugins", get(list_plugins))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/v1/ingest/{plugin}", post(ingest))
        .route("/v1/ingest/{plugin}/{*path}", post(ingest_path))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(orgs)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(state)
}

/// With `admin_token` set, the org and admin routes need it as a bearer token.
async fn require_admin(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.live().admin_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            return ApiError::unauthorized(
                "missing or wrong bearer token (Authorization: Bearer <admin_token>)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
    let body = read_body(body, &parts.headers, state.live().max_body_bytes).await?;
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
    Ok(Json(state.ingest.webhook(&plugin, inbound).await?))
}

/// Reads the body up to `limit` bytes; more is a 413, whatever the
/// Content-Length claimed.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is larger than the {limit}-byte limit"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) if is_length_limit(&e) => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the body: {e}"))),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the store answers and the plugins directory has been loaded.
/// Also says how the org standings follow other replicas (`replication`).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({
            "status": "ready",
            "plugins": state.plugins.plugins().len(),
            "replication": state.orgs.replication_status(),
        }))
        .into_response(),
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("store: {e}")).into_response()
        }
    }
}

async fn list_plugins(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let polls =
        state.store.poll_states().await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
        })?;
    let failures = state.plugins.failures();
    let plugins: Vec<_> = state
        .plugins
        .plugins()
        .iter()
        .map(|p| {
            let info = p.info();
            let polls: Vec<_> = polls
                .iter()
                .filter(|s| s.plugin == info.name)
                .map(|s| {
                    serde_json::json!({
                        "target": s.target,
                        "cursor": s.cursor,
                        "last_success": s.last_success_ms.map(usage::rfc3339),
                        "last_error": s.last_error,
                        "last_error_at": s.last_error_ms.map(usage::rfc3339),
                        "consecutive_failures": s.consecutive_failures,
                        "next_run": usage::rfc3339(s.next_run_ms),
                        "lease_holder": s.lease_holder,
                    })
                })
                .collect();
            serde_json::json!({
                "name": info.name,
                "version": info.version,
                "modes": info.modes(),
                "description": info.description,
                "hash": p.hash(),
                "wit_version": p.wit_version(),
                "compiled_from_cache": p.compiled_from_cache(),
                "file": p.file.display().to_string(),
                "loaded_at": usage::rfc3339(p.loaded_at_ms),
                "last_reload_error": failures.iter().find(|f| f.file == p.file).map(|f| serde_json::json!({
                    "error": f.error,
                    "at": usage::rfc3339(f.at_ms),
                })),
                "config": crate::plugin::redacted(p.settings()),
                "polls": polls,
            })
        })
        .collect();
    let failures: Vec<_> = failures
        .iter()
        .map(|f| serde_json::json!({ "file": f.file, "error": f.error, "at": usage::rfc3339(f.at_ms) }))
        .collect();
    let (reloads, reload_failures) = state.plugins.reload_counts();
    let reload = state.reloader.get().and_then(Weak::upgrade).map(|r| {
        let config = r.config_status();
        serde_json::json!({
            "watching": r.watching.load(std::sync::atomic::Ordering::Relaxed),
            "host_wit": format!("{}@{}", crate::runtime::WIT_PACKAGE, crate::runtime::WIT_VERSION),
            "accepts_wit": crate::runtime::accepted_wit_versions(),
            "plugin_reloads": reloads,
            "plugin_reload_failures": reload_failures,
            "config": {
                "source": config.source,
                "loaded_at": usage::rfc3339(config.loaded_at_ms),
                "last_error": config.last_error,
                "last_error_at": config.last_error_at_ms.map(usage::rfc3339),
                "restart_required": config.restart_required,
                "reloads": config.reloads,
                "reload_failures": config.reload_failures,
            },
        })
    });
    Ok(Json(serde_json::json!({ "plugins": plugins, "failures": failures, "reload": reload })))
}
