//! `/v1/keys` on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::text::Time;
use crate::keys::{ApiKey, Scope};

/// `POST /v1/keys`: `{"admin": true}` or `{"orgs": [...]}`, with an
/// optional `label`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub orgs: Vec<String>,
    pub label: Option<String>,
}

/// Exactly one of an admin key or a non-empty set of orgs: two shapes, so
/// the document says which bodies the server takes.
impl utoipa::PartialSchema for NewKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let label = serde_json::json!({ "type": ["string", "null"], "maxLength": 200 });
        super::schema_from_json(serde_json::json!({
            "description": "An admin key, or a key for one or more orgs (1-256 bytes each, not blank).",
            "oneOf": [
                {
                    "type": "object",
                    "title": "AdminKey",
                    "additionalProperties": false,
                    "required": ["admin"],
                    "properties": {
                        "admin": { "type": "boolean", "enum": [true] },
                        "orgs": { "type": "array", "maxItems": 0, "items": super::org_id_schema() },
                        "label": label,
                    },
                },
                {
                    "type": "object",
                    "title": "TenantKey",
                    "additionalProperties": false,
                    "required": ["orgs"],
                    "properties": {
                        "admin": { "type": "boolean", "enum": [false] },
                        "orgs": { "type": "array", "minItems": 1, "items": super::org_id_schema() },
                        "label": label,
                    },
                },
            ],
        }))
    }
}

impl utoipa::ToSchema for NewKey {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    Admin,
    Orgs,
}

/// A key as listings show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub scope: KeyScope,
    /// The orgs a tenant key may read (empty for an admin key).
    pub orgs: Vec<String>,
    pub label: Option<String>,
    pub created_at: Time,
    pub revoked_at: Option<Time>,
}

impl From<&ApiKey> for Key {
    fn from(key: &ApiKey) -> Self {
        let (scope, orgs) = match &key.scope {
            Scope::Admin => (KeyScope::Admin, Vec::new()),
            Scope::Orgs(orgs) => (KeyScope::Orgs, orgs.iter().cloned().collect()),
        };
        Self {
            id: key.id.clone(),
            scope,
            orgs,
            label: key.label.clone(),
            created_at: Time::at(key.created_at_ms),
            revoked_at: Time::at_opt(key.revoked_at_ms),
        }
    }
}

/// The answer to `POST /v1/keys`: the only place the key itself appears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: Key,
    /// The bearer token (`mk_<id>_<secret>`); store it now.
    #[serde(rename = "key")]
    pub token: String,
}

/// The answer to `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Keys {
    pub keys: Vec<Key>,
}

/// The answer to `DELETE /v1/keys/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub id: String,
    pub revoked_at: Time,
}
