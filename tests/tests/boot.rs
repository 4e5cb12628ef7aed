//! QEMU boot tests: the kernel in several configurations, its failure detection, and the
//! GRUB ISO of the same ELF.

use std::time::Duration;

use qemu_tests::{Boot, Verdict};

/// Kernel tests that every full run must include (so a test silently dropped from the
/// registry is noticed).
const REQUIRED: &[&str] = &[
    "smp::every_cpu_runs_a_closure",
    "smp::every_enabled_madt_cpu_is_online",
    "arch::breakpoint_is_handled_and_resumes",
    "arch::page_fault_is_recoverable",
    "mm::frames_are_contiguous_zeroed_and_aligned",
    "mm::frame_exhaustion_is_an_error_and_recovers",
    "mm::heap_allocations_work_across_cpus",
    "irq::vector_exhaustion_is_an_error_and_frees_correctly",
    "time::lapic_timer_interrupt_arrives_on_every_cpu",
];

#[test]
fn main_job_smp4_prints_memory_acpi_and_every_cpu() {
    let r = Boot::kernel().smp(4).run();
    r.expect_pass()
        .expect_serial("memory map (")
        .expect_serial("usable")
        .expect_serial("APIC at ")
        .expect_serial("MCFG: segment 0")
        .expect_serial("\"cpus\":4");
    for cpu in 0..4 {
        r.expect_serial(&format!("cpu{cpu}: online, APIC ID {cpu}"));
    }
    assert_eq!(r.report.results.len(), 1, "one RESULT line");
}

#[test]
fn ktests_smp4_x2apic() {
    let r = Boot::kernel().smp(4).ktest("").run();
    r.expect_pass().expect_serial("(X2Apic");
    r.expect_tests_ok(REQUIRED);
}

#[test]
fn ktests_smp1() {
    let r = Boot::kernel().smp(1).ktest("").run();
    r.expect_pass();
    r.expect_tests_ok(REQUIRED);
    // Multi-CPU tests report themselves as skipped rather than passing vacuously.
    assert!(matches!(
        r.report.status_of("smp::run_on_times_out_on_a_busy_cpu"),
        Some(qemu_tests::TestStatus::Skipped(_))
    ));
}

#[test]
fn ktests_smp2_xapic_without_1g_pages() {
    // qemu64: no x2APIC (xAPIC MMIO path) and no 1 GiB pages (2 MiB identity map).
    let r = Boot::kernel().smp(2).cpu("qemu64").ktest("").run();
    r.expect_pass()
        .expect_serial("(XApic")
        .expect_serial("1g-pages=false");
    r.expect_test_ok("smp::every_cpu_runs_a_closure")
        .expect_test_ok("arch::apic_mode_follows_cpuid");
}

#[test]
fn deliberately_failing_kernel_test_is_detected() {
    let r = Boot::kernel().smp(2).ktest("deliberately_fails").run();
    r.expect_failed_test("ktests::framework::deliberately_fails")
        .expect_serial("this test fails on purpose");
    assert_eq!(r.report.summary.map(|s| (s.passed, s.failed)), Some((0, 1)));
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    let r = Boot::kernel()
        .smp(2)
        .ktest("deliberate_stack_overflow")
        .run();
    r.expect_failed_test("deliberate_stack_overflow")
        .expect_serial("EXCEPTION: #DF double fault (vector 8) on CPU 0")
        .expect_serial("stack overflow: CR2 is in the guard page of CPU 0's kernel stack");
    let r = Boot::kernel()
        .smp(4)
        .ktest("deliberate_stack_overflow_on_an_ap")
        .run();
    r.expect_failed_test("deliberate_stack_overflow_on_an_ap")
        .expect_serial("EXCEPTION: #DF double fault (vector 8) on CPU 3")
        .expect_serial("stack overflow: CR2 is in the guard page of CPU 3's kernel stack");
}

#[test]
fn executing_data_faults_on_the_instruction_fetch() {
    let r = Boot::kernel()
        .smp(1)
        .ktest("deliberate_execution_from_the_heap")
        .run();
    r.expect_failed_test("deliberate_execution_from_the_heap")
        .expect_serial("EXCEPTION: #PF page fault (vector 14) on CPU 0")
        .expect_serial("(protection-violation read supervisor instruction-fetch)");
}

#[test]
fn unexpected_exception_in_a_test_fails_the_run_with_a_report() {
    let r = Boot::kernel().smp(2).ktest("deliberate_page_fault").run();
    r.expect_failed_test("deliberate_page_fault")
        .expect_serial("EXCEPTION: #PF page fault (vector 14) on CPU 0")
        .expect_serial("CR2 0x0000000000000008")
        .expect_serial("RIP ");
}

#[test]
fn failing_test_does_not_stop_the_others() {
    let r = Boot::kernel()
        .smp(1)
        .ktest("deliberately_returns_error,breakpoint_is_handled")
        .run();
    r.expect_failed_test("deliberately_returns_error")
        .expect_test_ok("arch::breakpoint_is_handled_and_resumes");
    assert_eq!(r.report.summary.map(|s| (s.passed, s.failed)), Some((1, 1)));
}

#[test]
fn hung_test_is_named_after_the_timeout() {
    // The timeout must strike while the hung test runs: a loaded host may still be booting
    // after a short one (no test running yet). Observed, not assumed: such a run is
    // repeated with a 4× longer timeout, short first so an idle host spins briefly.
    let mut timeout = 5;
    let r = loop {
        let r = Boot::kernel()
            .smp(1)
            .ktest("deliberately_hangs")
            .timeout(Duration::from_secs(timeout))
            .run();
        let started = matches!(
            r.verdict(),
            Verdict::Incomplete {
                running: Some(_),
                ..
            }
        );
        if started || r.status != Some(124) || timeout >= 320 {
            break r;
        }
        timeout *= 4;
    };
    assert_eq!(
        r.status,
        Some(124),
        "qemu-run.sh maps a timeout to 124\n{}",
        r.stderr
    );
    match r.verdict() {
        Verdict::Incomplete {
            running: Some(t), ..
        } => assert!(t.ends_with("deliberately_hangs"), "{t}"),
        v => panic!("expected an incomplete run naming the hung test, got {v}"),
    }
}

#[test]
fn unknown_filter_fails_instead_of_passing_vacuously() {
    let r = Boot::kernel().smp(1).ktest("no_such_test_anywhere").run();
    assert_eq!(r.status, Some(1));
    r.expect_serial("no kernel test matches the filter");
}

#[test]
fn grub_iso_bios_runs_the_kernel_tests() {
    let r = Boot::ktest_iso(false).smp(4).run();
    r.expect_pass().expect_serial("Multiboot2 boot (GRUB");
    r.expect_tests_ok(REQUIRED);
}

#[test]
fn grub_iso_uefi_runs_the_kernel_tests() {
    if !qemu_tests::ovmf_available() {
        eprintln!("SKIPPED: OVMF is not installed (apt-get install ovmf)");
        return;
    }
    let r = Boot::ktest_iso(true).smp(4).run();
    r.expect_pass()
        .expect_serial("Multiboot2 boot (GRUB")
        .expect_serial("copy from the boot loader");
    r.expect_tests_ok(REQUIRED);
}

#[test]
fn triple_fault_is_reported_as_no_verdict() {
    let r = Boot::kernel().smp(1).ktest("deliberate_triple_fault").run();
    assert_eq!(
        r.status,
        Some(3),
        "qemu-run.sh maps QEMU's 0 after a triple fault to 3\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("without a verdict"), "{}", r.stderr);
    match r.verdict() {
        Verdict::Incomplete {
            running: Some(t), ..
        } => assert!(t.ends_with("deliberate_triple_fault"), "{t}"),
        v => panic!("expected an incomplete run naming the test, got {v}"),
    }
}

#[test]
fn panic_on_another_cpu_names_the_test() {
    let r = Boot::kernel()
        .smp(4)
        .ktest("deliberate_panic_on_another_cpu")
        .run();
    r.expect_failed_test("deliberate_panic_on_another_cpu")
        .expect_serial("PANIC on CPU 3: deliberate panic on an AP");
}
