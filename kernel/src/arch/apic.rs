//! Local APIC in x2APIC mode (MSRs) when CPUID says so, xAPIC mode (MMIO) otherwise;
//! the legacy 8259 PICs are remapped out of the exception range and masked.
//!
//! Register offsets are the xAPIC MMIO offsets; in x2APIC mode register `off` is MSR
//! `0x800 + off / 16` (Intel SDM Vol. 3, 11.12.1.2), except that the ICR is one 64-bit
//! MSR (0x830) with a 32-bit destination.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use super::{rdmsr, wrmsr};
use crate::time::Deadline;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_EN: u64 = 1 << 11;
const APIC_BASE_EXTD: u64 = 1 << 10;

/// xAPIC register offsets (Intel SDM Vol. 3, Table 11-1); the whole table, used or not.
#[allow(missing_docs, dead_code)]
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const EOI: u32 = 0x0b0;
    pub const SVR: u32 = 0x0f0;
    /// Interrupt request register: 8 registers of 32 vectors, 0x10 apart.
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode: periodic.
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// ICR delivery-status (xAPIC): send pending.
const ICR_SEND_PENDING: u32 = 1 << 12;

/// ICR delivery modes (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Delivery {
    /// Fixed vector.
    Fixed = 0 << 8,
    /// NMI.
    Nmi = 4 << 8,
    /// INIT (with level assert).
    Init = (5 << 8) | (1 << 14),
    /// Start-up IPI.
    Startup = 6 << 8,
}

/// ICR destination shorthands (bits 19:18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Shorthand {
    /// The destination field.
    None = 0,
    /// This CPU.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    SelfOnly = 1 << 18,
    /// All CPUs but this one.
    AllExcludingSelf = 3 << 18,
}

/// APIC errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// xAPIC: the previous IPI is still pending after the timeout.
    IcrBusy,
    /// xAPIC mode cannot address this APIC ID (> 255).
    DestinationTooWide(u32),
    /// Mapping the xAPIC MMIO page failed.
    Map(crate::mm::MmError),
    /// The APIC is not initialised yet.
    NotInitialized,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::IcrBusy => write!(f, "local APIC ICR still busy after 10 ms"),
            Self::DestinationTooWide(id) => {
                write!(f, "APIC ID {id} is not addressable in xAPIC mode")
            }
            Self::Map(e) => write!(f, "cannot map the local APIC: {e}"),
            Self::NotInitialized => write!(f, "local APIC not initialised"),
        }
    }
}

impl core::error::Error for ApicError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Map(e) => Some(e),
            _ => None,
        }
    }
}

/// The APIC mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not yet initialised.
    Off,
    /// x2APIC (MSR access, 32-bit IDs).
    X2Apic,
    /// xAPIC (MMIO access, 8-bit IDs).
    XApic,
}

const MODE_OFF: u8 = 0;
const MODE_X2: u8 = 1;
const MODE_X: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

/// The current mode.
pub fn mode() -> Mode {
    match MODE.load(Ordering::Acquire) {
        MODE_X2 => Mode::X2Apic,
        MODE_X => Mode::XApic,
        _ => Mode::Off,
    }
}

/// Reads a register.
pub fn read(off: u32) -> u32 {
    match mode() {
        // SAFETY: in x2APIC mode the APIC registers are MSRs 0x800 + off/16.
        Mode::X2Apic => unsafe { rdmsr(0x800 + off / 16) as u32 },
        Mode::XApic => {
            let p = (XAPIC_BASE.load(Ordering::Relaxed) + u64::from(off)) as *const u32;
            // SAFETY: the xAPIC page is mapped uncached in `init_bsp`; registers are
            // 32-bit and 16-byte aligned.
            unsafe { p.read_volatile() }
        }
        Mode::Off => 0,
    }
}

/// Writes a register.
pub fn write(off: u32, v: u32) {
    match mode() {
        // SAFETY: as in `read`; the callers write architecturally valid values.
        Mode::X2Apic => unsafe { wrmsr(0x800 + off / 16, u64::from(v)) },
        Mode::XApic => {
            let p = (XAPIC_BASE.load(Ordering::Relaxed) + u64::from(off)) as *mut u32;
            // SAFETY: as in `read`.
            unsafe { p.write_volatile(v) }
        }
        Mode::Off => {}
    }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(reg::ID),
        _ => read(reg::ID) >> 24,
    }
}

/// Signals end of interrupt.
#[inline(always)]
pub fn eoi() {
    // `write(reg::EOI, 0)` without its mode conversion (the interrupt path's cost): x2APIC
    // with one compare, the other modes out of line.
    let mode = MODE.load(Ordering::Relaxed);
    if mode == MODE_X2 {
        // SAFETY: the x2APIC EOI MSR (0x80b); writing 0 is the architectural EOI.
        unsafe { super::wrmsr(0x800 + reg::EOI / 16, 0) }
    } else {
        eoi_xapic(mode);
    }
}

#[cold]
#[inline(never)]
fn eoi_xapic(mode: u8) {
    if mode == MODE_X {
        let p = (XAPIC_BASE.load(Ordering::Relaxed) + u64::from(reg::EOI)) as *mut u32;
        // SAFETY: as in `write`.
        unsafe { p.write_volatile(0) }
    }
}

fn remap_and_mask_pic() {
    // ICW1..ICW4: master at 0x20, slave at 0x28 (so a spurious IRQ7/15 lands on
    // vectors the kernel reserves, not on exceptions), then mask every line.
    // SAFETY: the 8259 ports; the PICs are not used for anything else.
    unsafe {
        let (mut mc, mut md) = (Port::<u8>::new(0x20), Port::<u8>::new(0x21));
        let (mut sc, mut sd) = (Port::<u8>::new(0xa0), Port::<u8>::new(0xa1));
        mc.write(0x11);
        sc.write(0x11);
        md.write(0x20);
        sd.write(0x28);
        md.write(4);
        sd.write(2);
        md.write(1);
        sd.write(1);
        md.write(0xff);
        sd.write(0xff);
    }
}

/// Chooses the mode (x2APIC if CPUID has it, unless `apic=xapic` is on the command
/// line), masks the PICs and enables this (the BSP's) local APIC.
pub fn init_bsp() -> Result<Mode, ApicError> {
    remap_and_mask_pic();
    let want_x2 = super::features().x2apic && crate::cmdline::get("apic") != Some("xapic");
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(IA32_APIC_BASE) };
    let already_x2 = base & APIC_BASE_EXTD != 0;
    if want_x2 || already_x2 {
        MODE.store(MODE_X2, Ordering::Release);
    } else {
        let phys = base & 0x000f_ffff_ffff_f000;
        crate::mm::map_mmio(phys, 4096).map_err(ApicError::Map)?;
        XAPIC_BASE.store(phys, Ordering::Relaxed);
        MODE.store(MODE_X, Ordering::Release);
    }
    init_local();
    Ok(mode())
}

/// Enables the local APIC of the executing CPU in the chosen mode: spurious vector,
/// error vector, timer masked, task priority 0.
pub fn init_local() {
    // SAFETY: IA32_APIC_BASE; the enable sequence EN then EN|EXTD is the architectural
    // way into x2APIC mode (EXTD without EN is invalid).
    unsafe {
        let base = rdmsr(IA32_APIC_BASE);
        if base & APIC_BASE_EN == 0 {
            wrmsr(IA32_APIC_BASE, base | APIC_BASE_EN);
        }
        if mode() == Mode::X2Apic && base & APIC_BASE_EXTD == 0 {
            wrmsr(IA32_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);
        }
    }
    write(reg::TPR, 0);
    write(
        reg::LVT_TIMER,
        LVT_MASKED | u32::from(crate::irq::TIMER_VECTOR),
    );
    write(reg::LVT_ERROR, u32::from(crate::irq::ERROR_VECTOR));
    // LINT0 carries ExtINT from the (now masked) PIC: mask it. LINT1 stays NMI.
    write(reg::LVT_LINT0, LVT_MASKED);
    write(reg::ESR, 0);
    write(reg::ESR, 0);
    write(reg::SVR, 0x100 | u32::from(crate::irq::SPURIOUS_VECTOR));
    eoi();
}

/// Sends an IPI. `dest` is an APIC ID (ignored with a shorthand).
pub fn send_ipi(
    dest: u32,
    vector: u8,
    delivery: Delivery,
    shorthand: Shorthand,
) -> Result<(), ApicError> {
    let low = u32::from(vector) | delivery as u32 | shorthand as u32;
    match mode() {
        Mode::X2Apic => {
            // WRMSR to x2APIC registers is not serializing: make earlier stores (e.g. a
            // queued job, trampoline fields) visible before the IPI can be acted on.
            // SAFETY: MFENCE has no other effect; the ICR value is a valid IPI command.
            unsafe {
                core::arch::asm!("mfence", options(nostack, preserves_flags));
                wrmsr(0x830, (u64::from(dest) << 32) | u64::from(low));
            }
            Ok(())
        }
        Mode::XApic => {
            if dest > 0xff && shorthand == Shorthand::None {
                return Err(ApicError::DestinationTooWide(dest));
            }
            wait_icr_idle()?;
            write(reg::ICR_HIGH, dest << 24);
            write(reg::ICR_LOW, low);
            wait_icr_idle()
        }
        Mode::Off => Err(ApicError::NotInitialized),
    }
}

fn wait_icr_idle() -> Result<(), ApicError> {
    let d = Deadline::after_us(10_000);
    while read(reg::ICR_LOW) & ICR_SEND_PENDING != 0 {
        if d.expired() {
            return Err(ApicError::IcrBusy);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Sends a fixed-vector IPI to `dest`.
pub fn send_fixed(dest: u32, vector: u8) -> Result<(), ApicError> {
    send_ipi(dest, vector, Delivery::Fixed, Shorthand::None)
}

/// NMIs every other CPU (fatal-error path: they park in the NMI handler).
pub fn stop_other_cpus() {
    if mode() != Mode::Off && super::percpu::cpu_count() > 1 {
        let _ = send_ipi(0, 0, Delivery::Nmi, Shorthand::AllExcludingSelf);
    }
}

/// Reads and clears the error status register.
pub fn take_error_status() -> u32 {
    write(reg::ESR, 0);
    read(reg::ESR)
}

/// Local APIC version register (version in bits 7:0, max LVT in 23:16).
pub fn version() -> u32 {
    read(reg::VERSION)
}
