//! What the store keeps of an API key: never its secret. Minting, checking
//! and the key ring are the gateway's (`meterd::keys`).

use std::collections::BTreeSet;

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    /// Read usage, entitlements and checks of these orgs only.
    Orgs(BTreeSet<String>),
}

/// A stored key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub scope: Scope,
    pub label: Option<String>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl ApiKey {
    pub fn is_active(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}
