//! Test helpers shared by unit tests.

use rust_decimal::Decimal;

use crate::meter::UsageQuery;
use crate::meter::period::{HOUR_MS, Range, WindowSize, month_containing};

const DAY_MS: i64 = 24 * HOUR_MS;

/// xorshift64: small, deterministic, good enough to shuffle test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D) | 1)
    }

    #[allow(
        clippy::should_implement_trait,
        reason = "an endless source of numbers, not an iterator to compose"
    )]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..hi` (lo < hi).
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A small decimal: often 0, 1 or 2 (so quantities tie), else 0..40
    /// with 0–2 decimal places (so `1` and `1.0` both occur), now and then
    /// negative (the engine defines levels below zero too).
    pub fn quantity(&mut self) -> Decimal {
        if self.chance(35) {
            return Decimal::from(self.below(3) as i64);
        }
        let q = Decimal::new(self.below(41) as i64, self.below(3) as u32);
        if self.chance(10) { -q } else { q }
    }

    /// A usage query of a history stamped around `base`: most often a
    /// range of up to nine hours (aligned to hours half the time), else a
    /// long one that holds whole months (credits since a grant, a month so
    /// far, a range into the future); a window, and a `now` near `base`.
    pub fn usage_query(&mut self, base: i64) -> UsageQuery {
        let now_ms = base + self.between(-3 * HOUR_MS, 10 * HOUR_MS);
        let short = |rng: &mut Rng| {
            let from = base + rng.between(-3 * HOUR_MS, 6 * HOUR_MS);
            let to = from + rng.between(1, 9 * HOUR_MS);
            let window = [None, Some(WindowSize::Hour), Some(WindowSize::Day)][rng.below(3)];
            match rng.chance(50) {
                true => (Range { from_ms: from, to_ms: to }, window),
                false => (
                    Range {
                        from_ms: from - from.rem_euclid(HOUR_MS),
                        to_ms: to - to.rem_euclid(HOUR_MS) + HOUR_MS,
                    },
                    window,
                ),
            }
        };
        let (range, window) = if self.chance(70) {
            short(self)
        } else {
            let from = match self.below(3) {
                0 => 0,
                1 => month_containing(base - 40 * DAY_MS).from_ms,
                _ => base - 40 * DAY_MS + self.between(0, DAY_MS),
            };
            let to = match self.below(4) {
                0 => now_ms,
                1 => base + self.between(-3 * HOUR_MS, 10 * HOUR_MS),
                2 => month_containing(base + 5 * HOUR_MS).to_ms,
                _ => base + 40 * DAY_MS,
            };
            let windows: &[Option<WindowSize>] = if from == 0 {
                &[None, Some(WindowSize::Month)]
            } else {
                &[None, Some(WindowSize::Month), Some(WindowSize::Day)]
            };
            (Range { from_ms: from, to_ms: to }, self.pick(windows))
        };
        UsageQuery { range, window, now_ms, grouped: false }
    }
}
