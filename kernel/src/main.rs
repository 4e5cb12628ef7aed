//! The unikernel: bring-up of memory, ACPI, interrupts, time and every CPU, then either
//! the main job or, with `ktest` on the command line, the kernel tests (only in a kernel
//! built with the `ktest` feature; see [`flavour`]).
#![no_std]
#![no_main]
// Dead code is judged in every flavour: what only the kernel tests use is behind
// `cfg(feature = "ktest")`, what the workload runner and the benchmark also use behind
// `cfg(any(feature = "ktest", feature = "bench"))`.

extern crate alloc;

mod acpi;
mod arch;
mod bootinfo;
mod cmdline;
mod console;
// Modules under concurrent rewrite (the DSA hot path, IMS, interrupts, the workload runner,
// time, the kernel tests) keep, until the second phase of the hardware-access conversion,
// the levels they were written under: dead code allowed outside the ktest flavour, and the
// workspace's cast and formatting lints that still fire in them (listed per module).
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
#[allow(
    clippy::cast_lossless,
    clippy::ptr_cast_constness,
    clippy::semicolon_if_nothing_returned
)]
mod dsa;
mod exit;
mod fail;
mod flavour;
mod fw_cfg;
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
mod ims;
mod iommu;
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
mod irq;
mod job;
#[cfg(feature = "ktest")]
mod ktest;
#[cfg(feature = "ktest")]
#[allow(
    clippy::borrow_as_ptr,
    clippy::cast_lossless,
    clippy::manual_assert,
    clippy::manual_let_else,
    clippy::ref_as_ptr,
    clippy::semicolon_if_nothing_returned,
    clippy::uninlined_format_args
)]
mod ktests;
mod logger;
mod mm;
mod pci;
// The product kernel has no caller of process creation yet (kernel tests and benchmarks do).
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
mod proc;
mod sync;
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
#[allow(clippy::cast_lossless, clippy::semicolon_if_nothing_returned)]
mod time;
#[cfg(feature = "bench")]
#[allow(clippy::borrow_as_ptr, clippy::cast_lossless, clippy::ref_as_ptr)]
mod workload;

use alloc::vec::Vec;
use core::fmt::Write;

use log::LevelFilter;
use mm::stacks::StackKind;

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
    if let Some(spec) = cmdline::get("console") {
        console::configure(spec);
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
    if bi.cmdline_truncated {
        log::warn!(
            "command line truncated to {} bytes",
            boot::info::CMDLINE_MAX
        );
    }
    if let Err(e) = boot {
        exit::fail(format_args!("boot information: {e}"));
    }
    // Before the heap exists, errors are reported with static text.
    if let Err(e) = mm::init(&bootinfo::get().memmap) {
        exit::fail(format_args!("memory: {e}"));
    }
    // From here on every stack has a guard page: the BSP leaves the boot stack (in the
    // image, unguarded) for a guarded one, and so do its IST stacks.
    let guarded = |size: u64, kind: StackKind| match mm::stacks::alloc_stack(size, kind, 0) {
        Ok(s) => s.top,
        Err(e) => exit::fail(format_args!("memory: BSP stack: {e}")),
    };
    let ist = arch::gdt::IST_STACK_SIZE as u64;
    arch::gdt::guard_bsp_ist([
        guarded(ist, StackKind::DoubleFault),
        guarded(ist, StackKind::Nmi),
        guarded(ist, StackKind::MachineCheck),
    ]);
    let top = guarded(BSP_STACK_SIZE, StackKind::Main);
    // SAFETY: `top` is the top of a fresh guarded stack of this CPU; nothing on the boot
    // stack is used after the switch (`main_on_guarded_stack` takes no arguments).
    unsafe { arch::switch_stack(top, main_on_guarded_stack) }
}

/// The BSP's kernel stack after memory is up.
const BSP_STACK_SIZE: u64 = 256 * 1024;

/// The rest of boot and the run, on the BSP's guarded stack.
extern "C" fn main_on_guarded_stack() -> ! {
    if let Err(e) = bring_up() {
        exit::fail(format_args!("{e}"));
    }
    if cmdline::has("ktest") || cmdline::has("ktest.list") {
        flavour::run_ktests()
    } else if cmdline::has("sva.suite") {
        flavour::run_sva_suite()
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

/// Every value the command line gives is used or fails the run: a setting the kernel
/// would silently replace by its default is a setting the user did not get.
fn check_command_line() -> Result<(), BringUpError> {
    let console = console::problem()
        .map(|(spec, why)| alloc::format!("console={spec}: {why} (output stays on COM1)"));
    let problems = cmdline::problems(console);
    for p in &problems {
        log::error!("command line: {p}");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BringUpError(alloc::format!(
            "command line: {}",
            problems.join("; ")
        )))
    }
}

fn bring_up() -> Result<(), BringUpError> {
    check_command_line()?;
    let bi = bootinfo::get();
    let info = step("ACPI", acpi::init(bi.rsdp))?;
    let pins = step("I/O APIC", arch::ioapic::mask_all(&info.ioapics))?;
    log::debug!("{pins} I/O APIC pins masked");
    let mode = step("local APIC", arch::apic::init_bsp())?;
    let max_cpus = info.cpus.iter().filter(|c| c.enabled).count().max(1);
    irq::init(max_cpus);
    arch::percpu::mark_online(arch::apic::id());
    irq::init_cpu();
    step("ring 3", arch::user::init_cpu())?;
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
            log::warn!("pci: no MCFG table: PCI devices are not enumerated");
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
