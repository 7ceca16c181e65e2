//! `/v1/keys`: API keys, for admins only (the auth middleware sees to it).

use std::sync::Arc;

use super::error::{AdminErrors, ErrorBody};
use super::{ApiError, AppState};
use crate::api::Time;
use crate::api::keys::{CreatedKey, Key, Keys, NewKey, Revoked};
use crate::keys::{self, KeyError};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

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
    request_body = NewKey,
    responses(
        (status = 201, description = "The key's id, scope and the key itself (`key`)", body = CreatedKey),
        (status = 400, description = "Neither or both of `admin` and `orgs`, a bad org id or label", body = ErrorBody),
        AdminErrors,
    ),
    security(("bearer" = []))
)]
/// `POST /v1/keys` `{"admin": true}` or `{"orgs": [...]}`, optional `label`:
/// 201 with the key itself, shown this once.
pub async fn create(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let Json(body) = payload.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let scope = keys::scope(body.admin, body.orgs)?;
    let (token, key) = keys::create(state.store.as_ref(), scope, body.label, crate::clock::now_ms()).await?;
    state.refresh_keys().await.map_err(KeyError::from)?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: Key::from(&key), token })))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "Every key, revoked ones included, never their secrets (admin)",
    responses(
        (status = 200, description = "Every key", body = Keys),
        AdminErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /v1/keys`: every key, revoked ones included.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Keys>, ApiError> {
    let keys = state.store.api_keys().await.map_err(KeyError::from)?;
    Ok(Json(Keys { keys: keys.iter().map(Key::from).collect() }))
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke a key (admin)",
    params(("id" = String, Path, description = "The key's id (as listed)")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 404, description = "No active key with this id", body = ErrorBody),
        AdminErrors,
    ),
    security(("bearer" = []))
)]
/// `DELETE /v1/keys/{id}`: revokes at once on this replica, within
/// `keys::REFRESH` on the others.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let now = crate::clock::now_ms();
    if !state.store.revoke_api_key(&id, now).await.map_err(KeyError::from)? {
        return Err(ApiError::not_found(format!("no active key {id:?}")));
    }
    state.refresh_keys().await.map_err(KeyError::from)?;
    Ok(Json(Revoked { id, revoked_at: Time::at(now) }))
}
