//! The one error shape of the API: `{"error":{"code":"…","message":"…"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ingest::IngestError;
use crate::orgs::OrgError;
use crate::plugin::AdapterError;
use crate::runtime::CallError;
use crate::store::StoreError;
use crate::usage::UsageError;

pub use crate::api::{ErrorBody, ErrorDetail};

/// The answers `authorize` gives before any handler runs, declared once per
/// kind of guarded route (`responses(..., OrgReadErrors)`).
fn auth_responses(
    list: &[(u16, &str)],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
    use utoipa::PartialSchema as _;
    list.iter()
        .map(|(status, description)| {
            let response = utoipa::openapi::ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new().schema(Some(ErrorBody::schema())).build(),
                )
                .build();
            (status.to_string(), response.into())
        })
        .collect()
}

const UNAUTHORIZED: (u16, &str) = (401, "No bearer token, or not an active API key nor the admin token");
const FORBIDDEN: (u16, &str) = (403, "A tenant key on a route that needs an admin key");
const OUT_OF_SCOPE: (u16, &str) =
    (404, "A tenant key asking about an org outside its scope (as for an org that does not exist)");

/// A route any key may call, about no org in particular (`GET /v1/orgs`).
pub struct KeyErrors;

impl utoipa::IntoResponses for KeyErrors {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        auth_responses(&[UNAUTHORIZED])
    }
}

/// A route a tenant key may call for its own orgs.
pub struct OrgReadErrors;

impl utoipa::IntoResponses for OrgReadErrors {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        auth_responses(&[UNAUTHORIZED, OUT_OF_SCOPE])
    }
}

/// An admin route about one org.
pub struct OrgAdminErrors;

impl utoipa::IntoResponses for OrgAdminErrors {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        auth_responses(&[UNAUTHORIZED, FORBIDDEN, OUT_OF_SCOPE])
    }
}

/// An admin route about no org (plugins, keys, replays).
pub struct AdminErrors;

impl utoipa::IntoResponses for AdminErrors {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        auth_responses(&[UNAUTHORIZED, FORBIDDEN])
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A quarantined plugin's refusals are logged once, when it opens.
        if self.status.is_server_error() && self.code != "plugin_quarantined" {
            tracing::error!(status = %self.status, code = self.code, error = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn store_error(e: &StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("could not commit; retry later ({e})"),
    )
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let message = e.to_string();
        match &e {
            IngestError::UnknownPlugin(_) => ApiError::not_found(message),
            IngestError::NotPush(_) => ApiError::new(StatusCode::NOT_FOUND, "not_push", message),
            IngestError::Store(store) => store_error(store),
            IngestError::InvalidOutput { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", message)
            }
            IngestError::Plugin { plugin, error } => match error {
                CallError::Adapter(adapter) => match adapter {
                    AdapterError::Unauthorized(m) => ApiError::unauthorized(m.clone()),
                    AdapterError::Malformed(m) => {
                        ApiError::new(StatusCode::BAD_REQUEST, "malformed", m.clone())
                    }
                    AdapterError::Unsupported(m) => {
                        ApiError::new(StatusCode::NOT_FOUND, "unsupported", m.clone())
                    }
                    AdapterError::Upstream(m) => {
                        ApiError::new(StatusCode::BAD_GATEWAY, "upstream", m.clone())
                    }
                    AdapterError::Config(_) | AdapterError::Internal(_) => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "plugin_failed",
                        format!("plugin {plugin}: {adapter}"),
                    ),
                },
                CallError::Quarantined { retry_after_ms, .. } => ApiError {
                    retry_after_s: Some(u64::try_from((retry_after_ms + 999) / 1_000).unwrap_or(1).max(1)),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "plugin_quarantined", message)
                },
                _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", message),
            },
        }
    }
}

impl From<UsageError> for ApiError {
    fn from(e: UsageError) -> Self {
        match &e {
            UsageError::Store(store) => store_error(store),
            UsageError::UnknownMeter { .. } | UsageError::BadGroupBy(_) | UsageError::Engine(_) => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

impl From<OrgError> for ApiError {
    fn from(e: OrgError) -> Self {
        match e {
            OrgError::Store(store) => store_error(&store),
            OrgError::Usage(usage) => usage.into(),
            OrgError::BadOrgId
            | OrgError::UnknownPlan { .. }
            | OrgError::BadGrant(_)
            | OrgError::Check(_) => ApiError::bad_request(e.to_string()),
        }
    }
}
