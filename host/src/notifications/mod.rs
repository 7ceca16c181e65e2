//! Threshold notifications: the sweep of time-driven rules and delivery of
//! the transactional outbox.
//!
//! Notices are written to the outbox by the transaction that crossed the
//! threshold (usage commits, through `orgs::Orgs` as the store's commit
//! hook) or by the sweep (rules that time alone can cross: sessions,
//! integrals; and credit balances, which span periods). This task delivers
//! due rows, signed the Standard Webhooks way, and retries failures on the
//! configured schedule until delivered or expired. A row is marked
//! delivered right after its 2xx; the `webhook-id` stays the same across
//! attempts, so a receiver recognizes the one redelivery a crash between
//! its 2xx and that mark could cause.

pub mod signing;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::orgs::Orgs;
use crate::plans::settings::NotificationSettings;
use crate::store::{OutboxMessage, Store};

/// Rows delivered per round.
const BATCH: i64 = 64;
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is read when nothing wakes the task.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub struct Notifier {
    store: Arc<dyn Store>,
    orgs: Arc<Orgs>,
    settings: RwLock<Arc<NotificationSettings>>,
    client: reqwest::Client,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn Store>,
        orgs: Arc<Orgs>,
        settings: NotificationSettings,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("meterd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self { store, orgs, settings: RwLock::new(Arc::new(settings)), client }))
    }

    fn settings(&self) -> Arc<NotificationSettings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces endpoints and schedules (pending rows keep their state).
    pub fn set_settings(&self, settings: NotificationSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Sweeps and delivers until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut last_sweep = i64::MIN;
        loop {
            let now = crate::clock::now_ms();
            let sweep_every = self.settings().sweep_interval_ms;
            if now.saturating_sub(last_sweep) >= sweep_every {
                last_sweep = now;
                if let Err(e) = self.orgs.sweep(now).await {
                    tracing::warn!(error = %e, "notification sweep failed; will retry");
                }
            }
            let delivered_all = match self.deliver_due().await {
                Ok(full) => !full,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed; will retry");
                    true
                }
            };
            if *stop.borrow() {
                return;
            }
            if delivered_all {
                let wait = IDLE_POLL.min(Duration::from_millis(sweep_every.max(1) as u64));
                tokio::select! {
                    () = self.orgs.outbox_wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// Delivers one batch of due rows. Returns whether the batch was full
    /// (more may be due).
    async fn deliver_due(&self) -> Result<bool, crate::store::StoreError> {
        let now = crate::clock::now_ms();
        let due = self.store.due_outbox(now, BATCH).await?;
        let full = due.len() as i64 == BATCH;
        for message in due {
            self.deliver(&message).await?;
        }
        Ok(full)
    }

    async fn deliver(&self, message: &OutboxMessage) -> Result<(), crate::store::StoreError> {
        let settings = self.settings();
        let result = match settings.endpoints.get(&message.endpoint) {
            None => Err(format!("endpoint {:?} is no longer configured", message.endpoint)),
            Some(endpoint) => {
                let now = crate::clock::now_ms();
                let timestamp = now.div_euclid(1_000);
                let signature =
                    signing::sign(&endpoint.key, &message.message_id, timestamp, message.payload.as_bytes());
                let sent = self
                    .client
                    .post(&endpoint.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &message.message_id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(message.payload.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("{} answered {}", endpoint.url, response.status())),
                    Err(e) => Err(format!("{}: {e}", endpoint.url)),
                }
            }
        };
        let now = crate::clock::now_ms();
        match result {
            Ok(()) => self.store.outbox_delivered(message.id, now).await,
            Err(error) => {
                let retry_at = retry_at(&settings, message, now);
                tracing::warn!(
                    message = %message.message_id,
                    endpoint = %message.endpoint,
                    attempt = message.attempts + 1,
                    error = %error,
                    gave_up = retry_at.is_none(),
                    "notification delivery failed"
                );
                self.store.outbox_attempt_failed(message.id, &error, now, retry_at).await
            }
        }
    }
}

/// When to try again after attempt `message.attempts + 1` failed at
/// `now_ms`: the schedule's next wait (its last one repeating), or `None`
/// once that would pass the message's expiry.
pub fn retry_at(settings: &NotificationSettings, message: &OutboxMessage, now_ms: i64) -> Option<i64> {
    let index = usize::try_from(message.attempts)
        .unwrap_or(usize::MAX)
        .min(settings.retry_schedule_ms.len().saturating_sub(1));
    let next = now_ms.saturating_add(*settings.retry_schedule_ms.get(index)?);
    (next <= message.created_at_ms.saturating_add(settings.expire_after_ms)).then_some(next)
}
