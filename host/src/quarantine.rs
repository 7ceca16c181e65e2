//! Stops calling a plugin that keeps failing in the sandbox. Each call is
//! bounded (CPU deadline, memory cap), but a plugin that loops runs its
//! whole deadline on every call: called back to back, it holds a core and
//! starves the other plugins. After [`TRAPS_TO_OPEN`] consecutive traps
//! (deadline, memory, trap), calls are refused at once for a cool-down that
//! starts at [`FIRST_COOL_DOWN_MS`] and doubles (up to [`MAX_COOL_DOWN_MS`])
//! each time it opens again. The first call after a cool-down runs as a
//! probe; any call that does not trap closes it. A reload starts afresh.

use std::sync::Mutex;

pub const TRAPS_TO_OPEN: u32 = 5;
pub const FIRST_COOL_DOWN_MS: i64 = 1_000;
pub const MAX_COOL_DOWN_MS: i64 = 60_000;

#[derive(Debug, Default)]
pub struct Quarantine(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    consecutive_traps: u32,
    /// Refusing calls until then.
    until_ms: Option<i64>,
    /// The current cool-down (0: none yet).
    cool_down_ms: i64,
    /// A probe is running.
    probing: bool,
}

impl Quarantine {
    /// `Ok` to run a call now, or `Err(ms)`: refused, retry in `ms`.
    pub fn admit(&self, now_ms: i64) -> Result<(), i64> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.until_ms {
            Some(until) if now_ms < until => Err(until - now_ms),
            Some(_) => {
                // Cool-down over: one probe; the others wait for its outcome.
                s.probing = true;
                s.until_ms = Some(now_ms + s.cool_down_ms);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a call's outcome: `trapped` when the sandbox stopped it.
    /// Returns the cool-down when this outcome (re)opened the quarantine.
    pub fn record(&self, trapped: bool, now_ms: i64) -> Option<i64> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !trapped {
            *s = State::default();
            return None;
        }
        s.consecutive_traps += 1;
        if s.probing || (s.until_ms.is_none() && s.consecutive_traps >= TRAPS_TO_OPEN) {
            s.cool_down_ms = if s.cool_down_ms == 0 {
                FIRST_COOL_DOWN_MS
            } else {
                (s.cool_down_ms * 2).min(MAX_COOL_DOWN_MS)
            };
            s.until_ms = Some(now_ms + s.cool_down_ms);
            s.probing = false;
            return Some(s.cool_down_ms);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_traps_probes_after_the_cool_down_and_doubles_it() {
        let q = Quarantine::default();
        for _ in 0..TRAPS_TO_OPEN - 1 {
            assert_eq!(q.admit(0), Ok(()));
            assert_eq!(q.record(true, 0), None);
        }
        // A success in between starts the count again.
        q.record(false, 0);
        for i in 1..=TRAPS_TO_OPEN {
            assert_eq!(q.admit(10), Ok(()));
            let opened = q.record(true, 10);
            assert_eq!(opened, (i == TRAPS_TO_OPEN).then_some(FIRST_COOL_DOWN_MS));
        }
        assert_eq!(q.admit(10), Err(1_000));
        assert_eq!(q.admit(1_009), Err(1));
        // The probe runs; the next call waits for it.
        assert_eq!(q.admit(1_010), Ok(()));
        assert!(q.admit(1_011).is_err());
        // It traps: twice as long.
        assert_eq!(q.record(true, 1_020), Some(2_000));
        assert_eq!(q.admit(1_020), Err(2_000));
        assert_eq!(q.admit(3_020), Ok(()));
        // A probe that does not trap closes it, and the cool-down restarts.
        q.record(false, 3_030);
        assert_eq!(q.admit(3_030), Ok(()));
        for _ in 0..TRAPS_TO_OPEN {
            q.record(true, 4_000);
        }
        assert_eq!(q.admit(4_000), Err(FIRST_COOL_DOWN_MS));
    }

    #[test]
    fn the_cool_down_stops_doubling_at_its_maximum() {
        let q = Quarantine::default();
        for _ in 0..TRAPS_TO_OPEN {
            q.record(true, 0);
        }
        let mut now = 0;
        for _ in 0..10 {
            now += MAX_COOL_DOWN_MS;
            assert_eq!(q.admit(now), Ok(()));
            q.record(true, now);
        }
        assert_eq!(q.admit(now), Err(MAX_COOL_DOWN_MS));
    }
}
