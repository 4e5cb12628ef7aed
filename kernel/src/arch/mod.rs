//! x86-64 specifics: CPU features, per-CPU data, GDT/TSS, IDT and traps, exception
//! fixups, local APIC, SMP bring-up and cross-CPU calls.

pub mod apic;
pub mod fault;
pub mod gdt;
pub mod idt;
pub mod ioapic;
// Under concurrent rewrite (per-CPU state, SMP calls, traps): until the second phase of the
// hardware-access conversion they keep dead code allowed outside the ktest flavour and the
// workspace lints that still fire in them.
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
#[allow(
    clippy::borrow_as_ptr,
    clippy::ptr_cast_constness,
    clippy::ref_as_ptr,
    clippy::semicolon_if_nothing_returned
)]
pub mod percpu;
#[cfg_attr(not(feature = "ktest"), allow(dead_code, unused_imports))]
#[allow(clippy::ref_as_ptr)]
pub mod smp;
#[allow(clippy::cast_lossless)]
pub mod trap;
pub mod user;

use core::arch::x86_64::{__cpuid, __cpuid_count};
use spin::Once;

/// CPU features the kernel cares about (from CPUID on the BSP).
#[derive(Debug, Clone, Copy)]
pub struct CpuFeatures {
    /// Vendor string.
    pub vendor: [u8; 12],
    /// CPUID.1:ECX.x2APIC\[21\].
    pub x2apic: bool,
    /// CPUID.1:ECX.CMPXCHG16B\[13\].
    pub cx16: bool,
    /// CPUID.80000001H:EDX.NX\[20\].
    pub nx: bool,
    /// CPUID.80000001H:EDX.Page1GB\[26\].
    pub page_1g: bool,
    /// CPUID.80000007H:EDX.InvariantTSC\[8\].
    pub invariant_tsc: bool,
    /// CPUID.1:ECX.TSC-Deadline\[24\].
    pub tsc_deadline: bool,
    /// CPUID.1:ECX.hypervisor\[31\].
    pub hypervisor: bool,
    /// CPUID.(7,0):ECX.MOVDIRI\[27\].
    pub movdiri: bool,
    /// CPUID.(7,0):ECX.MOVDIR64B\[28\].
    pub movdir64b: bool,
    /// CPUID.(7,0):ECX.ENQCMD\[29\].
    pub enqcmd: bool,
    /// CPUID.15H: TSC/crystal ratio and crystal Hz (0 when not enumerated).
    pub tsc_ratio: (u32, u32, u32),
    /// CPUID.16H:EAX base frequency in MHz (0 when not enumerated).
    pub base_mhz: u32,
}

static FEATURES: Once<CpuFeatures> = Once::new();

fn detect() -> CpuFeatures {
    let l0 = __cpuid(0);
    let max = l0.eax;
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    vendor[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
    let l1 = __cpuid(1);
    let l7 = if max >= 7 {
        __cpuid_count(7, 0)
    } else {
        __cpuid(0)
    };
    let ext_max = __cpuid(0x8000_0000).eax;
    let e1 = if ext_max >= 0x8000_0001 {
        __cpuid(0x8000_0001).edx
    } else {
        0
    };
    let e7 = if ext_max >= 0x8000_0007 {
        __cpuid(0x8000_0007).edx
    } else {
        0
    };
    let l15 = if max >= 0x15 {
        __cpuid(0x15)
    } else {
        __cpuid(0)
    };
    let l16 = if max >= 0x16 { __cpuid(0x16).eax } else { 0 };
    CpuFeatures {
        vendor,
        x2apic: l1.ecx & (1 << 21) != 0,
        cx16: l1.ecx & (1 << 13) != 0,
        nx: e1 & (1 << 20) != 0,
        page_1g: e1 & (1 << 26) != 0,
        invariant_tsc: e7 & (1 << 8) != 0,
        tsc_deadline: l1.ecx & (1 << 24) != 0,
        hypervisor: l1.ecx & (1 << 31) != 0,
        movdiri: max >= 7 && l7.ecx & (1 << 27) != 0,
        movdir64b: max >= 7 && l7.ecx & (1 << 28) != 0,
        enqcmd: max >= 7 && l7.ecx & (1 << 29) != 0,
        tsc_ratio: if max >= 0x15 {
            (l15.eax, l15.ebx, l15.ecx)
        } else {
            (0, 0, 0)
        },
        base_mhz: l16 & 0xffff,
    }
}

/// The BSP's CPU features.
pub fn features() -> &'static CpuFeatures {
    FEATURES.call_once(detect)
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: RDTSC has no memory effects; CR4.TSD is never set by this kernel.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (otherwise #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid and not break kernel invariants.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
}

/// Continues on the stack whose top is `top` by calling `f` there; the current stack is
/// abandoned.
///
/// # Safety
///
/// `[top - n, top)` must be mapped, writable memory owned by this CPU for as long as `f`
/// runs (a stack of [`crate::mm::stacks`]), and nothing may still refer to data on the
/// current stack once `f` runs (it is never returned to).
pub unsafe fn switch_stack(top: u64, f: extern "C" fn() -> !) -> ! {
    // SAFETY: the caller guarantees the new stack; `top` is 16-byte aligned (page
    // aligned), so `f` starts with the ABI's alignment after the `call`. A zero RBP ends
    // backtraces there.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            top = in(reg) top,
            f = in(reg) f,
            options(noreturn),
        )
    }
}

/// Stops this CPU for good (interrupts off, `hlt` in a loop; NMIs return to the loop).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
