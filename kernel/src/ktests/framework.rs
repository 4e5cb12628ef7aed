//! Tests of the test framework itself, and deliberately failing tests (explicit: they
//! run only when named, to prove that the host harness detects failures).

use crate::ktest;

ktest!(
    fn registry_lists_unique_names() {
        let all = ktest::all();
        assert!(all.len() >= 20, "only {} tests registered", all.len());
        let mut names: alloc::vec::Vec<&str> = all.iter().map(|t| t.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate test names");
        assert!(
            all.iter()
                .any(|t| t.name.ends_with("framework::registry_lists_unique_names"))
        );
        assert!(
            all.iter().filter(|t| t.explicit).count() >= 3,
            "explicit tests missing"
        );
        let me = ktest::current().expect("the runner sets the current test");
        assert_eq!(
            ktest::short_name(me),
            "ktests::framework::registry_lists_unique_names"
        );
    }
);

ktest!(explicit fn deliberately_fails() {
    let answer = 6 * 7;
    assert_eq!(answer, 43, "this test fails on purpose");
});

ktest!(explicit fn deliberate_page_fault() {
    // An unexpected fault inside a test must be reported and fail the run.
    // SAFETY: not safe at all: page 0 is unmapped on purpose; the fault ends the run.
    let v = unsafe { core::ptr::read_volatile(core::ptr::without_provenance::<u64>(8)) };
    crate::println!("unreachable: read {v}");
});

/// Recurses with a 1 KiB frame until the stack runs out (the guard page ends it).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse_forever(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth as u8; 1024]);
    // Not a tail call: the frame is used after the recursive call returns.
    recurse_forever(depth + 1) + u64::from(frame[(depth % 1024) as usize])
}

ktest!(explicit fn deliberate_stack_overflow() {
    // Running off the stack must hit the guard page and give a report naming the stack,
    // not corrupt whatever lies below it.
    let n = recurse_forever(0);
    crate::println!("unreachable: {n}");
});

ktest!(explicit fn deliberate_stack_overflow_on_an_ap() {
    // Same on an AP's own stack (allocated by the BSP before the AP started).
    let last = crate::arch::percpu::cpu_count() - 1;
    assert!(last > 0, "needs a second CPU");
    let n = crate::arch::smp::run_on(last, || recurse_forever(0));
    crate::println!("unreachable: {n:?}");
});

ktest!(explicit fn deliberately_hangs() {
    // For the host harness's timeout detection.
    loop {
        core::hint::spin_loop();
    }
});

ktest!(explicit fn deliberately_returns_error() -> Result<(), &'static str> {
    Err("this test returns an error on purpose")
});

ktest!(explicit fn deliberate_triple_fault() {
    // With an empty IDT no exception can be delivered: #BP → #DF → triple fault, which
    // QEMU (-no-reboot) turns into an exit without a verdict.
    let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::new(0) };
    // SAFETY: not safe: this deliberately destroys the machine state.
    unsafe { x86_64::instructions::tables::lidt(&empty) };
    x86_64::instructions::interrupts::int3();
});

ktest!(explicit fn deliberate_panic_on_another_cpu() {
    // A panic on an AP must stop the other CPUs and still name this test.
    let cpu = crate::arch::percpu::cpu_count() - 1;
    let _ = crate::arch::smp::run_on(cpu, || -> () { panic!("deliberate panic on an AP") });
    panic!("run_on returned although the closure panicked");
});
