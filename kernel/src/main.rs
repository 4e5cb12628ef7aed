//! The unikernel: bring-up of memory, ACPI, interrupts, time and every CPU, then either
//! the main job or, with `ktest` on the command line, the kernel tests.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod arch;
mod bootinfo;
mod cmdline;
mod console;
mod dsa;
mod exit;
mod fail;
mod fw_cfg;
mod ims;
mod iommu;
mod irq;
mod job;
mod ktest;
mod ktests;
mod logger;
mod mm;
mod pci;
mod sync;
mod time;
mod workload;

use alloc::vec::Vec;
use core::fmt::Write;

use log::LevelFilter;

/// Kernel entry from the boot stub (`boot` crate), on the BSP boot stack with the
/// boot stub's identity map of 0–4 GiB. `magic`/`info` are EAX/EBX at entry.
#[unsafe(no_mangle)]
extern "C" fn kernel_main64(magic: u32, info: u32) -> ! {
    time::mark_boot();
    arch::percpu::init_bsp();
    arch::gdt::init_bsp();
    arch::idt::init_bsp();
    console::init(console::ConsoleConfig {
        port: console::COM_PORTS[0],
        baud: 115_200,
    });
    let boot = bootinfo::parse(magic, info);
    let mut bad_console = None;
    if let Some(spec) = cmdline::get("console") {
        match console::parse_console(spec) {
            Some(c) => console::init(c),
            None => bad_console = Some(spec),
        }
    }
    let level = cmdline::get("loglevel")
        .and_then(logger::parse_level)
        .unwrap_or(LevelFilter::Info);
    logger::init(level);
    println!();
    let bi = bootinfo::get();
    log::info!(
        "kernel {}: {:?} boot ({}), command line '{}'",
        env!("CARGO_PKG_VERSION"),
        bi.protocol,
        bi.bootloader(),
        bi.cmdline()
    );
    if let Some(s) = bad_console {
        log::warn!(
            "ignoring invalid console={s} (use ttyS0..ttyS3 or an I/O port, optionally ,<baud>)"
        );
    }
    if bi.cmdline_truncated {
        log::warn!(
            "command line truncated to {} bytes",
            boot::info::CMDLINE_MAX
        );
    }
    if let Err(e) = boot {
        exit::fail(format_args!("boot information: {e}"));
    }
    if let Err(e) = bring_up() {
        exit::fail(format_args!("{e}"));
    }
    if cmdline::has("ktest") || cmdline::has("ktest.list") {
        ktest::run()
    } else {
        job::main_job()
    }
}

/// Error text of a failed bring-up step.
struct BringUpError(alloc::string::String);

impl core::fmt::Display for BringUpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn step<T, E: core::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, BringUpError> {
    r.map_err(|e| {
        let mut s = alloc::string::String::new();
        let _ = write!(s, "{what}: {e}");
        BringUpError(s)
    })
}

fn bring_up() -> Result<(), BringUpError> {
    let bi = bootinfo::get();
    // Before the heap exists, errors are reported with static text.
    if let Err(e) = mm::init(&bi.memmap) {
        exit::fail(format_args!("memory: {e}"));
    }
    let info = step("ACPI", acpi::init(bi.rsdp))?;
    let pins = step("I/O APIC", arch::ioapic::mask_all(&info.ioapics))?;
    log::debug!("{pins} I/O APIC pins masked");
    let mode = step("local APIC", arch::apic::init_bsp())?;
    let max_cpus = info.cpus.iter().filter(|c| c.enabled).count().max(1);
    irq::init(max_cpus);
    arch::percpu::mark_online(arch::apic::id());
    irq::init_cpu();
    let cal = step("clock calibration", time::init())?;
    log::info!(
        "time: TSC {}.{:03} MHz, LAPIC timer {}.{:03} MHz (divide 16), calibrated against the {} over {} ms{}",
        cal.tsc_hz / 1_000_000,
        (cal.tsc_hz / 1000) % 1000,
        cal.lapic_hz / 1_000_000,
        (cal.lapic_hz / 1000) % 1000,
        cal.reference,
        cal.window_ns / 1_000_000,
        if arch::features().invariant_tsc {
            ""
        } else {
            " (TSC not reported invariant)"
        }
    );
    log::info!(
        "cpu0: APIC ID {} ({:?}, version {:#x}), boot CPU",
        arch::apic::id(),
        mode,
        arch::apic::version()
    );
    let f = arch::features();
    log::info!(
        "cpu: {} x2apic={} nx={} 1g-pages={} invariant-tsc={} tsc-deadline={} hypervisor={} movdiri={} movdir64b={} enqcmd={}",
        core::str::from_utf8(&f.vendor).unwrap_or("?"),
        f.x2apic,
        f.nx,
        f.page_1g,
        f.invariant_tsc,
        f.tsc_deadline,
        f.hypervisor,
        f.movdiri,
        f.movdir64b,
        f.enqcmd
    );
    x86_64::instructions::interrupts::enable();
    let rep = step("SMP", arch::smp::start_aps())?;
    // One line per reason: a machine with hundreds of CPUs past MAX_CPUS must not flood
    // the console.
    let mut reasons: Vec<&'static str> = rep.skipped.iter().map(|&(_, why)| why).collect();
    reasons.sort_unstable();
    reasons.dedup();
    for why in reasons {
        let ids: Vec<u32> = rep
            .skipped
            .iter()
            .filter(|s| s.1 == why)
            .map(|s| s.0)
            .collect();
        let shown = &ids[..ids.len().min(8)];
        let more = if ids.len() > shown.len() { ", ..." } else { "" };
        log::warn!(
            "smp: not starting {} CPU(s) (APIC IDs {shown:?}{more}): {why}",
            ids.len()
        );
    }
    log::info!(
        "smp: {} of {} enabled CPUs online ({} failed), trampoline at {:#x}",
        arch::percpu::cpu_count(),
        info.cpus.iter().filter(|c| c.enabled).count(),
        rep.failed.len(),
        rep.trampoline
    );
    match pci::init() {
        Ok(_) => {}
        Err(pci::PciError::NoEcam) => {
            log::warn!("pci: no MCFG table: PCI devices are not enumerated")
        }
        Err(e) => log::warn!("pci: {e}"),
    }
    // Before any device interrupt or driver DMA: interrupt remapping and translation on.
    if let Some(r) = step(
        "IOMMU (iommu=off skips it)",
        iommu::init(dsa::ims_entries_hint),
    )? {
        log::info!(
            "iommu: {} unit(s), {} device(s) with context entries, ready in {} us",
            r.units,
            r.devices,
            r.elapsed_ns / 1000
        );
    }
    Ok(())
}
