//! The SQLite writer's memory of recently written subjects' tails (see
//! `meter::rollup::tail`), bounded, and dropped whenever it may be wrong.
//!
//! It is only true of the database while nothing but this writer writes:
//! each commit's rollup read also reads SQLite's `data_version` (it changes
//! when another connection, e.g. another process, has committed); when it
//! moved, everything is forgotten and the commit's rollup work is done
//! again from reads (it has written nothing yet). Tails of a transaction
//! are remembered only once it has committed; any error forgets everything.

use std::collections::HashMap;
use std::sync::Mutex;

use super::rollup::{SubjectKey, SubjectTails, Tails};
use crate::meter::rollup::tail::Tail;

/// Subjects remembered at most (two generations of half each: a subject
/// written again recently stays, the rest are dropped a generation at a
/// time). A tail is ~200 bytes, so this is a few MiB.
const CAPACITY: usize = 32_768;

#[derive(Default)]
struct Generations {
    current: HashMap<SubjectKey, Tail>,
    older: HashMap<SubjectKey, Tail>,
    /// The database's `data_version` the tails are true of.
    data_version: Option<i64>,
}

#[derive(Default)]
pub(super) struct TailMemory {
    inner: Mutex<Generations>,
    /// Held by a transaction from before it reads tails until its own are
    /// remembered or forgotten: the next transaction can begin as soon as
    /// this one commits, and must not read tails it made stale.
    settling: tokio::sync::Mutex<()>,
}

impl TailMemory {
    /// Waits until no other transaction is between reading tails and
    /// settling its own; hold the guard until this one has settled.
    pub async fn settle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.settling.lock().await
    }

    fn with<T>(&self, f: impl FnOnce(&mut Generations) -> T) -> T {
        // A panic while holding the lock leaves nothing half-written that
        // matters: at worst tails are forgotten.
        let mut guard = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    pub fn get(&self, subject: &SubjectKey) -> Option<Tail> {
        self.with(|g| g.current.get(subject).or_else(|| g.older.get(subject)).cloned())
    }

    /// Remembers the tails of a committed transaction (`None`: forget).
    pub fn remember(&self, tails: SubjectTails) {
        self.with(|g| {
            for (subject, tail) in tails {
                g.older.remove(&subject);
                match tail {
                    Some(tail) => {
                        if g.current.len() >= CAPACITY / 2 {
                            g.older = std::mem::take(&mut g.current);
                        }
                        g.current.insert(subject, tail);
                    }
                    None => {
                        g.current.remove(&subject);
                    }
                }
            }
        })
    }

    /// Forgets everything (a transaction failed: what it did is unknown).
    pub fn forget(&self) {
        self.with(|g| *g = Generations::default())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.with(|g| g.current.len() + g.older.len())
    }
}

impl Tails for TailMemory {
    fn tail(&self, subject: &SubjectKey) -> Option<Tail> {
        self.get(subject)
    }

    /// The version is read while the transaction holds the write lock
    /// (records were written first), so no commit can come between it and
    /// the transaction's own.
    fn validate(&self, data_version: i64) -> bool {
        self.with(|g| {
            let valid = g.data_version == Some(data_version);
            if !valid {
                g.current.clear();
                g.older.clear();
                g.data_version = Some(data_version);
            }
            valid
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::rollup::SeriesKey;
    use rust_decimal::Decimal;

    fn subject(n: usize) -> SubjectKey {
        (SeriesKey { org_id: "o".into(), metric: "m".into() }, format!("s{n}"))
    }

    fn tail(last: i64) -> Tail {
        Tail { last, at_last: vec![Decimal::ONE], previous: None, streak: None }
    }

    #[test]
    fn memory_is_bounded_keeps_recent_subjects_and_forgets_on_another_writer() {
        let memory = TailMemory::default();
        memory.validate(1);
        for n in 0..3 * CAPACITY {
            memory.remember(vec![(subject(n), Some(tail(n as i64)))]);
            // One subject written all along stays.
            memory.remember(vec![(subject(0), Some(tail(0)))]);
        }
        assert!(memory.len() <= CAPACITY, "{} remembered", memory.len());
        assert_eq!(memory.get(&subject(0)), Some(tail(0)));
        assert_eq!(memory.get(&subject(3 * CAPACITY - 1)), Some(tail(3 * CAPACITY as i64 - 1)));
        assert_eq!(memory.get(&subject(1)), None, "an old subject was dropped");
        memory.remember(vec![(subject(0), None)]);
        assert_eq!(memory.get(&subject(0)), None);
        memory.validate(1);
        assert!(memory.len() > 0, "the same data_version keeps the tails");
        memory.validate(2);
        assert_eq!(memory.len(), 0, "another connection committed");
    }
}
