//! The common usage record, validated: what a plugin said, checked by the
//! host before anything is stored. A plugin is sandboxed, not trusted.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::meter::Kind;
use crate::plugin::RawRecord;

/// Limits on what one record may carry.
pub const MAX_ID_LEN: usize = 256;
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 512;
/// 2000-01-01 and 2200-01-01: a time outside is a unit mistake (seconds
/// for milliseconds), not usage.
pub const MIN_AT_MS: i64 = 946_684_800_000;
pub const MAX_AT_MS: i64 = 7_258_118_400_000;

#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub event_id: String,
    pub org_id: String,
    pub subject: String,
    pub metric: String,
    pub kind: Kind,
    pub quantity: Decimal,
    pub at_ms: i64,
    pub window_start_ms: Option<i64>,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index} ({metric:?}): {problem}")]
pub struct RecordError {
    pub index: usize,
    pub metric: String,
    pub problem: String,
}

/// Whether `key` may name an attribute (and so a group-by).
pub fn valid_attribute_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ATTRIBUTE_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Whether `name` may name a metric.
pub fn valid_metric(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks one record; `index` is its position in the plugin's answer.
pub fn validate(index: usize, raw: RawRecord) -> Result<UsageRecord, RecordError> {
    let fail = |problem: String| RecordError { index, metric: raw.metric.clone(), problem };
    for (field, value) in [("event-id", &raw.event_id), ("org-id", &raw.org_id), ("subject", &raw.subject)] {
        if value.trim().is_empty() {
            return Err(fail(format!("{field} is empty")));
        }
        if value.len() > MAX_ID_LEN {
            return Err(fail(format!("{field} is longer than {MAX_ID_LEN} bytes")));
        }
    }
    if !valid_metric(&raw.metric) {
        return Err(fail("metric must be 1-128 characters of a-z, A-Z, 0-9, '_', '.', '-'".to_owned()));
    }
    let quantity = meterd_units::parse_quantity(&raw.quantity).map_err(|e| fail(e.to_string()))?;
    for (field, at) in [("at", Some(raw.at_ms)), ("window-start", raw.window_start_ms)] {
        if let Some(at) = at
            && !(MIN_AT_MS..MAX_AT_MS).contains(&at)
        {
            return Err(fail(format!("{field} {at} is not a millisecond time between 2000 and 2200")));
        }
    }
    if raw.window_start_ms.is_some_and(|start| start > raw.at_ms) {
        return Err(fail("window-start is after at".to_owned()));
    }
    if raw.kind == Kind::Level && raw.window_start_ms.is_some() {
        return Err(fail("a level has no window-start".to_owned()));
    }
    if raw.attributes.len() > MAX_ATTRIBUTES {
        return Err(fail(format!("more than {MAX_ATTRIBUTES} attributes")));
    }
    let mut attributes = BTreeMap::new();
    for (key, value) in &raw.attributes {
        if !valid_attribute_key(key) {
            return Err(fail(format!(
                "attribute key {key:?} must be 1-{MAX_ATTRIBUTE_KEY_LEN} characters of a-z, A-Z, 0-9, '_', '-', '.', ':'"
            )));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(fail(format!("attribute {key:?} is longer than {MAX_ATTRIBUTE_VALUE_LEN} bytes")));
        }
        if attributes.insert(key.clone(), value.clone()).is_some() {
            return Err(fail(format!("attribute {key:?} appears twice")));
        }
    }
    Ok(UsageRecord {
        quantity,
        attributes,
        event_id: raw.event_id,
        org_id: raw.org_id,
        subject: raw.subject,
        metric: raw.metric,
        kind: raw.kind,
        at_ms: raw.at_ms,
        window_start_ms: raw.window_start_ms,
    })
}

/// A webhook answer as the host accepts it: an event id of 1-`MAX_ID_LEN`
/// bytes and valid records (ingest and the conformance kit both use this).
pub fn validate_webhook(
    outcome: crate::plugin::WebhookOutcome,
) -> Result<(String, Vec<UsageRecord>), String> {
    if outcome.event_id.trim().is_empty() || outcome.event_id.len() > MAX_ID_LEN {
        return Err(format!("event-id must be 1-{MAX_ID_LEN} bytes"));
    }
    let records = validate_all(outcome.records).map_err(|e| e.to_string())?;
    Ok((outcome.event_id, records))
}

/// Checks every record of one plugin answer; the first bad one fails it all.
pub fn validate_all(raw: Vec<RawRecord>) -> Result<Vec<UsageRecord>, RecordError> {
    raw.into_iter().enumerate().map(|(i, r)| validate(i, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRecord {
        RawRecord {
            event_id: "ev".into(),
            org_id: "acme".into(),
            subject: "sbx".into(),
            metric: "sandbox_cpu_core_seconds".into(),
            kind: Kind::Delta,
            quantity: "144.246".into(),
            at_ms: 1_754_513_976_123,
            window_start_ms: Some(1_754_513_904_000),
            attributes: vec![("template_id".into(), "t".into())],
        }
    }

    #[test]
    fn accepts_a_good_record_with_an_exact_quantity() {
        let r = validate(0, raw()).unwrap();
        assert_eq!(r.quantity, Decimal::new(144_246, 3));
        assert_eq!(r.attributes["template_id"], "t");
    }

    #[test]
    fn refuses_bad_records_saying_why() {
        type Mutation = Box<dyn Fn(&mut RawRecord)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.org_id = " ".into()), "org-id is empty"),
            (Box::new(|r| r.event_id = "x".repeat(300)), "event-id is longer"),
            (Box::new(|r| r.metric = "cpu seconds".into()), "metric must be"),
            (Box::new(|r| r.quantity = "1e3".into()), "not a decimal"),
            (Box::new(|r| r.quantity = "0.1".into() /* fine */), ""),
            (Box::new(|r| r.at_ms = 1_754_513_976), "between 2000 and 2200"),
            (Box::new(|r| r.window_start_ms = Some(r.at_ms + 1)), "window-start is after at"),
            (Box::new(|r| r.kind = Kind::Level), "a level has no window-start"),
            (Box::new(|r| r.attributes.push(("template_id".into(), "u".into()))), "appears twice"),
            (Box::new(|r| r.attributes.push(("bad key".into(), "u".into()))), "attribute key"),
        ];
        for (mutate, expected) in cases {
            let mut r = raw();
            mutate(&mut r);
            match validate(3, r) {
                Ok(_) => assert!(expected.is_empty(), "expected an error mentioning {expected:?}"),
                Err(e) => {
                    assert!(
                        !expected.is_empty() && e.to_string().contains(expected),
                        "{e} should mention {expected:?}"
                    );
                    assert!(e.to_string().starts_with("record 3 "));
                }
            }
        }
    }
}
