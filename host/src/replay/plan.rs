//! What replaying deliveries changes, decided without I/O: the records a
//! plugin yields now for each delivery against the records stored.
//!
//! The rules (ARCHITECTURE.md, "Replay"):
//! * A stored record belongs to the delivery that last set it. A key the
//!   delivery yields that another delivery (or a poll) last set is left
//!   alone: replaying an old delivery never undoes a later correction.
//! * Same key, same identity, another quantity: corrected.
//! * A key the delivery set but no longer yields: withdrawn (corrected to 0).
//! * A key nothing holds: added. If two deliveries of one page add it, the
//!   later one's record is added, as ingest would have kept the later one.
//! * Same key but another org, subject, metric, kind, time, window or
//!   attributes: a conflict, reported and left alone (a correction changes
//!   a quantity, never what the quantity is of).

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;

use crate::record::UsageRecord;
use crate::store::{RecordFix, StoredRecord, with_seqs};

/// What one delivery yields when replayed (validated records).
#[derive(Debug, Clone)]
pub struct Replayed {
    pub delivery_id: i64,
    pub records: Vec<UsageRecord>,
}

/// One change to stored usage.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The delivery yields another quantity for a record it set.
    Corrected { record: StoredRecord, to: Decimal },
    /// The delivery no longer yields a record it set: corrected to zero.
    Withdrawn { record: StoredRecord },
    /// The delivery yields a record under a key nothing holds.
    Added { seq: i64, record: UsageRecord },
}

impl Change {
    /// The record as it is stored (`None` for an addition).
    pub fn before(&self) -> Option<&StoredRecord> {
        match self {
            Change::Corrected { record, .. } | Change::Withdrawn { record } => Some(record),
            Change::Added { .. } => None,
        }
    }

    /// The quantity after the change.
    pub fn after(&self) -> Decimal {
        match self {
            Change::Corrected { to, .. } => *to,
            Change::Withdrawn { .. } => Decimal::ZERO,
            Change::Added { record, .. } => record.quantity,
        }
    }

    /// The record the change is about: the stored one, or the added one.
    pub fn record(&self) -> &UsageRecord {
        match self {
            Change::Corrected { record, .. } | Change::Withdrawn { record } => &record.record,
            Change::Added { record, .. } => record,
        }
    }

    pub fn seq(&self) -> i64 {
        match self {
            Change::Corrected { record, .. } | Change::Withdrawn { record } => record.seq,
            Change::Added { seq, .. } => *seq,
        }
    }

    fn fix(&self, delivery_id: i64) -> RecordFix {
        match self {
            Change::Corrected { record, to } => {
                RecordFix::Correct { record: record.clone(), delivery_id, to: *to }
            }
            Change::Withdrawn { record } => {
                RecordFix::Correct { record: record.clone(), delivery_id, to: Decimal::ZERO }
            }
            Change::Added { seq, record } => {
                RecordFix::Insert { delivery_id, seq: *seq, record: record.clone() }
            }
        }
    }
}

/// A key whose stored record is not what the delivery now yields beyond
/// its quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub delivery_id: i64,
    pub stored: StoredRecord,
    pub replayed: UsageRecord,
    /// Which fields differ, e.g. `["metric"]`.
    pub fields: Vec<&'static str>,
}

/// What replaying a page of deliveries changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// (delivery id, change), in delivery order.
    pub changes: Vec<(i64, Change)>,
    pub conflicts: Vec<Conflict>,
    /// Records yielded again exactly as stored (or withdrawn already).
    pub unchanged: usize,
    /// Records yielded under a key another delivery or a poll last set.
    pub superseded: usize,
}

impl Plan {
    /// The writes that carry the changes out.
    pub fn fixes(&self) -> Vec<RecordFix> {
        self.changes.iter().map(|(delivery_id, change)| change.fix(*delivery_id)).collect()
    }

    /// The deliveries with at least one change.
    pub fn changed_deliveries(&self) -> HashSet<i64> {
        self.changes.iter().map(|(delivery_id, _)| *delivery_id).collect()
    }
}

/// Compares what `replayed` deliveries (in the order received) yield now
/// with the `stored` records they set or whose keys they yield.
pub fn plan(replayed: &[Replayed], stored: &[StoredRecord]) -> Plan {
    let by_key: HashMap<(&str, i64), &StoredRecord> =
        stored.iter().map(|s| ((s.record.event_id.as_str(), s.seq), s)).collect();
    let mut by_delivery: HashMap<i64, Vec<&StoredRecord>> = HashMap::new();
    for s in stored {
        if let Some(delivery_id) = s.delivery_id {
            by_delivery.entry(delivery_id).or_default().push(s);
        }
    }
    let mut plan = Plan::default();
    // Keys this page adds, and where in `plan.changes` their addition is.
    let mut added: HashMap<(String, i64), usize> = HashMap::new();
    for delivery in replayed {
        let mut yielded: HashSet<(&str, i64)> = HashSet::new();
        for (seq, record) in with_seqs(&delivery.records) {
            yielded.insert((record.event_id.as_str(), seq));
            match by_key.get(&(record.event_id.as_str(), seq)) {
                None => {
                    let change = (delivery.delivery_id, Change::Added { seq, record: record.clone() });
                    match added.get(&(record.event_id.clone(), seq)) {
                        Some(&at) => plan.changes[at] = change,
                        None => {
                            added.insert((record.event_id.clone(), seq), plan.changes.len());
                            plan.changes.push(change);
                        }
                    }
                }
                Some(s) if s.delivery_id != Some(delivery.delivery_id) => plan.superseded += 1,
                Some(s) => {
                    let fields = identity_differences(&s.record, record);
                    if !fields.is_empty() {
                        plan.conflicts.push(Conflict {
                            delivery_id: delivery.delivery_id,
                            stored: (*s).clone(),
                            replayed: record.clone(),
                            fields,
                        });
                    } else if s.record.quantity == record.quantity {
                        plan.unchanged += 1;
                    } else {
                        let change = Change::Corrected { record: (*s).clone(), to: record.quantity };
                        plan.changes.push((delivery.delivery_id, change));
                    }
                }
            }
        }
        let mut owned = by_delivery.get(&delivery.delivery_id).cloned().unwrap_or_default();
        owned.sort_by_key(|s| s.id);
        for s in owned {
            if yielded.contains(&(s.record.event_id.as_str(), s.seq)) {
                continue;
            }
            if s.record.quantity.is_zero() {
                plan.unchanged += 1;
            } else {
                plan.changes.push((delivery.delivery_id, Change::Withdrawn { record: s.clone() }));
            }
        }
    }
    plan
}

/// The fields other than the quantity in which two records differ.
fn identity_differences(stored: &UsageRecord, now: &UsageRecord) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut differs = |name, different: bool| {
        if different {
            fields.push(name);
        }
    };
    differs("org_id", stored.org_id != now.org_id);
    differs("subject", stored.subject != now.subject);
    differs("metric", stored.metric != now.metric);
    differs("kind", stored.kind != now.kind);
    differs("at", stored.at_ms != now.at_ms);
    differs("window_start", stored.window_start_ms != now.window_start_ms);
    differs("attributes", stored.attributes != now.attributes);
    fields
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meter::Kind;

    fn record(event_id: &str, metric: &str, quantity: &str) -> UsageRecord {
        UsageRecord {
            event_id: event_id.to_owned(),
            org_id: "acme".to_owned(),
            subject: "sbx-1".to_owned(),
            metric: metric.to_owned(),
            kind: Kind::Delta,
            quantity: meterd_units::parse_quantity(quantity).unwrap(),
            at_ms: 1_754_513_976_000,
            window_start_ms: None,
            attributes: BTreeMap::new(),
        }
    }

    fn stored(id: i64, delivery_id: Option<i64>, seq: i64, record: UsageRecord) -> StoredRecord {
        StoredRecord { id, delivery_id, seq, record }
    }

    fn q(text: &str) -> Decimal {
        meterd_units::parse_quantity(text).unwrap()
    }

    /// A killed sandbox: CPU, RAM and the active level, all under one event id.
    fn killed(ram: &str) -> Vec<UsageRecord> {
        vec![record("ev1", "cpu", "144"), record("ev1", "ram", ram), record("ev1", "active", "0")]
    }

    fn stored_killed(ram: &str) -> Vec<StoredRecord> {
        killed(ram)
            .into_iter()
            .enumerate()
            .map(|(i, r)| stored(10 + i as i64, Some(1), i as i64, r))
            .collect()
    }

    #[test]
    fn the_same_answer_changes_nothing() {
        let plan = plan(&[Replayed { delivery_id: 1, records: killed("9.216") }], &stored_killed("9.216"));
        assert_eq!(plan, Plan { unchanged: 3, ..Plan::default() });
        assert!(plan.fixes().is_empty());
    }

    #[test]
    fn another_quantity_is_a_correction_of_that_record_only() {
        let stored = stored_killed("9.437184");
        let plan = plan(&[Replayed { delivery_id: 1, records: killed("9.216") }], &stored);
        assert_eq!(plan.changes, [(1, Change::Corrected { record: stored[1].clone(), to: q("9.216") })]);
        assert_eq!((plan.unchanged, plan.superseded), (2, 0));
        assert_eq!(
            plan.fixes(),
            [RecordFix::Correct { record: stored[1].clone(), delivery_id: 1, to: q("9.216") }]
        );
        // Scale is not a difference: 9.2160 is 9.216.
        let same =
            super::plan(&[Replayed { delivery_id: 1, records: killed("9.2160") }], &stored_killed("9.216"));
        assert!(same.changes.is_empty());
    }

    #[test]
    fn a_record_no_longer_yielded_is_withdrawn_and_a_new_one_added() {
        // Now only CPU and active, plus a GPU record.
        let now = vec![record("ev1", "cpu", "144"), record("ev1", "active", "0"), record("ev1", "gpu", "5")];
        let plan = plan(&[Replayed { delivery_id: 1, records: now.clone() }], &stored_killed("9.216"));
        // Seqs follow the answer: active moved from seq 2 to seq 1, so the
        // old seq 1 (ram) now carries active and conflicts on its metric;
        // seq 2 (old active) now carries gpu and conflicts too.
        assert_eq!(plan.conflicts.len(), 2);
        assert_eq!(plan.conflicts[0].fields, ["metric"]);
        assert!(plan.changes.is_empty());
        // With stable seqs (distinct event ids per fact) the same change is
        // a withdrawal and an addition.
        let per_fact = |metrics: &[(&str, &str)]| -> Vec<UsageRecord> {
            metrics.iter().map(|(m, quantity)| record(&format!("ev1:{m}"), m, quantity)).collect()
        };
        let before: Vec<StoredRecord> = per_fact(&[("cpu", "144"), ("ram", "9.216"), ("active", "0")])
            .into_iter()
            .enumerate()
            .map(|(i, r)| stored(20 + i as i64, Some(1), 0, r))
            .collect();
        let after = per_fact(&[("cpu", "144"), ("active", "0"), ("gpu", "5")]);
        let plan = super::plan(&[Replayed { delivery_id: 1, records: after.clone() }], &before);
        assert_eq!(
            plan.changes,
            [
                (1, Change::Added { seq: 0, record: after[2].clone() }),
                (1, Change::Withdrawn { record: before[1].clone() }),
            ]
        );
        assert_eq!(plan.unchanged, 2);
        assert_eq!(plan.changes[1].1.after(), Decimal::ZERO);
    }

    #[test]
    fn a_record_withdrawn_already_stays_unchanged() {
        let mut stored = stored_killed("9.216");
        stored[1].record.quantity = Decimal::ZERO;
        let now = vec![record("ev1", "cpu", "144")];
        let plan = plan(&[Replayed { delivery_id: 1, records: now }], &stored[..2]);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.unchanged, 2);
    }

    #[test]
    fn a_key_another_delivery_or_a_poll_last_set_is_left_alone() {
        let later = stored(30, Some(2), 0, record("shared", "cpu", "7"));
        let polled = stored(31, None, 0, record("window", "cpu", "8"));
        let now = vec![record("shared", "cpu", "1"), record("window", "cpu", "2")];
        let plan = plan(&[Replayed { delivery_id: 1, records: now }], &[later, polled]);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.superseded, 2);
    }

    #[test]
    fn a_key_two_deliveries_add_is_added_once_with_the_later_record() {
        let first = Replayed { delivery_id: 1, records: vec![record("k", "cpu", "1")] };
        let second = Replayed { delivery_id: 2, records: vec![record("k", "cpu", "2")] };
        let plan = plan(&[first, second], &[]);
        assert_eq!(plan.changes, [(2, Change::Added { seq: 0, record: record("k", "cpu", "2") })]);
        assert_eq!(plan.changed_deliveries(), HashSet::from([2]));
    }

    #[test]
    fn any_identity_field_is_a_conflict_never_a_correction() {
        let base = record("ev1", "cpu", "1");
        let variants: [(&str, UsageRecord); 7] = [
            ("org_id", UsageRecord { org_id: "other".to_owned(), ..base.clone() }),
            ("subject", UsageRecord { subject: "sbx-2".to_owned(), ..base.clone() }),
            ("metric", UsageRecord { metric: "ram".to_owned(), ..base.clone() }),
            ("kind", UsageRecord { kind: Kind::Level, ..base.clone() }),
            ("at", UsageRecord { at_ms: base.at_ms + 1, ..base.clone() }),
            ("window_start", UsageRecord { window_start_ms: Some(base.at_ms - 1), ..base.clone() }),
            (
                "attributes",
                UsageRecord {
                    attributes: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
                    ..base.clone()
                },
            ),
        ];
        for (field, now) in variants {
            let now = UsageRecord { quantity: q("2"), ..now };
            let plan = plan(
                &[Replayed { delivery_id: 1, records: vec![now] }],
                &[stored(1, Some(1), 0, base.clone())],
            );
            assert!(plan.changes.is_empty(), "{field}");
            assert_eq!(plan.conflicts.len(), 1, "{field}");
            assert_eq!(plan.conflicts[0].fields, [field]);
        }
    }
}
