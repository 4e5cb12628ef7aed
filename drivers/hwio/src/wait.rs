//! The clock and the one bounded wait on hardware.

use core::fmt;

/// A monotonic clock for bounded waits (the kernel's calibrated TSC, a host test's fake).
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;

    /// Called on every iteration of a poll loop (`pause` on x86).
    fn relax(&self) {
        core::hint::spin_loop();
    }

    /// Busy-waits `us` microseconds (back-off between retries). Bounded like [`wait_until`]
    /// even if the clock stands still.
    fn delay_us(&self, us: u32) {
        let _ = wait_until(self, u64::from(us) * 1000, || None::<()>);
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
    fn relax(&self) {
        (**self).relax();
    }
    fn delay_us(&self, us: u32) {
        (**self).delay_us(us);
    }
}

/// A bounded wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out")
    }
}

impl core::error::Error for Timeout {}

/// Polls `poll` until it returns `Some` or `timeout_ns` nanoseconds of `clock` have passed;
/// after the deadline `poll` gets one last look (the condition may have come true while this
/// CPU was elsewhere).
///
/// The wait also ends after `timeout_ns` polls (at least one): no poll takes less than a
/// nanosecond, so this never cuts a wait short, and a clock that stands still (uncalibrated,
/// broken) cannot hang the caller.
pub fn wait_until<T, C: Clock + ?Sized>(
    clock: &C,
    timeout_ns: u64,
    mut poll: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let deadline = clock.now_ns().saturating_add(timeout_ns);
    for _ in 0..timeout_ns.max(1) {
        if let Some(v) = poll() {
            return Ok(v);
        }
        if clock.now_ns() >= deadline {
            break;
        }
        clock.relax();
    }
    poll().ok_or(Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Advances `step` ns per reading.
    struct Ticks {
        now: AtomicU64,
        step: u64,
        relaxed: AtomicU64,
    }
    impl Ticks {
        fn new(step: u64) -> Self {
            Ticks {
                now: AtomicU64::new(0),
                step,
                relaxed: AtomicU64::new(0),
            }
        }
    }
    impl Clock for Ticks {
        fn now_ns(&self) -> u64 {
            self.now.fetch_add(self.step, Ordering::Relaxed)
        }
        fn relax(&self) {
            self.relaxed.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn returns_the_first_value_found() {
        let c = Ticks::new(10);
        let mut n = 0;
        let r = wait_until(&c, 1_000, || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(r, Ok(3));
        assert_eq!(c.relaxed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn times_out_on_the_clock_with_one_last_look() {
        let c = Ticks::new(100);
        let mut polls = 0u64;
        let r: Result<(), _> = wait_until(&c, 1_000, || {
            polls += 1;
            None
        });
        assert_eq!(r, Err(Timeout));
        // Readings at 0 (start), 100, …, 1000: ten polls before the deadline, one after.
        assert_eq!(polls, 11);
        let mut last = false;
        let c = Ticks::new(100);
        let mut n = 0;
        let r = wait_until(&c, 250, || {
            n += 1;
            last = n == 4;
            last.then_some(())
        });
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn a_clock_that_stands_still_ends_after_timeout_polls() {
        let c = Ticks::new(0);
        let mut polls = 0u64;
        let r: Result<(), _> = wait_until(&c, 50, || {
            polls += 1;
            None
        });
        assert_eq!(r, Err(Timeout));
        assert_eq!(polls, 51);
        // delay_us ends too.
        c.delay_us(1);
        assert_eq!(c.relaxed.load(Ordering::Relaxed), 50 + 1000);
        assert_eq!(Timeout.to_string(), "timed out");
    }
}
