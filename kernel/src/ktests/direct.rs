//! Submission from ring 3 (issue 10): IA32_PASID switched per process, ENQCMD through a
//! mapped portal under the `sva.direct` policy, and what ring 3 must not do (ENQCMD
//! without a PASID, ENQCMDS). The ring-3 side is user/programs/src/bin/enq.rs.

use alloc::sync::Arc;

use user_abi::STATUS_KILLED;

use crate::arch::percpu;
use crate::ktest;
use crate::ktest::{Outcome, skip};
use crate::proc::{self, Process};

use super::HANG;

fn spawn(name: &str, cpu: Option<usize>, arg: u64) -> Arc<Process> {
    proc::spawn(name, cpu, arg).unwrap_or_else(|e| panic!("spawn {name}({arg}): {e}"))
}

fn wait(p: &Arc<Process>) -> u64 {
    proc::wait(p, HANG.as_nanos() as u64)
        .unwrap_or_else(|e| panic!("wait for pid {} ({}): {e}", p.pid(), p.name()))
}

/// A CPU other than the BSP when there is one (the BSP runs threads only while it waits).
fn test_cpu() -> usize {
    if percpu::cpu_count().min(proc::MAX_CPUS) > 1 {
        1
    } else {
        0
    }
}

/// The policy for the duration of a test, restored (to the command line's) on drop.
struct Policy;

impl Policy {
    fn set(on: bool) -> Policy {
        proc::set_direct_for_tests(Some(on));
        Policy
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        proc::set_direct_for_tests(None);
    }
}

fn direct_capable() -> Result<(), Outcome> {
    let Some(dev) = crate::dsa::devices().first() else {
        return Err(skip("no DSA device"));
    };
    if !crate::iommu::is_enabled() {
        return Err(skip("no IOMMU"));
    }
    if dev.user_portal_page().is_none() {
        return Err(skip("no shared WQ or no ENQCMD"));
    }
    if crate::ims::device_ims(dev).is_err() {
        return Err(skip("no IMS (no IMS portal to map)"));
    }
    Ok(())
}

ktest!(
    fn dsa_portal_is_refused_while_sva_direct_is_off() -> Outcome {
        if let Err(o) = direct_capable() {
            return o;
        }
        let _p = Policy::set(false);
        let before = crate::iommu::pasids_in_use();
        let p = spawn("enq", None, 3);
        assert_eq!(wait(&p), 0, "enq(3): dsa_portal not refused with Denied");
        assert_eq!(
            crate::iommu::pasids_in_use(),
            before,
            "a refused dsa_portal allocated no PASID"
        );
        Outcome::Pass
    }
);

ktest!(
    fn enqcmd_from_ring3_carries_each_process_pasid_on_one_cpu() -> Outcome {
        if let Err(o) = direct_capable() {
            return o;
        }
        let _p = Policy::set(true);
        let cpu = test_cpu();
        let writes = crate::arch::user::ia32_pasid_writes(cpu);
        let before = crate::iommu::pasids_in_use();
        // Two processes on one CPU, interleaved by their yields: each maps the portal (so
        // each has a PASID), yields, then submits memmoves between the same virtual
        // addresses as the other. Only IA32_PASID tells the device whose tables to use.
        let rounds = 8;
        let a = spawn("enq", Some(cpu), rounds << 8);
        let b = spawn("enq", Some(cpu), rounds << 8);
        let (sa, sb) = (wait(&a), wait(&b));
        assert_eq!(
            sa,
            0,
            "enq(0) pid {}: failing step (see its output)",
            a.pid()
        );
        assert_eq!(
            sb,
            0,
            "enq(0) pid {}: failing step (see its output)",
            b.pid()
        );
        assert!(a.fault().is_none() && b.fault().is_none());
        let w = crate::arch::user::ia32_pasid_writes(cpu) - writes;
        assert!(
            w >= 2,
            "IA32_PASID written {w} time(s) on cpu {cpu} for two processes with PASIDs"
        );
        assert_eq!(
            crate::iommu::pasids_in_use(),
            before,
            "the PASIDs went with the processes"
        );
        Outcome::Pass
    }
);

/// `enq(mode)` on the test CPU runs `insn`, which must kill it with #GP (`why`).
fn enq_is_killed_by_gp(mode: u64, insn: &str, why: &str) -> Outcome {
    if !crate::arch::features().enqcmd {
        return skip("no ENQCMD");
    }
    let p = spawn("enq", Some(test_cpu()), mode);
    assert_eq!(wait(&p), STATUS_KILLED, "enq({mode}) survived its {insn}");
    let f = p.fault().expect("a fault report");
    assert_eq!(f.vector, 13, "{why}: #GP, got {f:?}");
    Outcome::Pass
}

ktest!(
    fn enqcmd_without_a_pasid_is_killed_by_gp() -> Outcome {
        enq_is_killed_by_gp(1, "ENQCMD", "ENQCMD with IA32_PASID not valid")
    }
);

ktest!(
    fn enqcmds_from_ring3_is_killed_by_gp() -> Outcome {
        enq_is_killed_by_gp(2, "ENQCMDS", "ENQCMDS at CPL 3")
    }
);

ktest!(
    fn ia32_pasid_is_written_only_when_it_changes() -> Outcome {
        if !crate::arch::features().enqcmd {
            return skip("no ENQCMD");
        }
        let cpu = test_cpu();
        // Two processes without PASIDs switching 200 times: the value is 0 throughout, so
        // at most one write (from whatever the CPU held before to 0).
        let writes = crate::arch::user::ia32_pasid_writes(cpu);
        let a = spawn("yielder", Some(cpu), 100);
        let b = spawn("yielder", Some(cpu), 100);
        wait(&a);
        wait(&b);
        let w = crate::arch::user::ia32_pasid_writes(cpu) - writes;
        assert!(w <= 1, "{w} IA32_PASID writes for processes without PASIDs");
        Outcome::Pass
    }
);

ktest!(
    fn the_portal_is_one_uncached_user_page_of_the_portal_bar() -> Outcome {
        if let Err(o) = direct_capable() {
            return o;
        }
        use x86_paging::PteFlags as F;
        let _p = Policy::set(true);
        let dev = &crate::dsa::devices()[0];
        let page = dev.user_portal_page().expect("checked");
        let p = spawn("enq", Some(test_cpu()), 5);
        // The program maps the portal, checks munmap and a second call, then sleeps.
        let deadline = crate::time::now_ns() + HANG.as_nanos() as u64;
        let maps = loop {
            let m = p.portal_mappings();
            if !m.is_empty() || p.ended() {
                break m;
            }
            assert!(
                crate::time::now_ns() < deadline,
                "enq(5) never mapped its portal"
            );
            let _ = proc::run_until(|| false, crate::time::now_ns() + 1_000_000);
        };
        assert_eq!(maps.len(), 1, "one portal page: {maps:x?}");
        let (va, phys, flags) = maps[0];
        assert_eq!(phys, page, "the shared WQ's IMS portal page");
        let bar = |n| dev.pci.bar(n).map(|b| (b.address, b.size));
        if let Some((b, len)) = bar(0) {
            assert!(phys < b || phys >= b + len, "never the register BAR");
        }
        let (b2, len2) = bar(2).expect("the portal BAR");
        assert!(phys >= b2 && phys < b2 + len2, "inside the portal BAR");
        for (f, what) in [
            (F::PRESENT, "present"),
            (F::USER, "user"),
            (F::WRITABLE, "writable (enqueue stores)"),
            (F::NO_CACHE, "PCD"),
            (F::WRITE_THROUGH, "PWT"),
        ] {
            assert!(
                flags.contains(f),
                "portal at {va:#x}: not {what}: {flags:?}"
            );
        }
        if crate::arch::features().nx {
            assert!(
                flags.contains(F::NO_EXECUTE),
                "portal executable: {flags:?}"
            );
        }
        assert!(!flags.contains(F::GLOBAL));
        proc::kill(&p);
        assert_eq!(
            wait(&p),
            STATUS_KILLED,
            "enq(5) failed a check (see its output)"
        );
        Outcome::Pass
    }
);

ktest!(
    fn a_dedicated_wq_runs_in_one_process_pasid_within_its_credits() -> Outcome {
        if let Err(o) = direct_capable() {
            return o;
        }
        let d = &crate::dsa::devices()[0];
        // A configuration with a user dedicated WQ (accel-config type "user") next to the
        // kernel's two.
        let json = alloc::format!(
            r#"[{{"dev":"dsa{n}","groups":[{{"dev":"group{n}.0","grouped_workqueues":[{{"dev":"wq{n}.0","mode":"dedicated","size":16,"group_id":0,"type":"kernel","name":"ded"}},{{"dev":"wq{n}.1","mode":"shared","size":16,"group_id":0,"type":"kernel","name":"sh","threshold":16}},{{"dev":"wq{n}.2","mode":"dedicated","size":8,"group_id":0,"type":"user","name":"user"}}],"grouped_engines":[{{"dev":"engine{n}.0","group_id":0}},{{"dev":"engine{n}.1","group_id":0}}]}}]}}]"#,
            n = d.index
        );
        let cfg = dsa::AccelConfig::parse(&json).expect("valid accel-config");
        let drv = d
            .reconfigure(dsa::ConfigSource::AccelConfig(cfg), d.default_options())
            .unwrap_or_else(|e| panic!("reconfigure: {e}"));
        let user = drv.wq(2).expect("wq2");
        assert!(user.is_user_dedicated() && user.lent_to().is_none());
        assert_ne!(
            drv.wq_of_mode(dsa_spec::WqMode::Dedicated).map(|w| w.id()),
            Some(2),
            "the kernel never submits to a user WQ"
        );
        let dropped = drv.swerr_count(0x53);
        {
            let _p = Policy::set(false);
            // Direct submission policy off: no WQ either (the enq step 10, Denied).
            let p = spawn("enq", Some(test_cpu()), 6);
            assert_eq!(wait(&p), 10, "dsa_wq_take with sva.direct off");
        }
        let _p = Policy::set(true);
        for round in 0..2 {
            let p = spawn("enq", Some(test_cpu()), 6);
            assert_eq!(
                wait(&p),
                0,
                "enq(6) round {round}: failing step (see its output)"
            );
            assert!(
                drv.wq(2).unwrap().lent_to().is_none(),
                "the WQ is given back when the process ends"
            );
        }
        assert_eq!(
            drv.swerr_count(0x53),
            dropped,
            "no descriptor dropped by a full dedicated WQ (credits kept)"
        );
        // Back to what the kernel was booted with.
        let (orig, _) = crate::dsa::config::load().unwrap();
        let src = match orig {
            Some(a) => dsa::ConfigSource::AccelConfig(a),
            None => dsa::ConfigSource::Default,
        };
        d.reconfigure(src, d.default_options()).unwrap();
        Outcome::Pass
    }
);
