//! Group commit: concurrent deliveries wait together and are committed in
//! one transaction, so they share one fsync. Each caller is answered only
//! after the transaction that holds its delivery has committed.
//!
//! The committer runs on a thread of its own (`meterd-commit`), polled with
//! the runtime's handle rather than as a task among the connections' tasks.
//! A commit is a chain of round trips to the store (statements, then the
//! sync); as a task, each step of that chain waited for a worker behind
//! every ready connection task, and the one serial path of ingest grew with
//! the load. On its own thread a step goes on as soon as its answer is in,
//! while I/O and timers stay the runtime's (its connections, its pools).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use meterd_store::{CommitOutcome, Delivery, Store, StoreError};

/// Most deliveries, and most payload bytes, one transaction takes.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Deliveries that may wait for the committer before callers are held back.
const QUEUE: usize = 4_096;

struct Job {
    delivery: Delivery,
    reply: oneshot::Sender<Answer>,
}

/// A caller's answer, with its delivery handed back: the caller's task
/// frees the payload and records, in parallel, rather than the committer
/// between one batch and the next (about a tenth of its thread's time).
struct Answer {
    result: Result<CommitOutcome, StoreError>,
    delivery: Delivery,
}

/// Handle to the committer task; cheap to clone. The task ends when every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct GroupCommitter {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommitter {
    /// Starts the committer thread; must be called within a Tokio runtime,
    /// which keeps driving the store's I/O. The returned task ends when the
    /// thread has drained the queue, and fails if the thread panicked.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Handle::current();
        let (drained, ended) = oneshot::channel::<()>();
        std::thread::Builder::new().name("meterd-commit".to_owned()).spawn(move || {
            runtime.block_on(run(store, queue));
            let _ = drained.send(());
        })?;
        let task = tokio::spawn(async move {
            if ended.await.is_err() {
                panic!("the committer thread panicked");
            }
        });
        Ok((Self { jobs }, task))
    }

    /// Commits one delivery together with whatever else is waiting.
    pub async fn commit(&self, delivery: Delivery) -> Result<CommitOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the committer has stopped".to_owned());
        self.jobs.send(Job { delivery, reply }).await.map_err(|_| stopped())?;
        let Answer { result, delivery } = answer.await.map_err(|_| stopped())?;
        drop(delivery);
        result
    }
}

async fn run(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.delivery.body.len();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.delivery.body.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(store.as_ref(), jobs).await;
    }
}

async fn commit_group(store: &dyn Store, jobs: Vec<Job>) {
    let (deliveries, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.delivery, j.reply)).unzip();
    match timed_commit(store, &deliveries).await {
        Ok(outcomes) => {
            for ((reply, delivery), outcome) in replies.into_iter().zip(deliveries).zip(outcomes) {
                count(&delivery, &outcome);
                let _ = reply.send(Answer { result: Ok(outcome), delivery });
            }
        }
        // One failed transaction must not fail its neighbours: retry each
        // delivery alone, so only the one that cannot commit gets the error.
        Err(e) if deliveries.len() > 1 => {
            tracing::warn!(error = %e, batch = deliveries.len(), "group commit failed; retrying deliveries one by one");
            for (delivery, reply) in deliveries.into_iter().zip(replies) {
                let result = timed_commit(store, std::slice::from_ref(&delivery)).await;
                let result = result
                    .and_then(|mut o| o.pop().ok_or_else(|| StoreError::Corrupt("no outcome".to_owned())));
                if let Ok(outcome) = &result {
                    count(&delivery, outcome);
                }
                let _ = reply.send(Answer { result, delivery });
            }
        }
        Err(e) => {
            for (delivery, reply) in deliveries.into_iter().zip(replies) {
                let _ = reply.send(Answer { result: Err(e.clone()), delivery });
            }
        }
    }
}

/// One commit transaction, measured: its size and how long it took,
/// whether it committed or not.
async fn timed_commit(store: &dyn Store, deliveries: &[Delivery]) -> Result<Vec<CommitOutcome>, StoreError> {
    let started = Instant::now();
    let result = store.commit(deliveries).await;
    metrics::COMMIT_SECONDS.observe_duration([], started.elapsed());
    metrics::COMMIT_BATCH_SIZE.observe([], deliveries.len() as f64);
    result
}

/// Counts a committed delivery: its records, or one duplicate.
fn count(delivery: &Delivery, outcome: &CommitOutcome) {
    if outcome.duplicate {
        metrics::DUPLICATES.inc([]);
    } else {
        metrics::RECORDS_COMMITTED.inc_by([], delivery.records.len() as u64);
    }
}
