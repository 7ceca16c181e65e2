//! The OpenAPI document, served at `GET /openapi.json`.
//!
//! Routes are registered through `utoipa_axum`'s `routes!`, which takes
//! each handler's path and method from its `#[utoipa::path]` annotation: the
//! router and the document are built from the same declarations, so they
//! cannot drift. The one route `routes!` cannot express, the catch-all
//! `/v1/ingest/{plugin}/{*path}`, is added to the document here by hand.

use axum::Json;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, Required};

/// The path the catch-all ingest route has in the document.
pub const INGEST_SUBPATH: &str = "/v1/ingest/{plugin}/{path}";

/// Completes what the routes collected: title, version, the bearer scheme,
/// and the catch-all ingest route.
pub fn finish(mut api: OpenApi) -> OpenApi {
    api.info = InfoBuilder::new()
        .title("meterd")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Usage-metering gateway: provider webhooks in (authenticated by the provider's signature), \
             exact meters, entitlements and checks per organization out (authenticated by a bearer API key \
             or the admin token). Errors are {\"error\":{\"code\",\"message\"}}.",
        ))
        .build();
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key (mk_…) or the configured admin_token"))
                .build(),
        ),
    );
    if let Some(mut item) = api.paths.paths.get("/v1/ingest/{plugin}").cloned() {
        let rest: Parameter = ParameterBuilder::new()
            .name("path")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("The rest of the path, handed to the plugin (may contain '/')"))
            .schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String)))
            .build();
        if let Some(post) = item.post.as_mut() {
            post.parameters.get_or_insert_with(Vec::new).push(rest);
            post.operation_id = Some("ingest_path".to_owned());
            post.summary =
                Some("A provider webhook with a sub-path (some providers post to several paths)".to_owned());
        }
        api.paths.paths.insert(INGEST_SUBPATH.to_owned(), item);
    }
    api
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
pub async fn openapi_json() -> Json<OpenApi> {
    Json(super::openapi())
}
