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
