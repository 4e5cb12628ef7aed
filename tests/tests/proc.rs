//! Ring-3 processes: the `proc::` kernel tests on 4 CPUs with one DSA (x2APIC,
//! SMEP/SMAP/UMIP, a process PASID) and on `qemu64` without DSA (no SMAP: that test skips,
//! the rest pass), the one-line report of a user fault,
//! and the process costs under `-icount` (guest instructions).

use qemu_tests::{Boot, json_field as field};

/// Every process kernel test that must pass with at least 2 CPUs and SMAP.
const PROC_TESTS: &[&str] = &[
    "proc::hello_runs_on_every_cpu_and_exits_with_its_argument",
    "proc::every_system_call_refuses_bad_arguments_with_its_error",
    "proc::parent_spawns_waits_for_and_kills_children",
    "proc::user_faults_end_only_the_faulting_process",
    "proc::a_spinning_process_is_preempted_and_can_be_killed",
    "proc::lazy_faults_map_zeroed_pages",
    "proc::threads_block_and_wake_across_cpus",
    "proc::munmap_shoots_down_the_other_cpus_tlb",
    "proc::ring3_setup_is_on_every_cpu",
    "proc::smap_stops_kernel_reads_of_user_memory_outside_the_checked_copy",
    "proc::checked_copies_refuse_kernel_and_wrapping_ranges",
    "proc::an_nmi_with_the_user_gs_loaded_finds_the_kernel_gs",
    "proc::sva_pasid_points_at_the_process_root_and_is_freed_at_exit",
    "proc::sva_process_submits_dsa_work_on_its_own_pasid",
    "proc::sva_munmap_invalidates_the_iotlb_before_the_frame_is_freed",
    "proc::ims_process_blocks_until_its_completion_interrupt",
    "proc::ims_quota_refuses_only_the_process_and_kill_returns_its_handles",
    "proc::ims_handle_follows_its_thread_across_a_migration_exactly_once",
    "proc::sva_demand_faults_are_mapped_and_the_memmove_resumed_byte_exact",
    "proc::sva_demand_faults_resume_a_fill_in_phase_and_a_copy_with_crc_byte_exact",
];

#[test]
fn process_tests_smp4() {
    // With one DSA device: the SVA test attaches a process's PASID to it.
    let r = Boot::kernel().smp(4).dsa(1).ktest("proc::").run();
    r.expect_pass();
    r.expect_tests_ok(PROC_TESTS);
    // One report line per user fault: vector, RIP, address, pid.
    r.expect_serial("(faulter) killed by #UD invalid opcode: vector 6, rip 0x4000")
        .expect_serial("(faulter) killed by #PF page fault: vector 14, rip 0x4000")
        .expect_serial("address 0x500000000000, error code 0x4")
        .expect_serial("abuser: 53 cases refused as expected")
        .expect_serial("parent: all checks passed")
        .expect_serial("sva: memmove on pasid-forced descriptor ok, 11 refusals")
        .expect_serial("sva: memmove to the unmapped page: page fault")
        .expect_serial("ims: interrupts delivered through handle 1, released")
        .expect_serial("ims: 64 handles allocated, then HandleQuota")
        .expect_serial("ims: refusals ok, own handle 1")
        .expect_serial("each completion counted once")
        .expect_serial("not copied again), byte-exact; off the mapping: Fault")
        .expect_serial("times in phase, copy with crc")
        .expect_serial("= the CPU's, byte-exact");
}

#[test]
fn process_interrupt_handles_in_shared_scan_mode() {
    // The same interrupt-handle tests with the shared vector demultiplexed by scanning
    // (the default above is posted mode): the process's sink is found by the armed scan.
    let r = Boot::kernel()
        .smp(4)
        .dsa(1)
        .ktest("proc::ims_")
        .arg("ims.mode=shared")
        .run();
    r.expect_pass();
    r.expect_tests_ok(&[
        "proc::ims_process_blocks_until_its_completion_interrupt",
        "proc::ims_quota_refuses_only_the_process_and_kill_returns_its_handles",
        "proc::ims_handle_follows_its_thread_across_a_migration_exactly_once",
    ]);
    r.expect_serial("shared-scan mode");
}

#[test]
fn process_tests_without_smap() {
    // qemu64: no SMEP/SMAP/UMIP, xAPIC. Everything but the SMAP test still passes.
    let r = Boot::kernel().smp(2).cpu("qemu64").ktest("proc::").run();
    r.expect_pass();
    let without_smap: Vec<&str> = PROC_TESTS
        .iter()
        .copied()
        .filter(|t| !t.contains("smap") && !t.contains("sva") && !t.contains("ims"))
        .collect();
    r.expect_tests_ok(&without_smap);
    assert!(matches!(
        r.report
            .status_of("proc::smap_stops_kernel_reads_of_user_memory_outside_the_checked_copy"),
        Some(qemu_tests::TestStatus::Skipped(_))
    ));
}

#[test]
fn process_costs_are_guest_instructions() {
    let r = Boot::kernel()
        .smp(2)
        .dsa(1)
        .ktest("ktests::proc::costs")
        .arg("lapic.calibrate=irq")
        .arg("icount")
        .qemu_arg("-icount")
        .qemu_arg("shift=0")
        .run();
    r.expect_pass();
    let res = r.report.results_of_kind("proc-cost");
    let ops: Vec<&str> = res.iter().filter_map(|j| field(j, "op")).collect();
    assert_eq!(
        ops,
        [
            "null-syscall",
            "yield-round-trip",
            "lazy-page-fault",
            "munmap-shootdown-1-remote",
            "dsa-submit-syscall",
            "ims-submit-to-wakeup"
        ],
        "{res:#?}"
    );
    for j in res {
        assert_eq!(field(j, "cost_unit"), Some("guest_instructions"), "{j}");
        let c: u64 = field(j, "cost").unwrap().parse().unwrap();
        // Plausible instruction counts, not speeds: each is at least an entry and an exit,
        // and far below anything that would mean a lost event. The IMS round trip includes
        // the device model's latency (a host thread outside `-icount`: a wait that spans
        // scheduler ticks counts their instructions), so only its lower bound is checked.
        if field(j, "op") == Some("ims-submit-to-wakeup") {
            assert!(c >= 50, "{j}");
        } else {
            assert!((50..10_000_000).contains(&c), "{j}");
        }
    }
}
