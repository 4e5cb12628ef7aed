//! Standard (0x40–0xFF) capability list walker: bounded and loop-safe.
//!
//! pci_types' iterator follows pointers blindly (a looping list hangs it, and it only exists for
//! endpoints), so the list is walked here for every header type.

use crate::{PciError, cfg_read, regs};
use pci_types::{ConfigRegionAccess, PciAddress};

// Capability IDs: PCI Code and ID Assignment Specification rev 1.16, §2; the structures are
// in the PCI Express Base Specification rev 6.0 at the sections named below.

/// PCI Power Management (PCIe Base Specification rev 6.0, §7.5.2).
pub const CAP_ID_PM: u8 = 0x01;
/// MSI (PCIe Base Specification rev 6.0, §7.7.1).
pub const CAP_ID_MSI: u8 = 0x05;
/// Vendor-specific capability (PCIe Base Specification rev 6.0, §7.9.4).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// PCI Express Capability (PCIe Base Specification rev 6.0, §7.5.3).
pub const CAP_ID_PCIE: u8 = 0x10;
/// MSI-X (PCIe Base Specification rev 6.0, §7.7.2).
pub const CAP_ID_MSIX: u8 = 0x11;

/// One entry of the standard capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID, header bits 7:0 (`CAP_ID_*`).
    pub id: u8,
    /// Config-space offset of the capability (0x40..=0xFC, dword aligned).
    pub offset: u16,
    /// Bits 31:16 of the header dword (the capability's control/extension word).
    pub extension: u16,
}

/// Maximum number of capabilities that fit between 0x40 and 0xFF (one dword each at least).
const MAX_CAPS: usize = 48;

/// Iterator over the standard capability list. Yields `Err` once and then stops when the list is
/// malformed (pointer outside 0x40..=0xFC, or an offset visited twice).
pub struct CapabilityWalker<'a, A: ConfigRegionAccess> {
    access: &'a A,
    addr: PciAddress,
    next: u16,
    visited: u64,
    count: usize,
    done: bool,
}

impl<'a, A: ConfigRegionAccess> CapabilityWalker<'a, A> {
    /// A walk of `addr`'s list from the Capabilities Pointer (0x34, or 0x14 for a CardBus
    /// bridge); empty if Status bit 4 (Capabilities List) is clear or the function is absent.
    pub fn new(access: &'a A, addr: PciAddress) -> Self {
        let cs = cfg_read(access, addr, regs::COMMAND_STATUS);
        let header = (cfg_read(access, addr, regs::HEADER_TYPE_DW) >> 16) as u8 & 0x7f;
        // Type 2 (CardBus) keeps its pointer at 0x14; types 0 and 1 at 0x34.
        let ptr_off = if header == 2 { 0x14 } else { regs::CAP_PTR };
        let start = if cs & regs::STATUS_CAP_LIST != 0 && cs != u32::MAX {
            (cfg_read(access, addr, ptr_off) & 0xfc) as u16
        } else {
            0
        };
        Self {
            access,
            addr,
            next: start,
            visited: 0,
            count: 0,
            done: false,
        }
    }
}

impl<A: ConfigRegionAccess> Iterator for CapabilityWalker<'_, A> {
    type Item = Result<Capability, PciError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next == 0 {
            return None;
        }
        let off = self.next;
        if !(0x40..=0xfc).contains(&off) {
            self.done = true;
            return Some(Err(PciError::CapPointerOutOfRange {
                addr: self.addr,
                offset: off,
            }));
        }
        let bit = 1u64 << ((off - 0x40) / 4);
        if self.visited & bit != 0 || self.count >= MAX_CAPS {
            self.done = true;
            return Some(Err(PciError::CapLoop {
                addr: self.addr,
                offset: off,
            }));
        }
        self.visited |= bit;
        self.count += 1;
        let h = cfg_read(self.access, self.addr, off);
        // Bottom two pointer bits are reserved and must be ignored (PCI LB 3.0 §6.7).
        self.next = ((h >> 8) & 0xfc) as u16;
        Some(Ok(Capability {
            id: h as u8,
            offset: off,
            extension: (h >> 16) as u16,
        }))
    }
}

/// First capability with `id`, or an error if the list is malformed before it.
pub fn find_capability(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    id: u8,
) -> Result<Option<Capability>, PciError> {
    for c in CapabilityWalker::new(access, addr) {
        let c = c?;
        if c.id == id {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Short lower-case name of a capability ID for the boot inventory ("cap" for IDs without one).
pub(crate) fn cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "pm",
        0x03 => "vpd",
        0x05 => "msi",
        0x09 => "vendor",
        0x0d => "ssvid",
        0x10 => "pcie",
        0x11 => "msix",
        0x12 => "sata",
        0x13 => "af",
        0x14 => "ea",
        _ => "cap",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeConfigSpace;

    fn dev() -> (FakeConfigSpace, PciAddress) {
        let f = FakeConfigSpace::new();
        let a = PciAddress::new(0, 1, 0, 0);
        f.add_function(a, 0x1b36, 0x0001, (0xff, 0, 0), 0);
        (f, a)
    }

    #[test]
    fn walks_a_normal_list() {
        let (f, a) = dev();
        f.add_cap(a, 0x40, CAP_ID_PM, &[0], &[]);
        f.add_cap(a, 0x50, CAP_ID_MSI, &[0x0080_0000], &[]);
        f.add_cap(a, 0x70, CAP_ID_PCIE, &[0], &[]);
        let caps: Vec<_> = CapabilityWalker::new(&f, a)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            caps.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(),
            vec![(1, 0x40), (5, 0x50), (0x10, 0x70)]
        );
        assert_eq!(caps[1].extension, 0x0080);
        assert_eq!(
            find_capability(&f, a, CAP_ID_PCIE).unwrap().unwrap().offset,
            0x70
        );
        assert_eq!(find_capability(&f, a, CAP_ID_MSIX).unwrap(), None);
    }

    #[test]
    fn looping_list_is_an_error_not_a_hang() {
        let (f, a) = dev();
        f.add_cap(a, 0x40, CAP_ID_PM, &[0], &[]);
        f.add_cap(a, 0x48, CAP_ID_MSI, &[0], &[]);
        f.with(a, |x| x.cfg[0x49] = 0x40); // 0x48 -> 0x40 -> 0x48 ...
        let r: Vec<_> = CapabilityWalker::new(&f, a).collect();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[2],
            Err(PciError::CapLoop {
                addr: a,
                offset: 0x40
            })
        );
        assert!(find_capability(&f, a, CAP_ID_MSIX).is_err());
        // Self-loop.
        f.with(a, |x| x.cfg[0x41] = 0x40);
        assert_eq!(CapabilityWalker::new(&f, a).count(), 2);
    }

    #[test]
    fn out_of_range_pointer_is_an_error() {
        let (f, a) = dev();
        f.add_cap(a, 0x40, CAP_ID_PM, &[0], &[]);
        f.with(a, |x| x.cfg[0x41] = 0x10); // into the header
        let r: Vec<_> = CapabilityWalker::new(&f, a).collect();
        assert_eq!(
            r[1],
            Err(PciError::CapPointerOutOfRange {
                addr: a,
                offset: 0x10
            })
        );
        assert_eq!(r.len(), 2);
        // Absent function (all ones) yields nothing.
        assert_eq!(
            CapabilityWalker::new(&f, PciAddress::new(0, 9, 0, 0)).count(),
            0
        );
    }
}
