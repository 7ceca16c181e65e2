//! Which plugin calls run inline: on the async worker thread that awaits
//! them instead of a blocking thread.
//!
//! Handing a call to a blocking thread costs two thread wake-ups and
//! context switches, more than the ~11 µs an E2B webhook's call itself
//! takes; under webhook load the hand-off was ~18 % of the gateway's CPU
//! (BENCHMARKS.md, issue 18). But an inline call holds its worker thread
//! for the whole call — up to the plugin's deadline for a runaway one —
//! and every other request on that worker waits. So a call runs inline
//! only when all of these hold:
//!
//! - the plugin is compute-only (no `http_allow`: its calls never wait on
//!   the network) and imports no WASI (WASI p2's synchronous bindings
//!   block on the tokio runtime, which panics on one of its workers);
//! - its last [`FAST_STREAK`] calls each took at most [`FAST_CALL`] of CPU
//!   time, and none took more than [`SLOW_CALL`] in the last
//!   [`SLOW_COOL_DOWN_MS`] (so a plugin that is slow runs on blocking
//!   threads, and one that turns into a runaway stalls a worker at most
//!   once per cool-down). CPU time, not wall time: on a busy machine a
//!   fast call's thread may wait for a CPU for milliseconds, which says
//!   nothing about the plugin. A call between the two only ends the
//!   streak: under full load a warm ~11 µs E2B call was charged 0.5–2.6 ms
//!   now and then (interrupts and page faults count as the thread's CPU
//!   time too), and with one threshold each such spike sent every call of
//!   the next ten seconds to a blocking thread — in a loaded bench, ~94 %
//!   of them (BENCHMARKS.md, issue 18);
//! - one of [`inline_slots`] is free (half the cores: the other workers
//!   keep serving while inline calls run), or frees within
//!   [`INLINE_WAIT`]: a call that finds them taken waits for one, as a
//!   task (its worker serves other requests meanwhile), since a fast call
//!   frees its slot in microseconds; only a call still without one after
//!   the wait goes to a blocking thread. Without the wait, every call that
//!   met another worker's call went there: under full load tokio ran ~27
//!   threads instead of 6 and switched contexts twice as often per webhook
//!   (BENCHMARKS.md, issue 18).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

/// The most CPU time a call may take and still count as fast.
pub const FAST_CALL: Duration = Duration::from_millis(2);
/// Fast calls in a row before a plugin's calls run inline.
pub const FAST_STREAK: u32 = 8;
/// The CPU time past which a call is slow, not a fast one charged a spike:
/// it sends the plugin's calls off the workers for the cool-down.
pub const SLOW_CALL: Duration = Duration::from_millis(10);
/// How long after a slow call a plugin's calls stay off the workers.
pub const SLOW_COOL_DOWN_MS: i64 = 10_000;
/// How long a call waits for a busy inline slot before it goes to a
/// blocking thread: tokio's timer resolution, hundreds of fast calls.
pub const INLINE_WAIT: Duration = Duration::from_millis(1);

/// How many calls run inline at once, in all: half the cores, at least
/// one.
pub fn inline_slots() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
}

/// The CPU time the calling thread has used so far (zero if the clock
/// cannot be read, which then counts every call as fast: the deadline still
/// bounds a call).
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel provides.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// One plugin's record of how long its calls take. Lock-free: every call
/// reads it and writes it.
#[derive(Debug, Default)]
pub struct CallSpeed {
    /// Calls in a row that were fast (saturating).
    streak: AtomicU32,
    /// Until when (Unix ms) calls stay off the workers after a slow one.
    slow_until_ms: AtomicI64,
}

impl CallSpeed {
    /// Whether the next call may run inline (a slot aside).
    pub fn inline_ok(&self, now_ms: i64) -> bool {
        self.streak.load(Ordering::Relaxed) >= FAST_STREAK
            && now_ms >= self.slow_until_ms.load(Ordering::Relaxed)
    }

    /// Records the CPU time a call took, wherever it ran.
    pub fn record(&self, took: Duration, now_ms: i64) {
        if took <= FAST_CALL {
            let _ =
                self.streak.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)));
            return;
        }
        self.streak.store(0, Ordering::Relaxed);
        if took > SLOW_CALL {
            self.slow_until_ms.store(now_ms.saturating_add(SLOW_COOL_DOWN_MS), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(11);
    const SLOW: Duration = Duration::from_millis(100);

    #[test]
    fn a_new_plugin_earns_inline_calls_by_a_streak_of_fast_ones() {
        let speed = CallSpeed::default();
        for _ in 0..FAST_STREAK {
            assert!(!speed.inline_ok(0));
            speed.record(FAST, 0);
        }
        assert!(speed.inline_ok(0));
    }

    #[test]
    fn a_call_charged_a_spike_only_ends_the_streak() {
        let speed = CallSpeed::default();
        for _ in 0..FAST_STREAK {
            speed.record(FAST, 0);
        }
        speed.record(FAST_CALL + Duration::from_micros(600), 1_000);
        assert!(!speed.inline_ok(1_000), "the streak starts again");
        for _ in 0..FAST_STREAK {
            speed.record(FAST, 1_000);
        }
        assert!(speed.inline_ok(1_000), "no cool-down: inline again after a new streak");
        speed.record(SLOW_CALL, 1_000);
        assert!(!speed.inline_ok(1_000));
        for _ in 0..FAST_STREAK {
            speed.record(FAST, 1_000);
        }
        assert!(speed.inline_ok(1_000), "up to SLOW_CALL is still a spike");
    }

    #[test]
    fn a_slow_call_sends_calls_off_the_workers_for_the_cool_down_and_a_new_streak() {
        let speed = CallSpeed::default();
        for _ in 0..FAST_STREAK {
            speed.record(FAST, 0);
        }
        speed.record(SLOW, 1_000);
        for _ in 0..FAST_STREAK {
            speed.record(FAST, 1_000);
        }
        assert!(!speed.inline_ok(1_000 + SLOW_COOL_DOWN_MS - 1), "still cooling down");
        assert!(speed.inline_ok(1_000 + SLOW_COOL_DOWN_MS));
        speed.record(SLOW, 20_000);
        assert!(!speed.inline_ok(40_000), "the streak starts again");
    }

    #[test]
    fn the_limit_itself_is_fast() {
        let speed = CallSpeed::default();
        for _ in 0..FAST_STREAK {
            speed.record(FAST_CALL, 0);
        }
        assert!(speed.inline_ok(0));
        speed.record(FAST_CALL + Duration::from_nanos(1), 0);
        assert!(!speed.inline_ok(SLOW_COOL_DOWN_MS), "one slow call resets the streak");
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_and_not_its_sleep() {
        // Spinning advances it (however busy the machine: the bound is on
        // CPU time, the wall clock only gives up).
        let before = thread_cpu_time();
        let gave_up = std::time::Instant::now() + Duration::from_secs(30);
        while thread_cpu_time().saturating_sub(before) < Duration::from_millis(10) {
            assert!(std::time::Instant::now() < gave_up, "the thread CPU clock does not advance");
            std::hint::black_box(());
        }
        let asleep = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().saturating_sub(asleep);
        assert!(slept < Duration::from_millis(10), "{slept:?} of CPU while sleeping");
    }

    #[test]
    fn there_is_always_an_inline_slot_and_never_more_than_half_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(inline_slots() >= 1);
        assert!(inline_slots() <= cores.div_ceil(2));
    }
}
