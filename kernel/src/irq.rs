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
//! | 0xf0–0xfb    | unavailable (room for more system vectors)                  |
//! | 0xfc         | LAPIC timer                                                 |
//! | 0xfd         | cross-CPU call IPI                                          |
//! | 0xfe         | LAPIC error                                                 |
//! | 0xff         | LAPIC spurious                                              |
//!
//! A handler is any `Fn(&IrqContext) + Send + Sync` closure; it runs on the target CPU
//! with interrupts disabled, and the dispatcher sends the EOI after it returns.

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use klib::vectors::{CpuVectorReport, VectorError, VectorMatrix};
use spin::Once;

use crate::arch::percpu;
use crate::arch::trap::TrapFrame;
use crate::sync::IrqMutex;

/// First allocatable vector.
pub const FIRST_ALLOCATABLE: u8 = 0x30;
/// Last allocatable vector.
pub const LAST_ALLOCATABLE: u8 = 0xef;
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
pub type Handler = Arc<dyn Fn(&IrqContext) + Send + Sync>;

/// Per-CPU interrupt state (lives in [`percpu::PerCpu`]).
pub struct CpuIrq {
    handlers: IrqMutex<[Option<Handler>; 256]>,
    counts: [AtomicU64; 256],
}

impl CpuIrq {
    pub(crate) const fn new() -> Self {
        Self {
            handlers: IrqMutex::new([const { None }; 256]),
            counts: [const { AtomicU64::new(0) }; 256],
        }
    }
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
    let mut h = cpu.irq.handlers.lock();
    h[TIMER_VECTOR as usize] = Some(Arc::new(|_: &IrqContext| crate::time::on_timer_interrupt()));
    h[CALL_VECTOR as usize] = Some(Arc::new(|_: &IrqContext| crate::arch::smp::on_call_ipi()));
    h[ERROR_VECTOR as usize] = Some(Arc::new(|c: &IrqContext| {
        let esr = crate::arch::apic::take_error_status();
        log::warn!("local APIC error on CPU {}: ESR {esr:#x}", c.cpu);
    }));
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
    c.irq.handlers.lock()[vector as usize] = Some(Arc::new(handler));
    Ok(())
}

/// Frees a vector and removes its handler. A handler already running on the target CPU
/// finishes (it is reference-counted).
pub fn free_vector(cpu: usize, vector: u8) -> Result<(), IrqError> {
    let c = check_cpu(cpu)?;
    matrix()?.lock().free(cpu, vector)?;
    c.irq.handlers.lock()[vector as usize] = None;
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

/// Entry from the trap stub for vectors 32–255.
pub(crate) fn dispatch(frame: &mut TrapFrame) {
    let v = frame.vector as u8;
    let cpu = percpu::current();
    cpu.irq.counts[v as usize].fetch_add(1, Ordering::Relaxed);
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
    let h = cpu.irq.handlers.lock()[v as usize].clone();
    match h {
        Some(h) => h(&IrqContext {
            cpu: cpu.index(),
            vector: v,
        }),
        None => {
            let n = cpu.irq.counts[v as usize].load(Ordering::Relaxed);
            if n.is_power_of_two() {
                log::warn!(
                    "unhandled interrupt vector {v:#04x} on CPU {} ({n} so far)",
                    cpu.index()
                );
            }
        }
    }
    crate::arch::apic::eoi();
}
