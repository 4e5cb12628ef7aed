//! Bad inputs the kernel must refuse cleanly: a specific message and the documented exit
//! status (README "Kernel command line" and "qemu-run.sh"), never a panic, a hang or a
//! silent pass. Firmware oddities that have a safe fallback are warnings and the run
//! passes; settings the user supplied and the kernel cannot apply fail the run (status 1).
//!
//! Firmware tables are added with QEMU's `-acpitable` (appended to the RSDT/XSDT after
//! QEMU's own), accel-config files through `-fw_cfg` as `qemu-run.sh --dsa-config` does.

use std::path::PathBuf;

use qemu_tests::{Boot, BootResult};

/// A file in the temporary directory that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("bad-inputs-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        TempFile(p)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An ACPI table: the 36-byte header (ACPI 6.5 §5.2.6) with a valid checksum, then `body`.
fn acpi_table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(sig);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.extend_from_slice(&[revision, 0]);
    t.extend_from_slice(b"FUZZ  TESTTBL ");
    t.extend_from_slice(&[0; 12]);
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

/// An HPET table (IA-PC HPET spec 1.0a §3.2.4) naming a register block at `base`.
fn hpet_table(base: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x8086_a201u32.to_le_bytes());
    body.extend_from_slice(&[0, 64, 0, 0]); // GAS: system memory, 64-bit
    body.extend_from_slice(&base.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&128u16.to_le_bytes());
    body.push(0);
    acpi_table(b"HPET", 1, &body)
}

/// A DMAR table (VT-d spec §8.1) with the given remapping structures.
fn dmar_table(structures: &[u8]) -> Vec<u8> {
    let mut body = vec![47, 1];
    body.extend_from_slice(&[0; 10]);
    body.extend_from_slice(structures);
    acpi_table(b"DMAR", 1, &body)
}

fn expect_failed_with(r: &BootResult, why: &str) {
    assert_eq!(
        r.status,
        Some(1),
        "expected the run to fail (status 1) with '{why}'\n{}",
        r.serial
    );
    assert!(!r.verdict().is_pass());
    let line = r
        .serial
        .lines()
        .find(|l| l.starts_with("kernel-exit: fail:"))
        .unwrap_or_else(|| panic!("no kernel-exit: fail line\n{}", r.serial));
    assert!(line.contains(why), "'{line}' does not say '{why}'");
    assert!(
        !r.serial.contains("panicked") && !r.serial.contains("PANIC"),
        "{}",
        r.serial
    );
}

/// Issue 13 item 1: an accel-config given with `--dsa-config` (fw_cfg) that the kernel
/// rejects fails the run even without `workload=` or `dsa.config=` on the command line.
#[test]
fn rejected_accel_config_files_fail_the_run() {
    let good = r#"[{"dev":"dsa0","groups":[{"dev":"group0.0","grouped_workqueues":[{"dev":"wq0.0","mode":"dedicated","size":16,"group_id":0}],"grouped_engines":[{"dev":"engine0.0","group_id":0}]}]}]"#;
    for (name, bytes, why) in [
        (
            "truncated",
            good.as_bytes()[..good.len() / 2].to_vec(),
            "JSON syntax error",
        ),
        (
            "over-committed",
            good.replace(r#""size":16"#, r#""size":4000"#).into_bytes(),
            "WQ sizes add up to 4000",
        ),
        (
            "duplicate-key",
            good.replace(r#""size":16"#, r#""size":16,"size":8"#)
                .into_bytes(),
            "duplicate key \"size\"",
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x9c, 0x80], "not UTF-8"),
    ] {
        let f = TempFile::new(&format!("{name}.json"), &bytes);
        let r = Boot::kernel()
            .smp(1)
            .dsa(1)
            .qemu_arg("-fw_cfg")
            .qemu_arg(&format!("name=opt/dsa/accel-config.json,file={}", f.path()))
            .run();
        expect_failed_with(&r, why);
        r.expect_serial("accel-config from fw_cfg 'opt/dsa/accel-config.json'");
    }
}

/// Issue 13 item 12: entries for devices that do not exist are reported, and every device
/// says which configuration it runs.
#[test]
fn accel_config_entries_without_a_device_are_reported() {
    let only_dsa3 = r#"[{"dev":"dsa3","groups":[{"dev":"group3.0","grouped_workqueues":[{"dev":"wq3.0","mode":"dedicated","size":16,"group_id":0}],"grouped_engines":[{"dev":"engine3.0","group_id":0}]}]}]"#;
    let f = TempFile::new("dsa3.json", only_dsa3.as_bytes());
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .arg("workload=memmove:iters=16")
        .qemu_arg("-fw_cfg")
        .qemu_arg(&format!("name=opt/dsa/accel-config.json,file={}", f.path()))
        .run();
    r.expect_pass()
        .expect_serial(
            "the accel-config from fw_cfg 'opt/dsa/accel-config.json' configures dsa3, but only 1 DSA device(s) exist",
        )
        .expect_serial(
            "default layout (not listed in the accel-config from fw_cfg 'opt/dsa/accel-config.json')",
        );
}

/// Issue 13 item 4: a console port that cannot hold a UART, or where none answers, is
/// reported on the default console and fails the run; nothing is written to the port
/// (0xf0: QEMU's isa-debug-exit would end the run with status 7).
#[test]
fn unusable_console_ports_are_refused() {
    for (spec, why) in [
        ("0xffff", "I/O port 0xffff cannot hold a 16550"),
        ("0xfffb", "I/O port 0xfffb cannot hold a 16550"),
        ("0xf0", "I/O port 0xf0 cannot hold a 16550"),
        ("ttyS1", "no 16550 UART answers at I/O port 0x2f8"),
    ] {
        let r = Boot::kernel().smp(1).arg(&format!("console={spec}")).run();
        expect_failed_with(&r, &format!("console={spec}: {why}"));
    }
}

/// Issue 13 items 6 and 7: an HPET that cannot be used (at address 0, over RAM, or absent)
/// is reported and the clock is calibrated against the ACPI PM timer.
#[test]
fn unusable_hpet_falls_back_to_the_pm_timer() {
    for (name, base, why) in [
        (
            "zero",
            0u64,
            "HPET table ignored: HPET register block at 0x0",
        ),
        ("ram", 0x100_0000, "HPET unusable (cannot map the HPET"),
        ("absent", 0xfed0_0000, "HPET unusable (HPET period"),
    ] {
        let f = TempFile::new(&format!("hpet-{name}.bin"), &hpet_table(base));
        let r = Boot::kernel()
            .smp(1)
            .qemu_arg("-machine")
            .qemu_arg("hpet=off")
            .qemu_arg("-acpitable")
            .qemu_arg(&format!("file={}", f.path()))
            .run();
        r.expect_pass()
            .expect_serial(why)
            .expect_serial("calibrated against the ACPI PM timer")
            .expect_serial("\"clock_reference\":\"ACPI PM timer\"");
    }
}

/// Issue 13 item 8: a DMAR without any remapping unit means no IOMMU (with a warning); the
/// DSA then runs as on a platform without VT-d instead of failing on a missing unit.
#[test]
fn dmar_without_remapping_units_is_no_iommu() {
    let f = TempFile::new("dmar-empty.bin", &dmar_table(&[]));
    let r = Boot::kernel()
        .smp(1)
        .dsa(1)
        .iommu(false)
        .arg("workload=memmove:iters=16")
        .qemu_arg("-acpitable")
        .qemu_arg(&format!("file={}", f.path()))
        .run();
    r.expect_pass()
        .expect_serial("DMAR lists no remapping unit (DRHD): DMA and interrupts are not remapped")
        .expect_serial("default layout, kernel without PASID")
        .expect_serial("\"iommu_units\":0");
    assert!(!r.serial.contains("ERROR"), "{}", r.serial);
}

/// Issue 13 item 10: a second DMAR, FADT or MADT is reported (the first is used).
#[test]
fn repeated_single_tables_are_reported() {
    let mut madt = Vec::new();
    madt.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
    madt.extend_from_slice(&1u32.to_le_bytes());
    madt.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
    let files = [
        TempFile::new("madt2.bin", &acpi_table(b"APIC", 3, &madt)),
        TempFile::new("fadt2.bin", &acpi_table(b"FACP", 1, &[0; 80])),
        TempFile::new("dmar2.bin", &dmar_table(&[])),
    ];
    let mut b = Boot::kernel().smp(1);
    for f in &files {
        b = b
            .qemu_arg("-acpitable")
            .qemu_arg(&format!("file={}", f.path()));
    }
    let r = b.run();
    r.expect_pass();
    for sig in ["APIC", "FACP", "DMAR"] {
        r.expect_serial(&format!("2 {sig} tables listed; using the first"));
    }
}

/// Issue 13 items 9, 11 and 13: settings on the command line that the kernel would have
/// replaced by a default, run until the timeout, or failed on later with a bare enum name.
#[test]
fn rejected_command_line_settings_fail_the_run() {
    let r = Boot::kernel()
        .smp(1)
        .arg("smp.timeout_ms=0 tsc.calibrate_ms=0 loglevel=bogus iommu=of x=\"unterminated")
        .run();
    for why in [
        "command line: smp.timeout_ms=0: expected a number in 1..=60000",
        "tsc.calibrate_ms=0: expected a number in 1..=1000",
        "loglevel=bogus: expected off|error|warn|info|debug|trace",
        "iommu=of: expected on|off",
        "the quote at byte",
    ] {
        expect_failed_with(&r, why);
    }
    // An IR table below what the devices need: refused at IOMMU set-up, by name.
    let r = Boot::kernel().smp(1).dsa(1).arg("iommu.irtes=2").run();
    expect_failed_with(&r, "iommu.irtes=2 is too small");
    assert!(!r.serial.contains("IrteExhausted"), "{}", r.serial);
    // 15 ops × 230 sizes × 230 batches × 2 × 2: refused before anything runs.
    let list = |n: u32| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let spec = format!(
        "workload=noop,memmove,fill,compare,cpattern,dualcast,crc,copycrc,flush,cdelta,adelta,difchk,difins,difstrip,difupd:size={}:mode=dwq,swq:batch={}:completion=poll,irq",
        list(230),
        list(230)
    );
    let r = Boot::kernel().smp(1).dsa(1).arg(&spec).run();
    expect_failed_with(&r, "expands to 3174000 cases");
}
