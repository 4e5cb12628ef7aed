//! Trap entry: 256 assembly stubs, the saved register frame, and exception handling.
//!
//! Each stub pushes a dummy error code where the CPU pushes none, then its vector, and
//! jumps to a common path that saves all general-purpose registers and calls
//! [`trap_dispatch`] with a pointer to the [`TrapFrame`]. Stubs are 16 bytes apart, so
//! the address of stub `v` is `trap_stubs + 16 * v`.
//!
//! Exceptions: `#BP` is counted and resumed; a fault at an instruction listed in the
//! exception-fixup table resumes at its fixup (see [`super::fault`]); anything else is
//! fatal: a full report (vector, error code, RIP, CR2, registers, CPU, backtrace) and a
//! failed run.

use core::fmt;
use core::sync::atomic::Ordering;

use super::percpu;

/// Error-code-pushing exceptions: 8, 10–14, 17, 21, 29, 30.
pub const ERROR_CODE_VECTORS: u32 = 0x6022_7d00;

core::arch::global_asm!(
    r#"
    .section .text.trap, "ax"
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec >= 0x30 && vec <= 0xef
    // Device vectors: the vector alone, then the entry `IRQ_ENTRY` names (`irq_common` or,
    // with SMAP, `irq_common_clac`).
    pushq $vec
    jmp *IRQ_ENTRY(%rip)
    .else
    .if vec < 32
    .if ((0x60227d00 >> vec) & 1) == 0
    pushq $0
    .endif
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .endif
    .set vec, vec + 1
    .endr

    // Device vectors (0x30-0xef, `irq::FIRST_ALLOCATABLE..=LAST_ALLOCATABLE`): never an
    // exception and never a reason for the scheduler to look (`trap_dispatch` leaves ring 3
    // only for the timer, call and reschedule vectors), so only the registers the Rust ABI
    // lets `irq_entry` clobber are saved, and the return is always IRETQ to the interrupted
    // code. Stack: the CPU aligned RSP to 16 before pushing its 5-word frame (Intel SDM
    // Vol. 3A 6.14.2), the stub pushed the vector, 9 registers and 8 bytes of padding make
    // the call 16-byte aligned. RFLAGS.AC: CLAC where SMAP is on (a STAC window of a checked
    // copy, or ring 3, may have left it set); without SMAP, AC has no effect at CPL 0.
    // DF: clear at CPL 0 always (the Rust ABI), so CLD only for ring 3. No NMI-window check:
    // these interrupts are maskable, and the SYSCALL/exit windows run with IF clear.
    .balign 16
    .global irq_common_clac
irq_common_clac:
    clac
    .global irq_common
irq_common:
    testb $3, 16(%rsp)
    jz 1f
    swapgs
    cld
1:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movl 72(%rsp), %edi
    subq $8, %rsp
    call irq_entry
    addq $8, %rsp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $8, %rsp
    testb $3, 8(%rsp)
    jz 2f
    swapgs
2:
    iretq

    .balign 16
trap_common:
    // From ring 3 (saved CS RPL 3): the kernel's GS first (arch::user).
    testb $3, 24(%rsp)
    jz 1f
    swapgs
1:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    movq %rsp, %rbx
    // NMI, #DF, #MC from ring 0 may land between SYSCALL and its SWAPGS or between the exit
    // SWAPGS and SYSRETQ/IRETQ, where GS is the user's (base 0, always: arch::user). Then
    // swap here and back on the way out (r12, saved above, says so).
    xorl %r12d, %r12d
    movq 120(%rsp), %rax
    cmpq $2, %rax
    je 3f
    cmpq $8, %rax
    je 3f
    cmpq $18, %rax
    jne 4f
3:
    testb $3, 144(%rsp)
    jnz 4f
    movl $0xC0000101, %ecx
    rdmsr
    orl %edx, %eax
    jnz 4f
    swapgs
    movl $1, %r12d
4:
    andq $-16, %rsp
    cld
    // Event delivery leaves RFLAGS.AC as it was: clear it, or SMAP would be off here.
    pushfq
    andq $~0x40000, (%rsp)
    popfq
    call trap_dispatch
    // Non-zero: a ring-3 trap the scheduler must see (registers saved by the dispatcher):
    // leave this stack for the parked scheduler loop.
    testq %rax, %rax
    jnz user_return_to_kernel
    movq %rbx, %rsp
    testl %r12d, %r12d
    jz 5f
    swapgs
5:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    testb $3, 8(%rsp)
    jz 2f
    swapgs
2:
    iretq
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static trap_stubs: u8;
    fn irq_common();
    fn irq_common_clac();
}

/// The device vectors' common entry (read by every device-vector stub's indirect jump):
/// `irq_common`, or `irq_common_clac` once the BSP found SMAP ([`use_clac`]).
#[unsafe(no_mangle)]
static IRQ_ENTRY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Points the device vectors at `irq_common` (BSP, before the IDT is loaded).
pub fn init_irq_entry() {
    IRQ_ENTRY.store(irq_common as *const () as u64, Ordering::Release);
}

/// The CPUs have SMAP (CLAC is defined whatever CR4.SMAP says: Intel SDM Vol. 2A CLAC):
/// device interrupts clear RFLAGS.AC on entry. Called by every CPU that turns SMAP on, before
/// it runs ring 3 or a checked copy (idempotent; CPUID is the same on every CPU).
pub fn use_clac() {
    IRQ_ENTRY.store(irq_common_clac as *const () as u64, Ordering::Release);
}

/// Rust side of the device-vector entry (`irq_common`): dispatch, EOI.
///
/// # Safety
/// Called only by `irq_common`, with interrupts disabled, with the vector its stub pushed.
#[unsafe(no_mangle)]
unsafe extern "C" fn irq_entry(vector: u32) {
    crate::irq::dispatch_device(percpu::current_in_irq(), vector as u8);
}

/// Address of the entry stub of `vector`.
pub fn stub_address(vector: u8) -> u64 {
    &raw const trap_stubs as u64 + 16 * vector as u64
}

/// Registers saved on trap entry, in memory order (lowest address first).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number pushed by the stub.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Mnemonic and name of an exception vector.
pub fn exception_name(v: u8) -> (&'static str, &'static str) {
    match v {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("#MF9", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        _ => ("#??", "reserved"),
    }
}

fn read_cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Rust side of the trap entry. Returns non-zero when a trap from ring 3 goes to the
/// scheduler loop (the registers are saved in the thread's block, `arch::user`): every
/// exception but NMI/#DF/#MC, and the interrupts after which the scheduler must look
/// (timer, cross-CPU call, reschedule/shootdown IPI).
///
/// # Safety
/// Called only by `trap_common` with a pointer to the frame it saved.
#[unsafe(no_mangle)]
unsafe extern "C" fn trap_dispatch(frame: *mut TrapFrame) -> u64 {
    // SAFETY: `trap_common` passes the frame it just pushed on this stack.
    let frame = unsafe { &mut *frame };
    let cpu = percpu::current();
    // Only this CPU changes its depth, and a nested trap restores it before returning:
    // plain load + store (no locked instruction on every interrupt).
    let depth = cpu.trap_depth.load(Ordering::Relaxed);
    cpu.trap_depth.store(depth + 1, Ordering::Relaxed);
    let from_user = frame.cs & 3 == 3;
    let mut leave = 0;
    if frame.vector < 32 {
        if from_user && !matches!(frame.vector, 2 | 8 | 18) {
            let addr = if frame.vector == 14 { read_cr2() } else { 0 };
            super::user::save_trap(frame, super::user::Exit::Exception, addr);
            leave = 1;
        } else {
            handle_exception(frame, depth);
        }
    } else {
        crate::irq::dispatch(frame);
        let v = frame.vector as u8;
        if from_user
            && matches!(
                v,
                crate::irq::TIMER_VECTOR | crate::irq::CALL_VECTOR | crate::irq::SCHED_VECTOR
            )
        {
            super::user::save_trap(frame, super::user::Exit::Interrupt, 0);
            leave = 1;
        }
    }
    cpu.trap_depth.store(depth, Ordering::Relaxed);
    leave
}

/// NMIs handled (all CPUs).
static NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// NMIs handled so far (kernel tests).
#[cfg(feature = "ktest")]
pub fn nmis() -> u64 {
    NMIS.load(Ordering::Relaxed)
}

fn handle_exception(frame: &mut TrapFrame, depth: u32) {
    let v = frame.vector as u8;
    let cpu = percpu::current();
    match v {
        3 => {
            cpu.breakpoints.fetch_add(1, Ordering::Relaxed);
            log::debug!("breakpoint at {:#x}", frame.rip);
            return;
        }
        2 => {
            NMIS.fetch_add(1, Ordering::Relaxed);
            if crate::fail::stopping() {
                super::halt_forever();
            }
            log::warn!("NMI at {:#x}", frame.rip);
            return;
        }
        // Aborts are never resumed.
        8 | 18 => {}
        _ => {
            if let Some(fixup) = super::fault::fixup_for(frame.rip) {
                let addr = if v == 14 { read_cr2() } else { 0 };
                cpu.fault.vector.store(v as u64, Ordering::Relaxed);
                cpu.fault
                    .error_code
                    .store(frame.error_code, Ordering::Relaxed);
                cpu.fault.address.store(addr, Ordering::Relaxed);
                cpu.fault.rip.store(frame.rip, Ordering::Relaxed);
                frame.rip = fixup;
                return;
            }
        }
    }
    fatal_exception(frame, depth);
}

struct PfErr(u64);

impl fmt::Display for PfErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(
            f,
            "{} {} {}{}{}{}",
            if e & 1 != 0 {
                "protection-violation"
            } else {
                "not-present"
            },
            if e & 2 != 0 { "write" } else { "read" },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { " reserved-bit" } else { "" },
            if e & 16 != 0 {
                " instruction-fetch"
            } else {
                ""
            },
            if e & (1 << 15) != 0 { " SGX" } else { "" },
        )
    }
}

fn fatal_exception(frame: &TrapFrame, depth: u32) -> ! {
    let v = frame.vector as u8;
    let (mn, name) = exception_name(v);
    let cpu = percpu::current();
    if !crate::fail::begin() {
        super::halt_forever();
    }
    if depth > 2 {
        // Faulting while reporting a fault: say the minimum and stop.
        crate::println!(
            "\nEXCEPTION {mn} (vector {v}) while handling an exception on CPU {}",
            cpu.index()
        );
        crate::fail::finish(format_args!("nested exception"));
    }
    let g = crate::console::lock();
    let p = |args: fmt::Arguments<'_>| crate::console::print_locked(&g, args);
    p(format_args!(
        "\nEXCEPTION: {mn} {name} (vector {v}) on CPU {} (APIC ID {})\n",
        cpu.index(),
        cpu.apic_id()
    ));
    if (ERROR_CODE_VECTORS >> v.min(31)) & 1 == 1 && v < 32 {
        p(format_args!("  error code: {:#x}", frame.error_code));
        if v == 14 {
            p(format_args!(" ({})", PfErr(frame.error_code)));
        }
        p(format_args!("\n"));
    }
    let cr2 = read_cr2();
    let cr0 = x86_64::registers::control::Cr0::read_raw();
    let cr3 = x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64();
    let cr4 = x86_64::registers::control::Cr4::read_raw();
    p(format_args!(
        "  RIP {:#018x}  CS {:#06x}  RFLAGS {:#010x}\n  RSP {:#018x}  SS {:#06x}\n",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    ));
    p(format_args!(
        "  CR0 {cr0:#010x}  CR2 {cr2:#018x}  CR3 {cr3:#018x}  CR4 {cr4:#010x}\n"
    ));
    // A #PF on a guard page cannot be delivered on the overflowed stack: it arrives as #DF
    // (with CR2 still the guard address), or as #PF if it happened on another stack.
    if matches!(v, 8 | 14)
        && let Some((owner, what)) = crate::mm::stacks::guard_page_owner(cr2)
    {
        p(format_args!(
            "  stack overflow: CR2 is in the guard page of CPU {owner}'s {what}\n"
        ));
    }
    p(format_args!(
        "  RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}\n",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    ));
    p(format_args!(
        "  RSI {:#018x} RDI {:#018x} RBP {:#018x} R8  {:#018x}\n",
        frame.rsi, frame.rdi, frame.rbp, frame.r8
    ));
    p(format_args!(
        "  R9  {:#018x} R10 {:#018x} R11 {:#018x} R12 {:#018x}\n",
        frame.r9, frame.r10, frame.r11, frame.r12
    ));
    p(format_args!(
        "  R13 {:#018x} R14 {:#018x} R15 {:#018x}\n",
        frame.r13, frame.r14, frame.r15
    ));
    p(format_args!("  backtrace: {:#x}", frame.rip));
    for ret in super::fault::backtrace(frame.rbp, 16) {
        p(format_args!(" {ret:#x}"));
    }
    p(format_args!("\n"));
    drop(g);
    crate::fail::finish(format_args!(
        "exception {mn} {name} at {:#x} on CPU {}",
        frame.rip,
        cpu.index()
    ));
}
