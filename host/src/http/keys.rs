//! `/v1/keys`: API keys, for admins only (the auth middleware sees to it).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::usage::rfc3339;
use super::{ApiError, AppState};
use crate::keys::{self, ApiKey, KeyError, Scope};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    orgs: Vec<String>,
    label: Option<String>,
}

/// A key as listings show it: never its secret.
pub fn key_json(key: &ApiKey) -> Value {
    let (scope, orgs) = match &key.scope {
        Scope::Admin => ("admin", Vec::new()),
        Scope::Orgs(orgs) => ("orgs", orgs.iter().cloned().collect()),
    };
    json!({
        "id": key.id,
        "scope": scope,
        "orgs": orgs,
        "label": key.label,
        "created_at": rfc3339(key.created_at_ms),
        "revoked_at": key.revoked_at_ms.map(rfc3339),
    })
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(e) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
            }
            KeyError::Random(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            KeyError::Scope | KeyError::BadOrg(_) | KeyError::BadLabel => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    summary = "Create an API key (admin); the answer is the only place the key appears",
    request_body = NewKeyBody,
    responses(
        (status = 201, description = "The key's id, scope and the key itself (`key`)", body = Object),
        (status = 400, description = "Neither or both of `admin` and `orgs`, a bad org id or label", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 403, description = "A tenant key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/keys` `{"admin": true}` or `{"orgs": [...]}`, optional `label`:
/// 201 with the key itself, shown this once.
pub async fn create(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<NewKeyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = payload.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let scope = keys::scope(body.admin, body.orgs)?;
    let (token, key) = keys::create(state.store.as_ref(), scope, body.label, crate::clock::now_ms()).await?;
    state.refresh_keys().await.map_err(KeyError::from)?;
    let mut answer = key_json(&key);
    answer["key"] = json!(token);
    Ok((StatusCode::CREATED, Json(answer)))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "Every key, revoked ones included, never their secrets (admin)",
    responses(
        (status = 200, description = "`keys`", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 403, description = "A tenant key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/keys`: every key, revoked ones included.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let keys = state.store.api_keys().await.map_err(KeyError::from)?;
    Ok(Json(json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() })))
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke a key (admin)",
    params(("id" = String, Path, description = "The key's id (as listed)")),
    responses(
        (status = 200, description = "Revoked", body = Object),
        (status = 404, description = "No active key with this id", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 403, description = "A tenant key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `DELETE /v1/keys/{id}`: revokes at once on this replica, within
/// `keys::REFRESH` on the others.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = crate::clock::now_ms();
    if !state.store.revoke_api_key(&id, now).await.map_err(KeyError::from)? {
        return Err(ApiError::not_found(format!("no active key {id:?}")));
    }
    state.refresh_keys().await.map_err(KeyError::from)?;
    Ok(Json(json!({ "id": id, "revoked_at": rfc3339(now) })))
}
