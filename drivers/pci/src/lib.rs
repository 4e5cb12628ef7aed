//! PCI(e) ECAM access, enumeration, BARs and capabilities.
//!
//! Configuration space is reached through [`pci_types::ConfigRegionAccess`]; the kernel implements
//! it with [`ecam::EcamWindow`] / [`ecam::Ecam`] over identity-mapped ECAM windows, host tests with
//! [`fake::FakeConfigSpace`]. Everything above that trait is pure logic: enumeration through
//! bridges, BAR sizing with decode disabled, bounded capability walkers (standard and PCIe
//! extended), typed PASID/ATS/PRI/DVSEC/MSI/MSI-X access and the boot inventory line.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bar;
pub mod caps;
pub mod command;
pub mod ecam;
pub mod enumerate;
pub mod error;
pub mod ext_caps;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod msi;

pub use bar::{BarInfo, BarKind};
pub use enumerate::{BridgeInfo, EnumIssue, Enumeration, PciFunction, SegmentRange, enumerate};
pub use error::PciError;
pub use pci_types::{ConfigRegionAccess, PciAddress};

/// Config-space offsets of the type-0/type-1 header fields this crate touches directly
/// (PCI Express Base Specification rev 6.0, §7.5.1).
pub mod regs {
    /// Vendor ID (bits 15:0), Device ID (bits 31:16).
    pub const VENDOR_DEVICE: u16 = 0x00;
    /// Command (bits 15:0), Status (bits 31:16); Status bits are RW1C, so write only the
    /// command half.
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision ID (bits 7:0), Programming Interface (bits 15:8), Sub-Class (bits 23:16),
    /// Base Class (bits 31:24).
    pub const CLASS_REV: u16 = 0x08;
    /// Cache Line Size, Latency Timer, Header Type (bits 23:16) (bit 23: multi-function), BIST.
    pub const HEADER_TYPE_DW: u16 = 0x0C;
    /// Base Address Register 0; BAR n is at `BAR0 + 4n` (§7.5.1.2.1).
    pub const BAR0: u16 = 0x10;
    /// Type 1: primary (bits 7:0), secondary (bits 15:8), subordinate (bits 23:16).
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Capabilities Pointer (bits 7:0) (types 0 and 1; bits 1:0 reserved).
    pub const CAP_PTR: u16 = 0x34;
    /// Status register bit 4 (in the COMMAND_STATUS dword: bit 20).
    pub const STATUS_CAP_LIST: u32 = 1 << 20;
}

/// Reads a config dword. The trait's methods are `unsafe` because an arbitrary offset may hit
/// side-effecting registers; every caller in this crate passes a dword-aligned offset below 4 KiB
/// of a function it is enumerating or driving.
#[inline]
pub(crate) fn cfg_read(access: &impl ConfigRegionAccess, addr: PciAddress, offset: u16) -> u32 {
    debug_assert!(offset < 0x1000 && offset & 3 == 0);
    // SAFETY: offset is dword aligned and inside the function's 4 KiB config space (checked by
    // every caller against the walkers' bounds); ConfigRegionAccess implementations in this crate
    // additionally reject out-of-window addresses.
    unsafe { access.read(addr, offset) }
}

/// Writes a config dword (see [`cfg_read`] for the offset contract).
#[inline]
pub(crate) fn cfg_write(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    offset: u16,
    value: u32,
) {
    debug_assert!(offset < 0x1000 && offset & 3 == 0);
    // SAFETY: as for cfg_read; writes only target registers whose semantics the caller owns.
    unsafe { access.write(addr, offset, value) }
}

/// Writes `value` into bits 31:16 of a config dword whose bits 15:0 are a read-only or
/// unaffected register (a capability header's ID/next byte pair, a capability register next
/// to a control register): they are read and written back unchanged.
pub(crate) fn cfg_write_upper16(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    offset: u16,
    value: u16,
) {
    let low = cfg_read(access, addr, offset) & 0xffff;
    cfg_write(access, addr, offset, low | (u32::from(value) << 16));
}
