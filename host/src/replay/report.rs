//! What a replay found, accumulated page by page: counts, the net change
//! per (org, metric), and the first changes, conflicts and failures in
//! detail. `api::replays` is how the API shows it.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::plan::{Change, Conflict, Plan};

/// How many changes, conflicts and failures a report lists one by one;
/// the counts and per-metric totals always cover everything.
pub const LISTED: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    /// Deliveries in the range when the replay started.
    pub total: u64,
    /// Deliveries handled so far (replayed, purged or failed).
    pub done: u64,
    /// Replayed, with at least one change.
    pub changed: u64,
    /// Replayed, nothing to change.
    pub unchanged: u64,
    /// Payload emptied by retention: cannot be replayed.
    pub purged: u64,
    /// The plugin refused or failed the payload now: left as stored.
    pub failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordCounts {
    pub corrected: u64,
    pub withdrawn: u64,
    pub added: u64,
    pub unchanged: u64,
    pub superseded: u64,
    pub conflicts: u64,
}

/// The net change of one (org, metric) over the changed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricChange {
    pub org_id: String,
    pub metric: String,
    /// Changed records of this metric.
    pub records: u64,
    /// Their quantities before and after, summed.
    pub before: Decimal,
    pub after: Decimal,
    pub delta: Decimal,
}

/// What a replay did to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Corrected,
    Withdrawn,
    Added,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Corrected => "corrected",
            Self::Withdrawn => "withdrawn",
            Self::Added => "added",
        }
    }
}

/// One changed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLine {
    /// The delivery (its event id) whose replay made the change.
    pub delivery: String,
    pub change: ChangeKind,
    pub event_id: String,
    pub seq: i64,
    pub org_id: String,
    pub subject: String,
    pub metric: String,
    pub before: Option<Decimal>,
    pub after: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictLine {
    pub delivery: String,
    pub event_id: String,
    pub seq: i64,
    /// The fields that differ besides the quantity.
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureLine {
    pub delivery: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub deliveries: DeliveryCounts,
    pub records: RecordCounts,
    /// By org, then metric.
    pub by_metric: Vec<MetricChange>,
    /// The first [`LISTED`] changes.
    pub changes: Vec<ChangeLine>,
    pub conflicts: Vec<ConflictLine>,
    pub failures: Vec<FailureLine>,
    /// Whether `changes`, `conflicts` or `failures` stop at [`LISTED`].
    pub truncated: bool,
    totals: BTreeMap<(String, String), (u64, Decimal, Decimal)>,
}

impl Report {
    pub fn new(total: u64) -> Self {
        Report { deliveries: DeliveryCounts { total, ..DeliveryCounts::default() }, ..Report::default() }
    }

    /// Adds a page's plan; `event_of` names a delivery by its event id.
    pub fn add_plan(&mut self, plan: &Plan, replayed: u64, event_of: impl Fn(i64) -> String) {
        let changed = plan.changed_deliveries().len() as u64;
        self.deliveries.done += replayed;
        self.deliveries.changed += changed;
        self.deliveries.unchanged += replayed - changed.min(replayed);
        self.records.unchanged += plan.unchanged as u64;
        self.records.superseded += plan.superseded as u64;
        self.records.conflicts += plan.conflicts.len() as u64;
        for (delivery_id, change) in &plan.changes {
            self.add_change(&event_of(*delivery_id), change);
        }
        for conflict in &plan.conflicts {
            self.add_conflict(&event_of(conflict.delivery_id), conflict);
        }
        self.by_metric = self
            .totals
            .iter()
            .map(|((org_id, metric), (records, before, after))| MetricChange {
                org_id: org_id.clone(),
                metric: metric.clone(),
                records: *records,
                before: *before,
                after: *after,
                delta: after - before,
            })
            .collect();
    }

    fn add_change(&mut self, delivery: &str, change: &Change) {
        let kind = match change {
            Change::Corrected { .. } => {
                self.records.corrected += 1;
                ChangeKind::Corrected
            }
            Change::Withdrawn { .. } => {
                self.records.withdrawn += 1;
                ChangeKind::Withdrawn
            }
            Change::Added { .. } => {
                self.records.added += 1;
                ChangeKind::Added
            }
        };
        let record = change.record();
        let before = change.before().map(|s| s.record.quantity);
        let total = self.totals.entry((record.org_id.clone(), record.metric.clone())).or_default();
        total.0 += 1;
        total.1 += before.unwrap_or_default();
        total.2 += change.after();
        if self.changes.len() < LISTED {
            self.changes.push(ChangeLine {
                delivery: delivery.to_owned(),
                change: kind,
                event_id: record.event_id.clone(),
                seq: change.seq(),
                org_id: record.org_id.clone(),
                subject: record.subject.clone(),
                metric: record.metric.clone(),
                before,
                after: change.after(),
            });
        } else {
            self.truncated = true;
        }
    }

    fn add_conflict(&mut self, delivery: &str, conflict: &Conflict) {
        if self.conflicts.len() < LISTED {
            self.conflicts.push(ConflictLine {
                delivery: delivery.to_owned(),
                event_id: conflict.stored.record.event_id.clone(),
                seq: conflict.stored.seq,
                fields: conflict.fields.clone(),
            });
        } else {
            self.truncated = true;
        }
    }

    /// A delivery whose payload retention emptied.
    pub fn add_purged(&mut self) {
        self.deliveries.done += 1;
        self.deliveries.purged += 1;
    }

    /// A delivery the plugin refused or failed now.
    pub fn add_failure(&mut self, delivery: &str, error: String) {
        self.deliveries.done += 1;
        self.deliveries.failed += 1;
        if self.failures.len() < LISTED {
            self.failures.push(FailureLine { delivery: delivery.to_owned(), error });
        } else {
            self.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::plan::{Replayed, plan};
    use crate::store::StoredRecord;

    fn record(event_id: &str, metric: &str, quantity: &str) -> crate::record::UsageRecord {
        crate::record::UsageRecord {
            event_id: event_id.to_owned(),
            org_id: "acme".to_owned(),
            subject: "sbx".to_owned(),
            metric: metric.to_owned(),
            kind: crate::meter::Kind::Delta,
            quantity: meterd_units::parse_quantity(quantity).unwrap(),
            at_ms: 1_754_513_976_000,
            window_start_ms: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn totals_per_metric_cover_every_change_and_lists_stop_at_the_limit() {
        let mut report = Report::new(LISTED as u64 + 2);
        for i in 0..=LISTED as i64 {
            let event = format!("ev{i}");
            let stored =
                StoredRecord { id: i, delivery_id: Some(i), seq: 0, record: record(&event, "ram", "1.024") };
            let page =
                plan(&[Replayed { delivery_id: i, records: vec![record(&event, "ram", "1")] }], &[stored]);
            report.add_plan(&page, 1, |id| format!("d{id}"));
        }
        report.add_purged();
        let n = LISTED as u64 + 1;
        assert_eq!(
            report.deliveries,
            DeliveryCounts { total: n + 1, done: n + 1, changed: n, unchanged: 0, purged: 1, failed: 0 }
        );
        assert_eq!(report.records.corrected, n);
        assert_eq!(report.changes.len(), LISTED);
        assert!(report.truncated);
        let ram = &report.by_metric[0];
        assert_eq!((ram.records, ram.delta), (n, Decimal::new(-24, 3) * Decimal::from(n)));
        let json = serde_json::to_value(crate::api::replays::Report::from(&report)).unwrap();
        assert_eq!(json["by_metric"][0]["before"], format!("{}", Decimal::new(1024, 3) * Decimal::from(n)));
        assert_eq!(json["changes"][0]["before"], "1.024");
        assert_eq!(json["changes"][0]["after"], "1");
    }
}
