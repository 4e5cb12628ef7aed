//! CPU bring-up and cross-CPU calls.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use crate::arch::{apic, percpu, smp};
use crate::ktest;

ktest!(
    fn every_cpu_runs_a_closure() {
        let n = percpu::cpu_count();
        for cpu in 0..n {
            let (idx, id, irq_on) = smp::run_on(cpu, || {
                (
                    percpu::current_index(),
                    apic::id(),
                    x86_64::instructions::interrupts::are_enabled(),
                )
            })
            .unwrap_or_else(|e| panic!("run_on({cpu}): {e}"));
            assert_eq!(idx, cpu, "closure ran on the wrong CPU");
            assert_eq!(Some(id), percpu::apic_id(cpu));
            assert!(irq_on, "closures run with interrupts enabled");
            crate::println!("ktest-info: cpu {cpu} (APIC ID {id}) ran the closure");
        }
    }
);

ktest!(
    fn every_enabled_madt_cpu_is_online() {
        let info = crate::acpi::info().expect("ACPI");
        let mut want: Vec<u32> = info
            .cpus
            .iter()
            .filter(|c| c.enabled)
            .map(|c| c.apic_id)
            .collect();
        let mut got: Vec<u32> = (0..percpu::cpu_count())
            .filter_map(percpu::apic_id)
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "online APIC IDs vs MADT");
    }
);

ktest!(
    fn run_on_all_runs_in_parallel() {
        let n = percpu::cpu_count();
        // Each CPU waits until all have started: only possible if they run concurrently
        // (however long the host takes to schedule them; the bound only catches a hang).
        static ARRIVED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
        ARRIVED.store(0, Ordering::SeqCst);
        let r = smp::run_on_all(2 * super::HANG, move || {
            ARRIVED.fetch_add(1, Ordering::SeqCst);
            crate::time::wait_until(super::HANG, || {
                (ARRIVED.load(Ordering::SeqCst) == n).then_some(())
            })
            .is_ok()
        })
        .unwrap();
        assert!(
            r.iter().all(|&ok| ok),
            "not all CPUs were running at the same time: {r:?}"
        );
    }
);

ktest!(
    fn run_on_times_out_on_a_busy_cpu() -> crate::ktest::Outcome {
        let n = percpu::cpu_count();
        if n < 2 {
            return ktest::skip("needs 2 CPUs");
        }
        let target = n - 1;
        static RELEASE: AtomicBool = AtomicBool::new(false);
        static BUSY: AtomicBool = AtomicBool::new(false);
        RELEASE.store(false, Ordering::SeqCst);
        BUSY.store(false, Ordering::SeqCst);
        let busy = smp::spawn_on(target, || {
            // Busy with interrupts off until released (bounded).
            x86_64::instructions::interrupts::without_interrupts(|| {
                BUSY.store(true, Ordering::SeqCst);
                crate::time::wait_until(super::HANG, || {
                    RELEASE.load(Ordering::SeqCst).then_some(())
                })
                .is_ok()
            })
        })
        .unwrap();
        // The call is made only once the target is busy with interrupts off.
        crate::time::wait_until(super::HANG, || BUSY.load(Ordering::SeqCst).then_some(()))
            .expect("the busy job started");
        let t0 = crate::time::now_ns();
        let r = smp::run_on_timeout(target, Duration::from_millis(20), || 7);
        let waited = crate::time::now_ns() - t0;
        assert_eq!(r, Err(smp::SmpError::CallTimeout { cpu: target }));
        // Not before its time; how much later depends on the host.
        assert!(waited >= 20_000_000, "waited {waited} ns");
        RELEASE.store(true, Ordering::SeqCst);
        assert_eq!(busy.join(super::HANG), Ok(true));
        // The queue keeps working after a timeout.
        assert_eq!(smp::run_on(target, || 9), Ok(9));
        ktest::Outcome::Pass
    }
);

ktest!(
    fn run_on_rejects_offline_cpus() {
        let n = percpu::cpu_count();
        assert_eq!(
            smp::run_on(n, || ()).err(),
            Some(smp::SmpError::NoSuchCpu(n))
        );
        assert_eq!(
            smp::run_on(usize::MAX, || ()).err(),
            Some(smp::SmpError::NoSuchCpu(usize::MAX))
        );
    }
);
