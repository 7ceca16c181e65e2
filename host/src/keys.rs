//! API keys: who may read what.
//!
//! A key is `mk_<id>_<secret>`: a public id (shown in listings, used to
//! revoke) and 256 random bits. Only SHA-256 of the secret is stored, so
//! the key is shown once, when created; a high-entropy secret needs no
//! slow hash. Each key has a scope: admin (everything) or a set of orgs
//! (read their usage, entitlements and checks). `admin_token` from the
//! config stays a bootstrap admin credential.
//!
//! The keys live in the store; every process keeps them in a [`KeyRing`]
//! refreshed after its own changes and every [`REFRESH`], so a key revoked
//! on one replica (or with the CLI) stops working everywhere within it.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::orgs::valid_org_id;
pub use crate::store::{ApiKey, Scope};
use crate::store::{Store, StoreError};

/// How often each process re-reads the keys.
pub const REFRESH: Duration = Duration::from_secs(1);
const PREFIX: &str = "mk_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(BTreeSet<String>),
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// Whether this principal may read `org` (a tenant asking about any
    /// other org is told it does not exist).
    pub fn may_read(&self, org: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(orgs) => orgs.contains(org),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key is either --admin or for one or more orgs, not both and not neither")]
    Scope,
    #[error("org id {0:?} must be 1-256 bytes and not blank")]
    BadOrg(String),
    #[error("the label must be at most 200 characters")]
    BadLabel,
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The scope asked for: `admin`, or a non-empty set of valid org ids.
pub fn scope(admin: bool, orgs: Vec<String>) -> Result<Scope, KeyError> {
    match (admin, orgs.is_empty()) {
        (true, true) => Ok(Scope::Admin),
        (false, false) => {
            if let Some(bad) = orgs.iter().find(|o| !valid_org_id(o)) {
                return Err(KeyError::BadOrg(bad.clone()));
            }
            Ok(Scope::Orgs(orgs.into_iter().collect()))
        }
        _ => Err(KeyError::Scope),
    }
}

/// A new key: the token to show once, and what to store.
pub fn generate(scope: Scope, label: Option<String>, now_ms: i64) -> Result<(String, ApiKey), KeyError> {
    if label.as_ref().is_some_and(|l| l.chars().count() > 200) {
        return Err(KeyError::BadLabel);
    }
    let id = random_hex(ID_BYTES)?;
    let secret = random_hex(SECRET_BYTES)?;
    let token = format!("{PREFIX}{id}_{secret}");
    let key = ApiKey {
        id,
        secret_hash: hash_secret(&secret),
        scope,
        label,
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    Ok((token, key))
}

/// (id, secret) of a token shaped like a key.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, bytes: usize| s.len() == 2 * bytes && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some((id, secret))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Credentials are required and none were given.
    Missing,
    /// A token was given and is not a valid, active credential.
    Invalid,
}

/// This process's copy of the stored keys.
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<String, ApiKey>>,
}

impl KeyRing {
    /// Re-reads every key from the store.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let keys = store.api_keys().await?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
            keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        Ok(())
    }

    fn any_active(&self) -> bool {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).values().any(ApiKey::is_active)
    }

    /// Who `bearer` is. With no admin token configured and no active key
    /// stored, the API is open (loopback only: the config refuses a public
    /// listen address without an admin token) and everyone is admin.
    pub fn authenticate(&self, bearer: Option<&str>, admin_token: Option<&str>) -> Result<Principal, Denied> {
        let Some(token) = bearer else {
            return if admin_token.is_none() && !self.any_active() {
                Ok(Principal::Admin)
            } else {
                Err(Denied::Missing)
            };
        };
        if admin_token.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
            return Ok(Principal::Admin);
        }
        let (id, secret) = split_token(token).ok_or(Denied::Invalid)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.get(id).filter(|k| k.is_active()).ok_or(Denied::Invalid)?;
        if !constant_time_eq(key.secret_hash.as_bytes(), hash_secret(secret).as_bytes()) {
            return Err(Denied::Invalid);
        }
        Ok(match &key.scope {
            Scope::Admin => Principal::Admin,
            Scope::Orgs(orgs) => Principal::Tenant(orgs.clone()),
        })
    }
}

/// Creates and stores a key; returns the token (shown once) and the key.
pub async fn create(
    store: &dyn Store,
    scope: Scope,
    label: Option<String>,
    now_ms: i64,
) -> Result<(String, ApiKey), KeyError> {
    let (token, key) = generate(scope, label, now_ms)?;
    store.insert_api_key(&key).await?;
    Ok((token, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(keys: Vec<ApiKey>) -> KeyRing {
        KeyRing { keys: RwLock::new(keys.into_iter().map(|k| (k.id.clone(), k)).collect()) }
    }

    #[test]
    fn a_generated_key_authenticates_with_its_scope_and_nothing_else_does() {
        let orgs = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let (token, key) = generate(Scope::Orgs(orgs.clone()), Some("ci".into()), 7).unwrap();
        assert!(token.starts_with("mk_") && token.len() == 3 + 12 + 1 + 64, "{token}");
        assert!(!key.secret_hash.contains(&token[16..]), "only a hash is kept");
        let (admin_token, admin) = generate(Scope::Admin, None, 8).unwrap();
        let ring = ring_with(vec![key.clone(), admin]);
        let tenant = ring.authenticate(Some(&token), None).unwrap();
        assert_eq!(tenant, Principal::Tenant(orgs));
        assert!(tenant.may_read("a") && !tenant.may_read("c") && !tenant.is_admin());
        assert_eq!(ring.authenticate(Some(&admin_token), None), Ok(Principal::Admin));
        // Another secret under the same id, junk, and no token at all.
        let forged = format!("{}{}", &token[..16], "0".repeat(64));
        assert_eq!(ring.authenticate(Some(&forged), None), Err(Denied::Invalid));
        assert_eq!(ring.authenticate(Some("mk_nothex_xyz"), None), Err(Denied::Invalid));
        assert_eq!(ring.authenticate(None, None), Err(Denied::Missing), "keys exist: credentials required");
    }

    #[test]
    fn revoked_keys_fail_and_the_admin_token_bootstraps() {
        let (token, mut key) = generate(Scope::Admin, None, 1).unwrap();
        key.revoked_at_ms = Some(2);
        let ring = ring_with(vec![key]);
        assert_eq!(ring.authenticate(Some(&token), None), Err(Denied::Invalid));
        // No active key and no admin token: open (loopback) mode.
        assert_eq!(ring.authenticate(None, None), Ok(Principal::Admin));
        let admin_token = "bootstrap-token-0123456789";
        assert_eq!(ring.authenticate(Some(admin_token), Some(admin_token)), Ok(Principal::Admin));
        assert_eq!(ring.authenticate(None, Some(admin_token)), Err(Denied::Missing));
        assert_eq!(ring.authenticate(Some("wrong"), Some(admin_token)), Err(Denied::Invalid));
    }

    #[test]
    fn scopes_are_admin_or_valid_orgs() {
        assert_eq!(scope(true, vec![]).unwrap(), Scope::Admin);
        assert!(matches!(scope(true, vec!["a".into()]), Err(KeyError::Scope)));
        assert!(matches!(scope(false, vec![]), Err(KeyError::Scope)));
        assert!(matches!(scope(false, vec![" ".into()]), Err(KeyError::BadOrg(_))));
        assert!(matches!(generate(Scope::Admin, Some("x".repeat(201)), 0), Err(KeyError::BadLabel)));
    }
}
