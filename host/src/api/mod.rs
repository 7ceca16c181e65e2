//! The wire contract of the HTTP API: every request body, query and answer
//! as a typed value (`Serialize + Deserialize + ToSchema`). Handlers parse
//! requests into these types and build their answers from them, the CLI
//! reads answers back into them, and the OpenAPI document is generated
//! from them, so the three cannot drift: a renamed field changes all three.
//!
//! Times are RFC 3339 text and quantities and money exact decimal text
//! (`text`), so no float ever carries a quantity over the wire.
//!
//! `rollups` is the one contract here that is not HTTP: the JSON report of
//! `meterd rollups check --json`.

pub mod keys;
pub mod ops;
pub mod orgs;
pub mod replays;
pub mod rollups;
pub mod text;
pub mod usage;

pub use text::{Amount, Quantity, RequestQuantity, Time, rfc3339};

use serde::{Deserialize, Serialize};

/// Every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `not_found`, `unauthorized`, …
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

/// A schema written as JSON: for the request bodies whose shape a derive
/// cannot say (one of two exclusive forms).
fn schema_from_json(value: serde_json::Value) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    // The values are this module's literals; a mistake in one is caught by
    // the OpenAPI test, which also validates the document.
    serde_json::from_value(value).unwrap_or_else(|e| panic!("a literal schema of `api` does not parse: {e}"))
}

/// An org id: 1-256 bytes, not blank (`orgs::valid_org_id`).
pub fn org_id_schema() -> serde_json::Value {
    serde_json::json!({ "type": "string", "minLength": 1, "maxLength": 256, "pattern": "\\S" })
}
