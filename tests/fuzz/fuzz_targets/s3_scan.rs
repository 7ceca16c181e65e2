//! The S3 adapter's resumable scan (`scan::step`), driven as the host drives
//! it: poll after poll, the cursor written to JSON and read back in
//! between, the clock moving on, against an in-memory bucket that answers
//! ListObjectsV2 as S3 does (sorted keys, prefix, `/` delimiter, pages of a
//! few entries, continuation tokens).
//!
//! Properties: the scan ends; the plugin asks only for the target's bucket,
//! the discovery root with `/` as delimiter, or an org's prefix without one;
//! a completed scan gives each org exactly the bytes and object count under
//! its prefix (computed here from the bucket), at the time the scan
//! started, or is refused as `Upstream` exactly when a total overflows 64
//! bits; discovery finds exactly the folders under the root whose names are
//! valid org ids and skips the others; an org found by one scan and gone
//! from the next is set to 0; a scan older than `max_scan_age` starts over;
//! every record passes the host's field checks, ids within 256 bytes and
//! unique. A cursor read from arbitrary JSON is refused or used without a
//! panic.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meterd_fuzz::{MAX_ID_LEN, check_record};
use meterd_plugin_s3_storage::listing::Page;
use meterd_plugin_s3_storage::{Cursor, ListRequest, METRIC_BYTES, METRIC_OBJECTS, ScanSpec, step};
use meterd_plugin_sdk::{AdapterError, UsageKind, UsageRecord};

const BUCKET: &str = "meter-bucket";
const SEGMENTS: [&str; 10] = ["tenants", "acme", "beta", "data", "x", "", "a b", "ü", "org#1", " "];
const ROOTS: [&str; 3] = ["", "tenants/", "tenants/x/"];
const RESTS: [&str; 3] = ["", "data/", "x"];
const START_MS: i64 = 1_780_000_000_000;

#[derive(Debug, Arbitrary)]
struct Input {
    discover: bool,
    root: u8,
    rest: u8,
    /// Fixed targets: the prefix, as segments.
    prefix: Vec<u8>,
    objects: Vec<(Vec<u8>, u64)>,
    small_sizes: bool,
    page_size: u8,
    budget: u8,
    max_age_s: u16,
    advances_s: Vec<u16>,
    /// Objects removed between the first and the second scan.
    removed: Vec<u16>,
    /// A cursor the host hands back that this plugin did not write.
    foreign: Option<Foreign>,
}

#[derive(Debug, Arbitrary)]
struct Foreign {
    reported: Vec<String>,
    started_ms: i64,
    discovering: bool,
    token: Option<String>,
    current: u64,
    units: Vec<(String, String, u64, u64)>,
    pages: u64,
}

fn key(segments: &[u8]) -> String {
    segments.iter().map(|s| SEGMENTS[usize::from(s % 10)]).collect::<Vec<_>>().join("/")
}

/// org → (its prefix, bytes as u128 to see overflow, objects), and the
/// folders discovery skips.
type Expected = (BTreeMap<String, (String, u128, u64)>, BTreeSet<String>);

/// ListObjectsV2 over a sorted map, `page_size` entries a page.
struct Bucket {
    objects: BTreeMap<String, u64>,
    page_size: usize,
    spec: ScanSpec,
}

impl Bucket {
    /// Answers `r`; `strict`: first check that the plugin asks for what its
    /// target and its own cursor call for.
    fn list(&self, r: &ListRequest<'_>, strict: bool) -> Result<Page, AdapterError> {
        assert_eq!(r.bucket, BUCKET);
        match (&self.spec, r.delimiter) {
            _ if !strict => {}
            (ScanSpec::Discover { root, .. }, Some("/")) => assert_eq!(r.prefix, root),
            (ScanSpec::Discover { root, rest, .. }, None) => {
                let org =
                    r.prefix.strip_prefix(root.as_str()).and_then(|p| p.strip_suffix(&format!("/{rest}")));
                assert!(org.is_some_and(valid_org), "asked for {:?}", r.prefix);
            }
            (ScanSpec::Fixed { prefix, .. }, None) => assert_eq!(r.prefix, prefix),
            other => panic!("unexpected request {r:?} for {other:?}"),
        }
        // Keys, and with a delimiter the folders they fall in, in order.
        let mut entries: Vec<(String, Option<u64>)> = Vec::new();
        for (key, size) in
            self.objects.range(r.prefix.to_owned()..).take_while(|(k, _)| k.starts_with(r.prefix))
        {
            let after = &key[r.prefix.len()..];
            match r.delimiter.and_then(|d| after.find(d).map(|i| i + d.len())) {
                Some(end) => {
                    let folder = format!("{}{}", r.prefix, &after[..end]);
                    if entries.last().is_none_or(|(k, s)| *k != folder || s.is_some()) {
                        entries.push((folder, None));
                    }
                }
                None => entries.push((key.clone(), Some(*size))),
            }
        }
        let start: usize = match r.continuation_token {
            Some(token) if strict => token.parse().expect("a token this bucket gave"),
            // A foreign cursor's token: S3 would refuse it; answer from the start.
            Some(token) => token.parse().unwrap_or(0),
            None => 0,
        };
        let end = start.saturating_add(self.page_size).min(entries.len());
        let mut page = Page::default();
        for (name, size) in &entries[start.min(end)..end] {
            match size {
                Some(size) => page.objects.push((name.clone(), *size)),
                None => page.common_prefixes.push(name.clone()),
            }
        }
        page.next_continuation_token = (end < entries.len()).then(|| end.to_string());
        Ok(page)
    }

    /// org → (prefix, bytes, objects) as a complete scan should find them,
    /// with the folders to skip; totals as u128 to see overflow.
    fn expected(&self) -> Expected {
        let under = |prefix: &str| {
            let sizes =
                self.objects.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, s)| u128::from(*s));
            (sizes.clone().sum::<u128>(), sizes.count() as u64)
        };
        let mut orgs = BTreeMap::new();
        let mut skipped = BTreeSet::new();
        match &self.spec {
            ScanSpec::Fixed { org, prefix, .. } => {
                let (bytes, objects) = under(prefix);
                orgs.insert(org.clone(), (prefix.clone(), bytes, objects));
            }
            ScanSpec::Discover { root, rest, .. } => {
                for key in self.objects.keys() {
                    let Some((folder, _)) = key.strip_prefix(root.as_str()).and_then(|k| k.split_once('/'))
                    else {
                        continue;
                    };
                    if valid_org(folder) {
                        let prefix = format!("{root}{folder}/{rest}");
                        let (bytes, objects) = under(&prefix);
                        orgs.insert(folder.to_owned(), (prefix, bytes, objects));
                    } else {
                        skipped.insert(format!("{root}{folder}/"));
                    }
                }
            }
        }
        (orgs, skipped)
    }
}

/// The rule for org ids, as the plugin documents it.
fn valid_org(org: &str) -> bool {
    !org.trim().is_empty()
        && org.len() <= 128
        && !org.chars().any(|c| c.is_control() || matches!(c, '/' | '?' | '#'))
}

fn started_ms(cursor: &Cursor) -> Option<i64> {
    serde_json::to_value(cursor).ok()?["scan"]["started_ms"].as_i64()
}

/// Polls until a scan completes; returns its records and when it started,
/// or `None` when it was refused for an overflowing total.
fn scan(
    bucket: &Bucket,
    cursor: &mut Cursor,
    now: &mut i64,
    advances: &mut impl Iterator<Item = i64>,
    budget: u32,
    max_age_ms: i64,
) -> Option<(Vec<UsageRecord>, BTreeSet<String>, i64)> {
    let mut skipped = BTreeSet::new();
    let mut started = None;
    for _ in 0..100_000 {
        let before = started_ms(cursor);
        let stale = before.is_some_and(|s| *now - s > max_age_ms);
        if before.is_none() || stale {
            started = Some(*now);
            skipped.clear();
        }
        let result = step(&bucket.spec, cursor.clone(), *now, budget, max_age_ms, |r| bucket.list(r, true));
        let out = match result {
            Ok(out) => out,
            Err(AdapterError::Upstream(message)) => {
                assert!(message.contains("overflows 64 bits"), "{message}");
                return None;
            }
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(out.restarted_stale, stale);
        skipped.extend(out.skipped);
        // The host keeps the cursor as JSON text.
        let text = serde_json::to_string(&out.cursor).expect("a cursor is JSON");
        let back: Cursor = serde_json::from_str(&text).expect("a cursor reads back");
        assert_eq!(back, out.cursor);
        *cursor = back;
        let at = started.expect("a scan started");
        if !out.more {
            assert!(cursor.scan.is_none());
            return Some((out.records, skipped, at));
        }
        assert!(out.records.is_empty(), "records before the scan completed");
        assert_eq!(started_ms(cursor), Some(at));
        *now += advances.next().unwrap_or(0);
    }
    panic!("the scan did not end in 100,000 polls");
}

fn check(
    bucket: &Bucket,
    records: &[UsageRecord],
    skipped: &BTreeSet<String>,
    at: i64,
    gone: &BTreeSet<String>,
) -> BTreeSet<String> {
    let (orgs, expected_skipped) = bucket.expected();
    if orgs.values().any(|(_, bytes, _)| *bytes > u128::from(u64::MAX)) {
        panic!("a scan completed although a total overflows 64 bits");
    }
    assert_eq!(skipped, &expected_skipped);
    let mut ids = BTreeSet::new();
    let mut seen: BTreeMap<(String, &str), String> = BTreeMap::new();
    for r in records {
        check_record(r);
        assert!(r.event_id.len() <= MAX_ID_LEN && r.subject.len() <= MAX_ID_LEN, "{r:?}");
        assert!(ids.insert(r.event_id.clone()), "event id twice: {r:?}");
        assert_eq!((r.kind, r.at), (UsageKind::Level, at));
        assert!(r.attributes.iter().all(|(_, v)| v.len() <= 512));
        assert!(seen.insert((r.org_id.clone(), r.metric.as_str()), r.quantity.clone()).is_none(), "{r:?}");
    }
    let mut reported = BTreeSet::new();
    for (org, (_, bytes, objects)) in &orgs {
        assert_eq!(seen.remove(&(org.clone(), METRIC_BYTES)), Some(bytes.to_string()), "{org} bytes");
        assert_eq!(seen.remove(&(org.clone(), METRIC_OBJECTS)), Some(objects.to_string()), "{org} objects");
        reported.insert(org.clone());
    }
    for org in gone.difference(&reported) {
        assert_eq!(seen.remove(&(org.clone(), METRIC_BYTES)).as_deref(), Some("0"), "{org} gone");
        assert_eq!(seen.remove(&(org.clone(), METRIC_OBJECTS)).as_deref(), Some("0"), "{org} gone");
    }
    assert!(seen.is_empty(), "unexpected records {seen:?}");
    reported
}

fuzz_target!(|input: Input| {
    let spec = if input.discover {
        ScanSpec::Discover {
            bucket: BUCKET.to_owned(),
            root: ROOTS[usize::from(input.root % 3)].to_owned(),
            rest: RESTS[usize::from(input.rest % 3)].to_owned(),
        }
    } else {
        ScanSpec::Fixed { org: "acme".to_owned(), bucket: BUCKET.to_owned(), prefix: key(&input.prefix) }
    };
    let objects: BTreeMap<String, u64> = input
        .objects
        .iter()
        .map(|(k, size)| (key(k), if input.small_sizes { size % 1_000_000 } else { *size }))
        .collect();
    let mut bucket = Bucket { objects, page_size: usize::from(input.page_size % 4) + 1, spec: spec.clone() };
    let budget = u32::from(input.budget % 3) + 1;
    let max_age_ms = i64::from(input.max_age_s) * 1_000 + 1_000;
    let mut advances = input.advances_s.iter().map(|s| i64::from(*s) * 100);

    if let Some(f) = &input.foreign {
        let text = serde_json::json!({
            "reported": f.reported,
            "scan": {
                "started_ms": f.started_ms, "discovering": f.discovering, "token": f.token,
                "current": f.current, "pages": f.pages,
                "units": f.units.iter().map(|(org, prefix, bytes, objects)|
                    serde_json::json!({"org": org, "prefix": prefix, "bytes": bytes, "objects": objects})).collect::<Vec<_>>(),
            },
        })
        .to_string();
        if let Ok(cursor) = serde_json::from_str::<Cursor>(&text) {
            // Used or refused, never a panic.
            let _ = step(&spec, cursor, START_MS, budget, max_age_ms, |r| bucket.list(r, false));
        }
    }

    let mut cursor = Cursor::default();
    let mut now = START_MS;
    let Some((records, skipped, at)) =
        scan(&bucket, &mut cursor, &mut now, &mut advances, budget, max_age_ms)
    else {
        let (orgs, _) = bucket.expected();
        assert!(
            orgs.values().any(|(_, bytes, _)| *bytes > u128::from(u64::MAX)),
            "refused without an overflow"
        );
        return;
    };
    let reported = check(&bucket, &records, &skipped, at, &BTreeSet::new());
    if let ScanSpec::Discover { .. } = spec {
        assert_eq!(cursor.reported, reported);
    }

    // Some objects removed; the next scan sets vanished orgs to 0.
    let keys: Vec<String> = bucket.objects.keys().cloned().collect();
    for i in &input.removed {
        if let Some(k) = keys.get(usize::from(*i) % keys.len().max(1)) {
            bucket.objects.remove(k);
        }
    }
    now += 1_000;
    let Some((records, skipped, at)) =
        scan(&bucket, &mut cursor, &mut now, &mut advances, budget, max_age_ms)
    else {
        panic!("a smaller bucket overflowed");
    };
    let gone = if input.discover { reported } else { BTreeSet::new() };
    check(&bucket, &records, &skipped, at, &gone);
});
