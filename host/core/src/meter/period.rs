//! Billing periods and report windows.
//!
//! All times are `i64` milliseconds since the Unix epoch, UTC; every range is
//! half-open `[from, to)` so adjacent windows never share an instant.
//!
//! Calendar arithmetic is done here with integer civil-date formulas
//! (proleptic Gregorian, days counted from 1970-01-01) rather than a date
//! library, so every `i64` millisecond has a month: no time a client sends can
//! fall outside a supported calendar range. Intermediate boundaries are
//! computed in `i128`, so nothing overflows or wraps.

/// Milliseconds in one UTC hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one UTC day (UTC has no DST, and Unix time has no leap
/// seconds).
const DAY_MS: i64 = 86_400_000;

/// The most windows one query may produce: bounds response size and work
/// per request.
pub const MAX_WINDOWS: usize = 10_000;

/// Why a range or its windows cannot be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("empty time range: `from` ({from_ms} ms) must be earlier than `to` ({to_ms} ms)")]
    EmptyRange { from_ms: i64, to_ms: i64 },
    #[error(
        "the range spans {count} windows but at most {max} are allowed; use a larger window or a shorter range"
    )]
    TooManyWindows { count: usize, max: usize },
    /// A boundary that cannot be represented in `i64` milliseconds. Kept for
    /// callers' exhaustive matching; the `i128` boundary arithmetic here
    /// never produces it for a valid range.
    #[error("a time boundary falls outside the supported range (i64 milliseconds since the Unix epoch)")]
    OutOfRange,
}

/// A half-open time range `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Range {
    /// A non-empty range; an empty or reversed one is a caller error, not a
    /// range with no usage.
    pub fn new(from_ms: i64, to_ms: i64) -> Result<Range, PeriodError> {
        if from_ms < to_ms {
            Ok(Range { from_ms, to_ms })
        } else {
            Err(PeriodError::EmptyRange { from_ms, to_ms })
        }
    }

    /// Whether `ms` lies in `[from_ms, to_ms)`.
    pub(crate) fn contains(&self, ms: i64) -> bool {
        self.from_ms <= ms && ms < self.to_ms
    }
}

/// The length of a report window; hours and days are fixed lengths in UTC,
/// months are calendar months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowSize {
    Hour,
    Day,
    Month,
}

/// The calendar month (UTC) containing `ms`: the billing period.
///
/// The only months that do not fit in `i64` milliseconds are the first and
/// last ones representable (around ±292 million years); their bounds saturate
/// at `i64::MIN` / `i64::MAX` instead of wrapping.
pub fn month_containing(ms: i64) -> Range {
    let month = month_index(ms);
    Range { from_ms: saturate(month_start_ms(month)), to_ms: saturate(month_start_ms(month + 1)) }
}

/// Consecutive windows aligned to UTC hour/day/calendar-month boundaries that
/// cover `range`, the first and last clipped to the range. Error if more than
/// [`MAX_WINDOWS`] would result.
pub fn windows(range: Range, size: WindowSize) -> Result<Vec<Range>, PeriodError> {
    // `Range`'s fields are public, so a hand-built one may be empty.
    let range = Range::new(range.from_ms, range.to_ms)?;
    let last_ms = range.to_ms - 1; // from < to, so this cannot underflow.
    // Window k covers [boundary(k), boundary(k + 1)).
    let (first, last): (i128, i128) = match size {
        WindowSize::Hour => (range.from_ms.div_euclid(HOUR_MS).into(), last_ms.div_euclid(HOUR_MS).into()),
        WindowSize::Day => (range.from_ms.div_euclid(DAY_MS).into(), last_ms.div_euclid(DAY_MS).into()),
        WindowSize::Month => (month_index(range.from_ms).into(), month_index(last_ms).into()),
    };
    let count = last - first + 1;
    if count > MAX_WINDOWS as i128 {
        return Err(PeriodError::TooManyWindows {
            count: usize::try_from(count).unwrap_or(usize::MAX),
            max: MAX_WINDOWS,
        });
    }
    let boundary = |k: i128| -> i128 {
        match size {
            WindowSize::Hour => k * i128::from(HOUR_MS),
            WindowSize::Day => k * i128::from(DAY_MS),
            // k is at most one past the month index of an i64 time, so it
            // fits in i64.
            WindowSize::Month => month_start_ms(k as i64),
        }
    };
    let (from, to) = (i128::from(range.from_ms), i128::from(range.to_ms));
    let mut out = Vec::with_capacity(count as usize);
    for k in first..=last {
        let start = boundary(k).max(from);
        let end = boundary(k + 1).min(to);
        // Clipped to the range, so both fit in i64; checked anyway.
        let start = i64::try_from(start).map_err(|_| PeriodError::OutOfRange)?;
        let end = i64::try_from(end).map_err(|_| PeriodError::OutOfRange)?;
        out.push(Range { from_ms: start, to_ms: end });
    }
    Ok(out)
}

/// Months since 0000-01 (proleptic Gregorian, year 0 = 1 BC) of the month
/// containing `ms`.
fn month_index(ms: i64) -> i64 {
    let (year, month) = civil_from_days(ms.div_euclid(DAY_MS));
    year * 12 + i64::from(month) - 1
}

/// The first millisecond of month `index` (see [`month_index`]).
fn month_start_ms(index: i64) -> i128 {
    let year = index.div_euclid(12);
    let month = (index.rem_euclid(12) + 1) as u32;
    i128::from(days_from_civil(year, month)) * i128::from(DAY_MS)
}

fn saturate(ms: i128) -> i64 {
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// Days from 1970-01-01 to the first day of `month` (1..=12) of `year`.
///
/// Howard Hinnant's `days_from_civil`: counts in 400-year eras that start on
/// 1 March, so the leap day is the last day of the shifted year.
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400; // [0, 399]
    let shifted_month = i64::from((month + 9) % 12); // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5; // first day of the month
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month 1..=12) containing day `days` since 1970-01-01; the
/// inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097; // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;
    const D: i64 = DAY_MS;
    // Month starts, UTC, in ms (checked against `date -u -d ... +%s`).
    const JAN_2024: i64 = 1_704_067_200_000;
    const FEB_2024: i64 = 1_706_745_600_000;
    const MAR_2024: i64 = 1_709_251_200_000;
    const APR_2024: i64 = 1_711_929_600_000;
    const MAY_2024: i64 = 1_714_521_600_000;
    const FEB_2023: i64 = 1_675_209_600_000;
    const MAR_2023: i64 = 1_677_628_800_000;
    const DEC_2024: i64 = 1_733_011_200_000;
    const JAN_2025: i64 = 1_735_689_600_000;
    const FEB_2025: i64 = 1_738_368_000_000;
    const DEC_1969: i64 = -2_678_400_000;
    const FEB_2000: i64 = 949_363_200_000;
    const MAR_2000: i64 = 951_868_800_000;
    const FEB_1900: i64 = -2_206_310_400_000;
    const MAR_1900: i64 = -2_203_891_200_000;

    fn r(from_ms: i64, to_ms: i64) -> Range {
        Range { from_ms, to_ms }
    }

    /// The month of `start` is `[start, end)`, seen from its first, middle
    /// and last millisecond.
    fn assert_month(start: i64, end: i64, days: i64) {
        assert_eq!(end - start, days * D, "length of month starting {start}");
        for ms in [start, start + (end - start) / 2, end - 1] {
            assert_eq!(month_containing(ms), r(start, end), "month containing {ms}");
        }
    }

    #[test]
    fn range_new_requires_from_before_to() {
        assert_eq!(Range::new(1, 2), Ok(r(1, 2)));
        assert_eq!(Range::new(5, 5), Err(PeriodError::EmptyRange { from_ms: 5, to_ms: 5 }));
        assert_eq!(Range::new(6, 5), Err(PeriodError::EmptyRange { from_ms: 6, to_ms: 5 }));
        assert_eq!(Range::new(i64::MIN, i64::MAX), Ok(r(i64::MIN, i64::MAX)));
    }

    #[test]
    fn months_of_31_30_28_and_29_days() {
        assert_month(JAN_2024, FEB_2024, 31);
        assert_month(APR_2024, MAY_2024, 30);
        assert_month(FEB_2023, MAR_2023, 28);
        assert_month(FEB_2024, MAR_2024, 29); // divisible by 4: leap
        assert_month(FEB_2000, MAR_2000, 29); // divisible by 400: leap
        assert_month(FEB_1900, MAR_1900, 28); // divisible by 100 only: not leap
    }

    #[test]
    fn december_rolls_over_into_january_of_the_next_year() {
        assert_month(DEC_2024, JAN_2025, 31);
        assert_month(JAN_2025, FEB_2025, 31);
        assert_eq!(month_containing(JAN_2025 - 1), r(DEC_2024, JAN_2025));
        assert_eq!(month_containing(JAN_2025), r(JAN_2025, FEB_2025));
    }

    #[test]
    fn negative_times_are_before_the_epoch() {
        assert_month(DEC_1969, 0, 31);
        assert_eq!(month_containing(-1), r(DEC_1969, 0));
        assert_eq!(month_containing(0), r(0, 31 * D));
    }

    #[test]
    fn month_boundaries_agree_with_chrono_from_1600_to_2500() {
        use chrono::NaiveDate;
        let start_of = |year: i32, month: u32| {
            NaiveDate::from_ymd_opt(year, month, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .expect("valid test date")
                .and_utc()
                .timestamp_millis()
        };
        for year in 1600..=2500 {
            for month in 1..=12 {
                let start = start_of(year, month);
                let end = if month == 12 { start_of(year + 1, 1) } else { start_of(year, month + 1) };
                for ms in [start, start + 12_345_678, end - 1] {
                    assert_eq!(month_containing(ms), r(start, end), "{year}-{month}");
                }
            }
        }
    }

    #[test]
    fn extreme_times_saturate_instead_of_overflowing() {
        let last = month_containing(i64::MAX);
        assert_eq!(last.to_ms, i64::MAX);
        assert!(last.from_ms < i64::MAX && i64::MAX - last.from_ms <= 31 * D);
        let first = month_containing(i64::MIN);
        assert_eq!(first.from_ms, i64::MIN);
        assert!(first.to_ms > i64::MIN && first.to_ms - i64::MIN <= 31 * D);
    }

    #[test]
    fn hour_windows_are_aligned_and_clipped() {
        let from = JAN_2024 + 10 * H + 30 * 60_000; // 10:30
        let to = JAN_2024 + 13 * H + 15 * 60_000; // 13:15
        assert_eq!(
            windows(r(from, to), WindowSize::Hour),
            Ok(vec![
                r(from, JAN_2024 + 11 * H),
                r(JAN_2024 + 11 * H, JAN_2024 + 12 * H),
                r(JAN_2024 + 12 * H, JAN_2024 + 13 * H),
                r(JAN_2024 + 13 * H, to),
            ])
        );
    }

    #[test]
    fn aligned_range_has_no_empty_trailing_window() {
        assert_eq!(
            windows(r(JAN_2024, JAN_2024 + 2 * H), WindowSize::Hour),
            Ok(vec![r(JAN_2024, JAN_2024 + H), r(JAN_2024 + H, JAN_2024 + 2 * H)])
        );
        assert_eq!(windows(r(JAN_2024, JAN_2024 + 1), WindowSize::Day), Ok(vec![r(JAN_2024, JAN_2024 + 1)]));
        assert_eq!(windows(r(JAN_2024, FEB_2024), WindowSize::Month), Ok(vec![r(JAN_2024, FEB_2024)]));
    }

    #[test]
    fn windows_before_the_epoch_align_to_utc_boundaries() {
        assert_eq!(windows(r(-H - H / 2, 0), WindowSize::Hour), Ok(vec![r(-H - H / 2, -H), r(-H, 0)]));
        assert_eq!(windows(r(-1, 1), WindowSize::Day), Ok(vec![r(-1, 0), r(0, 1)]));
    }

    #[test]
    fn day_windows_cross_a_month_boundary() {
        let jan_31 = FEB_2024 - D;
        assert_eq!(
            windows(r(jan_31 + 6 * H, FEB_2024 + D + 6 * H), WindowSize::Day),
            Ok(vec![
                r(jan_31 + 6 * H, FEB_2024),
                r(FEB_2024, FEB_2024 + D),
                r(FEB_2024 + D, FEB_2024 + D + 6 * H)
            ])
        );
    }

    #[test]
    fn month_windows_follow_the_calendar() {
        let mid_jan = JAN_2024 + 14 * D + 10 * H;
        let mid_mar = MAR_2024 + 14 * D;
        assert_eq!(
            windows(r(mid_jan, mid_mar), WindowSize::Month),
            Ok(vec![r(mid_jan, FEB_2024), r(FEB_2024, MAR_2024), r(MAR_2024, mid_mar)])
        );
        assert_eq!(
            windows(r(DEC_2024, FEB_2025), WindowSize::Month),
            Ok(vec![r(DEC_2024, JAN_2025), r(JAN_2025, FEB_2025)])
        );
        assert_eq!(windows(r(DEC_1969, 1), WindowSize::Month), Ok(vec![r(DEC_1969, 0), r(0, 1)]));
    }

    #[test]
    fn at_most_max_windows() {
        let exactly =
            windows(r(0, MAX_WINDOWS as i64 * H), WindowSize::Hour).expect("10,000 windows are allowed");
        assert_eq!(exactly.len(), MAX_WINDOWS);
        assert_eq!(
            windows(r(0, MAX_WINDOWS as i64 * H + 1), WindowSize::Hour),
            Err(PeriodError::TooManyWindows { count: 10_001, max: 10_000 })
        );
        // Unaligned ends count the partial windows too.
        assert_eq!(windows(r(1, MAX_WINDOWS as i64 * H), WindowSize::Hour).map(|w| w.len()), Ok(10_000));
        assert_eq!(
            windows(r(-1, MAX_WINDOWS as i64 * H), WindowSize::Hour),
            Err(PeriodError::TooManyWindows { count: 10_001, max: 10_000 })
        );
    }

    #[test]
    fn huge_ranges_are_refused_without_overflow() {
        let all = r(i64::MIN, i64::MAX);
        for size in [WindowSize::Hour, WindowSize::Day, WindowSize::Month] {
            assert!(matches!(windows(all, size), Err(PeriodError::TooManyWindows { max: 10_000, .. })));
        }
        // The very last millisecond still has a clipped window.
        assert_eq!(
            windows(r(i64::MAX - 1, i64::MAX), WindowSize::Month),
            Ok(vec![r(i64::MAX - 1, i64::MAX)])
        );
        assert_eq!(windows(r(i64::MIN, i64::MIN + 1), WindowSize::Day), Ok(vec![r(i64::MIN, i64::MIN + 1)]));
    }

    #[test]
    fn empty_ranges_are_refused() {
        assert_eq!(windows(r(5, 5), WindowSize::Hour), Err(PeriodError::EmptyRange { from_ms: 5, to_ms: 5 }));
        assert_eq!(
            windows(r(9, 5), WindowSize::Month),
            Err(PeriodError::EmptyRange { from_ms: 9, to_ms: 5 })
        );
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            PeriodError::EmptyRange { from_ms: 9, to_ms: 5 }.to_string(),
            "empty time range: `from` (9 ms) must be earlier than `to` (5 ms)"
        );
        assert_eq!(
            PeriodError::TooManyWindows { count: 10_001, max: 10_000 }.to_string(),
            "the range spans 10001 windows but at most 10000 are allowed; use a larger window or a shorter range"
        );
    }
}
