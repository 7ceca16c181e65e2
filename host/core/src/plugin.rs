//! What the gateway knows of a plugin, in the host's own types: the rest of
//! the host speaks these, and only `runtime` converts them to and from the
//! WIT bindings.

use std::collections::BTreeMap;

/// One inbound webhook, as handed to a plugin.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    pub method: String,
    /// The path below `/v1/ingest/{plugin}`; `/` when there is none.
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names, arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A plugin's self-description (`info()`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub version: String,
    pub push: bool,
    pub pull: bool,
    pub description: String,
}

impl AdapterInfo {
    /// `push`, `pull` or `push+pull`, for listings.
    pub fn modes(&self) -> &'static str {
        match (self.push, self.pull) {
            (true, true) => "push+pull",
            (true, false) => "push",
            (false, true) => "pull",
            (false, false) => "none",
        }
    }
}

/// A record exactly as a plugin produced it, before the host validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub event_id: String,
    pub org_id: String,
    pub subject: String,
    pub metric: String,
    pub kind: crate::meter::Kind,
    pub quantity: String,
    pub at_ms: i64,
    pub window_start_ms: Option<i64>,
    pub attributes: Vec<(String, String)>,
}

/// What a webhook delivery amounted to, per the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookOutcome {
    pub event_id: String,
    pub records: Vec<RawRecord>,
}

/// An error a plugin returned on purpose (as opposed to a trap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("plugin configuration: {0}")]
    Config(String),
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// A plugin's own config section, flattened to dotted keys with text values
/// (what the WIT `config(key)` import answers).
pub type PluginSettings = BTreeMap<String, String>;

/// Whether a config key holds a secret: its last part names a secret,
/// key, token or password.
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["secret", "key", "token", "password", "credential"].iter().any(|word| last.contains(word))
        && !last.ends_with("_key_name")
        && last != "org_metadata_key"
}

/// The settings with every secret value replaced, for status and logs.
pub fn redacted(settings: &PluginSettings) -> PluginSettings {
    settings
        .iter()
        .map(|(k, v)| (k.clone(), if is_secret_key(k) { "***".to_owned() } else { v.clone() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_is_shown() {
        let settings = PluginSettings::from([
            ("api_key".to_owned(), "k".to_owned()),
            ("signature_secret".to_owned(), "s".to_owned()),
            ("webhook_secret".to_owned(), "w".to_owned()),
            ("auth.token".to_owned(), "t".to_owned()),
            ("org_metadata_key".to_owned(), "org_id".to_owned()),
            ("analytics_url".to_owned(), "https://x".to_owned()),
        ]);
        let shown = redacted(&settings);
        for secret in ["api_key", "signature_secret", "webhook_secret", "auth.token"] {
            assert_eq!(shown[secret], "***", "{secret}");
        }
        assert_eq!(shown["org_metadata_key"], "org_id");
        assert_eq!(shown["analytics_url"], "https://x");
    }
}

/// An HTTP request a plugin asks the host to send (`http-send`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer to an [`OutboundRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What one poll of one target produced, per the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PollOutcome {
    pub records: Vec<RawRecord>,
    /// `None` keeps the current cursor.
    pub next_cursor: Option<String>,
    /// More is ready now: poll again without waiting.
    pub more: bool,
}
