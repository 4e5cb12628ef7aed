//! Recoverable faults: an exception-fixup table in the style of Linux's `__ex_table`.
//!
//! An instruction that may fault is emitted together with an entry
//! `(faulting instruction, resume address)` in the `.ex_table` section. When that
//! instruction raises a fault (not an abort), the trap handler records the fault in the
//! CPU's [`FaultSlot`](super::percpu::FaultSlot) and resumes at the fixup instead of
//! failing the run. [`probe_asm!`](crate::probe_asm) wraps any single instruction this
//! way and returns `Result<(), Fault>`; tests use it to check that an instruction raises
//! #GP/#PF/#UD, e.g.
//!
//! ```ignore
//! // SAFETY: the instruction only reads `p`.
//! let r = unsafe { crate::probe_asm!("mov {t}, qword ptr [{p}]", p = in(reg) p, t = out(reg) _) };
//! assert!(matches!(r, Err(f) if f.vector == 14));
//! ```

use core::sync::atomic::Ordering;

use super::percpu;

/// A fault taken under an exception fixup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector (13 = #GP, 14 = #PF, 6 = #UD, …).
    pub vector: u8,
    /// Error code pushed by the CPU (0 if none).
    pub error_code: u64,
    /// CR2 for #PF, else 0.
    pub address: u64,
    /// Address of the faulting instruction.
    pub rip: u64,
}

impl Fault {
    /// #PF.
    pub fn is_page_fault(&self) -> bool {
        self.vector == 14
    }
    /// #GP.
    #[cfg(feature = "ktest")]
    pub fn is_general_protection(&self) -> bool {
        self.vector == 13
    }
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (mn, name) = super::trap::exception_name(self.vector);
        write!(
            f,
            "{mn} {name} at {:#x} (error code {:#x}",
            self.rip, self.error_code
        )?;
        if self.is_page_fault() {
            write!(f, ", address {:#x}", self.address)?;
        }
        write!(f, ")")
    }
}

#[repr(C)]
struct ExEntry {
    insn: u64,
    fixup: u64,
}

unsafe extern "C" {
    static __ex_table_start: u8;
    static __ex_table_end: u8;
}

fn table() -> &'static [ExEntry] {
    // SAFETY: the linker script brackets `.ex_table` with these symbols; entries are
    // pairs of 8-byte addresses emitted by `probe_asm!` with 8-byte alignment.
    unsafe {
        let s = (&raw const __ex_table_start).cast::<ExEntry>();
        let e = &raw const __ex_table_end;
        core::slice::from_raw_parts(
            s,
            (e as usize - s as usize) / core::mem::size_of::<ExEntry>(),
        )
    }
}

/// The resume address for a fault at `rip`, if `rip` is a registered instruction.
pub fn fixup_for(rip: u64) -> Option<u64> {
    table().iter().find(|e| e.insn == rip).map(|e| e.fixup)
}

/// Number of registered fixup sites (for tests).
#[cfg(feature = "ktest")]
pub fn fixup_sites() -> usize {
    table().len()
}

/// The fault recorded by the last fixup on this CPU. Used by `probe_asm!`.
#[doc(hidden)]
pub fn take_fault() -> Fault {
    let s = &percpu::current().fault;
    Fault {
        vector: s.vector.load(Ordering::Relaxed) as u8,
        error_code: s.error_code.load(Ordering::Relaxed),
        address: s.address.load(Ordering::Relaxed),
        rip: s.rip.load(Ordering::Relaxed),
    }
}

/// Executes one instruction under an exception fixup.
///
/// Expands to an `asm!` block (so it must be used inside `unsafe`) evaluating to
/// `Result<(), Fault>`: `Ok` if the instruction completed, `Err` with the recorded
/// fault otherwise. Output operands are unspecified after a fault. Labels `2:` and `3:`
/// are used by the macro.
#[macro_export]
macro_rules! probe_asm {
    ($insn:literal $(, $($operands:tt)*)?) => {{
        let __ok: u64;
        core::arch::asm!(
            "xor {__ok:e}, {__ok:e}",
            concat!("2: ", $insn),
            "mov {__ok:e}, 1",
            "3:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            __ok = out(reg) __ok,
            $($($operands)*)?
        );
        if __ok == 1 { Ok(()) } else { Err($crate::arch::fault::take_fault()) }
    }};
}

/// Reads a `u64` at `addr`, returning the fault instead of failing the run.
pub fn probe_read_u64(addr: u64) -> Result<u64, Fault> {
    let v: u64;
    // SAFETY: a read whose faults are caught by the fixup; no Rust reference is formed.
    let r = unsafe {
        crate::probe_asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack))
    };
    r.map(|()| v)
}

/// Reads a `u8` at `addr`, returning the fault instead of failing the run.
#[cfg(feature = "ktest")]
pub fn probe_read_u8(addr: u64) -> Result<u8, Fault> {
    let v: u32;
    // SAFETY: as in `probe_read_u64`.
    let r = unsafe {
        crate::probe_asm!("movzx {v:e}, byte ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack))
    };
    r.map(|()| v as u8)
}

/// Writes a `u64` at `addr`, returning the fault instead of failing the run.
///
/// # Safety
/// If the write succeeds it modifies memory: `addr` must not be memory that Rust code
/// relies on being unchanged.
#[cfg(feature = "ktest")]
pub unsafe fn probe_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the effect of a successful write; faults are caught.
    unsafe {
        crate::probe_asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) value, options(nostack))
    }
}

/// Return addresses found by walking the frame-pointer chain from `rbp` (the kernel is
/// built with frame pointers). Every read is probed, so a corrupt chain ends the walk.
pub fn backtrace(mut rbp: u64, max: usize) -> impl Iterator<Item = u64> {
    let mut n = 0;
    core::iter::from_fn(move || {
        if n >= max || rbp == 0 || !rbp.is_multiple_of(8) {
            return None;
        }
        let next = probe_read_u64(rbp).ok()?;
        let ret = probe_read_u64(rbp + 8).ok()?;
        if ret == 0 || next <= rbp {
            n = max;
            return (ret != 0).then_some(ret);
        }
        rbp = next;
        n += 1;
        Some(ret)
    })
}
