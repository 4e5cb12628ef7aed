//! Enumeration: depth-first from each MCFG segment's start bus through configured bridges,
//! multi-function devices, BARs, capabilities, extended capabilities; and the inventory line.

use crate::bar::{BarInfo, probe_bars};
use crate::caps::{CapabilityWalker, cap_name};
use crate::ext_caps::{ExtCapabilityWalker, PasidCap, dvsecs, ext_cap_name};
use crate::msi::MsixCap;
use crate::{PciError, cfg_read, regs};
use alloc::vec::Vec;
use core::fmt;
use pci_types::{ConfigRegionAccess, HeaderType, PciAddress, PciHeader, PciPciBridgeHeader};

/// One MCFG allocation's reach: the buses of a segment that ECAM decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRange {
    /// PCI segment group number.
    pub segment: u16,
    /// First bus decoded (the root bus enumeration starts from).
    pub bus_start: u8,
    /// Last bus decoded, inclusive.
    pub bus_end: u8,
}

/// The bus numbers of a PCI-PCI bridge (type 1 header offset 0x18; PCI Express Base
/// Specification rev 6.0, §7.5.1.3.2–§7.5.1.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeInfo {
    /// Primary Bus Number: the bus the bridge sits on.
    pub primary: u8,
    /// Secondary Bus Number: the bus directly below the bridge.
    pub secondary: u8,
    /// Subordinate Bus Number: the highest bus number below the bridge.
    pub subordinate: u8,
}

/// A present PCI function and what was learnt about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Segment, bus, device and function number.
    pub addr: PciAddress,
    /// Vendor ID (config offset 0x00).
    pub vendor: u16,
    /// Device ID (config offset 0x02).
    pub device: u16,
    /// Base Class Code (config offset 0x0B).
    pub class: u8,
    /// Sub-Class Code (config offset 0x0A).
    pub subclass: u8,
    /// Programming Interface (config offset 0x09).
    pub prog_if: u8,
    /// Revision ID (config offset 0x08).
    pub revision: u8,
    /// Header type without the multi-function bit.
    pub header_type: u8,
    /// Header Type bit 7: the device implements functions 1–7 too.
    pub multifunction: bool,
    /// Bus numbers, for a PCI-PCI bridge (header type 1).
    pub bridge: Option<BridgeInfo>,
    /// Implemented BARs (empty when enumeration did not size BARs).
    pub bars: Vec<BarInfo>,
    /// Standard capability IDs with their offsets.
    pub caps: Vec<(u8, u16)>,
    /// Extended capability IDs with their offsets.
    pub ext_caps: Vec<(u16, u16)>,
    /// MSI-X table size, when the capability validated.
    pub msix_vectors: Option<u16>,
    /// Max PASID Width in bits, when the function has a PASID capability.
    pub pasid_width: Option<u8>,
    /// (vendor, DVSEC ID) pairs.
    pub dvsecs: Vec<(u16, u16)>,
    /// PCIe Device/Port Type (PCIe Capabilities register bits 7:4, see [`pcie_type`]); None
    /// for conventional PCI functions.
    pub pcie_type: Option<u8>,
}

/// PCIe Device/Port Type values (PCI Express Base Specification rev 6.0, §7.5.3.2, PCI Express
/// Capabilities register bits 7:4).
pub mod pcie_type {
    /// PCI Express Endpoint.
    pub const ENDPOINT: u8 = 0x0;
    /// Legacy PCI Express Endpoint (may use I/O requests and locked transactions).
    pub const LEGACY_ENDPOINT: u8 = 0x1;
    /// Root Port of a Root Complex.
    pub const ROOT_PORT: u8 = 0x4;
    /// Upstream Port of a switch.
    pub const UPSTREAM_PORT: u8 = 0x5;
    /// Downstream Port of a switch.
    pub const DOWNSTREAM_PORT: u8 = 0x6;
    /// PCI Express to PCI/PCI-X bridge: owns the requests of the conventional devices below.
    pub const PCIE_TO_PCI_BRIDGE: u8 = 0x7;
    /// PCI/PCI-X to PCI Express bridge (reverse bridge).
    pub const PCI_TO_PCIE_BRIDGE: u8 = 0x8;
    /// Root Complex Integrated Endpoint.
    pub const RC_INTEGRATED_ENDPOINT: u8 = 0x9;
    /// Root Complex Event Collector.
    pub const RC_EVENT_COLLECTOR: u8 = 0xa;
}

impl PciFunction {
    /// Requester ID as the IOMMU sees it (bus << 8 | dev << 3 | fn).
    pub fn requester_id(&self) -> u16 {
        (u16::from(self.addr.bus()) << 8)
            | (u16::from(self.addr.device()) << 3)
            | u16::from(self.addr.function())
    }

    /// Whether the function is a PCI-PCI bridge (header type 1).
    pub fn is_bridge(&self) -> bool {
        self.header_type == 1
    }
}

/// Something odd found while enumerating that did not stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnumIssue {
    /// A PCI-PCI bridge whose bus numbers were not assigned by firmware (secondary 0) or are
    /// inconsistent (secondary ≤ own bus, subordinate < secondary, or outside the segment).
    BridgeUnconfigured {
        /// The bridge.
        addr: PciAddress,
        /// Its bus numbers as read.
        bus: BridgeInfo,
    },
    /// A secondary bus already scanned through another bridge (overlapping ranges).
    BusAlreadyScanned {
        /// The second bridge that leads to the bus.
        addr: PciAddress,
        /// The bus number.
        bus: u8,
    },
    /// A malformed BAR or capability list; the function is still listed.
    Function(PciError),
    /// Devices found on a bus no configured bridge leads to (only with `scan_all_buses`).
    OrphanBus {
        /// The segment.
        segment: u16,
        /// The bus number.
        bus: u8,
    },
}

/// What [`enumerate_with`] does beyond reading IDs and capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnumOptions {
    /// Size BARs (writes config space; decode disabled while probing).
    pub probe_bars: bool,
    /// After the bridge walk, also scan every bus of each range no bridge led to.
    pub scan_all_buses: bool,
}

impl Default for EnumOptions {
    fn default() -> Self {
        Self {
            probe_bars: true,
            scan_all_buses: false,
        }
    }
}

/// The result of an enumeration: every present function and what was odd.
#[derive(Debug, Clone, Default)]
pub struct Enumeration {
    /// Present functions, depth first: a bus's devices in ascending order, each bridge's
    /// subtree after the whole bus that holds it.
    pub functions: Vec<PciFunction>,
    /// Problems that did not stop the enumeration.
    pub issues: Vec<EnumIssue>,
}

impl Enumeration {
    /// The function at `addr`, if it is present.
    pub fn find(&self, addr: PciAddress) -> Option<&PciFunction> {
        self.functions.iter().find(|f| f.addr == addr)
    }

    /// Every function with this vendor and device ID.
    pub fn find_id(&self, vendor: u16, device: u16) -> impl Iterator<Item = &PciFunction> {
        self.functions
            .iter()
            .filter(move |f| f.vendor == vendor && f.device == device)
    }
    /// The bridge whose secondary bus `addr` sits on (None on a root bus).
    pub fn parent_bridge(&self, addr: PciAddress) -> Option<&PciFunction> {
        self.functions.iter().find(|f| {
            f.addr.segment() == addr.segment()
                && f.addr != addr
                && f.bridge.is_some_and(|b| b.secondary == addr.bus())
        })
    }

    /// The requester ID under which `addr`'s DMA and MSIs reach the IOMMU. Conventional PCI
    /// has no requester IDs: going up from the function, every conventional bus replaces the
    /// ID with the one its bridge uses: a PCIe-to-PCI bridge issues requests as (its
    /// secondary bus, 00.0) (PCIe-to-PCI/PCI-X bridge spec 2.3), any other bridge as itself.
    /// A bus is conventional when its bridge is not a PCIe switch or root port. These are the
    /// rules of Linux (`pci_for_each_dma_alias`) and QEMU (`pci_device_get_iommu_bus_devfn`).
    /// Functions on PCIe buses (and on root buses) are their own alias.
    pub fn dma_alias(&self, addr: PciAddress) -> PciAddress {
        let mut alias = addr;
        let mut bus_of = addr;
        // Bounded by the number of buses: each step moves to a strictly lower bus number
        // in a well-formed hierarchy; the counter guards against a malformed one.
        for _ in 0..256 {
            let Some(p) = self.parent_bridge(bus_of) else {
                break;
            };
            let express = matches!(
                p.pcie_type,
                Some(
                    pcie_type::ROOT_PORT
                        | pcie_type::UPSTREAM_PORT
                        | pcie_type::DOWNSTREAM_PORT
                        | pcie_type::PCI_TO_PCIE_BRIDGE
                )
            );
            if !express {
                alias = match (p.pcie_type, p.bridge) {
                    (Some(pcie_type::PCIE_TO_PCI_BRIDGE), Some(b)) => {
                        PciAddress::new(addr.segment(), b.secondary, 0, 0)
                    }
                    _ => p.addr,
                };
            }
            bus_of = p.addr;
        }
        alias
    }

    /// Secondary and subordinate bus of a bridge; the lookup the DMAR scope resolver needs.
    pub fn bridge_buses(&self, segment: u16, bus: u8, dev: u8, func: u8) -> Option<BridgeInfo> {
        self.find(PciAddress::new(segment, bus, dev, func))
            .and_then(|f| f.bridge)
    }
}

struct BusSet([u64; 4]);
impl BusSet {
    fn test_and_set(&mut self, bus: u8) -> bool {
        let (w, b) = (usize::from(bus / 64), bus % 64);
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }
}

/// Enumerates every segment range with default options.
pub fn enumerate(access: &impl ConfigRegionAccess, ranges: &[SegmentRange]) -> Enumeration {
    enumerate_with(access, ranges, EnumOptions::default())
}

/// Enumerates every segment range: from each range's start bus through the configured
/// bridges (and, with [`EnumOptions::scan_all_buses`], every other bus of the range).
pub fn enumerate_with(
    access: &impl ConfigRegionAccess,
    ranges: &[SegmentRange],
    opts: EnumOptions,
) -> Enumeration {
    let mut out = Enumeration::default();
    for r in ranges {
        if r.bus_end < r.bus_start {
            continue;
        }
        let mut seen = BusSet([0; 4]);
        // Explicit stack instead of recursion: depth is bounded by the 256 buses, each pushed once.
        let mut stack: Vec<u8> = Vec::new();
        seen.test_and_set(r.bus_start);
        stack.push(r.bus_start);
        while let Some(bus) = stack.pop() {
            let mut children = Vec::new();
            scan_bus(access, r, bus, opts, &mut out, &mut children);
            // Push in reverse so buses are visited in ascending device order (depth first).
            for (addr, b) in children.into_iter().rev() {
                if seen.test_and_set(b.secondary) {
                    out.issues.push(EnumIssue::BusAlreadyScanned {
                        addr,
                        bus: b.secondary,
                    });
                } else {
                    stack.push(b.secondary);
                }
            }
        }
        if opts.scan_all_buses {
            for bus in r.bus_start..=r.bus_end {
                if seen.test_and_set(bus) {
                    continue;
                }
                let before = out.functions.len();
                let mut children = Vec::new();
                scan_bus(access, r, bus, opts, &mut out, &mut children);
                if out.functions.len() > before {
                    out.issues.push(EnumIssue::OrphanBus {
                        segment: r.segment,
                        bus,
                    });
                }
            }
        }
    }
    out
}

fn scan_bus(
    access: &impl ConfigRegionAccess,
    r: &SegmentRange,
    bus: u8,
    opts: EnumOptions,
    out: &mut Enumeration,
    children: &mut Vec<(PciAddress, BridgeInfo)>,
) {
    for dev in 0..32u8 {
        let f0 = PciAddress::new(r.segment, bus, dev, 0);
        let id = cfg_read(access, f0, regs::VENDOR_DEVICE);
        if id as u16 == 0xffff || id == 0 {
            continue;
        }
        let ht = (cfg_read(access, f0, regs::HEADER_TYPE_DW) >> 16) as u8;
        let nfun = if ht & 0x80 != 0 { 8 } else { 1 };
        for func in 0..nfun {
            let addr = PciAddress::new(r.segment, bus, dev, func);
            let id = cfg_read(access, addr, regs::VENDOR_DEVICE);
            if id as u16 == 0xffff || id == 0 {
                continue;
            }
            let f = probe_function(access, addr, opts, &mut out.issues);
            if let Some(b) = f.bridge {
                let ok =
                    b.secondary > bus && b.subordinate >= b.secondary && b.subordinate <= r.bus_end;
                if ok {
                    children.push((addr, b));
                } else {
                    log::warn!("pci {addr}: bridge bus numbers not configured ({b:?})");
                    out.issues
                        .push(EnumIssue::BridgeUnconfigured { addr, bus: b });
                }
            }
            out.functions.push(f);
        }
    }
}

fn probe_function(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    opts: EnumOptions,
    issues: &mut Vec<EnumIssue>,
) -> PciFunction {
    let hdr = PciHeader::new(addr);
    let (vendor, device) = hdr.id(access);
    let (revision, class, subclass, prog_if) = hdr.revision_and_class(access);
    let header_type = match hdr.header_type(access) {
        HeaderType::Endpoint => 0,
        HeaderType::PciPciBridge => 1,
        HeaderType::CardBusBridge => 2,
        HeaderType::Unknown(t) => t,
        _ => 0x7f,
    };
    let multifunction = hdr.has_multiple_functions(access);
    let bridge = PciPciBridgeHeader::from_header(hdr, access).map(|b| BridgeInfo {
        primary: b.primary_bus_number(access),
        secondary: b.secondary_bus_number(access),
        subordinate: b.subordinate_bus_number(access),
    });
    let bars = if opts.probe_bars {
        let p = probe_bars(access, addr, header_type);
        issues.extend(p.errors.into_iter().map(EnumIssue::Function));
        p.bars
    } else {
        Vec::new()
    };
    let mut caps = Vec::new();
    for c in CapabilityWalker::new(access, addr) {
        match c {
            Ok(c) => caps.push((c.id, c.offset)),
            Err(e) => issues.push(EnumIssue::Function(e)),
        }
    }
    let mut ext_caps = Vec::new();
    for c in ExtCapabilityWalker::new(access, addr) {
        match c {
            Ok(c) => ext_caps.push((c.id, c.offset)),
            Err(e) => issues.push(EnumIssue::Function(e)),
        }
    }
    let msix_vectors = if opts.probe_bars && caps.iter().any(|c| c.0 == crate::caps::CAP_ID_MSIX) {
        match MsixCap::find(access, addr, &bars) {
            Ok(m) => m.map(|m| m.table_size),
            Err(e) => {
                issues.push(EnumIssue::Function(e));
                None
            }
        }
    } else {
        None
    };
    let pasid_width = PasidCap::find(access, addr)
        .ok()
        .flatten()
        .map(|p| p.max_pasid_width());
    let pcie_type = caps
        .iter()
        .find(|c| c.0 == crate::caps::CAP_ID_PCIE)
        .map(|c| ((cfg_read(access, addr, c.1) >> 20) & 0xf) as u8);
    let dvsecs = match dvsecs(access, addr) {
        Ok(d) => d.into_iter().map(|d| (d.vendor, d.dvsec_id)).collect(),
        Err(_) => Vec::new(), // the walker error is already in `issues`, or a DVSEC length error:
    };
    PciFunction {
        addr,
        vendor,
        device,
        class,
        subclass,
        prog_if,
        revision,
        header_type,
        multifunction,
        bridge,
        bars,
        caps,
        ext_caps,
        msix_vectors,
        pasid_width,
        dvsecs,
        pcie_type,
    }
}

/// Short name of a base class (PCI code and ID assignment spec).
pub(crate) fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, 0x06) => "sata",
        (0x01, 0x08) => "nvme",
        (0x01, _) => "storage",
        (0x02, _) => "network",
        (0x03, _) => "display",
        (0x04, _) => "multimedia",
        (0x05, _) => "memory",
        (0x06, 0x00) => "host-bridge",
        (0x06, 0x01) => "isa-bridge",
        (0x06, 0x04) => "pci-bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "comm",
        (0x08, 0x80) => "system-other",
        (0x08, _) => "system",
        (0x0c, 0x03) => "usb",
        (0x0c, 0x05) => "smbus",
        (0x0c, _) => "serial-bus",
        (0x12, _) => "accelerator",
        (0xff, _) => "unassigned",
        _ => "other",
    }
}

/// The boot inventory line: `0000:00:02.0 8086:0b25 08.80.00 system-other bars[0:mem64 …] caps[msix(64) pcie] ext[pasid(20) ats]`.
impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} {:02x}.{:02x}.{:02x} {}",
            self.addr,
            self.vendor,
            self.device,
            self.class,
            self.subclass,
            self.prog_if,
            class_name(self.class, self.subclass)
        )?;
        if let Some(b) = self.bridge {
            write!(f, " buses[{:02x}-{:02x}]", b.secondary, b.subordinate)?;
        }
        if !self.bars.is_empty() {
            f.write_str(" bars[")?;
            for (i, b) in self.bars.iter().enumerate() {
                write!(f, "{}{}", if i > 0 { " " } else { "" }, b)?;
            }
            f.write_str("]")?;
        }
        if !self.caps.is_empty() {
            f.write_str(" caps[")?;
            for (i, (id, _)) in self.caps.iter().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                match (*id, self.msix_vectors) {
                    (crate::caps::CAP_ID_MSIX, Some(n)) => write!(f, "msix({n})")?,
                    (id, _) if cap_name(id) == "cap" => write!(f, "cap{id:02x}")?,
                    (id, _) => f.write_str(cap_name(id))?,
                }
            }
            f.write_str("]")?;
        }
        if !self.ext_caps.is_empty() {
            f.write_str(" ext[")?;
            let mut dv = self.dvsecs.iter();
            for (i, (id, _)) in self.ext_caps.iter().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                match *id {
                    crate::ext_caps::EXT_CAP_ID_PASID => match self.pasid_width {
                        Some(w) => write!(f, "pasid({w})")?,
                        None => f.write_str("pasid")?,
                    },
                    crate::ext_caps::EXT_CAP_ID_DVSEC => match dv.next() {
                        Some((v, d)) => write!(f, "dvsec({v:04x}:{d:x})")?,
                        None => f.write_str("dvsec")?,
                    },
                    id if ext_cap_name(id) == "ext" => write!(f, "ext{id:04x}")?,
                    id => f.write_str(ext_cap_name(id))?,
                }
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeConfigSpace;

    /// Segment 0, buses 0..=0xFF.
    const ALL_BUSES: [SegmentRange; 1] = [SegmentRange {
        segment: 0,
        bus_start: 0,
        bus_end: 0xff,
    }];

    fn a(bus: u8, dev: u8, func: u8) -> PciAddress {
        PciAddress::new(0, bus, dev, func)
    }

    /// 00:00.0 host bridge, 00:01.0 root port -> bus 1 [1..=3], 01:00.0 switch port -> bus 2
    /// [2..=2] with 02:00.0 endpoint (multi-function: .0 and .3), 00:02.0 bridge left
    /// unconfigured by firmware, 00:03.0 endpoint with a 64-bit BAR, and 05:00.0 on an orphan bus.
    fn hierarchy() -> FakeConfigSpace {
        let f = FakeConfigSpace::new();
        f.add_function(a(0, 0, 0), 0x8086, 0x29c0, (6, 0, 0), 0);
        f.add_function(a(0, 1, 0), 0x1b36, 0x000c, (6, 4, 0), 1);
        f.set_bridge_buses(a(0, 1, 0), 0, 1, 3);
        f.add_function(a(1, 0, 0), 0x1b36, 0x000e, (6, 4, 0), 1);
        f.set_bridge_buses(a(1, 0, 0), 1, 2, 2);
        f.add_function(a(2, 0, 0), 0x8086, 0x0b25, (8, 0x80, 0), 0x80);
        f.add_function(a(2, 0, 3), 0x8086, 0x0b26, (8, 0x80, 0), 0x80);
        f.add_function(a(0, 2, 0), 0x1b36, 0x000c, (6, 4, 0), 1);
        f.add_function(a(0, 3, 0), 0x1234, 0x11e8, (0xff, 0, 0), 0);
        f.add_mem_bar(a(0, 3, 0), 0, 0x10_0000, 0x8_0000_0000, true, true);
        f.add_function(a(5, 0, 0), 0x1af4, 0x1041, (2, 0, 0), 0);
        f
    }

    #[test]
    fn dma_aliases_follow_conventional_buses() {
        use crate::caps::CAP_ID_PCIE;
        let f = FakeConfigSpace::new();
        let pcie = |addr, ty: u32| f.add_cap(addr, 0x40, CAP_ID_PCIE, &[ty << 20], &[]);
        f.add_function(a(0, 0, 0), 0x8086, 0x29c0, (6, 0, 0), 0);
        // Root port → bus 2: PCIe-to-PCI bridge → bus 3 [3..=4].
        f.add_function(a(0, 3, 0), 0x1b36, 0x000c, (6, 4, 0), 1);
        f.set_bridge_buses(a(0, 3, 0), 0, 2, 4);
        pcie(a(0, 3, 0), 4);
        f.add_function(a(2, 0, 0), 0x1b36, 0x000e, (6, 4, 0), 1);
        f.set_bridge_buses(a(2, 0, 0), 2, 3, 4);
        pcie(a(2, 0, 0), 7);
        // Conventional endpoint on bus 3, and a conventional PCI-PCI bridge → bus 4 with one.
        f.add_function(a(3, 3, 0), 0x1b36, 0x0005, (0xff, 0, 0), 0);
        f.add_function(a(3, 5, 0), 0x1b36, 0x0001, (6, 4, 0), 1);
        f.set_bridge_buses(a(3, 5, 0), 3, 4, 4);
        f.add_function(a(4, 1, 0), 0x1234, 0x11e8, (0xff, 0, 0), 0);
        // A conventional PCI-PCI bridge on the root bus → bus 5 with a device.
        f.add_function(a(0, 4, 0), 0x1b36, 0x0001, (6, 4, 0), 1);
        f.set_bridge_buses(a(0, 4, 0), 0, 5, 5);
        f.add_function(a(5, 2, 0), 0x1234, 0x11e8, (0xff, 0, 0), 0);
        // PCIe endpoint behind a root port: its own ID.
        f.add_function(a(0, 6, 0), 0x1b36, 0x000c, (6, 4, 0), 1);
        f.set_bridge_buses(a(0, 6, 0), 0, 6, 6);
        pcie(a(0, 6, 0), 4);
        f.add_function(a(6, 0, 0), 0x8086, 0x0b25, (8, 0x80, 0), 0);
        pcie(a(6, 0, 0), 0);
        let e = enumerate(&f, &ALL_BUSES);
        assert_eq!(
            e.find(a(0, 3, 0)).unwrap().pcie_type,
            Some(pcie_type::ROOT_PORT)
        );
        assert_eq!(e.find(a(3, 3, 0)).unwrap().pcie_type, None);
        assert_eq!(
            e.parent_bridge(a(3, 3, 0)).map(|p| p.addr),
            Some(a(2, 0, 0))
        );
        assert!(e.parent_bridge(a(0, 3, 0)).is_none());
        let alias = |x| e.dma_alias(x);
        assert_eq!(
            alias(a(3, 3, 0)),
            a(3, 0, 0),
            "PCIe-to-PCI bridge: (secondary, 00.0)"
        );
        assert_eq!(
            alias(a(4, 1, 0)),
            a(3, 0, 0),
            "the outermost conventional bridge wins"
        );
        assert_eq!(alias(a(3, 5, 0)), a(3, 0, 0));
        assert_eq!(alias(a(5, 2, 0)), a(0, 4, 0), "conventional bridge: itself");
        assert_eq!(alias(a(6, 0, 0)), a(6, 0, 0), "PCIe: own ID");
        assert_eq!(alias(a(2, 0, 0)), a(2, 0, 0));
        assert_eq!(alias(a(0, 0, 0)), a(0, 0, 0));
    }

    #[test]
    fn enumerates_through_bridges_depth_first() {
        let f = hierarchy();
        let e = enumerate(&f, &ALL_BUSES);
        let addrs: Vec<_> = e.functions.iter().map(|x| x.addr).collect();
        assert_eq!(
            addrs,
            vec![
                a(0, 0, 0),
                a(0, 1, 0),
                a(0, 2, 0),
                a(0, 3, 0),
                a(1, 0, 0),
                a(2, 0, 0),
                a(2, 0, 3)
            ]
        );
        assert!(e.find(a(2, 0, 3)).unwrap().multifunction);
        assert_eq!(
            e.bridge_buses(0, 0, 1, 0),
            Some(BridgeInfo {
                primary: 0,
                secondary: 1,
                subordinate: 3
            })
        );
        assert_eq!(
            e.issues,
            vec![EnumIssue::BridgeUnconfigured {
                addr: a(0, 2, 0),
                bus: BridgeInfo {
                    primary: 0,
                    secondary: 0,
                    subordinate: 0
                }
            }]
        );
        let ep = e.find(a(0, 3, 0)).unwrap();
        assert_eq!(ep.bars.len(), 1);
        assert_eq!(ep.bars[0].address, 0x8_0000_0000);
        assert_eq!(ep.requester_id(), 0x0018);
        // The orphan bus is only found with scan_all_buses, and reported.
        let e2 = enumerate_with(
            &f,
            &ALL_BUSES,
            EnumOptions {
                probe_bars: false,
                scan_all_buses: true,
            },
        );
        assert!(e2.find(a(5, 0, 0)).is_some());
        assert!(
            e2.issues
                .contains(&EnumIssue::OrphanBus { segment: 0, bus: 5 })
        );
    }

    #[test]
    fn bridge_loops_and_out_of_range_buses_do_not_hang() {
        let f = hierarchy();
        // 02:00.0 becomes a bridge pointing back to bus 1 (≤ its own bus) and 00:02.0 claims
        // bus 1 again (already scanned): both reported, nothing scanned twice.
        f.add_function(a(2, 1, 0), 0x1b36, 0x000e, (6, 4, 0), 1);
        f.set_bridge_buses(a(2, 1, 0), 2, 1, 3);
        f.set_bridge_buses(a(0, 2, 0), 0, 1, 1);
        let e = enumerate(
            &f,
            &[SegmentRange {
                segment: 0,
                bus_start: 0,
                bus_end: 0x3,
            }],
        );
        assert_eq!(
            e.functions.iter().filter(|x| x.addr == a(2, 0, 0)).count(),
            1
        );
        assert!(e.issues.iter().any(
            |i| matches!(i, EnumIssue::BridgeUnconfigured { addr, .. } if *addr == a(2, 1, 0))
        ));
        assert!(
            e.issues
                .iter()
                .any(|i| matches!(i, EnumIssue::BusAlreadyScanned { bus: 1, .. }))
        );
    }

    #[test]
    fn malformed_capabilities_are_issues_and_inventory_line() {
        let f = hierarchy();
        let d = a(0, 3, 0);
        f.add_cap(
            d,
            0x40,
            crate::caps::CAP_ID_MSIX,
            &[(7 << 16), 0x1000, 0x1800],
            &[],
        );
        f.add_cap(d, 0x50, crate::caps::CAP_ID_PCIE, &[0], &[]);
        f.put_ext_cap(
            d,
            0x100,
            crate::ext_caps::EXT_CAP_ID_PASID,
            1,
            0x110,
            &[0x1400],
        );
        f.put_ext_cap(
            d,
            0x110,
            crate::ext_caps::EXT_CAP_ID_DVSEC,
            1,
            0x130,
            &[0x00c1_8086, 0x23],
        );
        f.put_ext_cap(d, 0x130, crate::ext_caps::EXT_CAP_ID_ATS, 1, 0, &[]);
        let e = enumerate(&f, &ALL_BUSES);
        let line = format!("{}", e.find(d).unwrap());
        assert_eq!(
            line,
            "0000:00:03.0 1234:11e8 ff.00.00 unassigned bars[0:mem64 0x800000000+0x100000 pf] caps[msix(8) pcie] ext[pasid(20) dvsec(8086:23) ats]"
        );
        // Now make the standard list loop: enumeration still finishes and reports it.
        f.with(d, |x| x.cfg[0x51] = 0x40);
        let e = enumerate(&f, &ALL_BUSES);
        assert!(
            e.issues
                .iter()
                .any(|i| matches!(i, EnumIssue::Function(PciError::CapLoop { .. })))
        );
        assert!(e.find(d).is_some());
        let bridge_line = format!("{}", e.find(a(0, 1, 0)).unwrap());
        assert_eq!(
            bridge_line,
            "0000:00:01.0 1b36:000c 06.04.00 pci-bridge buses[01-03]"
        );
    }
}
