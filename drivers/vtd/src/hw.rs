//! The hardware boundary: traits the kernel implements (host tests implement them with fakes).

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

/// The remapping unit's MMIO registers. Implementations must issue exactly one access of the
/// given width: QEMU aborts on 8-byte accesses to 32-bit registers (vtd.md §2.1), and the
/// driver only uses `read32`/`write32` on 32-bit registers and 64-bit ops on 64-bit ones.
pub trait RegisterBlock {
    fn read32(&self, offset: usize) -> u32;
    fn read64(&self, offset: usize) -> u64;
    fn write32(&self, offset: usize, value: u32);
    fn write64(&self, offset: usize, value: u64);
}

/// Memory the unit reads by physical address (tables, queue, status words).
///
/// Blocks are zeroed, physically contiguous and aligned to `align` (a power of two ≥ 4096).
/// Accessors take physical addresses inside live blocks; each `write64` must be a single
/// 64-bit store (entries such as IRTE qword 0 are updated atomically that way), and all
/// accesses must be volatile (the unit reads them concurrently). The kernel identity-maps RAM,
/// so its implementation is a volatile access at `phys as *mut u64`.
///
/// # Safety
/// [`DmaMemory::table`] hands out pointers that page-table code dereferences: it must
/// return `Some` only for a 4 KiB page inside one live block, pointing at its 512 qwords,
/// valid until that block is freed.
pub unsafe trait DmaMemory {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<u64>;
    /// Returns a block obtained from `alloc_zeroed` with the same size.
    fn free(&mut self, phys: u64, size: usize);
    fn read64(&self, phys: u64) -> u64;
    fn write64(&self, phys: u64, value: u64);
    fn read32(&self, phys: u64) -> u32;
    fn write32(&self, phys: u64, value: u32);
    /// The 512 qwords of the page-table page at `phys` (4 KiB aligned, inside one live
    /// block) for atomic access, or `None` (page tables are updated with `xchg`/`cmpxchg`
    /// while the unit sets A/D bits).
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>>;
    /// Orders earlier table writes before a later MMIO write (e.g. IQT). The unit snoops the
    /// CPU caches in QEMU; on hardware with ECAP.C=0/SMPWCS=0 this is also where a cache
    /// flush of the written lines belongs.
    fn barrier(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// A 128-bit atomic compare-and-exchange on table memory (CMPXCHG16B on x86-64), for
/// entries the unit reads in one access while software changes both halves: posted-format
/// IRTEs carry their descriptor address in both qwords (Intel VT-d Architecture
/// Specification rev 4.1, §9.10), and the unit fetches an IRTE in one read (§5.1.4).
pub trait DmaMemory128: DmaMemory {
    /// Replaces the 16-byte-aligned entry at `phys` (qword 0 first) with `new` if it holds
    /// `current`, in one atomic access. `Err` carries the value found instead.
    fn compare_exchange128(
        &self,
        phys: u64,
        current: [u64; 2],
        new: [u64; 2],
    ) -> Result<(), [u64; 2]>;
}

/// A monotonic clock for bounded polling.
pub trait Clock {
    fn now_ns(&self) -> u64;
    fn relax(&self) {
        core::hint::spin_loop();
    }
}
