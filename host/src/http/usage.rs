//! `GET /v1/orgs/{org}/usage`: parameters in, the usage answer out. The
//! parsing is `crate::usage`'s and the answer `api::usage`'s, shared with
//! the CLI.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};

use super::{ApiError, AppState};
use crate::api::usage::{Usage, UsageParams};
use crate::usage::{self, ParamError, UsageRequest};

pub use crate::api::rfc3339;

/// An optional request time, in milliseconds; `name` is the field, for the
/// message.
pub fn parse_time(name: &str, time: Option<&crate::api::Time>) -> Result<Option<i64>, ApiError> {
    time.map(|t| usage::parse_time(name, &t.0)).transpose().map_err(bad_param)
}

fn bad_param(e: ParamError) -> ApiError {
    ApiError::bad_request(e.0)
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/usage",
    tag = "orgs",
    summary = "A meter's usage over a range, in windows and groups",
    description = "A range with `from` not before `to`, or of more than 10,000 windows, is a 400.",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)"), UsageParams),
    responses(
        (status = 200, description = "The meter's total and windows (exact decimal strings)", body = Usage),
        (status = 400, description = "Unknown meter or parameter, bad time or range", body = super::error::ErrorBody),
        super::error::OrgReadErrors,
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Usage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now_ms = crate::clock::now_ms();
    let meter = params.meter.ok_or_else(|| ApiError::bad_request("missing `meter` parameter"))?;
    let (from, to) = (params.from.as_ref().map(|t| t.0.as_str()), params.to.as_ref().map(|t| t.0.as_str()));
    let request = UsageRequest {
        org_id: org,
        meter,
        range: usage::range(from, to, now_ms).map_err(bad_param)?,
        window: params.window.as_deref().map(usage::parse_window).transpose().map_err(bad_param)?,
        group_by: params.group_by.map(|k| k.0),
    };
    let answer = state.usage.usage(&request, now_ms).await?;
    Ok(Json(Usage::new(&request, &answer)))
}
