//! The IMS irqchip in the kernel: the `ims` crate's [`ImsPlatform`] over the kernel's vector
//! allocator, IDT dispatch, interrupt-remapping entries (`kernel::iommu::MsiRoute`) and
//! cross-CPU calls; the one system-wide shared-vector domain every DSA device's IMS table is
//! registered with; and the client API.
//!
//! * **System domain** ([`system`]): created when the DSA devices come up ([`init`]), in
//!   [`VectorMode::Shared`]: one vector per CPU (owner `ims-shared`), whatever the number of
//!   devices and handles. Each device's chip ([`device_ims`]) has the per-PASID quota of
//!   `ims.quota=N` (default [`DEFAULT_QUOTA`]); a device reconfigured since is registered
//!   again on first use. Device recovery after a halt rewrites the live entries (the hook
//!   `dsa::DsaIms::register` installs).
//! * **Routes**: one IRTE per handle, source-validated with the device's requester ID; the
//!   IMS entry holds the remappable message naming it for the handle's whole life, and
//!   retargeting rewrites the IRTE atomically and invalidates the interrupt entry cache.
//!   Without an IOMMU the entry holds a compatibility-format message.
//! * **Clients** ([`Client`]): a client *is* its PASID address space
//!   (`kernel::dsa::ClientSpace`); it allocates handles on CPUs it chooses, bound to its own
//!   PASID (there is no way to name another), submits descriptors through the WQ's IMS portal
//!   with its handle, and gets callbacks from the demultiplexer on the handle's CPU.
//! * **Comparison**: [`new_domain`] creates further domains, e.g. the per-handle-vector one
//!   (owner `ims-handle`) of the benchmark (`bench`, in kernels built with the `bench`
//!   feature), registered on entries lent by the system chip (`dsa::DsaIms::carve`).
//!
//! Control operations (allocate, mask, unmask, retarget, release) run closures on the
//! handle's CPU with [`smp::run_on`]: from thread context, and not aimed at an AP that is
//! busy with a long job of its own (APs run calls from their idle loop; the BSP runs them in
//! its IPI handler, and a CPU calling itself runs them inline).

#[cfg(feature = "bench")]
pub mod bench;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use dsa::{DsaIms, OpError, Output, Submitter, SubmitterOptions, Work};
use dsa_spec::WqMode;
use ims::{
    ChipOptions, DomainConfig, ImsDomain, ImsError, ImsHandle, ImsPlatform, MsiMessage, PidRef,
    PlatformError, Route, VectorHandler, VectorMode,
};
use spin::Once;
use x86_64::instructions::interrupts::without_interrupts;

use crate::arch::percpu;
use crate::arch::smp::{self, SmpError};
use crate::dsa::{ClientSpace, DsaDevice, SpaceError};
use crate::iommu::{IommuError, MsiRoute, PostedDescriptor, PostedRoute};
use crate::irq::IrqError;
use crate::pci::PciAddress;
use crate::sync::IrqMutex;

/// Handles one PASID may hold per device unless `ims.quota=N` says otherwise.
pub const DEFAULT_QUOTA: u32 = 64;
/// Bound on each cross-CPU call of the control path: a hung CPU, not a slow one (an emulated
/// CPU on a loaded host can take seconds to take the call's IPI).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The platform
// ---------------------------------------------------------------------------------------------

/// The kernel as the irqchip's machine. One instance serves every domain.
pub struct KernelPlatform {
    /// Requester ID → device, for routes (the chip names devices by requester ID).
    sources: IrqMutex<BTreeMap<u16, PciAddress>>,
    /// Live routes by id.
    routes: IrqMutex<BTreeMap<u32, KRoute>>,
    next_route: AtomicU32,
    /// Posted-interrupt descriptors handed out ([`ImsPlatform::alloc_pid`]), by address.
    pids: IrqMutex<BTreeMap<u64, &'static PostedDescriptor>>,
}

/// A route as the kernel holds it: remapped (an IRTE delivering a vector) or posted (the
/// same IRTE in posted format, setting a descriptor bit).
enum KRoute {
    Remapped(MsiRoute),
    Posted(PostedRoute),
}

impl KRoute {
    fn irte_index(&self) -> Option<u16> {
        match self {
            KRoute::Remapped(r) => r.irte_index(),
            KRoute::Posted(r) => Some(r.irte_index()),
        }
    }
    fn free(self) -> Result<(), IommuError> {
        match self {
            KRoute::Remapped(r) => r.free(),
            KRoute::Posted(r) => r.free(),
        }
    }
}

impl fmt::Debug for KernelPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KernelPlatform({} routes)", self.routes.lock().len())
    }
}

/// The requester ID a device's messages carry (its DMA alias), as interrupt remapping checks.
pub fn source_id(dev: PciAddress) -> u16 {
    let a = crate::pci::find(dev).map_or(dev, |d| d.dma_alias());
    u16::from(a.bus()) << 8 | u16::from(a.device()) << 3 | u16::from(a.function())
}

fn msi(m: crate::pci::MsiMessage) -> MsiMessage {
    MsiMessage {
        addr: m.address,
        data: m.data,
    }
}

impl KernelPlatform {
    fn new() -> KernelPlatform {
        KernelPlatform {
            sources: IrqMutex::new(BTreeMap::new()),
            routes: IrqMutex::new(BTreeMap::new()),
            next_route: AtomicU32::new(1),
            pids: IrqMutex::new(BTreeMap::new()),
        }
    }

    /// Makes `dev`'s requester ID known to [`ImsPlatform::alloc_route`]; returns it.
    pub fn register_source(&self, dev: PciAddress) -> u16 {
        let sid = source_id(dev);
        self.sources.lock().insert(sid, dev);
        sid
    }

    /// Routes alive now.
    pub fn live_routes(&self) -> usize {
        self.routes.lock().len()
    }

    /// The IRTE index of a route (None without interrupt remapping).
    pub fn irte_of(&self, route: &Route) -> Option<u16> {
        self.routes
            .lock()
            .get(&route.id)
            .and_then(|r| r.irte_index())
    }
}

fn irq_err(e: IrqError) -> PlatformError {
    match e {
        IrqError::Vector(klib::vectors::VectorError::Exhausted { cpu }) => {
            PlatformError::VectorsExhausted { cpu }
        }
        IrqError::NoSuchCpu(cpu) => PlatformError::NoSuchCpu { cpu },
        e => PlatformError::Kernel {
            what: "interrupt layer",
            cause: ims::Cause::new(e),
        },
    }
}

fn iommu_err(e: IommuError) -> PlatformError {
    match e {
        IommuError::Vtd {
            err: vtd::VtdError::IrteExhausted,
            ..
        } => PlatformError::RoutesExhausted,
        IommuError::NoSuchCpu(cpu) => PlatformError::NoSuchCpu { cpu },
        e => PlatformError::Kernel {
            what: "interrupt remapping",
            cause: ims::Cause::new(e),
        },
    }
}

// SAFETY: `run_on` runs its closure on `cpu` only (threads never migrate; the call runs
// inline when already there, else from that CPU's call vector or idle loop) inside
// `without_interrupts`; the domain's handlers run from their vectors' interrupt gates (IF
// clear) and interrupts do not nest. So on one CPU a handler pass and a `run_on` closure
// never overlap.
unsafe impl ImsPlatform for KernelPlatform {
    fn cpu_count(&self) -> usize {
        percpu::cpu_count()
    }

    fn alloc_vector(&self, cpu: usize, owner: &'static str) -> Result<u8, PlatformError> {
        crate::irq::alloc_vector(cpu, owner).map_err(irq_err)
    }

    fn free_vector(&self, cpu: usize, vector: u8) {
        // The dispatcher acknowledges (EOI) and ignores a late interrupt on a free vector.
        if let Err(e) = crate::irq::free_vector(cpu, vector) {
            log::error!("ims: freeing vector {vector:#04x} on CPU {cpu}: {e}");
        }
    }

    fn set_handler(
        &self,
        cpu: usize,
        vector: u8,
        handler: VectorHandler,
    ) -> Result<(), PlatformError> {
        crate::irq::set_handler(cpu, vector, move |_| {
            handler.run();
        })
        .map_err(irq_err)
    }

    fn clear_handler(&self, _cpu: usize, _vector: u8) {
        // The chip frees the vector right after; `irq::free_vector` removes its handler.
    }

    fn alloc_route(&self, source_id: u16, cpu: usize, vector: u8) -> Result<Route, PlatformError> {
        let dev = self
            .sources
            .lock()
            .get(&source_id)
            .copied()
            .ok_or(PlatformError::Failed("unknown requester ID"))?;
        let r = MsiRoute::new(dev, cpu, vector).map_err(iommu_err)?;
        let id = self.next_route.fetch_add(1, Ordering::Relaxed);
        let route = Route {
            id,
            msg: msi(r.message()),
        };
        self.routes.lock().insert(id, KRoute::Remapped(r));
        Ok(route)
    }

    fn retarget_route(
        &self,
        route: &mut Route,
        cpu: usize,
        vector: u8,
    ) -> Result<(), PlatformError> {
        let mut routes = self.routes.lock();
        let r = routes
            .get_mut(&route.id)
            .ok_or(PlatformError::Failed("unknown route"))?;
        let KRoute::Remapped(r) = r else {
            return Err(PlatformError::Failed(
                "a posted route retargeted as remapped",
            ));
        };
        // Remapped: one 64-bit IRTE store plus an IEC invalidation, message unchanged.
        r.retarget(cpu, vector).map_err(iommu_err)?;
        route.msg = msi(r.message());
        Ok(())
    }

    fn posted_interrupts(&self) -> bool {
        crate::iommu::posted_supported()
    }

    fn alloc_pid(&self, cpu: usize, vector: u8) -> Result<PidRef, PlatformError> {
        // Kernel RAM, identity-mapped (address = physical address), 64-byte aligned by its
        // type, in no device's address space but pass-through ones; never freed (the unit
        // may post into it at any time; the chip keeps reusing it).
        let pid: &'static PostedDescriptor = Box::leak(Box::new(PostedDescriptor::new()));
        pid.set_notification(cpu, vector).map_err(iommu_err)?;
        self.pids.lock().insert(pid.addr(), pid);
        Ok(PidRef {
            pir: pid.pir_words(),
            control: pid.control_word(),
            id: pid.addr(),
        })
    }

    fn post_route(&self, route: &mut Route, pid: &PidRef, bit: u8) -> Result<(), PlatformError> {
        let target = self
            .pids
            .lock()
            .get(&pid.id)
            .copied()
            .ok_or(PlatformError::Failed("unknown posted-interrupt descriptor"))?;
        let mut routes = self.routes.lock();
        let r = routes
            .remove(&route.id)
            .ok_or(PlatformError::Failed("unknown route"))?;
        // One atomic 128-bit IRTE update and an IEC invalidation, waited for; the message
        // (naming the IRTE) stays the same.
        let (kept, result) = match r {
            KRoute::Remapped(r) => match r.into_posted(target, bit) {
                Ok(p) => (KRoute::Posted(p), Ok(())),
                Err((r, e)) => (KRoute::Remapped(r), Err(e)),
            },
            KRoute::Posted(mut p) => {
                let res = p.retarget_posted(target, bit).map(|_| ());
                (KRoute::Posted(p), res)
            }
        };
        routes.insert(route.id, kept);
        result.map_err(iommu_err)
    }

    fn free_route(&self, route: Route) {
        let r = self.routes.lock().remove(&route.id);
        if let Some(r) = r
            && let Err(e) = r.free()
        {
            log::error!("ims: freeing route {}: {e}", route.id);
        }
    }

    fn run_on(
        &self,
        cpu: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), PlatformError> {
        smp::run_on_timeout(cpu, CALL_TIMEOUT, move || without_interrupts(f)).map_err(|e| match e {
            SmpError::NoSuchCpu(cpu) => PlatformError::NoSuchCpu { cpu },
            SmpError::CallTimeout { cpu } => PlatformError::Timeout { cpu },
            e => PlatformError::Kernel {
                what: "cross-CPU call",
                cause: ims::Cause::new(e),
            },
        })
    }

    fn now_ns(&self) -> u64 {
        crate::time::now_ns()
    }

    fn cycles(&self) -> u64 {
        // Under `-icount shift=0` the TSC counts guest instructions.
        crate::arch::rdtsc()
    }

    fn cycles_are_tsc(&self) -> bool {
        true
    }
}

static PLATFORM: Once<Arc<KernelPlatform>> = Once::new();

/// The kernel platform shared by every domain.
pub fn platform() -> Arc<KernelPlatform> {
    PLATFORM
        .call_once(|| Arc::new(KernelPlatform::new()))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Domains and devices
// ---------------------------------------------------------------------------------------------

/// Why IMS is not available for a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImsUnavailable {
    /// The system domain could not be created (its error).
    NoDomain(ImsError),
    /// No DSA devices were brought up (so no domain).
    NotInitialized,
    /// The device advertises no IMS table.
    NoTable { dsa: u32 },
    /// Registering the device failed.
    Register { dsa: u32, err: ImsError },
}

impl fmt::Display for ImsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDomain(e) => write!(f, "no IMS domain: {e}"),
            Self::NotInitialized => write!(f, "IMS is not initialised (no DSA device)"),
            Self::NoTable { dsa } => write!(f, "dsa{dsa} has no IMS table"),
            Self::Register { dsa, err } => write!(f, "registering dsa{dsa}'s IMS table: {err}"),
        }
    }
}

impl core::error::Error for ImsUnavailable {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::NoDomain(err) | Self::Register { err, .. } => Some(err),
            Self::NotInitialized | Self::NoTable { .. } => None,
        }
    }
}

struct System {
    domain: ImsDomain,
    /// By DSA index: the chip of the device's current driver instance.
    chips: IrqMutex<BTreeMap<u32, Arc<DsaIms>>>,
}

static SYSTEM: Once<Result<System, ImsError>> = Once::new();

/// Per-PASID handle quota of every device (`ims.quota=N`).
pub fn quota() -> u32 {
    // Out-of-range values fail the run at boot (`cmdline::problems`).
    crate::cmdline::IMS_QUOTA
        .given()
        .map_or(DEFAULT_QUOTA, |n| n as u32)
}

/// A domain over the kernel platform (the system one is [`system`]).
pub fn new_domain(mode: VectorMode) -> Result<ImsDomain, ImsError> {
    ImsDomain::new(
        platform(),
        DomainConfig {
            mode,
            call_timeout_ns: CALL_TIMEOUT.as_nanos() as u64,
            ..DomainConfig::default()
        },
    )
}

/// Names for chips (`ChipOptions::name` is `'static`).
fn chip_name(dsa: u32) -> &'static str {
    const NAMES: [&str; 16] = [
        "dsa0", "dsa1", "dsa2", "dsa3", "dsa4", "dsa5", "dsa6", "dsa7", "dsa8", "dsa9", "dsa10",
        "dsa11", "dsa12", "dsa13", "dsa14", "dsa15",
    ];
    NAMES.get(dsa as usize).copied().unwrap_or("dsa")
}

/// Chip options for a DSA device (its requester ID registered with the platform).
pub fn chip_options(d: &DsaDevice, name: &'static str) -> ChipOptions {
    ChipOptions {
        name,
        source_id: platform().register_source(d.pci.address()),
        pasid_quota: quota(),
    }
}

fn register(sys: &System, d: &DsaDevice) -> Result<Arc<DsaIms>, ImsUnavailable> {
    let drv = d.driver();
    if drv.caps().ims_entries == 0 {
        return Err(ImsUnavailable::NoTable { dsa: d.index });
    }
    let ims = DsaIms::register(&sys.domain, &drv, chip_options(d, chip_name(d.index)))
        .map(Arc::new)
        .map_err(|err| ImsUnavailable::Register { dsa: d.index, err })?;
    Ok(ims)
}

/// Creates the system domain and registers every device's IMS table with it (called once the
/// DSA devices are up). Failures are logged; [`device_ims`] reports them.
/// Creates the system domain and registers every device's IMS table (once; later calls do
/// nothing). The main job calls it after bringing the DSA devices up; [`system`] and
/// [`device_ims`] call it on first use.
pub fn init(devs: &[DsaDevice]) {
    static INIT: Once<()> = Once::new();
    INIT.call_once(|| init_once(devs));
}

/// [`init`] with the kernel's devices, if it has not run yet.
fn ensure() {
    if SYSTEM.get().is_none() {
        init(crate::dsa::devices());
    }
}

/// The system domain's mode: `ims.mode=posted|shared`, or (`auto`, the default) posted when
/// every remapping unit has CAP.PI (and the CPU CMPXCHG16B), shared-scan otherwise. Posted
/// asked for on a platform without it is [`ImsError::PostedUnsupported`].
pub fn system_mode() -> Result<VectorMode, ImsError> {
    let posted = crate::iommu::posted_supported();
    match crate::cmdline::get("ims.mode") {
        Some("posted") if !posted => Err(ImsError::PostedUnsupported),
        Some("posted") => Ok(VectorMode::Posted),
        Some("shared") => Ok(VectorMode::Shared),
        // `auto`, absent (other values fail the run at boot: `cmdline::ARGS`).
        _ if posted => Ok(VectorMode::Posted),
        _ => Ok(VectorMode::Shared),
    }
}

fn init_once(devs: &[DsaDevice]) {
    if devs.is_empty() {
        return;
    }
    let sys = SYSTEM.call_once(|| {
        system_mode().and_then(new_domain).map(|domain| System {
            domain,
            chips: IrqMutex::new(BTreeMap::new()),
        })
    });
    let sys = match sys {
        Ok(s) => s,
        Err(e) => {
            log::error!("ims: no system domain: {e}");
            return;
        }
    };
    for d in devs {
        match register(sys, d) {
            Ok(ims) => {
                sys.chips.lock().insert(d.index, ims);
            }
            Err(e) => log::warn!("ims: {e}"),
        }
    }
    log::info!(
        "ims: system domain: {} mode, {} vector(s) on {} CPU(s) (one per CPU, owner {}), {} device(s), PASID quota {}",
        match sys.domain.mode() {
            VectorMode::Posted => "posted",
            _ => "shared-scan",
        },
        sys.domain.vectors_used(),
        sys.domain.cpu_count(),
        sys.domain.owner(),
        sys.chips.lock().len(),
        quota()
    );
}

/// The system-wide shared-vector domain.
pub fn system() -> Result<&'static ImsDomain, ImsUnavailable> {
    ensure();
    match SYSTEM.get() {
        Some(Ok(s)) => Ok(&s.domain),
        Some(Err(e)) => Err(ImsUnavailable::NoDomain(e.clone())),
        None => Err(ImsUnavailable::NotInitialized),
    }
}

/// The IMS chip of `d` in the system domain (registered again if the device was
/// reconfigured since: the new driver instance starts with a reset table).
pub fn device_ims(d: &DsaDevice) -> Result<Arc<DsaIms>, ImsUnavailable> {
    ensure();
    let sys = match SYSTEM.get() {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(ImsUnavailable::NoDomain(e.clone())),
        None => return Err(ImsUnavailable::NotInitialized),
    };
    let drv = d.driver();
    // Held while registering, so that two first users after a reconfiguration do not
    // register the same table twice.
    let mut chips = sys.chips.lock();
    if let Some(c) = chips.get(&d.index) {
        if Arc::ptr_eq(c.device(), &drv) {
            return Ok(c.clone());
        }
        let live = c.chip().live_handles();
        if live > 0 {
            log::warn!(
                "ims: dsa{} was reconfigured with {live} IMS handle(s) alive; they no longer work",
                d.index
            );
        }
    }
    let ims = register(sys, d)?;
    chips.insert(d.index, ims.clone());
    Ok(ims)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Errors of the client API.
#[derive(Debug)]
pub enum ClientError {
    Unavailable(ImsUnavailable),
    Ims(ImsError),
    Space(SpaceError),
    Driver(dsa::DsaError),
    /// The device has no shared WQ (client PASIDs submit to shared WQs) or the CPU lacks
    /// ENQCMDS to feed it.
    NoSharedWq {
        dsa: u32,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(e) => write!(f, "{e}"),
            Self::Ims(e) => write!(f, "ims: {e}"),
            Self::Space(e) => write!(f, "{e}"),
            Self::Driver(e) => write!(f, "dsa: {e}"),
            Self::NoSharedWq { dsa } => write!(f, "dsa{dsa} has no usable shared WQ"),
        }
    }
}

impl core::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Unavailable(e) => Some(e),
            Self::Ims(e) => Some(e),
            Self::Driver(e) => Some(e),
            Self::Space(_) | Self::NoSharedWq { .. } => None,
        }
    }
}

impl From<ImsUnavailable> for ClientError {
    fn from(e: ImsUnavailable) -> Self {
        Self::Unavailable(e)
    }
}
impl From<ImsError> for ClientError {
    fn from(e: ImsError) -> Self {
        Self::Ims(e)
    }
}
impl From<SpaceError> for ClientError {
    fn from(e: SpaceError) -> Self {
        Self::Space(e)
    }
}
impl From<dsa::DsaError> for ClientError {
    fn from(e: dsa::DsaError) -> Self {
        Self::Driver(e)
    }
}

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// A client of the IMS irqchip: one PASID address space. Every handle it allocates is bound
/// to that PASID — the API takes no PASID argument, so nothing can be allocated on behalf of
/// a client without its own PASID.
pub struct Client {
    id: ims::OwnerId,
    space: Arc<ClientSpace>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ims::Client({}, PASID {})", self.id.id(), self.pasid())
    }
}

impl Client {
    /// The client owning `space`.
    pub fn new(space: Arc<ClientSpace>) -> Result<Client, ClientError> {
        let id = ims::OwnerId::new(NEXT_CLIENT.fetch_add(1, Ordering::Relaxed), space.pasid())?;
        Ok(Client { id, space })
    }

    /// A client with a fresh PASID address space.
    pub fn with_new_space() -> Result<Client, ClientError> {
        Self::new(ClientSpace::new()?)
    }

    pub fn pasid(&self) -> u32 {
        self.space.pasid()
    }
    pub fn space(&self) -> &Arc<ClientSpace> {
        &self.space
    }

    /// A submitter for this client on `d`'s shared WQ (unprivileged descriptors tagged with
    /// the client's PASID); attaches the space to `d` if it is not yet.
    pub fn submitter(
        &self,
        d: &DsaDevice,
        opts: SubmitterOptions,
    ) -> Result<Submitter, ClientError> {
        let wq = d
            .wq_id(WqMode::Shared)
            .filter(|_| d.has_enqcmds())
            .ok_or(ClientError::NoSharedWq { dsa: d.index })?;
        d.attach(&self.space)?;
        Ok(Submitter::new(
            &d.driver(),
            wq,
            dsa::Requester::pasid(self.pasid(), false),
            opts,
        )?)
    }

    /// A handle on `d` targeting `cpu`, bound to this client's PASID, whose completions are
    /// `sub`'s (a submitter of this client on `d`).
    pub fn allocate(
        &self,
        d: &DsaDevice,
        cpu: usize,
        sub: &Submitter,
    ) -> Result<ImsHandle, ClientError> {
        Ok(device_ims(d)?.allocate(&self.id, cpu, sub)?)
    }

    /// Same, through another chip of `d` (a comparison domain's).
    pub fn allocate_on(
        &self,
        ims: &DsaIms,
        cpu: usize,
        sub: &Submitter,
    ) -> Result<ImsHandle, ClientError> {
        Ok(ims.allocate(&self.id, cpu, sub)?)
    }

    /// Same as [`Client::allocate_on`], and binds the handle to `sub`: device and PASID are
    /// checked once, here; `sub`'s `Notify::Ims` submissions then carry and arm it.
    pub fn allocate_bound_on(
        &self,
        ims: &DsaIms,
        cpu: usize,
        sub: &mut Submitter,
    ) -> Result<ImsHandle, ClientError> {
        Ok(ims.allocate_bound(&self.id, cpu, sub)?)
    }

    /// A submitter plus a handle on `cpu`, bound together: the usual way to get completion
    /// callbacks.
    pub fn queue(
        &self,
        d: &DsaDevice,
        cpu: usize,
        opts: SubmitterOptions,
    ) -> Result<Queue, ClientError> {
        let ims = device_ims(d)?;
        let mut sub = self.submitter(d, opts)?;
        let handle = ims.allocate_bound(&self.id, cpu, &mut sub)?;
        Ok(Queue { ims, sub, handle })
    }
}

/// A client's submission path with its own interrupt handle: descriptors go through the WQ's
/// IMS portal carrying the handle, and their callbacks run in the demultiplexer on the
/// handle's CPU.
pub struct Queue {
    ims: Arc<DsaIms>,
    sub: Submitter,
    handle: ImsHandle,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ims::Queue({:?})", self.handle)
    }
}

impl Queue {
    /// Submits `work`; `cb` (a function pointer and a cookie) gets the result, in the
    /// demultiplexer on the handle's CPU. Allocates nothing.
    pub fn submit_cb(&mut self, work: &Work, cb: dsa::Callback) -> Result<(), OpError> {
        self.sub.submit_cb(work, dsa::Notify::Ims, cb)
    }

    /// Submits a batch; `cb` gets its completion (members through `Completed::members`).
    pub fn submit_batch_cb(&mut self, members: &[Work], cb: dsa::Callback) -> Result<(), OpError> {
        self.sub.submit_batch_cb(members, dsa::Notify::Ims, cb)
    }

    /// Submits `work`; the closure gets the result (boxed: one allocation per operation).
    pub fn submit(
        &mut self,
        work: &Work,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        self.sub.submit_with_callback(work, dsa::Notify::Ims, cb)
    }

    /// Submits a batch; the closure gets its result ([`Output::Batch`], allocated).
    pub fn submit_batch(
        &mut self,
        members: &[Work],
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        self.sub
            .submit_batch_with_callback(members, dsa::Notify::Ims, cb)
    }

    pub fn handle(&self) -> &ImsHandle {
        &self.handle
    }
    /// For mask / unmask / retarget.
    pub fn handle_mut(&mut self) -> &mut ImsHandle {
        &mut self.handle
    }
    pub fn submitter_mut(&mut self) -> &mut Submitter {
        &mut self.sub
    }
    pub fn ims(&self) -> &Arc<DsaIms> {
        &self.ims
    }

    /// The submitter and the handle, separately (e.g. to move the handle to another CPU's
    /// thread while this one keeps submitting through an [`ims::Armer`]).
    pub fn into_parts(self) -> (Submitter, ImsHandle) {
        (self.sub, self.handle)
    }

    /// Releases the handle (everything submitted through it is delivered first), then the
    /// submitter.
    pub fn release(self) -> Result<(), ImsError> {
        let Queue { handle, sub, .. } = self;
        let r = handle.release();
        drop(sub);
        r
    }
}
