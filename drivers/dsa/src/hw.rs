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
