//! Ring 3: the per-CPU setup (SYSCALL MSRs, CR4.SMEP/SMAP/UMIP, TSS.RSP0) and the two ways
//! between the rings.
//!
//! Model ("user context as a call"): a CPU's scheduler loop calls [`enter_user`] with a
//! thread's [`UserRegs`]; it returns when the CPU leaves ring 3 for the kernel's attention
//! — a `syscall`, an exception, or an interrupt after which the scheduler must look (timer
//! tick, reschedule/shootdown IPI, cross-CPU call) — with the user registers saved in that
//! block and [`UserRegs::exit`] saying why. Interrupts that need nothing from the scheduler
//! return straight to ring 3 (IRETQ). Kernel code is never preempted; no kernel stack is
//! kept per thread: the loop's stack is parked (callee-saved registers pushed, RSP in
//! `PerCpu::user_kernel_rsp`) while ring 3 runs.
//!
//! GS: while ring 3 runs, IA32_KERNEL_GS_BASE holds the `PerCpu` pointer and GS base is the
//! user's (always 0: FSGSBASE stays off and the user data selector has base 0). Each
//! ring-3→0 transition executes exactly one SWAPGS before its first `%gs:` access
//! (`syscall_entry`, and `trap_common` when the saved CS has RPL 3); each 0→3 exit one
//! SWAPGS right before SYSRETQ/IRETQ, with interrupts off (Intel SDM Vol. 2B SWAPGS).
//!
//! SYSCALL (Intel SDM Vol. 2B SYSCALL/SYSRET): STAR = user base 0x2b << 48 | kernel CS
//! 0x08 << 32, LSTAR = `syscall_entry`, CSTAR = the same (unreachable: there is no 32-bit
//! user code segment), FMASK = 0x257FD5 (CF PF AF ZF SF TF IF DF OF IOPL NT RF AC ID, as
//! Linux): IF because the first instructions run on the user stack, DF for the ABI, AC so
//! that SMAP is on in the kernel. SYSRETQ is used only for a RIP below 2^47 (the top user
//! page is never mapped, so `syscall` never saves a non-canonical RCX; CVE-2012-0217),
//! IRETQ otherwise and after every exception or interrupt.

use core::sync::atomic::{AtomicBool, Ordering};

use super::percpu;

const IA32_EFER: u32 = 0xC000_0080;
const IA32_STAR: u32 = 0xC000_0081;
const IA32_LSTAR: u32 = 0xC000_0082;
const IA32_CSTAR: u32 = 0xC000_0083;
const IA32_FMASK: u32 = 0xC000_0084;
const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// IA32_PASID (Intel SDM Vol. 4, MSR 0xD93; exists iff CPUID.(7,0):ECX.ENQCMD[29]): bits
/// 19:0 the PASID ENQCMD puts in its command, bit 31 valid (ENQCMD #GPs while it is 0).
const IA32_PASID: u32 = 0xD93;
/// IA32_PASID bit 31: the PASID field is valid.
pub const PASID_VALID: u64 = 1 << 31;
const EFER_SCE: u64 = 1;
/// RFLAGS bits SYSCALL clears (see the module documentation).
pub const FMASK: u64 = 0x0025_7fd5;
/// RFLAGS bits a user thread may hold: CF PF AF ZF SF DF OF, AC, ID (IF and bit 1 are
/// forced on; TF, IOPL, NT, RF, VM never).
const USER_RFLAGS: u64 = 0x0cd5 | (1 << 18) | (1 << 21);
const RFLAGS_IF: u64 = 1 << 9;

/// Size of each CPU's ring-3 entry stack (TSS.RSP0).
const ENTRY_STACK: u64 = 16 * 1024;

/// Why the CPU left ring 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u64)]
pub enum Exit {
    /// Not run yet.
    #[default]
    None = 0,
    /// `syscall`.
    Syscall = 1,
    /// An exception (vector, error code, address in [`UserRegs`]).
    Exception = 2,
    /// An interrupt the scheduler must see (its vector in [`UserRegs::vector`]).
    Interrupt = 3,
}

/// A user thread's registers, saved when it leaves ring 3 and loaded when it enters.
/// Offsets are used by the assembly below (checked at compile time).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub rsp: u64,
    /// Why it left ring 3 last.
    pub exit: Exit,
    /// Exception or interrupt vector.
    pub vector: u64,
    /// Exception error code.
    pub error_code: u64,
    /// CR2 of a #PF.
    pub address: u64,
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(UserRegs, rax) == 0);
    assert!(offset_of!(UserRegs, rcx) == 16);
    assert!(offset_of!(UserRegs, r11) == 80);
    assert!(offset_of!(UserRegs, rip) == 120);
    assert!(offset_of!(UserRegs, rflags) == 128);
    assert!(offset_of!(UserRegs, rsp) == 136);
    assert!(offset_of!(UserRegs, exit) == 144);
};

impl UserRegs {
    /// A new thread's registers: everything zero but the entry, stack and first argument.
    pub fn new(entry: u64, stack: u64, arg: u64) -> Self {
        Self {
            rip: entry,
            rsp: stack,
            rdi: arg,
            rflags: RFLAGS_IF | 2,
            ..Self::default()
        }
    }
}

core::arch::global_asm!(
    r#"
    .section .text.user, "ax"
    .balign 16
    .global syscall_entry
syscall_entry:
    swapgs
    movq %rsp, %gs:24
    movq %gs:16, %rsp
    movq %rax, 0(%rsp)
    movq %rbx, 8(%rsp)
    movq %rcx, 16(%rsp)
    movq %rdx, 24(%rsp)
    movq %rsi, 32(%rsp)
    movq %rdi, 40(%rsp)
    movq %rbp, 48(%rsp)
    movq %r8, 56(%rsp)
    movq %r9, 64(%rsp)
    movq %r10, 72(%rsp)
    movq %r11, 80(%rsp)
    movq %r12, 88(%rsp)
    movq %r13, 96(%rsp)
    movq %r14, 104(%rsp)
    movq %r15, 112(%rsp)
    movq %rcx, 120(%rsp)
    movq %r11, 128(%rsp)
    movq %gs:24, %rax
    movq %rax, 136(%rsp)
    movq $1, 144(%rsp)
    .global user_return_to_kernel
user_return_to_kernel:
    movq %gs:8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

    // enter_user(regs: *mut UserRegs /* rdi */, sysret: u64 /* rsi */), IF = 0.
    .balign 16
    .global enter_user_asm
enter_user_asm:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %gs:8
    movq %rdi, %gs:16
    testq %rsi, %rsi
    jnz 2f
    pushq ${user_ds}
    pushq 136(%rdi)
    pushq 128(%rdi)
    pushq ${user_cs}
    pushq 120(%rdi)
    movq 0(%rdi), %rax
    movq 8(%rdi), %rbx
    movq 16(%rdi), %rcx
    movq 24(%rdi), %rdx
    movq 32(%rdi), %rsi
    movq 48(%rdi), %rbp
    movq 56(%rdi), %r8
    movq 64(%rdi), %r9
    movq 72(%rdi), %r10
    movq 80(%rdi), %r11
    movq 88(%rdi), %r12
    movq 96(%rdi), %r13
    movq 104(%rdi), %r14
    movq 112(%rdi), %r15
    movq 40(%rdi), %rdi
    swapgs
    iretq
2:
    movq 0(%rdi), %rax
    movq 8(%rdi), %rbx
    movq 120(%rdi), %rcx
    movq 24(%rdi), %rdx
    movq 32(%rdi), %rsi
    movq 48(%rdi), %rbp
    movq 56(%rdi), %r8
    movq 64(%rdi), %r9
    movq 72(%rdi), %r10
    movq 128(%rdi), %r11
    movq 88(%rdi), %r12
    movq 96(%rdi), %r13
    movq 104(%rdi), %r14
    movq 112(%rdi), %r15
    movq 136(%rdi), %rsp
    movq 40(%rdi), %rdi
    swapgs
    sysretq
"#,
    user_ds = const super::gdt::USER_DS,
    user_cs = const super::gdt::USER_CS,
    options(att_syntax)
);

unsafe extern "C" {
    fn syscall_entry();
    fn enter_user_asm(regs: *mut UserRegs, sysret: u64);
}

/// Runs `regs` in ring 3 until the CPU leaves it for the scheduler (see the module
/// documentation); `regs.exit` says why. Interrupts are off on return.
///
/// The caller has loaded the thread's address space (CR3) and keeps `regs` alive and
/// unaliased until this returns.
pub fn enter_user(regs: &mut UserRegs) {
    regs.rflags = (regs.rflags & USER_RFLAGS) | RFLAGS_IF | 2;
    // SYSRETQ only straight after a syscall and to a canonical lower-half RIP (always
    // true: RCX is the address after a `syscall` in the user half, whose top page is never
    // mapped); IRETQ restores RCX/R11 exactly otherwise.
    let sysret = regs.exit == Exit::Syscall && regs.rip < user_abi::USER_TOP;
    regs.exit = Exit::None;
    x86_64::instructions::interrupts::disable();
    // SAFETY: IF = 0 until the IRETQ/SYSRETQ; `regs` is a valid, exclusive register block
    // that the entry paths write through `%gs:16` before returning here; user CS/SS are
    // the GDT's ring-3 selectors and RFLAGS is sanitised above.
    unsafe { enter_user_asm(regs, u64::from(sysret)) };
}

/// Makes this CPU's IA32_PASID `value` (`pasid | PASID_VALID` for a process with a PASID,
/// 0 for one without: its ENQCMD then #GPs) before a thread enters ring 3. Writes the MSR
/// only when the per-CPU shadow differs (a context switch between two processes with the
/// same value, or back into the same process, costs one compare). Interrupts must be off
/// (or the caller the only one that writes the MSR on this CPU: the scheduler loop).
///
/// The MSR is the CPU's, not the thread's: the scheduler calls this on every entry to ring
/// 3 so that a thread never runs with another process's PASID (Intel SDM Vol. 2A ENQCMD:
/// the command carries IA32_PASID[19:0] as it is when ENQCMD executes).
pub fn set_ia32_pasid(value: u64) {
    let pc = percpu::current();
    if pc.ia32_pasid.load(Ordering::Relaxed) == value {
        return;
    }
    if !crate::arch::features().enqcmd {
        // No ENQCMD: the MSR does not exist and ring 3 cannot enqueue at all.
        return;
    }
    debug_assert!(value & !(PASID_VALID | 0xf_ffff) == 0);
    // SAFETY: IA32_PASID exists (CPUID ENQCMD, checked above); `value` has only bits 31 and
    // 19:0 (WRMSR #GPs on the reserved ones). The kernel never executes ENQCMD (it submits
    // with ENQCMDS, which ignores the MSR), so the value matters to ring 3 only.
    unsafe { super::wrmsr(IA32_PASID, value & (PASID_VALID | 0xf_ffff)) };
    pc.ia32_pasid.store(value, Ordering::Relaxed);
    pc.ia32_pasid_writes.fetch_add(1, Ordering::Relaxed);
}

/// This CPU's IA32_PASID as last written (its shadow).
pub fn ia32_pasid() -> u64 {
    percpu::current().ia32_pasid.load(Ordering::Relaxed)
}

/// IA32_PASID writes on CPU `cpu` so far (for tests: writes happen only on a change).
#[cfg(feature = "ktest")]
pub fn ia32_pasid_writes(cpu: usize) -> u64 {
    percpu::get(cpu).map_or(0, |c| c.ia32_pasid_writes.load(Ordering::Relaxed))
}

/// Fills the current thread's register block from a trap frame taken in ring 3 (called by
/// the trap dispatcher before it leaves for the scheduler loop).
pub(crate) fn save_trap(frame: &super::trap::TrapFrame, exit: Exit, address: u64) {
    let p = percpu::current().user_regs.load(Ordering::Relaxed) as *mut UserRegs;
    if p.is_null() {
        return;
    }
    // SAFETY: `enter_user` published this CPU's running register block in `%gs:16`; it is
    // exclusively the running thread's until `enter_user` returns, which is what follows.
    let r = unsafe { &mut *p };
    *r = UserRegs {
        rax: frame.rax,
        rbx: frame.rbx,
        rcx: frame.rcx,
        rdx: frame.rdx,
        rsi: frame.rsi,
        rdi: frame.rdi,
        rbp: frame.rbp,
        r8: frame.r8,
        r9: frame.r9,
        r10: frame.r10,
        r11: frame.r11,
        r12: frame.r12,
        r13: frame.r13,
        r14: frame.r14,
        r15: frame.r15,
        rip: frame.rip,
        rflags: frame.rflags,
        rsp: frame.rsp,
        exit,
        vector: frame.vector,
        error_code: frame.error_code,
        address,
    };
}

/// What the executing CPU protects (CR4 bits this module set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protection {
    /// CR4.SMEP (bit 20).
    pub smep: bool,
    /// CR4.SMAP (bit 21).
    pub smap: bool,
    /// CR4.UMIP (bit 11).
    pub umip: bool,
}

/// CPUID.(7,0): SMEP (EBX 7), SMAP (EBX 20), UMIP (ECX 2).
pub fn cpu_protection() -> Protection {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return Protection::default();
    }
    let l7 = __cpuid_count(7, 0);
    Protection {
        smep: l7.ebx & (1 << 7) != 0,
        smap: l7.ebx & (1 << 20) != 0,
        umip: l7.ecx & (1 << 2) != 0,
    }
}

/// Whether SMAP is on (all CPUs: the BSP's CPUID decides for every CPU, as for the other
/// features). STAC/CLAC #UD without it.
pub fn smap_on() -> bool {
    SMAP.load(Ordering::Relaxed)
}

static SMAP: AtomicBool = AtomicBool::new(false);

/// The protection bits of the executing CPU's CR4.
#[cfg(feature = "ktest")]
pub fn current_protection() -> Protection {
    let cr4 = x86_64::registers::control::Cr4::read_raw();
    Protection {
        smep: cr4 & (1 << 20) != 0,
        smap: cr4 & (1 << 21) != 0,
        umip: cr4 & (1 << 11) != 0,
    }
}

/// Per-CPU ring-3 setup, on every CPU at bring-up (after its GDT/TSS and once memory is
/// up): the entry stack in TSS.RSP0, EFER.SCE, STAR/LSTAR/CSTAR/FMASK, KERNEL_GS_BASE = 0
/// (the user's GS base), CR4.SMEP/SMAP/UMIP where CPUID has them.
pub fn init_cpu() -> Result<(), crate::mm::MmError> {
    let cpu = percpu::current_index();
    let stack =
        crate::mm::stacks::alloc_stack(ENTRY_STACK, crate::mm::stacks::StackKind::Main, cpu)?;
    if !super::gdt::set_rsp0(stack.top) {
        log::warn!("cpu{cpu}: no TSS of its own: ring 3 disabled on this CPU");
        return Ok(());
    }
    let star =
        (u64::from(super::gdt::USER_BASE_SEL) << 48) | (u64::from(super::gdt::KERNEL_CS) << 32);
    // SAFETY: architectural MSRs of every x86-64 CPU (Intel SDM Vol. 4); LSTAR/CSTAR point
    // at the entry code of this image (canonical), STAR names this GDT's selectors.
    unsafe {
        super::wrmsr(IA32_STAR, star);
        super::wrmsr(IA32_LSTAR, syscall_entry as *const () as u64);
        super::wrmsr(IA32_CSTAR, syscall_entry as *const () as u64);
        super::wrmsr(IA32_FMASK, FMASK);
        super::wrmsr(IA32_KERNEL_GS_BASE, 0);
        let efer = super::rdmsr(IA32_EFER);
        super::wrmsr(IA32_EFER, efer | EFER_SCE);
    }
    if crate::arch::features().enqcmd {
        // The shadow starts at 0: make the MSR match whatever firmware left in it.
        // SAFETY: IA32_PASID exists with ENQCMD; 0 is its initial configuration.
        unsafe { super::wrmsr(IA32_PASID, 0) };
    }
    let want = cpu_protection();
    let mut cr4 = x86_64::registers::control::Cr4::read_raw();
    if want.smep {
        cr4 |= 1 << 20;
    }
    if want.smap {
        cr4 |= 1 << 21;
    }
    if want.umip {
        cr4 |= 1 << 11;
    }
    // SAFETY: only bits CPUID reports are set; the kernel never executes or (outside the
    // checked copies, which STAC) touches user pages, and runs no UMIP instruction at CPL3.
    unsafe { x86_64::registers::control::Cr4::write_raw(cr4) };
    if want.smap {
        // Every CPU with SMAP (the same CPUID everywhere) before it can run ring 3.
        super::trap::use_clac();
    }
    if cpu == 0 {
        SMAP.store(want.smap, Ordering::Relaxed);
    }
    Ok(())
}
