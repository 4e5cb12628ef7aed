//! Kernel stacks with guard pages.
//!
//! Every stack the kernel switches to after memory is up (the BSP's main stack, each AP's
//! stack, every CPU's #DF/NMI/#MC IST stacks) lives in its own slot of a dedicated virtual
//! region: an unmapped 4 KiB guard page, then the stack's pages (4 KiB mappings of ordinary
//! frames). Running off the bottom touches the guard page; the #PF cannot be delivered on
//! that stack, so the CPU raises #DF on its IST stack, and the exception report names the
//! stack (see [`guard_page_owner`]). This is the one exception to the identity
//! convention of [`crate::mm`]: stack memory must not be handed to devices by address (no
//! code does; DMA buffers come from [`crate::mm::alloc_frames`]).
//!
//! Slots are never reused (stacks live as long as their CPU), so the region only ever gains
//! mappings and no TLB shootdown is needed.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{MmError, frames, paging};

/// The stack region's PML4 slot (the kernel uses nothing else in the upper half).
pub(super) const PML4_SLOT: usize = 510;
/// Start of the stack region: PML4 slot 510.
const REGION_START: u64 = 0xffff_ff00_0000_0000;
/// End of the region (512 GiB).
const REGION_END: u64 = 0xffff_ff80_0000_0000;
const PAGE: u64 = 4096;

/// Stacks whose guard pages the fault report can name.
const MAX_STACKS: usize = 4 * crate::arch::percpu::MAX_CPUS + 8;

/// Next free address of the region (slots are bump-allocated).
static NEXT: AtomicU64 = AtomicU64::new(REGION_START);

/// Registered stacks: guard page address (0: free record) and what the stack is. Written
/// once per record before `COUNT` publishes it, read lock-free by the fault report.
struct Record {
    guard: AtomicU64,
    /// Owning CPU index.
    cpu: AtomicUsize,
    /// Index into [`KINDS`].
    kind: AtomicUsize,
}

static RECORDS: [Record; MAX_STACKS] = [const {
    Record {
        guard: AtomicU64::new(0),
        cpu: AtomicUsize::new(0),
        kind: AtomicUsize::new(0),
    }
}; MAX_STACKS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// What a stack is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKind {
    /// A CPU's ordinary kernel stack.
    Main,
    /// The #DF IST stack.
    DoubleFault,
    /// The NMI IST stack.
    Nmi,
    /// The #MC IST stack.
    MachineCheck,
}

const KINDS: [StackKind; 4] = [
    StackKind::Main,
    StackKind::DoubleFault,
    StackKind::Nmi,
    StackKind::MachineCheck,
];

impl StackKind {
    fn name(self) -> &'static str {
        match self {
            Self::Main => "kernel stack",
            Self::DoubleFault => "#DF IST stack",
            Self::Nmi => "NMI IST stack",
            Self::MachineCheck => "#MC IST stack",
        }
    }
}

/// A guarded stack: `[bottom, top)` is mapped, the page below `bottom` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stack {
    pub bottom: u64,
    pub top: u64,
}

/// Allocates a stack of `size` bytes (rounded up to pages) for `cpu` with an unmapped
/// guard page below it. Stacks are never freed.
pub fn alloc_stack(size: u64, kind: StackKind, cpu: usize) -> Result<Stack, MmError> {
    let size = size
        .checked_next_multiple_of(PAGE)
        .filter(|&s| s > 0)
        .ok_or(MmError::BadRequest { size, align: PAGE })?;
    let slot = size + PAGE;
    let guard = NEXT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            n.checked_add(slot).filter(|&e| e <= REGION_END)
        })
        .map_err(|_| MmError::OutOfMemory { size })?;
    let bottom = guard + PAGE;
    let phys = frames::alloc_frames(size, PAGE)?.leak();
    paging::map_stack(bottom, phys, size)?;
    let i = COUNT.load(Ordering::Acquire);
    if i < MAX_STACKS
        && COUNT
            .compare_exchange(i, i + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        let r = &RECORDS[i];
        r.cpu.store(cpu, Ordering::Relaxed);
        r.kind.store(
            KINDS.iter().position(|&k| k == kind).unwrap_or(0),
            Ordering::Relaxed,
        );
        r.guard.store(guard, Ordering::Release);
    }
    log::debug!(
        "stack: cpu{cpu} {} {:#x}-{:#x} (guard {:#x}, frames at {:#x})",
        kind.name(),
        bottom,
        bottom + size,
        guard,
        phys
    );
    Ok(Stack {
        bottom,
        top: bottom + size,
    })
}

/// The stack whose guard page contains `addr`: (CPU, what it is). Lock-free, for the
/// exception report.
pub fn guard_page_owner(addr: u64) -> Option<(usize, &'static str)> {
    if !(REGION_START..REGION_END).contains(&addr) {
        return None;
    }
    let page = addr & !(PAGE - 1);
    let n = COUNT.load(Ordering::Acquire).min(MAX_STACKS);
    RECORDS[..n].iter().find_map(|r| {
        (r.guard.load(Ordering::Acquire) == page).then(|| {
            let kind = KINDS
                .get(r.kind.load(Ordering::Relaxed))
                .copied()
                .unwrap_or(StackKind::Main);
            (r.cpu.load(Ordering::Relaxed), kind.name())
        })
    })
}
