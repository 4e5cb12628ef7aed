//! Exceptions, fixups, per-CPU data.

use alloc::boxed::Box;

use crate::arch::fault::{probe_read_u8, probe_read_u64, probe_write_u64};
use crate::arch::{apic, percpu, smp};
use crate::ktest;

ktest!(
    fn breakpoint_is_handled_and_resumes() {
        let before = percpu::current().breakpoints();
        x86_64::instructions::interrupts::int3();
        x86_64::instructions::interrupts::int3();
        assert_eq!(percpu::current().breakpoints(), before + 2);
    }
);

ktest!(
    fn page_fault_is_recoverable() {
        assert!(crate::arch::fault::fixup_sites() >= 3);
        let f = probe_read_u64(0).expect_err("page 0 must be unmapped");
        assert_eq!(f.vector, 14);
        assert_eq!(f.address, 0, "CR2");
        assert_eq!(f.error_code & 0b11, 0, "not-present read: {f}");
        let hole = 0x0000_7000_0000_0000u64;
        let f = probe_read_u8(hole + 5).expect_err("unmapped address");
        assert!(f.is_page_fault());
        assert_eq!(f.address, hole + 5);
        // SAFETY: the address is unmapped, so the write cannot modify memory.
        let f = unsafe { probe_write_u64(hole, 1) }.expect_err("unmapped address");
        assert_eq!(f.error_code & 0b11, 0b10, "not-present write: {f}");
        // Execution continues normally afterwards, and faults are recorded per CPU.
        assert_eq!(probe_read_u64(&f as *const _ as u64).map(|_| ()), Ok(()));
    }
);

ktest!(
    fn general_protection_is_recoverable() {
        let f = probe_read_u64(0x8000_0000_0000_0000).expect_err("non-canonical address");
        assert!(f.is_general_protection(), "{f}");
        // SAFETY: `ud2` only raises #UD.
        let r = unsafe { crate::probe_asm!("ud2") };
        assert_eq!(r.map_err(|f| f.vector), Err(6));
    }
);

ktest!(
    fn probes_of_mapped_memory_succeed() {
        let b = Box::new(0x1122_3344_5566_7788u64);
        let p = &*b as *const u64 as u64;
        assert_eq!(probe_read_u64(p), Ok(0x1122_3344_5566_7788));
        assert_eq!(probe_read_u8(p), Ok(0x88));
        // SAFETY: `b` is ours and read back through a volatile read below.
        unsafe { probe_write_u64(p, 42) }.unwrap();
        // SAFETY: `p` points at the live box.
        assert_eq!(unsafe { core::ptr::read_volatile(p as *const u64) }, 42);
    }
);

ktest!(
    fn faults_on_other_cpus_are_recovered_there() -> crate::ktest::Outcome {
        let n = percpu::cpu_count();
        if n < 2 {
            return ktest::skip("needs 2 CPUs");
        }
        for cpu in 1..n {
            let r = smp::run_on(cpu, || (percpu::current_index(), probe_read_u64(0x10)))
                .unwrap_or_else(|e| panic!("run_on({cpu}): {e}"));
            assert_eq!(r.0, cpu);
            let f = r.1.expect_err("page 0 is unmapped everywhere");
            assert_eq!((f.vector, f.address), (14, 0x10));
        }
        ktest::Outcome::Pass
    }
);

ktest!(
    fn percpu_index_and_apic_id_agree() {
        let r = smp::run_on_all(super::HANG, || (percpu::current_index(), apic::id())).unwrap();
        assert_eq!(r.len(), percpu::cpu_count());
        for (i, (idx, id)) in r.iter().enumerate() {
            assert_eq!(*idx, i);
            assert_eq!(Some(*id), percpu::apic_id(i));
            assert_eq!(percpu::index_of_apic_id(*id), Some(i));
        }
    }
);

ktest!(
    fn apic_mode_follows_cpuid() {
        let x2 = crate::arch::features().x2apic && crate::cmdline::get("apic") != Some("xapic");
        let want = if x2 {
            apic::Mode::X2Apic
        } else {
            apic::Mode::XApic
        };
        assert_eq!(apic::mode(), want);
        // Spurious-interrupt vector register: enabled, vector 0xff, on every CPU.
        let svrs = smp::run_on_all(super::HANG, || apic::read(apic::reg::SVR)).unwrap();
        for (cpu, svr) in svrs.iter().enumerate() {
            assert_eq!(
                svr & 0x1ff,
                0x100 | crate::irq::SPURIOUS_VECTOR as u32,
                "cpu {cpu} SVR {svr:#x}"
            );
        }
    }
);
