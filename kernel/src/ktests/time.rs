//! Clock, deadlines, LAPIC timer.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::arch::{percpu, smp};
use crate::ktest;
use crate::time::{self, Deadline, Timeout};

ktest!(
    fn lapic_timer_interrupt_arrives_on_every_cpu() {
        let n = percpu::cpu_count();
        for cpu in 0..n {
            let (ticks, elapsed) = smp::run_on(cpu, || {
                let me = percpu::current_index();
                let (t0, _) = time::timer_ticks(me);
                let start = time::now_ns();
                time::arm_oneshot(2_000_000).expect("arm");
                let r = time::wait_until(super::HANG, || {
                    let (t, at) = time::timer_ticks(me);
                    (t > t0).then(|| (t - t0, at.saturating_sub(start)))
                });
                time::stop_timer();
                r
            })
            .unwrap()
            .unwrap_or_else(|_| panic!("no LAPIC timer interrupt on CPU {cpu}"));
            assert_eq!(ticks, 1, "one-shot fired once on CPU {cpu}");
            // Calibration sanity: not (much) earlier than programmed.
            assert!(
                elapsed >= 1_800_000,
                "CPU {cpu}: timer fired after {elapsed} ns, armed for 2 ms"
            );
            crate::println!(
                "ktest-info: cpu {cpu} LAPIC timer fired after {} us",
                elapsed / 1000
            );
        }
    }
);

ktest!(
    fn periodic_timer_ticks_and_stops() -> ktest::Outcome {
        let cpu = percpu::cpu_count() - 1;
        let count = Arc::new(AtomicU64::new(0));
        let c2 = count.clone();
        let r = smp::run_on(cpu, move || {
            let me = percpu::current_index();
            let (t0, _) = time::timer_ticks(me);
            time::set_timer_callback(Some(alloc::boxed::Box::new(move || {
                c2.fetch_add(1, Ordering::SeqCst);
            })));
            time::arm_periodic(1_000_000).expect("arm");
            let got = time::wait_until(super::HANG, || {
                (time::timer_ticks(me).0 - t0 >= 5).then_some(())
            });
            time::stop_timer();
            time::set_timer_callback(None);
            got
        });
        r.unwrap().expect("5 periodic ticks");
        let after_stop = count.load(Ordering::SeqCst);
        assert!(after_stop >= 5);
        time::delay(Duration::from_millis(10));
        assert_eq!(
            count.load(Ordering::SeqCst),
            after_stop,
            "timer kept firing after stop"
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn clock_is_monotonic_across_cpus() {
        for cpu in 0..percpu::cpu_count() {
            let t0 = time::now_ns();
            let t1 = smp::run_on(cpu, time::now_ns).unwrap();
            let t2 = time::now_ns();
            assert!(t0 <= t1 && t1 <= t2, "cpu {cpu}: {t0} {t1} {t2}");
        }
        let mut last = time::now_ns();
        for _ in 0..10_000 {
            let t = time::now_ns();
            assert!(t >= last);
            last = t;
        }
    }
);

ktest!(
    fn delays_and_deadlines_are_bounded() {
        // Never shorter than asked. How much longer depends on how the host schedules the
        // vCPU, so the upper bound only catches a hang (or a clock off by orders of
        // magnitude); the clock's rate is checked against the HPET below.
        let t0 = time::now_ns();
        time::delay_us(3_000);
        let d = time::now_ns() - t0;
        assert!(
            (3_000_000..super::HANG.as_nanos() as u64).contains(&d),
            "delay_us(3000) took {d} ns"
        );
        let t0 = time::now_ns();
        let r: Result<(), Timeout> = time::wait_until(Duration::from_millis(5), || None);
        let d = time::now_ns() - t0;
        assert_eq!(r, Err(Timeout));
        assert!(
            (5_000_000..super::HANG.as_nanos() as u64).contains(&d),
            "5 ms timeout took {d} ns"
        );
        let dl = Deadline::after_ms(50);
        assert!(dl.remaining() <= Duration::from_millis(50));
        time::delay(Duration::from_millis(50));
        assert!(dl.expired(), "a 50 ms deadline after 50 ms");
        assert_eq!(dl.remaining(), Duration::ZERO);
        let far = Deadline::after(super::HANG);
        assert!(!far.expired());
        assert!(far.remaining() > Duration::ZERO && far.remaining() <= super::HANG);
    }
);

ktest!(
    fn tsc_agrees_with_the_hpet() -> ktest::Outcome {
        let Some(h) = crate::acpi::info().and_then(|i| i.hpet) else {
            return ktest::skip("no HPET");
        };
        let base = h.base_address;
        // SAFETY: the HPET was mapped during calibration; 0x0 is GCAP_ID, 0xf0 the counter.
        let read = |off: u64| unsafe { ((base + off) as *const u64).read_volatile() };
        let period_fs = read(0) >> 32;
        // Read both clocks as close together as possible (retry if preempted in between).
        // Returns the HPET count, the TSC time at the middle of the pair and the pair's
        // half-width: the HPET was read at most that far from the time given.
        let pair = || {
            let mut best = (0, 0, u64::MAX);
            for _ in 0..64 {
                let a = time::now_ns();
                let h = read(0xf0);
                let b = time::now_ns();
                if b - a < best.2 {
                    best = (h, a + (b - a) / 2, b - a);
                }
                if b - a < 20_000 {
                    break;
                }
            }
            (best.0, best.1, best.2.div_ceil(2))
        };
        let (h0, t0, e0) = pair();
        time::delay(Duration::from_millis(30));
        let (h1, t1, e1) = pair();
        let hpet_ns = (h1.wrapping_sub(h0) & 0xffff_ffff) as u128 * period_fs as u128 / 1_000_000;
        let tsc_ns = (t1 - t0) as u128;
        // 5 % of the interval, plus what the reads themselves could not pin down (a vCPU
        // preempted inside every one of a pair's 64 tries widens it; the rate is still
        // checked, just with the error bars the host left us).
        let slack = hpet_ns / 20 + (e0 + e1) as u128;
        crate::println!(
            "ktest-info: {} us by TSC = {} us by HPET (reads within ±{} us)",
            tsc_ns / 1000,
            hpet_ns / 1000,
            (e0 + e1) / 1000
        );
        assert!(
            tsc_ns.abs_diff(hpet_ns) <= slack,
            "TSC {tsc_ns} ns vs HPET {hpet_ns} ns (allowed ±{slack})"
        );
        ktest::Outcome::Pass
    }
);
