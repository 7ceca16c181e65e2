//! `/v1/replays` on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::text::{Quantity, Time};
use crate::replay::report;
use crate::replay::{JobState, JobView};

/// Parts of a [`Report`] that are the replay's own types, on the wire as they are.
pub use crate::replay::report::{ChangeKind, DeliveryCounts, RecordCounts};

/// `POST /v1/replays`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReplay {
    /// The plugin whose stored payloads to replay.
    pub plugin: String,
    /// Deliveries received at or after this time (default: the first).
    pub from: Option<Time>,
    /// Deliveries received before this time (default: now); after `from`.
    pub to: Option<Time>,
    /// Report what would change; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    Running,
    Done,
    /// Stopped early (the database failed); what was applied stays applied.
    Failed,
}

/// The net change of one (org, metric) over the changed records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricChange {
    pub org_id: String,
    pub metric: String,
    /// Changed records of this metric.
    pub records: u64,
    /// Their quantities before and after, summed.
    pub before: Quantity,
    pub after: Quantity,
    pub delta: Quantity,
}

/// One changed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// The delivery (its event id) whose replay made the change.
    pub delivery: String,
    pub change: ChangeKind,
    pub event_id: String,
    pub seq: i64,
    pub org_id: String,
    pub subject: String,
    pub metric: String,
    /// None for an added record.
    pub before: Option<Quantity>,
    pub after: Quantity,
}

/// A record whose identity changed: reported, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Conflict {
    pub delivery: String,
    pub event_id: String,
    pub seq: i64,
    /// The fields that differ besides the quantity.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    pub delivery: String,
    pub error: String,
}

/// What a replay found so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    pub deliveries: DeliveryCounts,
    pub records: RecordCounts,
    /// By org, then metric.
    pub by_metric: Vec<MetricChange>,
    /// The first 1,000 changes.
    pub changes: Vec<Change>,
    pub conflicts: Vec<Conflict>,
    pub failures: Vec<Failure>,
    /// Whether `changes`, `conflicts` or `failures` stop at 1,000.
    pub truncated: bool,
}

impl From<&report::Report> for Report {
    fn from(r: &report::Report) -> Self {
        Self {
            deliveries: r.deliveries.clone(),
            records: r.records.clone(),
            by_metric: r
                .by_metric
                .iter()
                .map(|m| MetricChange {
                    org_id: m.org_id.clone(),
                    metric: m.metric.clone(),
                    records: m.records,
                    before: Quantity::of(m.before),
                    after: Quantity::of(m.after),
                    delta: Quantity::of(m.delta),
                })
                .collect(),
            changes: r
                .changes
                .iter()
                .map(|c| Change {
                    delivery: c.delivery.clone(),
                    change: c.change,
                    event_id: c.event_id.clone(),
                    seq: c.seq,
                    org_id: c.org_id.clone(),
                    subject: c.subject.clone(),
                    metric: c.metric.clone(),
                    before: c.before.map(Quantity::of),
                    after: Quantity::of(c.after),
                })
                .collect(),
            conflicts: r
                .conflicts
                .iter()
                .map(|c| Conflict {
                    delivery: c.delivery.clone(),
                    event_id: c.event_id.clone(),
                    seq: c.seq,
                    fields: c.fields.iter().map(|f| (*f).to_owned()).collect(),
                })
                .collect(),
            failures: r
                .failures
                .iter()
                .map(|f| Failure { delivery: f.delivery.clone(), error: f.error.clone() })
                .collect(),
            truncated: r.truncated,
        }
    }
}

/// A replay job: `GET /v1/replays/{id}` and the answer to starting one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayJob {
    pub id: String,
    pub plugin: String,
    /// The plugin build that replays (its `info()` version and hash).
    pub plugin_version: String,
    pub plugin_hash: String,
    pub from: Time,
    pub to: Time,
    pub dry_run: bool,
    pub started_at: Time,
    pub finished_at: Option<Time>,
    pub state: ReplayState,
    /// Why a failed job stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub report: Report,
}

impl From<&JobView> for ReplayJob {
    fn from(v: &JobView) -> Self {
        let (state, error) = match &v.state {
            JobState::Running => (ReplayState::Running, None),
            JobState::Done => (ReplayState::Done, None),
            JobState::Failed(e) => (ReplayState::Failed, Some(e.clone())),
        };
        Self {
            id: v.id.clone(),
            plugin: v.plugin.clone(),
            plugin_version: v.plugin_version.clone(),
            plugin_hash: v.plugin_hash.clone(),
            from: Time::at(v.from_ms),
            to: Time::at(v.to_ms),
            dry_run: v.dry_run,
            started_at: Time::at(v.started_at_ms),
            finished_at: Time::at_opt(v.finished_at_ms),
            state,
            error,
            report: (&v.report).into(),
        }
    }
}
