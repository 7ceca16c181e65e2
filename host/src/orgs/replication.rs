//! Several replicas on one database: keeping each one's standings equal to
//! what the database holds, whoever committed it.
//!
//! A replica applies its own commits inside their transactions (so a check
//! right after an acknowledged webhook sees it) and remembers each as
//! *unconfirmed* under its transaction id. The store's change feed (see
//! `store/feed.rs`) then reports every committed transaction in commit
//! order, its own included:
//!
//! - an unconfirmed transaction of ours: confirmed, nothing to apply;
//! - one the standings' snapshot already includes: skipped;
//! - anything else: another replica's commit, applied (and its thresholds
//!   evaluated here too; fired marks in the database keep notices single).
//!
//! When the feed reports a gap (its connection dropped), the standings are
//! rebuilt from a new snapshot, and the unconfirmed transactions that
//! snapshot does not include are applied on top, in the order they were
//! first applied. The swap happens under the gate, so no commit is applied
//! to the old standings after its changes were copied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Built, Orgs, lock, read, write};
use crate::plans::standing::OrgStanding;
use crate::store::{FeedEvent, FeedMessage, OrgEffect, StoreError, TxId, Visibility};

/// What a replica knows about its place in the feed.
pub(super) struct Replication {
    /// Our transactions applied to the standings that the feed has not
    /// reported committed yet, in the order they were applied.
    unconfirmed: Vec<(TxId, Vec<OrgEffect>)>,
    /// Which transactions the standings' snapshot includes.
    visibility: Option<Visibility>,
    /// Rebuilds after gaps, for status pages.
    pub(super) rebuilds: u64,
}

impl Replication {
    pub(super) fn new(visibility: Option<Visibility>) -> Self {
        Self { unconfirmed: Vec::new(), visibility, rebuilds: 0 }
    }

    pub(super) fn applied_locally(&mut self, tx: TxId, effects: &[OrgEffect]) {
        self.unconfirmed.push((tx, effects.to_vec()));
    }

    /// Drops `tx` from the unconfirmed; whether it was there.
    pub(super) fn forget(&mut self, tx: TxId) -> bool {
        match self.unconfirmed.iter().position(|(t, _)| *t == tx) {
            Some(i) => {
                self.unconfirmed.remove(i);
                true
            }
            None => false,
        }
    }

    fn is_unconfirmed(&self, tx: TxId) -> bool {
        self.unconfirmed.iter().any(|(t, _)| *t == tx)
    }

    fn in_snapshot(&self, tx: TxId) -> bool {
        self.visibility.as_ref().is_some_and(|v| v.sees(tx))
    }
}

/// How the standings relate to the feed, for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// Our commits applied but not yet reported back by the feed.
    pub unconfirmed: usize,
    pub rebuilds: u64,
}

impl Orgs {
    pub fn replication_status(&self) -> ReplicationStatus {
        let r = lock(&self.replication);
        ReplicationStatus { unconfirmed: r.unconfirmed.len(), rebuilds: r.rebuilds }
    }

    /// Follows the feed until it ends or `stop` is set.
    pub async fn follow(
        self: Arc<Self>,
        mut feed: mpsc::UnboundedReceiver<FeedEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                event = feed.recv() => event,
                _ = stop.changed() => return,
            };
            match event {
                None => return,
                Some(FeedEvent::Committed { tx, last, message }) => {
                    self.apply_committed(tx, last, message, crate::clock::now_ms()).await;
                }
                Some(FeedEvent::Gap) => {
                    let mut delay = Duration::from_millis(100);
                    while let Err(e) = self.rebuild(crate::clock::now_ms()).await {
                        tracing::error!(error = %e, "rebuilding org standings after a feed gap failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = stop.changed() => return,
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// One part of a committed transaction's message, from the feed.
    pub(super) async fn apply_committed(&self, tx: TxId, last: bool, message: FeedMessage, now_ms: i64) {
        let notices = {
            let _gate = read(&self.gate);
            {
                let mut replication = lock(&self.replication);
                if replication.is_unconfirmed(tx) {
                    if last {
                        replication.forget(tx);
                    }
                    return;
                }
                if replication.in_snapshot(tx) {
                    return;
                }
            }
            {
                let mut assigned = write(&self.assigned);
                for plan in message.plans {
                    // Feed order is commit order; the timestamp guards
                    // against our own older assignment echoing back.
                    if assigned.get(&plan.org_id).is_none_or(|a| a.assigned_at_ms <= plan.assigned_at_ms) {
                        assigned.insert(plan.org_id.clone(), plan);
                    }
                }
            }
            lock(&self.credit_dirty).extend(message.grants);
            {
                let mut fired = lock(&self.fired);
                let period = fired.0;
                fired.1.extend(
                    message.fired.into_iter().filter(|f| f.2 == period).map(|(org, rule, _)| (org, rule)),
                );
            }
            self.apply_changes(&message.effects, now_ms)
        };
        if notices.is_empty() {
            return;
        }
        match self.store.record_notices(&notices, now_ms).await {
            Ok(rows) if rows > 0 => self.outbox_wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                // Level-triggered: the next commit or sweep tries again.
                tracing::warn!(error = %e, "storing notices for another replica's commit failed");
                self.unfire(&notices);
            }
        }
    }

    /// Replaces the standings, assignments and fired marks with a new
    /// snapshot plus our commits it does not include.
    pub async fn rebuild(&self, now_ms: i64) -> Result<(), StoreError> {
        let snapshot = self.store.standing_snapshot(now_ms).await?;
        let mut built = Built::new(snapshot, now_ms)?;
        let _gate = write(&self.gate);
        let mut replication = lock(&self.replication);
        if let Some(visibility) = &built.visibility {
            replication.unconfirmed.retain(|(tx, _)| !visibility.sees(*tx));
        }
        for OrgEffect { org_id, metric, effect } in replication.unconfirmed.iter().flat_map(|(_, c)| c) {
            let org = built.standings.entry(org_id.clone()).or_insert_with(|| OrgStanding::new(now_ms));
            if let Err(e) = org.roll_to(now_ms).and_then(|()| org.apply(metric, effect)) {
                tracing::error!(org = %org_id, error = %e, "applying an unconfirmed record after a rebuild failed");
            }
        }
        replication.visibility = built.visibility.take();
        replication.rebuilds += 1;
        lock(&self.credit_dirty).extend(built.orgs());
        {
            let mut fired = lock(&self.fired);
            if fired.0 == built.period_start_ms {
                fired.1.extend(built.fired);
            } else {
                *fired = (built.period_start_ms, built.fired);
            }
        }
        *write(&self.assigned) = built.assigned;
        *write(&self.standings) =
            built.standings.into_iter().map(|(k, v)| (k, Arc::new(std::sync::Mutex::new(v)))).collect();
        tracing::info!(
            unconfirmed = replication.unconfirmed.len(),
            "org standings rebuilt from the database"
        );
        Ok(())
    }
}
