//! Errors of the PCI subsystem. Every variant names the function and what was wrong with it.

use core::fmt;
use pci_types::PciAddress;

/// What was wrong with a function's configuration space, or with a request made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// A standard capability pointer is below 0x40 or not inside the 256-byte header space.
    CapPointerOutOfRange {
        /// The function.
        addr: PciAddress,
        /// The bad pointer value.
        offset: u16,
    },
    /// A standard capability list revisits an offset.
    CapLoop {
        /// The function.
        addr: PciAddress,
        /// The offset reached a second time.
        offset: u16,
    },
    /// A PCIe extended capability "next" pointer is below 0x100.
    ExtCapPointerOutOfRange {
        /// The function.
        addr: PciAddress,
        /// The bad pointer value.
        offset: u16,
    },
    /// A PCIe extended capability list revisits an offset.
    ExtCapLoop {
        /// The function.
        addr: PciAddress,
        /// The offset reached a second time.
        offset: u16,
    },
    /// A capability is shorter than its fixed layout (e.g. a DVSEC length field too small).
    CapTooShort {
        /// The function.
        addr: PciAddress,
        /// Config-space offset of the capability.
        offset: u16,
        /// Extended capability ID.
        id: u16,
    },
    /// A capability would extend past the end of configuration space.
    CapPastConfigSpace {
        /// The function.
        addr: PciAddress,
        /// Config-space offset of the capability.
        offset: u16,
        /// Capability ID (extended, for extended capabilities).
        id: u16,
    },
    /// BAR memory type 01b/11b (reserved encodings).
    BarReservedType {
        /// The function.
        addr: PciAddress,
        /// BAR slot (0..=5).
        slot: u8,
    },
    /// A 64-bit memory BAR in the last BAR slot has no upper half.
    Bar64InLastSlot {
        /// The function.
        addr: PciAddress,
        /// BAR slot (0..=5).
        slot: u8,
    },
    /// The size mask read back is not a contiguous run of ones from the top.
    BarBadSizeMask {
        /// The function.
        addr: PciAddress,
        /// BAR slot (0..=5).
        slot: u8,
        /// The size mask read back (address bits only).
        mask: u64,
    },
    /// The programmed address is not aligned to the BAR size.
    BarMisaligned {
        /// The function.
        addr: PciAddress,
        /// BAR slot (0..=5).
        slot: u8,
        /// The programmed base address.
        address: u64,
        /// BAR size in bytes.
        size: u64,
    },
    /// address + size overflows the address space of the BAR type.
    BarAddressOverflow {
        /// The function.
        addr: PciAddress,
        /// BAR slot (0..=5).
        slot: u8,
    },
    /// MSI-X table/PBA BIR names a BAR slot that does not exist (6, 7) for this header.
    MsixBadBir {
        /// The function.
        addr: PciAddress,
        /// The BAR Indicator Register value (BAR slot) from the capability.
        bir: u8,
    },
    /// The BAR named by the MSI-X BIR is not implemented or is an I/O BAR.
    MsixBarNotMemory {
        /// The function.
        addr: PciAddress,
        /// The BAR Indicator Register value (BAR slot) from the capability.
        bir: u8,
    },
    /// The MSI-X table does not fit inside its BAR.
    MsixTableOutsideBar {
        /// The function.
        addr: PciAddress,
        /// The BAR Indicator Register value (BAR slot) from the capability.
        bir: u8,
        /// Table offset inside the BAR, bytes.
        offset: u32,
        /// Table length, bytes (16 per entry).
        bytes: u64,
        /// Size of that BAR in bytes.
        bar_size: u64,
    },
    /// The MSI-X pending-bit array does not fit inside its BAR.
    MsixPbaOutsideBar {
        /// The function.
        addr: PciAddress,
        /// The BAR Indicator Register value (BAR slot) from the capability.
        bir: u8,
        /// PBA offset inside the BAR, bytes.
        offset: u32,
        /// PBA length, bytes (one bit per entry, in qwords).
        bytes: u64,
        /// Size of that BAR in bytes.
        bar_size: u64,
    },
    /// An MSI-X entry index at or beyond the table size.
    MsixIndexOutOfRange {
        /// The function.
        addr: PciAddress,
        /// The entry index requested.
        index: u16,
        /// Number of table entries.
        size: u16,
    },
    /// A 64-bit message address given to a 32-bit-only MSI capability.
    MsiAddressTooWide {
        /// The function.
        addr: PciAddress,
        /// The message address requested.
        address: u64,
    },
    /// More MSI vectors requested than the function is capable of (or not a power of two).
    MsiBadVectorCount {
        /// The function.
        addr: PciAddress,
        /// Vectors requested.
        requested: u32,
        /// Vectors the function supports (Multiple Message Capable).
        capable: u32,
    },
    /// A PASID feature (execute/privileged) was requested that the function does not offer.
    PasidFeatureUnsupported {
        /// The function.
        addr: PciAddress,
    },
    /// The function is not present (vendor ID 0xFFFF).
    NoFunction {
        /// The function.
        addr: PciAddress,
    },
    /// The operation needs a different header type (e.g. BARs of a CardBus bridge).
    WrongHeaderType {
        /// The function.
        addr: PciAddress,
        /// Header type (bits 6:0).
        header_type: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for PciError {}
