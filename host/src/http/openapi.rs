//! The OpenAPI document, served at `GET /openapi.json`.
//!
//! Routes are registered through `utoipa_axum`'s `routes!`, which takes
//! each handler's path and method from its `#[utoipa::path]` annotation: the
//! router and the document are built from the same declarations, so they
//! cannot drift. The one route `routes!` cannot express, the catch-all
//! `/v1/ingest/{plugin}/{*path}`, is added to the document here by hand.
//!
//! Bodies and answers are `crate::api`'s types. What the config decides —
//! the meters, the plans and the currency — is filled in per request from
//! the running config ([`configured`]), so the document served lists the
//! values this gateway accepts now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;
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
pub async fn openapi_json(State(state): State<Arc<super::AppState>>) -> Json<Value> {
    let policy = state.orgs.policy();
    let meters: Vec<&str> = policy.meters.iter().map(|m| m.name.as_str()).collect();
    let plans: Vec<&str> = policy.book.plans().map(|p| p.name.as_str()).collect();
    Json(configured(super::openapi(), &meters, &plans, policy.book.currency()))
}

/// The document as served: every `{org}` with the org id's rule, and the
/// config's meters, plans and currency as the enumerations of the fields
/// that must name one.
pub fn configured(api: OpenApi, meters: &[&str], plans: &[&str], currency: &str) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    if let Some(paths) = doc["paths"].as_object_mut() {
        let operations =
            paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut());
        for op in operations {
            let params = op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten();
            for param in params.filter(|p| p["name"] == "org" && p["in"] == "path") {
                param["schema"] = crate::api::org_id_schema();
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["AssignPlan"]["properties"]["plan"]["enum"] = plans.into();
    schemas["NewGrant"]["properties"]["currency"]["enum"] = [currency].as_slice().into();
    schemas["Amount"]["not"] = serde_json::json!({ "pattern": crate::api::text::ZERO_PATTERN });
    if let Some(forms) = schemas["CheckRequest"]["oneOf"].as_array_mut() {
        for form in forms.iter_mut().filter(|f| f["title"] == "Consume") {
            form["properties"]["meter"]["enum"] = meters.into();
        }
    }
    if let Some(params) = doc["paths"]["/v1/orgs/{org}/usage"]["get"]["parameters"].as_array_mut() {
        for param in params.iter_mut().filter(|p| p["name"] == "meter") {
            param["schema"]["enum"] = meters.into();
        }
    }
    doc
}
