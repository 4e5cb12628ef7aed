//! What the irqchip needs from the machine: interrupt vectors, their handlers, message routes
//! (interrupt-remapping entries), and running a closure on a given CPU. The kernel implements
//! [`ImsPlatform`] with its vector allocator, IDT dispatch, `kernel::iommu` IRTEs and
//! `smp::run_on`; host tests implement it with a fake machine.

use alloc::boxed::Box;
use core::fmt;

use crate::domain::VectorHandler;
use crate::error::Cause;
use crate::posted::PidRef;

/// An MSI as a device writes it: address and data (x86: address 0xFEEx_xxxx).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The address the device writes: compatibility format as in Intel SDM Vol. 3A "Message
    /// Address Register Format", or remappable format (Intel VT-d Architecture Specification
    /// rev 4.1, §5.1.2.2).
    pub addr: u64,
    /// The 32-bit data the device writes: compatibility format as in Intel SDM Vol. 3A
    /// "Message Data Register Format", or remappable format (Intel VT-d Architecture
    /// Specification rev 4.1, §5.1.2.2; subhandle 0 when SHV is set).
    pub data: u32,
}

/// A message route: how one handle's interrupt reaches (CPU, vector).
///
/// With interrupt remapping this is one IRTE owned by the kernel (`id` = its index) and `msg`
/// is the remappable-format message naming it; retargeting rewrites the IRTE and leaves `msg`
/// unchanged, so the device entry never changes while it is live. Without remapping, `msg` is
/// the compatibility-format message itself and retargeting changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Platform cookie (IRTE index with interrupt remapping).
    pub id: u32,
    /// The message the device is programmed with for this route.
    pub msg: MsiMessage,
}

/// Why the platform could not do something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The vector allocator has no free vector on this CPU.
    VectorsExhausted {
        /// The CPU without a free vector.
        cpu: usize,
    },
    /// No interrupt-remapping entry is free.
    RoutesExhausted,
    /// The CPU index is not valid (or the CPU is offline).
    NoSuchCpu {
        /// The CPU index asked for.
        cpu: usize,
    },
    /// A cross-CPU call did not run in time.
    Timeout {
        /// The CPU the call was sent to.
        cpu: usize,
    },
    /// Anything else (the platform logs the details).
    Failed(&'static str),
    /// A kernel layer failed `what` with `cause` (kept whole: its `source()` chain).
    Kernel {
        /// The operation that failed.
        what: &'static str,
        /// The kernel layer's error.
        cause: Cause,
    },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::VectorsExhausted { cpu } => {
                write!(f, "no free interrupt vector on CPU {cpu}")
            }
            PlatformError::RoutesExhausted => write!(f, "no free interrupt-remapping entry"),
            PlatformError::NoSuchCpu { cpu } => write!(f, "no CPU {cpu}"),
            PlatformError::Timeout { cpu } => write!(f, "cross-CPU call to CPU {cpu} timed out"),
            PlatformError::Failed(why) => write!(f, "platform failure: {why}"),
            PlatformError::Kernel { what, cause } => write!(f, "{what} failed: {cause}"),
        }
    }
}

impl core::error::Error for PlatformError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            PlatformError::Kernel { cause, .. } => Some(cause.error()),
            _ => None,
        }
    }
}

/// The machine as the irqchip sees it. CPUs are dense indices `0..cpu_count()`.
///
/// Every control-plane entry point of the chip (allocate, mask/unmask, retarget, release)
/// calls into this trait from thread context with interrupts enabled; the hot path (arming
/// and the interrupt handler) never does, except for [`ImsPlatform::cycles`].
///
/// # Safety
/// On each CPU, the domain's vector handlers ([`VectorHandler::run`](crate::VectorHandler::run))
/// and the closures of [`ImsPlatform::run_on`] for that CPU never overlap: neither starts
/// while the other runs there (both run with the CPU's interrupts disabled, interrupts do
/// not nest, and a `run_on` closure for a CPU runs on that CPU only). Every change of a
/// CPU's handle table is made inside such a closure, so the handler reads the table
/// without a lock; a platform breaking this would let a handler read a table being changed.
pub unsafe trait ImsPlatform: Send + Sync {
    /// Number of CPUs (fixed for the lifetime of the domain).
    fn cpu_count(&self) -> usize;

    /// Allocates one vector on `cpu` for `owner` (the vector report shows the name).
    /// Exhaustion must be [`PlatformError::VectorsExhausted`].
    fn alloc_vector(&self, cpu: usize, owner: &'static str) -> Result<u8, PlatformError>;
    /// Returns a vector. An interrupt that still arrives on it (raised before the route moved)
    /// must be acknowledged and ignored by the platform.
    fn free_vector(&self, cpu: usize, vector: u8);

    /// Installs `handler` for `vector` on `cpu`: when the vector fires on that CPU the
    /// platform calls [`VectorHandler::run`] with interrupts disabled, then sends the EOI.
    fn set_handler(
        &self,
        cpu: usize,
        vector: u8,
        handler: VectorHandler,
    ) -> Result<(), PlatformError>;
    /// Removes the handler of `vector` on `cpu`.
    fn clear_handler(&self, cpu: usize, vector: u8);

    /// Creates a route delivering messages from the device with PCI requester ID `source_id`
    /// to `vector` on `cpu` (with interrupt remapping: an IRTE with source validation of
    /// `source_id`; without: a compatibility-format message).
    fn alloc_route(&self, source_id: u16, cpu: usize, vector: u8) -> Result<Route, PlatformError>;
    /// Points `route` at (`cpu`, `vector`). Returns only when every message the device sends
    /// from now on goes to the new target (IRTE rewritten atomically and the interrupt entry
    /// cache invalidated). Without remapping, updates `route.msg`; the chip then rewrites the
    /// device entry.
    fn retarget_route(
        &self,
        route: &mut Route,
        cpu: usize,
        vector: u8,
    ) -> Result<(), PlatformError>;
    /// Frees a route the device can no longer use.
    fn free_route(&self, route: Route);

    /// Runs `f` on `cpu` **with interrupts disabled** and waits for it (bounded). `Ok` means
    /// `f` ran to completion. After an error `f` may still run later (the chip guards against
    /// that itself); it owns everything it uses.
    fn run_on(
        &self,
        cpu: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), PlatformError>;

    /// Monotonic nanoseconds, for bounded waits on the control path.
    fn now_ns(&self) -> u64;

    /// Whether routes can post ([`VectorMode::Posted`](crate::VectorMode::Posted)): every
    /// interrupt-remapping unit supports posted interrupts (VT-d CAP.PI) and the platform
    /// implements [`ImsPlatform::alloc_pid`] and [`ImsPlatform::post_route`].
    fn posted_interrupts(&self) -> bool {
        false
    }

    /// Allocates a posted-interrupt descriptor (64 bytes, 64-byte aligned, in memory the
    /// remapping unit can write and no device can) whose notifications go to `vector` on
    /// `cpu` (NV, NDST in the units' destination format), everything else zero. It is never
    /// freed (a unit may post into it at any time); the chip reuses its descriptors.
    fn alloc_pid(&self, cpu: usize, vector: u8) -> Result<PidRef, PlatformError> {
        let _ = (cpu, vector);
        Err(PlatformError::Failed("posted interrupts not supported"))
    }

    /// Makes `route` post: from now on the device's message sets bit `bit` of `pid` (and
    /// notifies as the descriptor says) after the same source check. A remapped route is
    /// converted in place, a posted one retargeted; the message (`route.msg`) does not
    /// change. Returns only when every message from now on uses the new entry (atomic
    /// 128-bit IRTE update, interrupt-entry-cache invalidation waited for).
    fn post_route(&self, route: &mut Route, pid: &PidRef, bit: u8) -> Result<(), PlatformError> {
        let _ = (route, pid, bit);
        Err(PlatformError::Failed("posted interrupts not supported"))
    }

    /// A cheap cycle (or, under `-icount`, instruction) counter read around every
    /// demultiplexing pass; 0 disables the measurement.
    fn cycles(&self) -> u64 {
        0
    }

    /// True if [`ImsPlatform::cycles`] is the x86 time-stamp counter (`rdtsc`): the
    /// handler then reads it inline instead of calling through the trait object.
    fn cycles_are_tsc(&self) -> bool {
        false
    }
}
