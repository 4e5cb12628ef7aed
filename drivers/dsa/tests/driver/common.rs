//! Test rig: the driver on top of `dsa-model`, with a simulated IOMMU (per-address-space page
//! maps onto real host memory, so the driver's CPU pointers and the device's DMA see the
//! same bytes), interrupts dispatched straight into the driver's entry points, and either
//! deterministic execution (the driver's poll loops run the model's engines) or worker
//! threads.

#![allow(dead_code)]

use dsa::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion, EnqStatus, PciInfo};
use dsa::{ConfigSource, Device, DeviceOptions, Hardware};

use dsa_model::{Config, DmaSpace, Platform, PortalResult, StoreKind, pci};
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const PAGE: u64 = 4096;

/// Host memory backing one device-visible page, and whether the IOMMU maps it now.
#[derive(Clone, Copy)]
struct PageMap {
    host: usize,
    mapped: bool,
}

struct Alloc {
    host: usize,
    layout: std::alloc::Layout,
}

/// Receives IMS messages (address, data).
pub type ImsHook = Box<dyn Fn(u64, u32) + Send + Sync>;

/// Simulated platform: IOMMU address spaces, DMA allocator, interrupt sink.
pub struct Plat {
    spaces: Mutex<HashMap<Option<u32>, BTreeMap<u64, PageMap>>>,
    next_iova: Mutex<HashMap<Option<u32>, u64>>,
    allocs: Mutex<HashMap<usize, Alloc>>,
    pub driver: OnceLock<Weak<Device>>,
    /// Interrupts seen per MSI-X entry.
    pub msix_count: [AtomicU64; 64],
    /// Deliver MSI-X straight to the driver (else only count).
    pub dispatch: AtomicBool,
    /// IMS messages: data → hook.
    pub ims_hook: Mutex<Option<ImsHook>>,
    pub msi_count: AtomicU64,
}

fn space_key(s: AddressSpace) -> Option<u32> {
    s.pasid()
}

impl Plat {
    pub fn new() -> Arc<Plat> {
        Arc::new(Plat {
            spaces: Mutex::new(HashMap::new()),
            next_iova: Mutex::new(HashMap::new()),
            allocs: Mutex::new(HashMap::new()),
            driver: OnceLock::new(),
            msix_count: std::array::from_fn(|_| AtomicU64::new(0)),
            dispatch: AtomicBool::new(true),
            ims_hook: Mutex::new(None),
            msi_count: AtomicU64::new(0),
        })
    }

    /// Allocates zeroed host memory and maps it at a fresh IOVA of `space`. Each space hands
    /// out its own range, so an address of one space is unmapped in every other.
    fn alloc_mapped(&self, space: Option<u32>, size: usize, align: usize) -> (usize, u64) {
        let align = align.max(PAGE as usize);
        let size = size.max(1).next_multiple_of(PAGE as usize);
        let layout = std::alloc::Layout::from_size_align(size, align).unwrap();
        // SAFETY: layout has non-zero size.
        let host = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
        assert!(host != 0, "host allocation failed");
        let iova = {
            let mut n = self.next_iova.lock().unwrap();
            let base = 0x10_0000_0000u64 + space.map_or(0, |p| (p as u64 + 1) << 36);
            let next = n.entry(space).or_insert(base);
            let a = next.next_multiple_of(align as u64);
            // Leave an unmapped guard page between allocations.
            *next = a + size as u64 + PAGE;
            a
        };
        let mut sp = self.spaces.lock().unwrap();
        let m = sp.entry(space).or_default();
        for k in 0..(size as u64 / PAGE) {
            m.insert(
                iova / PAGE + k,
                PageMap {
                    host: host + (k * PAGE) as usize,
                    mapped: true,
                },
            );
        }
        self.allocs
            .lock()
            .unwrap()
            .insert(host, Alloc { host, layout });
        (host, iova)
    }

    /// IOMMU: unmap / remap the pages covering a range (the host memory stays).
    pub fn set_mapped(&self, space: AddressSpace, iova: u64, len: u64, on: bool) {
        let mut sp = self.spaces.lock().unwrap();
        let m = sp.get_mut(&space_key(space)).expect("space exists");
        let mut p = iova / PAGE;
        while p * PAGE < iova + len {
            m.get_mut(&p).expect("page allocated").mapped = on;
            p += 1;
        }
    }

    fn translate(&self, space: Option<u32>, addr: u64) -> Option<usize> {
        let sp = self.spaces.lock().unwrap();
        let pm = sp.get(&space)?.get(&(addr / PAGE))?;
        pm.mapped.then_some(pm.host + (addr % PAGE) as usize)
    }

    /// A buffer visible to the device in `space`.
    pub fn buf(self: &Arc<Self>, space: AddressSpace, len: usize) -> TBuf {
        let (host, iova) = self.alloc_mapped(space_key(space), len, PAGE as usize);
        TBuf {
            host,
            iova,
            len,
            space,
        }
    }

    fn driver(&self) -> Option<Arc<Device>> {
        self.driver.get().and_then(Weak::upgrade)
    }
}

/// A test buffer: host pointer plus device address.
#[derive(Clone, Copy, Debug)]
pub struct TBuf {
    host: usize,
    pub iova: u64,
    pub len: usize,
    pub space: AddressSpace,
}

impl TBuf {
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

impl Platform for Plat {
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        let sp = space.map(|s| s.0);
        let mut done = 0;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let Some(h) = self.translate(sp, a) else {
                return done;
            };
            let n = ((PAGE - a % PAGE) as usize).min(buf.len() - done);
            for i in 0..n {
                // SAFETY: translate() returned a live host page; `n` stays inside it.
                buf[done + i] =
                    unsafe { AtomicU8::from_ptr((h + i) as *mut u8) }.load(Ordering::Acquire);
            }
            done += n;
        }
        done
    }
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        let sp = space.map(|s| s.0);
        let mut done = 0;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let Some(h) = self.translate(sp, a) else {
                return done;
            };
            let n = ((PAGE - a % PAGE) as usize).min(buf.len() - done);
            for i in 0..n {
                // SAFETY: as in dma_read. Release pairs with the driver's acquire load of
                // the completion status byte (written last by the model).
                unsafe { AtomicU8::from_ptr((h + i) as *mut u8) }
                    .store(buf[done + i], Ordering::Release);
            }
            done += n;
        }
        done
    }
    fn msix_notify(&self, entry: u32) {
        if let Some(c) = self.msix_count.get(entry as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if self.dispatch.load(Ordering::Relaxed)
            && let Some(d) = self.driver()
        {
            d.handle_msix(entry as u16);
        }
    }
    fn send_msi(&self, addr: u64, data: u32) {
        self.msi_count.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.ims_hook.lock().unwrap().as_ref() {
            h(addr, data);
        }
    }
}

// SAFETY: regions come from alloc_mapped: zeroed host memory aligned to ≥ the request,
// mapped at an equally aligned IOVA in the requested space, owned by the driver until free.
unsafe impl DmaMemory for Plat {
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
        let host = region.cpu.as_ptr() as usize;
        if let Some(a) = self.allocs.lock().unwrap().remove(&host) {
            let mut sp = self.spaces.lock().unwrap();
            if let Some(m) = sp.get_mut(&space_key(region.space)) {
                let pages = a.layout.size() as u64 / PAGE;
                for k in 0..pages {
                    m.remove(&(region.dev / PAGE + k));
                }
            }
            // SAFETY: allocated in alloc_mapped with this layout; the driver gives it back
            // only once the device can no longer write it.
            unsafe { std::alloc::dealloc(a.host as *mut u8, a.layout) };
        }
    }
}

/// BAR0 over the model.
struct Regs(Arc<dsa_model::Device>);
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
        self.0.bar0_write(off, v as u64, 4)
    }
    fn write64(&self, off: u64, v: u64) {
        self.0.bar0_write(off, v, 8)
    }
}

/// BAR2 over the model; counts stores.
pub struct Portal {
    model: Arc<dsa_model::Device>,
    pub posted: AtomicU64,
    pub enq: AtomicU64,
    pub enq_retry: AtomicU64,
}
impl dsa::Portals for Portal {
    fn size(&self) -> u64 {
        self.model.layout().bar2_size
    }
    fn movdir64b(&self, off: u64, desc: &[u8; 64]) {
        self.posted.fetch_add(1, Ordering::Relaxed);
        self.model.portal_submit(off, desc, StoreKind::Posted);
    }
    fn enqcmds(&self, off: u64, desc: &[u8; 64]) -> EnqStatus {
        self.enq.fetch_add(1, Ordering::Relaxed);
        match self.model.portal_submit(off, desc, StoreKind::DmWr) {
            PortalResult::Accepted => EnqStatus::Accepted,
            PortalResult::Retry => {
                self.enq_retry.fetch_add(1, Ordering::Relaxed);
                EnqStatus::Retry
            }
        }
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
        thread::sleep(Duration::from_micros(us as u64));
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exec {
    Deterministic,
    Threaded,
}

/// A model device plus the platform pieces, before the driver runs.
pub struct Rig {
    pub model: Arc<dsa_model::Device>,
    pub plat: Arc<Plat>,
    pub portal: Arc<Portal>,
    pub clock: Arc<TClock>,
    pub pci: Arc<TPci>,
    workers: Vec<JoinHandle<()>>,
}

pub const ALL_PCI: u32 = pci::BME | pci::PASID_ENABLE | pci::PASID_PRIV;

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
        let plat = Plat::new();
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

    /// Brings the driver up on this device.
    pub fn driver(
        &self,
        index: u32,
        source: ConfigSource,
        opts: DeviceOptions,
    ) -> Result<Arc<Device>, dsa::DsaError> {
        let d = Device::new(self.hardware(), index, source, opts)?;
        let _ = self.plat.driver.set(Arc::downgrade(&d));
        Ok(d)
    }

    /// Writes a model fault-injection register.
    pub fn inject(&self, reg: u64, v: u32) {
        self.model
            .bar0_write(dsa_spec::model::FAULT_INJECT_BASE + reg, v as u64, 4);
    }

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

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn model_cfg() -> Config {
    Config {
        fault_injection: true,
        ..Config::default()
    }
}

/// A standard rig with the driver up on the default configuration.
pub fn up(exec: Exec) -> (Rig, Arc<Device>) {
    let rig = Rig::new(model_cfg(), exec, ALL_PCI);
    let dev = rig
        .driver(0, ConfigSource::Default, test_options())
        .expect("bring-up");
    (rig, dev)
}

/// The driver's defaults, with commands (a drain waits for the engine threads) bounded like
/// the tests' own waits: only a hang reaches [`WAIT`].
pub fn test_options() -> DeviceOptions {
    DeviceOptions {
        command_timeout_ns: WAIT,
        ..DeviceOptions::default()
    }
}

/// [`up`] on a [`Rig::held`] rig: the engine threads start at [`Rig::start_workers`].
pub fn up_held() -> (Rig, Arc<Device>) {
    let rig = Rig::held(model_cfg(), ALL_PCI);
    let dev = rig
        .driver(0, ConfigSource::Default, test_options())
        .expect("bring-up");
    (rig, dev)
}

pub const SECOND: u64 = 1_000_000_000;
/// Bound on a test's wait for an operation: only a hang reaches it (a loaded host can stall
/// a test thread or a worker for seconds; no test asserts that anything happens quickly).
pub const WAIT: u64 = 60 * SECOND;
