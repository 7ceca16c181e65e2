//! Tests' stand-in for the store: holds every record of one org and turns
//! each record change into the effects the store's rollup maintenance
//! would report, with the same pure functions (`Neighbourhood` over the
//! subject's whole history, `runs_of` before and after).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{Change, Effect, Run, run_effects, runs_of};
use crate::meter::Kind;
use crate::meter::rollup::hour_of;
use crate::meter::rollup::write::Neighbourhood;
use crate::plans::SANDBOX_ACTIVE_METRIC;

#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    /// (metric, subject) → instant → the level quantities stored there.
    levels: BTreeMap<(String, String), BTreeMap<i64, Vec<Decimal>>>,
}

impl Ledger {
    /// Records `change` and returns what it changes, by metric.
    pub(crate) fn effects(&mut self, change: &Change) -> Vec<(String, Effect)> {
        let metric = change.metric.clone();
        let delta = match change.kind {
            Kind::Delta => change.quantity - change.previous.unwrap_or(Decimal::ZERO),
            Kind::Level => Decimal::ZERO,
        };
        let added = i64::from(change.previous.is_none());
        let mut out = vec![(metric.clone(), Effect::Records { at_ms: hour_of(change.at_ms), added, delta })];
        if change.kind == Kind::Delta {
            return out;
        }
        let key = (metric.clone(), change.subject.clone());
        let runs_before = self.runs(&key);
        let history = self.levels.entry(key.clone()).or_default();
        let at = history.entry(change.at_ms).or_default();
        if let Some(previous) = change.previous
            && let Some(i) = at.iter().position(|q| *q == previous)
        {
            at.swap_remove(i);
        }
        at.push(change.quantity);
        let hood = Neighbourhood {
            stored: history.clone(),
            written: BTreeMap::from([(change.at_ms, vec![(change.quantity, change.previous)])]),
        };
        for (at_ms, step) in hood.step_changes().expect("test steps fit") {
            out.push((metric.clone(), Effect::Step { at_ms, change: step }));
        }
        if metric == SANDBOX_ACTIVE_METRIC {
            let runs_after = self.runs(&key);
            out.extend(run_effects(&runs_before, &runs_after).into_iter().map(|e| (metric.clone(), e)));
        }
        out
    }

    fn runs(&self, key: &(String, String)) -> Vec<Run> {
        let records: Vec<(i64, Decimal)> = self
            .levels
            .get(key)
            .into_iter()
            .flat_map(|h| h.iter().flat_map(|(&t, qs)| qs.iter().map(move |&q| (t, q))))
            .collect();
        runs_of(&key.1, &records)
    }

    /// Every closed run of `sandbox_active`, as the store's run table holds.
    pub(crate) fn closed_runs(&self) -> Vec<Run> {
        self.levels
            .keys()
            .filter(|(m, _)| m == SANDBOX_ACTIVE_METRIC)
            .flat_map(|key| self.runs(key))
            .filter(|r| r.ended_ms.is_some())
            .collect()
    }
}

impl Ledger {
    /// Forgets `change` (the inverse of [`Ledger::effects`]'s recording).
    pub(crate) fn undo(&mut self, change: &Change) {
        if change.kind == Kind::Delta {
            return;
        }
        let key = (change.metric.clone(), change.subject.clone());
        let Some(history) = self.levels.get_mut(&key) else { return };
        if let Some(at) = history.get_mut(&change.at_ms) {
            if let Some(i) = at.iter().position(|q| *q == change.quantity) {
                at.swap_remove(i);
            }
            at.extend(change.previous);
            if at.is_empty() {
                history.remove(&change.at_ms);
            }
        }
        if history.is_empty() {
            self.levels.remove(&key);
        }
    }

    /// The org's peak level of `metric` in `period`, by the reference
    /// engine (what the store's rollups answer).
    pub(crate) fn max(&self, metric: &str, period: crate::meter::period::Range) -> Decimal {
        use crate::meter::{Aggregation, MeterDef, Point, UsageQuery};
        let point = |subject: &str, at_ms: i64, quantity: Decimal| Point {
            kind: Kind::Level,
            subject: subject.to_owned(),
            quantity,
            at_ms,
            group: None,
        };
        let (mut carry_in, mut points) = (Vec::new(), Vec::new());
        for ((m, subject), history) in &self.levels {
            if m != metric {
                continue;
            }
            if let Some((&at, qs)) = history.range(..period.from_ms).next_back() {
                carry_in.extend(qs.iter().map(|&q| point(subject, at, q)));
            }
            for (&at, qs) in history.range(period.from_ms..period.to_ms) {
                points.extend(qs.iter().map(|&q| point(subject, at, q)));
            }
        }
        let meter = MeterDef {
            name: "max".to_owned(),
            metric: metric.to_owned(),
            aggregation: Aggregation::Max,
            unit: String::new(),
        };
        let query = UsageQuery { range: period, window: None, now_ms: period.to_ms, grouped: false };
        crate::meter::aggregate(&meter, &query, &carry_in, &points).expect("reference aggregates").total
    }
}
