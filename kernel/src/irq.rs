//! Interrupt vectors: the per-CPU vector matrix, per-(CPU, vector) handlers, dispatch,
//! EOI and spurious interrupts.
//!
//! Layout of each CPU's 256 vectors:
//!
//! | vectors      | use                                                         |
//! |--------------|-------------------------------------------------------------|
//! | 0x00–0x1f    | CPU exceptions                                              |
//! | 0x20–0x2f    | legacy 8259 range (PICs remapped here and masked; spurious) |
//! | 0x30–0xef    | allocatable per CPU ([`alloc_vector`])                      |
//! | 0xf0–0xfa    | unavailable (room for more system vectors)                  |
//! | 0xfb         | reschedule / TLB shootdown IPI (processes)                  |
//! | 0xfc         | LAPIC timer                                                 |
//! | 0xfd         | cross-CPU call IPI                                          |
//! | 0xfe         | LAPIC error                                                 |
//! | 0xff         | LAPIC spurious                                              |
//!
//! A handler is any `Fn(&IrqContext) + Send + Sync` closure; it runs on the target CPU
//! with interrupts disabled, and the dispatcher sends the EOI after it returns.
//!
//! Dispatch takes no lock and no reference count: each CPU has a static table of handler
//! pointers, loaded with one atomic read. Replacing or removing a handler swaps the pointer
//! and frees the old handler only after every other CPU has taken an interrupt since (an IPI
//! each, [`quiesce_handlers`]): handlers run with interrupts off and do not nest, so none
//! can still be running the old one. Per-vector counts are written only by their CPU's
//! dispatcher (plain increments).

use alloc::boxed::Box;
use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use klib::vectors::{CpuVectorReport, VectorError, VectorMatrix};
use spin::Once;

use crate::arch::percpu;
use crate::arch::trap::TrapFrame;
use crate::sync::IrqMutex;

/// First allocatable vector.
pub const FIRST_ALLOCATABLE: u8 = 0x30;
/// Last allocatable vector.
pub const LAST_ALLOCATABLE: u8 = 0xef;
/// Reschedule / TLB-shootdown IPI of the process scheduler (`crate::proc`).
pub const SCHED_VECTOR: u8 = 0xfb;
/// LAPIC timer.
pub const TIMER_VECTOR: u8 = 0xfc;
/// Cross-CPU call IPI.
pub const CALL_VECTOR: u8 = 0xfd;
/// LAPIC error interrupt.
pub const ERROR_VECTOR: u8 = 0xfe;
/// LAPIC spurious-interrupt vector (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Legacy PIC vectors (remapped, masked: only spurious IRQ 7/15 can arrive).
pub const PIC_VECTORS: core::ops::RangeInclusive<u8> = 0x20..=0x2f;

/// What a handler learns about the interrupt.
#[derive(Debug, Clone, Copy)]
pub struct IrqContext {
    /// CPU index.
    pub cpu: usize,
    /// Vector.
    pub vector: u8,
}

/// An interrupt handler.
pub type Handler = Box<dyn Fn(&IrqContext) + Send + Sync>;

/// Per-CPU interrupt state (lives in [`percpu::PerCpu`]).
pub struct CpuIrq {
    /// `Box::into_raw` of a `Box<Handler>`, or null.
    handlers: [AtomicPtr<Handler>; 256],
    /// Serializes handler replacement on this CPU's table.
    replace: IrqMutex<()>,
    counts: [AtomicU64; 256],
}

impl CpuIrq {
    pub(crate) const fn new() -> Self {
        Self {
            handlers: [const { AtomicPtr::new(ptr::null_mut()) }; 256],
            replace: IrqMutex::new(()),
            counts: [const { AtomicU64::new(0) }; 256],
        }
    }

    /// Installs `h` (or none) for `vector` and frees the previous handler once no CPU can
    /// still run it (or leaks it if that cannot be established).
    fn swap(&self, vector: u8, h: Option<Handler>) {
        let new = h.map_or(ptr::null_mut(), |h| Box::into_raw(Box::new(h)));
        let old = {
            let _g = self.replace.lock();
            self.handlers[vector as usize].swap(new, Ordering::AcqRel)
        };
        if old.is_null() {
            return;
        }
        if quiesce_handlers(core::time::Duration::from_secs(2)) {
            // SAFETY: `old` came from `Box::into_raw` above (an earlier call) and is no longer
            // in the table; every CPU took an interrupt since the swap, so no handler
            // invocation that loaded it is still running.
            drop(unsafe { Box::from_raw(old) });
        } else {
            log::warn!(
                "irq: handler of vector {vector:#04x} replaced while a CPU did not answer; leaked"
            );
        }
    }
}

/// Waits until every other online CPU has taken an interrupt (an IPI is sent to each):
/// afterwards no interrupt handler that started before the call is still running anywhere
/// but on the calling CPU. False if a CPU did not answer within `timeout`.
pub fn quiesce_handlers(timeout: core::time::Duration) -> bool {
    let me = percpu::current_index();
    let n = percpu::cpu_count();
    let deadline = crate::time::Deadline::after(timeout);
    for c in (0..n).filter(|&c| c != me) {
        let Some(pc) = percpu::get(c).filter(|p| p.is_online()) else {
            continue;
        };
        let before = pc.irq.counts[CALL_VECTOR as usize].load(Ordering::Acquire);
        if send_ipi(c, CALL_VECTOR).is_err() {
            return false;
        }
        while pc.irq.counts[CALL_VECTOR as usize].load(Ordering::Acquire) == before {
            if deadline.expired() {
                return false;
            }
            core::hint::spin_loop();
        }
    }
    true
}

/// Errors of the interrupt layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqError {
    /// From the vector matrix (exhaustion, double free, …).
    Vector(VectorError),
    /// The CPU is not online.
    NoSuchCpu(usize),
    /// The interrupt layer is not initialised yet.
    NotInitialized,
    /// Sending the IPI failed.
    Ipi(crate::arch::apic::ApicError),
}

impl fmt::Display for IrqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vector(e) => write!(f, "{e}"),
            Self::NoSuchCpu(c) => write!(f, "CPU {c} is not online"),
            Self::NotInitialized => write!(f, "interrupt vectors are not initialised"),
            Self::Ipi(e) => write!(f, "IPI failed: {e}"),
        }
    }
}

impl core::error::Error for IrqError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Vector(e) => Some(e),
            Self::Ipi(e) => Some(e),
            Self::NoSuchCpu(_) | Self::NotInitialized => None,
        }
    }
}

impl From<VectorError> for IrqError {
    fn from(e: VectorError) -> Self {
        Self::Vector(e)
    }
}

static MATRIX: Once<IrqMutex<VectorMatrix>> = Once::new();

fn matrix() -> Result<&'static IrqMutex<VectorMatrix>, IrqError> {
    MATRIX.get().ok_or(IrqError::NotInitialized)
}

/// Creates the matrix for up to `max_cpus` CPUs and reserves the system vectors.
pub fn init(max_cpus: usize) {
    MATRIX.call_once(|| {
        let mut m = VectorMatrix::new(max_cpus, FIRST_ALLOCATABLE, LAST_ALLOCATABLE);
        // System vectors are outside the allocatable range, so reserving cannot fail.
        for v in PIC_VECTORS {
            let _ = m.reserve_system(v, "legacy-pic");
        }
        let _ = m.reserve_system(TIMER_VECTOR, "lapic-timer");
        let _ = m.reserve_system(CALL_VECTOR, "ipi-call");
        let _ = m.reserve_system(ERROR_VECTOR, "lapic-error");
        let _ = m.reserve_system(SPURIOUS_VECTOR, "spurious");
        IrqMutex::new(m)
    });
}

/// Installs the kernel's handlers for the system vectors on the executing CPU.
pub fn init_cpu() {
    let cpu = percpu::current();
    let set = |v: u8, h: Handler| {
        let old = cpu.irq.handlers[v as usize].swap(Box::into_raw(Box::new(h)), Ordering::AcqRel);
        debug_assert!(old.is_null(), "system vectors are installed once");
    };
    set(
        TIMER_VECTOR,
        Box::new(|_: &IrqContext| crate::time::on_timer_interrupt()),
    );
    set(
        CALL_VECTOR,
        Box::new(|_: &IrqContext| crate::arch::smp::on_call_ipi()),
    );
    set(
        SCHED_VECTOR,
        Box::new(|_: &IrqContext| crate::proc::on_sched_ipi()),
    );
    set(
        ERROR_VECTOR,
        Box::new(|c: &IrqContext| {
            let esr = crate::arch::apic::take_error_status();
            log::warn!("local APIC error on CPU {}: ESR {esr:#x}", c.cpu);
        }),
    );
}

fn check_cpu(cpu: usize) -> Result<&'static percpu::PerCpu, IrqError> {
    percpu::get(cpu)
        .filter(|c| c.is_online())
        .ok_or(IrqError::NoSuchCpu(cpu))
}

/// Allocates the lowest free vector on `cpu` for `owner`. Exhaustion is an error.
pub fn alloc_vector(cpu: usize, owner: &str) -> Result<u8, IrqError> {
    check_cpu(cpu)?;
    Ok(matrix()?.lock().alloc(cpu, owner)?)
}

/// Allocates a specific vector on `cpu`.
pub fn alloc_specific_vector(cpu: usize, vector: u8, owner: &str) -> Result<(), IrqError> {
    check_cpu(cpu)?;
    Ok(matrix()?.lock().alloc_specific(cpu, vector, owner)?)
}

/// Allocates a vector on `cpu` and installs `handler` for it.
pub fn alloc_vector_with_handler(
    cpu: usize,
    owner: &str,
    handler: impl Fn(&IrqContext) + Send + Sync + 'static,
) -> Result<u8, IrqError> {
    let v = alloc_vector(cpu, owner)?;
    // Cannot fail: the vector was just allocated on an online CPU.
    set_handler(cpu, v, handler)?;
    Ok(v)
}

/// Installs (or replaces) the handler of an allocated vector.
pub fn set_handler(
    cpu: usize,
    vector: u8,
    handler: impl Fn(&IrqContext) + Send + Sync + 'static,
) -> Result<(), IrqError> {
    let c = check_cpu(cpu)?;
    match matrix()?.lock().slot(cpu, vector) {
        Some(klib::vectors::Slot::Allocated(_)) => {}
        _ => return Err(IrqError::Vector(VectorError::NotAllocated { cpu, vector })),
    }
    c.irq.swap(vector, Some(Box::new(handler)));
    Ok(())
}

/// Frees a vector and removes its handler. A handler already running on the target CPU
/// finishes before the handler is freed ([`quiesce_handlers`]).
pub fn free_vector(cpu: usize, vector: u8) -> Result<(), IrqError> {
    let c = check_cpu(cpu)?;
    matrix()?.lock().free(cpu, vector)?;
    c.irq.swap(vector, None);
    Ok(())
}

/// Exact vector usage of `cpu`.
pub fn report(cpu: usize) -> Result<CpuVectorReport, IrqError> {
    check_cpu(cpu)?;
    Ok(matrix()?.lock().report(cpu)?)
}

/// Prints the vector report of every online CPU.
pub fn print_report() {
    for cpu in 0..percpu::cpu_count() {
        if let Ok(r) = report(cpu) {
            log::info!("vectors: {r}");
        }
    }
}

/// Interrupts of `vector` taken on `cpu` since boot.
pub fn count(cpu: usize, vector: u8) -> u64 {
    percpu::get(cpu).map_or(0, |c| c.irq.counts[vector as usize].load(Ordering::Relaxed))
}

/// Sends a fixed IPI with `vector` to CPU `cpu`.
pub fn send_ipi(cpu: usize, vector: u8) -> Result<(), IrqError> {
    let c = check_cpu(cpu)?;
    crate::arch::apic::send_fixed(c.apic_id(), vector).map_err(IrqError::Ipi)
}

/// Entry for the device vectors ([`FIRST_ALLOCATABLE`]..=[`LAST_ALLOCATABLE`]) from their
/// own stub (`arch::trap::irq_entry`): count, run the handler, EOI. None of the checks of
/// [`dispatch`] apply (not spurious, not a PIC vector).
#[inline(always)]
pub(crate) fn dispatch_device(cpu: &percpu::PerCpu, v: u8) {
    // Only this CPU's dispatcher writes its counts (interrupts off, no nesting).
    let count = &cpu.irq.counts[v as usize];
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Release);
    let h = cpu.irq.handlers[v as usize].load(Ordering::Acquire);
    // SAFETY: as in `dispatch`.
    match unsafe { h.as_ref() } {
        Some(h) => h(&IrqContext {
            cpu: cpu.index(),
            vector: v,
        }),
        None => unhandled(cpu, v),
    }
    crate::arch::apic::eoi();
}

#[cold]
#[inline(never)]
fn unhandled(cpu: &percpu::PerCpu, v: u8) {
    let n = cpu.irq.counts[v as usize].load(Ordering::Relaxed);
    if n.is_power_of_two() {
        log::warn!(
            "unhandled interrupt vector {v:#04x} on CPU {} ({n} so far)",
            cpu.index()
        );
    }
}

/// Entry from the trap stub for the other vectors from 32 (system and PIC vectors).
pub(crate) fn dispatch(frame: &mut TrapFrame) {
    let v = frame.vector as u8;
    let cpu = percpu::current();
    // Only this CPU's dispatcher writes its counts (interrupts off, no nesting).
    let count = &cpu.irq.counts[v as usize];
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Release);
    if v == SPURIOUS_VECTOR {
        return; // no EOI for the LAPIC spurious vector
    }
    if PIC_VECTORS.contains(&v) {
        // Masked PIC: only spurious IRQ 7 / 15. IRQ 15 needs an EOI to the master.
        if v == 0x2f {
            // SAFETY: non-specific EOI to the master PIC command port.
            unsafe { x86_64::instructions::port::Port::<u8>::new(0x20).write(0x20) };
        }
        return;
    }
    let h = cpu.irq.handlers[v as usize].load(Ordering::Acquire);
    // SAFETY: a non-null entry is a live `Box<Handler>` that `CpuIrq::swap` frees only after
    // every CPU took an interrupt since removing it; this invocation started before that.
    match unsafe { h.as_ref() } {
        Some(h) => h(&IrqContext {
            cpu: cpu.index(),
            vector: v,
        }),
        None => unhandled(cpu, v),
    }
    crate::arch::apic::eoi();
}
