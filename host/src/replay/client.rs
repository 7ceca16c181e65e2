//! `meterd replay`, the command's side: it asks a running gateway to replay
//! (the gateway owns the in-memory standings its corrections must reach),
//! follows the job with a progress bar on stderr, and renders the report.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::ErrorBody;
use crate::api::replays::{NewReplay, ReplayJob, ReplayState};

/// How often the job is asked for its progress.
const POLL: Duration = Duration::from_millis(200);

/// What `meterd replay` was asked.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    /// The gateway, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// An admin API key or the admin token.
    pub token: Option<String>,
    pub plugin: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the gateway at {url} ({message}); replay runs inside a running gateway: start it with `meterd serve` or pass --url"
    )]
    Unreachable { url: String, message: String },
    #[error("the gateway refused the replay ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

/// Starts the replay and follows it to its end; returns the finished job
/// (its `state` may be `failed`). Progress goes to `progress` if given.
pub async fn run(
    args: &ReplayArgs,
    mut progress: Option<&mut dyn Progress>,
) -> Result<ReplayJob, ClientError> {
    let client = reqwest::Client::new();
    let base = args.url.trim_end_matches('/');
    let body = NewReplay {
        plugin: args.plugin.clone(),
        from: args.from.clone().map(crate::api::Time),
        to: args.to.clone().map(crate::api::Time),
        dry_run: args.dry_run,
    };
    let started: ReplayJob = send(args, client.post(format!("{base}/v1/replays")).json(&body)).await?;
    let job_url = format!("{base}/v1/replays/{}", started.id);
    loop {
        let job: ReplayJob = send(args, client.get(&job_url)).await?;
        if job.state != ReplayState::Running {
            if let Some(progress) = progress.as_deref_mut() {
                progress.finish(&job);
            }
            return Ok(job);
        }
        if let Some(progress) = progress.as_deref_mut() {
            progress.show(&job);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends with the token; a non-2xx answer is `Refused` with its message.
async fn send<T: DeserializeOwned>(
    args: &ReplayArgs,
    request: reqwest::RequestBuilder,
) -> Result<T, ClientError> {
    let request = match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| ClientError::Unreachable { url: args.url.clone(), message: e.to_string() })?;
    let status = response.status();
    let url = response.url().to_string();
    let body = response.bytes().await.map_err(|e| ClientError::Protocol {
        url: url.clone(),
        message: format!("{status}, the body could not be read: {e}"),
    })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error.message);
        return Err(ClientError::Refused { status: status.as_u16(), message });
    }
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol { url, message: format!("{status}: {e}") })
}

/// Where progress goes while a job runs.
pub trait Progress {
    /// The job, still running.
    fn show(&mut self, job: &ReplayJob);
    /// The job, finished.
    fn finish(&mut self, job: &ReplayJob);
}

/// A progress bar redrawn in place on a terminal; on anything else, a line
/// each time another tenth of the deliveries is done, and the last one.
pub struct StderrProgress {
    terminal: bool,
    tenths_shown: Option<u64>,
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self { terminal: std::io::stderr().is_terminal(), tenths_shown: None }
    }
}

impl StderrProgress {
    fn line(job: &ReplayJob) -> String {
        let (done, total) = counts(job);
        progress_line(done, total, changed_records(job), 30)
    }
}

impl Progress for StderrProgress {
    fn show(&mut self, job: &ReplayJob) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{}", Self::line(job));
        } else {
            // Until the deliveries are counted, there is nothing to show.
            let (done, total) = counts(job);
            let tenths = (done * 10).checked_div(total);
            if tenths.is_some() && tenths > self.tenths_shown {
                self.tenths_shown = tenths;
                let _ = writeln!(err, "{}", Self::line(job));
            }
        }
        let _ = err.flush();
    }

    fn finish(&mut self, job: &ReplayJob) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = writeln!(err, "\r{}", Self::line(job));
        } else if self.tenths_shown != Some(10) {
            let _ = writeln!(err, "{}", Self::line(job));
        }
        let _ = err.flush();
    }
}

fn counts(job: &ReplayJob) -> (u64, u64) {
    (job.report.deliveries.done, job.report.deliveries.total)
}

fn changed_records(job: &ReplayJob) -> u64 {
    let records = &job.report.records;
    records.corrected + records.withdrawn + records.added
}

/// `[#########.........]  300/1000 deliveries  12 records changed`.
pub fn progress_line(done: u64, total: u64, changed: u64, width: usize) -> String {
    let filled = match total {
        0 => width,
        total => ((done.min(total) as u128 * width as u128) / total as u128) as usize,
    };
    format!(
        "[{}{}] {done:>w$}/{total} deliveries  {changed} records changed",
        "#".repeat(filled),
        ".".repeat(width - filled),
        w = total.to_string().len()
    )
}

/// The finished job for people: what was replayed, the counts, the net
/// change per org and metric, then each change, conflict and failure.
pub fn render(job: &ReplayJob) -> String {
    let report = &job.report;
    let (deliveries, records) = (&report.deliveries, &report.records);
    let mut out = format!(
        "replay {} of {} {} (sha256 {}) over deliveries received from {} to {}{}\n",
        job.id,
        job.plugin,
        job.plugin_version,
        job.plugin_hash.chars().take(12).collect::<String>(),
        job.from,
        job.to,
        if job.dry_run { ": dry run, nothing was written" } else { "" },
    );
    out.push_str(&format!(
        "deliveries: {} of {} done: {} changed, {} unchanged, {} purged by retention, {} failed\n",
        deliveries.done,
        deliveries.total,
        deliveries.changed,
        deliveries.unchanged,
        deliveries.purged,
        deliveries.failed,
    ));
    out.push_str(&format!(
        "records: {} {}, {} withdrawn, {} added, {} unchanged, {} superseded, {} conflicts\n",
        records.corrected,
        if job.dry_run { "to correct" } else { "corrected" },
        records.withdrawn,
        records.added,
        records.unchanged,
        records.superseded,
        records.conflicts,
    ));
    if job.state == ReplayState::Failed {
        let error = job.error.as_deref().unwrap_or("unknown error");
        out.push_str(&format!("FAILED: {error} (pages applied before it stay applied)\n"));
    }
    if !report.by_metric.is_empty() {
        let mut rows =
            vec![["ORG", "METRIC", "RECORDS", "BEFORE", "AFTER", "DELTA"].map(str::to_owned).to_vec()];
        rows.extend(report.by_metric.iter().map(|m| {
            vec![
                m.org_id.clone(),
                m.metric.clone(),
                m.records.to_string(),
                m.before.to_string(),
                m.after.to_string(),
                m.delta.to_string(),
            ]
        }));
        out.push('\n');
        out.push_str(&crate::table::render(&rows));
    }
    if !report.changes.is_empty() {
        let mut rows = vec![
            ["CHANGE", "DELIVERY", "RECORD", "ORG", "SUBJECT", "METRIC", "BEFORE", "AFTER"]
                .map(str::to_owned)
                .to_vec(),
        ];
        rows.extend(report.changes.iter().map(|c| {
            vec![
                c.change.as_str().to_owned(),
                c.delivery.clone(),
                format!("{}#{}", c.event_id, c.seq),
                c.org_id.clone(),
                c.subject.clone(),
                c.metric.clone(),
                c.before.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                c.after.to_string(),
            ]
        }));
        out.push('\n');
        out.push_str(&crate::table::render(&rows));
    }
    for c in &report.conflicts {
        out.push_str(&format!(
            "conflict: delivery {} record {}#{}: the plugin now yields another {} (left as stored)\n",
            c.delivery,
            c.event_id,
            c.seq,
            c.fields.join(", ")
        ));
    }
    for f in &report.failures {
        out.push_str(&format!("failed: delivery {}: {} (left as stored)\n", f.delivery, f.error));
    }
    if report.truncated {
        out.push_str(&format!(
            "(only the first {} changes, conflicts and failures are listed; the counts cover all)\n",
            super::report::LISTED
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_deliveries_done() {
        assert_eq!(progress_line(0, 10, 0, 10), "[..........]  0/10 deliveries  0 records changed");
        assert_eq!(progress_line(5, 10, 3, 10), "[#####.....]  5/10 deliveries  3 records changed");
        assert_eq!(progress_line(10, 10, 3, 10), "[##########] 10/10 deliveries  3 records changed");
        assert_eq!(progress_line(0, 0, 0, 4), "[####] 0/0 deliveries  0 records changed");
    }

    #[test]
    fn a_report_renders_counts_totals_changes_and_problems() {
        let job: ReplayJob = serde_json::from_value(serde_json::json!({
            "id": "rpl_1", "plugin": "e2b", "plugin_version": "0.1.0", "plugin_hash": "abcdef0123456789",
            "from": "1970-01-01T00:00:00Z", "to": "2026-11-23T00:00:00Z", "dry_run": true, "state": "done",
            "started_at": "2026-11-23T00:00:00Z", "finished_at": "2026-11-23T00:00:01Z",
            "report": {
                "deliveries": {"total": 3, "done": 3, "changed": 1, "unchanged": 0, "purged": 1, "failed": 1},
                "records": {"corrected": 1, "withdrawn": 0, "added": 0, "unchanged": 2, "superseded": 0, "conflicts": 1},
                "by_metric": [{"org_id": "acme", "metric": "ram", "records": 1, "before": "1.024", "after": "1", "delta": "-0.024"}],
                "changes": [{"delivery": "ev1", "change": "corrected", "event_id": "ev1", "seq": 1, "org_id": "acme",
                             "subject": "sbx", "metric": "ram", "before": "1.024", "after": "1"}],
                "conflicts": [{"delivery": "ev2", "event_id": "ev2", "seq": 0, "fields": ["metric"]}],
                "failures": [{"delivery": "ev3", "error": "signature"}],
                "truncated": false
            }
        }))
        .unwrap();
        let text = render(&job);
        assert!(text.starts_with("replay rpl_1 of e2b 0.1.0 (sha256 abcdef012345) over deliveries received from 1970-01-01T00:00:00Z to 2026-11-23T00:00:00Z: dry run, nothing was written\n"), "{text}");
        assert!(text.contains("records: 1 to correct, 0 withdrawn"), "{text}");
        assert!(
            text.contains(
                "ORG   METRIC  RECORDS  BEFORE  AFTER  DELTA\nacme  ram     1        1.024   1      -0.024\n"
            ),
            "{text}"
        );
        assert!(text.contains("corrected  ev1       ev1#1   acme  sbx      ram     1.024   1\n"), "{text}");
        assert!(
            text.contains("conflict: delivery ev2 record ev2#0: the plugin now yields another metric"),
            "{text}"
        );
        assert!(text.contains("failed: delivery ev3: signature (left as stored)"), "{text}");
    }
}
