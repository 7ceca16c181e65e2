//! `GET /v1/orgs/{org}/usage`: parameters in, the usage answer out. The
//! parsing and the answer's shape are `crate::usage`'s, shared with the CLI.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::usage::{self, ParamError, UsageRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    meter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    window: Option<String>,
    group_by: Option<String>,
}

pub use meterd_core::time::rfc3339;

pub fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    usage::parse_time(name, text).map_err(bad_param)
}

fn bad_param(e: ParamError) -> ApiError {
    ApiError::bad_request(e.0)
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/usage",
    tag = "orgs",
    summary = "A meter's usage over a range, in windows and groups",
    params(
        ("org" = String, Path, description = "Organization id (1-256 bytes)"),
        ("meter" = String, Query, description = "A configured meter, e.g. sandbox_cpu_core_seconds"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: the UTC month of `to` or of now"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive; default: the end of `from`'s month"),
        ("window" = Option<String>, Query, description = "hour, day or month (at most 10,000 windows)"),
        ("group_by" = Option<String>, Query, description = "A record attribute to group each window by"),
    ),
    responses(
        (status = 200, description = "`total`, `unit` and `windows` (exact decimal strings)", body = Object),
        (status = 400, description = "Unknown meter or parameter, bad time or range", body = super::error::ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = super::error::ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now_ms = crate::clock::now_ms();
    let meter = params.meter.ok_or_else(|| ApiError::bad_request("missing `meter` parameter"))?;
    let window = params.window.as_deref().map(usage::parse_window).transpose().map_err(bad_param)?;
    let request = UsageRequest {
        org_id: org,
        meter,
        range: usage::range(params.from.as_deref(), params.to.as_deref(), now_ms).map_err(bad_param)?,
        window,
        group_by: params.group_by,
    };
    let answer = state.usage.usage(&request, now_ms).await?;
    Ok(Json(usage::answer_json(&request, &answer)))
}
