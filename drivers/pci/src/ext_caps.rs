//! PCIe extended capabilities (config offsets 0x100–0xFFF): a bounded, loop-safe walker and
//! typed PASID (0x1B), ATS (0x0F), PRI (0x13) and DVSEC (0x23) access.
//!
//! Header dword: bits 15:0 capability ID, bits 19:16 version, bits 31:20 next offset (dword
//! aligned). A header of 0 or all-ones at 0x100 means "no extended capabilities" (conventional PCI
//! functions and q35 root-bus integrated endpoints read 0 there).

use crate::{PciError, cfg_read, cfg_write, cfg_write_upper16};
use pci_types::{ConfigRegionAccess, PciAddress};

// Extended capability IDs: PCI Code and ID Assignment Specification rev 1.16, §7; the
// structures are in the PCI Express Base Specification rev 6.0 at the sections named below.

/// Advanced Error Reporting (PCIe Base Specification rev 6.0, §7.8.4).
pub const EXT_CAP_ID_AER: u16 = 0x0001;
/// Access Control Services (PCIe Base Specification rev 6.0, §7.7.11).
pub const EXT_CAP_ID_ACS: u16 = 0x000d;
/// Address Translation Services (PCIe Base Specification rev 6.0, §10.5.1).
pub const EXT_CAP_ID_ATS: u16 = 0x000f;
/// Single Root I/O Virtualization (PCIe Base Specification rev 6.0, §9.3.3).
pub const EXT_CAP_ID_SRIOV: u16 = 0x0010;
/// Page Request Interface (PCIe Base Specification rev 6.0, §10.5.2).
pub const EXT_CAP_ID_PRI: u16 = 0x0013;
/// Process Address Space ID (PCIe Base Specification rev 6.0, §7.8.8).
pub const EXT_CAP_ID_PASID: u16 = 0x001b;
/// Designated Vendor-Specific Extended Capability (PCIe Base Specification rev 6.0, §7.9.6).
pub const EXT_CAP_ID_DVSEC: u16 = 0x0023;

const EXT_START: u16 = 0x100;
/// (0x1000 − 0x100) / 4 possible header positions: the walk can never be longer.
const MAX_EXT_CAPS: usize = 960;

/// One entry of the extended capability list, from its header dword (PCIe Base Specification
/// rev 6.0, §7.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCapability {
    /// Capability ID, header bits 15:0 (`EXT_CAP_ID_*`); never 0 (placeholders are skipped).
    pub id: u16,
    /// Capability version, header bits 19:16 (0..=15).
    pub version: u8,
    /// Config-space offset of the header (0x100..=0xFFC, dword aligned).
    pub offset: u16,
}

/// Iterator over the extended capability list. Stops with one `Err` on a pointer below 0x100 or
/// a revisited offset. Entries with ID 0 (placeholders some devices use) are skipped.
pub struct ExtCapabilityWalker<'a, A: ConfigRegionAccess> {
    access: &'a A,
    addr: PciAddress,
    next: u16,
    visited: [u64; 15],
    count: usize,
    done: bool,
}

impl<'a, A: ConfigRegionAccess> ExtCapabilityWalker<'a, A> {
    /// A walk of `addr`'s list, starting at the header at offset 0x100.
    pub fn new(access: &'a A, addr: PciAddress) -> Self {
        Self {
            access,
            addr,
            next: EXT_START,
            visited: [0; 15],
            count: 0,
            done: false,
        }
    }
}

impl<A: ConfigRegionAccess> Iterator for ExtCapabilityWalker<'_, A> {
    type Item = Result<ExtCapability, PciError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done || self.next == 0 {
                return None;
            }
            let off = self.next;
            if !(EXT_START..=0xffc).contains(&off) || off & 3 != 0 {
                self.done = true;
                return Some(Err(PciError::ExtCapPointerOutOfRange {
                    addr: self.addr,
                    offset: off,
                }));
            }
            let slot = usize::from((off - EXT_START) / 4);
            let (w, b) = (slot / 64, slot % 64);
            if self.visited[w] & (1 << b) != 0 || self.count >= MAX_EXT_CAPS {
                self.done = true;
                return Some(Err(PciError::ExtCapLoop {
                    addr: self.addr,
                    offset: off,
                }));
            }
            self.visited[w] |= 1 << b;
            self.count += 1;
            let h = cfg_read(self.access, self.addr, off);
            if h == u32::MAX || (h == 0 && off == EXT_START) {
                self.done = true;
                return None;
            }
            self.next = ((h >> 20) & 0xffc) as u16;
            let id = h as u16;
            if id == 0 {
                continue;
            }
            return Some(Ok(ExtCapability {
                id,
                version: ((h >> 16) & 0xf) as u8,
                offset: off,
            }));
        }
    }
}

/// The first extended capability with ID `id`, `Ok(None)` if the list has none; a malformed
/// list before it is an error.
pub fn find_ext_capability(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    id: u16,
) -> Result<Option<ExtCapability>, PciError> {
    for c in ExtCapabilityWalker::new(access, addr) {
        let c = c?;
        if c.id == id {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Short lower-case name of an extended capability ID for the boot inventory ("ext" for IDs
/// without one).
pub(crate) fn ext_cap_name(id: u16) -> &'static str {
    match id {
        0x0001 => "aer",
        0x0002 | 0x0009 => "vc",
        0x0003 => "dsn",
        0x000b => "vsec",
        0x000d => "acs",
        0x000e => "ari",
        0x000f => "ats",
        0x0010 => "sriov",
        0x0013 => "pri",
        0x0015 => "rebar",
        0x0018 => "ltr",
        0x0019 => "secpci",
        0x001b => "pasid",
        0x001e => "l1ss",
        0x0023 => "dvsec",
        0x0025 => "dlf",
        0x0026 => "pl16",
        _ => "ext",
    }
}

/// Fails if a capability of `len` bytes at `offset` would run past the 4 KiB config space.
fn check_fits(addr: PciAddress, cap: &ExtCapability, len: u16) -> Result<(), PciError> {
    if u32::from(cap.offset) + u32::from(len) > 0x1000 {
        return Err(PciError::CapPastConfigSpace {
            addr,
            offset: cap.offset,
            id: cap.id,
        });
    }
    Ok(())
}

/// [`find_ext_capability`], then [`check_fits`] for a fixed layout of `len` bytes.
fn find_fitting(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    id: u16,
    len: u16,
) -> Result<Option<ExtCapability>, PciError> {
    let found = find_ext_capability(access, addr, id)?;
    if let Some(c) = &found {
        check_fits(addr, c, len)?;
    }
    Ok(found)
}

bitflags::bitflags! {
    /// PASID Capability register (+4, 16 bits; PCIe Base Specification rev 6.0, §7.8.8.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PasidCapability: u16 {
        /// Bit 1: the function can issue requests with the Execute Requested bit.
        const EXECUTE = 1 << 1;
        /// Bit 2: the function can issue requests with the Privileged Mode Requested bit.
        const PRIVILEGED = 1 << 2;
        /// Bits 12:8: Max PASID Width (read it with [`PasidCap::max_pasid_width`]).
        const MAX_PASID_WIDTH = 0x1f << 8;
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// PASID Control register (+6, 16 bits; PCIe Base Specification rev 6.0, §7.8.8.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PasidControl: u16 {
        /// Bit 0: PASID Enable (the function may emit PASID TLP prefixes).
        const ENABLE = 1 << 0;
        /// Bit 1: Execute Permission Enable.
        const EXECUTE_ENABLE = 1 << 1;
        /// Bit 2: Privileged Mode Enable.
        const PRIVILEGED_ENABLE = 1 << 2;
        const _ = !0;
    }
}

/// PASID extended capability (0x1B; PCIe Base Specification rev 6.0, §7.8.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidCap {
    /// The function the capability belongs to.
    pub addr: PciAddress,
    /// Config-space offset of the capability header.
    pub offset: u16,
    /// The (read-only) PASID Capability register as read by [`PasidCap::find`].
    pub capability: PasidCapability,
}

impl PasidCap {
    /// Finds the function's PASID capability (`Ok(None)` if it has none).
    pub fn find(
        access: &impl ConfigRegionAccess,
        addr: PciAddress,
    ) -> Result<Option<Self>, PciError> {
        let Some(c) = find_fitting(access, addr, EXT_CAP_ID_PASID, 8)? else {
            return Ok(None);
        };
        let d = cfg_read(access, addr, c.offset + 4);
        Ok(Some(Self {
            addr,
            offset: c.offset,
            capability: PasidCapability::from_bits_retain(d as u16),
        }))
    }

    /// Width in bits of the PASIDs the function can emit (0..=20; the 5-bit field's values
    /// above 20 are reserved by the PCIe Base Specification 6.0, §7.8.8.2, and read as 20).
    pub fn max_pasid_width(&self) -> u8 {
        (((self.capability.bits() >> 8) & 0x1f) as u8).min(20)
    }

    /// Reads the PASID Control register.
    pub fn control(&self, access: &impl ConfigRegionAccess) -> PasidControl {
        PasidControl::from_bits_retain((cfg_read(access, self.addr, self.offset + 4) >> 16) as u16)
    }

    fn write_control(&self, access: &impl ConfigRegionAccess, c: PasidControl) {
        cfg_write_upper16(access, self.addr, self.offset + 4, c.bits());
    }

    /// Enables PASID (the spec requires doing this before ATS is enabled, while the function is
    /// idle). `execute`/`privileged` must be offered by the capability register.
    pub fn enable(
        &self,
        access: &impl ConfigRegionAccess,
        execute: bool,
        privileged: bool,
    ) -> Result<(), PciError> {
        if (execute && !self.capability.contains(PasidCapability::EXECUTE))
            || (privileged && !self.capability.contains(PasidCapability::PRIVILEGED))
        {
            return Err(PciError::PasidFeatureUnsupported { addr: self.addr });
        }
        let mut c = PasidControl::ENABLE;
        c.set(PasidControl::EXECUTE_ENABLE, execute);
        c.set(PasidControl::PRIVILEGED_ENABLE, privileged);
        self.write_control(access, c);
        Ok(())
    }

    /// Clears PASID Control (enable, execute and privileged); the function must be idle.
    pub fn disable(&self, access: &impl ConfigRegionAccess) {
        self.write_control(access, PasidControl::empty());
    }
}

/// ATS extended capability (0x0F; PCIe Base Specification rev 6.0, §10.5.1). Capability +4
/// bits 4:0 invalidate queue depth, bit 5 page aligned request, bit 6 global invalidate;
/// control +6 bits 4:0 STU, bit 15 enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtsCap {
    /// The function the capability belongs to.
    pub addr: PciAddress,
    /// Config-space offset of the capability header.
    pub offset: u16,
    /// Invalidate Queue Depth, capability bits 4:0 (0 means 32 outstanding invalidations).
    pub invalidate_queue_depth: u8,
    /// Page Aligned Request, capability bit 5: untranslated addresses in translation requests
    /// are 4 KiB aligned.
    pub page_aligned_request: bool,
    /// Global Invalidate Supported, capability bit 6.
    pub global_invalidate: bool,
}

impl AtsCap {
    /// Finds the function's ATS capability (`Ok(None)` if it has none).
    pub fn find(
        access: &impl ConfigRegionAccess,
        addr: PciAddress,
    ) -> Result<Option<Self>, PciError> {
        let Some(c) = find_fitting(access, addr, EXT_CAP_ID_ATS, 8)? else {
            return Ok(None);
        };
        let d = cfg_read(access, addr, c.offset + 4);
        Ok(Some(Self {
            addr,
            offset: c.offset,
            invalidate_queue_depth: (d & 0x1f) as u8,
            page_aligned_request: d & (1 << 5) != 0,
            global_invalidate: d & (1 << 6) != 0,
        }))
    }

    /// Reads ATS Control bit 15 (Enable).
    pub fn enabled(&self, access: &impl ConfigRegionAccess) -> bool {
        cfg_read(access, self.addr, self.offset + 4) & (1 << 31) != 0
    }

    /// `stu` = smallest translation unit as log2(bytes) − 12.
    pub fn set_enabled(&self, access: &impl ConfigRegionAccess, enabled: bool, stu: u8) {
        let ctl = u16::from(stu & 0x1f) | if enabled { 1 << 15 } else { 0 };
        cfg_write_upper16(access, self.addr, self.offset + 4, ctl);
    }
}

/// PRI extended capability (0x13; PCIe Base Specification rev 6.0, §10.5.2). Control +4 bit 0
/// enable, bit 1 reset; status +6 bit 0 response failure, bit 1 unexpected PRG index, bit 8
/// stopped, bit 15 PRG response PASID required; +8 outstanding page request capacity; +0xC
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriCap {
    /// The function the capability belongs to.
    pub addr: PciAddress,
    /// Config-space offset of the capability header.
    pub offset: u16,
    /// Outstanding Page Request Capacity (+8): the most page requests the function can have
    /// outstanding.
    pub outstanding_capacity: u32,
    /// Status bit 15: page request group responses must carry the request's PASID.
    pub prg_response_pasid_required: bool,
}

impl PriCap {
    /// Finds the function's PRI capability (`Ok(None)` if it has none).
    pub fn find(
        access: &impl ConfigRegionAccess,
        addr: PciAddress,
    ) -> Result<Option<Self>, PciError> {
        let Some(c) = find_fitting(access, addr, EXT_CAP_ID_PRI, 0x10)? else {
            return Ok(None);
        };
        let cs = cfg_read(access, addr, c.offset + 4);
        Ok(Some(Self {
            addr,
            offset: c.offset,
            outstanding_capacity: cfg_read(access, addr, c.offset + 8),
            prg_response_pasid_required: cs & (1 << 31) != 0,
        }))
    }

    /// Reads PRI Status bit 8 (Stopped): no page request is outstanding since the last disable.
    pub fn stopped(&self, access: &impl ConfigRegionAccess) -> bool {
        cfg_read(access, self.addr, self.offset + 4) & (1 << 24) != 0
    }

    /// Resets, programs the allocation (≤ capacity) and enables page requests.
    pub fn enable(&self, access: &impl ConfigRegionAccess, allocation: u32) {
        // Status bits 16/17 are RW1C: write only the control half.
        cfg_write(access, self.addr, self.offset + 4, 1 << 1);
        cfg_write(
            access,
            self.addr,
            self.offset + 0xc,
            allocation.min(self.outstanding_capacity),
        );
        cfg_write(access, self.addr, self.offset + 4, 1);
    }

    /// Clears PRI Control (Enable); poll [`PriCap::stopped`] before reusing the function.
    pub fn disable(&self, access: &impl ConfigRegionAccess) {
        cfg_write(access, self.addr, self.offset + 4, 0);
    }
}

/// Designated vendor-specific extended capability (0x23; PCIe Base Specification rev 6.0,
/// §7.9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dvsec {
    /// Config-space offset of the capability header.
    pub offset: u16,
    /// DVSEC Vendor ID (header 1 bits 15:0): the vendor that defined `dvsec_id`.
    pub vendor: u16,
    /// DVSEC Revision (header 1 bits 19:16), defined by the vendor.
    pub revision: u8,
    /// Whole length in bytes, including the 10-byte header.
    pub length: u16,
    /// DVSEC ID (header 2 bits 15:0), the vendor's structure type (Intel Scalable IOV: 5).
    pub dvsec_id: u16,
}

/// All DVSECs of the function; each header is validated (length ≥ 0xA, inside config space).
pub fn dvsecs(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
) -> Result<alloc::vec::Vec<Dvsec>, PciError> {
    let mut out = alloc::vec::Vec::new();
    for c in ExtCapabilityWalker::new(access, addr) {
        let c = c?;
        if c.id != EXT_CAP_ID_DVSEC {
            continue;
        }
        check_fits(addr, &c, 0x0c)?;
        let h1 = cfg_read(access, addr, c.offset + 4);
        let h2 = cfg_read(access, addr, c.offset + 8);
        let length = (h1 >> 20) as u16;
        if length < 0x0a {
            return Err(PciError::CapTooShort {
                addr,
                offset: c.offset,
                id: c.id,
            });
        }
        check_fits(addr, &c, length)?;
        out.push(Dvsec {
            offset: c.offset,
            vendor: h1 as u16,
            revision: ((h1 >> 16) & 0xf) as u8,
            length,
            dvsec_id: h2 as u16,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeConfigSpace;

    fn dev() -> (FakeConfigSpace, PciAddress) {
        let f = FakeConfigSpace::new();
        let a = PciAddress::new(0, 1, 0, 0);
        f.add_function(a, 0x8086, 0x0b25, (8, 0x80, 0), 0);
        (f, a)
    }

    #[test]
    fn walks_and_types_pasid_ats_pri_dvsec() {
        let (f, a) = dev();
        f.put_ext_cap(a, 0x100, EXT_CAP_ID_AER, 2, 0x150, &[]);
        f.put_ext_cap(a, 0x150, EXT_CAP_ID_ATS, 1, 0x160, &[0x0000_0040]);
        f.put_ext_cap(a, 0x160, EXT_CAP_ID_PASID, 1, 0x170, &[0x0000_1406]); // width 20, exec+priv
        f.put_ext_cap(a, 0x170, EXT_CAP_ID_PRI, 1, 0x180, &[0x8000_0000, 512, 0]);
        f.put_ext_cap(
            a,
            0x180,
            EXT_CAP_ID_DVSEC,
            1,
            0x1a0,
            &[0x0141_8086, 0x0000_0023],
        );
        f.put_ext_cap(a, 0x1a0, 0, 0, 0x1c0, &[]); // placeholder
        f.put_ext_cap(a, 0x1c0, EXT_CAP_ID_SRIOV, 1, 0, &[]);
        f.with(a, |x| {
            x.set_wmask32(0x164, 0x0007_0000);
            x.set_wmask32(0x154, 0x801f_0000);
        });
        let ids: Vec<_> = ExtCapabilityWalker::new(&f, a)
            .map(|c| c.unwrap().id)
            .collect();
        assert_eq!(ids, vec![1, 0x0f, 0x1b, 0x13, 0x23, 0x10]);

        let p = PasidCap::find(&f, a).unwrap().unwrap();
        assert_eq!(p.max_pasid_width(), 20);
        p.enable(&f, false, true).unwrap();
        assert_eq!(
            p.control(&f),
            PasidControl::ENABLE | PasidControl::PRIVILEGED_ENABLE
        );
        p.disable(&f);
        assert_eq!(p.control(&f), PasidControl::empty());

        let ats = AtsCap::find(&f, a).unwrap().unwrap();
        assert!(ats.global_invalidate && !ats.page_aligned_request);
        ats.set_enabled(&f, true, 0);
        assert!(ats.enabled(&f));

        let pri = PriCap::find(&f, a).unwrap().unwrap();
        assert_eq!(pri.outstanding_capacity, 512);
        assert!(pri.prg_response_pasid_required);

        let d = dvsecs(&f, a).unwrap();
        assert_eq!(
            d,
            vec![Dvsec {
                offset: 0x180,
                vendor: 0x8086,
                revision: 1,
                length: 0x14,
                dvsec_id: 0x23
            }]
        );
    }

    #[test]
    fn pasid_feature_not_offered_is_refused() {
        let (f, a) = dev();
        f.put_ext_cap(a, 0x100, EXT_CAP_ID_PASID, 1, 0, &[0x0000_0500]);
        let p = PasidCap::find(&f, a).unwrap().unwrap();
        assert_eq!(
            p.enable(&f, false, true),
            Err(PciError::PasidFeatureUnsupported { addr: a })
        );
    }

    #[test]
    fn malformed_ext_lists_are_errors() {
        let (f, a) = dev();
        // Loop 0x100 -> 0x140 -> 0x100.
        f.put_ext_cap(a, 0x100, EXT_CAP_ID_AER, 1, 0x140, &[]);
        f.put_ext_cap(a, 0x140, EXT_CAP_ID_ACS, 1, 0x100, &[]);
        let r: Vec<_> = ExtCapabilityWalker::new(&f, a).collect();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[2],
            Err(PciError::ExtCapLoop {
                addr: a,
                offset: 0x100
            })
        );
        assert!(find_ext_capability(&f, a, EXT_CAP_ID_PASID).is_err());
        // Pointer back into the standard header area.
        f.put_ext_cap(a, 0x140, EXT_CAP_ID_ACS, 1, 0x40, &[]);
        let r: Vec<_> = ExtCapabilityWalker::new(&f, a).collect();
        assert_eq!(
            r[2],
            Err(PciError::ExtCapPointerOutOfRange {
                addr: a,
                offset: 0x40
            })
        );
        // Self loop of placeholder entries (id 0) still terminates.
        f.put_ext_cap(a, 0x100, 0, 0, 0x100, &[]);
        f.with(a, |x| x.set32(0x100, 0x1000_0000)); // id 0, next 0x100
        assert!(matches!(
            ExtCapabilityWalker::new(&f, a).last(),
            Some(Err(PciError::ExtCapLoop { .. }))
        ));
        // DVSEC with a bad length, and one past the end of config space.
        f.put_ext_cap(a, 0x100, EXT_CAP_ID_DVSEC, 1, 0, &[0x0041_8086, 0]);
        assert!(matches!(dvsecs(&f, a), Err(PciError::CapTooShort { .. })));
        f.put_ext_cap(a, 0x100, EXT_CAP_ID_DVSEC, 1, 0xff0, &[0x0141_8086, 0]);
        f.put_ext_cap(a, 0xff0, EXT_CAP_ID_DVSEC, 1, 0, &[0x0141_8086, 0]);
        assert!(matches!(
            dvsecs(&f, a),
            Err(PciError::CapPastConfigSpace { offset: 0xff0, .. })
        ));
        // No extended space at all.
        let (g, b) = dev();
        assert_eq!(ExtCapabilityWalker::new(&g, b).count(), 0);
    }
}
