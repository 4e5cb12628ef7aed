//! The main job (no `ktest` on the command line): the boot report, then the DSA devices
//! (brought up here, with their summary), the DSA workload (`workload=`, the default one
//! when devices exist; see `crate::workload`) and, with `ims.bench`, the IMS benchmark
//! (`crate::ims::bench`). The workload and the benchmark exist only in kernels built with
//! the `bench` feature (see `crate::flavour`): the product kernel runs no workload and fails
//! the run when the command line asks for one.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use klib::json::Escaped;

use crate::arch::{self, percpu};

/// Prints the boot report (CPUs with APIC IDs, vectors, clock) and a `RESULT` line,
/// then ends the run successfully.
pub fn main_job() -> ! {
    let dsa_ready = bring_up_dsa();
    let n = percpu::cpu_count();
    let ids: Vec<u32> = (0..n).filter_map(percpu::apic_id).collect();
    for (cpu, id) in ids.iter().enumerate() {
        log::info!("cpu{cpu}: online, APIC ID {id}");
    }
    crate::irq::print_report();
    for line in crate::iommu::summary() {
        log::info!("iommu: {line}");
    }
    if let Some(a) = crate::acpi::info() {
        log::info!(
            "acpi: revision {}, root table at {:#x}, {} tables",
            a.revision,
            a.root,
            a.tables.len()
        );
    }
    let usable = crate::mm::memory_map().map_or(0, |m| m.total(boot::memmap::MemKind::Usable));
    let cal = crate::time::calibration();
    let tables: Vec<String> = crate::acpi::info()
        .map(|i| {
            i.tables
                .iter()
                .map(|t| format!("\"{}\"", Escaped(&t.signature.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut json = String::new();
    let _ = write!(
        json,
        "{{\"kind\":\"boot\",\"flavour\":\"{}\",\"cpus\":{n},\"apic_ids\":{ids:?},\"apic_mode\":\"{}\",\"usable_mib\":{},\
         \"tsc_hz\":{},\"lapic_timer_hz\":{},\"clock_reference\":\"{}\",\"acpi_tables\":[{}],\"pci_functions\":{},\"iommu_units\":{},\"boot_us\":{}}}",
        crate::flavour::name(),
        match arch::apic::mode() {
            arch::apic::Mode::X2Apic => "x2apic",
            arch::apic::Mode::XApic => "xapic",
            arch::apic::Mode::Off => "off",
        },
        usable >> 20,
        crate::time::tsc_hz(),
        cal.map_or(0, |c| c.lapic_hz * 16),
        cal.map_or("none", |c| c.reference),
        tables.join(","),
        crate::pci::devices().count(),
        crate::iommu::unit_count(),
        crate::time::now_ns() / 1000
    );
    crate::println!("RESULT {json}");
    log::info!(
        "boot: {n} CPU(s) online, {} MiB usable, done in {} ms",
        usable >> 20,
        crate::time::now_ns() / 1_000_000
    );
    if let Err(e) = dsa_ready {
        // Asked for DSA work, or supplied a configuration (dsa.config=, the fw_cfg file of
        // --dsa-config), but the devices could not be set up as asked.
        if crate::cmdline::has("workload")
            || crate::cmdline::has("dsa.config")
            || crate::dsa::config::requested() != crate::dsa::config::Origin::Default
        {
            crate::exit::fail(format_args!("dsa: {e}"));
        }
    }
    run_workload();
    run_ims_bench();
    crate::exit::pass()
}

/// Finds and brings up the DSA devices (their summary is printed by `dsa::init`).
fn bring_up_dsa() -> Result<(), crate::dsa::DsaInitError> {
    match crate::dsa::init() {
        Ok(r) if r.devices > 0 => {
            log::info!("dsa: {} device(s) up ({})", r.devices, r.origin);
            // Every device's IMS table in the one system-wide shared-vector domain.
            crate::ims::init(crate::dsa::devices());
            // `ims.mode=posted` on a platform that cannot post fails the run here.
            if let Err(e) = crate::ims::system_mode() {
                crate::exit::fail(format_args!("ims.mode: {e}"));
            }
            match crate::dsa::init_error() {
                Some(e) => Err(crate::dsa::DsaInitError::Earlier(e.into())),
                None => Ok(()),
            }
        }
        // Device errors were logged as they happened.
        Ok(_) => match crate::dsa::init_error() {
            Some(e) => Err(crate::dsa::DsaInitError::Earlier(e.into())),
            None => Ok(()),
        },
        Err(e) => {
            log::error!("dsa: {e}");
            Err(e)
        }
    }
}

/// Runs the DSA workload (`workload=<spec>`, or the default one when DSA devices exist;
/// `workload=none` skips it). Any error or verification failure fails the run.
#[cfg(feature = "bench")]
fn run_workload() {
    let asked = crate::cmdline::get("workload").is_some_and(|w| w != "none" && w != "off");
    if crate::dsa::devices().is_empty() && !asked {
        return;
    }
    let specs = match crate::workload::requested() {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => crate::exit::fail(format_args!("{e}")),
    };
    match crate::workload::run(&specs) {
        Ok((s, _)) if s.failed == 0 => {}
        Ok((s, _)) => crate::exit::fail(format_args!(
            "workload: {} case(s) failed ({} errors, {} verification failures)",
            s.failed, s.errors, s.verify_failures
        )),
        Err(e) => crate::exit::fail(format_args!("{e}")),
    }
}

/// Without the `bench` feature there is no workload runner and so no default workload; a
/// `workload=` other than `none`/`off` fails the run.
#[cfg(not(feature = "bench"))]
fn run_workload() {
    if crate::cmdline::has("workload")
        && !matches!(crate::cmdline::get("workload"), Some("none" | "off"))
    {
        crate::exit::fail(format_args!("{}", crate::flavour::Missing::Workload));
    }
}

/// The IMS benchmark, with `ims.bench` on the command line.
#[cfg(feature = "bench")]
fn run_ims_bench() {
    if crate::ims::bench::requested()
        && let Err(e) = crate::ims::bench::run()
    {
        crate::exit::fail(format_args!("{e}"));
    }
}

/// Without the `bench` feature any `ims.bench…` key fails the run.
#[cfg(not(feature = "bench"))]
fn run_ims_bench() {
    if crate::cmdline::cmdline()
        .params()
        .any(|p| p.key == "ims.bench" || p.key.starts_with("ims.bench."))
    {
        crate::exit::fail(format_args!("{}", crate::flavour::Missing::ImsBench));
    }
}
