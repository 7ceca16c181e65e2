//! Pull ingestion: every target of every plugin that polls runs on its own
//! schedule, from a cursor kept in the store, under a lease row so that one
//! poller at a time runs it — across processes sharing the database too.
//!
//! A run: take or renew the lease; if the target is due, call `poll` (again
//! at once while the plugin says `more`); commit each answer's records
//! together with the cursor it advances (fenced by the lease); on failure,
//! back off exponentially. Schedules carry ±10% jitter so targets spread out.
//!
//! Plugin config keys (in `[plugins.<name>]`): `interval` (default 5m),
//! `poll_backoff` (first retry delay, default 5s), `poll_backoff_max`
//! (default 30m), `poll_lease` (default twice the interval, at least 30s).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics;
use crate::plugin::PluginSettings;
use crate::record;
use crate::registry::{PluginHandle, PluginRegistry};
use crate::store::{PollCommit, Store};

/// Answers taken in one run before the target yields to its schedule.
const MAX_ROUNDS_PER_RUN: usize = 100;

/// When a target runs and how long its lease lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub lease: Duration,
}

impl Schedule {
    pub fn from_settings(settings: &PluginSettings) -> Result<Self, String> {
        let get = |key: &str, default: Duration| -> Result<Duration, String> {
            settings
                .get(key)
                .map(|v| parse_duration(v).map_err(|e| format!("`{key}`: {e}")))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        let interval = get("interval", Duration::from_secs(300))?;
        let lease = get("poll_lease", (interval * 2).max(Duration::from_secs(30)))?;
        let schedule = Self {
            interval,
            backoff: get("poll_backoff", Duration::from_secs(5))?,
            backoff_max: get("poll_backoff_max", Duration::from_secs(1800))?,
            lease,
        };
        if schedule.interval.is_zero() || schedule.backoff.is_zero() || schedule.lease.is_zero() {
            return Err("`interval`, `poll_backoff` and `poll_lease` must be greater than 0".to_owned());
        }
        Ok(schedule)
    }

    /// Delay before retry number `failures` (1, 2, …): backoff × 2^(n−1), capped.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

/// A duration from config text (see `meterd_units::parse_duration_ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    meterd_units::parse_duration_ms(text)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{:?} is not a duration such as 30s, 5m, 2h", text.trim()))
}

/// `d` ± up to 10%, so targets on the same interval do not run in lockstep.
fn jittered(d: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let spread = d / 5; // the full ±10% band
    let offset = Duration::from_nanos(random % (spread.as_nanos().max(1) as u64));
    (d + offset).saturating_sub(d / 10)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The pollers of every pull plugin that has a config section (an
/// unconfigured one has nothing to poll), one supervising task per plugin.
/// [`Pollers::reconcile`] follows reloads: a plugin whose component or
/// section changed gets a new task once the old one has finished its run;
/// a removed plugin's task stops.
pub struct Pollers {
    store: Arc<dyn Store>,
    holder: String,
    running: std::collections::BTreeMap<String, Running>,
}

struct Running {
    /// What the task was started with: a change restarts it.
    hash: String,
    settings: PluginSettings,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Pollers {
    pub fn new(store: Arc<dyn Store>, holder: String) -> Self {
        Self { store, holder, running: std::collections::BTreeMap::new() }
    }

    /// Starts, restarts and stops tasks to match the registry.
    pub fn reconcile(&mut self, registry: &PluginRegistry) {
        let mut wanted = std::collections::BTreeMap::new();
        for plugin in registry.plugins().into_iter().filter(|p| p.info().pull) {
            let name = plugin.info().name.clone();
            if plugin.settings().is_empty() {
                tracing::info!(plugin = %name, "no config section for this plugin: not polling");
                continue;
            }
            match Schedule::from_settings(plugin.settings()) {
                Ok(schedule) => {
                    wanted.insert(name, (plugin, schedule));
                }
                Err(e) => tracing::error!(plugin = %name, error = %e, "poll schedule refused; not polling"),
            }
        }
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let unchanged = wanted.get(&name).is_some_and(|(p, _)| {
                self.running.get(&name).is_some_and(|r| r.hash == p.hash() && &r.settings == p.settings())
            });
            if unchanged {
                wanted.remove(&name);
            } else if !wanted.contains_key(&name)
                && let Some(old) = self.running.remove(&name)
            {
                let _ = old.stop.send(true);
            }
        }
        for (name, (plugin, schedule)) in wanted {
            let previous = self.running.remove(&name).map(|old| {
                let _ = old.stop.send(true);
                old.task
            });
            let (stop, stopped) = watch::channel(false);
            let (store, holder) = (self.store.clone(), self.holder.clone());
            let (hash, settings) = (plugin.hash().to_owned(), plugin.settings().clone());
            let task = tokio::spawn(async move {
                // One poller per target at a time in this process: the old
                // version finishes the run it is in first.
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                supervise(plugin, schedule, store, holder, stopped).await;
            });
            self.running.insert(name, Running { hash, settings, stop, task });
        }
    }

    /// Stops every task after the run it is in.
    pub async fn stop(&mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in running {
            let _ = r.task.await;
        }
    }
}

/// Asks the plugin for its targets (retrying with backoff) and runs each.
async fn supervise(
    plugin: Arc<PluginHandle>,
    schedule: Schedule,
    store: Arc<dyn Store>,
    holder: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = plugin.info().name.clone();
    let mut failures = 0;
    let targets = loop {
        match plugin.targets().await {
            Ok(targets) => break targets,
            Err(e) => {
                failures += 1;
                tracing::error!(plugin = %name, error = %e, "listing poll targets failed");
                if sleep_or_shutdown(schedule.retry_delay(failures), &mut shutdown).await {
                    return;
                }
            }
        }
    };
    let mut runs = JoinSet::new();
    for target in targets {
        let poller = TargetPoller {
            plugin: plugin.clone(),
            target,
            schedule,
            store: store.clone(),
            holder: holder.clone(),
        };
        runs.spawn(poller.run(shutdown.clone()));
    }
    while runs.join_next().await.is_some() {}
}

/// Returns true if shutdown was asked for before `delay` passed.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = shutdown.changed() => true,
    }
}

struct TargetPoller {
    plugin: Arc<PluginHandle>,
    target: String,
    schedule: Schedule,
    store: Arc<dyn Store>,
    holder: String,
}

impl TargetPoller {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = match self.tick().await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(plugin = %self.plugin.info().name, target = %self.target, error = %e, "poll bookkeeping failed");
                    self.schedule.interval
                }
            };
            if sleep_or_shutdown(wait, &mut shutdown).await {
                return;
            }
        }
    }

    /// One scheduling step; returns how long to wait before the next.
    async fn tick(&self) -> Result<Duration, crate::store::StoreError> {
        let name = &self.plugin.info().name;
        let now = crate::clock::now_ms();
        let lease_until = now.saturating_add(ms(self.schedule.lease));
        let Some(state) =
            self.store.acquire_lease(name, &self.target, &self.holder, now, lease_until).await?
        else {
            // Another poller holds it; look again when its lease could lapse.
            return Ok(jittered(self.schedule.interval.min(self.schedule.lease)));
        };
        if state.next_run_ms > now {
            let until_due = Duration::from_millis(u64::try_from(state.next_run_ms - now).unwrap_or(0));
            // Keep the lease warm while waiting, without holding it forever.
            return Ok(until_due.min(self.schedule.lease / 2));
        }
        metrics::POLL_RUNS.inc([name]);
        match self.run_rounds(state.cursor).await {
            Ok(()) => Ok(jittered(self.schedule.interval)),
            Err(error) => {
                metrics::POLL_ERRORS.inc([name]);
                let failures =
                    u32::try_from(state.consecutive_failures).unwrap_or(u32::MAX).saturating_add(1);
                let delay = jittered(self.schedule.retry_delay(failures));
                let now = crate::clock::now_ms();
                tracing::warn!(plugin = %name, target = %self.target, %error, failures, retry_in_ms = ms(delay), "poll failed");
                self.store
                    .record_poll_failure(
                        name,
                        &self.target,
                        &self.holder,
                        &error,
                        now,
                        now.saturating_add(ms(delay)),
                    )
                    .await?;
                Ok(delay)
            }
        }
    }

    /// Polls until the plugin has nothing more ready, committing each answer.
    async fn run_rounds(&self, mut cursor: Option<String>) -> Result<(), String> {
        let name = &self.plugin.info().name;
        for _ in 0..MAX_ROUNDS_PER_RUN {
            let outcome = self.plugin.poll(&self.target, cursor.clone()).await.map_err(|e| e.to_string())?;
            let records = record::validate_all(outcome.records)
                .map_err(|e| format!("plugin {name} produced an invalid answer: {e}"))?;
            let now = crate::clock::now_ms();
            let commit = PollCommit {
                plugin: name.clone(),
                target: self.target.clone(),
                holder: self.holder.clone(),
                records,
                next_cursor: outcome.next_cursor.clone(),
                now_ms: now,
                next_run_ms: now.saturating_add(ms(self.schedule.interval)),
                lease_expires_ms: now.saturating_add(ms(self.schedule.lease)),
            };
            let counts = self.store.commit_poll(&commit).await.map_err(|e| e.to_string())?;
            tracing::debug!(plugin = %name, target = %self.target, ?counts, "poll committed");
            for (result, n) in [
                ("inserted", counts.inserted),
                ("duplicate", counts.duplicates),
                ("corrected", counts.corrected),
            ] {
                metrics::POLL_RECORDS.inc_by([name, result], n as u64);
            }
            if outcome.next_cursor.is_some() {
                cursor = outcome.next_cursor;
            }
            if !outcome.more {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_std_durations_or_say_what_is_wrong() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("often").unwrap_err().contains("\"often\""));
    }

    #[test]
    fn schedule_reads_plugin_settings_and_backs_off_exponentially() {
        let settings = PluginSettings::from([
            ("interval".to_owned(), "1m".to_owned()),
            ("poll_backoff".to_owned(), "2s".to_owned()),
            ("poll_backoff_max".to_owned(), "10s".to_owned()),
        ]);
        let s = Schedule::from_settings(&settings).unwrap();
        assert_eq!(s.interval, Duration::from_secs(60));
        assert_eq!(s.lease, Duration::from_secs(120));
        let delays: Vec<u64> = (1..=5).map(|n| s.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
        assert_eq!(s.retry_delay(1_000), Duration::from_secs(10));
        let bad = PluginSettings::from([("interval".to_owned(), "often".to_owned())]);
        assert!(Schedule::from_settings(&bad).unwrap_err().contains("`interval`"));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1_000 {
            let d = jittered(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110), "{d:?}");
        }
    }
}
