//! DMA memory, one trait per capability.
//!
//! * [`DmaMemory`]: buffers a device reads and writes (data, completion records, batch lists)
//!   in a chosen [`AddressSpace`]; the driver reaches them through a CPU pointer. The allocator
//!   maps them for the device (identity for the kernel's own spaces, an IOVA in a client PASID's
//!   tables). Used by the DSA driver.
//! * [`UnitMemory`] (and [`UnitMemory128`]): structures a remapping unit reads by physical
//!   address (root, context and PASID tables, page tables, the invalidation queue, the
//!   interrupt-remapping table). The driver never holds a pointer to them: every access goes
//!   through the trait, so the kernel checks each one against the blocks it handed out and a
//!   host fake can record the states a unit could observe between two stores. Used by VT-d.
//!
//! Why two traits and not one: the DSA driver's buffers are accessed field by field through
//! typed views and CPU pointers on the hot path, in many address spaces; the unit's tables are
//! accessed as volatile qwords (and 128-bit compare-and-exchanges) by physical address, in
//! none. Both share [`DmaError`] and the rule that memory comes zeroed and physically
//! contiguous.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

/// The address space a device access uses: requests without PASID, or a PASID's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressSpace {
    /// Requests without PASID (the device's RID_PASID translation).
    NoPasid,
    /// Requests tagged with this PASID.
    Pasid(u32),
}

impl AddressSpace {
    /// The PASID, if requests carry one.
    pub fn pasid(self) -> Option<u32> {
        match self {
            AddressSpace::NoPasid => None,
            AddressSpace::Pasid(p) => Some(p),
        }
    }
}

impl fmt::Display for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressSpace::NoPasid => write!(f, "no-PASID"),
            AddressSpace::Pasid(p) => write!(f, "PASID {p:#x}"),
        }
    }
}

/// Why DMA memory could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The allocator has no block of this size.
    OutOfMemory {
        /// Bytes asked for (after rounding).
        size: usize,
    },
    /// The allocator cannot map memory into this address space.
    NoSuchSpace(AddressSpace),
    /// The region returned violates the request (checked by the driver).
    BadRegion,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::OutOfMemory { size } => write!(f, "out of DMA memory ({size} bytes)"),
            DmaError::NoSuchSpace(s) => write!(f, "no DMA mapping possible in {s}"),
            DmaError::BadRegion => write!(f, "allocator returned a region that breaks the request"),
        }
    }
}

impl core::error::Error for DmaError {}

/// A block of DMA memory as [`DmaMemory::alloc`] returns it.
#[derive(Debug)]
pub struct DmaRegion {
    /// CPU address (write-back cacheable, valid for `len` bytes until freed).
    pub cpu: NonNull<u8>,
    /// Address the device uses for it in `space`.
    pub dev: u64,
    /// Length in bytes.
    pub len: usize,
    /// The address space `dev` belongs to.
    pub space: AddressSpace,
}

/// Zeroed, physically contiguous DMA buffers, in the address space the caller names.
///
/// # Safety
///
/// `alloc` must return a region whose `cpu` pointer is valid for reads and writes of `len`
/// bytes, zero-filled, aligned to `align` in both its CPU and device address, that nothing
/// but the driver (and the device, through `dev` in `space`) accesses until it is passed
/// back to `free`. Drivers rely on this for every access they make through `cpu`.
#[allow(unsafe_code)] // declares the contract above; implementing it is the unsafe part
pub unsafe trait DmaMemory: Send + Sync {
    /// A zeroed block of at least `size` bytes aligned to `align`, mapped in `space`.
    fn alloc(&self, space: AddressSpace, size: usize, align: usize) -> Result<DmaRegion, DmaError>;
    /// Returns a region; drivers call this only once the device can no longer touch it.
    fn free(&self, region: DmaRegion);
}

/// Memory a remapping unit reads by physical address (tables, queue, status words).
///
/// Blocks are zeroed, physically contiguous and aligned to `align` (a power of two ≥ 4096).
/// Accessors take physical addresses inside live blocks; each `write64` must be a single
/// 64-bit store (entries such as IRTE qword 0 are updated atomically that way), and all
/// accesses must be volatile (the unit reads them concurrently). The kernel identity-maps RAM,
/// so its implementation is a volatile access at `phys as *mut u64`.
///
/// # Safety
/// [`UnitMemory::table`] hands out pointers that page-table code dereferences: it must
/// return `Some` only for a 4 KiB page inside one live block, pointing at its 512 qwords,
/// valid until that block is freed.
#[allow(unsafe_code)] // declares the contract above; implementing it is the unsafe part
pub unsafe trait UnitMemory {
    /// A zeroed block of `size` bytes aligned to `align`: its physical address.
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<u64>;
    /// Returns a block obtained from `alloc_zeroed` with the same size.
    fn free(&mut self, phys: u64, size: usize);
    /// One volatile 64-bit read.
    fn read64(&self, phys: u64) -> u64;
    /// One volatile 64-bit store.
    fn write64(&self, phys: u64, value: u64);
    /// One volatile 32-bit read.
    fn read32(&self, phys: u64) -> u32;
    /// One volatile 32-bit store.
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

/// A 128-bit atomic compare-and-exchange on [`UnitMemory`] (CMPXCHG16B on x86-64), for
/// entries a unit reads in one access while software changes both halves: posted-format
/// IRTEs carry their descriptor address in both qwords (Intel VT-d Architecture
/// Specification rev 4.1, §9.10), and the unit fetches an IRTE in one read (§5.1.4).
pub trait UnitMemory128: UnitMemory {
    /// Replaces the 16-byte-aligned entry at `phys` (qword 0 first) with `new` if it holds
    /// `current`, in one atomic access. `Err` carries the value found instead.
    fn compare_exchange128(
        &self,
        phys: u64,
        current: [u64; 2],
        new: [u64; 2],
    ) -> Result<(), [u64; 2]>;
}
