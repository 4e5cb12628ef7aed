//! Vector matrix and interrupt dispatch.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use klib::vectors::VectorError;

use crate::arch::{percpu, smp};
use crate::irq::{self, IrqError};
use crate::ktest;

ktest!(
    fn vector_exhaustion_is_an_error_and_frees_correctly() {
        for cpu in [0, percpu::cpu_count() - 1] {
            let before = irq::report(cpu).unwrap();
            let mut got = Vec::with_capacity(256);
            let err = loop {
                match irq::alloc_vector(cpu, "ktest-exhaust") {
                    Ok(v) => got.push(v),
                    Err(e) => break e,
                }
            };
            assert_eq!(err, IrqError::Vector(VectorError::Exhausted { cpu }));
            assert_eq!(
                got.len(),
                before.free,
                "every free vector was handed out once"
            );
            assert!(
                got.iter()
                    .all(|v| irq::FIRST_ALLOCATABLE <= *v && *v <= irq::LAST_ALLOCATABLE)
            );
            let full = irq::report(cpu).unwrap();
            assert_eq!(
                (full.free, full.allocated),
                (0, before.allocated + got.len())
            );
            assert_eq!(full.count_owned_by("ktest-exhaust"), got.len());
            // Other CPUs are unaffected.
            if percpu::cpu_count() > 1 {
                let other = if cpu == 0 { 1 } else { 0 };
                assert!(irq::report(other).unwrap().free > 0);
            }
            for v in &got {
                irq::free_vector(cpu, *v).unwrap();
            }
            assert_eq!(irq::report(cpu).unwrap(), before, "report after freeing");
            assert_eq!(
                irq::free_vector(cpu, got[0]),
                Err(IrqError::Vector(VectorError::NotAllocated {
                    cpu,
                    vector: got[0]
                }))
            );
            assert_eq!(
                irq::free_vector(cpu, irq::TIMER_VECTOR),
                Err(IrqError::Vector(VectorError::NotAllocated {
                    cpu,
                    vector: irq::TIMER_VECTOR
                }))
            );
        }
        let n = percpu::cpu_count();
        assert_eq!(irq::alloc_vector(n, "x"), Err(IrqError::NoSuchCpu(n)));
    }
);

ktest!(
    fn ipi_reaches_the_handler_on_every_cpu() {
        let n = percpu::cpu_count();
        let hits: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let ran_on: Arc<Vec<AtomicUsize>> =
            Arc::new((0..n).map(|_| AtomicUsize::new(usize::MAX)).collect());
        let seen_vector: Arc<Vec<AtomicUsize>> =
            Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let mut vecs = Vec::new();
        for cpu in 0..n {
            let (h, r, sv) = (hits.clone(), ran_on.clone(), seen_vector.clone());
            let v = irq::alloc_vector_with_handler(cpu, "ktest-ipi", move |ctx| {
                r[ctx.cpu].store(percpu::current_index(), Ordering::SeqCst);
                sv[ctx.cpu].store(ctx.vector as usize, Ordering::SeqCst);
                // Last: the test reads the other fields once it sees the hit.
                h[ctx.cpu].fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
            let before = irq::count(cpu, v);
            irq::send_ipi(cpu, v).unwrap();
            crate::time::wait_until(super::HANG, || {
                (hits[cpu].load(Ordering::SeqCst) == 1).then_some(())
            })
            .unwrap_or_else(|_| panic!("IPI vector {v:#x} never reached CPU {cpu}"));
            assert_eq!(ran_on[cpu].load(Ordering::SeqCst), cpu);
            assert_eq!(seen_vector[cpu].load(Ordering::SeqCst), v as usize);
            assert_eq!(irq::count(cpu, v), before + 1);
            vecs.push((cpu, v));
        }
        crate::println!(
            "ktest-info: stray IPIs to freed vectors follow (expect 'unhandled interrupt' warnings)"
        );
        for (cpu, v) in vecs {
            irq::free_vector(cpu, v).unwrap();
            // After free, a stray interrupt is counted but no longer reaches the handler.
            irq::send_ipi(cpu, v).unwrap();
            crate::time::wait_until(super::HANG, || (irq::count(cpu, v) >= 2).then_some(()))
                .unwrap();
            assert_eq!(hits[cpu].load(Ordering::SeqCst), 1);
        }
    }
);

ktest!(
    fn self_ipi_and_specific_vectors() {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        irq::alloc_specific_vector(0, 0xe0, "ktest-self").unwrap();
        assert_eq!(
            irq::alloc_specific_vector(0, 0xe0, "other"),
            Err(IrqError::Vector(VectorError::InUse {
                vector: 0xe0,
                owner: "ktest-self".into()
            }))
        );
        assert_eq!(
            irq::alloc_specific_vector(0, irq::CALL_VECTOR, "other"),
            Err(IrqError::Vector(VectorError::NotAllocatable(
                irq::CALL_VECTOR
            )))
        );
        irq::set_handler(0, 0xe0, move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        smp::run_on(0, || {
            crate::arch::apic::send_ipi(
                0,
                0xe0,
                crate::arch::apic::Delivery::Fixed,
                crate::arch::apic::Shorthand::SelfOnly,
            )
        })
        .unwrap()
        .unwrap();
        crate::time::wait_until(super::HANG, || {
            (hits.load(Ordering::SeqCst) == 1).then_some(())
        })
        .unwrap();
        irq::free_vector(0, 0xe0).unwrap();
        assert!(
            irq::set_handler(0, 0xe0, |_| {}).is_err(),
            "handler on a free vector"
        );
    }
);

ktest!(
    fn vector_report_counts_one_per_cpu() {
        let n = percpu::cpu_count();
        let mut vs = Vec::new();
        for cpu in 0..n {
            vs.push((cpu, irq::alloc_vector(cpu, "ktest-shared").unwrap()));
        }
        for cpu in 0..n {
            let r = irq::report(cpu).unwrap();
            assert_eq!(r.count_owned_by("ktest-shared"), 1, "{r}");
            assert!(
                r.system
                    .iter()
                    .any(|(v, name)| *v == irq::SPURIOUS_VECTOR && *name == "spurious")
            );
            crate::println!("ktest-info: {r}");
        }
        for (cpu, v) in vs {
            irq::free_vector(cpu, v).unwrap();
        }
    }
);

ktest!(
    fn ioapic_pins_are_masked() {
        let info = crate::acpi::info().unwrap();
        for io in &info.ioapics {
            // SAFETY: mapped at boot; IOREGSEL/IOWIN register pair; nothing else touches it now.
            let rd = |reg: u32| unsafe {
                ((io.address) as *mut u32).write_volatile(reg);
                ((io.address + 0x10) as *const u32).read_volatile()
            };
            let n = ((rd(1) >> 16) & 0xff) + 1;
            assert!(n >= 16, "I/O APIC {} has {n} pins", io.id);
            for i in 0..n {
                assert_ne!(
                    rd(0x10 + 2 * i) & (1 << 16),
                    0,
                    "I/O APIC {} pin {i} unmasked",
                    io.id
                );
            }
        }
    }
);
