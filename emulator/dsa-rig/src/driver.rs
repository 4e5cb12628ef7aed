//! The DSA driver's hardware over a model device: BAR0 registers, BAR2 portals, DMA memory
//! from the [`SimPlatform`], a clock, PCI state; executed either deterministically (the
//! driver's poll loops run the model's engines) or by worker threads.

use crate::sim::{PAGE, SimPlatform};
use dsa::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion, EnqStatus, PciInfo};
use dsa::{ConfigSource, Device, DeviceOptions, Hardware};
use dsa_model::{Config, PortalResult, StoreKind, pci};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bus master, PASID and privileged PASID enabled.
pub const ALL_PCI: u32 = pci::BME | pci::PASID_ENABLE | pci::PASID_PRIV;

/// The default model configuration with the fault-injection page.
pub fn model_cfg() -> Config {
    Config {
        fault_injection: true,
        ..Config::default()
    }
}

fn space_key(s: AddressSpace) -> Option<u32> {
    s.pasid()
}

impl SimPlatform {
    /// A buffer visible to the device in `space`, also readable and writable by the test.
    pub fn buf(&self, space: AddressSpace, len: usize) -> TestBuffer {
        let (host, iova) = self.alloc_mapped(space_key(space), len, PAGE as usize);
        TestBuffer {
            host,
            iova,
            len,
            space,
        }
    }

    /// IOMMU: unmaps / maps again the pages covering a range of an allocated region.
    pub fn set_mapped(&self, space: AddressSpace, iova: u64, len: u64, on: bool) {
        self.set_mapped_pages(space_key(space), iova, len, on);
    }
}

// SAFETY: regions come from alloc_mapped: zeroed host memory aligned to at least the request,
// mapped at an equally aligned IOVA in the requested space, owned by the driver until `free`.
unsafe impl DmaMemory for SimPlatform {
    fn alloc(&self, space: AddressSpace, size: usize, align: usize) -> Result<DmaRegion, DmaError> {
        let (host, iova) = self.alloc_mapped(space_key(space), size, align);
        Ok(DmaRegion {
            cpu: NonNull::new(host as *mut u8).ok_or(DmaError::OutOfMemory { size })?,
            dev: iova,
            len: size,
            space,
        })
    }
    fn free(&self, region: DmaRegion) {
        // SAFETY: the driver gives a region back only once neither it nor the device uses it.
        unsafe { SimPlatform::free(self, region.cpu.as_ptr() as usize) };
    }
}

/// A test buffer: host memory plus its device address. It lives as long as the platform.
#[derive(Clone, Copy, Debug)]
pub struct TestBuffer {
    host: usize,
    pub iova: u64,
    pub len: usize,
    pub space: AddressSpace,
}

impl TestBuffer {
    pub fn at(&self, off: usize) -> u64 {
        self.iova + off as u64
    }
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds of a live allocation; atomic because device threads may
            // touch neighbouring bytes.
            unsafe { AtomicU8::from_ptr((self.host + off + i) as *mut u8) }
                .store(*b, Ordering::Relaxed);
        }
    }
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        (0..len)
            .map(|i| {
                // SAFETY: as in `write`.
                unsafe { AtomicU8::from_ptr((self.host + off + i) as *mut u8) }
                    .load(Ordering::Acquire)
            })
            .collect()
    }
    pub fn all(&self) -> Vec<u8> {
        self.read(0, self.len)
    }
}

/// BAR0 over the model.
pub struct Regs(pub Arc<dsa_model::Device>);
impl dsa::Registers for Regs {
    fn size(&self) -> u64 {
        self.0.layout().bar0_size
    }
    fn read32(&self, off: u64) -> u32 {
        self.0.bar0_read(off, 4) as u32
    }
    fn read64(&self, off: u64) -> u64 {
        self.0.bar0_read(off, 8)
    }
    fn write32(&self, off: u64, v: u32) {
        self.0.bar0_write(off, u64::from(v), 4);
    }
    fn write64(&self, off: u64, v: u64) {
        self.0.bar0_write(off, v, 8);
    }
}

thread_local! {
    /// Set while this thread runs the device model on the driver's behalf (a portal store):
    /// what the model allocates is the device's business, not the driver's (the driver's
    /// allocation test).
    static IN_DEVICE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside the model's side of a portal store.
pub fn in_device() -> bool {
    IN_DEVICE.try_with(|c| c.get()).unwrap_or(false)
}

fn device_side<R>(f: impl FnOnce() -> R) -> R {
    let prev = IN_DEVICE.with(|c| c.replace(true));
    let r = f();
    IN_DEVICE.with(|c| c.set(prev));
    r
}

/// BAR2 over the model; counts stores. With `sync` set the model executes right at the
/// store, so a completion (record and interrupt) happens while the driver is still inside
/// its submit call.
pub struct Portal {
    model: Arc<dsa_model::Device>,
    pub posted: AtomicU64,
    pub enq: AtomicU64,
    pub enq_retry: AtomicU64,
    pub sync: Arc<AtomicBool>,
}
impl Portal {
    fn after_store(&self) {
        if self.sync.load(Ordering::SeqCst) {
            self.model.run_until_idle();
        }
    }
}
impl dsa::Portals for Portal {
    fn size(&self) -> u64 {
        self.model.layout().bar2_size
    }
    fn movdir64b(&self, off: u64, desc: &[u8; 64]) {
        self.posted.fetch_add(1, Ordering::Relaxed);
        device_side(|| self.model.portal_submit(off, desc, StoreKind::Posted));
        self.after_store();
    }
    fn enqcmds(&self, off: u64, desc: &[u8; 64]) -> EnqStatus {
        self.enq.fetch_add(1, Ordering::Relaxed);
        let r = match device_side(|| self.model.portal_submit(off, desc, StoreKind::DmWr)) {
            PortalResult::Accepted => EnqStatus::Accepted,
            PortalResult::Retry => {
                self.enq_retry.fetch_add(1, Ordering::Relaxed);
                EnqStatus::Retry
            }
        };
        self.after_store();
        r
    }
}

/// Clock whose poll loop runs the model's engines in deterministic mode.
pub struct TClock {
    start: Instant,
    model: Arc<dsa_model::Device>,
    pub deterministic: AtomicBool,
    /// While set, `relax` does not run the engines (to build up queue occupancy).
    pub frozen: AtomicBool,
    /// Number of upcoming relax/delay calls that do not run the engines.
    pub skip: AtomicU32,
}
impl TClock {
    fn run(&self) -> bool {
        if !self.deterministic.load(Ordering::Relaxed) || self.frozen.load(Ordering::Relaxed) {
            return false;
        }
        if self
            .skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return false;
        }
        true
    }
}
impl dsa::Clock for TClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn relax(&self) {
        if self.run() {
            self.model.run_until_idle();
        } else {
            thread::yield_now();
        }
    }
    fn delay_us(&self, us: u32) {
        if self.run() {
            self.model.run_until_idle();
        }
        thread::sleep(Duration::from_micros(u64::from(us)));
    }
}

/// PCI state shared by the driver (read) and the model (told on change).
pub struct TPci {
    model: Arc<dsa_model::Device>,
    flags: AtomicU32,
    msix: u16,
}
impl TPci {
    pub fn set(&self, flags: u32) {
        self.flags.store(flags, Ordering::SeqCst);
        self.model.set_pci_state(flags);
    }
}
impl dsa::Pci for TPci {
    fn info(&self) -> PciInfo {
        let f = self.flags.load(Ordering::SeqCst);
        PciInfo {
            bus_master: f & pci::BME != 0,
            pasid_enabled: f & pci::PASID_ENABLE != 0,
            privileged_mode: f & pci::PASID_PRIV != 0,
            msix_entries: self.msix,
        }
    }
}

/// How the model's engines run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exec {
    /// On the calling thread, from the driver's poll loops ([`TClock`]) or [`Rig::run`].
    Deterministic,
    /// On one worker thread per engine.
    Threaded,
}

/// A model device plus the platform pieces, before the driver runs.
pub struct Rig {
    pub model: Arc<dsa_model::Device>,
    pub plat: Arc<SimPlatform>,
    pub portal: Arc<Portal>,
    pub clock: Arc<TClock>,
    pub pci: Arc<TPci>,
    workers: Vec<JoinHandle<()>>,
}

impl Rig {
    pub fn new(cfg: Config, exec: Exec, pci_flags: u32) -> Rig {
        Rig::build(cfg, exec, pci_flags, exec == Exec::Threaded)
    }

    /// A threaded rig whose engine threads start only at [`Rig::start_workers`]: until then
    /// the device holds everything submitted (nothing executes), by construction rather than
    /// by a delay the host might outrun.
    pub fn held(cfg: Config, pci_flags: u32) -> Rig {
        Rig::build(cfg, Exec::Threaded, pci_flags, false)
    }

    fn build(cfg: Config, exec: Exec, pci_flags: u32, start: bool) -> Rig {
        let plat = Arc::new(SimPlatform::new());
        let msix = cfg.msix_entries as u16;
        let model =
            Arc::new(dsa_model::Device::new(cfg, plat.clone()).expect("valid model config"));
        let pci = Arc::new(TPci {
            model: model.clone(),
            flags: AtomicU32::new(0),
            msix,
        });
        pci.set(pci_flags);
        let clock = Arc::new(TClock {
            start: Instant::now(),
            model: model.clone(),
            deterministic: AtomicBool::new(exec == Exec::Deterministic),
            frozen: AtomicBool::new(false),
            skip: AtomicU32::new(0),
        });
        let portal = Arc::new(Portal {
            model: model.clone(),
            posted: AtomicU64::new(0),
            enq: AtomicU64::new(0),
            enq_retry: AtomicU64::new(0),
            sync: Arc::new(AtomicBool::new(false)),
        });
        let mut r = Rig {
            model,
            plat,
            portal,
            clock,
            pci,
            workers: Vec::new(),
        };
        if start {
            r.start_workers();
        }
        r
    }

    /// Starts one worker thread per engine.
    pub fn start_workers(&mut self) {
        for i in 0..self.model.layout().num_workers {
            let m = self.model.clone();
            self.workers.push(thread::spawn(move || m.worker_run(i)));
        }
    }

    pub fn hardware(&self) -> Hardware {
        Hardware {
            regs: Arc::new(Regs(self.model.clone())),
            portals: self.portal.clone(),
            dma: self.plat.clone(),
            clock: self.clock.clone(),
            pci: self.pci.clone(),
        }
    }

    /// Brings the driver up on this device and delivers the device's MSI-X messages to
    /// it (`Device::handle_msix`) while [`SimPlatform::dispatch`] is set.
    pub fn driver(
        &self,
        index: u32,
        source: ConfigSource,
        opts: DeviceOptions,
    ) -> Result<Arc<Device>, dsa::DsaError> {
        let d = Device::new(self.hardware(), index, source, opts)?;
        let weak: Weak<Device> = Arc::downgrade(&d);
        self.plat.on_msix(move |entry| {
            if let Some(d) = weak.upgrade() {
                d.handle_msix(entry as u16);
            }
        });
        Ok(d)
    }

    /// Deterministic mode: executes everything queued (completions raise interrupts here).
    pub fn run(&self) {
        self.model.run_until_idle();
    }

    /// Writes a model fault-injection register.
    pub fn inject(&self, reg: u64, v: u32) {
        self.model.bar0_write(
            dsa_model::fault_inject::FAULT_INJECT_BASE + reg,
            u64::from(v),
            4,
        );
    }

    /// MSI-X messages sent through `entry` so far.
    pub fn irqs(&self, entry: usize) -> u64 {
        self.plat.msix_count[entry].load(Ordering::Relaxed)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.model.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
