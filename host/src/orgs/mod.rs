//! Orgs, apart from HTTP: plan assignment, grants, entitlements, checks and
//! notification thresholds. Owns the in-memory standing of every org in
//! the current period, kept current by the store's [`CommitHook`] inside
//! each usage transaction, so a check reads memory and never scans records.
//!
//! Locking: the map of orgs is a read-mostly `RwLock`; each org's standing
//! has its own `Mutex`, so checks of one org wait only for commits touching
//! that org. Several replicas on one database keep their standings current
//! through the store's change feed (`replication`).

mod replication;

pub use replication::ReplicationStatus;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use rust_decimal::Decimal;
use serde_json::json;

use crate::meter::Aggregation;
use crate::meter::MeterDef;
use crate::meter::period::{Range, month_containing};
use crate::plans::check::{self, Action, CheckError, Decision, Entitlements};
use crate::plans::credits::{self, CreditReport, Grant};
use crate::plans::rules::{self, Crossing, Rules};
use crate::plans::standing::{Effect, OrgStanding, StoreFacts, Usage};
use crate::plans::{Plan, PlanBook};
use crate::record::MAX_ID_LEN;
use crate::store::{
    CommitHook, NewGrant, Notice, OrgEffect, OrgPlan, StandingSnapshot, Store, StoreError, TxId,
};
use crate::usage::{UsageError, UsageRequest, UsageService};

/// Burn priority of plan credits and of API grants that give none: lower
/// burns first.
pub const DEFAULT_PRIORITY: i32 = 50;

/// What the orgs service acts on; replaced as a whole when config changes.
#[derive(Debug, Clone)]
pub struct Policy {
    pub book: PlanBook,
    pub rules: Rules,
    pub meters: Vec<MeterDef>,
    /// Names of the notification endpoints every notice goes to.
    pub endpoints: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("org id must be 1-{MAX_ID_LEN} bytes and not blank")]
    BadOrgId,
    #[error("unknown plan {plan:?}; plans: {known}")]
    UnknownPlan { plan: String, known: String },
    #[error("{0}")]
    BadGrant(String),
    #[error("{0}")]
    Check(#[from] CheckError),
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// An org's plan as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgView {
    pub org_id: String,
    pub plan: String,
    /// `None`: never assigned, on the default plan.
    pub assigned_at_ms: Option<i64>,
    pub period: Range,
}

/// A grant as asked for over the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub amount: Decimal,
    pub currency: String,
    pub effective_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub priority: Option<i32>,
}

/// Credits: the report and the period's estimated spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    pub currency: String,
    pub report: CreditReport,
    /// Σ this period's meter values × the plan's prices (in memory).
    pub spend_this_period: Decimal,
}

type Shared = Arc<Mutex<OrgStanding>>;

pub struct Orgs {
    store: Arc<dyn Store>,
    policy: RwLock<Arc<Policy>>,
    standings: RwLock<HashMap<String, Shared>>,
    assigned: RwLock<HashMap<String, OrgPlan>>,
    /// (period start, (org, rule)) of notices already fired this period.
    fired: Mutex<(i64, HashSet<(String, String)>)>,
    /// Orgs whose usage changed since the last credit sweep.
    credit_dirty: Mutex<HashSet<String>>,
    /// Woken when new outbox rows are committed.
    pub outbox_wake: tokio::sync::Notify,
    /// Held shared while a commit or a feed message changes standings,
    /// exclusively while a rebuild swaps new ones in.
    gate: RwLock<()>,
    replication: Mutex<replication::Replication>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the data half-updated in
    // a way a later reader would misread worse than a stop would.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn valid_org_id(org_id: &str) -> bool {
    !org_id.trim().is_empty() && org_id.len() <= MAX_ID_LEN
}

impl Orgs {
    /// Builds the standing of every org for the period containing `now_ms`
    /// from the store, and the assignments and fired notices.
    pub async fn load(store: Arc<dyn Store>, policy: Policy, now_ms: i64) -> Result<Arc<Self>, StoreError> {
        let period = month_containing(now_ms);
        let built = Built::new(store.standing_snapshot(now_ms).await?, now_ms)?;
        // Credit rules are evaluated after commits; a crash may have come
        // between a commit and its evaluation, so the first sweep looks at
        // every org.
        let credit_dirty = built.orgs().collect();
        Ok(Arc::new(Self {
            store,
            policy: RwLock::new(Arc::new(policy)),
            standings: RwLock::new(
                built.standings.into_iter().map(|(k, v)| (k, Arc::new(Mutex::new(v)))).collect(),
            ),
            assigned: RwLock::new(built.assigned),
            fired: Mutex::new((period.from_ms, built.fired)),
            credit_dirty: Mutex::new(credit_dirty),
            outbox_wake: tokio::sync::Notify::new(),
            gate: RwLock::new(()),
            replication: Mutex::new(replication::Replication::new(built.visibility)),
        }))
    }

    pub fn policy(&self) -> Arc<Policy> {
        read(&self.policy).clone()
    }

    /// Replaces the policy (plans, rules, meters) as a whole.
    pub fn set_policy(&self, policy: Policy) {
        *write(&self.policy) = Arc::new(policy);
    }

    fn standing(&self, org_id: &str) -> Option<Shared> {
        read(&self.standings).get(org_id).cloned()
    }

    fn standing_or_new(&self, org_id: &str, now_ms: i64) -> Shared {
        if let Some(s) = self.standing(org_id) {
            return s;
        }
        write(&self.standings)
            .entry(org_id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(OrgStanding::new(now_ms))))
            .clone()
    }

    /// Runs `f` on the org's standing rolled to `now_ms` (an empty one for
    /// an org never seen).
    fn with_standing<T>(&self, org_id: &str, now_ms: i64, f: impl FnOnce(&OrgStanding) -> T) -> T {
        match self.standing(org_id) {
            Some(shared) => {
                let mut org = lock(&shared);
                if let Err(e) = org.roll_to(now_ms) {
                    tracing::error!(org = org_id, error = %e, "rolling the period over failed");
                }
                f(&org)
            }
            None => f(&OrgStanding::new(now_ms)),
        }
    }

    fn plan_name(&self, org_id: &str) -> Option<String> {
        read(&self.assigned).get(org_id).map(|p| p.plan.clone())
    }

    fn plan_of<'a>(&self, policy: &'a Policy, org_id: &str) -> &'a Plan {
        policy.book.plan_for(self.plan_name(org_id).as_deref())
    }

    /// What a check of `org_id` reads beyond memory: the period's value of
    /// each of `max_meters` (rollups, O(hours)) and, if `sessions`, the
    /// closed sessions in the period over the plan's limit (an index seek).
    async fn facts<'a>(
        &self,
        policy: &Policy,
        plan: &Plan,
        org_id: &str,
        max_meters: impl Iterator<Item = &'a MeterDef>,
        sessions: bool,
        now_ms: i64,
    ) -> Result<StoreFacts, OrgError> {
        let period = month_containing(now_ms);
        let mut facts = StoreFacts::default();
        let mut usage = None;
        for meter in max_meters.filter(|m| m.aggregation == Aggregation::Max) {
            let usage =
                usage.get_or_insert_with(|| UsageService::new(self.store.clone(), policy.meters.clone()));
            let request = UsageRequest {
                org_id: org_id.to_owned(),
                meter: meter.name.clone(),
                range: period,
                window: None,
                group_by: None,
            };
            facts.max.insert(meter.name.clone(), usage.usage(&request, now_ms).await?.total);
        }
        if sessions && let Some(limit_s) = plan.max_session_seconds {
            let limit_ms = i64::try_from(limit_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
            facts.closed_over_limit = self.store.long_runs(org_id, period.from_ms, limit_ms).await?;
        }
        Ok(facts)
    }

    /// Every org this gateway knows now, sorted: assigned a plan, or with a
    /// standing (usage this period, or written since start). From memory.
    pub fn known(&self) -> Vec<String> {
        let mut orgs: std::collections::BTreeSet<String> = read(&self.assigned).keys().cloned().collect();
        orgs.extend(read(&self.standings).keys().cloned());
        orgs.into_iter().collect()
    }

    pub fn view(&self, org_id: &str, now_ms: i64) -> Result<OrgView, OrgError> {
        check_org(org_id)?;
        let policy = self.policy();
        let assigned = read(&self.assigned).get(org_id).cloned();
        Ok(OrgView {
            org_id: org_id.to_owned(),
            plan: policy.book.plan_for(assigned.as_ref().map(|a| a.plan.as_str())).name.clone(),
            assigned_at_ms: assigned.map(|a| a.assigned_at_ms),
            period: month_containing(now_ms),
        })
    }

    /// Puts the org on `plan`, granting the plan's one-time credit if the
    /// org never had this plan. An org leaving the default plan for the
    /// first time keeps the default plan's credit (stored now, in force
    /// from the start, as it was while unstored).
    pub async fn assign(
        &self,
        org_id: &str,
        plan: &str,
        now_ms: i64,
    ) -> Result<(OrgView, Vec<Grant>), OrgError> {
        check_org(org_id)?;
        let policy = self.policy();
        let target = policy
            .book
            .plan(plan)
            .ok_or_else(|| OrgError::UnknownPlan { plan: plan.to_owned(), known: policy.book.names() })?;
        let mut grants = Vec::new();
        if self.plan_name(org_id).is_none() {
            grants.extend(plan_credit(&policy.book, policy.book.default(), org_id, 0));
        }
        grants.extend(plan_credit(&policy.book, target, org_id, now_ms));
        let assignment =
            OrgPlan { org_id: org_id.to_owned(), plan: target.name.clone(), assigned_at_ms: now_ms };
        let stored = self.store.assign_plan(&assignment, &grants).await?;
        write(&self.assigned).insert(org_id.to_owned(), assignment);
        lock(&self.credit_dirty).insert(org_id.to_owned());
        Ok((self.view(org_id, now_ms)?, stored))
    }

    pub async fn add_grant(
        &self,
        org_id: &str,
        request: GrantRequest,
        now_ms: i64,
    ) -> Result<Grant, OrgError> {
        check_org(org_id)?;
        let policy = self.policy();
        let bad = |m: String| OrgError::BadGrant(m);
        if request.currency != policy.book.currency() {
            return Err(bad(format!(
                "`currency` {:?} is not this gateway's currency {:?}",
                request.currency,
                policy.book.currency()
            )));
        }
        if request.amount <= Decimal::ZERO {
            return Err(bad("`amount` must be greater than 0".to_owned()));
        }
        if request.expires_at_ms.is_some_and(|e| e <= request.effective_at_ms) {
            return Err(bad("`expires_at` must be after `effective_at`".to_owned()));
        }
        let grant = NewGrant {
            org_id: org_id.to_owned(),
            amount: request.amount,
            currency: request.currency,
            effective_at_ms: request.effective_at_ms,
            expires_at_ms: request.expires_at_ms,
            priority: request.priority.unwrap_or(DEFAULT_PRIORITY),
            created_at_ms: now_ms,
            source: "api".to_owned(),
            plan: None,
        };
        let stored = self.store.insert_grant(&grant).await?;
        lock(&self.credit_dirty).insert(org_id.to_owned());
        Ok(stored)
    }

    /// The org's grants, with the default plan's credit while it is on the
    /// default plan without ever having been assigned.
    async fn grants(&self, policy: &Policy, org_id: &str) -> Result<Vec<Grant>, OrgError> {
        let mut grants = self.store.grants(org_id).await?;
        if self.plan_name(org_id).is_none()
            && let Some(g) = plan_credit(&policy.book, policy.book.default(), org_id, 0)
        {
            grants.push(Grant {
                id: None,
                amount: g.amount,
                effective_at_ms: g.effective_at_ms,
                expires_at_ms: g.expires_at_ms,
                priority: g.priority,
                created_at_ms: g.created_at_ms,
                source: g.source,
            });
        }
        Ok(grants)
    }

    /// Spend (usage × the plan's prices) in each segment the grants define,
    /// burned against the grants. Reads stored usage, not memory: grants
    /// span periods.
    pub async fn credits(&self, org_id: &str, now_ms: i64) -> Result<Credits, OrgError> {
        check_org(org_id)?;
        let policy = self.policy();
        let plan = self.plan_of(&policy, org_id);
        let grants = self.grants(&policy, org_id).await?;
        let usage = UsageService::new(self.store.clone(), policy.meters.clone());
        let mut spend = Vec::new();
        for segment in credits::segments(&grants, now_ms) {
            let mut amount = Decimal::ZERO;
            for (meter, price) in plan.prices.iter().filter(|(_, p)| !p.is_zero()) {
                let request = UsageRequest {
                    org_id: org_id.to_owned(),
                    meter: meter.clone(),
                    range: segment,
                    window: None,
                    group_by: None,
                };
                let used = usage.usage(&request, now_ms).await?.total;
                amount = checked_money(amount, meterd_units::price(used, *price))?;
            }
            spend.push((segment, amount));
        }
        let report = credits::burn(&grants, &spend, now_ms);
        let priced: Vec<&MeterDef> =
            plan.prices.keys().filter_map(|name| policy.meters.iter().find(|m| &m.name == name)).collect();
        let facts = self.facts(&policy, plan, org_id, priced.iter().copied(), false, now_ms).await?;
        let spend_this_period = self.with_standing(org_id, now_ms, |org| -> Result<Decimal, OrgError> {
            let org = Usage { org, facts: &facts };
            let mut total = Decimal::ZERO;
            for def in &priced {
                let used = org.value(def, now_ms).map_err(CheckError::from)?.unwrap_or_default();
                total = checked_money(total, meterd_units::price(used, plan.prices[&def.name]))?;
            }
            Ok(total)
        })?;
        Ok(Credits { currency: policy.book.currency().to_owned(), report, spend_this_period })
    }

    pub async fn entitlements(&self, org_id: &str, now_ms: i64) -> Result<(OrgView, Entitlements), OrgError> {
        let view = self.view(org_id, now_ms)?;
        let policy = self.policy();
        let plan = self.plan_of(&policy, org_id);
        let facts = self.facts(&policy, plan, org_id, policy.meters.iter(), true, now_ms).await?;
        let entitlements = self.with_standing(org_id, now_ms, |org| {
            check::entitlements(plan, &policy.meters, &Usage { org, facts: &facts }, now_ms)
        })?;
        Ok((view, entitlements))
    }

    pub async fn check(&self, org_id: &str, action: &Action, now_ms: i64) -> Result<Decision, OrgError> {
        check_org(org_id)?;
        let policy = self.policy();
        let plan = self.plan_of(&policy, org_id);
        let quoted = policy.meters.iter().filter(|m| plan.quotas.contains_key(&m.name));
        let facts = self.facts(&policy, plan, org_id, quoted, false, now_ms).await?;
        Ok(self.with_standing(org_id, now_ms, |org| {
            check::check(plan, &policy.meters, &Usage { org, facts: &facts }, action, now_ms)
        })?)
    }

    /// Notices for crossings not yet fired this period; marks them fired.
    fn new_notices(
        &self,
        policy: &Policy,
        org_id: &str,
        period: Range,
        crossings: Vec<Crossing>,
        now_ms: i64,
    ) -> Vec<Notice> {
        let mut fired = lock(&self.fired);
        if fired.0 != period.from_ms {
            *fired = (period.from_ms, HashSet::new());
        }
        let plan = self.plan_of(policy, org_id).name.clone();
        crossings
            .into_iter()
            .filter(|c| fired.1.insert((org_id.to_owned(), c.rule.clone())))
            .map(|c| notice(policy, org_id, &plan, period, c, now_ms))
            .collect()
    }

    fn unfire(&self, notices: &[Notice]) {
        let mut fired = lock(&self.fired);
        for n in notices {
            fired.1.remove(&(n.org_id.clone(), n.rule.clone()));
        }
    }

    /// Applies what committed (or committing) records changed to the
    /// standings; returns the notices of thresholds that crosses (closed
    /// sessions over the limit among them: a session closes in a commit).
    fn apply_changes(&self, effects: &[OrgEffect], now_ms: i64) -> Vec<Notice> {
        let policy = self.policy();
        let mut by_org: BTreeMap<&str, Vec<&OrgEffect>> = BTreeMap::new();
        for e in effects {
            by_org.entry(e.org_id.as_str()).or_default().push(e);
        }
        let mut notices = Vec::new();
        for (org_id, org_changes) in by_org {
            let shared = self.standing_or_new(org_id, now_ms);
            let (period, crossings) = {
                let mut org = lock(&shared);
                if let Err(e) = org.roll_to(now_ms) {
                    tracing::error!(org = org_id, error = %e, "rolling the period over failed");
                }
                let mut facts = StoreFacts::default();
                for e in org_changes {
                    if let Err(error) = org.apply(&e.metric, &e.effect) {
                        tracing::error!(org = org_id, %error, "applying a commit to the standing failed");
                    }
                    if let Effect::Run { run, added: true } = &e.effect
                        && run.ended_ms.is_some()
                    {
                        facts.closed_over_limit.push(run.clone());
                    }
                }
                let plan = self.plan_of(&policy, org_id);
                let usage = Usage { org: &org, facts: &facts };
                let mut crossings =
                    rules::commit_crossings(&policy.rules, plan, &policy.meters, &usage, now_ms);
                crossings.extend(rules::session_crossings(&policy.rules, plan, &usage, now_ms));
                (org.period(), crossings)
            };
            notices.extend(self.new_notices(&policy, org_id, period, crossings, now_ms));
            lock(&self.credit_dirty).insert(org_id.to_owned());
        }
        notices
    }

    /// Time-driven rules (open sessions, integrals) for every org, and
    /// credit rules for orgs whose usage or grants changed. `Max` meters
    /// with a quota are read from the store. Returns new outbox rows.
    pub async fn sweep(&self, now_ms: i64) -> Result<usize, OrgError> {
        let policy = self.policy();
        let orgs: Vec<(String, Shared)> =
            read(&self.standings).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut notices = Vec::new();
        for (i, (org_id, shared)) in orgs.into_iter().enumerate() {
            // Let requests in between: a sweep of many orgs must not hold
            // an async worker for milliseconds.
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
            let plan = self.plan_of(&policy, &org_id);
            let quoted_max = policy
                .meters
                .iter()
                .filter(|m| m.aggregation == Aggregation::Max && plan.quotas.contains_key(&m.name));
            let facts = if policy.rules.quota_percent.is_empty() {
                StoreFacts::default()
            } else {
                self.facts(&policy, plan, &org_id, quoted_max, false, now_ms).await?
            };
            let (period, crossings) = {
                let mut org = lock(&shared);
                if let Err(e) = org.roll_to(now_ms) {
                    tracing::error!(org = %org_id, error = %e, "rolling the period over failed");
                }
                let usage = Usage { org: &org, facts: &facts };
                (org.period(), rules::usage_crossings(&policy.rules, plan, &policy.meters, &usage, now_ms))
            };
            notices.extend(self.new_notices(&policy, &org_id, period, crossings, now_ms));
        }
        if !policy.rules.credit_below.is_empty() {
            let dirty: Vec<String> = lock(&self.credit_dirty).drain().collect();
            for org_id in dirty {
                let credits = match self.credits(&org_id, now_ms).await {
                    Ok(c) => c,
                    Err(e) => {
                        lock(&self.credit_dirty).insert(org_id.clone());
                        return Err(e);
                    }
                };
                let crossings =
                    rules::credit_crossings(&policy.rules, credits.report.balance, &credits.currency);
                notices.extend(self.new_notices(
                    &policy,
                    &org_id,
                    month_containing(now_ms),
                    crossings,
                    now_ms,
                ));
            }
        }
        match self.store.record_notices(&notices, now_ms).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                self.unfire(&notices);
                Err(e.into())
            }
        }
    }
}

fn checked_money(a: Decimal, b: Result<Decimal, meterd_units::QuantityError>) -> Result<Decimal, OrgError> {
    let overflow = || OrgError::Check(CheckError::Quantity(meterd_units::QuantityError::Overflow("spend")));
    a.checked_add(b.map_err(CheckError::from)?).ok_or_else(overflow)
}

fn check_org(org_id: &str) -> Result<(), OrgError> {
    if valid_org_id(org_id) { Ok(()) } else { Err(OrgError::BadOrgId) }
}

/// A plan's one-time credit for `org_id`, in force from `effective_at_ms`.
fn plan_credit(book: &PlanBook, plan: &Plan, org_id: &str, effective_at_ms: i64) -> Option<NewGrant> {
    plan.one_time_credit.map(|amount| NewGrant {
        org_id: org_id.to_owned(),
        amount,
        currency: book.currency().to_owned(),
        effective_at_ms,
        expires_at_ms: None,
        priority: DEFAULT_PRIORITY,
        created_at_ms: effective_at_ms,
        source: format!("plan:{}", plan.name),
        plan: Some(plan.name.clone()),
    })
}

/// The webhook body of a crossing: `{type, timestamp, data}` (the Standard
/// Webhooks payload shape).
fn notice(
    policy: &Policy,
    org_id: &str,
    plan: &str,
    period: Range,
    crossing: Crossing,
    now_ms: i64,
) -> Notice {
    let mut data = json!({
        "org": org_id,
        "plan": plan,
        "period_start": crate::http::rfc3339(period.from_ms),
        "period_end": crate::http::rfc3339(period.to_ms),
        "rule": crossing.rule,
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (data.as_object_mut(), crossing.data) {
        out.extend(extra);
    }
    let payload = json!({
        "type": crossing.event_type,
        "timestamp": crate::http::rfc3339(now_ms),
        "data": data,
    });
    Notice {
        org_id: org_id.to_owned(),
        rule: crossing.rule,
        period_start_ms: period.from_ms,
        event_type: crossing.event_type.to_owned(),
        payload: payload.to_string(),
        endpoints: policy.endpoints.clone(),
    }
}

impl CommitHook for Orgs {
    fn records_written(&self, tx: Option<TxId>, effects: &[OrgEffect], now_ms: i64) -> Vec<Notice> {
        let _gate = read(&self.gate);
        let notices = self.apply_changes(effects, now_ms);
        if let Some(tx) = tx {
            lock(&self.replication).applied_locally(tx, effects);
        }
        notices
    }

    fn rolled_back(&self, tx: Option<TxId>, effects: &[OrgEffect], notices: &[Notice]) {
        let _gate = read(&self.gate);
        // A commit that failed on our side may still have committed (the
        // connection died during COMMIT): then the feed has confirmed it,
        // and it stays.
        let applied = tx.is_none_or(|tx| lock(&self.replication).forget(tx));
        if applied {
            for e in effects.iter().rev() {
                if let Some(shared) = self.standing(&e.org_id)
                    && let Err(error) = lock(&shared).revert(&e.metric, &e.effect)
                {
                    tracing::error!(org = %e.org_id, %error, "undoing a commit in the standing failed");
                }
            }
        }
        self.unfire(notices);
    }

    fn committed(&self, outbox_rows: usize) {
        if outbox_rows > 0 {
            self.outbox_wake.notify_one();
        }
    }
}

/// In-memory org state as built from a [`StandingSnapshot`].
struct Built {
    period_start_ms: i64,
    standings: HashMap<String, OrgStanding>,
    assigned: HashMap<String, OrgPlan>,
    fired: HashSet<(String, String)>,
    visibility: Option<crate::store::Visibility>,
}

impl Built {
    fn new(snapshot: StandingSnapshot, now_ms: i64) -> Result<Self, StoreError> {
        let corrupt =
            |e: meterd_units::QuantityError| StoreError::Corrupt(format!("building standings: {e}"));
        let mut standings: HashMap<String, OrgStanding> = HashMap::new();
        // Settled to `now_ms`: the snapshot's steps after it are kept one
        // by one.
        let mut fresh = OrgStanding::new(now_ms);
        fresh.roll_to(now_ms).map_err(corrupt)?;
        for seed in &snapshot.series {
            standings
                .entry(seed.org_id.clone())
                .or_insert_with(|| fresh.clone())
                .seed(&seed.metric, seed.carry, &seed.hours, &seed.steps_after)
                .map_err(corrupt)?;
        }
        for (org_id, run) in &snapshot.open_runs {
            standings
                .entry(org_id.clone())
                .or_insert_with(|| fresh.clone())
                .seed_open_run(&run.subject, run.started_ms);
        }
        Ok(Self {
            period_start_ms: month_containing(now_ms).from_ms,
            standings,
            assigned: snapshot.plans.into_iter().map(|p| (p.org_id.clone(), p)).collect(),
            fired: snapshot.fired.into_iter().collect(),
            visibility: snapshot.visibility,
        })
    }

    /// Every org with usage this period or a plan.
    fn orgs(&self) -> impl Iterator<Item = String> + '_ {
        self.standings.keys().chain(self.assigned.keys()).cloned()
    }
}
