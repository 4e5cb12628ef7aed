//! PCI at boot and the kernel's PCI API for drivers.
//!
//! At boot ([`init`]) every MCFG window is mapped uncached, every bus reachable through
//! bridges is enumerated (`drivers/pci`: BARs sized with decode disabled, standard and
//! extended capabilities walked with loop and bounds checks) and the inventory is printed,
//! one line per function:
//!
//! ```text
//! pci: 0000:00:03.0 1234:11e8 00.ff.00 other bars[0:mem32 0xfea00000+0x100000] caps[msi]
//! ```
//!
//! Drivers find their functions with [`find_id`] / [`find_class`] / [`find`] and drive them
//! through [`Device`]: BAR mapping ([`Device::map_bar`], uncached, 64-bit BARs above 4 GiB
//! included), command register, MSI, MSI-X table programming and the PASID capability. The
//! inventory is immutable after boot, so every function here may be called from any CPU; the
//! configuration space of one function is assumed to be driven by one driver at a time.
//!
//! The library crate is reached as `::pci` (this module shadows its name).

use core::fmt;

use ::pci::ecam::{Ecam, EcamWindow, ecam_size};
use ::pci::enumerate::{EnumOptions, enumerate_with};
use ::pci::ext_caps::PasidCap;
use ::pci::msi::MsixCap;
#[cfg(feature = "ktest")]
use ::pci::msi::{MsiCap, msix_entry};
use ::pci::{BarInfo, BarKind, Enumeration, PciFunction};
#[cfg(feature = "ktest")]
use hwio::RegistersExt;
use spin::Once;

pub use ::pci::PciAddress;
pub use ::pci::msi::MsiMessage;

use crate::mm::MmError;
pub use crate::mm::Mmio;

/// Errors of the kernel's PCI layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PciError {
    /// [`init`] has not run (or found no ECAM).
    NotInitialized,
    /// ACPI has no MCFG table: configuration space is unreachable.
    NoEcam,
    /// Mapping an ECAM window, BAR or MSI-X table failed.
    Map {
        /// Physical base.
        phys: u64,
        /// Length.
        len: u64,
        /// Why.
        err: MmError,
    },
    /// The function has no implemented BAR in this slot.
    NoSuchBar {
        /// Function.
        addr: PciAddress,
        /// BAR slot.
        slot: u8,
    },
    /// The BAR decodes I/O space, not memory.
    IoBar {
        /// Function.
        addr: PciAddress,
        /// BAR slot.
        slot: u8,
    },
    /// Firmware left the BAR at address 0 (not assigned).
    BarUnassigned {
        /// Function.
        addr: PciAddress,
        /// BAR slot.
        slot: u8,
    },
    /// A configuration offset that is not a dword inside the 4 KiB function space.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    BadConfigOffset {
        /// Function.
        addr: PciAddress,
        /// Offset.
        offset: u16,
    },
    /// The function lacks the capability.
    NoCapability {
        /// Function.
        addr: PciAddress,
        /// Which one ("MSI", "MSI-X", "PASID").
        what: &'static str,
    },
    /// From the PCI library (malformed capability, MSI-X table outside its BAR, …).
    Lib(::pci::PciError),
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInitialized => write!(f, "PCI is not initialised"),
            Self::NoEcam => write!(f, "no MCFG table: PCI configuration space is unreachable"),
            Self::Map { phys, len, err } => {
                write!(f, "cannot map {phys:#x}+{len:#x}: {err}")
            }
            Self::NoSuchBar { addr, slot } => write!(f, "{addr}: BAR {slot} is not implemented"),
            Self::IoBar { addr, slot } => write!(f, "{addr}: BAR {slot} is an I/O BAR"),
            Self::BarUnassigned { addr, slot } => {
                write!(f, "{addr}: BAR {slot} was not assigned an address")
            }
            Self::BadConfigOffset { addr, offset } => {
                write!(f, "{addr}: bad configuration offset {offset:#x}")
            }
            Self::NoCapability { addr, what } => write!(f, "{addr}: no {what} capability"),
            Self::Lib(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for PciError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Map { err, .. } => Some(err),
            Self::Lib(e) => Some(e),
            _ => None,
        }
    }
}

impl From<::pci::PciError> for PciError {
    fn from(e: ::pci::PciError) -> Self {
        Self::Lib(e)
    }
}

struct PciSystem {
    ecam: Ecam<Mmio>,
    enumeration: Enumeration,
}

static PCI: Once<PciSystem> = Once::new();

fn system() -> Result<&'static PciSystem, PciError> {
    PCI.get().ok_or(PciError::NotInitialized)
}

/// What [`init`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitReport {
    /// ECAM windows (MCFG entries).
    pub windows: usize,
    /// Functions found.
    pub functions: usize,
    /// Bridges among them.
    pub bridges: usize,
    /// Problems that did not stop enumeration (logged).
    pub issues: usize,
}

/// Maps the MCFG windows, enumerates every bus reachable through bridges, sizes BARs and
/// prints the inventory. Called once at boot, before any driver.
pub fn init() -> Result<InitReport, PciError> {
    let info = crate::acpi::info().ok_or(PciError::NotInitialized)?;
    if info.ecam.is_empty() {
        return Err(PciError::NoEcam);
    }
    let mut ecam = Ecam::new();
    for seg in &info.ecam {
        // MCFG gives the address of bus 0 even when the range starts later.
        let phys = seg.base + (u64::from(seg.bus_start) << 20);
        let len = ecam_size(seg.bus_start, seg.bus_end) as u64;
        ecam.add(EcamWindow::new(
            map(phys, len)?,
            seg.segment,
            seg.bus_start,
            seg.bus_end,
        ));
    }
    let ranges = ecam.segment_ranges();
    let enumeration = enumerate_with(
        &ecam,
        &ranges,
        EnumOptions {
            probe_bars: true,
            scan_all_buses: false,
        },
    );
    for f in &enumeration.functions {
        log::info!("{f}");
    }
    for i in &enumeration.issues {
        log::warn!("{i:?}");
    }
    let report = InitReport {
        windows: ecam.windows().len(),
        functions: enumeration.functions.len(),
        bridges: enumeration
            .functions
            .iter()
            .filter(|f| f.is_bridge())
            .count(),
        issues: enumeration.issues.len(),
    };
    PCI.call_once(|| PciSystem { ecam, enumeration });
    log::info!(
        "{} functions ({} bridges) on {} ECAM window(s), {} issue(s)",
        report.functions,
        report.bridges,
        report.windows,
        report.issues
    );
    Ok(report)
}

/// The whole enumeration (functions in discovery order and the issues found).
pub fn enumeration() -> Option<&'static Enumeration> {
    PCI.get().map(|p| &p.enumeration)
}

/// Configuration-space access for library crates that take a
/// [`pci_types::ConfigRegionAccess`] (e.g. to use `drivers/pci` helpers directly).
pub fn config_access() -> Option<&'static Ecam<Mmio>> {
    PCI.get().map(|p| &p.ecam)
}

/// Every function found at boot.
pub fn devices() -> impl Iterator<Item = Device> {
    PCI.get()
        .into_iter()
        .flat_map(|p| p.enumeration.functions.iter())
        .map(Device)
}

/// The function at `addr`, if it was found at boot.
pub fn find(addr: PciAddress) -> Option<Device> {
    devices().find(|d| d.address() == addr)
}

/// Functions with this vendor and device ID.
#[cfg(feature = "ktest")]
pub fn find_id(vendor: u16, device: u16) -> impl Iterator<Item = Device> {
    devices().filter(move |d| d.0.vendor == vendor && d.0.device == device)
}

/// Functions of a base class, optionally narrowed to a subclass.
#[cfg(feature = "ktest")]
pub fn find_class(class: u8, subclass: Option<u8>) -> impl Iterator<Item = Device> {
    devices().filter(move |d| d.0.class == class && subclass.is_none_or(|s| d.0.subclass == s))
}

/// One PCI function found at boot; a cheap handle (copy it freely).
#[derive(Clone, Copy)]
pub struct Device(&'static PciFunction);

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.0.addr)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)
    }
}

impl Device {
    /// What enumeration learnt (IDs, class, BARs, capabilities).
    pub fn info(&self) -> &'static PciFunction {
        self.0
    }

    /// Segment:bus:device.function.
    pub fn address(&self) -> PciAddress {
        self.0.addr
    }

    /// Requester ID (bus << 8 | dev << 3 | fn) of the function itself.
    #[cfg(feature = "ktest")]
    pub fn requester_id(&self) -> u16 {
        self.0.requester_id()
    }

    /// The function whose requester ID this function's DMA and MSIs carry when they reach
    /// the IOMMU: itself on PCIe, a bridge's ID below conventional PCI bridges (see
    /// [`::pci::Enumeration::dma_alias`]). Functions behind one PCIe-to-PCI bridge share it.
    pub fn dma_alias(&self) -> PciAddress {
        enumeration().map_or(self.address(), |e| e.dma_alias(self.address()))
    }

    fn access(&self) -> Result<&'static Ecam<Mmio>, PciError> {
        Ok(&system()?.ecam)
    }

    #[cfg(feature = "ktest")]
    fn check_offset(&self, offset: u16) -> Result<(), PciError> {
        if offset >= 0x1000 || !offset.is_multiple_of(4) {
            return Err(PciError::BadConfigOffset {
                addr: self.address(),
                offset,
            });
        }
        Ok(())
    }

    /// Reads a configuration dword (`offset` dword-aligned, < 4 KiB).
    #[cfg(feature = "ktest")]
    pub fn config_read(&self, offset: u16) -> Result<u32, PciError> {
        self.check_offset(offset)?;
        let a = self.access()?;
        // SAFETY: an aligned offset inside this function's 4 KiB configuration space; the
        // ECAM window rejects addresses outside it.
        Ok(unsafe { pci_types::ConfigRegionAccess::read(a, self.address(), offset) })
    }

    /// Writes a configuration dword (`offset` dword-aligned, < 4 KiB).
    #[cfg(feature = "ktest")]
    pub fn config_write(&self, offset: u16, value: u32) -> Result<(), PciError> {
        self.check_offset(offset)?;
        let a = self.access()?;
        // SAFETY: as in `config_read`; the caller owns the function it writes to.
        unsafe { pci_types::ConfigRegionAccess::write(a, self.address(), offset, value) };
        Ok(())
    }

    /// The BAR in `slot` as sized at boot.
    pub fn bar(&self, slot: u8) -> Option<BarInfo> {
        ::pci::bar::find_bar(&self.0.bars, slot).copied()
    }

    /// Maps a memory BAR uncached (any address, including 64-bit BARs above 4 GiB).
    pub fn map_bar(&self, slot: u8) -> Result<Mmio, PciError> {
        let addr = self.address();
        let b = self.bar(slot).ok_or(PciError::NoSuchBar { addr, slot })?;
        if b.kind == BarKind::Io {
            return Err(PciError::IoBar { addr, slot });
        }
        if b.address == 0 {
            return Err(PciError::BarUnassigned { addr, slot });
        }
        map(b.address, b.size)
    }

    /// Turns on memory decoding and bus mastering (DMA and MSI writes need the latter).
    pub fn enable_memory_and_bus_master(&self) -> Result<(), PciError> {
        ::pci::command::enable_memory_and_bus_master(self.access()?, self.address());
        Ok(())
    }

    /// Sets or clears Bus Master Enable.
    #[cfg(feature = "ktest")]
    pub fn set_bus_master(&self, enable: bool) -> Result<(), PciError> {
        ::pci::command::set_bus_master(self.access()?, self.address(), enable);
        Ok(())
    }

    /// Sets INTx Disable (this kernel uses MSI/MSI-X only).
    pub fn disable_intx(&self) -> Result<(), PciError> {
        ::pci::command::disable_intx(self.access()?, self.address());
        Ok(())
    }

    /// The MSI capability.
    #[cfg(feature = "ktest")]
    pub fn msi(&self) -> Result<Msi, PciError> {
        let a = self.access()?;
        let cap = MsiCap::find(a, self.address())?.ok_or(PciError::NoCapability {
            addr: self.address(),
            what: "MSI",
        })?;
        Ok(Msi { cap })
    }

    /// The MSI-X capability with its table mapped (validated against the BAR sizes).
    pub fn msix(&self) -> Result<Msix, PciError> {
        let a = self.access()?;
        let cap =
            MsixCap::find(a, self.address(), &self.0.bars)?.ok_or(PciError::NoCapability {
                addr: self.address(),
                what: "MSI-X",
            })?;
        let len = u64::from(cap.table_size) * ::pci::msi::MSIX_ENTRY_SIZE;
        let table = map(cap.table_address, len)?;
        Ok(Msix { cap, table })
    }

    /// The PASID extended capability, if present.
    pub fn pasid_cap(&self) -> Result<Option<PasidCap>, PciError> {
        Ok(PasidCap::find(self.access()?, self.address())?)
    }

    /// Enables PASID-tagged requests (with privileged-mode requests when `privileged`).
    /// Must be done while the function is idle (e.g. before a DSA is enabled).
    pub fn enable_pasid(&self, privileged: bool) -> Result<PasidCap, PciError> {
        let cap = self.pasid_cap()?.ok_or(PciError::NoCapability {
            addr: self.address(),
            what: "PASID",
        })?;
        cap.enable(self.access()?, false, privileged)?;
        Ok(cap)
    }

    /// Disables PASID-tagged requests.
    #[cfg(feature = "ktest")]
    pub fn disable_pasid(&self) -> Result<(), PciError> {
        let cap = self.pasid_cap()?.ok_or(PciError::NoCapability {
            addr: self.address(),
            what: "PASID",
        })?;
        cap.disable(self.access()?);
        Ok(())
    }
}

/// A function's MSI capability.
#[derive(Debug, Clone, Copy)]
#[cfg(feature = "ktest")]
pub struct Msi {
    cap: MsiCap,
}

#[cfg(feature = "ktest")]
impl Msi {
    /// Programs address/data for `count` vectors (a power of two ≤ capable) and leaves MSI
    /// disabled; [`Msi::set_enabled`] turns it on.
    #[cfg(feature = "ktest")]
    pub fn program(&self, msg: MsiMessage, count: u32) -> Result<(), PciError> {
        Ok(self.cap.program(&system()?.ecam, msg, count)?)
    }

    /// Enables or disables MSI.
    #[cfg(feature = "ktest")]
    pub fn set_enabled(&self, enabled: bool) -> Result<(), PciError> {
        self.cap.set_enabled(&system()?.ecam, enabled);
        Ok(())
    }

    /// The message currently programmed.
    #[cfg(feature = "ktest")]
    pub fn message(&self) -> Result<MsiMessage, PciError> {
        Ok(self.cap.message(&system()?.ecam))
    }
}

/// A function's MSI-X capability with its table mapped.
#[derive(Debug, Clone)]
pub struct Msix {
    cap: MsixCap,
    table: Mmio,
}

impl Msix {
    /// The library view (table size, BIR, offsets).
    #[cfg(feature = "ktest")]
    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// Number of table entries.
    pub fn table_size(&self) -> u16 {
        self.cap.table_size
    }

    /// Writes entry `index` (masked while it changes) and leaves it masked or not.
    pub fn write_entry(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), PciError> {
        Ok(self.cap.write_entry(&self.table, index, msg, masked)?)
    }

    /// Masks or unmasks entry `index`.
    #[cfg(feature = "ktest")]
    pub fn set_entry_masked(&self, index: u16, masked: bool) -> Result<(), PciError> {
        Ok(self.cap.set_entry_masked(&self.table, index, masked)?)
    }

    /// Reads back entry `index` (address, data, vector control).
    #[cfg(feature = "ktest")]
    pub fn read_entry(&self, index: u16) -> Result<(MsiMessage, bool), PciError> {
        let e = self
            .table
            .block(self.cap.entry_offset(index)?, ::pci::msi::MSIX_ENTRY_SIZE);
        let lo = u64::from(e.read(msix_entry::ADDRESS_LO));
        let hi = u64::from(e.read(msix_entry::ADDRESS_HI));
        let msg = MsiMessage {
            address: (hi << 32) | lo,
            data: e.read(msix_entry::DATA),
        };
        Ok((
            msg,
            e.read(msix_entry::VECTOR_CONTROL) & ::pci::msi::MASKED != 0,
        ))
    }

    /// Enables or disables MSI-X.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), PciError> {
        self.cap.set_enabled(&system()?.ecam, enabled);
        Ok(())
    }

    /// Sets or clears the function mask (all entries masked).
    pub fn set_function_mask(&self, masked: bool) -> Result<(), PciError> {
        self.cap.set_function_mask(&system()?.ecam, masked);
        Ok(())
    }
}

/// Maps `[phys, phys + len)` uncached as an [`Mmio`] window.
fn map(phys: u64, len: u64) -> Result<Mmio, PciError> {
    Mmio::map(phys, len).map_err(|err| PciError::Map { phys, len, err })
}

/// Bridges' bus numbers, for the DMAR device-scope resolver.
pub fn bridge_buses(segment: u16, bus: u8, dev: u8, func: u8) -> Option<::pci::BridgeInfo> {
    enumeration()?.bridge_buses(segment, bus, dev, func)
}
