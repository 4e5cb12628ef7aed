//! Ring-3 processes: the scheduler, every system call with bad arguments, user faults,
//! SMAP/SMEP, munmap shootdown, and (explicit) their costs.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::arch::percpu;
use crate::ktest;
use crate::proc::{self, Process};

use super::HANG;

fn hang_ns() -> u64 {
    HANG.as_nanos() as u64
}

fn spawn(name: &str, cpu: Option<usize>, arg: u64) -> Arc<Process> {
    proc::spawn(name, cpu, arg).unwrap_or_else(|e| panic!("spawn {name}({arg}): {e}"))
}

fn wait(p: &Arc<Process>) -> u64 {
    proc::wait(p, hang_ns())
        .unwrap_or_else(|e| panic!("wait for pid {} ({}): {e}", p.pid(), p.name()))
}

fn cpus() -> usize {
    percpu::cpu_count().min(proc::MAX_CPUS)
}

ktest!(
    fn hello_runs_on_every_cpu_and_exits_with_its_argument() {
        let ps: Vec<_> = (0..cpus())
            .map(|c| spawn("hello", Some(c), 40 + c as u64))
            .collect();
        for (c, p) in ps.iter().enumerate() {
            assert_eq!(wait(p), 40 + c as u64, "exit status of hello on cpu {c}");
            assert!(p.fault().is_none());
        }
    }
);

ktest!(
    fn every_system_call_refuses_bad_arguments_with_its_error() {
        // The program checks each answer itself (user/programs/src/bin/abuser.rs) and exits
        // with the number of the first mismatch.
        let p = spawn("abuser", None, 0);
        assert_eq!(
            wait(&p),
            0,
            "abuser: first mismatching case (see its output)"
        );
    }
);

ktest!(
    fn parent_spawns_waits_for_and_kills_children() {
        let p = spawn("parent", None, 0);
        assert_eq!(wait(&p), 0, "parent: first failing check (see its output)");
    }
);

ktest!(
    fn user_faults_end_only_the_faulting_process() {
        // (case, vector, address if it is a #PF with a known address)
        let cases: [(u64, u8, Option<u64>); 6] = [
            (0, 14, Some(0x5000_0000_0000)),
            (1, 14, Some(0x20_0000)),
            (2, 13, None),
            (3, 6, None),
            (4, 13, None),
            (5, 14, None),
        ];
        let cpu = if cpus() > 1 { 1 } else { 0 };
        // A bystander on the same CPU that must survive every fault (it spins until killed,
        // so its survival does not depend on how fast anything runs).
        let bystander = spawn("hello", Some(cpu), u64::MAX);
        for (case, vector, addr) in cases {
            let before = proc::process_count();
            let p = spawn("faulter", Some(cpu), case);
            assert_eq!(
                wait(&p),
                user_abi::STATUS_KILLED,
                "faulter case {case} is killed"
            );
            let f = p
                .fault()
                .unwrap_or_else(|| panic!("faulter case {case}: no fault report"));
            assert_eq!(f.vector, vector, "faulter case {case}: vector");
            if let Some(a) = addr {
                assert_eq!(f.address, a, "faulter case {case}: address");
            }
            assert!(
                f.rip >= user_abi::USER_BASE && f.rip < user_abi::USER_TOP,
                "faulter case {case}: user RIP {:#x}",
                f.rip
            );
            assert_eq!(proc::process_count(), before, "reaped");
            assert!(
                !bystander.ended(),
                "the bystander still runs after case {case}"
            );
        }
        proc::kill(&bystander);
        assert_eq!(wait(&bystander), user_abi::STATUS_KILLED);
        // The kernel goes on: another process still runs to completion.
        assert_eq!(wait(&spawn("hello", Some(cpu), 9)), 9);
    }
);

ktest!(
    fn a_spinning_process_is_preempted_and_can_be_killed() {
        let cpu = cpus() - 1;
        let spinner = spawn("hello", Some(cpu), u64::MAX);
        // hello on the same CPU can only finish if the spinner is preempted.
        assert_eq!(wait(&spawn("hello", Some(cpu), 3)), 3);
        assert!(
            !spinner.ended(),
            "spinner ended: status {:#x}, fault {:?}",
            spinner.status(),
            spinner.fault()
        );
        proc::kill(&spinner);
        assert_eq!(wait(&spinner), user_abi::STATUS_KILLED);
        assert!(spinner.fault().is_none(), "killed, not faulted");
    }
);

ktest!(
    fn lazy_faults_map_zeroed_pages() {
        let p = spawn("memory", None, 0);
        let s = wait(&p);
        assert!(
            s >= 100,
            "memory(0) failed with status {s} (10: mmap, 11: not zero, 12: lost write)"
        );
        assert!(p.fault().is_none());
    }
);

ktest!(
    fn threads_block_and_wake_across_cpus() -> crate::ktest::Outcome {
        if cpus() < 2 {
            return crate::ktest::skip("needs 2 CPUs");
        }
        // 200 rounds of an explicit handshake through wait_word/wake_word between threads on
        // CPUs 0 and 1 (user/programs/src/bin/memory.rs case 3).
        let p = spawn("memory", Some(0), 3);
        assert_eq!(wait(&p), 0);
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn munmap_shoots_down_the_other_cpus_tlb() -> crate::ktest::Outcome {
        if cpus() < 2 {
            return crate::ktest::skip("needs 2 CPUs");
        }
        // Thread B on CPU 1 keeps reading a page while thread A on CPU 0 unmaps it: B's next
        // read must fault (the process dies with #PF at that page); a stale TLB entry would
        // let B read on and the process would exit with status 3.
        let ipis = proc::shootdown_ipis();
        let p = spawn("memory", Some(0), 1);
        let s = wait(&p);
        assert_ne!(
            s, 3,
            "a thread read the page after munmap returned (stale TLB)"
        );
        assert_eq!(s, user_abi::STATUS_KILLED, "the reader faults");
        let f = p.fault().expect("fault report");
        assert_eq!(f.vector, 14);
        assert!(
            f.address >= 0x5000_0000_0000 && f.address < 0x5000_1000_0000,
            "address {:#x}",
            f.address
        );
        assert!(
            proc::shootdown_ipis() > ipis,
            "an IPI went to the reader's CPU"
        );
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn ring3_setup_is_on_every_cpu() {
        let want = crate::arch::user::cpu_protection();
        let got = crate::arch::smp::run_on_all(HANG, || {
            // SAFETY: architectural MSRs.
            let (efer, lstar, fmask) = unsafe {
                (
                    crate::arch::rdmsr(0xC000_0080),
                    crate::arch::rdmsr(0xC000_0082),
                    crate::arch::rdmsr(0xC000_0084),
                )
            };
            (
                crate::arch::user::current_protection(),
                efer & 1,
                lstar != 0,
                fmask,
            )
        })
        .expect("run_on_all");
        for (cpu, (prot, sce, lstar, fmask)) in got.into_iter().enumerate() {
            assert_eq!(prot, want, "cpu {cpu}: CR4.SMEP/SMAP/UMIP as CPUID offers");
            assert_eq!(sce, 1, "cpu {cpu}: EFER.SCE");
            assert!(lstar, "cpu {cpu}: LSTAR");
            assert_eq!(fmask, crate::arch::user::FMASK, "cpu {cpu}: FMASK");
        }
        crate::println!("ktest-info: ring-3 protection {want:?}");
    }
);

ktest!(
    fn smap_stops_kernel_reads_of_user_memory_outside_the_checked_copy() -> crate::ktest::Outcome {
        if !crate::arch::user::smap_on() {
            return crate::ktest::skip("the CPU has no SMAP");
        }
        let (plain, checked) = proc::with_scratch_space(0x5eed_1234, |addr| {
            let plain = crate::arch::fault::probe_read_u64(addr);
            // SAFETY: a page of the scratch space: writing it changes nothing the kernel uses.
            let plain_write = unsafe { crate::arch::fault::probe_write_u64(addr, 1) };
            assert!(
                plain_write.is_err(),
                "a plain kernel write of a user page must fault"
            );
            let mut b = [0u8; 8];
            let checked =
                proc::uaccess::copy_from_user(None, &mut b, addr).map(|()| u64::from_le_bytes(b));
            let wrote = proc::uaccess::copy_to_user(None, addr + 8, &7u64.to_le_bytes());
            let mut c = [0u8; 8];
            let back = proc::uaccess::copy_from_user(None, &mut c, addr + 8);
            assert_eq!(
                (wrote, back, u64::from_le_bytes(c)),
                (Ok(()), Ok(()), 7),
                "checked write"
            );
            (plain, checked)
        })
        .expect("scratch space");
        let f = plain.expect_err("a plain kernel read of a user page must fault under SMAP");
        assert_eq!(f.vector, 14, "{f}");
        assert_eq!(
            f.error_code & 1,
            1,
            "protection violation, not a missing page: {f}"
        );
        assert_eq!(checked, Ok(0x5eed_1234), "the checked copy reads it");
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn checked_copies_refuse_kernel_and_wrapping_ranges() {
        let mut b = [0u8; 8];
        // And a user address with nothing mapped: a fault, caught.
        let r = proc::with_scratch_space(0, |a| {
            proc::uaccess::copy_from_user(None, &mut [0u8; 8], a + 0x10_0000)
        })
        .expect("scratch space");
        assert_eq!(r, Err(user_abi::Error::Fault));
        for (addr, len) in [
            (0x20_0000u64, 8u64),
            (0, 8),
            (user_abi::USER_TOP - 4, 8),
            (u64::MAX - 3, 8),
            (0xffff_ff00_0000_0000, 8),
        ] {
            let r = proc::uaccess::copy_from_user(None, &mut b[..len as usize], addr);
            assert_eq!(r, Err(user_abi::Error::BadAddress), "{addr:#x}+{len}");
        }
    }
);

/// One `RESULT {"kind":"proc-cost",…}` line: `op`, `cost` (average per operation),
/// `cost_unit` (`guest_instructions` under `icount`, else `tsc_cycles`), `icount`, `build`.
fn result(op: &str, value: u64) {
    let icount = crate::cmdline::has("icount");
    let unit = if icount {
        "guest_instructions"
    } else {
        "tsc_cycles"
    };
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    crate::println!(
        "RESULT {{\"kind\":\"proc-cost\",\"op\":\"{op}\",\"cost\":{value},\"cost_unit\":\"{unit}\",\"icount\":{icount},\"build\":\"{build}\"}}"
    );
}

ktest!(
    explicit fn costs() {
        // Each program measures in ring 3 with RDTSC (guest instructions under
        // `-icount shift=0`) and exits with the average.
        let cpu = if cpus() > 1 { 1 } else { 0 };
        result("null-syscall", wait(&spawn("memory", Some(cpu), 4)));
        let a = spawn("yielder", Some(cpu), 2000);
        let b = spawn("yielder", Some(cpu), 2000);
        let (ya, yb) = (wait(&a), wait(&b));
        result("yield-round-trip", ya.min(yb));
        result("lazy-page-fault", wait(&spawn("memory", Some(cpu), 0)));
        if cpus() > 1 {
            result("munmap-shootdown-1-remote", wait(&spawn("memory", Some(0), 2)));
        }
        if crate::dsa::devices().first().is_some_and(|d| d.has_enqcmds()) {
            result("dsa-submit-syscall", wait(&spawn("sva", Some(cpu), 2)));
            if crate::iommu::is_enabled() && crate::ims::system().is_ok() {
                result("ims-submit-to-wakeup", wait(&spawn("ims", Some(cpu), 3)));
            }
        }
    }
);

ktest!(
    fn sva_pasid_points_at_the_process_root_and_is_freed_at_exit() -> crate::ktest::Outcome {
        let Some(dev) = crate::dsa::devices().first() else {
            return crate::ktest::skip("no DSA device");
        };
        if !crate::iommu::is_enabled() {
            return crate::ktest::skip("no IOMMU");
        }
        let addr = dev.pci.address();
        let before = crate::iommu::pasids_in_use();
        let p = spawn("hello", Some(cpus() - 1), u64::MAX);
        let pasid = match proc::sva_attach(&p, dev) {
            Ok(v) => v,
            Err(proc::ProcError::Iommu(crate::iommu::IommuError::Vtd {
                err: crate::iommu::VtdError::Missing(_),
                ..
            })) => {
                proc::kill(&p);
                wait(&p);
                return crate::ktest::skip("the IOMMU does not translate with the first stage");
            }
            Err(e) => panic!("sva_attach: {e}"),
        };
        assert_eq!(p.pasid(), Some(pasid));
        assert_eq!(
            proc::sva_attach(&p, dev).unwrap(),
            pasid,
            "one PASID per process"
        );
        assert_eq!(crate::iommu::pasids_in_use(), before + 1);
        // The device's PASID entry: first stage through the process's own PML4 (its CR3),
        // NXE=1, supervisor requests refused.
        let raw = crate::iommu::pasid_entry(addr, pasid)
            .expect("unit")
            .expect("a PASID table");
        let e = vtd::spec::PasidEntry::decode(&raw).expect("a PASID entry");
        assert_eq!(e.pgtt, vtd::spec::Pgtt::FirstStage);
        assert_eq!(e.fs_root, p.root(), "FSPTPTR = the process's root");
        assert!(e.nxe && !e.sre, "{e:?}");
        proc::kill(&p);
        assert_eq!(wait(&p), user_abi::STATUS_KILLED);
        // Drained, revoked and freed with the process.
        assert_eq!(p.pasid(), None);
        assert_eq!(
            crate::iommu::pasids_in_use(),
            before,
            "the PASID is free again"
        );
        let raw = crate::iommu::pasid_entry(addr, pasid).expect("unit");
        assert_eq!(raw.map(|e| e[0]), Some(0), "the PASID entry is cleared");
        assert!(matches!(
            proc::sva_attach(&p, dev),
            Err(proc::ProcError::Ended)
        ));
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn sva_process_submits_dsa_work_on_its_own_pasid() -> crate::ktest::Outcome {
        let Some(dev) = crate::dsa::devices().first() else {
            return crate::ktest::skip("no DSA device");
        };
        if !dev.has_enqcmds() || !crate::iommu::is_enabled() {
            return crate::ktest::skip("no shared WQ or no IOMMU");
        }
        // user/programs/src/bin/sva.rs case 0: a memmove between its own virtual addresses
        // with a forged dword 0 (kernel PASID, privileged), checked byte for byte, then each
        // refusal of the submit call.
        let p = spawn("sva", None, 0);
        assert_eq!(wait(&p), 0, "sva(0): failing step (see its output)");
        assert!(p.fault().is_none());
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn sva_munmap_invalidates_the_iotlb_before_the_frame_is_freed() -> crate::ktest::Outcome {
        let Some(dev) = crate::dsa::devices().first() else {
            return crate::ktest::skip("no DSA device");
        };
        if !dev.has_enqcmds() || !crate::iommu::is_enabled() {
            return crate::ktest::skip("no shared WQ or no IOMMU");
        }
        let before = crate::iommu::pasids_in_use();
        let p = spawn("sva", None, 1);
        let s = wait(&p);
        assert_ne!(
            s, 3,
            "the device wrote through a stale IOTLB entry after munmap"
        );
        assert_eq!(s, 0, "sva(1): failing step (see its output)");
        assert_eq!(
            crate::iommu::pasids_in_use(),
            before,
            "the PASID went with the process"
        );
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn an_nmi_with_the_user_gs_loaded_finds_the_kernel_gs() {
        // The window between SYSCALL and its SWAPGS (or the exit SWAPGS and SYSRETQ): CPL 0
        // with the user's GS base (0). Made here with a SWAPGS and interrupts off, then an NMI
        // to this CPU: the handler must swap for itself (it reads per-CPU data through GS)
        // and swap back, so that the second SWAPGS restores the kernel's GS.
        use crate::arch::apic;
        let me = percpu::current_index();
        let id = apic::id();
        let before = crate::arch::trap::nmis();
        let mut seen = false;
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: IF = 0 and nothing between the two SWAPGS touches GS except the NMI
            // handler under test; KERNEL_GS_BASE holds this CPU's block (`arch::user`).
            unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
            let sent = apic::send_ipi(id, 0, apic::Delivery::Nmi, apic::Shorthand::None).is_ok();
            // Bounded only against a lost NMI (no time source without GS: iterations).
            for _ in 0..50_000_000u64 {
                if !sent || crate::arch::trap::nmis() != before {
                    break;
                }
                core::hint::spin_loop();
            }
            seen = crate::arch::trap::nmis() != before;
            // SAFETY: back to the kernel's GS.
            unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
        });
        assert_eq!(percpu::current_index(), me, "GS is the kernel's again");
        assert!(seen, "the NMI was handled");
    }
);

/// What the IMS side of a device holds now: (live handles, free entries, live routes).
fn ims_counts(ims: &dsa::DsaIms) -> (u32, u32, usize) {
    (
        ims.chip().live_handles(),
        ims.chip().free_entries(),
        crate::ims::platform().live_routes(),
    )
}

/// Vectors allocated on every CPU (the IMS domain's and everyone else's).
fn vectors_per_cpu() -> Vec<usize> {
    (0..crate::arch::percpu::cpu_count())
        .map(|c| crate::irq::report(c).map_or(usize::MAX, |r| r.allocated))
        .collect()
}

/// The first DSA device, its IMS chip and the system domain, when processes can use them.
fn ims_setup() -> Result<
    (
        &'static crate::dsa::DsaDevice,
        Arc<dsa::DsaIms>,
        &'static ims::ImsDomain,
    ),
    crate::ktest::Outcome,
> {
    let Some(dev) = crate::dsa::devices().first() else {
        return Err(crate::ktest::skip("no DSA device"));
    };
    if !dev.has_enqcmds() || !crate::iommu::is_enabled() {
        return Err(crate::ktest::skip("no shared WQ or no IOMMU"));
    }
    let chip = crate::ims::device_ims(dev)
        .map_err(|e| crate::ktest::skip(alloc::format!("no IMS: {e}")))?;
    let domain = crate::ims::system()
        .map_err(|e| crate::ktest::skip(alloc::format!("no IMS domain: {e}")))?;
    Ok((dev, chip, domain))
}

ktest!(
    fn ims_process_blocks_until_its_completion_interrupt() -> crate::ktest::Outcome {
        let (_, chip, domain) = match ims_setup() {
            Ok(s) => s,
            Err(o) => return o,
        };
        let base = ims_counts(&chip);
        let vectors = vectors_per_cpu();
        let delivered = |d: &ims::ImsDomain| -> u64 {
            (0..d.cpu_count())
                .filter_map(|c| d.stats(c).ok())
                .map(|s| s.completions)
                .sum()
        };
        let before = delivered(domain);
        // user/programs/src/bin/ims.rs case 0: 1, then 4 in flight, then 2 after a retarget;
        // each round's ims_wait returns only with the record written.
        let cpu = if cpus() > 1 { Some(1) } else { None };
        let p = spawn("ims", cpu, 0);
        assert_eq!(wait(&p), 0, "ims(0): failing step (see its output)");
        assert!(p.fault().is_none());
        // The completions reached the thread through the demultiplexer of the CPU's one
        // IMS vector (the sink is only ever polled there).
        let after = delivered(domain);
        assert!(
            after >= before + 7,
            "demultiplexer delivered {} completions for 7 descriptors",
            after - before
        );
        assert_eq!(ims_counts(&chip), base, "handles, entries, routes back");
        assert_eq!(vectors_per_cpu(), vectors, "no vector allocated or freed");
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn ims_quota_refuses_only_the_process_and_kill_returns_its_handles() -> crate::ktest::Outcome {
        let (_, chip, domain) = match ims_setup() {
            Ok(s) => s,
            Err(o) => return o,
        };
        let base = ims_counts(&chip);
        let vectors = vectors_per_cpu();
        let domain_vectors = domain.vectors_used();
        let quota = crate::ims::quota();
        let expect = quota.min(base.1);
        // user/programs/src/bin/ims.rs case 1: allocates until refused (HandleQuota, else it
        // exits), then sleeps holding every handle.
        let cpu = cpus() - 1;
        // It reports the count at its word once the extra allocation was refused and its
        // line printed (waiting for the handle count instead raced that line).
        let hog = spawn("ims", Some(cpu), 1);
        let done = 0x6200_0000_0000u64;
        let reported = || -> u64 {
            hog.translate(done).map_or(0, |pa| {
                // SAFETY: a word of a frame of the live process (identity-mapped RAM), read.
                unsafe { core::ptr::read_volatile(pa as *const u64) }
            })
        };
        let deadline = crate::time::now_ns().saturating_add(hang_ns());
        proc::run_until(|| hog.ended() || reported() != 0, deadline)
            .expect("the hog allocates its handles");
        assert!(
            !hog.ended(),
            "ims(1) ended with status {} before holding its quota",
            hog.status()
        );
        assert_eq!(
            reported(),
            expect as u64,
            "handles the hog got before HandleQuota"
        );
        assert_eq!(chip.chip().live_handles(), base.0 + expect, "live handles");
        let pasid = hog.pasid().expect("the hog has a PASID");
        assert_eq!(
            chip.chip().usage(pasid),
            expect,
            "handles of the hog's PASID"
        );
        crate::println!(
            "ktest-info: a process got {expect} IMS handles before HandleQuota (quota {quota}, {} free entries before)",
            base.1
        );
        // No vector anywhere: one IMS vector per CPU, as at boot.
        assert_eq!(vectors_per_cpu(), vectors, "vectors per CPU unchanged");
        assert_eq!(domain.vectors_used(), domain_vectors);
        for r in domain.report() {
            assert_eq!(r.vectors, 1, "IMS vectors on CPU {}", r.cpu);
        }
        // case 2, meanwhile: another process is refused the hog's ids (and bad ids, CPUs,
        // devices), and gets a handle of its own on its own PASID.
        let other = spawn("ims", Some(0), 2);
        assert_eq!(wait(&other), 0, "ims(2): failing step (see its output)");
        assert_eq!(
            chip.chip().usage(pasid),
            expect,
            "the hog keeps its handles"
        );
        // Killed while holding them: everything comes back.
        proc::kill(&hog);
        assert_eq!(wait(&hog), user_abi::STATUS_KILLED);
        assert_eq!(chip.chip().usage(pasid), 0);
        assert_eq!(
            ims_counts(&chip),
            base,
            "live handles, free entries, routes (IRTEs) back to baseline"
        );
        assert_eq!(vectors_per_cpu(), vectors);
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn ims_handle_follows_its_thread_across_a_migration_exactly_once() -> crate::ktest::Outcome {
        let (_, chip, _) = match ims_setup() {
            Ok(s) => s,
            Err(o) => return o,
        };
        if cpus() < 3 {
            return crate::ktest::skip("needs 3 CPUs (two APs to move between)");
        }
        let base = ims_counts(&chip);
        let vectors = vectors_per_cpu();
        let (a, b) = (1u64, 2u64);
        // user/programs/src/bin/ims.rs case 9: 7 moves a <-> b with 8 interrupt-completed
        // memmoves in flight at each; it checks exactly-once itself and reports at its word.
        let p = spawn("ims", Some(a as usize), 9 | a << 8 | b << 16);
        let done = 0x6200_0000_0000u64;
        let word = |off: u64| -> u64 {
            p.translate(done + off).map_or(0, |pa| {
                // SAFETY: a word of a frame of the live process (identity-mapped RAM), read.
                unsafe { core::ptr::read_volatile(pa as *const u64) }
            })
        };
        let deadline = crate::time::now_ns().saturating_add(hang_ns());
        proc::run_until(|| p.ended() || word(0) != 0, deadline).expect("ims(9) reports");
        assert!(!p.ended(), "ims(9) ended with {}", p.status());
        assert_eq!(word(0), 1, "ims(9): failing step (see its output)");
        let inflight = word(8);
        // The last move (the 7th) went to `b`: the handle's interrupts with it.
        let h = p.ims_handles();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            h[0].cpu,
            Some(b as usize),
            "the handle did not follow: {h:?}"
        );
        assert_eq!(h[0].delivered, 56, "delivered exactly once each: {h:?}");
        proc::kill(&p);
        wait(&p);
        assert_eq!(ims_counts(&chip), base, "handles, entries, routes back");
        assert_eq!(vectors_per_cpu(), vectors, "no vector allocated or freed");
        crate::println!(
            "ktest-info: 7 migrations {a} <-> {b}: 56 completions delivered once each; {inflight} of the 56 records were still open at the moves"
        );
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn sva_demand_faults_are_mapped_and_the_memmove_resumed_byte_exact() -> crate::ktest::Outcome {
        if crate::dsa::devices().is_empty() || !crate::iommu::is_enabled() {
            return crate::ktest::skip("needs a DSA device and the IOMMU");
        }
        if !crate::dsa::devices()[0].has_enqcmds() {
            return crate::ktest::skip("needs a shared WQ");
        }
        // user/programs/src/bin/sva.rs case 6: a memmove over untouched pages, resumed with
        // dsa_resume after each page fault and checked byte for byte; then an address off
        // its mappings, which dsa_resume reports as Fault.
        let p = spawn("sva", Some(cpus() - 1), 6);
        assert_eq!(wait(&p), 0, "sva(6): failing step (see its output)");
        assert!(p.fault().is_none());
        crate::ktest::Outcome::Pass
    }
);

ktest!(
    fn sva_demand_faults_resume_a_fill_in_phase_and_a_copy_with_crc_byte_exact()
    -> crate::ktest::Outcome {
        if crate::dsa::devices().is_empty() || !crate::iommu::is_enabled() {
            return crate::ktest::skip("needs a DSA device and the IOMMU");
        }
        if !crate::dsa::devices()[0].has_enqcmds() {
            return crate::ktest::skip("needs a shared WQ");
        }
        // user/programs/src/bin/sva.rs case 7: a Fill from an odd address and a Copy with
        // CRC over untouched pages, each resumed with dsa_resume after every page fault
        // (klib::usersubmit::remainder: the pattern rotated, the CRC seeded with the
        // record's); the program checks the bytes and the CRC against its own CRC-32C.
        let p = spawn("sva", Some(cpus() - 1), 7);
        assert_eq!(wait(&p), 0, "sva(7): failing step (see its output)");
        assert!(p.fault().is_none());
        crate::ktest::Outcome::Pass
    }
);
