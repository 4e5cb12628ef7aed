//! The hardware-facing traits: everything the driver needs from the machine. The register
//! window, the clock and DMA memory are `hwio`'s (the one vocabulary of every driver crate);
//! the submission portals and the PCI state are DSA's own. The kernel implements them with
//! MMIO mappings, MOVDIR64B/ENQCMDS, its frame allocator and VT-d address spaces, and its
//! calibrated clock; host tests implement them over `dsa-model`.

/// Time source for bounded waits: `hwio`'s one clock.
pub use hwio::Clock;
/// BAR0 register window: `hwio`'s one register-window trait (typed registers through
/// [`hwio::RegistersExt`] and the `dsa_spec` register maps).
pub use hwio::Registers;
/// DMA memory: `hwio`'s allocator of device buffers, its region, error and address space.
pub use hwio::dma::{AddressSpace, DmaError, DmaMemory, DmaRegion};

/// Outcome of an ENQCMDS (ZF = 1 means the device did not take the descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqStatus {
    /// ZF = 0: the WQ accepted the descriptor.
    Accepted,
    /// ZF = 1: the shared WQ was full (or the device refused); submit again later.
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
    /// BAR2 for direct stores from the submit path (no call per descriptor), when the
    /// portals are real memory-mapped pages the CPU can store into; `None` (host fakes):
    /// every store goes through [`Portals::movdir64b`] / [`Portals::enqcmds`].
    fn direct(&self) -> Option<DirectPortals> {
        None
    }
}

/// BAR2 mapped for direct MOVDIR64B/ENQCMDS stores (see [`Portals::direct`]).
#[derive(Clone, Copy, Debug)]
pub struct DirectPortals {
    base: *mut u8,
    len: u64,
    enqcmds: bool,
}

// SAFETY: the pointer names device memory that stays mapped (constructor contract); the
// value only hands out store instructions, never references to the memory.
unsafe impl Send for DirectPortals {}
// SAFETY: as above.
unsafe impl Sync for DirectPortals {}

impl DirectPortals {
    /// # Safety
    ///
    /// `base` is the CPU address of the device's BAR2 mapped uncached (`len` bytes, 4 KiB
    /// aligned), and stays mapped as long as the [`Portals`] that returns this value is
    /// alive; the CPU executes MOVDIR64B, and ENQCMDS at the current privilege level when
    /// `enqcmds` is true.
    pub unsafe fn new(base: *mut u8, len: u64, enqcmds: bool) -> DirectPortals {
        DirectPortals { base, len, enqcmds }
    }

    /// Whether ENQCMDS may be used (shared WQs).
    pub fn has_enqcmds(&self) -> bool {
        self.enqcmds
    }

    /// The 4 KiB portal page at `off`, if it is page aligned and inside the BAR.
    pub(crate) fn page(&self, off: u64) -> Option<PortalPage> {
        let ok = off.is_multiple_of(4096)
            && off.checked_add(4096).is_some_and(|e| e <= self.len)
            && (self.base as usize).is_multiple_of(4096);
        ok.then(|| PortalPage {
            page: self.base.wrapping_add(off as usize),
        })
    }
}

/// One portal page: its 64 slots (bits 11:6 of the address) are equivalent; a store to slot
/// `n` goes to `n mod 64`, always inside the page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortalPage {
    page: *mut u8,
}

// SAFETY: as `DirectPortals`.
unsafe impl Send for PortalPage {}
// SAFETY: as `DirectPortals`.
unsafe impl Sync for PortalPage {}

impl PortalPage {
    #[inline(always)]
    fn slot(&self, n: u32) -> *mut u8 {
        self.page.wrapping_add((n as usize & 63) * 64)
    }

    /// SFENCE, then MOVDIR64B of `desc` to slot `n` (the fence makes the descriptor's
    /// buffers, its zeroed record and any batch list globally visible first: neither
    /// MOVDIR64B nor ENQCMDS is ordered after older stores, Intel SDM Vol. 2B "MOVDIR64B").
    #[inline(always)]
    pub fn movdir64b(&self, n: u32, desc: &[u64; 8]) {
        // SAFETY: a 64-byte-aligned slot of a mapped portal page (`DirectPortals::new`'s
        // contract, `page`'s check, the mask in `slot`); the source is the 64-byte array
        // borrowed for the duration; the CPU has MOVDIR64B (contract). No `nomem`: the block
        // orders as a compiler barrier.
        unsafe {
            core::arch::asm!(
                "sfence",
                "movdir64b {d}, zmmword ptr [{s}]",
                d = in(reg) self.slot(n),
                s = in(reg) desc.as_ptr(),
                options(nostack, preserves_flags),
            );
        };
    }

    /// SFENCE, then ENQCMDS of `desc` to slot `n`; true if the device accepted it (ZF = 0).
    #[inline(always)]
    pub fn enqcmds(&self, n: u32, desc: &[u64; 8]) -> bool {
        let retry: u8;
        // SAFETY: as `movdir64b`; the CPU executes ENQCMDS at this privilege level
        // (contract: `has_enqcmds`, checked by the caller), and the descriptor's dword 0 has
        // bits 30:20 clear (the encoder's templates). Flags are written (ZF = retry).
        unsafe {
            core::arch::asm!(
                "sfence",
                "enqcmds {d}, zmmword ptr [{s}]",
                "setz {z}",
                d = in(reg) self.slot(n),
                s = in(reg) desc.as_ptr(),
                z = out(reg_byte) retry,
                options(nostack),
            );
        };
        retry == 0
    }
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
    /// The device's PCI state now.
    fn info(&self) -> PciInfo;
}
