//! Errors of the PCI subsystem. Every variant names the function and what was wrong with it.

use core::fmt;
use pci_types::PciAddress;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// A standard capability pointer is below 0x40 or not inside the 256-byte header space.
    CapPointerOutOfRange { addr: PciAddress, offset: u16 },
    /// A standard capability list revisits an offset.
    CapLoop { addr: PciAddress, offset: u16 },
    /// A PCIe extended capability "next" pointer is below 0x100.
    ExtCapPointerOutOfRange { addr: PciAddress, offset: u16 },
    /// A PCIe extended capability list revisits an offset.
    ExtCapLoop { addr: PciAddress, offset: u16 },
    /// A capability is shorter than its fixed layout (e.g. a DVSEC length field too small).
    CapTooShort {
        addr: PciAddress,
        offset: u16,
        id: u16,
    },
    /// A capability would extend past the end of configuration space.
    CapPastConfigSpace {
        addr: PciAddress,
        offset: u16,
        id: u16,
    },
    /// BAR memory type 01b/11b (reserved encodings).
    BarReservedType { addr: PciAddress, slot: u8 },
    /// A 64-bit memory BAR in the last BAR slot has no upper half.
    Bar64InLastSlot { addr: PciAddress, slot: u8 },
    /// The size mask read back is not a contiguous run of ones from the top.
    BarBadSizeMask {
        addr: PciAddress,
        slot: u8,
        mask: u64,
    },
    /// The programmed address is not aligned to the BAR size.
    BarMisaligned {
        addr: PciAddress,
        slot: u8,
        address: u64,
        size: u64,
    },
    /// address + size overflows the address space of the BAR type.
    BarAddressOverflow { addr: PciAddress, slot: u8 },
    /// MSI-X table/PBA BIR names a BAR slot that does not exist (6, 7) for this header.
    MsixBadBir { addr: PciAddress, bir: u8 },
    /// The BAR named by the MSI-X BIR is not implemented or is an I/O BAR.
    MsixBarNotMemory { addr: PciAddress, bir: u8 },
    /// The MSI-X table does not fit inside its BAR.
    MsixTableOutsideBar {
        addr: PciAddress,
        bir: u8,
        offset: u32,
        bytes: u64,
        bar_size: u64,
    },
    /// The MSI-X pending-bit array does not fit inside its BAR.
    MsixPbaOutsideBar {
        addr: PciAddress,
        bir: u8,
        offset: u32,
        bytes: u64,
        bar_size: u64,
    },
    /// An MSI-X entry index at or beyond the table size.
    MsixIndexOutOfRange {
        addr: PciAddress,
        index: u16,
        size: u16,
    },
    /// A 64-bit message address given to a 32-bit-only MSI capability.
    MsiAddressTooWide { addr: PciAddress, address: u64 },
    /// More MSI vectors requested than the function is capable of (or not a power of two).
    MsiBadVectorCount {
        addr: PciAddress,
        requested: u32,
        capable: u32,
    },
    /// A PASID feature (execute/privileged) was requested that the function does not offer.
    PasidFeatureUnsupported { addr: PciAddress },
    /// The function is not present (vendor ID 0xFFFF).
    NoFunction { addr: PciAddress },
    /// The operation needs a different header type (e.g. BARs of a CardBus bridge).
    WrongHeaderType { addr: PciAddress, header_type: u8 },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for PciError {}
