//! `/v1/orgs/{org}`: plan assignment, entitlements, checks and grants.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::usage::{parse_time, rfc3339};
use super::{ApiError, AppState};
use crate::orgs::{Credits, GrantRequest, OrgView};
use crate::plans::check::Action;
use crate::plans::credits::{Grant, GrantBalance};

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(t)| t).map_err(|e| ApiError::bad_request(e.body_text()))
}

fn view_json(view: &OrgView) -> Value {
    json!({
        "org": view.org_id,
        "plan": view.plan,
        "assigned": view.assigned_at_ms.is_some(),
        "assigned_at": view.assigned_at_ms.map(rfc3339),
        "period": { "start": rfc3339(view.period.from_ms), "end": rfc3339(view.period.to_ms) },
    })
}

fn grant_json(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "amount": meterd_units::format_money(g.amount),
        "effective_at": rfc3339(g.effective_at_ms),
        "expires_at": g.expires_at_ms.map(rfc3339),
        "priority": g.priority,
        "source": g.source,
    })
}

fn balance_json(b: &GrantBalance) -> Value {
    let mut value = grant_json(&b.grant);
    value["used"] = json!(meterd_units::format_money(b.used));
    value["remaining"] = json!(meterd_units::format_money(b.remaining));
    value["status"] = json!(b.status);
    value
}

fn credits_json(c: &Credits) -> Value {
    let money = meterd_units::format_money;
    json!({
        "currency": c.currency,
        "balance": money(c.report.balance),
        "spend": money(c.report.spend),
        "uncovered": money(c.report.uncovered),
        "spend_this_period": money(c.spend_this_period),
        "grants": c.report.grants.iter().map(balance_json).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignPlan {
    plan: String,
}

#[utoipa::path(
    put,
    path = "/v1/orgs/{org}",
    tag = "orgs",
    summary = "Assign a plan (admin)",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    request_body = AssignPlan,
    responses(
        (status = 200, description = "The org on its plan, with any plan credit granted now", body = Object),
        (status = 400, description = "Unknown plan (the message lists the plans) or bad body", body = ErrorBody),
        (status = 403, description = "A tenant key: assigning plans needs an admin key", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_org(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<AssignPlan>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let request = body(payload)?;
    let (view, granted) = state.orgs.assign(&org, &request.plan, crate::clock::now_ms()).await?;
    let mut out = view_json(&view);
    out["granted"] = json!(granted.iter().map(grant_json).collect::<Vec<_>>());
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}",
    tag = "orgs",
    summary = "The org's plan and current period",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    responses(
        (status = 200, description = "Plan, whether assigned, the current period", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_org(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view_json(&state.orgs.view(&org, crate::clock::now_ms())?)))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/entitlements",
    tag = "orgs",
    summary = "Meters against quotas, concurrency, sessions and credits this month",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    responses(
        (status = 200, description = "Entitlements", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn entitlements(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = crate::clock::now_ms();
    let (view, e) = state.orgs.entitlements(&org, now).await?;
    let credits = state.orgs.credits(&org, now).await?;
    let q = meterd_units::format_quantity;
    let meters: Vec<Value> = e
        .meters
        .iter()
        .map(|m| {
            json!({
                "meter": m.meter,
                "unit": m.unit,
                "used": q(m.used),
                "quota": m.quota.map(q),
                "remaining": m.remaining.map(q),
                "enforcement": m.enforcement,
                "has_access": m.has_access,
            })
        })
        .collect();
    let sessions: Vec<Value> = e
        .sessions
        .over_limit
        .iter()
        .map(|s| {
            json!({
                "sandbox": s.subject,
                "started_at": rfc3339(s.started_ms),
                "ended_at": s.ended_ms.map(rfc3339),
                "seconds": q(Decimal::new(s.length_ms, 3)),
            })
        })
        .collect();
    let mut out = view_json(&view);
    out["meters"] = json!(meters);
    out["concurrency"] = json!(e.concurrency);
    out["sessions"] = json!({ "limit_seconds": e.sessions.limit_seconds, "over_limit": sessions });
    out["credits"] = credits_json(&credits);
    Ok(Json(out))
}

/// `{"action":"sandbox.start","vcpu":4,"memory_mb":4096}` or
/// `{"meter":"…","quantity":"…"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    action: Option<String>,
    vcpu: Option<u64>,
    memory_mb: Option<u64>,
    meter: Option<String>,
    quantity: Option<String>,
}

impl CheckRequest {
    fn action(self) -> Result<Action, ApiError> {
        match (self.action.as_deref(), self.meter) {
            (Some("sandbox.start"), None) if self.quantity.is_none() => {
                Ok(Action::SandboxStart { vcpu: self.vcpu, memory_mb: self.memory_mb })
            }
            (Some("sandbox.start"), _) => Err(ApiError::bad_request(
                "`sandbox.start` takes `vcpu` and `memory_mb`, not `meter`/`quantity`",
            )),
            (Some(other), _) => Err(ApiError::bad_request(format!(
                "unknown action {other:?}; use \"sandbox.start\", or give `meter` and `quantity`"
            ))),
            (None, Some(meter)) => {
                if self.vcpu.is_some() || self.memory_mb.is_some() {
                    return Err(ApiError::bad_request(
                        "`vcpu`/`memory_mb` go with `\"action\":\"sandbox.start\"`",
                    ));
                }
                let text = self.quantity.unwrap_or_else(|| "0".to_owned());
                let quantity = meterd_units::parse_quantity(&text)
                    .map_err(|e| ApiError::bad_request(format!("`quantity`: {e}")))?;
                Ok(Action::Consume { meter, quantity })
            }
            (None, None) => Err(ApiError::bad_request(
                "give `\"action\":\"sandbox.start\"` or a `meter` (and `quantity`) to check",
            )),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/check",
    tag = "orgs",
    summary = "May the org start a sandbox or consume a quantity now?",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    request_body = CheckRequest,
    responses(
        (status = 200, description = "`allow`, the `reasons` that deny and `warnings`", body = Object),
        (status = 400, description = "Unknown meter or action, bad quantity", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let action = body(payload)?.action()?;
    let decision = state.orgs.check(&org, &action, crate::clock::now_ms()).await?;
    Ok(Json(json!(decision)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrantBody {
    amount: String,
    currency: String,
    effective_at: Option<String>,
    expires_at: Option<String>,
    priority: Option<i32>,
}

#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/grants",
    tag = "orgs",
    summary = "Grant credit (admin)",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    request_body = NewGrantBody,
    responses(
        (status = 201, description = "The grant", body = Object),
        (status = 400, description = "Bad amount, currency or times", body = ErrorBody),
        (status = 403, description = "A tenant key: granting credit needs an admin key", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_grant(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<NewGrantBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(payload)?;
    let now = crate::clock::now_ms();
    let amount = meterd_units::parse_quantity(&b.amount)
        .map_err(|e| ApiError::bad_request(format!("`amount`: {e}")))?;
    let request = GrantRequest {
        amount,
        currency: b.currency,
        effective_at_ms: b
            .effective_at
            .as_deref()
            .map(|t| parse_time("effective_at", t))
            .transpose()?
            .unwrap_or(now),
        expires_at_ms: b.expires_at.as_deref().map(|t| parse_time("expires_at", t)).transpose()?,
        priority: b.priority,
    };
    let grant = state.orgs.add_grant(&org, request, now).await?;
    Ok((StatusCode::CREATED, Json(grant_json(&grant))))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/grants",
    tag = "orgs",
    summary = "Credit balance, spend and each grant in burn order",
    params(("org" = String, Path, description = "Organization id (1-256 bytes)")),
    responses(
        (status = 200, description = "Credits", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "A tenant key asking about an org outside its scope", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_grants(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let credits = state.orgs.credits(&org, crate::clock::now_ms()).await?;
    let mut out = credits_json(&credits);
    out["org"] = json!(org);
    Ok(Json(out))
}
