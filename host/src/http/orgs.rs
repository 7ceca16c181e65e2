//! `/v1/orgs` (the orgs a key may read) and `/v1/orgs/{org}`: plan
//! assignment, entitlements, checks and grants. The
//! bodies and answers are `api::orgs`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;

use super::error::{ErrorBody, KeyErrors, OrgAdminErrors, OrgReadErrors};
use super::usage::parse_time;
use super::{ApiError, AppState};
use crate::api::orgs::{
    AssignPlan, AssignedOrg, CheckAnswer, CheckRequest, Credits, Entitlements, Grant, NewGrant, Org,
    OrgCredits, OrgList,
};
use crate::keys::Principal;
use crate::orgs::GrantRequest;

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(t)| t).map_err(|e| ApiError::bad_request(e.body_text()))
}

#[utoipa::path(
    get,
    path = "/v1/orgs",
    tag = "orgs",
    summary = "The orgs this key may read",
    description = "An admin key (or the admin token) sees every org the gateway knows now: assigned a \
                   plan, or with usage this period. A tenant key sees exactly the orgs of its scope.",
    responses(
        (status = 200, description = "The caller's scope and its orgs, by id", body = OrgList),
        KeyErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list_orgs(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<OrgList>, ApiError> {
    use crate::api::keys::KeyScope;
    let now = crate::clock::now_ms();
    let (scope, ids) = match principal {
        Principal::Admin => (KeyScope::Admin, state.orgs.known()),
        Principal::Tenant(orgs) => (KeyScope::Orgs, orgs.into_iter().collect()),
    };
    let orgs =
        ids.iter().map(|org| state.orgs.view(org, now).map(|v| Org::from(&v))).collect::<Result<_, _>>()?;
    Ok(Json(OrgList { scope, orgs }))
}

#[utoipa::path(
    put,
    path = "/v1/orgs/{org}",
    tag = "orgs",
    summary = "Assign a plan (admin)",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    request_body = AssignPlan,
    responses(
        (status = 200, description = "The org on its plan, with any plan credit granted now", body = AssignedOrg),
        (status = 400, description = "Unknown plan (the message lists the plans), a blank org id or a bad body", body = ErrorBody),
        OrgAdminErrors,
    ),
    security(("bearer" = []))
)]
pub async fn put_org(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<AssignPlan>, JsonRejection>,
) -> Result<Json<AssignedOrg>, ApiError> {
    let request = body(payload)?;
    let (view, granted) = state.orgs.assign(&org, &request.plan, crate::clock::now_ms()).await?;
    Ok(Json(AssignedOrg { org: Org::from(&view), granted: granted.iter().map(Grant::from).collect() }))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}",
    tag = "orgs",
    summary = "The org's plan and current period",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    responses(
        (status = 200, description = "Plan, whether assigned, the current period", body = Org),
        (status = 400, description = "A blank org id", body = ErrorBody),
        OrgReadErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_org(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<Org>, ApiError> {
    Ok(Json(Org::from(&state.orgs.view(&org, crate::clock::now_ms())?)))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/entitlements",
    tag = "orgs",
    summary = "Meters against quotas, concurrency, sessions and credits this month",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    responses(
        (status = 200, description = "Entitlements", body = Entitlements),
        (status = 400, description = "A blank org id", body = ErrorBody),
        OrgReadErrors,
    ),
    security(("bearer" = []))
)]
pub async fn entitlements(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    let now = crate::clock::now_ms();
    let (view, e) = state.orgs.entitlements(&org, now).await?;
    let credits = state.orgs.credits(&org, now).await?;
    Ok(Json(Entitlements::new(&view, &e, &credits)))
}

#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/check",
    tag = "orgs",
    summary = "May the org start a sandbox or consume a quantity now?",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    request_body = CheckRequest,
    responses(
        (status = 200, description = "`allow`, the `reasons` that deny and `warnings`", body = CheckAnswer),
        (status = 400, description = "Unknown meter or action, bad quantity, a blank org id", body = ErrorBody),
        OrgReadErrors,
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<Json<CheckAnswer>, ApiError> {
    let action = body(payload)?.action().map_err(ApiError::bad_request)?;
    let decision = state.orgs.check(&org, &action, crate::clock::now_ms()).await?;
    Ok(Json(CheckAnswer::from(&decision)))
}

#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/grants",
    tag = "orgs",
    summary = "Grant credit (admin)",
    description = "`expires_at` not after `effective_at` is a 400.",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    request_body = NewGrant,
    responses(
        (status = 201, description = "The grant", body = Grant),
        (status = 400, description = "Bad amount, currency or times, a blank org id", body = ErrorBody),
        OrgAdminErrors,
    ),
    security(("bearer" = []))
)]
pub async fn post_grant(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
    payload: Result<Json<NewGrant>, JsonRejection>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    let b = body(payload)?;
    let now = crate::clock::now_ms();
    let amount = crate::api::text::parse_decimal("amount", &b.amount.0).map_err(ApiError::bad_request)?;
    let request = GrantRequest {
        amount,
        currency: b.currency,
        effective_at_ms: parse_time("effective_at", b.effective_at.as_ref())?.unwrap_or(now),
        expires_at_ms: parse_time("expires_at", b.expires_at.as_ref())?,
        priority: b.priority,
    };
    let grant = state.orgs.add_grant(&org, request, now).await?;
    Ok((StatusCode::CREATED, Json(Grant::from(&grant))))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/grants",
    tag = "orgs",
    summary = "Credit balance, spend and each grant in burn order",
    params(("org" = String, Path, description = "Organization id (1-256 bytes, not blank)")),
    responses(
        (status = 200, description = "Credits", body = OrgCredits),
        (status = 400, description = "A blank org id", body = ErrorBody),
        OrgReadErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_grants(
    State(state): State<Arc<AppState>>,
    Path(org): Path<String>,
) -> Result<Json<OrgCredits>, ApiError> {
    let credits = state.orgs.credits(&org, crate::clock::now_ms()).await?;
    Ok(Json(OrgCredits { org, credits: Credits::from(&credits) }))
}
