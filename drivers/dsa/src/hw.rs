//! The hardware-facing traits: everything the driver needs from the machine. The kernel
//! implements them with MMIO mappings, MOVDIR64B/ENQCMDS, its frame allocator and VT-d
//! address spaces, and its calibrated clock; host tests implement them over `dsa-model`.

use core::fmt;

/// BAR0 register window (uncached MMIO). Accesses are exactly the width named, naturally
/// aligned; the driver never issues an access outside `0..size()`.
pub trait Registers: Send + Sync {
    /// Size of the BAR0 window in bytes (from the PCI BAR).
    fn size(&self) -> u64;
    fn read32(&self, off: u64) -> u32;
    fn read64(&self, off: u64) -> u64;
    fn write32(&self, off: u64, value: u32);
    fn write64(&self, off: u64, value: u64);
}

/// Outcome of an ENQCMDS (ZF = 1 means the device did not take the descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqStatus {
    Accepted,
    Retry,
}

/// BAR2 submission portals. Both stores must be preceded by a store fence (SFENCE) so
/// that the descriptor's buffers, the zeroed completion record and any batch list are
/// globally visible before the device can read the descriptor.
pub trait Portals: Send + Sync {
    /// Size of the BAR2 window in bytes.
    fn size(&self) -> u64;
    /// MOVDIR64B of `desc` to BAR2 + `off` (64-byte aligned). No feedback.
    fn movdir64b(&self, off: u64, desc: &[u8; 64]);
    /// ENQCMDS of `desc` to BAR2 + `off` (64-byte aligned).
    fn enqcmds(&self, off: u64, desc: &[u8; 64]) -> EnqStatus;
}

/// Time source for bounded waits.
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
    /// Called on every iteration of a poll loop (a `pause` on hardware).
    fn relax(&self);
    /// Back-off delay between submission retries.
    fn delay_us(&self, us: u32);
}

/// PCI configuration state the driver must respect (the kernel owns config space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PciInfo {
    /// Command register Bus Master Enable.
    pub bus_master: bool,
    /// PASID extended capability: PASID Enable.
    pub pasid_enabled: bool,
    /// PASID extended capability: Privileged Mode Enable.
    pub privileged_mode: bool,
    /// Number of MSI-X table entries the kernel enabled (entry 0 = misc, entry w+1 = WQ w).
    pub msix_entries: u16,
}

/// Source of [`PciInfo`]. Read at bring-up and at every reconfiguration.
pub trait Pci: Send + Sync {
    fn info(&self) -> PciInfo;
}

/// The address space a device access uses: requests without PASID, or a PASID's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressSpace {
    NoPasid,
    Pasid(u32),
}

impl AddressSpace {
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
    OutOfMemory {
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

/// A block of DMA memory as the allocator returns it.
#[derive(Debug)]
pub struct DmaRegion {
    /// CPU address (write-back cacheable, valid for `len` bytes until freed).
    pub cpu: core::ptr::NonNull<u8>,
    /// Address the device uses for it in `space`.
    pub dev: u64,
    pub len: usize,
    pub space: AddressSpace,
}

/// Zeroed, physically contiguous DMA memory.
///
/// # Safety
///
/// `alloc` must return a region whose `cpu` pointer is valid for reads and writes of `len`
/// bytes, zero-filled, aligned to `align` in both its CPU and device address, that nothing
/// but the driver (and the device, through `dev` in `space`) accesses until it is passed
/// back to `free`. The driver relies on this for every access it makes through `cpu`.
pub unsafe trait DmaMemory: Send + Sync {
    fn alloc(&self, space: AddressSpace, size: usize, align: usize) -> Result<DmaRegion, DmaError>;
    /// Returns a region; the driver calls this only once the device can no longer touch it.
    fn free(&self, region: DmaRegion);
}
