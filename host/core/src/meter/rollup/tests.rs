//! Rollups against the engine: fold random histories, answer random
//! queries from the fold's tables, and compare with `meter::aggregate` over
//! the raw records.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::fold::{Fold, FoldOutput, FoldRecord};
use super::query::{self, RollupInput};
use super::write::Neighbourhood;
use super::{HOUR_MS, Hour, Month, hour_of};
use crate::meter::period::{Range, WindowSize, month_containing};
use crate::meter::{Aggregation, Kind, MeterDef, Point, UsageQuery, aggregate};
use crate::testing::Rng;

fn d(s: &str) -> Decimal {
    meterd_units::parse_quantity(s).expect("test decimal")
}

/// 2025-08-31T20:00:00Z: the histories cross a month boundary.
const BASE: i64 = 1_756_670_400_000;

#[derive(Debug, Clone)]
struct Rec {
    subject: &'static str,
    kind: Kind,
    quantity: Decimal,
    at_ms: i64,
    /// The value of the attribute `t` (absent: `None`).
    group: Option<&'static str>,
}

fn history(rng: &mut Rng) -> Vec<Rec> {
    let mut pool: Vec<i64> = (0..12).map(|_| BASE + rng.between(-2 * HOUR_MS, 7 * HOUR_MS)).collect();
    // Hour starts and the month start, where summaries begin.
    pool.extend([BASE, BASE + HOUR_MS, BASE + 4 * HOUR_MS, month_containing(BASE + 5 * HOUR_MS).from_ms]);
    let subjects = ["a", "b", "c"];
    let n = 1 + rng.below(30);
    (0..n)
        .map(|_| Rec {
            subject: rng.pick(&subjects),
            kind: if rng.chance(70) { Kind::Level } else { Kind::Delta },
            quantity: rng.quantity(),
            at_ms: rng.pick(&pool),
            group: rng.pick(&[None, Some("x"), Some("y"), Some("")]),
        })
        .collect()
}

fn fold(records: &[Rec]) -> FoldOutput {
    fold_grouped(records, &[])
}

fn fold_grouped(records: &[Rec], group_by: &[String]) -> FoldOutput {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.at_ms);
    let mut fold = Fold::new(group_by);
    for r in &sorted {
        let attributes: BTreeMap<String, String> =
            r.group.map(|g| ("t".to_owned(), g.to_owned())).into_iter().collect();
        fold.push(FoldRecord {
            org_id: "o",
            metric: "m",
            subject: r.subject,
            kind: r.kind,
            quantity: r.quantity,
            at_ms: r.at_ms,
            attributes: &attributes,
        })
        .expect("sorted input");
    }
    fold.finish().expect("fold");
    std::mem::take(&mut fold.output)
}

fn point(r: &Rec) -> Point {
    Point { kind: r.kind, subject: r.subject.to_owned(), quantity: r.quantity, at_ms: r.at_ms, group: None }
}

/// The engine's answer over the raw records.
fn reference(meter: &MeterDef, query: &UsageQuery, records: &[Rec]) -> crate::meter::UsageReport {
    let from = query.range.from_ms;
    let mut carry: Vec<Point> = Vec::new();
    for subject in ["a", "b", "c"] {
        let before =
            records.iter().filter(|r| r.subject == subject && r.kind == Kind::Level && r.at_ms < from);
        if let Some(last) = before.clone().map(|r| r.at_ms).max() {
            carry.extend(before.filter(|r| r.at_ms == last).map(point));
        }
    }
    let points: Vec<Point> = records.iter().filter(|r| query.range.contains(r.at_ms)).map(point).collect();
    aggregate(meter, query, &carry, &points).expect("engine")
}

/// The level before `at` as the store sums it: months before its month,
/// hours of its month before its hour, steps of its hour before it.
fn level_before(out: &FoldOutput, at: i64) -> Decimal {
    let month = month_containing(at).from_ms;
    let hour = hour_of(at);
    let months: Decimal =
        out.months.iter().filter(|(_, m, _)| *m < month).map(|(_, _, m)| m.level_step).sum();
    let hours: Decimal =
        out.hours.iter().filter(|(_, h, _)| (month..hour).contains(h)).map(|(_, _, h)| h.level_step).sum();
    let steps: Decimal =
        out.steps.iter().filter(|(_, t, _)| (hour..at).contains(t)).map(|(_, _, s)| *s).sum();
    months + hours + steps
}

fn from_rollups(
    meter: &MeterDef,
    query: &UsageQuery,
    out: &FoldOutput,
    records: &[Rec],
) -> crate::meter::UsageReport {
    let plan = query::plan(query.range, meter.aggregation, query.now_ms, query.window);
    let within = |t: i64, ranges: &[Range]| ranges.iter().any(|r| r.contains(t));
    let input = RollupInput {
        before: level_before(out, query.range.from_ms),
        months: out
            .months
            .iter()
            .filter(|(_, m, _)| within(*m, &plan.months))
            .map(|(_, m, x)| (*m, x.clone()))
            .collect(),
        hours: out
            .hours
            .iter()
            .filter(|(_, h, _)| within(*h, &plan.hours))
            .map(|(_, h, x)| (*h, x.clone()))
            .collect(),
        steps: out.steps.iter().filter(|(_, t, _)| within(*t, &plan.raw)).map(|(_, t, s)| (*t, *s)).collect(),
        points: records.iter().filter(|r| within(r.at_ms, &plan.raw)).map(point).collect(),
        ahead: out
            .steps
            .iter()
            .filter(|(_, t, _)| plan.ahead.is_some_and(|a| a.contains(*t)))
            .map(|(_, t, s)| (*t, *s))
            .collect(),
        ahead_points: records
            .iter()
            .filter(|r| plan.ahead.is_some_and(|a| a.contains(r.at_ms)))
            .map(point)
            .collect(),
    };
    query::evaluate(meter, query, &input).expect("rollup query")
}

/// Grouped sums and counts from the fold's group hours (key `t`) and the
/// plan's raw ends equal the engine's over the raw records grouped by `t`.
#[test]
fn group_hours_answer_grouped_sums_and_counts_as_the_engine_does() {
    use super::groups::{GroupInput, evaluate_grouped, hour_ranges};
    let grouped_point = |r: &Rec| Point { group: r.group.map(str::to_owned), ..point(r) };
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let records = history(&mut rng);
        let out = fold_grouped(&records, &["t".to_owned()]);
        for _ in 0..12 {
            let query = UsageQuery { grouped: true, ..rng.usage_query(BASE) };
            for aggregation in [Aggregation::Sum, Aggregation::Count] {
                let meter = MeterDef { name: "x".into(), metric: "m".into(), aggregation, unit: "u".into() };
                let points: Vec<Point> =
                    records.iter().filter(|r| query.range.contains(r.at_ms)).map(grouped_point).collect();
                let want = aggregate(&meter, &query, &[], &points).expect("engine");
                let plan = query::plan(query.range, aggregation, query.now_ms, query.window);
                let ranges = hour_ranges(&plan);
                let within = |t: i64, ranges: &[Range]| ranges.iter().any(|r| r.contains(t));
                let input = GroupInput {
                    hours: out
                        .group_hours
                        .iter()
                        .filter(|((_, key, _, h), _)| key == "t" && within(*h, &ranges))
                        .map(|((_, _, cell, h), g)| (cell.clone(), *h, *g))
                        .collect(),
                    raw: records.iter().filter(|r| within(r.at_ms, &plan.raw)).map(grouped_point).collect(),
                    ahead: records
                        .iter()
                        .filter(|r| plan.ahead.is_some_and(|a| a.contains(r.at_ms)))
                        .map(grouped_point)
                        .collect(),
                };
                let got = evaluate_grouped(&meter, &query, &input).expect("group hours");
                assert_eq!(got, want, "seed {seed}: {aggregation:?} {query:?}");
            }
        }
    }
}

#[test]
fn rollups_answer_as_the_engine_does_on_random_histories() {
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let records = history(&mut rng);
        let out = fold(&records);
        for _ in 0..12 {
            let query = rng.usage_query(BASE);
            for aggregation in Aggregation::ALL {
                let meter = MeterDef { name: "x".into(), metric: "m".into(), aggregation, unit: "u".into() };
                let want = reference(&meter, &query, &records);
                let got = from_rollups(&meter, &query, &out, &records);
                assert_eq!(got, want, "seed {seed}, {aggregation:?}, {query:?}, records {records:#?}");
            }
        }
    }
}

#[test]
fn a_fold_of_one_subject_worked_by_hand() {
    // 1 at 00:30, 3 at 01:00 (tied with 2), 0 at 02:15.
    let t = |h: i64, m: i64| BASE + h * HOUR_MS + m * 60_000;
    let rec = |q: &str, at| Rec { subject: "a", kind: Kind::Level, quantity: d(q), at_ms: at, group: None };
    let out = fold(&[rec("3", t(1, 0)), rec("1", t(0, 30)), rec("0", t(2, 15)), rec("2", t(1, 0))]);
    let steps: Vec<(i64, Decimal)> = out.steps.iter().map(|(_, t, s)| (*t, *s)).collect();
    assert_eq!(steps, vec![(t(0, 30), d("1")), (t(1, 0), d("2")), (t(2, 15), d("-3"))]);
    let hours: BTreeMap<i64, Hour> = out.hours.iter().map(|(_, h, x)| (*h, x.clone())).collect();
    let first = &hours[&BASE];
    assert_eq!((first.records, first.level_step, first.level_moment), (1, d("1"), d("1800000")));
    assert_eq!((first.level_open, first.level_peak), (d("0"), Some(d("1"))));
    let second = &hours[&(BASE + HOUR_MS)];
    assert_eq!((second.records, second.level_open, second.level_peak), (2, d("2"), Some(d("2"))));
    let third = &hours[&(BASE + 2 * HOUR_MS)];
    assert_eq!(
        (third.level_step, third.level_peak, third.level_last_at),
        (d("-3"), Some(d("-3")), Some(t(2, 15)))
    );
    // All three steps are in August; September starts at the level 0. The
    // month's moment is from its start: Σ Δ × (t − BASE) as BASE − August 1
    // is multiplied by the net step 0.
    let august = Month { delta_sum: d("0"), records: 4, level_step: d("0"), level_moment: d("-15300000") };
    assert_eq!(out.months, vec![(out.hours[0].0.clone(), month_containing(BASE).from_ms, august)]);
}

#[test]
fn appending_in_order_equals_resummarizing() {
    let start = BASE;
    let steps = [(start, d("2")), (start + 10, d("-3")), (start + 20, d("5"))];
    let mut appended = Hour::default();
    for s in steps {
        assert!(appended.can_append(&[s]));
        appended.append_steps(start, &[s]).expect("append");
    }
    let mut whole = Hour::default();
    whole.resummarize(start, &steps).expect("summary");
    assert_eq!(appended, whole);
    assert_eq!((whole.level_open, whole.level_peak, whole.level_moment), (d("2"), Some(d("4")), d("70")));
    assert!(!whole.can_append(&[(start + 20, d("1"))]), "an instant already summarized needs a rescan");
}

fn hood(stored: &[(i64, &[&str])], written: &[(i64, &str, Option<&str>)]) -> Neighbourhood {
    let mut n = Neighbourhood::default();
    for (at, qs) in stored {
        n.stored.insert(*at, qs.iter().map(|q| d(q)).collect());
    }
    for (at, now, was) in written {
        n.written.entry(*at).or_default().push((d(now), was.map(d)));
    }
    n
}

#[test]
fn a_late_level_changes_its_own_step_and_the_next_one() {
    // 1 at 10, then 4 at 30; 2 arrives late at 20.
    let n = hood(&[(10, &["1"]), (20, &["2"]), (30, &["4"])], &[(20, "2", None)]);
    assert_eq!(n.step_changes().expect("steps"), vec![(20, d("1")), (30, d("-1"))]);
    // A record in order changes only its own step.
    let n = hood(&[(10, &["1"]), (30, &["4"])], &[(30, "4", None)]);
    assert_eq!(n.step_changes().expect("steps"), vec![(30, d("3"))]);
    // A tie that loses changes nothing; one that wins changes the step.
    let n = hood(&[(10, &["1", "0"])], &[(10, "0", None)]);
    assert_eq!(n.step_changes().expect("steps"), vec![]);
    let n = hood(&[(10, &["1", "5"]), (20, &["0"])], &[(10, "5", None)]);
    assert_eq!(n.step_changes().expect("steps"), vec![(10, d("4")), (20, d("-4"))]);
    // A correction of the only record at an instant, from 5 to 2.
    let n = hood(&[(0, &["1"]), (10, &["2"]), (20, &["0"])], &[(10, "2", Some("5"))]);
    assert_eq!(n.step_changes().expect("steps"), vec![(10, d("-3")), (20, d("3"))]);
    // Two new instants next to each other in one transaction.
    let n = hood(&[(10, &["1"]), (20, &["3"])], &[(10, "1", None), (20, "3", None)]);
    assert_eq!(n.step_changes().expect("steps"), vec![(10, d("1")), (20, d("2"))]);
}

#[test]
fn one_record_written_twice_in_a_transaction_is_undone_last_first() {
    // Stored 1 at 10 before; corrected to 2, then to 3, in one transaction.
    let n = hood(&[(10, &["3"]), (20, &["0"])], &[(10, "2", Some("1")), (10, "3", Some("2"))]);
    assert_eq!(n.step_changes().expect("steps"), vec![(10, d("2")), (20, d("-2"))]);
    // Inserted as 4 and corrected to 6 in one transaction: as if 6 came alone.
    let n = hood(&[(0, &["1"]), (10, &["6"])], &[(10, "4", None), (10, "6", Some("4"))]);
    assert_eq!(n.step_changes().expect("steps"), vec![(10, d("5"))]);
}

#[test]
fn a_range_ending_in_the_current_hour_reads_that_hour_as_its_summary() {
    let range = |from, to| Range { from_ms: from, to_ms: to };
    let now = BASE + 2 * HOUR_MS + 600_000;
    let hourly = Some(WindowSize::Hour);
    // Credits: from long ago to now. The hour holding `now` is a summary
    // less what is stamped after the range (sums) or after `now` (integral).
    let sum = query::plan(range(0, now), Aggregation::Sum, now, hourly);
    assert_eq!(sum.hours, vec![range(0, BASE + 3 * HOUR_MS)]);
    assert_eq!((sum.raw.clone(), sum.ahead), (vec![], Some(range(now, BASE + 3 * HOUR_MS))));
    let integral = query::plan(range(BASE, now + 1), Aggregation::Integral, now, hourly);
    assert_eq!(integral.hours, vec![range(BASE, BASE + 3 * HOUR_MS)]);
    assert_eq!(integral.ahead, Some(range(now, BASE + 3 * HOUR_MS)));
    // Latest and max cannot subtract; a range ending before `now` is read
    // raw at its end, as is a range inside one hour that starts mid-hour.
    let latest = query::plan(range(0, now), Aggregation::Latest, now, None);
    assert_eq!((latest.raw, latest.ahead), (vec![range(BASE + 2 * HOUR_MS, now)], None));
    let past = query::plan(range(0, now - 1), Aggregation::Sum, now, hourly);
    assert_eq!(past.raw, vec![range(BASE + 2 * HOUR_MS, now - 1)]);
    let inside = query::plan(range(now - 1, now), Aggregation::Count, now, None);
    assert_eq!((inside.hours, inside.raw), (vec![], vec![range(now - 1, now)]));
}

#[test]
fn sums_counts_and_integrals_over_one_window_read_whole_months() {
    let range = |from, to| Range { from_ms: from, to_ms: to };
    let now = BASE + 2 * HOUR_MS + 600_000;
    let (august, september) = (month_containing(BASE).from_ms, BASE + 4 * HOUR_MS);
    // Credits since 1970: one summary per month, the month holding `now`
    // whole less what is stamped after it.
    for aggregation in [Aggregation::Sum, Aggregation::Count, Aggregation::Integral] {
        let p = query::plan(range(0, now), aggregation, now, None);
        assert_eq!(
            (p.months, p.hours, p.raw),
            (vec![range(0, september)], vec![], vec![]),
            "{aggregation:?}"
        );
        assert_eq!(p.ahead, Some(range(now, september)), "{aggregation:?}");
    }
    // A past range: its whole months, then whole hours, then raw ends.
    let later = BASE + 40 * 24 * HOUR_MS;
    let past = query::plan(range(august - 1, BASE + 6 * HOUR_MS + 5), Aggregation::Sum, later, None);
    assert_eq!(past.months, vec![range(august, september)]);
    assert_eq!(past.hours, vec![range(september, BASE + 6 * HOUR_MS)]);
    assert_eq!(past.raw, vec![range(august - 1, august), range(BASE + 6 * HOUR_MS, BASE + 6 * HOUR_MS + 5)]);
    assert_eq!(past.ahead, None);
    // Monthly windows hold whole months too; daily ones and max do not.
    let monthly = query::plan(range(0, now), Aggregation::Integral, now, Some(WindowSize::Month));
    assert_eq!(monthly.months, vec![range(0, september)]);
    for (aggregation, window) in [(Aggregation::Sum, Some(WindowSize::Day)), (Aggregation::Max, None)] {
        let p = query::plan(range(0, now), aggregation, now, window);
        assert!(p.months.is_empty(), "{aggregation:?} {window:?}: {p:?}");
    }
}

/// The rows of one series of a fold's output.
fn only(out: &FoldOutput, metric: &str) -> FoldOutput {
    FoldOutput {
        steps: out.steps.iter().filter(|(s, _, _)| s.metric == metric).cloned().collect(),
        hours: out.hours.iter().filter(|(s, _, _)| s.metric == metric).cloned().collect(),
        months: out.months.iter().filter(|(s, _, _)| s.metric == metric).cloned().collect(),
        ..FoldOutput::default()
    }
}

fn grouped_point(r: &Rec) -> Point {
    Point { group: r.group.map(str::to_owned), ..point(r) }
}

/// Integral, latest and max grouped by `t`: each named group's level series
/// (folded beside `m`) answered as an ungrouped series, merged, equals the
/// engine grouped over the raw records with every level record before the
/// range as carry-in (each names its group).
#[test]
fn group_level_series_answer_grouped_levels_as_the_engine_does() {
    use super::groups::{cell_of, level_series, merge_levels};
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let records = history(&mut rng);
        let out = fold_grouped(&records, &["t".to_owned()]);
        let plain = only(&out, "m");
        let ungrouped_out = fold(&records);
        assert_eq!(
            (&plain.steps, &plain.hours, &plain.months),
            (&ungrouped_out.steps, &ungrouped_out.hours, &ungrouped_out.months),
            "seed {seed}: groups leave the metric's own series alone"
        );
        for _ in 0..12 {
            let query = UsageQuery { grouped: true, ..rng.usage_query(BASE) };
            let alone = UsageQuery { grouped: false, ..query };
            for aggregation in [Aggregation::Integral, Aggregation::Latest, Aggregation::Max] {
                let meter = MeterDef { name: "x".into(), metric: "m".into(), aggregation, unit: "u".into() };
                let levels = records.iter().filter(|r| r.kind == Kind::Level);
                let carry: Vec<Point> =
                    levels.clone().filter(|r| r.at_ms < query.range.from_ms).map(grouped_point).collect();
                let points: Vec<Point> =
                    records.iter().filter(|r| query.range.contains(r.at_ms)).map(grouped_point).collect();
                let want = aggregate(&meter, &query, &carry, &points).expect("engine");

                let named: std::collections::BTreeSet<Option<&str>> =
                    levels.filter(|r| r.at_ms < query.range.to_ms).map(|r| r.group).collect();
                let groups = named
                    .into_iter()
                    .map(|g| {
                        let series = only(&out, &level_series("m", "t", &cell_of(g)));
                        (g.map(str::to_owned), from_rollups(&meter, &alone, &series, &[]))
                    })
                    .collect();
                let ungrouped = from_rollups(&meter, &alone, &plain, &records);
                let got = merge_levels(&query, &ungrouped, groups).expect("merge");
                assert_eq!(got, want, "seed {seed}: {aggregation:?} {query:?}, records {records:#?}");
            }
        }
    }
}

/// Writing a history one record at a time, in random order and with
/// corrections, and adding up each write's group level changes gives the
/// group level steps the fold computes from the final records.
#[test]
fn group_level_changes_of_each_write_add_up_to_the_fold() {
    use super::groups::{GroupNeighbourhood, cell_of, level_series};
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let mut records: Vec<Rec> = history(&mut rng).into_iter().filter(|r| r.kind == Kind::Level).collect();
        // Arrival order: shuffled.
        for i in (1..records.len()).rev() {
            records.swap(i, rng.below(i + 1));
        }
        let mut stored: Vec<Rec> = Vec::new();
        let mut steps: BTreeMap<(String, i64), Decimal> = BTreeMap::new();
        let mut write = |stored: &mut Vec<Rec>, index: Option<usize>, r: Rec| {
            let was = index.map(|i| std::mem::replace(&mut stored[i], r.clone()).quantity);
            if index.is_none() {
                stored.push(r.clone());
            }
            let mut hood = GroupNeighbourhood::default();
            for s in stored.iter().filter(|s| s.subject == r.subject) {
                hood.stored.entry(s.at_ms).or_default().push((s.quantity, vec![cell_of(s.group)]));
            }
            hood.written.entry(r.at_ms).or_default().push((r.quantity, was, vec![cell_of(r.group)]));
            for (key, cell, at, change) in hood.level_changes(1).expect("changes") {
                assert_eq!(key, 0);
                *steps.entry((level_series("m", "t", &cell), at)).or_default() += change;
            }
        };
        for r in &records {
            write(&mut stored, None, r.clone());
            if rng.chance(20) {
                let i = rng.below(stored.len());
                let corrected = Rec { quantity: rng.quantity(), ..stored[i].clone() };
                write(&mut stored, Some(i), corrected);
            }
        }
        steps.retain(|_, s| !s.is_zero());
        let out = fold_grouped(&stored, &["t".to_owned()]);
        let folded: BTreeMap<(String, i64), Decimal> = out
            .steps
            .iter()
            .filter(|(s, _, _)| s.metric != "m")
            .map(|(s, at, step)| ((s.metric.clone(), *at), *step))
            .collect();
        assert_eq!(steps, folded, "seed {seed}");
    }
}
