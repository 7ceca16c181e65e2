//! `GET /v1/orgs/{org}/usage`: parameters in, the usage answer out.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::meter::period::{Range, WindowSize, month_containing};
use crate::usage::UsageRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    meter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    window: Option<String>,
    group_by: Option<String>,
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

pub fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| {
        ApiError::bad_request(format!(
            "`{name}` {text:?} is not an RFC 3339 time such as 2025-08-01T00:00:00Z"
        ))
    })
}

/// Missing bounds default to the calendar month (UTC) of the other bound,
/// or of now.
fn range(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<Range, ApiError> {
    let from = from.map(|t| parse_time("from", t)).transpose()?;
    let to = to.map(|t| parse_time("to", t)).transpose()?;
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f, t),
        (Some(f), None) => (f, month_containing(f).to_ms),
        (None, Some(t)) => (month_containing(t.saturating_sub(1)).from_ms, t),
        (None, None) => {
            let month = month_containing(now_ms);
            (month.from_ms, month.to_ms)
        }
    };
    Range::new(from, to).map_err(|e| ApiError::bad_request(format!("bad range: {e}")))
}

pub async fn usage(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now_ms = crate::clock::now_ms();
    let meter = params.meter.ok_or_else(|| ApiError::bad_request("missing `meter` parameter"))?;
    let window = match params.window.as_deref() {
        None => None,
        Some("hour") => Some(WindowSize::Hour),
        Some("day") => Some(WindowSize::Day),
        Some("month") => Some(WindowSize::Month),
        Some(other) => {
            return Err(ApiError::bad_request(format!("`window` {other:?} must be hour, day or month")));
        }
    };
    let request = UsageRequest {
        org_id: org.clone(),
        meter,
        range: range(params.from.as_deref(), params.to.as_deref(), now_ms)?,
        window,
        group_by: params.group_by.clone(),
    };
    let answer = state.usage.usage(&request, now_ms).await?;
    let grouped = request.group_by.is_some();
    let windows: Vec<_> = answer
        .windows
        .iter()
        .map(|w| {
            let mut value = serde_json::json!({
                "start": rfc3339(w.start_ms),
                "end": rfc3339(w.end_ms),
                "value": meterd_units::format_quantity(w.value),
            });
            if grouped {
                value["group"] = serde_json::json!(w.group);
            }
            value
        })
        .collect();
    Ok(Json(serde_json::json!({
        "org": org,
        "meter": answer.meter.name,
        "unit": answer.meter.unit,
        "from": rfc3339(request.range.from_ms),
        "to": rfc3339(request.range.to_ms),
        "total": meterd_units::format_quantity(answer.total),
        "windows": windows,
    })))
}
