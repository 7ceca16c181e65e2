//! Test helpers shared by unit tests.

use rust_decimal::Decimal;

/// xorshift64: small, deterministic, good enough to shuffle test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..hi` (lo < hi).
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A small decimal: often 0, 1 or 2 (so quantities tie), else 0..40
    /// with 0–2 decimal places (so `1` and `1.0` both occur), now and then
    /// negative (the engine defines levels below zero too).
    pub(crate) fn quantity(&mut self) -> Decimal {
        if self.chance(35) {
            return Decimal::from(self.below(3) as i64);
        }
        let q = Decimal::new(self.below(41) as i64, self.below(3) as u32);
        if self.chance(10) { -q } else { q }
    }
}
