//! A scan: one complete listing of a poll target that yields each
//! organization's stored bytes and objects. Pure: pages come from a `list`
//! function, so the whole state machine is tested natively.
//!
//! A big bucket takes many pages, more than one `poll` call should read
//! (the call has a CPU deadline). So a scan reads at most `pages_per_poll`
//! pages per call and hands its state back to the host as the cursor; the
//! host commits it and calls again at once (`more`). If the gateway stops
//! mid-scan, the next poller resumes from that continuation point instead
//! of starting over. Records are produced only when a scan completes, all
//! stamped with the scan's start time, so a partial listing never publishes
//! a too-small total.

use std::collections::BTreeSet;

use meterd_plugin_sdk::{AdapterError, UsageKind, UsageRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::listing::Page;
use crate::settings::{ScanSpec, valid_org};

pub const METRIC_BYTES: &str = "storage_bytes";
pub const METRIC_OBJECTS: &str = "storage_objects";
/// Longest id or subject the host accepts (`record::MAX_ID_LEN`).
const MAX_ID_LEN: usize = 256;

/// What one ListObjectsV2 request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    /// `/` while discovering organizations, none while counting.
    pub delimiter: Option<&'a str>,
    pub continuation_token: Option<&'a str>,
}

/// The poll cursor: an unfinished scan, and (discovery) which orgs the last
/// complete scan reported, so an org whose folder vanished is set to 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub reported: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<Scan>,
}

/// A scan in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// When the listing started: the time its levels are stamped with.
    pub started_ms: i64,
    /// Still finding orgs (discovery only).
    pub discovering: bool,
    /// Continuation token of the listing under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The org being counted (index into `units`).
    pub current: usize,
    pub units: Vec<Unit>,
    /// Pages read so far, for logs.
    pub pages: u64,
}

/// One org's share of a target and its running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub org: String,
    pub prefix: String,
    pub bytes: u64,
    pub objects: u64,
}

/// What one poll call amounts to.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Empty unless the scan completed in this call.
    pub records: Vec<UsageRecord>,
    pub cursor: Cursor,
    /// The scan is unfinished: call again.
    pub more: bool,
    /// Folders found by discovery whose name is not a valid org id.
    pub skipped: Vec<String>,
    /// An unfinished scan was dropped for being older than `max_scan_age`.
    pub restarted_stale: bool,
}

impl Scan {
    fn start(spec: &ScanSpec, now_ms: i64) -> Self {
        let (discovering, units) = match spec {
            ScanSpec::Fixed { org, prefix, .. } => {
                (false, vec![Unit { org: org.clone(), prefix: prefix.clone(), bytes: 0, objects: 0 }])
            }
            ScanSpec::Discover { .. } => (true, Vec::new()),
        };
        Scan { started_ms: now_ms, discovering, token: None, current: 0, units, pages: 0 }
    }

    fn complete(&self) -> bool {
        !self.discovering && self.current >= self.units.len()
    }
}

/// The prefix that holds `org`'s objects under a discovery template.
fn org_prefix(root: &str, org: &str, rest: &str) -> String {
    format!("{root}{org}/{rest}")
}

/// `text` if it fits in `max` bytes, else a prefix of it and a hash of the
/// whole, so ids stay unique and within the host's limits.
fn fit(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let digest: String = Sha256::digest(text.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut cut = max - digest.len() - 1;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}#{digest}", &text[..cut])
}

fn add(total: u64, amount: u64, what: &str, unit: &Unit) -> Result<u64, AdapterError> {
    total.checked_add(amount).ok_or_else(|| {
        AdapterError::Upstream(format!(
            "{what} under {:?} for org {:?} overflows 64 bits",
            unit.prefix, unit.org
        ))
    })
}

/// Reads up to `pages_budget` pages of `spec`'s scan from `cursor` on.
pub fn step(
    spec: &ScanSpec,
    mut cursor: Cursor,
    now_ms: i64,
    pages_budget: u32,
    max_scan_age_ms: i64,
    mut list: impl FnMut(&ListRequest<'_>) -> Result<Page, AdapterError>,
) -> Result<Step, AdapterError> {
    let mut restarted_stale = false;
    let mut scan = match cursor.scan.take() {
        Some(scan) if now_ms.saturating_sub(scan.started_ms) <= max_scan_age_ms => scan,
        Some(_) => {
            restarted_stale = true;
            Scan::start(spec, now_ms)
        }
        None => Scan::start(spec, now_ms),
    };
    let mut skipped = Vec::new();
    let mut pages = 0;
    while !scan.complete() && pages < pages_budget {
        pages += 1;
        // A count for logs, read back from a cursor the host hands in: it
        // must not be able to trap the call (found by the s3_scan fuzz target).
        scan.pages = scan.pages.saturating_add(1);
        if scan.discovering {
            let ScanSpec::Discover { bucket, root, rest } = spec else {
                return Err(AdapterError::Internal(
                    "a fixed target's cursor says it is discovering".to_owned(),
                ));
            };
            let page = list(&ListRequest {
                bucket,
                prefix: root,
                delimiter: Some("/"),
                continuation_token: scan.token.as_deref(),
            })?;
            for folder in page.common_prefixes {
                match folder.strip_prefix(root.as_str()).and_then(|f| f.strip_suffix('/')) {
                    Some(org) if valid_org(org) => scan.units.push(Unit {
                        org: org.to_owned(),
                        prefix: org_prefix(root, org, rest),
                        bytes: 0,
                        objects: 0,
                    }),
                    _ => skipped.push(folder),
                }
            }
            scan.token = page.next_continuation_token;
            scan.discovering = scan.token.is_some();
        } else {
            let unit = &scan.units[scan.current];
            let page = list(&ListRequest {
                bucket: spec.bucket(),
                prefix: &unit.prefix,
                delimiter: None,
                continuation_token: scan.token.as_deref(),
            })?;
            let (mut bytes, mut objects) = (unit.bytes, unit.objects);
            for (_, size) in &page.objects {
                bytes = add(bytes, *size, "stored bytes", unit)?;
            }
            objects = add(objects, page.objects.len() as u64, "object count", unit)?;
            let unit = &mut scan.units[scan.current];
            (unit.bytes, unit.objects) = (bytes, objects);
            scan.token = page.next_continuation_token;
            if scan.token.is_none() {
                scan.current += 1;
            }
        }
    }
    if !scan.complete() {
        cursor.scan = Some(scan);
        return Ok(Step { records: Vec::new(), cursor, more: true, skipped, restarted_stale });
    }
    let mut records = Vec::new();
    for unit in &scan.units {
        records.extend(levels(spec.bucket(), unit, scan.started_ms));
    }
    let mut reported = BTreeSet::new();
    if let ScanSpec::Discover { bucket, root, rest } = spec {
        reported = scan.units.iter().map(|u| u.org.clone()).collect();
        for gone in cursor.reported.difference(&reported) {
            let unit = Unit { org: gone.clone(), prefix: org_prefix(root, gone, rest), bytes: 0, objects: 0 };
            records.extend(levels(bucket, &unit, scan.started_ms));
        }
    }
    Ok(Step { records, cursor: Cursor { reported, scan: None }, more: false, skipped, restarted_stale })
}

/// The two levels of one org's share of a completed scan.
fn levels(bucket: &str, unit: &Unit, at: i64) -> [UsageRecord; 2] {
    let subject = fit(format!("{bucket}/{}", unit.prefix), MAX_ID_LEN);
    let record = |metric: &str, quantity: u64| UsageRecord {
        event_id: fit(format!("s3:{at}:{metric}:{subject}"), MAX_ID_LEN),
        org_id: unit.org.clone(),
        subject: subject.clone(),
        metric: metric.to_owned(),
        kind: UsageKind::Level,
        quantity: quantity.to_string(),
        at,
        window_start: None,
        attributes: vec![
            ("bucket".to_owned(), bucket.to_owned()),
            ("prefix".to_owned(), fit(unit.prefix.clone(), 512)),
        ],
    };
    [record(METRIC_BYTES, unit.bytes), record(METRIC_OBJECTS, unit.objects)]
}
