//! VT-d at boot and the kernel's IOMMU API for drivers (`drivers/vtd` does the hardware).
//!
//! Boot ([`init`], after PCI enumeration): the DMAR table (`acpi::dmar_bytes()`, found
//! through the `acpi` crate) is parsed, every DRHD becomes a [`vtd::RemappingUnit`]
//! (registers mapped uncached, tables in frames from `mm`), every enumerated PCI function
//! is mapped to its unit, and each unit
//! gets, in this order: its fault-event interrupt (compatibility-format MSI to a vector
//! from `irq`, on a CPU whose APIC ID fits 8 bits), queued invalidation, interrupt
//! remapping, the scalable-mode root table, a context entry with a valid RID_PASID entry
//! for every function behind it, and finally translation (TE).
//!
//! **Default for devices nobody attached: pass-through.** Requests without PASID from a
//! device no driver has attached go untranslated (RID_PASID entry PGTT=100). The kernel's own
//! DMA uses physical addresses (identity-mapped RAM), and firmware DMA to RMRR regions
//! (USB legacy emulation on real machines) keeps working without mapping RMRRs. A driver
//! that wants isolation attaches an [`AddressSpace`] at RID_PASID and/or by PASID; a
//! revoked or destroyed space leaves the device's RID_PASID *blocked* (every access faults),
//! never pass-through. Units without ECAP.PT fall back to blocked (logged).
//!
//! The API (safe to call from any CPU; each unit has one [`IrqMutex`], also taken by its
//! fault handler, so calls are serialised per unit with interrupts off):
//!
//! * [`AddressSpace`]: a PASID with its own first-stage page tables (on every unit, so it
//!   can be attached to any device): `map`/`unmap`/`translate`, `attach` (PASID-tagged
//!   requests), `attach_rid_pasid` (requests without PASID), `detach*`, `revoke` (every
//!   later DMA faults), dropped = destroyed.
//! * [`MsiRoute`]: an interrupt-remapping entry for (CPU, vector) validating the device's
//!   source ID, and the MSI address/data that selects it; `retarget`, dropped = freed.
//! * [`PostedRoute`] and [`PostedDescriptor`] (`posted.rs`): the same entry in posted format,
//!   setting a bit in a posted-interrupt descriptor; [`posted_supported`].
//! * Faults: every record is logged (`iommu: fault: <BDF> pasid … read|write <addr>
//!   reason <code> (<name>)`), counted per device and per (device, PASID)
//!   ([`fault_count`], [`fault_count_pasid`], [`fault_stats`]); [`watch_faults`] +
//!   [`FaultWatch::next_from`] wait for the next fault from a device.
//! * [`hardware_walk`]: the unit's structures walked like the hardware does, with the
//!   entries read.

mod faults;
mod glue;
mod posted;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use vtd::dmar::{BridgeBuses, DmarError};
use vtd::spec::{Ecap, SourceValidation};
use vtd::{AddressSpaceId, Bdf, Config, DeviceUnitMap, Dmar, IrteHandle, RidDefault};

// What only the kernel tests inspect.
#[cfg(feature = "ktest")]
pub use faults::{
    FaultInfo, FaultStats, FaultWatch, fault_count, fault_count_pasid, fault_stats, watch_faults,
};
#[cfg(feature = "ktest")]
pub use glue::STRAY_ACCESSES;
pub use posted::{PostedDescriptor, PostedRoute, posted_supported};
#[cfg(feature = "ktest")]
pub use vtd::spec::FaultReason;
pub use vtd::{Perm, SpaceKind, VtdError};
#[cfg(feature = "ktest")]
pub use vtd::{Translation, WalkTrace};

use crate::arch::{apic, percpu};
use crate::irq::IrqError;
use crate::mm::{MmError, Mmio};
use crate::pci::{MsiMessage, PciAddress};
use crate::sync::IrqMutex;
use glue::{KernelClock, KernelDma};

type Unit = vtd::RemappingUnit<Mmio, KernelDma, KernelClock>;

/// PASIDs handed out are below 2^PASID_BITS (a 4 KiB PASID directory per device). PASID 0
/// is RID_PASID (requests without PASID) and never handed out.
pub const PASID_BITS: u8 = 15;

/// Smallest interrupt-remapping table (IRTEs per unit): 128 KiB, which also covers the IMS
/// tables of two DSA devices on platforms whose drivers give no hint.
pub const MIN_IRTES: u32 = 8192;

/// Messages beyond the devices' own that a unit's table keeps room for (I/O APIC pins,
/// HPET, devices that appear later).
const SYSTEM_IRTES: u64 = 256;

/// Interrupt messages a PCI function may send beyond its MSI/MSI-X vectors (IMS entries),
/// as its driver knows them; `main` passes the DSA driver's.
pub type ImsHint = fn(&crate::pci::Device) -> u32;

/// What one unit's interrupt-remapping table must hold: one entry per interrupt message of
/// the functions behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IrNeed {
    /// MSI-X table entries, plus 32 per MSI-only function (the most MSI can ask for).
    pub msi: u64,
    /// IMS entries (the drivers' hints).
    pub ims: u64,
}

impl IrNeed {
    fn total(&self) -> u64 {
        self.msi + self.ims + SYSTEM_IRTES
    }
}

/// The IR table size for a unit: `iommu.irtes=N` (a power of two, 2..=65536) if given,
/// else the smallest power of two of at least [`MIN_IRTES`] that holds `need`. An
/// `iommu.irtes` below what the unit's devices can ask for is refused: one IRTE per
/// MSI/MSI-X vector and IMS entry is the layout, so a smaller table would fail device
/// bring-up later with a far less helpful error.
fn ir_table_size(unit: usize, need: IrNeed) -> Result<vtd::IrTableSize, IommuError> {
    let fit = vtd::ir_table_size_for(need.total(), MIN_IRTES);
    if fit.capped {
        log::warn!(
            "unit {unit}: {} interrupt messages need more than the largest IR table ({} entries); some IMS handles will find no entry",
            need.total(),
            fit.entries
        );
    }
    let Some(n) = crate::cmdline::IOMMU_IRTES.given() else {
        return Ok(fit);
    };
    let s = vtd::ir_table_size_for(n, 0);
    let least = vtd::ir_table_size_for(need.total(), 0);
    if s.entries < least.entries {
        return Err(IommuError::IrTableTooSmall {
            unit,
            requested: n,
            need: need.total(),
        });
    }
    if s.entries < fit.entries {
        log::info!(
            "unit {unit}: iommu.irtes={n} holds its devices' {} messages (default would be {})",
            need.total(),
            fit.entries
        );
    }
    Ok(s)
}

/// PCI capability ID of MSI.
const CAP_MSI: u8 = 0x05;

/// Errors of the IOMMU layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IommuError {
    /// No IOMMU in use (no DMAR table, `iommu=off`, or not initialised yet).
    NotEnabled,
    /// The DMAR table is malformed.
    Dmar(DmarError),
    /// Mapping a unit's registers failed.
    Map(MmError),
    /// A remapping unit reported an error.
    Vtd {
        /// Unit index (DMAR order).
        unit: usize,
        /// The error.
        err: VtdError,
    },
    /// Vector allocation for the fault event failed.
    Irq(IrqError),
    /// The function was not found by PCI enumeration.
    UnknownDevice(PciAddress),
    /// No remapping unit covers the function.
    NoUnit(PciAddress),
    /// The CPU is not online.
    NoSuchCpu(usize),
    /// The destination cannot be expressed (x2APIC ID > 255 without EIM, or compatibility
    /// format without an IOMMU).
    ApicIdTooWide {
        /// CPU.
        cpu: usize,
        /// Its APIC ID.
        apic_id: u32,
    },
    /// No CPU with an APIC ID ≤ 255 for the (never remapped) fault event.
    NoFaultEventCpu,
    /// Every PASID is in use.
    PasidsExhausted,
    /// No fault arrived in time.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    NoFault {
        /// The device waited for (any if `None`).
        device: Option<PciAddress>,
    },
    /// Posted routes need CAP.PI on the device's unit and CMPXCHG16B on the CPU.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    PostedUnsupported,
    /// A posted-interrupt descriptor's notification vector must be ≥ 16 (set it first).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    BadNotificationVector(u8),
    /// The units disagree on x2APIC destinations, so no NDST format fits all of them.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    MixedInterruptModes,
    /// `iommu.irtes=N` is below the interrupt messages of the unit's devices.
    IrTableTooSmall {
        /// Unit index.
        unit: usize,
        /// The N given.
        requested: u64,
        /// Messages of its devices (MSI/MSI-X, IMS, spare).
        need: u64,
    },
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEnabled => write!(f, "no IOMMU in use"),
            Self::Dmar(e) => write!(f, "malformed DMAR table: {e}"),
            Self::Map(e) => write!(f, "cannot map remapping-unit registers: {e}"),
            Self::Vtd { unit, err } => write!(f, "remapping unit {unit}: {err}"),
            Self::Irq(e) => write!(f, "fault-event vector: {e}"),
            Self::UnknownDevice(a) => write!(f, "{a} was not found by PCI enumeration"),
            Self::NoUnit(a) => write!(f, "no remapping unit covers {a}"),
            Self::NoSuchCpu(c) => write!(f, "CPU {c} is not online"),
            Self::ApicIdTooWide { cpu, apic_id } => write!(
                f,
                "CPU {cpu} (APIC ID {apic_id}) cannot be an interrupt destination here"
            ),
            Self::NoFaultEventCpu => write!(f, "no CPU with an APIC ID below 256"),
            Self::PasidsExhausted => write!(f, "no free PASID"),
            Self::NoFault { device: Some(d) } => write!(f, "no fault from {d} arrived"),
            Self::NoFault { device: None } => write!(f, "no fault arrived"),
            Self::PostedUnsupported => write!(
                f,
                "posted interrupts unsupported (no CAP.PI on the unit or no CMPXCHG16B)"
            ),
            Self::BadNotificationVector(v) => {
                write!(
                    f,
                    "notification vector {v:#x} of the descriptor is not usable"
                )
            }
            Self::MixedInterruptModes => write!(
                f,
                "remapping units disagree on x2APIC destinations: no common NDST format"
            ),
            Self::IrTableTooSmall {
                unit,
                requested,
                need,
            } => write!(
                f,
                "iommu.irtes={requested} is too small: the devices behind unit {unit} have {need} interrupt messages (MSI/MSI-X vectors, IMS entries and {SYSTEM_IRTES} spare), one IRTE each"
            ),
        }
    }
}

impl core::error::Error for IommuError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Dmar(e) => Some(e),
            Self::Map(e) => Some(e),
            Self::Vtd { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// One remapping unit and what the kernel knows about it.
struct UnitSlot {
    index: usize,
    segment: u16,
    register_base: u64,
    /// (CPU, vector) of the fault event.
    fault_irq: (usize, u8),
    unit: IrqMutex<Unit>,
}

impl UnitSlot {
    fn lock(&self) -> crate::sync::IrqMutexGuard<'_, Unit> {
        self.unit.lock()
    }

    fn vtd<T>(&self, r: Result<T, VtdError>) -> Result<T, IommuError> {
        r.map_err(|err| IommuError::Vtd {
            unit: self.index,
            err,
        })
    }

    /// The fault-event handler body.
    fn on_fault_event(&self) {
        FAULT_EVENTS.fetch_add(1, Ordering::Relaxed);
        let batch = self.lock().handle_faults();
        faults::record(self.index, self.segment, &batch);
    }
}

struct Iommu {
    units: Vec<UnitSlot>,
    /// Enumerated function → unit index.
    devices: BTreeMap<PciAddress, usize>,
    /// PASIDs in use (by [`AddressSpace`]s).
    pasids: IrqMutex<BTreeSet<u32>>,
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    rid_default: RidDefault,
}

static IOMMU: Once<Iommu> = Once::new();
static FAULT_EVENTS: AtomicU64 = AtomicU64::new(0);

fn iommu() -> Result<&'static Iommu, IommuError> {
    IOMMU.get().ok_or(IommuError::NotEnabled)
}

/// Whether DMA remapping is in use.
pub fn is_enabled() -> bool {
    IOMMU.get().is_some()
}

fn bdf(a: PciAddress) -> Bdf {
    Bdf::new(a.bus(), a.device(), a.function())
}

/// The requester ID `dev`'s requests carry at the IOMMU (its DMA alias).
fn rid(dev: PciAddress) -> Bdf {
    bdf(crate::pci::find(dev).map_or(dev, |d| d.dma_alias()))
}

impl Iommu {
    fn unit_of(&self, dev: PciAddress) -> Result<&UnitSlot, IommuError> {
        let u = *self
            .devices
            .get(&dev)
            .ok_or(IommuError::UnknownDevice(dev))?;
        self.units.get(u).ok_or(IommuError::NoUnit(dev))
    }
}

/// What [`init`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Remapping units in use.
    pub units: usize,
    /// Requester IDs given a context entry (functions and DMA aliases).
    pub devices: usize,
    /// Boot time spent, ns.
    pub elapsed_ns: u64,
}

/// Brings up every remapping unit (see the module documentation). `Ok(None)` when there is
/// nothing to do (no DMAR table, a DMAR without remapping units, or `iommu=off`).
pub fn init(ims_hint: ImsHint) -> Result<Option<InitReport>, IommuError> {
    let t0 = crate::time::now_ns();
    let Some(dmar) = read_dmar()? else {
        return Ok(None);
    };
    let map = DeviceUnitMap::build(&dmar, |seg, b, d, f| {
        crate::pci::bridge_buses(seg, b, d, f).map(|x| BridgeBuses {
            secondary: x.secondary,
            subordinate: x.subordinate,
        })
    });
    if map.units.is_empty() {
        // Firmware data: nothing to remap with, so the platform runs as without VT-d.
        log::warn!("DMAR lists no remapping unit (DRHD): DMA and interrupts are not remapped");
        return Ok(None);
    }
    log::info!(
        "DMAR: host address width {}, flags {:?}, {} remapping unit(s)",
        dmar.host_address_width,
        dmar.flags,
        map.units.len()
    );
    let devices = assign_devices(&map);
    let needs = interrupt_needs(&map, &devices, ims_hint);
    let (units, rid_default) = create_units(&dmar, &map, &needs)?;
    let io = IOMMU.call_once(|| Iommu {
        units,
        devices,
        pasids: IrqMutex::new(BTreeSet::new()),
        rid_default,
    });
    let mut prepared = 0;
    for s in &io.units {
        prepared += enable_unit(io, s)?;
    }
    warn_unreachable_cpus(io);
    Ok(Some(InitReport {
        units: io.units.len(),
        devices: prepared,
        elapsed_ns: crate::time::now_ns() - t0,
    }))
}

/// Step 1: the validated DMAR table, unless `iommu=off` or the firmware has none.
fn read_dmar() -> Result<Option<Dmar<'static>>, IommuError> {
    if crate::cmdline::get("iommu") == Some("off") {
        log::warn!("disabled on the command line (iommu=off): DMA is not remapped");
        return Ok(None);
    }
    let Some(bytes) = crate::acpi::dmar_bytes() else {
        log::info!("no DMAR table: DMA and interrupts are not remapped");
        return Ok(None);
    };
    Dmar::parse(bytes).map(Some).map_err(IommuError::Dmar)
}

/// Step 2: device → unit. The DMAR scopes; a device no scope names goes to its segment's
/// unit when there is exactly one (QEMU lists only what sat on the root bus when it built
/// the table).
fn assign_devices(map: &DeviceUnitMap) -> BTreeMap<PciAddress, usize> {
    let mut devices = BTreeMap::new();
    for d in crate::pci::devices() {
        let a = d.address();
        let by_scope = map.unit_for(a.segment(), bdf(a));
        let on_segment: Vec<usize> = map
            .units
            .iter()
            .filter(|u| u.segment == a.segment())
            .map(|u| u.unit)
            .collect();
        match (by_scope, on_segment.as_slice()) {
            (Some(u), _) => {
                devices.insert(a, u);
            }
            (None, [only]) => {
                log::warn!("{a} is in no DMAR scope; using unit {only}, the segment's only unit");
                devices.insert(a, *only);
            }
            (None, _) => log::warn!("{a} is not behind any remapping unit"),
        }
    }
    devices
}

/// Step 3: what each unit's IR table must hold.
fn interrupt_needs(
    map: &DeviceUnitMap,
    devices: &BTreeMap<PciAddress, usize>,
    ims_hint: ImsHint,
) -> Vec<IrNeed> {
    let mut needs = alloc::vec![IrNeed::default(); map.units.len()];
    for d in crate::pci::devices() {
        let Some(need) = devices.get(&d.address()).and_then(|&u| needs.get_mut(u)) else {
            continue;
        };
        let info = d.info();
        need.msi += match info.msix_vectors {
            Some(n) => u64::from(n),
            None if info.caps.iter().any(|&(id, _)| id == CAP_MSI) => 32,
            None => 0,
        };
        need.ims += u64::from(ims_hint(&d));
    }
    needs
}

/// Step 4: one [`Unit`] per DRHD (registers mapped, capabilities checked, IR table sized)
/// with its fault-event vector; the default for unattached devices (blocked if any unit
/// lacks pass-through).
fn create_units(
    dmar: &Dmar<'_>,
    map: &DeviceUnitMap,
    needs: &[IrNeed],
) -> Result<(Vec<UnitSlot>, RidDefault), IommuError> {
    let x2apic_cpus = apic::mode() == apic::Mode::X2Apic;
    let fault_cpu = (0..percpu::cpu_count())
        .find(|&c| percpu::apic_id(c).is_some_and(|id| id <= 0xff))
        .ok_or(IommuError::NoFaultEventCpu)?;
    let mut units = Vec::new();
    let mut rid_default = RidDefault::PassThrough;
    for (i, u) in map.units.iter().enumerate() {
        let size = dmar
            .drhds()
            .nth(i)
            .map_or(4096, |d| d.register_size())
            .max(4096);
        let regs = Mmio::map(u.register_base, size).map_err(IommuError::Map)?;
        let ecap = hwio::RegistersExt::read(&regs, vtd::spec::reg::ECAP);
        let pt = ecap.contains(Ecap::PT);
        if !pt {
            log::warn!("unit {i} has no pass-through (ECAP.PT=0): unattached devices are blocked");
            rid_default = RidDefault::Blocked;
        }
        let need = needs.get(u.unit).copied().unwrap_or_default();
        let ir = ir_table_size(i, need)?;
        log::info!(
            "unit {i}: IR table of {} entries for {} MSI/MSI-X and {} IMS messages (+{SYSTEM_IRTES} spare)",
            ir.entries,
            need.msi,
            need.ims
        );
        let cfg = Config {
            pasid_bits: PASID_BITS,
            ir_table_order: ir.order,
            x2apic: x2apic_cpus && ecap.contains(Ecap::EIM),
            rid_default: if pt {
                RidDefault::PassThrough
            } else {
                RidDefault::Blocked
            },
            ..Config::default()
        };
        let unit = Unit::new(regs, KernelDma::default(), KernelClock, cfg)
            .map_err(|err| IommuError::Vtd { unit: i, err })?;
        let vector = crate::irq::alloc_vector(fault_cpu, "vtd-fault").map_err(IommuError::Irq)?;
        units.push(UnitSlot {
            index: i,
            segment: u.segment,
            register_base: u.register_base,
            fault_irq: (fault_cpu, vector),
            unit: IrqMutex::new(unit),
        });
    }
    Ok((units, rid_default))
}

/// Step 5, per unit: fault-event handler, queued invalidation, interrupt remapping and
/// root table, context entries for every function and every DMA alias (the ID
/// conventional devices' requests actually carry), then translation. Returns the number
/// of requester IDs prepared.
fn enable_unit(io: &'static Iommu, s: &UnitSlot) -> Result<usize, IommuError> {
    let (cpu, vector) = s.fault_irq;
    let idx = s.index;
    crate::irq::set_handler(cpu, vector, move |_| {
        if let Some(io) = IOMMU.get()
            && let Some(s) = io.units.get(idx)
        {
            s.on_fault_event();
        }
    })
    .map_err(IommuError::Irq)?;
    let apic_id = percpu::apic_id(cpu).ok_or(IommuError::NoSuchCpu(cpu))?;
    let rids: BTreeSet<Bdf> = io
        .devices
        .iter()
        .filter(|(_, u)| **u == idx)
        .flat_map(|(a, _)| [bdf(*a), rid(*a)])
        .collect();
    let mut u = s.lock();
    s.vtd(u.configure_fault_event(apic_id, vector))?;
    s.vtd(u.setup())?;
    for b in &rids {
        s.vtd(u.prepare_device(*b))?;
    }
    s.vtd(u.enable_translation())?;
    log::info!(
        "unit {idx} at {:#x} (segment {}): {:?}, interrupt remapping {}, {} device(s), RID_PASID default {:?}, fault event vector {vector:#x} on CPU {cpu}",
        s.register_base,
        s.segment,
        u.stage(),
        if u.x2apic_irtes() { "x2APIC" } else { "xAPIC" },
        io.devices.values().filter(|v| **v == idx).count(),
        u.config().rid_default,
    );
    if u.posted_interrupts() {
        log::info!("unit {idx}: posted interrupts (CAP.PI)");
    }
    Ok(rids.len())
}

/// Step 6: CPUs that remapped interrupts cannot reach.
fn warn_unreachable_cpus(io: &Iommu) {
    if (0..percpu::cpu_count()).any(|c| percpu::apic_id(c).is_some_and(|id| id > 0xff))
        && io.units.iter().any(|u| !u.lock().x2apic_irtes())
    {
        log::warn!(
            "CPUs with APIC IDs above 255 but IRTEs in xAPIC format (no ECAP.EIM): they cannot receive remapped interrupts"
        );
    }
}

/// The remapping unit index that translates `dev`.
#[cfg(feature = "ktest")]
pub fn unit_of(dev: PciAddress) -> Result<usize, IommuError> {
    Ok(iommu()?.unit_of(dev)?.index)
}

/// Number of remapping units in use.
pub fn unit_count() -> usize {
    IOMMU.get().map_or(0, |i| i.units.len())
}

/// Fault-event interrupts taken (all units).
#[cfg(feature = "ktest")]
pub fn fault_events() -> u64 {
    FAULT_EVENTS.load(Ordering::Relaxed)
}

/// The fault-event (CPU, vector) of a unit.
#[cfg(feature = "ktest")]
pub fn fault_vector(unit: usize) -> Option<(usize, u8)> {
    IOMMU.get()?.units.get(unit).map(|u| u.fault_irq)
}

/// What unattached devices' requests without PASID see.
#[cfg(feature = "ktest")]
pub fn rid_default() -> Option<RidDefault> {
    IOMMU.get().map(|i| i.rid_default)
}

/// Walks `dev`'s unit's structures like the hardware does for a request from `dev` (under
/// its DMA alias) with `pasid` (`None`: without PASID), returning the outcome and every
/// entry read.
#[cfg(feature = "ktest")]
pub fn hardware_walk(
    dev: PciAddress,
    pasid: Option<u32>,
    iova: u64,
    write: bool,
) -> Result<(Result<Translation, FaultReason>, WalkTrace), IommuError> {
    let s = iommu()?.unit_of(dev)?;
    let mut t = WalkTrace::default();
    let r = s
        .lock()
        .hardware_walk_traced(rid(dev), pasid, iova, write, &mut t);
    Ok((r, t))
}

/// `dev`'s PASID-table entry for `pasid` as stored in its unit's tables.
#[cfg(feature = "ktest")]
pub fn pasid_entry(dev: PciAddress, pasid: u32) -> Result<Option<[u64; 8]>, IommuError> {
    let s = iommu()?.unit_of(dev)?;
    Ok(s.lock().pasid_entry(rid(dev), pasid))
}

/// Puts `dev`'s requests without PASID back to the default (pass-through), e.g. after the
/// space it was attached to was revoked.
#[cfg(feature = "ktest")]
pub fn reset_rid_pasid(dev: PciAddress) -> Result<(), IommuError> {
    let s = iommu()?.unit_of(dev)?;
    s.vtd(s.lock().reset_rid_pasid(rid(dev)))
}

// ---------------------------------------------------------------------------------------------
// Address spaces
// ---------------------------------------------------------------------------------------------

/// A DMA address space: a PASID and, per unit, a DID and first-stage page tables (so one
/// space can be attached to devices behind any unit). Dropping it destroys it: every
/// attachment is revoked first (the devices' RID_PASID slots become blocked).
///
/// Two spaces can map the same IOVA to different memory; attach both to one device by PASID
/// and its PASID-tagged requests see one or the other:
///
/// ```ignore
/// let a = AddressSpace::new(SpaceKind::Translated)?;
/// let b = AddressSpace::new(SpaceKind::Translated)?;
/// a.map(IOVA, frame_a.addr(), 4096, Perm::RW)?;
/// b.map(IOVA, frame_b.addr(), 4096, Perm::RW)?;
/// a.attach(dsa)?; // requests tagged a.pasid() → frame_a
/// b.attach(dsa)?; // requests tagged b.pasid() → frame_b
/// ```
#[derive(Debug)]
pub struct AddressSpace {
    pasid: u32,
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    kind: SpaceKind,
}

impl AddressSpace {
    /// A new space with the lowest free PASID ≥ 1. `Translated` has (empty) page tables;
    /// `PassThrough` is the identity (e.g. a kernel PASID for PASID-tagged kernel DMA).
    pub fn new(kind: SpaceKind) -> Result<Self, IommuError> {
        let io = iommu()?;
        let pasid = {
            let mut p = io.pasids.lock();
            let v = (1..1u32 << PASID_BITS)
                .find(|v| !p.contains(v))
                .ok_or(IommuError::PasidsExhausted)?;
            p.insert(v);
            v
        };
        for (i, s) in io.units.iter().enumerate() {
            if let Err(e) = s.vtd(s.lock().create_address_space(kind, Some(pasid))) {
                for s in &io.units[..i] {
                    let _ = s.lock().destroy_address_space(AddressSpaceId(pasid));
                }
                io.pasids.lock().remove(&pasid);
                return Err(e);
            }
        }
        Ok(Self { pasid, kind })
    }

    /// The PASID (also what requests with PASID carry once attached by PASID).
    pub fn pasid(&self) -> u32 {
        self.pasid
    }

    /// Translated or pass-through.
    #[cfg(feature = "ktest")]
    pub fn kind(&self) -> SpaceKind {
        self.kind
    }

    fn id(&self) -> AddressSpaceId {
        AddressSpaceId(self.pasid)
    }

    /// Maps `[iova, iova + len)` → `[phys, phys + len)` (4 KiB granular; 2 MiB leaves where
    /// aligned). The interrupt window 0xFEE0_0000–0xFEEF_FFFF is refused.
    pub fn map(&self, iova: u64, phys: u64, len: u64, perm: Perm) -> Result<(), IommuError> {
        let io = iommu()?;
        for (i, s) in io.units.iter().enumerate() {
            if let Err(e) = s.vtd(s.lock().map(self.id(), iova, phys, len, perm)) {
                for s in &io.units[..i] {
                    let _ = s.lock().unmap(self.id(), iova, len);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps the range and invalidates it wherever the space is attached; afterwards DMA to
    /// it faults. Returns the bytes that were mapped.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<u64, IommuError> {
        let io = iommu()?;
        let mut done = 0;
        let mut first_err = Ok(());
        for s in &io.units {
            match s.vtd(s.lock().unmap(self.id(), iova, len)) {
                Ok(n) => done = done.max(n),
                Err(e) => {
                    if first_err.is_ok() {
                        first_err = Err(e);
                    }
                }
            }
        }
        first_err.map(|()| done)
    }

    /// Invalidates `[iova, iova + len)` wherever the space is attached, on every unit, and
    /// waits (a [`SpaceKind::Shared`] space after its owner changed its tables, before a page
    /// is freed).
    pub fn invalidate(&self, iova: u64, len: u64) -> Result<(), IommuError> {
        let io = iommu()?;
        let mut first_err = Ok(());
        for s in &io.units {
            if let Err(e) = s.vtd(s.lock().invalidate_range(self.id(), iova, len))
                && first_err.is_ok()
            {
                first_err = Err(e);
            }
        }
        first_err
    }

    /// Software walk of the space's page tables (first unit's copy).
    #[cfg(feature = "ktest")]
    pub fn translate(&self, iova: u64) -> Option<Translation> {
        iommu()
            .ok()?
            .units
            .first()?
            .lock()
            .translate(self.id(), iova)
    }

    /// Lets `dev` issue requests tagged with this space's PASID.
    pub fn attach(&self, dev: PciAddress) -> Result<(), IommuError> {
        let s = iommu()?.unit_of(dev)?;
        s.vtd(s.lock().attach(rid(dev), self.id()))
    }

    /// Makes this space the one `dev`'s requests without PASID go through.
    #[cfg(feature = "ktest")]
    pub fn attach_rid_pasid(&self, dev: PciAddress) -> Result<(), IommuError> {
        let s = iommu()?.unit_of(dev)?;
        s.vtd(s.lock().attach_rid_pasid(rid(dev), self.id()))
    }

    /// Undoes [`AddressSpace::attach`].
    #[cfg(feature = "ktest")]
    pub fn detach(&self, dev: PciAddress) -> Result<(), IommuError> {
        let s = iommu()?.unit_of(dev)?;
        s.vtd(s.lock().detach(rid(dev), self.id()))
    }

    /// Undoes [`AddressSpace::attach_rid_pasid`]: `dev`'s requests without PASID return to
    /// the default (pass-through).
    #[cfg(feature = "ktest")]
    pub fn detach_rid_pasid(&self, dev: PciAddress) -> Result<(), IommuError> {
        let s = iommu()?.unit_of(dev)?;
        s.vtd(s.lock().detach_rid_pasid(rid(dev), self.id()))
    }

    /// Revokes the space: every attachment is cleared and invalidated (RID_PASID slots become
    /// blocked), so every later DMA through it faults. Mapping or attaching it again fails.
    #[cfg(feature = "ktest")]
    pub fn revoke(&self) -> Result<(), IommuError> {
        let io = iommu()?;
        let mut first_err = Ok(());
        for s in &io.units {
            if let Err(e) = s.vtd(s.lock().revoke(self.id()))
                && first_err.is_ok()
            {
                first_err = Err(e);
            }
        }
        first_err
    }

    /// Destroys the space now, reporting errors (dropping it does the same, logging them).
    #[cfg(feature = "ktest")]
    pub fn destroy(self) -> Result<(), IommuError> {
        let r = self.destroy_in_place();
        core::mem::forget(self);
        r
    }

    fn destroy_in_place(&self) -> Result<(), IommuError> {
        let io = iommu()?;
        let mut first_err = Ok(());
        for s in &io.units {
            if let Err(e) = s.vtd(s.lock().destroy_address_space(self.id()))
                && first_err.is_ok()
            {
                first_err = Err(e);
            }
        }
        io.pasids.lock().remove(&self.pasid);
        first_err
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        if let Err(e) = self.destroy_in_place() {
            log::error!("destroying address space pasid {}: {e}", self.pasid);
        }
    }
}

/// PASIDs currently held by address spaces.
#[cfg(feature = "ktest")]
pub fn pasids_in_use() -> usize {
    IOMMU.get().map_or(0, |i| i.pasids.lock().len())
}

// ---------------------------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------------------------

/// The route of one device interrupt message (MSI, MSI-X entry or IMS entry) to (CPU,
/// vector). With interrupt remapping it owns an IRTE that checks the device's requester ID,
/// and [`MsiRoute::message`] is the remappable-format message selecting it. Without an
/// IOMMU (or for a device behind none) it is a compatibility-format message (APIC ID ≤ 255).
/// Dropping it frees the IRTE; mask the device's entry first.
#[derive(Debug)]
pub struct MsiRoute {
    dev: PciAddress,
    cpu: usize,
    vector: u8,
    /// (unit index, IRTE) when remapped.
    irte: Option<(usize, IrteHandle)>,
}

fn apic_of(cpu: usize) -> Result<u32, IommuError> {
    percpu::get(cpu)
        .filter(|c| c.is_online())
        .map(|c| c.apic_id())
        .ok_or(IommuError::NoSuchCpu(cpu))
}

fn compat_message(cpu: usize, vector: u8) -> Result<MsiMessage, IommuError> {
    let apic_id = apic_of(cpu)?;
    if apic_id > 0xff {
        return Err(IommuError::ApicIdTooWide { cpu, apic_id });
    }
    Ok(MsiMessage {
        address: 0xfee0_0000 | (u64::from(apic_id) << 12),
        data: u32::from(vector),
    })
}

impl MsiRoute {
    /// Routes `dev`'s message to `vector` on `cpu` (the vector comes from
    /// `irq::alloc_vector(cpu, …)`).
    pub fn new(dev: PciAddress, cpu: usize, vector: u8) -> Result<Self, IommuError> {
        let apic_id = apic_of(cpu)?;
        let unit = match iommu() {
            Ok(io) => match io.unit_of(dev) {
                Ok(s) => Some(s),
                // Enumerated but behind no unit: its messages bypass remapping.
                Err(IommuError::UnknownDevice(_)) if crate::pci::find(dev).is_some() => None,
                Err(e) => return Err(e),
            },
            Err(_) => None,
        };
        let irte = match unit {
            Some(s) => {
                let sv = SourceValidation::RequesterId {
                    sid: rid(dev).sid(),
                    sq: 0,
                };
                let h =
                    s.vtd(s.lock().alloc_irte(apic_id, vector, sv, 1))
                        .map_err(|e| match e {
                            IommuError::Vtd {
                                err: VtdError::ApicIdTooWide { apic_id },
                                ..
                            } => IommuError::ApicIdTooWide { cpu, apic_id },
                            e => e,
                        })?;
                Some((s.index, h))
            }
            None => {
                compat_message(cpu, vector)?;
                None
            }
        };
        Ok(Self {
            dev,
            cpu,
            vector,
            irte,
        })
    }

    /// The address/data the device must send.
    pub fn message(&self) -> MsiMessage {
        match self.irte {
            Some((_, h)) => {
                let m = vtd::spec::RemappableMsi::for_handle(h.index);
                MsiMessage {
                    address: m.address(),
                    data: m.data,
                }
            }
            // Checked in `new`/`retarget`; a CPU does not go offline.
            None => compat_message(self.cpu, self.vector).unwrap_or_default(),
        }
    }

    /// Whether the message goes through an IRTE.
    #[cfg(feature = "ktest")]
    pub fn is_remapped(&self) -> bool {
        self.irte.is_some()
    }

    /// IRTE index (interrupt-remapping fault records name it).
    pub fn irte_index(&self) -> Option<u16> {
        self.irte.map(|(_, h)| h.index)
    }

    /// The device.
    #[cfg(feature = "ktest")]
    pub fn device(&self) -> PciAddress {
        self.dev
    }

    /// Current destination CPU.
    #[cfg(feature = "ktest")]
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Current vector.
    #[cfg(feature = "ktest")]
    pub fn vector(&self) -> u8 {
        self.vector
    }

    /// Sends the interrupt to `vector` on `cpu` from now on. Remapped: the IRTE changes
    /// atomically and the message stays the same. Not remapped: the caller must reprogram
    /// the device with the new [`MsiRoute::message`].
    pub fn retarget(&mut self, cpu: usize, vector: u8) -> Result<(), IommuError> {
        let apic_id = apic_of(cpu)?;
        match self.irte {
            Some((u, h)) => {
                let s = &iommu()?.units[u];
                s.vtd(s.lock().retarget_irte(h, apic_id, vector))?;
            }
            None => {
                compat_message(cpu, vector)?;
            }
        }
        self.cpu = cpu;
        self.vector = vector;
        Ok(())
    }

    /// Changes the requester ID the IRTE accepts (for devices whose messages carry an alias,
    /// e.g. behind a PCIe-to-PCI bridge; tests use it to prove that a mismatch blocks).
    #[cfg(feature = "ktest")]
    pub fn set_source_id(&mut self, sid: u16) -> Result<(), IommuError> {
        let Some((u, h)) = self.irte else {
            return Err(IommuError::NotEnabled);
        };
        let s = &iommu()?.units[u];
        s.vtd(
            s.lock()
                .set_irte_source(h, SourceValidation::RequesterId { sid, sq: 0 }),
        )
    }

    /// The IRTE as the unit holds it (diagnostics).
    #[cfg(feature = "ktest")]
    pub fn irte(&self) -> Option<vtd::spec::Irte> {
        let (u, h) = self.irte?;
        IOMMU.get()?.units[u].lock().read_irte(h.index).ok()
    }

    /// Frees the IRTE now, reporting errors (dropping does the same, logging them).
    pub fn free(mut self) -> Result<(), IommuError> {
        self.free_in_place()
    }

    fn free_in_place(&mut self) -> Result<(), IommuError> {
        if let Some((u, h)) = self.irte.take() {
            let s = &iommu()?.units[u];
            s.vtd(s.lock().free_irte(h))?;
        }
        Ok(())
    }
}

impl Drop for MsiRoute {
    fn drop(&mut self) {
        if let Err(e) = self.free_in_place() {
            log::error!("freeing the interrupt route of {}: {e}", self.dev);
        }
    }
}

/// One line per unit for the boot report.
pub fn summary() -> Vec<String> {
    let Some(io) = IOMMU.get() else {
        return Vec::new();
    };
    io.units
        .iter()
        .map(|s| {
            let u = s.lock();
            format!(
                "unit {} at {:#x}: {:?}, {} bytes of tables",
                s.index,
                s.register_base,
                u.stage(),
                u.memory().bytes()
            )
        })
        .collect()
}
