//! Per-CPU data, reached through the GS base.
//!
//! CPU indices are dense: the BSP is 0 and each AP takes the next index when it checks
//! in, so `0..cpu_count()` are exactly the online CPUs. GS base points at the CPU's
//! [`PerCpu`], whose first field is the index (read with one `mov %gs:0`).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::sync::IrqMutex;

/// Most CPUs the kernel brings up.
pub const MAX_CPUS: usize = 512;

const IA32_GS_BASE: u32 = 0xC000_0101;

/// What the trap handler records for an exception fixup.
#[derive(Debug, Default)]
pub struct FaultSlot {
    pub(crate) vector: AtomicU64,
    pub(crate) error_code: AtomicU64,
    pub(crate) address: AtomicU64,
    pub(crate) rip: AtomicU64,
}

/// A cross-CPU call waiting to run (see [`crate::arch::smp`]).
pub(crate) type JobFn = Box<dyn FnOnce() + Send>;

/// A queued cross-CPU call.
pub(crate) struct Job {
    pub(crate) f: IrqMutex<Option<JobFn>>,
    pub(crate) done: AtomicBool,
}

/// The per-CPU block.
#[repr(C)]
pub struct PerCpu {
    /// Must stay the first field: read through `%gs:0`.
    index: usize,
    /// Ring-3 entry (`arch::user`, fixed offsets used by its assembly): the kernel RSP to
    /// return to when the CPU leaves ring 3 (`%gs:8`), the running thread's register block
    /// (`%gs:16`), a scratch slot for the user RSP (`%gs:24`).
    pub(crate) user_kernel_rsp: AtomicU64,
    pub(crate) user_regs: AtomicU64,
    pub(crate) user_scratch: AtomicU64,
    /// This block's own address (`%gs:32`, set with the GS base): the device-interrupt entry
    /// reaches its CPU's block with one load ([`current_in_irq`]).
    this: AtomicPtr<PerCpu>,
    apic_id: AtomicU32,
    online: AtomicBool,
    /// Interrupt handlers and counters of this CPU.
    pub(crate) irq: crate::irq::CpuIrq,
    /// Queued cross-CPU calls.
    pub(crate) jobs: IrqMutex<VecDeque<Arc<Job>>>,
    /// Set when the CPU runs calls from its idle loop (APs) rather than in the IPI handler.
    pub(crate) jobs_in_idle_loop: AtomicBool,
    /// Last fault taken under an exception fixup.
    pub(crate) fault: FaultSlot,
    /// `int3` traps handled on this CPU.
    pub(crate) breakpoints: AtomicU64,
    /// LAPIC timer state of this CPU.
    pub(crate) timer: crate::time::CpuTimer,
    /// Trap nesting depth (detects faults inside the fault handler).
    pub(crate) trap_depth: AtomicU32,
    /// Shadow of this CPU's IA32_PASID MSR (`arch::user::set_ia32_pasid`; 0 = the reset
    /// value, no valid PASID).
    pub(crate) ia32_pasid: AtomicU64,
    /// WRMSRs of IA32_PASID on this CPU (the shadow changed).
    pub(crate) ia32_pasid_writes: AtomicU64,
}

impl PerCpu {
    const fn new(index: usize) -> Self {
        Self {
            index,
            user_kernel_rsp: AtomicU64::new(0),
            user_regs: AtomicU64::new(0),
            user_scratch: AtomicU64::new(0),
            this: AtomicPtr::new(core::ptr::null_mut()),
            apic_id: AtomicU32::new(u32::MAX),
            online: AtomicBool::new(false),
            irq: crate::irq::CpuIrq::new(),
            jobs: IrqMutex::new(VecDeque::new()),
            jobs_in_idle_loop: AtomicBool::new(false),
            fault: FaultSlot {
                vector: AtomicU64::new(0),
                error_code: AtomicU64::new(0),
                address: AtomicU64::new(0),
                rip: AtomicU64::new(0),
            },
            breakpoints: AtomicU64::new(0),
            timer: crate::time::CpuTimer::new(),
            trap_depth: AtomicU32::new(0),
            ia32_pasid: AtomicU64::new(0),
            ia32_pasid_writes: AtomicU64::new(0),
        }
    }

    /// Dense CPU index (BSP = 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Local APIC ID (x2APIC ID in x2APIC mode).
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }

    /// Whether the CPU finished its bring-up.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Number of `int3` traps handled on this CPU.
    pub fn breakpoints(&self) -> u64 {
        self.breakpoints.load(Ordering::Relaxed)
    }
}

const _: () = {
    assert!(core::mem::offset_of!(PerCpu, user_kernel_rsp) == 8);
    assert!(core::mem::offset_of!(PerCpu, user_regs) == 16);
    assert!(core::mem::offset_of!(PerCpu, user_scratch) == 24);
    assert!(core::mem::offset_of!(PerCpu, this) == 32);
};

static BSP: PerCpu = PerCpu::new(0);
/// Placeholder for APs between reset and getting their own block (logs show `cpu512`
/// for an AP still in bring-up).
static AP_EARLY: PerCpu = PerCpu::new(MAX_CPUS);
static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(1);
static ONLINE: AtomicUsize = AtomicUsize::new(0);

fn set_gs_base(p: &'static PerCpu) {
    p.this
        .store(p as *const PerCpu as *mut PerCpu, Ordering::Release);
    // SAFETY: IA32_GS_BASE exists on every x86-64 CPU; the block is 'static.
    unsafe { super::wrmsr(IA32_GS_BASE, p as *const PerCpu as u64) };
}

/// Installs the BSP's block. First thing on the BSP.
pub fn init_bsp() {
    CPUS[0].store(&BSP as *const PerCpu as *mut PerCpu, Ordering::Release);
    set_gs_base(&BSP);
}

/// Points GS at the bring-up placeholder (first thing on an AP, so that logging and the
/// panic/exception paths work before the AP has its own block).
pub(crate) fn enter_ap_early() {
    set_gs_base(&AP_EARLY);
}

/// Creates and installs the block of an AP that just checked in; returns its index or
/// `None` when [`MAX_CPUS`] is reached.
pub(crate) fn init_ap() -> Option<&'static PerCpu> {
    let index = NEXT_INDEX.fetch_add(1, Ordering::AcqRel);
    if index >= MAX_CPUS {
        return None;
    }
    let p: &'static PerCpu = Box::leak(Box::new(PerCpu::new(index)));
    set_gs_base(p);
    CPUS[index].store(p as *const PerCpu as *mut PerCpu, Ordering::Release);
    Some(p)
}

/// Records the APIC ID and marks the current CPU online.
pub(crate) fn mark_online(apic_id: u32) {
    let c = current();
    c.apic_id.store(apic_id, Ordering::Relaxed);
    c.online.store(true, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// Index of the executing CPU.
#[inline]
pub fn current_index() -> usize {
    let i: usize;
    // SAFETY: GS base points at this CPU's PerCpu (set first thing on every CPU), whose
    // first field is the index.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) i, options(nostack, readonly, preserves_flags))
    };
    i
}

/// The executing CPU's block, in a device-interrupt handler (one `%gs:32` load; vectors
/// 0x30–0xef arrive only after the CPU's GS base points at a block: `init_bsp`, `enter_ap_early`).
#[inline(always)]
pub(crate) fn current_in_irq() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: GS base points at this CPU's PerCpu, whose `this` (offset 32) was stored before
    // the GS base was set.
    unsafe {
        core::arch::asm!("mov {}, gs:[32]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `this` holds the 'static block's own address.
    unsafe { &*p }
}

/// The executing CPU's block.
pub fn current() -> &'static PerCpu {
    let i = current_index();
    get(i).unwrap_or(if i == MAX_CPUS { &AP_EARLY } else { &BSP })
}

/// The block of CPU `index`, if it exists.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    let p = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked (or static) blocks that live forever.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Number of online CPUs; they are `0..cpu_count()`.
pub fn cpu_count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// APIC ID of CPU `index`.
pub fn apic_id(index: usize) -> Option<u32> {
    get(index).filter(|c| c.is_online()).map(|c| c.apic_id())
}

/// CPU index with APIC ID `id`.
pub fn index_of_apic_id(id: u32) -> Option<usize> {
    (0..cpu_count()).find(|&i| apic_id(i) == Some(id))
}
