//! What a writer remembers of a subject's last level instants, so that a
//! level inserted at or after the subject's last instant (the usual order)
//! needs no read of its neighbourhood or of its runs.
//!
//! A [`Tail`] is exactly what the store would read for such a write: the
//! quantities at the subject's last instant, the level in force after the
//! instant before it and, when that level is above zero, where its run
//! started. That last part is enough for runs because the run in force
//! after an instant depends only on whether the level there is above zero,
//! and a run starts at the first instant of a positive streak
//! (`plans::standing::runs_of`). Only a store with one writer may keep
//! tails (SQLite); it must drop them when anything else writes.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::write::{Neighbourhood, Written};

/// One subject's last level instants, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    /// The subject's last instant with a level record.
    pub last: i64,
    /// Every quantity recorded at `last`.
    pub at_last: Vec<Decimal>,
    /// The subject's instant before `last` and the level in force after it.
    pub previous: Option<(i64, Decimal)>,
    /// Where the run in force after `previous` started, when the level there
    /// is above zero and the subject's runs are kept (`None` otherwise).
    pub streak: Option<i64>,
}

/// What a subject's runs are recomputed from after a write: the runs stored
/// from `from` on, and its (instant, quantity) records from `from` on.
#[derive(Debug, Clone, PartialEq)]
pub struct RunWindow {
    pub from: i64,
    /// The one stored run starting at or after `from`, if any, as (start, end).
    pub stored: Option<(i64, Option<i64>)>,
    /// Enough records from `from` on (after the writes) for `runs_of` to give
    /// the subject's runs from `from` on.
    pub history: Vec<(i64, Decimal)>,
}

fn in_force(quantities: &[Decimal]) -> Option<Decimal> {
    quantities.iter().copied().max()
}

impl Tail {
    /// Whether the tail answers for `written`: every write is an insert at
    /// or after the last instant.
    pub fn covers(&self, written: &Written) -> bool {
        written.keys().next().is_some_and(|first| *first >= self.last)
            && written.values().flatten().all(|(_, was)| was.is_none())
    }

    /// The neighbourhood a read of the store would give after `written`
    /// (which the tail covers): the instant before the last, the last, and
    /// every instant written.
    pub fn neighbourhood(&self, written: Written) -> Neighbourhood {
        let mut stored: BTreeMap<i64, Vec<Decimal>> = BTreeMap::new();
        if let Some((at, level)) = self.previous {
            stored.insert(at, vec![level]);
        }
        stored.insert(self.last, self.at_last.clone());
        for (at, writes) in &written {
            stored.entry(*at).or_default().extend(writes.iter().map(|(quantity, _)| *quantity));
        }
        Neighbourhood { stored, written }
    }

    /// What the subject's runs are recomputed from after the writes in
    /// `hood` (built by [`Tail::neighbourhood`]); `None` when the tail does
    /// not know where the run in force before its last instant started.
    pub fn run_window(&self, hood: &Neighbourhood) -> Option<RunWindow> {
        let open_at_last = in_force(&self.at_last).is_some_and(|level| level > Decimal::ZERO);
        let mut history: Vec<(i64, Decimal)> = hood
            .stored
            .range(self.last..)
            .flat_map(|(at, quantities)| quantities.iter().map(move |q| (*at, *q)))
            .collect();
        match self.previous {
            Some((at, level)) if level > Decimal::ZERO => {
                // A run in force since `start`: every instant from there to
                // `at` is above zero, so one record at each end stands for them.
                let start = self.streak?;
                history.splice(0..0, [(start, level), (at, level)]);
                let end = if open_at_last { None } else { Some(self.last) };
                Some(RunWindow { from: start, stored: Some((start, end)), history })
            }
            _ => Some(RunWindow {
                from: self.last,
                stored: open_at_last.then_some((self.last, None)),
                history,
            }),
        }
    }

    /// The subject's tail after a write whose neighbourhood (read or built)
    /// is `hood`; `runs` are the subject's runs when they are kept (at least
    /// those from the instant before its last on). `None` when `hood` does
    /// not show the end of the subject's history (a write before its last
    /// instant) or the runs do not cover the level in force.
    pub fn after(hood: &Neighbourhood, runs: Option<&[(i64, Option<i64>)]>) -> Option<Tail> {
        let (&last, at_last) = hood.stored.last_key_value()?;
        if hood.written.keys().next_back() != Some(&last) {
            return None;
        }
        let previous =
            hood.stored.range(..last).next_back().and_then(|(at, q)| in_force(q).map(|level| (*at, level)));
        let streak = match (previous, runs) {
            (Some((at, level)), Some(runs)) if level > Decimal::ZERO => {
                Some(runs.iter().find(|(start, end)| *start <= at && end.is_none_or(|end| end > at))?.0)
            }
            _ => None,
        };
        Some(Tail { last, at_last: at_last.clone(), previous, streak })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::standing::runs_of;
    use crate::testing::Rng;

    type Runs = Vec<(i64, Option<i64>)>;

    fn runs(history: &[(i64, Decimal)]) -> Runs {
        runs_of("s", history).into_iter().map(|r| (r.started_ms, r.ended_ms)).collect()
    }

    /// What the store reads for `written` from the whole history after the
    /// writes: each written instant and the instants just before and after it.
    fn read(history: &[(i64, Decimal)], written: &Written) -> Neighbourhood {
        let mut instants: Vec<i64> = history.iter().map(|(at, _)| *at).collect();
        instants.sort_unstable();
        instants.dedup();
        let mut keep = Vec::new();
        for at in written.keys() {
            keep.push(*at);
            keep.extend(instants.iter().rev().find(|t| *t < at));
            keep.extend(instants.iter().find(|t| *t > at));
        }
        let mut stored: BTreeMap<i64, Vec<Decimal>> = BTreeMap::new();
        for (at, q) in history.iter().filter(|(at, _)| keep.contains(at)) {
            stored.entry(*at).or_default().push(*q);
        }
        Neighbourhood { stored, written: written.clone() }
    }

    /// Random transactions on one subject, mostly inserts at or after its last
    /// instant: wherever the tail answers, its neighbourhood gives the steps
    /// and its run window the runs that a read of the whole history gives,
    /// and the tail kept from either path is the one read from the history.
    #[test]
    fn a_tail_answers_as_a_read_of_the_whole_history() {
        let mut answered = 0;
        for seed in 0..400 {
            let mut rng = Rng::new(seed);
            let mut history: Vec<(i64, Decimal)> = Vec::new();
            let mut tail: Option<Tail> = None;
            let mut clock = 0;
            for _ in 0..1 + rng.below(25) {
                let mut written: Written = BTreeMap::new();
                for _ in 0..1 + rng.below(3) {
                    clock += rng.between(0, 2);
                    let at = if rng.chance(15) { rng.between(0, clock + 1) } else { clock };
                    let q = if rng.chance(50) { Decimal::ZERO } else { rng.quantity() };
                    let at_q: Vec<usize> = (0..history.len()).filter(|i| history[*i].0 == at).collect();
                    if !at_q.is_empty() && rng.chance(20) {
                        let i = at_q[rng.below(at_q.len())];
                        written.entry(at).or_default().push((q, Some(history[i].1)));
                        history[i].1 = q;
                    } else {
                        written.entry(at).or_default().push((q, None));
                        history.push((at, q));
                    }
                }
                let before_runs = {
                    let mut before = history.clone();
                    // Undone last first: one record may be corrected twice.
                    for (at, writes) in written.iter().rev() {
                        for (now, was) in writes.iter().rev() {
                            let i = before.iter().rposition(|(t, q)| t == at && q == now).expect("written");
                            match was {
                                Some(was) => before[i].1 = *was,
                                None => {
                                    before.remove(i);
                                }
                            }
                        }
                    }
                    runs(&before)
                };
                let after_runs = runs(&history);
                let reference = read(&history, &written);
                let hood = match tail.as_ref().filter(|t| t.covers(&written)) {
                    Some(t) => {
                        answered += 1;
                        let hood = t.neighbourhood(written.clone());
                        assert_eq!(hood.step_changes(), reference.step_changes(), "seed {seed}");
                        let window = t.run_window(&hood).expect("a kept tail knows its streak");
                        let from =
                            |r: &Runs| r.iter().copied().filter(|(s, _)| *s >= window.from).collect::<Runs>();
                        assert_eq!(runs(&window.history), from(&after_runs), "seed {seed}");
                        assert_eq!(
                            window.stored.into_iter().collect::<Runs>(),
                            from(&before_runs),
                            "seed {seed}"
                        );
                        let untouched =
                            |r: &Runs| r.iter().copied().filter(|(s, _)| *s < window.from).collect::<Runs>();
                        assert_eq!(untouched(&before_runs), untouched(&after_runs), "seed {seed}");
                        hood
                    }
                    None => reference.clone(),
                };
                tail = Tail::after(&hood, Some(&after_runs));
                let expected = Tail::after(&reference, Some(&after_runs));
                assert_eq!(tail, expected, "seed {seed}");
                if let Some(t) = &tail {
                    let last = history.iter().map(|(at, _)| *at).max();
                    assert_eq!(Some(t.last), last, "seed {seed}");
                }
            }
        }
        assert!(answered > 1_000, "the tail answered {answered} times");
    }

    #[test]
    fn a_tail_does_not_answer_for_a_correction_or_an_earlier_instant() {
        let tail = Tail { last: 10, at_last: vec![Decimal::ONE], previous: None, streak: None };
        let written = |at, was| BTreeMap::from([(at, vec![(Decimal::TWO, was)])]);
        assert!(tail.covers(&written(10, None)));
        assert!(tail.covers(&written(11, None)));
        assert!(!tail.covers(&written(9, None)));
        assert!(!tail.covers(&written(10, Some(Decimal::ONE))));
        let in_run = Tail { previous: Some((5, Decimal::ONE)), ..tail };
        assert_eq!(in_run.run_window(&in_run.neighbourhood(written(11, None))), None, "streak unknown");
    }
}
