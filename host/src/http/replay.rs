//! `/v1/replays`: start a replay job and follow it (admin only; the auth
//! middleware sees to it). The work is `crate::replay`'s.

use std::sync::Arc;

use super::error::{AdminErrors, ErrorBody};
use super::usage::parse_time;
use super::{ApiError, AppState};
use crate::api::replays::{NewReplay, ReplayJob};
use crate::meter::period::Range;
use crate::replay::{ReplayError, ReplayRequest};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        let message = e.to_string();
        match e {
            ReplayError::UnknownPlugin(_) => ApiError::not_found(message),
            ReplayError::NotPush(_) => ApiError::new(StatusCode::BAD_REQUEST, "not_push", message),
            ReplayError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, "replay_running", message),
            ReplayError::Random(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/replays",
    tag = "replays",
    summary = "Replay a plugin's stored payloads through the plugin loaded now and correct what changed (admin)",
    request_body = NewReplay,
    responses(
        (status = 202, description = "The job, running: follow it at `Location`", body = ReplayJob),
        (status = 400, description = "A bad time or range, unknown fields, or a plugin that only polls", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 409, description = "A replay of this plugin is already running here", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/replays` `{"plugin": …, "from"?, "to"?, "dry_run"?}`: 202 with
/// the job; `GET /v1/replays/{id}` follows it.
pub async fn start(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<NewReplay>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<ReplayJob>), ApiError> {
    let Json(body) = payload.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let from_ms = parse_time("from", body.from.as_ref())?.unwrap_or(0);
    let to_ms = parse_time("to", body.to.as_ref())?.unwrap_or_else(|| crate::clock::now_ms() + 1);
    let range = Range::new(from_ms, to_ms).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let job = state.replays.start(ReplayRequest { plugin: body.plugin, range, dry_run: body.dry_run })?;
    let view = job.view();
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/replays/{}", view.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(ReplayJob::from(&view))))
}

#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    tag = "replays",
    summary = "A replay job: state, progress and what it changed (admin)",
    params(("id" = String, Path, description = "The job id from POST /v1/replays")),
    responses(
        (status = 200, description = "`state` (running, done, failed), `report` (counts, `by_metric`, `changes`, `conflicts`, `failures`)", body = ReplayJob),
        AdminErrors,
        (status = 404, description = "No such job on this gateway (jobs live in the process that runs them)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/replays/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ReplayJob>, ApiError> {
    let job =
        state.replays.job(&id).ok_or_else(|| ApiError::not_found(format!("no replay job {id:?} here")))?;
    Ok(Json(ReplayJob::from(&job.view())))
}
