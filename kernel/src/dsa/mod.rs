//! DSA in the kernel: discovery, bring-up and interrupts of every DSA device, over the
//! `dsa` driver crate (which owns the device logic) and `kernel::pci` / `kernel::iommu`.
//!
//! Per device ([`init`]): match by vendor/device ID and class, map BAR0 (registers) and
//! BAR2 (portals), enable memory decoding and bus mastering, enable PASID with privileged
//! mode *before* the device is enabled (changing them later halts it), attach the kernel
//! PASID, route every MSI-X entry (entry 0 = misc, entry w+1 = WQ w) through an
//! interrupt-remapping entry to a vector of its own, spread over the CPUs, then let the
//! driver reset, configure (default layout or accel-config) and enable the device.
//!
//! **Kernel DMA uses a kernel PASID** (a pass-through address space, so device address =
//! physical address) whenever the IOMMU is on and the device has PASID, rather than
//! requests without PASID (RID_PASID):
//! * shared WQs take only PASID-tagged descriptors (ENQCMDS puts the PASID in every
//!   descriptor), so kernel work on a shared WQ needs a PASID anyway, and one kernel PASID
//!   on both queue kinds gives the kernel one identity: MSIXPERM binds the WQs' MSI-X
//!   entries to it, and Drain/Abort PASID address exactly the kernel's work;
//! * RID_PASID keeps the IOMMU's default for the function (pass-through), so nothing else
//!   about the device's requests changes.
//!
//! Without an IOMMU (or PASID) the kernel uses requests without PASID and dedicated WQs only.
//!
//! Clients other than the kernel get their own PASID ([`spaces::ClientSpace`], first-stage
//! tables) and submit to shared WQs (or poll) with it.

pub mod config;
pub mod hw;
pub mod spaces;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use dsa::{ConfigSource, DeviceOptions, Hardware, MiscEvents, Requester};
use dsa_spec::WqMode;
use spin::Once;

use crate::arch::{percpu, smp};
use crate::iommu::{self, MsiRoute, SpaceKind};
use crate::pci;
use crate::sync::IrqMutex;

pub use spaces::{ClientSpace, DmaBuffer, SpaceError};

/// Intel DSA device IDs (those the Linux idxd driver binds, drivers/dma/idxd/init.c):
/// SPR/EMR (and likely GNR) 0x0B25, GNR-D 0x11FB, DMR 0x1212. Features come from VERSION and the capability registers, never from these.
pub const DSA_DEVICE_IDS: &[u16] = &[0x0B25, 0x11FB, 0x1212];
const INTEL: u16 = 0x8086;
/// Class 0x08 (system peripheral), subclass 0x80 (other).
const CLASS: (u8, u8) = (0x08, 0x80);

/// Errors of the kernel's DSA glue.
#[derive(Debug)]
pub enum DsaInitError {
    Config(config::LoadError),
    Pci(pci::PciError),
    Iommu(iommu::IommuError),
    Irq(crate::irq::IrqError),
    Insn(hw::InsnError),
    Driver(dsa::DsaError),
    /// The configuration asks for shared WQs the CPU cannot feed.
    SharedWqWithoutEnqcmd {
        wq: u8,
    },
    /// What the first (failed) initialisation reported.
    Earlier(String),
}

impl core::error::Error for DsaInitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DsaInitError::Config(e) => Some(e),
            DsaInitError::Iommu(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for DsaInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsaInitError::Config(e) => write!(f, "{e}"),
            DsaInitError::Pci(e) => write!(f, "pci: {e}"),
            DsaInitError::Iommu(e) => write!(f, "iommu: {e}"),
            DsaInitError::Irq(e) => write!(f, "interrupts: {e}"),
            DsaInitError::Insn(e) => write!(f, "{e}"),
            DsaInitError::Driver(e) => write!(f, "{e}"),
            DsaInitError::Earlier(e) => f.write_str(e),
            DsaInitError::SharedWqWithoutEnqcmd { wq } => write!(
                f,
                "configuration rejected: WQ {wq} is shared but the CPU lacks ENQCMDS"
            ),
        }
    }
}

impl From<pci::PciError> for DsaInitError {
    fn from(e: pci::PciError) -> Self {
        DsaInitError::Pci(e)
    }
}
impl From<iommu::IommuError> for DsaInitError {
    fn from(e: iommu::IommuError) -> Self {
        DsaInitError::Iommu(e)
    }
}
impl From<crate::irq::IrqError> for DsaInitError {
    fn from(e: crate::irq::IrqError) -> Self {
        DsaInitError::Irq(e)
    }
}
impl From<dsa::DsaError> for DsaInitError {
    fn from(e: dsa::DsaError) -> Self {
        DsaInitError::Driver(e)
    }
}

/// Interrupt statistics of one MSI-X entry.
#[derive(Default)]
pub struct EntryStats {
    /// Interrupts handled.
    pub interrupts: AtomicU64,
    /// TSC ticks spent in the handler body (the driver's reaping and callbacks). Under
    /// `-icount shift=0` these are guest instructions.
    pub handler_tsc: AtomicU64,
}

/// What an interrupt handler reaches: the current driver instance (replaced by
/// [`DsaDevice::reconfigure`] once the new one is up) and the recovery state.
///
/// Handlers read the instance with one atomic load and no reference count; a replaced
/// instance is released only after every CPU has taken an interrupt since the swap
/// (`irq::quiesce_handlers`), so no handler can still be using it (or it is kept forever).
struct DeviceIrqState {
    index: u32,
    /// `Arc::into_raw` of the current instance (null before bring-up finishes).
    current: AtomicPtr<dsa::Device>,
    /// Serializes replacement and thread-context clones.
    replace: IrqMutex<()>,
    recovery_pending: AtomicBool,
    entries: Vec<EntryStats>,
}

impl DeviceIrqState {
    /// The current instance, for thread context.
    fn driver(&self) -> Option<Arc<dsa::Device>> {
        let _g = self.replace.lock();
        let p = self.current.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is the slot's own reference (from `Arc::into_raw` in `install`), which
        // stays alive while `replace` is held; the new reference is counted.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    }

    /// The current instance for an interrupt handler (no reference count; see the type).
    #[inline(always)]
    fn with_driver<R>(&self, f: impl FnOnce(&dsa::Device) -> R) -> Option<R> {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a live instance: `install` releases a replaced one
        // only after every CPU took an interrupt since the swap, and this handler runs with
        // interrupts off, having loaded `p` before that.
        unsafe { p.as_ref() }.map(f)
    }

    /// Makes `d` the current instance; the previous one is released once no handler can
    /// use it.
    fn install(&self, d: Arc<dsa::Device>) {
        let old = {
            let _g = self.replace.lock();
            self.current
                .swap(Arc::into_raw(d) as *mut dsa::Device, Ordering::AcqRel)
        };
        if old.is_null() {
            return;
        }
        if crate::irq::quiesce_handlers(core::time::Duration::from_secs(2)) {
            // SAFETY: `old` was the slot's reference (from `Arc::into_raw`) and no handler
            // can still use it (see above).
            drop(unsafe { Arc::from_raw(old) });
        } else {
            log::warn!(
                "dsa{}: a CPU did not answer; the old driver instance is kept",
                self.index
            );
        }
    }
}

/// One MSI-X entry's route.
pub struct Route {
    pub entry: u16,
    pub cpu: usize,
    pub vector: u8,
    msi: MsiRoute,
}

impl Route {
    /// IRTE index when the message is remapped.
    pub fn irte(&self) -> Option<u16> {
        self.msi.irte_index()
    }
}

/// Why [`DsaDevice::submit_user`] did not submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSubmitError {
    /// The device has no shared WQ (or the CPU no ENQCMDS).
    NoSharedWq,
    /// The WQ kept refusing (full).
    Busy,
}

impl fmt::Display for UserSubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSharedWq => write!(f, "no shared WQ to submit to"),
            Self::Busy => write!(f, "the shared WQ stayed full"),
        }
    }
}

impl core::error::Error for UserSubmitError {}

/// One DSA device as the kernel sees it.
pub struct DsaDevice {
    /// N of `dsaN` (enumeration order).
    pub index: u32,
    pub pci: pci::Device,
    slot: Arc<DeviceIrqState>,
    hw: Hardware,
    routes: Vec<Route>,
    kernel_pasid: Option<u32>,
    enqcmds: bool,
    /// BAR2 (the portals): physical base and length.
    portal_bar: (u64, u64),
    pub config_origin: config::Origin,
}

impl fmt::Debug for DsaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dsa{} ({})", self.index, self.pci.address())
    }
}

impl DsaDevice {
    /// The driver instance now in charge of the device (after a failed
    /// [`reconfigure`](Self::reconfigure), the one that could be brought back, or the old,
    /// shut-down one: submissions then fail with `DeviceUnavailable`).
    pub fn driver(&self) -> Arc<dsa::Device> {
        match self.slot.driver() {
            Some(d) => d,
            // `bring_up` installs an instance before the DsaDevice exists.
            None => unreachable!("a DsaDevice always has a driver instance"),
        }
    }

    /// The kernel as a requester on this device: its PASID (pass-through) when it uses one.
    pub fn kernel_requester(&self) -> Requester {
        match self.kernel_pasid {
            Some(p) => Requester::pasid(p, true),
            None => Requester::kernel(),
        }
    }

    pub fn kernel_pasid(&self) -> Option<u32> {
        self.kernel_pasid
    }

    /// Whether the CPU can feed shared WQs.
    pub fn has_enqcmds(&self) -> bool {
        self.enqcmds
    }

    /// Submits a descriptor a process handed in, already validated and with dword 0 forced
    /// to the process's PASID and privilege 0 (`klib::usersubmit`), to the first shared WQ
    /// through its portal (the limited one when the WQ has a threshold, so the kernel's own
    /// submissions keep room): SFENCE + ENQCMDS, 32 immediate retries, then
    /// [`UserSubmitError::Busy`]. The process polls the completion record in its memory.
    pub fn submit_user(&self, desc: &[u8; 64]) -> Result<(), UserSubmitError> {
        if !self.enqcmds {
            return Err(UserSubmitError::NoSharedWq);
        }
        let d = self.driver();
        // A completion interrupt names an IMS handle: the WQ's IMS portal (DSA spec §9.3).
        let ims = desc[4] & dsa_spec::DescFlags::RCI.bits() as u8 != 0;
        let portal = d
            .wq_of_mode(WqMode::Shared)
            .map(|w| if ims { w.ims_portal() } else { w.portal() })
            .ok_or(UserSubmitError::NoSharedWq)?;
        for _ in 0..32 {
            if self.hw.portals.enqcmds(portal, desc) == dsa::EnqStatus::Accepted {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(UserSubmitError::Busy)
    }

    /// The physical page a process maps to submit with ENQCMD itself (`dsa_portal`): the
    /// first shared WQ's IMS portal (the limited one when the WQ has a threshold, as for
    /// [`submit_user`](Self::submit_user)). The IMS flavour because a completion
    /// interrupt handle then resolves in the IMS table, whose entries the device checks
    /// against the descriptor's PASID (DSA spec §9.3, the IMS entry's PASID fields); an
    /// MSI-X portal would let any handle raise the kernel's MSI-X entries. Only this page
    /// of BAR2, never BAR0. `None` without a shared WQ or ENQCMD.
    pub fn user_portal_page(&self) -> Option<u64> {
        if !self.enqcmds {
            return None;
        }
        let off = self.driver().wq_of_mode(WqMode::Shared)?.ims_portal();
        let (base, len) = self.portal_bar;
        (off.is_multiple_of(4096) && off.checked_add(4096).is_some_and(|e| e <= len))
            .then_some(base + off)
    }

    /// Lends a free user dedicated WQ (accel-config `type` `user`) to `pasid`
    /// (`dsa::Device::lend_wq`): (WQ id, its size, the physical page a process maps for
    /// MOVDIR64B — the WQ's unlimited IMS portal, so that an interrupt handle in a
    /// descriptor resolves in the PASID-checked IMS table). `Ok(None)`: none free.
    pub fn lend_wq(&self, pasid: u32) -> Result<Option<(u8, u16, u64)>, dsa::DsaError> {
        let d = self.driver();
        let Some(id) = d.lend_wq(pasid)? else {
            return Ok(None);
        };
        let size = d.wq(id).map_or(0, |w| w.size());
        let off = dsa_spec::portal::portal_offset(
            u32::from(id),
            dsa_spec::portal::PortalKind::UnlimitedIms,
        );
        let (base, len) = self.portal_bar;
        if off.checked_add(4096).is_none_or(|e| e > len) {
            let _ = d.reclaim_wq(id);
            return Ok(None);
        }
        Ok(Some((id, size, base + off)))
    }

    /// The largest transfer size of a process's `dsa_submit`: that of the shared WQ the
    /// kernel submits it to (its WQCFG Maximum Transfer Size, DSA spec §9.2.24; usually
    /// smaller than the device's GENCAP limit), so a larger one is refused by the call
    /// (`TooLarge`) instead of failing in the device with status 0x13. `None` without a
    /// shared WQ.
    pub fn user_max_transfer(&self) -> Option<u64> {
        self.driver()
            .wq_of_mode(WqMode::Shared)
            .map(|w| w.limits.max_transfer)
    }

    /// First configured WQ of `mode`.
    pub fn wq_id(&self, mode: WqMode) -> Option<u8> {
        self.driver().wq_of_mode(mode).map(|w| w.id())
    }

    /// Lets `client`'s PASID-tagged requests from this device through its tables.
    pub fn attach(&self, client: &ClientSpace) -> Result<(), SpaceError> {
        client.attach(self.pci.address())
    }

    /// BAR0 (for diagnostics and tests; the driver owns the device's state).
    pub fn registers(&self) -> &Arc<dyn dsa::Registers> {
        &self.hw.regs
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Interrupt statistics of MSI-X entry `entry`.
    pub fn entry_stats(&self, entry: u16) -> Option<&EntryStats> {
        self.slot.entries.get(entry as usize)
    }

    /// Shuts the current driver instance down (every submitter must be gone) and brings the
    /// device up again with `source` and `options` (the kernel PASID is filled in).
    ///
    /// The old instance stays installed until the new one is up. If the new configuration
    /// fails, the old configuration is brought up again (and installed) and the error is
    /// returned; if even that fails, the old (shut-down) instance stays, and submissions to
    /// it fail cleanly.
    pub fn reconfigure(
        &self,
        source: ConfigSource,
        mut options: DeviceOptions,
    ) -> Result<Arc<dsa::Device>, DsaInitError> {
        options.kernel_pasid = self.kernel_pasid;
        check_shared(&source, self.enqcmds)?;
        let old = self.driver();
        if let Err(e) = old.shutdown() {
            log::warn!("dsa{}: shutdown before reconfiguring: {e}", self.index);
        }
        match dsa::Device::new(self.hw.clone(), self.index, source, options) {
            Ok(d) => {
                self.slot.install(d.clone());
                Ok(d)
            }
            Err(e) => {
                let back = dsa::Device::new(
                    self.hw.clone(),
                    self.index,
                    ConfigSource::Config(old.config().clone()),
                    old.options().clone(),
                );
                match back {
                    Ok(d) => {
                        log::warn!(
                            "dsa{}: reconfiguration failed ({e}); previous configuration restored",
                            self.index
                        );
                        self.slot.install(d);
                    }
                    Err(e2) => log::error!(
                        "dsa{}: reconfiguration failed ({e}) and the previous configuration could not be restored ({e2})",
                        self.index
                    ),
                }
                Err(e.into())
            }
        }
    }

    /// The default driver options of this kernel.
    pub fn default_options(&self) -> DeviceOptions {
        default_options(self.kernel_pasid)
    }
}

/// Submitters one device accepts at once (`DeviceOptions::max_submitters`).
pub const MAX_SUBMITTERS: usize = 4096 + 256;

fn default_options(kernel_pasid: Option<u32>) -> DeviceOptions {
    DeviceOptions {
        kernel_pasid,
        // Under TCG several CPUs share few host cores: waits for credits or an accepting
        // shared WQ can take far longer than on hardware.
        submit_timeout_ns: 2_000_000_000,
        // Likewise a command (a drain waits for the work in flight) on a loaded host: only
        // a hung device should reach this bound.
        command_timeout_ns: 10_000_000_000,
        // Each IMS handle's completions come from a submitter (the DSA IMS table has 2048
        // entries): room for a whole table of single-handle clients plus the kernel's own.
        max_submitters: MAX_SUBMITTERS,
        ..DeviceOptions::default()
    }
}

/// Rejects configurations with shared WQs when ENQCMDS is missing.
fn check_shared(source: &ConfigSource, enqcmds: bool) -> Result<(), DsaInitError> {
    if enqcmds {
        return Ok(());
    }
    if let ConfigSource::Config(c) = source
        && let Some(w) = c.wqs.iter().find(|w| w.mode == WqMode::Shared)
    {
        return Err(DsaInitError::SharedWqWithoutEnqcmd { wq: w.id });
    }
    Ok(())
}

static DEVICES: Once<Vec<DsaDevice>> = Once::new();
/// The kernel PASID (pass-through), shared by every device.
static KERNEL_SPACE: Once<Option<iommu::AddressSpace>> = Once::new();
static INIT_ERROR: Once<String> = Once::new();

/// Every DSA device, brought up on first use ([`init`]); empty without devices or when the
/// configuration was rejected ([`init_error`] says why).
pub fn devices() -> &'static [DsaDevice] {
    if DEVICES.get().is_none()
        && let Err(e) = init()
    {
        log::error!("dsa: {e}");
    }
    DEVICES.get().map_or(&[], |v| v.as_slice())
}

/// Why [`init`] failed, if it did.
pub fn init_error() -> Option<&'static str> {
    INIT_ERROR.get().map(|s| s.as_str())
}

/// IMS entries a DSA function is assumed to have before its registers are read: GENCAP's
/// IMS size on SPR/EMR (8 × 256). Sizes the interrupt-remapping tables, which are set up
/// before the devices are brought up.
pub const IMS_ENTRIES_HINT: u32 = 2048;

/// The IOMMU layer's [`crate::iommu::ImsHint`]: [`IMS_ENTRIES_HINT`] for a DSA function.
pub fn ims_entries_hint(d: &pci::Device) -> u32 {
    if is_dsa(d) { IMS_ENTRIES_HINT } else { 0 }
}

/// Whether a PCI function is a DSA.
fn is_dsa(d: &pci::Device) -> bool {
    let i = d.info();
    i.vendor == INTEL && DSA_DEVICE_IDS.contains(&i.device) && (i.class, i.subclass) == CLASS
}

fn kernel_space() -> Result<Option<u32>, DsaInitError> {
    let s = KERNEL_SPACE.call_once(|| {
        if !iommu::is_enabled() {
            return None;
        }
        match iommu::AddressSpace::new(SpaceKind::PassThrough) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("dsa: no kernel PASID ({e}); kernel DMA without PASID");
                None
            }
        }
    });
    Ok(s.as_ref().map(|s| s.pasid()))
}

/// CPU for MSI-X entry `entry` of device `index`: the misc entry on CPU 0 (management), WQ
/// entries round-robin over the CPUs, offset per device so two devices' WQs land apart.
fn entry_cpu(index: u32, entry: u16, ncpus: usize) -> usize {
    if entry == 0 || ncpus <= 1 {
        0
    } else {
        (index as usize + entry as usize - 1) % ncpus
    }
}

/// Recovery runs in thread context on another CPU when one exists (an AP's idle loop),
/// else inline; waiters on the device also recover it.
fn schedule_recovery(slot: &Arc<DeviceIrqState>) {
    if slot.recovery_pending.swap(true, Ordering::AcqRel) {
        return;
    }
    let me = percpu::current_index();
    let n = percpu::cpu_count();
    let target = (1..n).rev().find(|&c| c != me).unwrap_or(me);
    let s = slot.clone();
    let job = move || {
        if let Some(d) = s.driver() {
            match d.recover() {
                Ok(true) => log::info!("dsa{}: recovered after a halt", s.index),
                Ok(false) => {}
                Err(e) => log::error!("dsa{}: recovery failed: {e}", s.index),
            }
        }
        s.recovery_pending.store(false, Ordering::Release);
    };
    if let Err(e) = smp::spawn_on(target, job) {
        log::error!("dsa{}: cannot schedule recovery: {e}", slot.index);
        slot.recovery_pending.store(false, Ordering::Release);
    }
}

fn handle(slot: &Arc<DeviceIrqState>, entry: u16) {
    let t0 = crate::arch::rdtsc();
    let ev = slot.with_driver(|d| d.handle_msix(entry));
    let t1 = crate::arch::rdtsc();
    if let Some(s) = slot.entries.get(entry as usize) {
        // One CPU takes entry `entry`'s interrupts (its vector is on one CPU; a retarget
        // moves it with the old CPU quiet): plain increments.
        s.interrupts
            .store(s.interrupts.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        s.handler_tsc.store(
            s.handler_tsc.load(Ordering::Relaxed) + t1.wrapping_sub(t0),
            Ordering::Relaxed,
        );
    }
    if ev.is_some_and(|e| e.contains(MiscEvents::HALTED)) {
        schedule_recovery(slot);
    }
}

/// Brings one device up.
fn bring_up(
    index: u32,
    dev: pci::Device,
    accel: &Option<dsa::AccelConfig>,
    origin: &config::Origin,
) -> Result<DsaDevice, DsaInitError> {
    let regs = Arc::new(dev.map_bar(0)?);
    let portals = hw::Portals::new(dev.map_bar(2)?).map_err(DsaInitError::Insn)?;
    let portal_bar = portals.bar();
    let enqcmds = portals.has_enqcmds();
    dev.disable_intx()?;
    dev.enable_memory_and_bus_master()?;
    // PASID (with privileged requests) before the device is enabled: the kernel PASID and
    // client PASIDs need it, and changing it while enabled halts the device.
    let kernel_pasid = match (dev.pasid_cap()?, kernel_space()?) {
        (Some(cap), Some(kp)) => {
            let privileged = cap
                .capability
                .contains(::pci::ext_caps::PasidCapability::PRIVILEGED);
            dev.enable_pasid(privileged)?;
            KERNEL_SPACE
                .get()
                .and_then(|s| s.as_ref())
                .map(|s| s.attach(dev.address()))
                .transpose()?;
            Some(kp)
        }
        _ => None,
    };
    // MSI-X: every entry gets a vector and an IRTE before the table is enabled.
    let msix = dev.msix()?;
    let nent = msix.table_size();
    let slot = Arc::new(DeviceIrqState {
        index,
        current: AtomicPtr::new(core::ptr::null_mut()),
        replace: IrqMutex::new(()),
        recovery_pending: AtomicBool::new(false),
        entries: (0..nent).map(|_| EntryStats::default()).collect(),
    });
    let ncpus = percpu::cpu_count();
    let mut routes = Vec::new();
    for entry in 0..nent {
        let cpu = entry_cpu(index, entry, ncpus);
        let owner = if entry == 0 {
            format!("dsa{index}-misc")
        } else {
            format!("dsa{index}-wq{}", entry - 1)
        };
        let s = slot.clone();
        let vector =
            crate::irq::alloc_vector_with_handler(cpu, &owner, move |_| handle(&s, entry))?;
        let msi = MsiRoute::new(dev.address(), cpu, vector)?;
        msix.write_entry(entry, msi.message(), false)?;
        routes.push(Route {
            entry,
            cpu,
            vector,
            msi,
        });
    }
    msix.set_function_mask(false)?;
    msix.set_enabled(true)?;
    let pci_state = Arc::new(hw::PciState {
        dev,
        msix_entries: nent,
    });
    let hw = Hardware {
        regs,
        portals: Arc::new(portals),
        dma: hw::dma(kernel_pasid),
        clock: Arc::new(hw::Clock),
        pci: pci_state,
    };
    let origin = device_origin(index, accel, origin);
    let source = match (accel, &origin) {
        (Some(a), config::Origin::CommandLine | config::Origin::FwCfg(_)) => {
            ConfigSource::AccelConfig(a.clone())
        }
        _ => ConfigSource::Default,
    };
    let source = resolve_for_cpu(source, &hw, index, enqcmds)?;
    let d = dsa::Device::new(hw.clone(), index, source, default_options(kernel_pasid))?;
    slot.install(d);
    Ok(DsaDevice {
        index,
        pci: dev,
        slot,
        hw,
        routes,
        kernel_pasid,
        enqcmds,
        portal_bar,
        config_origin: origin,
    })
}

/// What device `index` runs: its entry of the accel-config, else the default layout
/// (noting when the supplied configuration does not list it).
fn device_origin(
    index: u32,
    accel: &Option<dsa::AccelConfig>,
    origin: &config::Origin,
) -> config::Origin {
    match accel {
        Some(a) if a.device_entry(index).is_none() => {
            config::Origin::NotListed(alloc::boxed::Box::new(origin.clone()))
        }
        _ => origin.clone(),
    }
}

/// Turns the source into an explicit configuration when the CPU cannot feed shared WQs:
/// the default layout without them; an accel-config that has some is rejected.
fn resolve_for_cpu(
    source: ConfigSource,
    hw: &Hardware,
    index: u32,
    enqcmds: bool,
) -> Result<ConfigSource, DsaInitError> {
    if enqcmds {
        return Ok(source);
    }
    let pci = hw.pci.info();
    let caps = dsa::Capabilities::read(&*hw.regs, pci.msix_entries)?;
    let cfg = match source {
        ConfigSource::Default => dsa::DeviceConfig::default_for(&caps, &pci),
        ConfigSource::Config(c) => c,
        ConfigSource::AccelConfig(a) => match a.resolve(index, &caps) {
            Some(r) => r.map_err(dsa::DsaError::from)?,
            None => dsa::DeviceConfig::default_for(&caps, &pci),
        },
    };
    let mut cfg = cfg;
    if let Some(w) = cfg.wqs.iter().find(|w| w.mode == WqMode::Shared) {
        // Only the default layout may silently drop its shared WQ.
        if w.name != "kernel-shared" {
            return Err(DsaInitError::SharedWqWithoutEnqcmd { wq: w.id });
        }
        log::warn!("dsa{index}: CPU lacks ENQCMDS: no shared WQ");
        cfg.wqs.retain(|w| w.mode != WqMode::Shared);
    }
    Ok(ConfigSource::Config(cfg))
}

/// Result of [`init`].
#[derive(Debug, Clone)]
pub struct InitReport {
    pub devices: usize,
    pub origin: config::Origin,
}

/// Finds and brings up every DSA device. Devices that fail are reported and left out; a
/// configuration that cannot be loaded fails the whole step. Runs once: the main job
/// calls it before the workload, kernel tests through [`devices`] (so that tests which
/// drive a DSA's PCI state themselves, e.g. the PCI tests, find it untouched unless a DSA
/// test ran first). Later calls report what the first one did.
pub fn init() -> Result<InitReport, DsaInitError> {
    static REPORT: Once<Result<InitReport, String>> = Once::new();
    match REPORT.call_once(|| init_once().map_err(|e| format!("{e}"))) {
        Ok(r) => Ok(r.clone()),
        Err(e) => Err(DsaInitError::Earlier(e.clone())),
    }
}

fn init_once() -> Result<InitReport, DsaInitError> {
    let found: Vec<pci::Device> = pci::devices().filter(is_dsa).collect();
    let (accel, origin) = if found.is_empty() {
        let asked = config::requested();
        if asked != config::Origin::Default {
            log::warn!("dsa: no DSA device: the {asked} is unused");
        }
        (None, config::Origin::Default)
    } else {
        match config::load() {
            Ok(v) => v,
            Err(e) => {
                INIT_ERROR.call_once(|| format!("{e}"));
                DEVICES.call_once(Vec::new);
                return Err(DsaInitError::Config(e));
            }
        }
    };
    let mut first_err = None;
    let devs = DEVICES.call_once(|| {
        let mut v = Vec::new();
        for (i, d) in found.iter().enumerate() {
            match bring_up(i as u32, *d, &accel, &origin) {
                Ok(x) => v.push(x),
                Err(e) => {
                    let o = device_origin(i as u32, &accel, &origin);
                    log::error!("dsa{i} ({}, {o}): {e}", d.address());
                    if first_err.is_none() {
                        first_err = Some(format!("dsa{i} ({o}): {e}"));
                    }
                }
            }
        }
        v
    });
    if let Some(e) = first_err {
        INIT_ERROR.call_once(|| e);
    }
    if let Some(a) = &accel {
        for i in a.unmatched(found.len()) {
            log::warn!(
                "dsa: the {origin} configures dsa{i}, but only {} DSA device(s) exist: that entry is unused",
                found.len()
            );
        }
    }
    for d in devs {
        print_summary(d);
    }
    Ok(InitReport {
        devices: devs.len(),
        origin,
    })
}

/// One boot line per device plus one per WQ.
pub fn print_summary(d: &DsaDevice) {
    let drv = d.driver();
    let c = drv.caps();
    log::info!(
        "dsa{}: {} DSA {}.{} {} WQs ({} entries) {} engines {} groups, max transfer {} MiB, \
         max batch {}, IMS {}, {}, kernel {}, {}",
        d.index,
        d.pci.address(),
        c.version.major(),
        c.version.minor(),
        c.num_wqs,
        c.total_wq_size,
        c.num_engines,
        c.num_groups,
        c.max_transfer() >> 20,
        c.max_batch(),
        c.ims_entries,
        d.config_origin,
        match d.kernel_pasid {
            Some(p) => format!("PASID {p} (pass-through)"),
            None => String::from("without PASID"),
        },
        match d.pci.info().pcie_type {
            Some(::pci::enumerate::pcie_type::RC_INTEGRATED_ENDPOINT) => "PCIe RCiEP",
            Some(::pci::enumerate::pcie_type::ENDPOINT) => "PCIe endpoint",
            Some(_) => "PCIe (other port type)",
            None => "conventional PCI",
        }
    );
    if c.ims_entries > IMS_ENTRIES_HINT && crate::iommu::is_enabled() {
        log::warn!(
            "dsa{}: {} IMS entries, more than the {IMS_ENTRIES_HINT} the IR table was sized for; \
             raise iommu.irtes if every entry is to be used",
            d.index,
            c.ims_entries
        );
    }
    for w in drv.wqs() {
        let route = w
            .msix_entry
            .and_then(|e| d.routes.iter().find(|r| r.entry == e));
        log::info!(
            "dsa{}: wq{} {:?} size {} group {} prio {}{} irq {}",
            d.index,
            w.id(),
            w.mode(),
            w.size(),
            w.config.group,
            w.config.priority,
            if w.config.name.is_empty() {
                String::new()
            } else {
                format!(" '{}'", w.config.name)
            },
            match route {
                Some(r) => format!(
                    "msix{} → cpu{} vector {:#x}{}",
                    r.entry,
                    r.cpu,
                    r.vector,
                    r.irte().map(|i| format!(" (IRTE {i})")).unwrap_or_default()
                ),
                None => String::from("none"),
            }
        );
    }
}
