//! The DSA driver in the kernel on the patched QEMU (`intel-dsa` behind PCIe root ports,
//! intel-iommu in scalable mode, TCG MOVDIR64B/ENQCMDS): the DSA kernel tests in the
//! configurations they need (fault injection, two devices), the workload runner with its
//! default and explicit workloads, accel-config from fw_cfg and the command line, and the
//! rejection of bad configurations and workload specs.

use qemu_tests::{Boot, BootResult, TestStatus, json_field as field};

/// Kernel tests that must pass (not skip) with one fault-injection-capable device.
const ONE_DEVICE: &[&str] = &[
    "dsa::devices_are_enabled_with_pasid_and_remapped_interrupts",
    "dsa::memmove_dedicated_movdir64b_and_shared_enqcmds_each_way",
    "dsa::every_operation_matches_the_cpu_reference_on_both_queues",
    "dsa::batches_with_fence_on_both_queues",
    "dsa::completion_interrupts_and_polling",
    "dsa::pasid_clients_see_only_their_own_memory",
    "dsa::same_iova_in_two_pasids_reaches_different_memory",
    "dsa::page_fault_partial_completion_is_resumed_to_the_right_result",
    "dsa::faults_on_each_operand_are_resumed",
    "dsa::full_shared_wq_is_retried_and_dedicated_credits_hold",
    "dsa::forced_swerr_is_decoded_and_a_halt_is_recovered",
    "dsa::drain_and_abort_of_wqs_and_pasids",
    "dsa::accel_config_reconfigures_a_device_and_invalid_ones_are_rejected",
    "dsa::fw_cfg_directory_is_readable_under_qemu",
    "instructions::cpuid_reports_movdir64b_and_enqcmd",
    "instructions::movdir64b_to_ram_writes_the_64_bytes_and_keeps_flags",
    "instructions::movdir64b_misaligned_destination_is_gp0",
    "instructions::movdir64b_to_ram_is_64_byte_atomic_against_other_cpus",
    "instructions::ia32_pasid_resets_to_zero_round_trips_and_rejects_reserved_bits",
    "instructions::enqcmds_to_ram_reports_retry_and_writes_nothing",
    "instructions::enqcmd_to_ram_reports_retry_and_writes_nothing",
    "instructions::enqcmd_gp_without_valid_pasid_or_with_nonzero_low_dword",
    "instructions::enqcmds_gp_when_source_bits_30_20_are_set",
];

fn workload_results(r: &BootResult) -> Vec<&String> {
    r.report.results_of_kind("dsa-workload")
}

/// Every case ran, with operations, and nothing failed.
fn expect_clean_cases(r: &BootResult, cases: usize) {
    let res = workload_results(r);
    assert_eq!(res.len(), cases, "RESULT lines: {res:#?}");
    for j in res {
        assert_eq!(field(j, "skipped"), None, "{j}");
        assert_eq!(field(j, "errors"), Some("0"), "{j}");
        assert_eq!(field(j, "verify_failures"), Some("0"), "{j}");
        assert_eq!(field(j, "verified"), Some("true"), "{j}");
        let ops: u64 = field(j, "ops").unwrap().parse().unwrap();
        assert!(ops > 0, "{j}");
    }
}

#[test]
fn dsa_as_an_integrated_endpoint_on_the_root_bus() {
    // As on Sapphire Rapids: the DSA is a root-complex integrated endpoint on bus 0, no
    // root port above it (the other tests put each device behind a pcie-root-port).
    let r = Boot::kernel()
        .smp(2)
        .dsa(0)
        .qemu_arg("-device")
        .qemu_arg("intel-dsa")
        .ktest("dsa::")
        .run();
    r.expect_pass()
        .expect_serial("dsa0: 0000:00:")
        .expect_serial("kernel PASID 1 (pass-through), PCIe RCiEP")
        .expect_serial("dsa0: 15 of 15 operations in OPCAP ran on both WQs");
    r.expect_tests_ok(&[
        "dsa::devices_are_enabled_with_pasid_and_remapped_interrupts",
        "dsa::memmove_dedicated_movdir64b_and_shared_enqcmds_each_way",
        "dsa::every_operation_matches_the_cpu_reference_on_both_queues",
        "dsa::completion_interrupts_and_polling",
        "dsa::pasid_clients_see_only_their_own_memory",
        "dsa::page_fault_partial_completion_is_resumed_to_the_right_result",
    ]);
}

#[test]
fn dsa_kernel_tests_with_fault_injection() {
    let r = Boot::kernel()
        .smp(2)
        .dsa(1)
        .dsa_opts("fault-injection=on")
        .ktest("dsa,instructions")
        .run();
    r.expect_pass()
        .expect_serial("dsa0: 0000:01:00.0 DSA 1.0 8 WQs (128 entries) 4 engines 4 groups")
        .expect_serial("kernel PASID 1 (pass-through)")
        .expect_serial("wq0 Dedicated size 32")
        .expect_serial("wq1 Shared size 32")
        .expect_serial("(IRTE ")
        // The page fault as the IOMMU reported it, and the recovery from the forced halt.
        .expect_serial("reason 0x71 (first-stage entry not present)")
        .expect_serial("SWERR 0x21 (hardware write error)")
        .expect_serial("dsa0: 15 of 15 operations in OPCAP ran on both WQs")
        .expect_serial("movdir64b atomicity: 4000 stores");
    r.expect_tests_ok(ONE_DEVICE);
    // The recovery accounted for in-flight work (how many of the 8 had already completed
    // and been collected before the halt depends on the host; the kernel test checks that
    // none is lost and that the halt hit some).
    let swept: Vec<u64> = r
        .serial
        .lines()
        .filter_map(|l| {
            let (_, tail) = l.split_once("dsa0: recovered; ")?;
            tail.strip_suffix(" in-flight operation(s) finished or failed back")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        swept.iter().any(|&n| (1..=8).contains(&n)),
        "no recovery with in-flight work: {swept:?}"
    );
    assert!(matches!(
        r.report
            .status_of("ktests::dsa::two_devices_work_in_parallel"),
        Some(TestStatus::Skipped(_))
    ));
}

#[test]
fn dsa_two_devices() {
    let r = Boot::kernel()
        .smp(2)
        .dsa(2)
        .ktest("dsa::two_devices,dsa::devices_are_enabled,dsa::pasid_clients")
        .run();
    r.expect_pass()
        .expect_serial("dsa0: 0000:01:00.0 DSA 1.0")
        .expect_serial("dsa1: 0000:02:00.0 DSA 1.0")
        .expect_test_ok("ktests::dsa::two_devices_work_in_parallel")
        .expect_test_ok("ktests::dsa::devices_are_enabled_with_pasid_and_remapped_interrupts")
        .expect_test_ok("ktests::dsa::pasid_clients_see_only_their_own_memory");
    // Without the fault-injection page the tests that need it say so instead of passing.
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .ktest("dsa::forced_swerr")
        .run();
    r.expect_pass();
    assert!(matches!(
        r.report.status_of("ktests::dsa::forced_swerr_is_decoded_and_a_halt_is_recovered"),
        Some(TestStatus::Skipped(why)) if why.contains("fault-injection")
    ));
}

#[test]
fn default_workload_runs_and_ends_with_the_summary() {
    // What a plain ./qemu-run.sh does (it defaults to one device).
    let r = Boot::kernel().smp(4).dsa(1).run();
    r.expect_pass()
        .expect_serial("dsa: 1 device(s) up (default layout)")
        .expect_serial("DSA workload summary (64 case(s)")
        .expect_serial(
            "workload: 64 case(s), 0 skipped, 0 failed, 0 error(s), 0 verification failure(s)",
        );
    expect_clean_cases(&r, 64);
    let res = workload_results(&r);
    for op in ["memmove", "fill", "crc"] {
        for mode in ["dwq", "swq"] {
            for comp in ["poll", "irq"] {
                assert!(
                    res.iter().any(|j| field(j, "op") == Some(op)
                        && field(j, "mode") == Some(mode)
                        && field(j, "completion") == Some(comp)
                        && field(j, "batch") == Some("32")),
                    "{op} {mode} {comp} batch 32 missing"
                );
            }
        }
    }
    // Client PASIDs ran on the shared WQ, half of the cases with completion interrupts
    // through IMS handles of their own (the kernel's through MSI-X).
    assert_eq!(
        res.iter()
            .filter(|j| field(j, "client") == Some("pasid") && field(j, "mode") == Some("swq"))
            .count(),
        16
    );
    for j in &res {
        let want = match (field(j, "completion"), field(j, "client")) {
            (Some("poll"), _) => "none",
            (_, Some("pasid")) => "ims",
            _ => "msix",
        };
        assert_eq!(field(j, "irq_path"), Some(want), "{j}");
    }
    // Interrupt cases really took interrupts; polled ones none.
    for j in &res {
        let irqs: u64 = field(j, "interrupts").unwrap().parse().unwrap();
        match field(j, "completion") {
            Some("irq") => assert!(irqs > 0, "{j}"),
            _ => assert_eq!(irqs, 0, "{j}"),
        }
    }
    // The summary table is the last thing before the verdict.
    let tail: Vec<&str> = r.serial.lines().rev().take(3).collect();
    assert!(
        tail.iter().any(|l| l.starts_with("workload: 64 case(s)")),
        "{tail:?}"
    );
}

#[test]
fn icount_costs_are_guest_instructions_and_repeatable() {
    let spec = "memmove:size=4k:mode=dwq,swq:batch=1,32:completion=poll:iters=64";
    let run = || {
        let r = Boot::kernel()
            .smp(1)
            .dsa(1)
            .arg("lapic.calibrate=irq")
            .arg("icount")
            .arg(&format!("workload={spec}"))
            .qemu_arg("-icount")
            .qemu_arg("shift=0")
            .run();
        r.expect_pass();
        expect_clean_cases(&r, 4);
        workload_results(&r)
            .iter()
            .map(|j| {
                assert_eq!(field(j, "icount"), Some("true"), "{j}");
                assert_eq!(field(j, "cost_unit"), Some("guest_instructions"), "{j}");
                (
                    field(j, "submit_cost_per_desc").unwrap().to_string(),
                    field(j, "completion_cost_per_desc").unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let a = run();
    // Polled costs are deterministic instruction counts: a second boot gives the same.
    assert_eq!(a, run());
    for (s, c) in &a {
        let (s, c): (f64, f64) = (s.parse().unwrap(), c.parse().unwrap());
        // Plausible per-descriptor instruction counts: a submission is tens of
        // instructions or more, a polled batch whose members all succeeded costs only a few
        // per member (one status byte for the whole batch), never zero.
        assert!(
            (5.0..20_000.0).contains(&s) && (0.5..20_000.0).contains(&c),
            "{s} {c}"
        );
    }
}

#[test]
fn accel_config_from_fw_cfg_and_from_the_command_line() {
    let json = r#"[{"dev":"dsa0","groups":[{"dev":"group0.0","grouped_workqueues":[{"dev":"wq0.0","mode":"dedicated","size":16,"group_id":0,"priority":5,"max_batch_size":32,"max_transfer_size":1048576,"type":"kernel","name":"dwq-a"},{"dev":"wq0.3","mode":"shared","size":8,"group_id":0,"priority":7,"max_batch_size":32,"max_transfer_size":1048576,"type":"kernel","name":"swq-b","threshold":8}],"grouped_engines":[{"dev":"engine0.0","group_id":0},{"dev":"engine0.1","group_id":0}]}]}]"#;
    // A pretty-printed file through fw_cfg (as accel-config writes them).
    let path = std::env::temp_dir().join(format!("dsa-accel-config-{}.json", std::process::id()));
    std::fs::write(&path, json.replace(",\"", ",\n  \"")).unwrap();
    let spec = "workload=memmove:size=64k:mode=dwq,swq:batch=1,4:iters=16";
    let r = Boot::kernel()
        .smp(2)
        .dsa(1)
        .arg(spec)
        .qemu_arg("-fw_cfg")
        .qemu_arg(&format!(
            "name=opt/dsa/accel-config.json,file={}",
            path.display()
        ))
        .run();
    let _ = std::fs::remove_file(&path);
    r.expect_pass()
        .expect_serial("accel-config from fw_cfg 'opt/dsa/accel-config.json'")
        .expect_serial("wq0 Dedicated size 16 group 0 prio 5 'dwq-a'")
        .expect_serial("wq3 Shared size 8 group 0 prio 7 'swq-b'");
    expect_clean_cases(&r, 4);
    // The same on the command line.
    let r = Boot::kernel()
        .smp(2)
        .dsa(1)
        .arg(&format!("dsa.config={json}"))
        .arg(spec)
        .run();
    r.expect_pass()
        .expect_serial("accel-config from the command line")
        .expect_serial("wq3 Shared size 8 group 0 prio 7 'swq-b'");
    expect_clean_cases(&r, 4);
}

#[test]
fn bad_configurations_and_workloads_are_rejected_with_the_reason() {
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .arg(r#"dsa.config=[{"dev":"dsa0","colour":"red"}]"#)
        .run();
    assert!(!r.verdict().is_pass());
    r.expect_serial("accel-config from the command line rejected")
        .expect_serial("colour");
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .arg("workload=memmove:size=4k:mode=fast")
        .run();
    assert!(!r.verdict().is_pass());
    r.expect_serial("kernel-exit: fail: workload: mode: 'fast' is not one of dwq, swq");
    // A workload that names a device that does not exist.
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .arg("workload=memmove:devices=3")
        .run();
    assert!(!r.verdict().is_pass());
    r.expect_serial("no DSA device(s) [3]");
    // Without devices, asking for a workload is an error; not asking is not.
    let r = Boot::kernel().smp(1).arg("workload=memmove").run();
    r.expect_serial("workload: no DSA device");
    assert!(!r.verdict().is_pass());
    let r = Boot::kernel().smp(1).run();
    r.expect_pass();
    assert!(!r.serial.contains("DSA workload summary"));
}

#[test]
fn without_the_iommu_the_kernel_uses_dedicated_wqs_without_pasid() {
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .arg("iommu=off")
        .arg("workload=memmove,crc:size=8k:mode=dwq,swq:batch=1,8:completion=poll,irq:iters=16")
        .run();
    r.expect_pass()
        .expect_serial("default layout, kernel without PASID")
        .expect_serial("wq0 Dedicated size 32");
    assert!(
        !r.serial.contains("Shared size"),
        "no shared WQ without PASID"
    );
    let res = workload_results(&r);
    assert_eq!(res.len(), 16);
    for j in res {
        match field(j, "mode") {
            Some("dwq") => {
                assert_eq!(field(j, "errors"), Some("0"), "{j}");
                assert_eq!(field(j, "verify_failures"), Some("0"), "{j}");
                assert!(field(j, "ops").unwrap() != "0", "{j}");
            }
            _ => assert_eq!(field(j, "skipped"), Some("dsa0 has no swq WQ"), "{j}"),
        }
    }
}
