//! Ingest receipts, health and readiness, and `/v1/plugins` on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::text::Time;
use crate::registry::LoadFailure;
use crate::reload::ConfigStatus;
use crate::store::PollState;

/// The answer to a webhook: committed (or a duplicate of one that was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    pub event_id: String,
    /// Records the delivery yielded.
    pub records: usize,
    /// True when this event id was already stored: nothing was written.
    pub duplicate: bool,
}

impl From<crate::ingest::Receipt> for Receipt {
    fn from(r: crate::ingest::Receipt) -> Self {
        Self { event_id: r.event_id, records: r.records, duplicate: r.duplicate }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
}

/// How this process's org standings follow other replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replication {
    /// Our commits applied but not yet reported back by the change feed.
    pub unconfirmed: usize,
    /// Standings rebuilt after a gap in the feed.
    pub rebuilds: u64,
}

impl From<crate::orgs::ReplicationStatus> for Replication {
    fn from(r: crate::orgs::ReplicationStatus) -> Self {
        Self { unconfirmed: r.unconfirmed, rebuilds: r.rebuilds }
    }
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub status: ReadyStatus,
    /// Plugins loaded.
    pub plugins: usize,
    pub replication: Replication,
}

/// A plugin target's poll state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Poll {
    pub target: String,
    pub cursor: Option<String>,
    pub last_success: Option<Time>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Time>,
    pub consecutive_failures: i64,
    pub next_run: Time,
    pub lease_holder: Option<String>,
}

impl From<&PollState> for Poll {
    fn from(s: &PollState) -> Self {
        Self {
            target: s.target.clone(),
            cursor: s.cursor.clone(),
            last_success: Time::at_opt(s.last_success_ms),
            last_error: s.last_error.clone(),
            last_error_at: Time::at_opt(s.last_error_ms),
            consecutive_failures: s.consecutive_failures,
            next_run: Time::at(s.next_run_ms),
            lease_holder: s.lease_holder.clone(),
        }
    }
}

/// A plugin file that could not be loaded (or reloaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    pub file: String,
    pub error: String,
    pub at: Time,
}

impl From<&LoadFailure> for Failure {
    fn from(f: &LoadFailure) -> Self {
        Self { file: f.file.display().to_string(), error: f.error.clone(), at: Time::at(f.at_ms) }
    }
}

/// The last refused reload of a loaded plugin's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReloadError {
    pub error: String,
    pub at: Time,
}

/// A loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    /// `push`, `pull` or `push+pull`.
    pub modes: String,
    pub description: String,
    /// SHA-256 of the component file.
    pub hash: String,
    /// The WIT package version the component was built against.
    pub wit_version: String,
    pub compiled_from_cache: bool,
    pub file: String,
    pub loaded_at: Time,
    pub last_reload_error: Option<ReloadError>,
    /// The plugin's config section, secrets shown as `***`.
    pub config: std::collections::BTreeMap<String, String>,
    pub polls: Vec<Poll>,
}

/// The config file as the running gateway has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigReload {
    pub source: String,
    pub loaded_at: Time,
    /// The last refused change, while the config running is older.
    pub last_error: Option<String>,
    pub last_error_at: Option<Time>,
    /// Keys changed in the file that only a restart applies.
    pub restart_required: Vec<String>,
    pub reloads: u64,
    pub reload_failures: u64,
}

impl From<&ConfigStatus> for ConfigReload {
    fn from(c: &ConfigStatus) -> Self {
        Self {
            source: c.source.clone(),
            loaded_at: Time::at(c.loaded_at_ms),
            last_error: c.last_error.clone(),
            last_error_at: Time::at_opt(c.last_error_at_ms),
            restart_required: c.restart_required.clone(),
            reloads: c.reloads,
            reload_failures: c.reload_failures,
        }
    }
}

/// Hot reload's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reload {
    /// Whether the plugins directory and config file are watched.
    pub watching: bool,
    /// The WIT package this host implements, e.g. `meterd:provider@0.1.0`.
    pub host_wit: String,
    pub accepts_wit: String,
    pub plugin_reloads: u64,
    pub plugin_reload_failures: u64,
    pub config: ConfigReload,
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plugins {
    pub plugins: Vec<Plugin>,
    /// Files refused at the last load or reload.
    pub failures: Vec<Failure>,
    /// None until serving starts.
    pub reload: Option<Reload>,
}
