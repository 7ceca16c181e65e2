//! Engine and meter-definition tests. Expected values are written out as
//! decimal literals, worked by hand in the comments, never computed by the
//! code under test.

use rust_decimal::Decimal;

use super::period::{PeriodError, Range, WindowSize};
use super::*;

const MIN: i64 = 60_000;
const H: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z
const T0: i64 = 1_704_067_200_000;
/// 2024-01-31T00:00:00Z
const JAN_31: i64 = 1_706_659_200_000;
/// 2024-02-01T00:00:00Z
const FEB: i64 = 1_706_745_600_000;
/// 2024-03-01T00:00:00Z
const MAR: i64 = 1_709_251_200_000;
/// Far enough ahead that integrals are never clipped.
const FUTURE: i64 = i64::MAX;

fn d(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("valid test decimal")
}

fn meter(aggregation: Aggregation) -> MeterDef {
    MeterDef { name: "m".into(), metric: "m".into(), aggregation, unit: "u".into() }
}

fn point(kind: Kind, subject: &str, quantity: &str, at_ms: i64) -> Point {
    Point { kind, subject: subject.into(), quantity: d(quantity), at_ms, group: None }
}

fn delta(subject: &str, quantity: &str, at_ms: i64) -> Point {
    point(Kind::Delta, subject, quantity, at_ms)
}

fn level(subject: &str, quantity: &str, at_ms: i64) -> Point {
    point(Kind::Level, subject, quantity, at_ms)
}

fn grouped(mut p: Point, group: &str) -> Point {
    p.group = Some(group.into());
    p
}

fn query(from_ms: i64, to_ms: i64, window: Option<WindowSize>, now_ms: i64) -> UsageQuery {
    UsageQuery { range: Range { from_ms, to_ms }, window, now_ms, grouped: false }
}

fn by_group(q: UsageQuery) -> UsageQuery {
    UsageQuery { grouped: true, ..q }
}

fn run(aggregation: Aggregation, q: &UsageQuery, carry_in: &[Point], points: &[Point]) -> UsageReport {
    aggregate(&meter(aggregation), q, carry_in, points).expect("aggregation succeeds")
}

/// Ungrouped windows as (start, end, value).
fn ungrouped(report: &UsageReport) -> Vec<(i64, i64, Decimal)> {
    report
        .windows
        .iter()
        .map(|w| {
            assert_eq!(w.group, None);
            (w.start_ms, w.end_ms, w.value)
        })
        .collect()
}

/// Grouped windows as (start, group, value).
fn cells(report: &UsageReport) -> Vec<(i64, Option<&str>, Decimal)> {
    report.windows.iter().map(|w| (w.start_ms, w.group.as_deref(), w.value)).collect()
}

// ---------------------------------------------------------------- Sum

#[test]
fn sum_per_hour_ignores_levels_and_keeps_corrections() {
    let points = [
        delta("a", "1.5", T0),
        delta("b", "2.25", T0 + 30 * MIN),
        delta("a", "-0.75", T0 + H), // a correction, summed as is
        level("a", "100", T0 + H),   // levels do not count towards a sum
        delta("b", "0.001", T0 + 3 * H - 1),
    ];
    let r = run(Aggregation::Sum, &query(T0, T0 + 3 * H, Some(WindowSize::Hour), FUTURE), &[], &points);
    assert_eq!(
        ungrouped(&r),
        vec![(T0, T0 + H, d("3.75")), (T0 + H, T0 + 2 * H, d("-0.75")), (T0 + 2 * H, T0 + 3 * H, d("0.001")),]
    );
    assert_eq!(r.total, d("3.001"));
}

#[test]
fn sum_per_day_across_a_month_boundary() {
    let points = [
        delta("a", "1", FEB - 1), // last millisecond of January
        delta("a", "2", FEB),
        delta("b", "3", FEB + 12 * H),
    ];
    let r = run(Aggregation::Sum, &query(JAN_31, FEB + DAY, Some(WindowSize::Day), FUTURE), &[], &points);
    assert_eq!(ungrouped(&r), vec![(JAN_31, FEB, d("1")), (FEB, FEB + DAY, d("5"))]);
    assert_eq!(r.total, d("6"));
}

#[test]
fn sum_per_calendar_month() {
    let mid_jan = T0 + 14 * DAY + 10 * H;
    let mid_mar = MAR + 14 * DAY;
    let points = [
        delta("a", "10", T0 + 19 * DAY),
        delta("a", "20", FEB),
        delta("a", "30", MAR - 1), // 2024-02-29T23:59:59.999Z, a leap day
        delta("a", "40", MAR),
    ];
    let r = run(Aggregation::Sum, &query(mid_jan, mid_mar, Some(WindowSize::Month), FUTURE), &[], &points);
    assert_eq!(ungrouped(&r), vec![(mid_jan, FEB, d("10")), (FEB, MAR, d("50")), (MAR, mid_mar, d("40"))]);
    assert_eq!(r.total, d("100"));
}

#[test]
fn no_window_means_one_window_over_the_range() {
    let points = [delta("a", "1", T0), delta("a", "2", T0 + 40 * DAY)];
    let r = run(Aggregation::Sum, &query(T0, T0 + 41 * DAY, None, FUTURE), &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + 41 * DAY, d("3"))]);
    assert_eq!(r.total, d("3"));
}

#[test]
fn empty_input_gives_zero_windows() {
    let q = query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE);
    for aggregation in
        [Aggregation::Sum, Aggregation::Count, Aggregation::Integral, Aggregation::Latest, Aggregation::Max]
    {
        let r = run(aggregation, &q, &[], &[]);
        assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("0")), (T0 + H, T0 + 2 * H, d("0"))]);
        assert_eq!(r.total, d("0"));
    }
}

#[test]
fn points_outside_the_range_are_ignored() {
    // The caller promises from <= at_ms < to; anything else is not guessed at.
    let points = [delta("a", "1", T0 - 1), delta("a", "2", T0), delta("a", "4", T0 + H)];
    let r = run(Aggregation::Sum, &query(T0, T0 + H, None, FUTURE), &[], &points);
    assert_eq!(r.total, d("2"));
    let levels = [level("a", "7", T0 - 1), level("a", "1", T0 + 30 * MIN), level("a", "9", T0 + H)];
    let r = run(Aggregation::Latest, &query(T0, T0 + H, None, FUTURE), &[], &levels);
    assert_eq!(r.total, d("1"));
    let r = run(Aggregation::Max, &query(T0, T0 + H, None, FUTURE), &[], &levels);
    assert_eq!(r.total, d("1"));
}

// ---------------------------------------------------------------- Count

#[test]
fn count_counts_records_of_both_kinds() {
    let points = [
        delta("a", "5", T0),
        level("a", "1", T0 + 1),
        delta("b", "-5", T0 + 59 * MIN),
        level("b", "0", T0 + 2 * H),
    ];
    let r = run(Aggregation::Count, &query(T0, T0 + 3 * H, Some(WindowSize::Hour), FUTURE), &[], &points);
    assert_eq!(
        ungrouped(&r),
        vec![(T0, T0 + H, d("3")), (T0 + H, T0 + 2 * H, d("0")), (T0 + 2 * H, T0 + 3 * H, d("1"))]
    );
    assert_eq!(r.total, d("4"));
    // Carry-in lies before the range: nothing to count.
    let r =
        run(Aggregation::Count, &query(T0, T0 + 3 * H, None, FUTURE), &[level("c", "1", T0 - 1)], &points);
    assert_eq!(r.total, d("4"));
}

// ---------------------------------------------------------------- Integral

#[test]
fn integral_of_an_open_level_stops_at_now() {
    // A 2-vCPU sandbox started at 01:00 and is still running at 02:30:00.500.
    let now = T0 + H + 90 * MIN + 500;
    let points = [level("sbx", "2", T0 + H)];
    let r = run(Aggregation::Integral, &query(T0, FEB, None, now), &[], &points);
    // 2 × 5400.5 s
    assert_eq!(r.total, d("10801"));
    assert_eq!(ungrouped(&r), vec![(T0, FEB, d("10801"))]);

    let r = run(Aggregation::Integral, &query(T0, FEB, Some(WindowSize::Day), now), &[], &points);
    assert_eq!(r.windows.len(), 31);
    assert_eq!(r.windows[0].value, d("10801"));
    assert!(r.windows[1..].iter().all(|w| w.value.is_zero()), "days after now have no usage");
    assert_eq!(r.total, d("10801"));
}

#[test]
fn integral_starts_from_the_carried_in_level() {
    // 3 since long before the range; dropped to 0 at 01:30.
    let carry_in = [level("sbx", "3", T0 - 5 * H)];
    let points = [level("sbx", "0", T0 + H + 30 * MIN)];
    let r = run(
        Aggregation::Integral,
        &query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE),
        &carry_in,
        &points,
    );
    // 3 × 3600 s, then 3 × 1800 s
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("10800")), (T0 + H, T0 + 2 * H, d("5400"))]);
    assert_eq!(r.total, d("16200"));
}

#[test]
fn carry_in_that_breaks_its_contract_is_ignored() {
    // A delta, and a "carry-in" inside the range: neither is a level before the range.
    let carry_in = [delta("a", "5", T0 - H), level("b", "5", T0 + 10 * MIN)];
    let r = run(Aggregation::Integral, &query(T0, T0 + H, None, FUTURE), &carry_in, &[]);
    assert_eq!(r.total, d("0"));
    let r = run(Aggregation::Sum, &query(T0, T0 + H, None, FUTURE), &carry_in, &[]);
    assert_eq!(r.total, d("0"));
}

#[test]
fn two_overlapping_sandboxes_of_two_vcpus() {
    // a: 2 vCPU over [00:00, 02:00); b: 2 vCPU over [01:00, 03:00).
    let points = [
        level("a", "2", T0),
        level("a", "0", T0 + 2 * H),
        level("b", "2", T0 + H),
        level("b", "0", T0 + 3 * H),
    ];
    let q = query(T0, T0 + 4 * H, Some(WindowSize::Hour), FUTURE);
    let hours = |v: [&str; 4]| -> Vec<(i64, i64, Decimal)> {
        (0..4).map(|i| (T0 + i * H, T0 + (i + 1) * H, d(v[i as usize]))).collect()
    };

    // Org level per hour: 2, 4, 2, 0.
    let r = run(Aggregation::Integral, &q, &[], &points);
    assert_eq!(ungrouped(&r), hours(["7200", "14400", "7200", "0"]));
    assert_eq!(r.total, d("28800"));

    let r = run(Aggregation::Max, &q, &[], &points);
    assert_eq!(ungrouped(&r), hours(["2", "4", "2", "0"]));
    assert_eq!(r.total, d("4"));

    let r = run(Aggregation::Latest, &q, &[], &points);
    assert_eq!(ungrouped(&r), hours(["2", "4", "2", "0"]));
    assert_eq!(r.total, d("0"));
}

#[test]
fn a_late_level_between_two_earlier_ones_changes_the_integral() {
    let q = query(T0, T0 + 3 * H, None, T0 + 3 * H);
    let mut points = vec![level("s", "1", T0), level("s", "3", T0 + 2 * H)];
    // 1 × 7200 s + 3 × 3600 s
    assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("18000"));
    // Arrives last, but happened at 01:00.
    points.push(level("s", "5", T0 + H));
    // 1 × 3600 + 5 × 3600 + 3 × 3600
    assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("32400"));
}

#[test]
fn integral_windows_entirely_in_the_future_are_zero() {
    let carry_in = [level("s", "1", T0 - 1)];
    let now = T0 + DAY + 12 * H;
    let r = run(Aggregation::Integral, &query(T0, FEB, Some(WindowSize::Day), now), &carry_in, &[]);
    assert_eq!(r.windows.len(), 31);
    assert_eq!(r.windows[0].value, d("86400"));
    assert_eq!(r.windows[1].value, d("43200"));
    assert!(r.windows[2..].iter().all(|w| w.value.is_zero()));
    assert_eq!(r.total, d("129600"));

    // A range entirely after now.
    let r = run(Aggregation::Integral, &query(T0, FEB, Some(WindowSize::Day), T0 - 1), &carry_in, &[]);
    assert!(r.windows.iter().all(|w| w.value.is_zero()));
    assert_eq!(r.total, d("0"));
}

#[test]
fn integral_is_exact() {
    let q = query(T0, T0 + H, None, FUTURE);
    // 0.1 for 1 ms = 0.0001 level-seconds, not 0.00010000000000000000555.
    let points = [level("s", "0.1", T0), level("s", "0", T0 + 1)];
    assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("0.0001"));
    // Many tiny pieces add up exactly: 0.1 on and off for 1 ms, three times.
    let points = [
        level("s", "0.1", T0),
        level("s", "0", T0 + 1),
        level("s", "0.1", T0 + 10),
        level("s", "0", T0 + 11),
        level("t", "0.1", T0 + 20),
        level("t", "0", T0 + 21),
    ];
    assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("0.0003"));
    // One nanounit for 7 ms.
    let points = [level("s", "0.000000001", T0), level("s", "0", T0 + 7)];
    assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("0.000000000007"));
}

#[test]
fn negative_levels_are_integrated_as_is() {
    let points = [level("s", "-1.5", T0), level("t", "1", T0 + 30 * MIN)];
    let r = run(Aggregation::Integral, &query(T0, T0 + H, None, FUTURE), &[], &points);
    // -1.5 × 3600 + 1 × 1800
    assert_eq!(r.total, d("-3600"));
}

// ---------------------------------------------------------------- Latest and Max

#[test]
fn latest_and_max_of_concurrent_sandboxes() {
    // sandbox_active: each sandbox is 1 while it exists.
    let points = [
        level("a", "1", T0 + 10 * MIN),  // created → 1
        level("b", "1", T0 + 20 * MIN),  // created → 2
        level("a", "0", T0 + 30 * MIN),  // killed  → 1
        level("c", "1", T0 + 40 * MIN),  // created → 2
        level("b", "0", T0 + 70 * MIN),  // killed  → 1
        level("d", "1", T0 + 90 * MIN),  // created → 2
        level("e", "1", T0 + 100 * MIN), // created → 3
        level("d", "0", T0 + 110 * MIN), // killed  → 2
    ];
    let q = query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE);
    let r = run(Aggregation::Max, &q, &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("2")), (T0 + H, T0 + 2 * H, d("3"))]);
    assert_eq!(r.total, d("3"));
    let r = run(Aggregation::Latest, &q, &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("2")), (T0 + H, T0 + 2 * H, d("2"))]);
    assert_eq!(r.total, d("2"));
}

#[test]
fn latest_excludes_the_window_end_and_ignores_now() {
    let points = [level("s", "4", T0 + H - 1), level("s", "9", T0 + H)];
    let q = query(T0, T0 + 2 * H, Some(WindowSize::Hour), T0); // now before everything
    let r = run(Aggregation::Latest, &q, &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("4")), (T0 + H, T0 + 2 * H, d("9"))]);
    assert_eq!(r.total, d("9"));
}

#[test]
fn max_includes_the_level_in_force_at_the_window_start() {
    let carry_in = [level("s", "5", T0 - DAY)];
    let points = [level("s", "1", T0 + MIN)];
    let r = run(Aggregation::Max, &query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE), &carry_in, &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("5")), (T0 + H, T0 + 2 * H, d("1"))]);
    assert_eq!(r.total, d("5"));
    // All-negative levels: the max is negative, not a phantom 0 ...
    let points = [level("s", "-2", T0), level("t", "-3", T0 + MIN)];
    let r = run(Aggregation::Max, &query(T0, T0 + H, None, FUTURE), &[], &points);
    assert_eq!(r.total, d("-2"));
    // ... unless the range starts before the first record, where the level is 0.
    let r = run(Aggregation::Max, &query(T0 - 1, T0 + H, None, FUTURE), &[], &points);
    assert_eq!(r.total, d("0"));
}

#[test]
fn max_takes_each_instant_as_a_whole() {
    // a is killed and b created at the same instant: never 2 sandboxes at once,
    // whatever order the records are listed in.
    let mut points = vec![level("a", "1", T0), level("b", "1", T0 + H), level("a", "0", T0 + H)];
    let q = query(T0, T0 + 2 * H, None, FUTURE);
    assert_eq!(run(Aggregation::Max, &q, &[], &points).total, d("1"));
    points.reverse();
    assert_eq!(run(Aggregation::Max, &q, &[], &points).total, d("1"));
}

// ---------------------------------------------------------------- Ties

#[test]
fn ties_on_one_subject_and_instant_keep_the_greatest_quantity_then_group() {
    let q = query(T0, T0 + H, None, FUTURE);
    for points in
        [vec![level("s", "5", T0), level("s", "3", T0)], vec![level("s", "3", T0), level("s", "5", T0)]]
    {
        // 5 holds for the hour; 3 holds for no time.
        assert_eq!(run(Aggregation::Integral, &q, &[], &points).total, d("18000"));
        assert_eq!(run(Aggregation::Latest, &q, &[], &points).total, d("5"));
        assert_eq!(run(Aggregation::Max, &q, &[], &points).total, d("5"));
    }

    // Equal quantities: the greatest group wins (None is the lowest).
    let q = by_group(q);
    let tied = [grouped(level("s", "2", T0), "b"), level("s", "2", T0), grouped(level("s", "2", T0), "a")];
    let expected = vec![(T0, None, d("0")), (T0, Some("a"), d("0")), (T0, Some("b"), d("2"))];
    let mut points = tied.to_vec();
    for _ in 0..points.len() {
        points.rotate_left(1);
        assert_eq!(cells(&run(Aggregation::Latest, &q, &[], &points)), expected);
    }

    // Two carry-ins for one subject (against the contract) follow the same rule.
    let q = query(T0, T0 + H, None, FUTURE);
    for carry_in in [
        [level("s", "4", T0 - 1), level("s", "1", T0 - 1)],
        [level("s", "1", T0 - 1), level("s", "4", T0 - 1)],
    ] {
        assert_eq!(run(Aggregation::Latest, &q, &carry_in, &[]).total, d("4"));
    }
}

#[test]
fn equal_quantities_of_different_scale_give_the_same_representation() {
    let q = query(T0, T0 + H, None, FUTURE);
    let a = [level("s", "1.0", T0), level("s", "1.00", T0)];
    let b = [level("s", "1.00", T0), level("s", "1.0", T0)];
    let ra = run(Aggregation::Latest, &q, &[], &a);
    let rb = run(Aggregation::Latest, &q, &[], &b);
    assert_eq!(ra.total.to_string(), rb.total.to_string());
}

// ---------------------------------------------------------------- Grouping

#[test]
fn a_subject_moving_between_groups_contributes_to_each_in_turn() {
    // s: 2 in "eu" from 00:00, moves to "us" at 01:00. t: 1, no group, from 00:30.
    let points = [
        grouped(level("s", "2", T0), "eu"),
        grouped(level("s", "2", T0 + H), "us"),
        level("t", "1", T0 + 30 * MIN),
    ];
    let q = by_group(query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE));
    let w2 = T0 + H;

    let r = run(Aggregation::Integral, &q, &[], &points);
    assert_eq!(
        cells(&r),
        vec![
            (T0, None, d("1800")),
            (T0, Some("eu"), d("7200")),
            (T0, Some("us"), d("0")),
            (w2, None, d("3600")),
            (w2, Some("eu"), d("0")),
            (w2, Some("us"), d("7200")),
        ]
    );
    assert_eq!(r.total, d("19800"));

    let r = run(Aggregation::Latest, &q, &[], &points);
    assert_eq!(
        cells(&r),
        vec![
            (T0, None, d("1")),
            (T0, Some("eu"), d("2")),
            (T0, Some("us"), d("0")),
            (w2, None, d("1")),
            (w2, Some("eu"), d("0")),
            (w2, Some("us"), d("2")),
        ]
    );
    assert_eq!(r.total, d("3"));

    let r = run(Aggregation::Max, &q, &[], &points);
    assert_eq!(
        cells(&r),
        vec![
            (T0, None, d("1")),
            (T0, Some("eu"), d("2")),
            (T0, Some("us"), d("0")),
            (w2, None, d("1")),
            (w2, Some("eu"), d("0")),
            (w2, Some("us"), d("2")),
        ]
    );
    assert_eq!(r.total, d("3"));
}

#[test]
fn carry_in_group_counts_until_the_subject_moves() {
    let carry_in = [grouped(level("s", "1", T0 - H), "old")];
    let points = [grouped(level("s", "1", T0 + 30 * MIN), "new")];
    let q = by_group(query(T0, T0 + H, None, FUTURE));
    let r = run(Aggregation::Integral, &q, &carry_in, &points);
    assert_eq!(cells(&r), vec![(T0, Some("new"), d("1800")), (T0, Some("old"), d("1800"))]);
    assert_eq!(r.total, d("3600"));
}

#[test]
fn grouped_sum_is_dense_with_none_first() {
    let points = [
        grouped(delta("a", "1", T0), "b"),
        grouped(delta("a", "2", T0 + H), "a"),
        delta("c", "4", T0 + H + 1),
        grouped(level("z", "100", T0), "zz"), // not a delta: not a Sum group
    ];
    let q = by_group(query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE));
    let r = run(Aggregation::Sum, &q, &[], &points);
    assert_eq!(
        cells(&r),
        vec![
            (T0, None, d("0")),
            (T0, Some("a"), d("0")),
            (T0, Some("b"), d("1")),
            (T0 + H, None, d("4")),
            (T0 + H, Some("a"), d("2")),
            (T0 + H, Some("b"), d("0")),
        ]
    );
    assert_eq!(r.total, d("7"));

    // Count groups every record, the level's group included.
    let r = run(Aggregation::Count, &q, &[], &points);
    let groups: Vec<Option<&str>> = r.windows.iter().take(4).map(|w| w.group.as_deref()).collect();
    assert_eq!(groups, vec![None, Some("a"), Some("b"), Some("zz")]);
    assert_eq!(r.total, d("4"));
}

#[test]
fn grouping_is_ignored_unless_asked_for() {
    let points = [grouped(delta("a", "1", T0), "x"), grouped(delta("a", "2", T0), "y")];
    let r = run(Aggregation::Sum, &query(T0, T0 + H, None, FUTURE), &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("3"))]);
}

#[test]
fn grouped_without_relevant_points_gives_one_zero_per_window() {
    let q = by_group(query(T0, T0 + 2 * H, Some(WindowSize::Hour), FUTURE));
    // Only a level: irrelevant to Sum.
    let points = [grouped(level("s", "1", T0), "g")];
    let r = run(Aggregation::Sum, &q, &[], &points);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("0")), (T0 + H, T0 + 2 * H, d("0"))]);
    let r = run(Aggregation::Integral, &q, &[], &[]);
    assert_eq!(ungrouped(&r), vec![(T0, T0 + H, d("0")), (T0 + H, T0 + 2 * H, d("0"))]);
}

// ---------------------------------------------------------------- Order independence

/// Every permutation check: reversed and each rotation of both inputs.
fn permutations(points: &[Point]) -> Vec<Vec<Point>> {
    let mut out = Vec::new();
    for reverse in [false, true] {
        for k in 0..points.len().max(1) {
            let mut p = points.to_vec();
            if reverse {
                p.reverse();
            }
            p.rotate_left(k);
            out.push(p);
        }
    }
    out
}

#[test]
fn input_order_never_changes_a_report() {
    let carry_in = vec![
        grouped(level("a", "2", T0 - DAY), "x"),
        level("b", "1.50", T0 - H),
        grouped(level("c", "3", T0 - 1), "y"),
    ];
    let points = vec![
        grouped(level("a", "0", T0 + 3 * H), "x"),
        grouped(level("b", "4", T0 + H), "y"),
        level("b", "4.0", T0 + H), // tie with the one above
        grouped(level("c", "1", T0 + H), "x"),
        grouped(level("d", "0.25", T0 + H), "z"),
        level("d", "0.5", T0 + 2 * H + 1),
        grouped(delta("a", "1.10", T0), "x"),
        delta("a", "-0.1", T0 + 5 * H),
        grouped(delta("e", "7", T0 + 2 * H), "y"),
        grouped(delta("e", "7.000", T0 + 2 * H), "y"),
    ];
    for aggregation in
        [Aggregation::Sum, Aggregation::Count, Aggregation::Integral, Aggregation::Latest, Aggregation::Max]
    {
        for window in [None, Some(WindowSize::Hour), Some(WindowSize::Day)] {
            for group in [false, true] {
                let q = UsageQuery { grouped: group, ..query(T0, T0 + 6 * H, window, T0 + 4 * H + 17) };
                let reference = run(aggregation, &q, &carry_in, &points);
                for c in permutations(&carry_in) {
                    for p in permutations(&points) {
                        let r = run(aggregation, &q, &c, &p);
                        // Debug shows each decimal's scale too.
                        assert_eq!(
                            format!("{r:?}"),
                            format!("{reference:?}"),
                            "{aggregation:?} {window:?} {group}"
                        );
                    }
                }
            }
        }
    }
    // And one of them spelled out: the integral over [00:00, 04:00:00.017).
    // a: 2 until 03:00 (x); b: 1.5 until 01:00, then 4 (y wins the tie);
    // c: 3 until 01:00 (y), then 1 (x); d: 0.25 from 01:00 (z), 0.5 from 02:00:00.001.
    // Org level: [0,1h) 6.5 · [1h,2h+1ms) 7.25 · [2h+1ms,3h) 7.5 · [3h, 4h+17ms) 5.5
    // 6.5×3600 + 7.25×3600.001 + 7.5×3599.999 + 5.5×3600.017
    // = 23400 + 26100.00725 + 26999.9925 + 19800.0935 = 96300.09325
    let q = query(T0, T0 + 6 * H, None, T0 + 4 * H + 17);
    assert_eq!(run(Aggregation::Integral, &q, &carry_in, &points).total, d("96300.09325"));
}

// ---------------------------------------------------------------- Errors

#[test]
fn overflow_is_an_error_not_a_wrap() {
    let q = query(T0, T0 + H, None, FUTURE);
    let max = Decimal::MAX.to_string();
    let points = [delta("a", &max, T0), delta("b", &max, T0 + 1)];
    assert!(matches!(
        aggregate(&meter(Aggregation::Sum), &q, &[], &points),
        Err(EngineError::Quantity(meterd_units::QuantityError::Overflow(_)))
    ));
    let points = [level("a", &max, T0)];
    assert!(matches!(
        aggregate(&meter(Aggregation::Integral), &q, &[], &points),
        Err(EngineError::Quantity(meterd_units::QuantityError::Overflow(_)))
    ));
    // Latest never multiplies, so the same level is fine there.
    assert_eq!(run(Aggregation::Latest, &q, &[], &points).total, Decimal::MAX);
}

#[test]
fn the_longest_range_is_measured_exactly() {
    // [i64::MIN, i64::MAX) is 2^64 - 1 ms long: more than an i64 holds.
    let q = query(i64::MIN, i64::MAX, None, FUTURE);
    let r = run(Aggregation::Integral, &q, &[], &[level("a", "1", i64::MIN)]);
    assert_eq!(r.total, d("18446744073709551.615"));
    let r = run(Aggregation::Integral, &q, &[], &[level("a", "1", 0)]);
    assert_eq!(r.total, d("9223372036854775.807"));
}

#[test]
fn bad_ranges_and_window_counts_are_period_errors() {
    let q = query(T0, T0, None, FUTURE);
    assert_eq!(
        aggregate(&meter(Aggregation::Sum), &q, &[], &[]),
        Err(EngineError::Period(PeriodError::EmptyRange { from_ms: T0, to_ms: T0 }))
    );
    let q = query(T0, T0 + 10_001 * H, Some(WindowSize::Hour), FUTURE);
    let err = aggregate(&meter(Aggregation::Sum), &q, &[], &[]).expect_err("too many windows");
    assert_eq!(err, EngineError::Period(PeriodError::TooManyWindows { count: 10_001, max: 10_000 }));
    // The message is the period error's own.
    assert!(err.to_string().starts_with("the range spans 10001 windows"));
}

// ---------------------------------------------------------------- Definitions

#[test]
fn kind_spelling_round_trips() {
    assert_eq!(Kind::Delta.as_str(), "delta");
    assert_eq!(Kind::Level.as_str(), "level");
    assert_eq!(Kind::parse("delta"), Some(Kind::Delta));
    assert_eq!(Kind::parse("level"), Some(Kind::Level));
    assert_eq!(Kind::parse("Level"), None);
    assert_eq!(Kind::parse(""), None);
}

#[test]
fn serde_names_match_the_documented_spelling() {
    use serde::Deserialize;
    use serde::de::value::{Error, StrDeserializer};
    fn from<'a, T: Deserialize<'a>>(s: &'a str) -> Result<T, Error> {
        T::deserialize(StrDeserializer::<Error>::new(s))
    }
    assert_eq!(from::<Kind>("level"), Ok(Kind::Level));
    assert_eq!(from::<Aggregation>("integral"), Ok(Aggregation::Integral));
    assert_eq!(from::<Aggregation>("count"), Ok(Aggregation::Count));
    assert_eq!(from::<WindowSize>("month"), Ok(WindowSize::Month));
    assert!(from::<WindowSize>("week").is_err());
}

#[test]
fn default_meters_are_the_documented_ten() {
    let table: Vec<(String, String, Aggregation, String)> =
        default_meters().into_iter().map(|m| (m.name, m.metric, m.aggregation, m.unit)).collect();
    let expected = [
        ("sandbox_cpu_core_seconds", "sandbox_cpu_core_seconds", Aggregation::Sum, "vCPU-seconds"),
        ("sandbox_ram_gibi_seconds", "sandbox_ram_gibi_seconds", Aggregation::Sum, "GiB-seconds"),
        ("sandbox_ssd_gibi_seconds", "sandbox_ssd_gibi_seconds", Aggregation::Sum, "GiB-seconds"),
        ("sandbox_gpu_core_seconds", "sandbox_gpu_core_seconds", Aggregation::Sum, "GPU-seconds"),
        ("sandbox_active", "sandbox_active", Aggregation::Latest, "sandboxes"),
        ("sandbox_active_max", "sandbox_active", Aggregation::Max, "sandboxes"),
        ("sandbox_active_seconds", "sandbox_active", Aggregation::Integral, "sandbox-seconds"),
        ("storage_bytes", "storage_bytes", Aggregation::Latest, "bytes"),
        ("storage_byte_seconds", "storage_bytes", Aggregation::Integral, "byte-seconds"),
        ("storage_objects", "storage_objects", Aggregation::Latest, "objects"),
    ]
    .map(|(n, m, a, u)| (n.to_owned(), m.to_owned(), a, u.to_owned()));
    assert_eq!(table, expected);
}

#[test]
fn a_max_merged_over_time_parts_counts_a_group_at_zero_in_a_part_that_does_not_name_it() {
    // One window over [T0, T0+2h), split at T0+1h. Nothing is in force in
    // the first part; at the split, s1 goes to -1 in group a and s2 to 2 in
    // group b. Group a's maximum over the window is 0 (its level during the
    // first hour), not -1; b's is 2; the org level's maximum is 1 (= -1 + 2).
    let q = by_group(query(T0, T0 + 2 * H, None, FUTURE));
    let points = [grouped(level("s1", "-1", T0 + H), "a"), grouped(level("s2", "2", T0 + H), "b")];
    let whole = run(Aggregation::Max, &q, &[], &points);
    let mut merged = merge::MaxMerged::new(&q).expect("windows");
    let max = meter(Aggregation::Max);
    merged.add_part(&max, &q, Range { from_ms: T0, to_ms: T0 + H }, &[], &[]).expect("first part");
    merged
        .add_part(&max, &q, Range { from_ms: T0 + H, to_ms: T0 + 2 * H }, &[], &points)
        .expect("second part");
    let parts = merged.finish();
    assert_eq!(parts, whole);
    let values: Vec<(Option<String>, Decimal)> =
        parts.windows.iter().map(|w| (w.group.clone(), w.value)).collect();
    assert_eq!(values, [(Some("a".into()), d("0")), (Some("b".into()), d("2"))]);
    assert_eq!(parts.total, d("1"));
}
