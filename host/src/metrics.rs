//! Process-wide metrics, served at `GET /metrics` in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! A registry of our own rather than a metrics crate: the label sets are few
//! and known (plugin names, outcomes, kinds), values are atomics, and the
//! text format is a page of code. Every metric is a `static` below, so the
//! code that knows an event counts it with one call and nothing is threaded
//! through constructors. Series are created on first use; unlabelled ones
//! are shown from the start (as 0), so a scrape always lists them.

use std::fmt::Write as _;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `plugin` label of a webhook for a plugin that is not loaded. The path
/// segment is the client's to choose, and a series per typo would grow
/// without bound; plugin names cannot contain parentheses.
pub const UNKNOWN_PLUGIN: &str = "(unknown)";

/// Plugin calls: from warm-instance calls (tens of µs) to polls that wait on
/// the network (seconds).
const CALL_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Commits: about one fsync, more under load or on a remote database.
const COMMIT_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Deliveries per transaction: powers of two up to the committer's 512.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub static INGEST_REQUESTS: Counter<2> = Counter::new(
    "meterd_ingest_requests_total",
    "Webhooks answered, by plugin and outcome: accepted, duplicate, unauthorized, bad_request, too_large, not_found, plugin_error, unavailable.",
    ["plugin", "outcome"],
);
pub static RECORDS_COMMITTED: Counter<0> = Counter::new(
    "meterd_records_committed_total",
    "Usage records committed by webhook deliveries that were not duplicates.",
    [],
);
pub static DUPLICATES: Counter<0> = Counter::new(
    "meterd_duplicates_total",
    "Webhook deliveries that were already stored (redeliveries).",
    [],
);
pub static POLL_RECORDS: Counter<2> = Counter::new(
    "meterd_poll_records_total",
    "Usage records written by polls, by plugin and result: inserted, duplicate, corrected.",
    ["plugin", "result"],
);
pub static POLL_RUNS: Counter<1> = Counter::new(
    "meterd_poll_runs_total",
    "Poll runs of a due target (one or more plugin calls).",
    ["plugin"],
);
pub static POLL_ERRORS: Counter<1> =
    Counter::new("meterd_poll_errors_total", "Poll runs that failed and back off.", ["plugin"]);
pub static PLUGIN_CALL_SECONDS: Histogram<2> = Histogram::new(
    "meterd_plugin_call_seconds",
    "Wall time of plugin calls (handle-webhook, poll, targets), network waits included.",
    ["plugin", "call"],
    CALL_BUCKETS,
);
pub static PLUGIN_CALL_THREADS: Counter<2> = Counter::new(
    "meterd_plugin_call_threads_total",
    "Plugin calls by where they ran: inline (on the async worker that awaited them) or blocking (on a blocking-pool thread).",
    ["plugin", "thread"],
);
pub static PLUGIN_TRAPS: Counter<2> = Counter::new(
    "meterd_plugin_traps_total",
    "Plugin calls the sandbox stopped, by kind: deadline, memory, trap, instantiate.",
    ["plugin", "kind"],
);
pub static COMMIT_BATCH_SIZE: Histogram<0> = Histogram::new(
    "meterd_commit_batch_size",
    "Webhook deliveries per commit transaction (group commit).",
    [],
    BATCH_BUCKETS,
);
pub static COMMIT_SECONDS: Histogram<0> = Histogram::new(
    "meterd_commit_seconds",
    "Time to commit one transaction of webhook deliveries, failed attempts included.",
    [],
    COMMIT_BUCKETS,
);
pub static RELOADS: Counter<2> = Counter::new(
    "meterd_reloads_total",
    "Hot reloads while serving: what (plugin file, config) and result (ok, refused).",
    ["what", "result"],
);

/// Every metric, as text for a scrape.
pub fn render() -> String {
    let mut out = String::with_capacity(8 << 10);
    write_header(&mut out, "meterd_build_info", "The running version; always 1.", "gauge");
    let _ = writeln!(out, "meterd_build_info{{version=\"{}\"}} 1", escape_label(env!("CARGO_PKG_VERSION")));
    INGEST_REQUESTS.render(&mut out);
    RECORDS_COMMITTED.render(&mut out);
    DUPLICATES.render(&mut out);
    POLL_RECORDS.render(&mut out);
    POLL_RUNS.render(&mut out);
    POLL_ERRORS.render(&mut out);
    PLUGIN_CALL_SECONDS.render(&mut out);
    PLUGIN_CALL_THREADS.render(&mut out);
    PLUGIN_TRAPS.render(&mut out);
    COMMIT_BATCH_SIZE.render(&mut out);
    COMMIT_SECONDS.render(&mut out);
    RELOADS.render(&mut out);
    out
}

/// The series of one metric, kept sorted by label values so that lookups
/// are a binary search (no allocation once a series exists) and the
/// exposition comes out in a stable order.
struct Series<T, const N: usize> {
    entries: RwLock<Vec<([String; N], T)>>,
}

impl<T, const N: usize> Series<T, N> {
    const fn new() -> Self {
        Self { entries: RwLock::new(Vec::new()) }
    }

    /// Runs `f` on the series of `labels`, made with `make` if new.
    fn with(&self, labels: [&str; N], make: impl FnOnce() -> T, f: impl FnOnce(&T)) {
        let find = |entries: &[([String; N], T)]| {
            entries.binary_search_by(|(key, _)| key.iter().map(String::as_str).cmp(labels.iter().copied()))
        };
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Ok(i) = find(&entries) {
                return f(&entries[i].1);
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Another thread may have added it between the two locks.
        let i = find(&entries).unwrap_or_else(|i| {
            entries.insert(i, (labels.map(str::to_owned), make()));
            i
        });
        f(&entries[i].1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<([String; N], T)>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A monotonic count per label set.
pub struct Counter<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: Series<AtomicU64, N>,
}

impl<const N: usize> Counter<N> {
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self { name, help, labels, series: Series::new() }
    }

    pub fn inc(&self, labels: [&str; N]) {
        self.inc_by(labels, 1);
    }

    /// Adds `n` (0 creates the series, so it is shown before it first moves).
    pub fn inc_by(&self, labels: [&str; N], n: u64) {
        self.series.with(labels, AtomicU64::default, |count| {
            count.fetch_add(n, Ordering::Relaxed);
        });
    }

    fn render(&self, out: &mut String) {
        write_header(out, self.name, self.help, "counter");
        let entries = self.series.read();
        if N == 0 && entries.is_empty() {
            let _ = writeln!(out, "{} 0", self.name);
        }
        for (values, count) in entries.iter() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_set(&self.labels, values, None),
                count.load(Ordering::Relaxed)
            );
        }
    }
}

/// Observations in fixed buckets per label set.
pub struct Histogram<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    /// Upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    series: Series<Buckets, N>,
}

/// One series of a histogram: a count per bucket (not cumulative; the last
/// one is above every bound) and the sum of what was observed.
struct Buckets {
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Buckets {
    fn new(bounds: usize) -> Self {
        Self { counts: (0..=bounds).map(|_| AtomicU64::new(0)).collect(), sum_bits: AtomicU64::new(0) }
    }

    fn observe(&self, bounds: &[f64], value: f64) {
        let bucket = bounds.iter().position(|&le| value <= le).unwrap_or(bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // There is no atomic float add: compare-and-swap the bits.
        let _ = self.sum_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

impl<const N: usize> Histogram<N> {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        bounds: &'static [f64],
    ) -> Self {
        Self { name, help, labels, bounds, series: Series::new() }
    }

    pub fn observe(&self, labels: [&str; N], value: f64) {
        let bounds = self.bounds;
        self.series.with(labels, || Buckets::new(bounds.len()), |b| b.observe(bounds, value));
    }

    pub fn observe_duration(&self, labels: [&str; N], elapsed: Duration) {
        self.observe(labels, elapsed.as_secs_f64());
    }

    fn render(&self, out: &mut String) {
        write_header(out, self.name, self.help, "histogram");
        let entries = self.series.read();
        if N == 0 && entries.is_empty() {
            self.render_series(
                out,
                &std::array::from_fn(|_| String::new()),
                &Buckets::new(self.bounds.len()),
            );
        }
        for (values, buckets) in entries.iter() {
            self.render_series(out, values, buckets);
        }
    }

    fn render_series(&self, out: &mut String, values: &[String; N], buckets: &Buckets) {
        let name = self.name;
        let mut cumulative = 0u64;
        for (i, count) in buckets.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let labels = label_set(&self.labels, values, Some(&le));
            let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
        }
        // `_count` is the `+Inf` bucket read once, so the two always agree.
        let labels = label_set(&self.labels, values, None);
        let sum = f64::from_bits(buckets.sum_bits.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {cumulative}");
    }
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="1",b="2"}` (with `le` last for a bucket), or nothing without labels.
fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> =
        names.iter().zip(values).map(|(name, value)| format!("{name}=\"{}\"", escape_label(value))).collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(f: impl FnOnce(&mut String)) -> String {
        let mut out = String::new();
        f(&mut out);
        out
    }

    #[test]
    fn counters_are_exposed_sorted_by_labels_with_help_and_type() {
        let c = Counter::new("t_requests_total", "Requests.\nBy outcome.", ["plugin", "outcome"]);
        c.inc(["e2b", "duplicate"]);
        c.inc_by(["e2b", "accepted"], 2);
        c.inc(["daytona", "accepted"]);
        c.inc(["e2b", "accepted"]);
        assert_eq!(
            rendered(|out| c.render(out)),
            "# HELP t_requests_total Requests.\\nBy outcome.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{plugin=\"daytona\",outcome=\"accepted\"} 1\n\
             t_requests_total{plugin=\"e2b\",outcome=\"accepted\"} 3\n\
             t_requests_total{plugin=\"e2b\",outcome=\"duplicate\"} 1\n"
        );
    }

    #[test]
    fn unlabelled_metrics_are_shown_before_they_move() {
        let c = Counter::new("t_total", "T.", []);
        assert!(rendered(|out| c.render(out)).ends_with("\nt_total 0\n"));
        c.inc_by([], 5);
        assert!(rendered(|out| c.render(out)).ends_with("\nt_total 5\n"));
        let h = Histogram::new("t_seconds", "T.", [], &[0.5]);
        let text = rendered(|out| h.render(out));
        assert!(
            text.contains("t_seconds_bucket{le=\"+Inf\"} 0\nt_seconds_sum 0\nt_seconds_count 0\n"),
            "{text}"
        );
        // A labelled metric has no series until something happens.
        let l = Counter::new("t_labelled_total", "T.", ["plugin"]);
        assert_eq!(rendered(|out| l.render(out)).lines().count(), 2);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_the_count() {
        // Values whose float sum prints exactly.
        let h = Histogram::new("t_call_seconds", "Calls.", ["plugin"], &[0.00025, 0.25, 1.0]);
        for v in [0.000125, 0.25, 0.375, 0.75, 4.0] {
            h.observe(["e2b"], v);
        }
        h.observe_duration(["e2b"], Duration::from_millis(500));
        assert_eq!(
            rendered(|out| h.render(out)),
            "# HELP t_call_seconds Calls.\n\
             # TYPE t_call_seconds histogram\n\
             t_call_seconds_bucket{plugin=\"e2b\",le=\"0.00025\"} 1\n\
             t_call_seconds_bucket{plugin=\"e2b\",le=\"0.25\"} 2\n\
             t_call_seconds_bucket{plugin=\"e2b\",le=\"1\"} 5\n\
             t_call_seconds_bucket{plugin=\"e2b\",le=\"+Inf\"} 6\n\
             t_call_seconds_sum{plugin=\"e2b\"} 5.875125\n\
             t_call_seconds_count{plugin=\"e2b\"} 6\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let c = Counter::new("t_total", "T.", ["plugin"]);
        c.inc(["we\"ird\\"]);
        assert!(rendered(|out| c.render(out)).contains("t_total{plugin=\"we\\\"ird\\\\\"} 1\n"));
    }

    #[test]
    fn concurrent_increments_are_all_counted() {
        let c = Counter::new("t_total", "T.", ["plugin"]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..1_000 {
                        c.inc([if (i + t) % 2 == 0 { "a" } else { "b" }]);
                    }
                });
            }
        });
        let text = rendered(|out| c.render(out));
        assert!(text.contains("t_total{plugin=\"a\"} 2000\nt_total{plugin=\"b\"} 2000\n"), "{text}");
    }

    #[test]
    fn the_registry_renders_every_metric_once_in_the_text_format() {
        let text = render();
        assert!(
            text.contains(&format!("meterd_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")))
        );
        for name in [
            "meterd_ingest_requests_total",
            "meterd_records_committed_total",
            "meterd_duplicates_total",
            "meterd_poll_records_total",
            "meterd_poll_runs_total",
            "meterd_poll_errors_total",
            "meterd_plugin_call_seconds",
            "meterd_plugin_call_threads_total",
            "meterd_plugin_traps_total",
            "meterd_commit_batch_size",
            "meterd_commit_seconds",
            "meterd_reloads_total",
        ] {
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
        for line in text.lines() {
            let well_formed = if let Some(comment) = line.strip_prefix("# ") {
                comment.starts_with("HELP meterd_") || comment.starts_with("TYPE meterd_")
            } else {
                line.starts_with("meterd_")
                    && line.rsplit_once(' ').is_some_and(|(_, value)| value.parse::<f64>().is_ok())
            };
            assert!(well_formed, "{line:?}");
        }
    }
}
