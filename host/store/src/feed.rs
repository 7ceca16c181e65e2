//! The change feed: how one replica learns what the others committed.
//!
//! Every PostgreSQL transaction that writes usage records, plans, grants or
//! fired notices also sends `NOTIFY meterd_changes` with what it changed,
//! tagged with its transaction id. NOTIFY is transactional: a notification
//! is delivered only if its transaction commits, after it commits, and in
//! commit order. So while a replica's listening connection lasts it sees
//! every committed change exactly once — its own included, which is how it
//! learns that a change it applied early (inside its own transaction) is
//! now confirmed.
//!
//! When that connection drops, notifications are lost. The replica then
//! listens again and rebuilds its state from a snapshot; the snapshot's
//! [`Visibility`] says which transactions it already includes, so each
//! later notification is applied exactly when the snapshot lacks it.
//!
//! SQLite has one writer process: it has no feed.

use std::collections::HashSet;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{OrgEffect, OrgPlan};
use crate::plans::standing::{Effect, Run};

/// The PostgreSQL channel every replica listens on.
pub const CHANNEL: &str = "meterd_changes";

/// A PostgreSQL transaction id (`xid8`: 64 bits, never wraps).
pub type TxId = u64;

/// PostgreSQL refuses payloads of 8,000 bytes or more; the transaction id
/// and the part number go in front of this much JSON.
const MAX_JSON_BYTES: usize = 7_900;

/// What one committed transaction changed (or one part of it: a large
/// transaction sends several notifications with the same id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedMessage {
    /// What the transaction's records changed (see `OrgEffect`).
    pub effects: Vec<OrgEffect>,
    pub plans: Vec<OrgPlan>,
    /// Orgs that were granted credit.
    pub grants: Vec<String>,
    /// (org, rule, period start) of notices that fired.
    pub fired: Vec<(String, String, i64)>,
}

impl FeedMessage {
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty() && self.plans.is_empty() && self.grants.is_empty() && self.fired.is_empty()
    }
}

/// What a replica's feed delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// Notifications may have been missed (the connection dropped and
    /// listening has resumed, or one could not be read): state must be
    /// rebuilt from a snapshot taken now.
    Gap,
    /// Transaction `tx` committed `message`. A large transaction arrives in
    /// several parts; `last` marks its final one.
    Committed { tx: TxId, last: bool, message: FeedMessage },
}

/// Which transactions a snapshot includes: PostgreSQL's `pg_snapshot`
/// (`xmin:xmax:in-progress,…`). A transaction is visible if it finished
/// before `xmin`, or before `xmax` and was not in progress when the
/// snapshot was taken; only committed ones write, so visible means its
/// changes are in what the snapshot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    xmin: TxId,
    xmax: TxId,
    in_progress: HashSet<TxId>,
}

impl Visibility {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a pg_snapshot");
        let mut parts = text.trim().splitn(3, ':');
        let mut next = || parts.next().ok_or_else(bad);
        let xmin = next()?.parse().map_err(|_| bad())?;
        let xmax = next()?.parse().map_err(|_| bad())?;
        let in_progress = next()?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        Ok(Self { xmin, xmax, in_progress })
    }

    /// Whether transaction `tx`'s changes are in the snapshot.
    pub fn sees(&self, tx: TxId) -> bool {
        tx < self.xmin || (tx < self.xmax && !self.in_progress.contains(&tx))
    }
}

/// The notification payloads of one transaction's message:
/// `"<tx> <part>/<parts> <json>"`, each under PostgreSQL's limit. The JSON is an array of tagged items:
/// `["r", org, metric, hour, added, delta]`, `["s", org, metric, at,
/// change]` and `["u", org, metric, subject, started, ended, added]` per
/// effect, `["p", org, plan, assigned_at]`, `["g", org]`,
/// `["f", org, rule, period_start]`. Quantities are decimal strings (exact).
pub fn encode(tx: TxId, message: &FeedMessage) -> Vec<String> {
    let changes = message.effects.iter().map(|e| match &e.effect {
        Effect::Records { at_ms, added, delta } => {
            json!(["r", e.org_id, e.metric, at_ms, added, delta.to_string()])
        }
        Effect::Step { at_ms, change } => json!(["s", e.org_id, e.metric, at_ms, change.to_string()]),
        Effect::Run { run, added } => {
            json!(["u", e.org_id, e.metric, run.subject, run.started_ms, run.ended_ms, added])
        }
    });
    let plans = message.plans.iter().map(|p| json!(["p", p.org_id, p.plan, p.assigned_at_ms]));
    let grants = message.grants.iter().map(|org| json!(["g", org]));
    let fired = message.fired.iter().map(|(org, rule, period)| json!(["f", org, rule, period]));
    let mut parts = Vec::new();
    let mut current = String::new();
    for item in changes.chain(plans).chain(grants).chain(fired) {
        let item = item.to_string();
        if !current.is_empty() && current.len() + item.len() + 2 > MAX_JSON_BYTES {
            parts.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    let n = parts.len();
    parts.into_iter().enumerate().map(|(i, json)| format!("{tx} {}/{n} [{json}]", i + 1)).collect()
}

/// Reads one payload made by [`encode`]: the transaction, whether this is
/// its last part, and the part's message.
pub fn decode(payload: &str) -> Result<(TxId, bool, FeedMessage), String> {
    let mut fields = payload.splitn(3, ' ');
    let (Some(tx), Some(part), Some(json)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected \"<tx> <part>/<parts> <json>\"".to_owned());
    };
    let tx = tx.parse().map_err(|_| format!("transaction id {tx:?}"))?;
    let last = match part.split_once('/').map(|(i, n)| (i.parse::<usize>(), n.parse::<usize>())) {
        Some((Ok(i), Ok(n))) if (1..=n).contains(&i) => i == n,
        _ => return Err(format!("part {part:?}")),
    };
    let items: Vec<Vec<Value>> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut message = FeedMessage::default();
    for item in items {
        let text = |i: usize| -> Result<String, String> {
            item.get(i).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("item {item:?}"))
        };
        let int = |i: usize| item.get(i).and_then(Value::as_i64).ok_or_else(|| format!("item {item:?}"));
        let decimal = |s: String| Decimal::from_str(&s).map_err(|e| format!("quantity {s:?}: {e}"));
        match text(0)?.as_str() {
            "r" => message.effects.push(OrgEffect {
                org_id: text(1)?,
                metric: text(2)?,
                effect: Effect::Records { at_ms: int(3)?, added: int(4)?, delta: decimal(text(5)?)? },
            }),
            "s" => message.effects.push(OrgEffect {
                org_id: text(1)?,
                metric: text(2)?,
                effect: Effect::Step { at_ms: int(3)?, change: decimal(text(4)?)? },
            }),
            "u" => {
                let ended_ms = match item.get(5) {
                    Some(Value::Null) => None,
                    _ => Some(int(5)?),
                };
                let added = item.get(6).and_then(Value::as_bool).ok_or_else(|| format!("item {item:?}"))?;
                message.effects.push(OrgEffect {
                    org_id: text(1)?,
                    metric: text(2)?,
                    effect: Effect::Run {
                        run: Run { subject: text(3)?, started_ms: int(4)?, ended_ms },
                        added,
                    },
                });
            }
            "p" => message.plans.push(OrgPlan { org_id: text(1)?, plan: text(2)?, assigned_at_ms: int(3)? }),
            "g" => message.grants.push(text(1)?),
            "f" => message.fired.push((text(1)?, text(2)?, int(3)?)),
            other => return Err(format!("unknown item {other:?}")),
        }
    }
    Ok((tx, last, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(org: &str, n: usize) -> OrgEffect {
        let at_ms = 1_754_000_000_000 + n as i64;
        let q = Decimal::from_str("-1234567890.123456789012345678").unwrap();
        let effect = match n % 4 {
            0 => Effect::Records { at_ms, added: (n % 3) as i64, delta: q },
            1 => Effect::Step { at_ms, change: q },
            2 => Effect::Run {
                run: Run {
                    subject: format!("sbx-{n}-\"quoted\"-ünïcode"),
                    started_ms: at_ms,
                    ended_ms: None,
                },
                added: true,
            },
            _ => Effect::Run {
                run: Run { subject: format!("sbx-{n}"), started_ms: at_ms - 5, ended_ms: Some(at_ms) },
                added: false,
            },
        };
        OrgEffect { org_id: org.to_owned(), metric: "sandbox_active".to_owned(), effect }
    }

    #[test]
    fn a_message_survives_encoding_exactly_and_large_ones_are_split_under_the_limit() {
        let message = FeedMessage {
            effects: (0..500).map(|n| effect(&format!("org-{}", n % 7), n)).collect(),
            plans: vec![OrgPlan { org_id: "org-1".into(), plan: "pro".into(), assigned_at_ms: 7 }],
            grants: vec!["org-2".into()],
            fired: vec![("org-3".into(), "quota:cpu:100".into(), 1_754_000_000_000)],
        };
        let payloads = encode(u64::MAX - 1, &message);
        assert!(payloads.len() > 1, "500 effects do not fit one notification");
        let mut joined = FeedMessage::default();
        for (i, payload) in payloads.iter().enumerate() {
            assert!(payload.len() < 8_000, "{} bytes", payload.len());
            let (tx, last, part) = decode(payload).unwrap();
            assert_eq!((tx, last), (u64::MAX - 1, i + 1 == payloads.len()));
            joined.effects.extend(part.effects);
            joined.plans.extend(part.plans);
            joined.grants.extend(part.grants);
            joined.fired.extend(part.fired);
        }
        assert_eq!(joined, message);
        assert!(encode(1, &FeedMessage::default()).is_empty());
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let bad = [
            "",
            "12",
            "x 1/1 []",
            "1 []",
            "1 0/1 []",
            "1 2/1 []",
            "1 1/1 {}",
            "1 1/1 [[\"r\", \"org\"]]",
            "1 1/1 [[\"u\", \"o\", \"m\", \"s\", 1, null, \"yes\"]]",
            "1 1/1 [[\"z\"]]",
            "1 1/1 [[\"p\", \"o\", \"p\", \"t\"]]",
        ];
        for bad in bad {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn visibility_follows_pg_snapshot_rules() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.sees(99) && v.sees(100) && v.sees(102) && v.sees(104));
        assert!(!v.sees(101) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        let none_running = Visibility::parse("7:7:").unwrap();
        assert!(none_running.sees(6) && !none_running.sees(7));
        assert!(Visibility::parse("7").is_err() && Visibility::parse("a:b:").is_err());
    }
}
