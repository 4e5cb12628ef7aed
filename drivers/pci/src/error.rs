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
        use PciError as E;
        match *self {
            E::CapPointerOutOfRange { addr, offset } => write!(
                f,
                "{addr}: capability pointer {offset:#x} outside 0x40..0x100"
            ),
            E::CapLoop { addr, offset } => {
                write!(f, "{addr}: capability list loops back to {offset:#x}")
            }
            E::ExtCapPointerOutOfRange { addr, offset } => write!(
                f,
                "{addr}: extended capability pointer {offset:#x} below 0x100"
            ),
            E::ExtCapLoop { addr, offset } => write!(
                f,
                "{addr}: extended capability list loops back to {offset:#x}"
            ),
            E::CapTooShort { addr, offset, id } => write!(
                f,
                "{addr}: capability {id:#x} at {offset:#x} is shorter than its layout"
            ),
            E::CapPastConfigSpace { addr, offset, id } => write!(
                f,
                "{addr}: capability {id:#x} at {offset:#x} runs past the end of config space"
            ),
            E::BarReservedType { addr, slot } => {
                write!(f, "{addr}: BAR{slot} has a reserved memory type")
            }
            E::Bar64InLastSlot { addr, slot } => write!(
                f,
                "{addr}: BAR{slot} is 64-bit but has no slot for its upper half"
            ),
            E::BarBadSizeMask { addr, slot, mask } => write!(
                f,
                "{addr}: BAR{slot} size mask {mask:#x} is not a contiguous run of ones"
            ),
            E::BarMisaligned {
                addr,
                slot,
                address,
                size,
            } => write!(
                f,
                "{addr}: BAR{slot} address {address:#x} is not aligned to its size {size:#x}"
            ),
            E::BarAddressOverflow { addr, slot } => write!(
                f,
                "{addr}: BAR{slot} address + size overflows the BAR's address space"
            ),
            E::MsixBadBir { addr, bir } => {
                write!(f, "{addr}: MSI-X names BAR{bir}, which cannot exist")
            }
            E::MsixBarNotMemory { addr, bir } => write!(
                f,
                "{addr}: MSI-X names BAR{bir}, which is not an implemented memory BAR"
            ),
            E::MsixTableOutsideBar {
                addr,
                bir,
                offset,
                bytes,
                bar_size,
            } => write!(
                f,
                "{addr}: MSI-X table at BAR{bir}+{offset:#x} ({bytes} bytes) does not fit the BAR ({bar_size:#x} bytes)"
            ),
            E::MsixPbaOutsideBar {
                addr,
                bir,
                offset,
                bytes,
                bar_size,
            } => write!(
                f,
                "{addr}: MSI-X pending-bit array at BAR{bir}+{offset:#x} ({bytes} bytes) does not fit the BAR ({bar_size:#x} bytes)"
            ),
            E::MsixIndexOutOfRange { addr, index, size } => write!(
                f,
                "{addr}: MSI-X entry {index} requested, the table has {size}"
            ),
            E::MsiAddressTooWide { addr, address } => write!(
                f,
                "{addr}: MSI address {address:#x} needs 64 bits, the capability has 32"
            ),
            E::MsiBadVectorCount {
                addr,
                requested,
                capable,
            } => write!(
                f,
                "{addr}: {requested} MSI vectors requested, the function offers {capable} (a power of two)"
            ),
            E::PasidFeatureUnsupported { addr } => write!(
                f,
                "{addr}: PASID execute/privileged mode requested but not offered"
            ),
            E::NoFunction { addr } => write!(f, "{addr}: no function (vendor ID 0xffff)"),
            E::WrongHeaderType { addr, header_type } => write!(
                f,
                "{addr}: operation not possible for header type {header_type:#x}"
            ),
        }
    }
}

impl core::error::Error for PciError {}

#[cfg(test)]
mod tests {
    use super::PciError;
    use pci_types::PciAddress;

    /// Operators read these lines: the function address and the fault in words, never the
    /// variant's debug form.
    #[test]
    fn display_names_the_function_and_the_fault() {
        let addr = PciAddress::new(0, 1, 2, 3);
        let e = PciError::BarMisaligned {
            addr,
            slot: 2,
            address: 0x1000,
            size: 0x4000,
        };
        let s = e.to_string();
        assert!(s.contains("01:02.3"), "{s}");
        assert!(
            s.contains("BAR2") && s.contains("0x1000") && s.contains("0x4000"),
            "{s}"
        );
        assert!(!s.contains("BarMisaligned"), "{s}");
    }
}
