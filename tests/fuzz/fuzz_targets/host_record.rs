//! The host's validation of plugin output (`meterd_core::record::validate`),
//! the gate between an untrusted plugin and the store: every record a
//! plugin returns passes through it before anything is written.
//!
//! Input: an arbitrary raw record (ids, metric, kind, quantity text, times,
//! attributes), with the strings drawn partly from near-valid alphabets so
//! that both sides of each rule are reached.
//!
//! Properties, against a reference written here from the rules in
//! ARCHITECTURE.md and `record.rs`'s docs: a record is accepted exactly when
//! the reference accepts it; an accepted record keeps every field as given,
//! its attributes as a map of the same pairs, and a quantity equal to the
//! text's value (its canonical form is the text with leading and trailing
//! zeros and a `-` on zero dropped); a refusal names the record's index and
//! metric. Syntax-valid quantity text is refused only when it has more
//! digits than a 96-bit decimal holds exactly.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meterd_core::meter::Kind;
use meterd_core::plugin::RawRecord;
use meterd_core::record::validate;

#[derive(Debug, Arbitrary)]
struct Input {
    index: u8,
    event_id: Text,
    org_id: Text,
    subject: Text,
    metric: Text,
    level: bool,
    quantity: Text,
    at_ms: Time,
    window_start_ms: Option<Time>,
    attributes: Vec<(Text, Text)>,
}

/// A string: free text, or one drawn from a small alphabet and length so
/// that valid values are common.
#[derive(Debug, Arbitrary)]
enum Text {
    Free(String),
    Near { alphabet: u8, picks: Vec<u8>, repeat: u16 },
}

const ALPHABETS: [&str; 5] = ["abc_.-:", "0123456789", "0123456789.-", " \t", "aé€🦀"];

impl Text {
    fn render(&self) -> String {
        match self {
            Text::Free(s) => s.clone(),
            Text::Near { alphabet, picks, repeat } => {
                let chars: Vec<char> = ALPHABETS[*alphabet as usize % ALPHABETS.len()].chars().collect();
                let one: String = picks.iter().map(|p| chars[*p as usize % chars.len()]).collect();
                // Long strings reach the length limits (256, 512, 128, 64).
                one.repeat(1 + *repeat as usize % 70)
            }
        }
    }
}

/// A time: near the accepted range's ends, or any.
#[derive(Debug, Arbitrary)]
enum Time {
    Any(i64),
    NearMin(i16),
    NearMax(i16),
}

const MIN_AT_MS: i64 = 946_684_800_000; // 2000-01-01
const MAX_AT_MS: i64 = 7_258_118_400_000; // 2200-01-01

impl Time {
    fn ms(&self) -> i64 {
        match self {
            Time::Any(t) => *t,
            Time::NearMin(d) => MIN_AT_MS + i64::from(*d),
            Time::NearMax(d) => MAX_AT_MS + i64::from(*d),
        }
    }
}

/// The reference: ids non-blank and at most 256 bytes; a metric of 1-128
/// of `[A-Za-z0-9_.-]`; quantity text `-?digits(.digits)?`; times in
/// [2000, 2200); a window start not after `at`, and none on a level; at
/// most 32 attributes, keys of 1-64 of `[A-Za-z0-9_.:-]`, values at most
/// 512 bytes, no key twice.
fn accepted(raw: &RawRecord) -> bool {
    let id = |s: &str| !s.trim().is_empty() && s.len() <= 256;
    let metric = (1..=128).contains(&raw.metric.chars().count())
        && raw.metric.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    let in_range = |t: i64| (MIN_AT_MS..MAX_AT_MS).contains(&t);
    let key = |k: &str| (1..=64).contains(&k.len()) && k.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    let mut keys = std::collections::BTreeSet::new();
    id(&raw.event_id)
        && id(&raw.org_id)
        && id(&raw.subject)
        && metric
        && quantity_syntax(&raw.quantity)
        && in_range(raw.at_ms)
        && raw.window_start_ms.is_none_or(|w| in_range(w) && w <= raw.at_ms)
        && !(raw.kind == Kind::Level && raw.window_start_ms.is_some())
        && raw.attributes.len() <= 32
        && raw.attributes.iter().all(|(k, v)| key(k) && v.len() <= 512 && keys.insert(k.clone()))
}

fn quantity_syntax(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let mut parts = digits.splitn(2, '.');
    let all = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let int = parts.next().unwrap_or("");
    all(int) && parts.next().is_none_or(all)
}

/// The canonical text of a syntax-valid quantity, computed on the text.
fn canonical(text: &str) -> String {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let body = match (int.is_empty(), frac.is_empty()) {
        (true, true) => return "0".to_owned(),
        (true, false) => format!("0.{frac}"),
        (false, true) => int.to_owned(),
        (false, false) => format!("{int}.{frac}"),
    };
    if negative { format!("-{body}") } else { body }
}

/// Significant digits and scale of a syntax-valid quantity.
fn size(text: &str) -> (usize, usize) {
    let digits = text.trim_start_matches('-');
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let significant = format!("{int}{frac}").trim_start_matches('0').len();
    (significant, frac.len())
}

fuzz_target!(|input: Input| {
    let raw = RawRecord {
        event_id: input.event_id.render(),
        org_id: input.org_id.render(),
        subject: input.subject.render(),
        metric: input.metric.render(),
        kind: if input.level { Kind::Level } else { Kind::Delta },
        quantity: input.quantity.render(),
        at_ms: input.at_ms.ms(),
        window_start_ms: input.window_start_ms.as_ref().map(Time::ms),
        attributes: input.attributes.iter().take(40).map(|(k, v)| (k.render(), v.render())).collect(),
    };
    let index = usize::from(input.index);
    let expected = accepted(&raw);
    match validate(index, raw.clone()) {
        Ok(record) => {
            assert!(expected, "accepted what the rules refuse: {raw:?}");
            assert_eq!(
                (&record.event_id, &record.org_id, &record.subject, &record.metric),
                (&raw.event_id, &raw.org_id, &raw.subject, &raw.metric)
            );
            assert_eq!((record.kind, record.at_ms, record.window_start_ms), (raw.kind, raw.at_ms, raw.window_start_ms));
            let pairs: Vec<(String, String)> = record.attributes.clone().into_iter().collect();
            let mut given = raw.attributes.clone();
            given.sort();
            assert_eq!(pairs, given, "attributes");
            assert_eq!(meterd_units::format_quantity(record.quantity), canonical(&raw.quantity), "{:?}", raw.quantity);
        }
        Err(e) => {
            assert_eq!((e.index, &e.metric), (index, &raw.metric), "the refusal names the record");
            if expected {
                // Only a quantity too precise for a decimal may be refused.
                let (significant, scale) = size(&raw.quantity);
                assert!(significant > 28 || scale > 28, "refused a valid record ({e}): {raw:?}");
            }
        }
    }
});
