//! PCI enumeration and VT-d (scalable mode, first-stage translation, interrupt remapping)
//! in QEMU with test devices that DMA and interrupt through the IOMMU.
//!
//! Device layout (`TOPOLOGY`): QEMU's `edu` on the root bus (DMA engine + MSI, conventional
//! PCI); an `intel-dsa` behind a `pcie-root-port` (PCIe extended capabilities: PASID);
//! `pci-testdev` behind `pcie-root-port` → `pcie-pci-bridge` (two bridge levels); an
//! `ivshmem-plain` with a 1 GiB BAR behind a root port, which makes SeaBIOS put the 64-bit
//! BARs above 4 GiB (the host memory is never touched).

use qemu_tests::Boot;

const TOPOLOGY: &[&str] = &[
    "-device",
    "edu",
    "-device",
    "pcie-root-port,id=rp_dsa,chassis=30,slot=30",
    "-device",
    "intel-dsa,bus=rp_dsa",
    "-device",
    "pcie-root-port,id=rp_br,chassis=31,slot=31",
    "-device",
    "pcie-pci-bridge,id=pbr,bus=rp_br",
    "-device",
    "pci-testdev,bus=pbr,addr=3",
    "-object",
    "memory-backend-ram,id=shm,size=1G",
    "-device",
    "pcie-root-port,id=rp_shm,chassis=32,slot=32",
    "-device",
    "ivshmem-plain,memdev=shm,bus=rp_shm",
];

/// Every PCI and IOMMU kernel test; none may be skipped in these configurations.
const TESTS: &[&str] = &[
    "pci::inventory_matches_configuration_space",
    "pci::api_errors_are_specific",
    "pci::every_memory_bar_maps_and_answers",
    "pci::msix_table_entries_are_programmed",
    "pci::pasid_capability_enables_with_privileged_mode",
    "iommu::every_function_has_a_valid_rid_pasid_entry",
    "iommu::two_spaces_map_one_iova_to_different_frames_by_pasid",
    "iommu::interrupt_route_entries_and_retarget",
    "iommu::address_spaces_and_routes_from_every_cpu_at_once",
    "iommu::edu_dma_lands_where_the_mapping_says",
    "iommu::edu_unmapped_access_is_recorded_and_reported",
    "iommu::edu_dma_faults_after_unmap_and_after_revoke",
    "iommu::edu_msi_arrives_through_the_irte_and_a_wrong_source_id_blocks_it",
];

/// The posted-interrupt kernel tests (the unit alone, through the edu's MSI and the DSA's
/// MSI-X); none may be skipped when the IOMMU has CAP.PI (qemu-run.sh's default).
const POSTED_TESTS: &[&str] = &[
    "iommu::posted::posted_msi_sets_its_bit_and_notifies_nv_at_ndst",
    "iommu::posted::posted_sn_suppresses_the_notification_and_urg_overrides_sn",
    "iommu::posted::posted_requests_coalesce_while_on_is_set",
    "iommu::posted::posted_faults_for_bad_descriptors_and_entries_name_the_spec_reason",
    "iommu::posted::posted_updates_are_atomic_against_other_cpus_locked_instructions",
    "iommu::posted::posted_dsa_msix_message_posts",
];

/// The one that needs CAP.PI off.
const WITHOUT_PI_TEST: &str = "iommu::posted::posted_format_irte_is_refused_without_cap_pi";

fn with_topology(mut b: Boot) -> Boot {
    for a in TOPOLOGY {
        b = b.qemu_arg(a);
    }
    b
}

/// The `N` in a `ktest-info:` line containing `prefix N suffix`.
fn info_number(serial: &str, prefix: &str, suffix: &str) -> Option<u64> {
    serial
        .lines()
        .filter(|l| l.starts_with("ktest-info:"))
        .find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            rest[..rest.find(suffix)?].trim().parse().ok()
        })
}

#[test]
fn iommu_dma_faults_and_interrupt_remapping_with_edu_dsa_and_bridges() {
    let r = with_topology(Boot::kernel().smp(2).ktest("pci,iommu")).run();
    r.expect_pass()
        // The boot inventory: IDs, class, BARs, capabilities and extended capabilities.
        .expect_serial("1234:11e8 00.ff.00 other bars[0:mem32 ")
        .expect_serial("caps[msi]")
        .expect_serial("8086:0b25 08.80.00 system-other bars[0:mem64 ")
        .expect_serial("ext[pasid(20)]")
        .expect_serial("1b36:0005 00.ff.00 other")
        .expect_serial("translation enabled (FirstStage)")
        .expect_serial("interrupt remapping on, 8192 IRTEs")
        .expect_serial("RID_PASID default PassThrough")
        // Fault lines as the kernel reports them.
        .expect_serial(
            "pasid 0 (RID_PASID) read 0x2345000 reason 0x71 (first-stage entry not present)",
        )
        .expect_serial("pasid 0 (RID_PASID) write 0x2346000 reason 0x71")
        .expect_serial("reason 0x26 (IR source-id check failed)")
        .expect_serial("reason 0x22 (IRTE not present)")
        // Posted interrupts: the unit reports CAP.PI, and the posting faults.
        .expect_serial("unit 0: posted interrupts (CAP.PI)")
        .expect_serial("reason 0x27 (posted-interrupt descriptor not accessible)")
        .expect_serial("reason 0x28 (posted-interrupt descriptor reserved bits)")
        .expect_serial("reason 0x24 (IRTE reserved bits)")
        .expect_serial("ktest-info: posted DSA MSI-X entry 0 of ");
    r.expect_tests_ok(TESTS);
    r.expect_tests_ok(POSTED_TESTS);
    let high = info_number(&r.serial, "memory BARs mapped,", "above 4 GiB");
    assert!(
        high.is_some_and(|n| n >= 2),
        "64-bit BARs above 4 GiB were mapped: {high:?}"
    );
    let deepest = r
        .serial
        .lines()
        .find_map(|l| l.split("deepest bus 0x").nth(1))
        .and_then(|h| u8::from_str_radix(h.trim(), 16).ok());
    assert!(
        deepest.is_some_and(|b| b >= 3),
        "bus behind two bridges: {deepest:?}"
    );
    // The MSI went to CPU 1, not the boot CPU.
    r.expect_serial("CPU 1 vector ");
    // pci-testdev behind the PCIe-to-PCI bridge (bus 3) reaches the IOMMU as 03:00.0, which
    // got a context entry of its own.
    r.expect_serial("ktest-info: 0000:03:03.0 DMA alias 0000:03:00.0")
        .expect_serial("1 reached through a DMA alias");
}

#[test]
fn remapped_interrupts_work_and_posted_entries_fault_without_cap_pi() {
    let r = with_topology(Boot::kernel().smp(2).posted_intr(false).ktest("pci,iommu")).run();
    r.expect_pass()
        .expect_serial("interrupt remapping on, 8192 IRTEs")
        .expect_serial("reason 0x24 (IRTE reserved bits)");
    r.expect_tests_ok(TESTS);
    r.expect_test_ok(WITHOUT_PI_TEST);
    assert!(!r.serial.contains("(CAP.PI)"), "CAP.PI reported");
    for t in POSTED_TESTS {
        assert!(
            matches!(
                r.report.status_of(t),
                Some(qemu_tests::TestStatus::Skipped(_))
            ),
            "{t} should skip without CAP.PI"
        );
    }
}

#[test]
fn posted_interrupts_under_icount_round_robin_vcpus() {
    // -icount runs the vCPUs round-robin in one thread, where their locked instructions are
    // plain loads and stores: posts from a device's thread must wait until no vCPU runs
    // (the atomicity test makes only those, and each would lose PIR bits otherwise).
    let r = Boot::kernel()
        .smp(2)
        .arg("lapic.calibrate=irq")
        .arg("icount")
        .ktest("iommu::posted")
        .qemu_arg("-icount")
        .qemu_arg("shift=0")
        .qemu_arg("-device")
        .qemu_arg("edu")
        .run();
    r.expect_pass()
        .expect_serial("from the device thread) with round-robin vCPUs")
        .expect_serial("0 posts lost");
    // (No DSA device here.)
    let edu_only: Vec<&str> = POSTED_TESTS
        .iter()
        .copied()
        .filter(|t| !t.contains("dsa"))
        .collect();
    r.expect_tests_ok(&edu_only);
}

#[test]
fn iommu_x2apic_irtes_reach_apic_id_256() {
    // One CPU in socket 1 of a 2×256-core topology has APIC ID 256: only a 32-bit (EIM)
    // IRTE destination can reach it.
    let r = Boot::kernel()
        .smp(1)
        .ktest("iommu::edu_msi,iommu::interrupt_route,iommu::posted::posted_msi")
        .qemu_arg("-smp")
        .qemu_arg("1,maxcpus=512,sockets=2,cores=256,threads=1")
        .qemu_arg("-device")
        .qemu_arg("max-x86_64-cpu,socket-id=1,core-id=0,thread-id=0")
        .qemu_arg("-global")
        .qemu_arg("intel-iommu.eim=on")
        .qemu_arg("-device")
        .qemu_arg("edu")
        .run();
    r.expect_pass()
        .expect_serial("CPU 1 online, APIC ID 256")
        .expect_serial("interrupt remapping on, 8192 IRTEs, x2APIC")
        .expect_test_ok("iommu::edu_msi_arrives_through_the_irte_and_a_wrong_source_id_blocks_it")
        .expect_test_ok("iommu::interrupt_route_entries_and_retarget")
        // The notification's NDST in x2APIC format reaches APIC ID 256 too.
        .expect_test_ok("iommu::posted::posted_msi_sets_its_bit_and_notifies_nv_at_ndst")
        .expect_serial("at CPU 1 (APIC ID 256)");
    assert!(
        !r.serial.contains("cannot receive remapped interrupts"),
        "EIM in use"
    );
}

#[test]
fn main_job_prints_the_pci_inventory_and_the_remapping_unit() {
    let r = Boot::kernel()
        .smp(2)
        .qemu_arg("-device")
        .qemu_arg("edu")
        .run();
    r.expect_pass()
        .expect_serial("INFO  pci: 0000:00:00.0 8086:29c0 06.00.00 host-bridge")
        .expect_serial(" 1234:11e8 00.ff.00 other bars[0:mem32 ")
        .expect_serial("iommu: unit 0 at 0xfed90000 (segment 0): FirstStage")
        .expect_serial("\"iommu_units\":1");
    assert!(!r.serial.contains("iommu::faults"), "no fault at boot");
}

#[test]
fn iommu_off_skips_remapping_and_its_tests() {
    let r = Boot::kernel()
        .smp(1)
        .arg("iommu=off")
        .ktest("iommu")
        .qemu_arg("-device")
        .qemu_arg("edu")
        .run();
    r.expect_pass()
        .expect_serial("disabled on the command line (iommu=off)");
    let posted = POSTED_TESTS.iter().chain([&WITHOUT_PI_TEST]);
    for t in TESTS
        .iter()
        .filter(|t| t.starts_with("iommu::"))
        .chain(posted)
    {
        assert!(
            matches!(
                r.report.status_of(t),
                Some(qemu_tests::TestStatus::Skipped(_))
            ),
            "{t} should skip without an IOMMU"
        );
    }
}
