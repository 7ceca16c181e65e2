//! Replay: re-run stored webhook payloads through the plugin loaded now and
//! repair what they stored, the way an operator fixes history after fixing
//! a plugin.
//!
//! A replay is a job inside the gateway (`POST /v1/replays`), so its
//! corrections go through the same commit path as ingest: in-memory
//! standings follow, other replicas hear of them on the change feed, and
//! every correction leaves an audit row. The job reads one plugin's
//! deliveries in the order received, a page at a time; runs each kept
//! payload through the plugin with its clock pinned to when the payload
//! was received (so signature-age checks judge it as they did then);
//! plans the changes ([`plan`]); and, unless it is a dry run, applies them
//! in one transaction per page, each only if the record still holds what
//! the plan read (a page that lost a race is planned again).

pub mod client;
pub mod plan;
pub mod report;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::meter::period::Range;
use crate::plugin::InboundRequest;
use crate::record;
use crate::registry::{PluginHandle, PluginRegistry};
use crate::store::{Payload, Store, StoreError, StoredDelivery};
use plan::Replayed;
use report::Report;

/// Deliveries read, replayed and applied together.
const PAGE: i64 = 200;
/// Plugin calls a replay has in flight at once, so live webhooks to the
/// same plugin keep most of its call slots.
const CONCURRENT_CALLS: usize = 4;
/// Times a page is planned again after losing a race with another write.
const CONFLICT_RETRIES: usize = 5;
/// Finished jobs kept for `GET /v1/replays/{id}`.
const KEPT_JOBS: usize = 32;

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub plugin: String,
    /// Deliveries received in this range.
    pub range: Range,
    /// Plan and report only; write nothing.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    #[error("plugin {0:?} does not accept webhooks (it polls): it has no stored payloads to replay")]
    NotPush(String),
    #[error("a replay of {plugin} is already running ({job}); wait for it to finish")]
    Busy { plugin: String, job: String },
    #[error("could not make a job id: {0}")]
    Random(String),
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    /// Stopped early (the database failed); what was applied stays applied.
    Failed(String),
}

/// One replay, as `GET /v1/replays/{id}` shows it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub id: String,
    pub plugin: String,
    /// The plugin build that replayed (its `info()` version and hash).
    pub plugin_version: String,
    pub plugin_hash: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub dry_run: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub state: JobState,
    pub report: Report,
}

/// A running or finished job.
pub struct Job {
    view: Mutex<JobView>,
}

impl Job {
    pub fn view(&self) -> JobView {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut JobView)) {
        f(&mut self.lock());
    }
}

/// Starts replays and keeps their jobs.
pub struct Replays {
    store: Arc<dyn Store>,
    plugins: Arc<PluginRegistry>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Replays {
    pub fn new(store: Arc<dyn Store>, plugins: Arc<PluginRegistry>) -> Self {
        Self { store, plugins, jobs: Mutex::new(VecDeque::new()) }
    }

    /// Starts a job on the plugin loaded now (a reload during the job does
    /// not change which build replays). Refused while another replay of
    /// the same plugin runs here.
    pub fn start(self: &Arc<Self>, request: ReplayRequest) -> Result<Arc<Job>, ReplayError> {
        let plugin = self
            .plugins
            .get(&request.plugin)
            .ok_or_else(|| ReplayError::UnknownPlugin(request.plugin.clone()))?;
        if !plugin.info().push {
            return Err(ReplayError::NotPush(request.plugin));
        }
        let id = job_id()?;
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = jobs.iter().find(|j| {
                let view = j.lock();
                view.plugin == request.plugin && view.state == JobState::Running
            }) {
                return Err(ReplayError::Busy { plugin: request.plugin, job: running.lock().id.clone() });
            }
            let job = Arc::new(Job {
                view: Mutex::new(JobView {
                    id,
                    plugin: request.plugin.clone(),
                    plugin_version: plugin.info().version.clone(),
                    plugin_hash: plugin.hash().to_owned(),
                    from_ms: request.range.from_ms,
                    to_ms: request.range.to_ms,
                    dry_run: request.dry_run,
                    started_at_ms: crate::clock::now_ms(),
                    finished_at_ms: None,
                    state: JobState::Running,
                    report: Report::default(),
                }),
            });
            jobs.push_back(job.clone());
            // Forget the oldest finished jobs.
            while jobs.len() > KEPT_JOBS {
                match jobs.iter().position(|j| j.lock().state != JobState::Running) {
                    Some(at) => drop(jobs.remove(at)),
                    None => break,
                }
            }
            job
        };
        let (this, running) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let outcome = this.run(&running, &plugin, &request).await;
            running.update(|view| {
                view.finished_at_ms = Some(crate::clock::now_ms());
                view.state = match outcome {
                    Ok(()) => JobState::Done,
                    Err(e) => JobState::Failed(e.to_string()),
                };
            });
            let view = running.view();
            tracing::info!(
                job = %view.id,
                plugin = %view.plugin,
                dry_run = view.dry_run,
                state = ?view.state,
                deliveries = view.report.deliveries.done,
                corrected = view.report.records.corrected,
                withdrawn = view.report.records.withdrawn,
                added = view.report.records.added,
                "replay finished"
            );
        });
        Ok(job)
    }

    /// A job started here, running or among the last finished.
    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|j| j.lock().id == id).cloned()
    }

    async fn run(
        &self,
        job: &Job,
        plugin: &Arc<PluginHandle>,
        request: &ReplayRequest,
    ) -> Result<(), StoreError> {
        // The deliveries committed now; those committing later are not in it.
        let set = self.store.replay_set(&request.plugin, request.range).await?;
        job.update(|view| view.report = Report::new(set.total));
        let mut after = None;
        loop {
            let page = self.store.deliveries(&request.plugin, request.range, &set, after, PAGE).await?;
            let Some(last) = page.last() else { return Ok(()) };
            after = Some((last.received_at_ms, last.id));
            let outcomes = replay_page(plugin, &page).await;
            let mut replayed = Vec::with_capacity(page.len());
            job.update(|view| {
                for (delivery, outcome) in page.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Replayed(records) => {
                            replayed.push(Replayed { delivery_id: delivery.id, records })
                        }
                        Outcome::Purged => view.report.add_purged(),
                        Outcome::Failed(error) => view.report.add_failure(&delivery.event_id, error),
                    }
                }
            });
            let plan = self.settle(&request.plugin, &replayed, request.dry_run).await?;
            let events: HashMap<i64, &str> = page.iter().map(|d| (d.id, d.event_id.as_str())).collect();
            let event_of = |id: i64| events.get(&id).map_or_else(|| id.to_string(), |e| (*e).to_owned());
            job.update(|view| view.report.add_plan(&plan, replayed.len() as u64, event_of));
        }
    }

    /// Plans a page against what is stored and, unless `dry_run`, applies
    /// it; planned again if a record changed between the read and the write.
    async fn settle(
        &self,
        plugin: &str,
        replayed: &[Replayed],
        dry_run: bool,
    ) -> Result<plan::Plan, StoreError> {
        let delivery_ids: Vec<i64> = replayed.iter().map(|r| r.delivery_id).collect();
        let mut event_ids: Vec<String> =
            replayed.iter().flat_map(|r| r.records.iter().map(|rec| rec.event_id.clone())).collect();
        event_ids.sort();
        event_ids.dedup();
        let mut attempt = 0;
        loop {
            let stored = self.store.delivery_records(plugin, &delivery_ids, &event_ids).await?;
            let plan = plan::plan(replayed, &stored);
            if dry_run || plan.changes.is_empty() {
                return Ok(plan);
            }
            match self.store.apply_fixes(plugin, &plan.fixes(), crate::clock::now_ms()).await {
                Ok(()) => return Ok(plan),
                Err(StoreError::Conflict(why)) if attempt < CONFLICT_RETRIES => {
                    tracing::debug!(plugin, why, "replay page raced another write; planning it again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What replaying one delivery gave.
enum Outcome {
    Replayed(Vec<crate::record::UsageRecord>),
    Purged,
    Failed(String),
}

/// Runs a page's kept payloads through the plugin, [`CONCURRENT_CALLS`] at
/// a time; outcomes in page order.
async fn replay_page(plugin: &Arc<PluginHandle>, page: &[StoredDelivery]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = (0..page.len()).map(|_| None).collect();
    let mut calls = tokio::task::JoinSet::new();
    let mut pending = page.iter().enumerate();
    loop {
        while calls.len() < CONCURRENT_CALLS {
            let Some((at, delivery)) = pending.next() else { break };
            let (plugin, delivery) = (plugin.clone(), delivery.clone());
            calls.spawn(async move { (at, replay_one(&plugin, delivery).await) });
        }
        match calls.join_next().await {
            Some(Ok((at, outcome))) => outcomes[at] = Some(outcome),
            Some(Err(e)) => tracing::error!(error = %e, "a replay call task failed"),
            None => break,
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("the replay call did not finish".to_owned())))
        .collect()
}

async fn replay_one(plugin: &Arc<PluginHandle>, delivery: StoredDelivery) -> Outcome {
    let Payload::Kept { path, query, headers, body } = delivery.payload else { return Outcome::Purged };
    let request = Arc::new(InboundRequest { method: "POST".to_owned(), path, query, headers, body });
    let outcome = match plugin.handle_webhook_at(request, Some(delivery.received_at_ms)).await {
        Ok(outcome) => outcome,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match record::validate_webhook(outcome) {
        Ok((event_id, _)) if event_id != delivery.event_id => Outcome::Failed(format!(
            "the plugin now reads this payload as event {event_id:?}; it was stored as {:?}",
            delivery.event_id
        )),
        Ok((_, records)) => Outcome::Replayed(records),
        Err(problem) => Outcome::Failed(format!("the plugin's answer is invalid: {problem}")),
    }
}

/// `rpl_` and 16 random hex digits.
fn job_id() -> Result<String, ReplayError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ReplayError::Random(e.to_string()))?;
    Ok(format!("rpl_{}", hex::encode(bytes)))
}
