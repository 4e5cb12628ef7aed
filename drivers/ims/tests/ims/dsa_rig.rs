//! The DSA driver over the DSA model on the fake machine: host memory behind per-PASID
//! IOMMU address spaces (the driver's CPU pointers and the device's DMA see the same bytes),
//! the model's IMS messages delivered through the machine's interrupt remapping with the
//! device's requester ID, and either deterministic execution or worker threads.

use crate::machine::Machine;
use dsa::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion, EnqStatus, PciInfo};
use dsa::{ConfigSource, Device, DeviceOptions, Hardware};
use dsa_model::{Config, DmaSpace, Platform, PortalResult, StoreKind, pci};
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

const PAGE: u64 = 4096;

/// Memory, IOMMU and interrupt wiring of one model device.
pub struct DevPlat {
    machine: Arc<Machine>,
    sid: u16,
    /// space → (IOVA page → host page).
    spaces: Mutex<HashMap<Option<u32>, BTreeMap<u64, usize>>>,
    next_iova: Mutex<HashMap<Option<u32>, u64>>,
    allocs: Mutex<HashMap<usize, std::alloc::Layout>>,
    /// IMS messages the device sent.
    pub msis: AtomicU64,
    pub msix: AtomicU64,
}

impl DevPlat {
    fn translate(&self, space: Option<u32>, addr: u64) -> Option<usize> {
        let sp = self.spaces.lock().unwrap();
        let host = *sp.get(&space)?.get(&(addr / PAGE))?;
        Some(host + (addr % PAGE) as usize)
    }

    fn copy(
        &self,
        space: DmaSpace,
        addr: u64,
        len: usize,
        mut f: impl FnMut(&AtomicU8, usize),
    ) -> usize {
        let sp = space.map(|s| s.0);
        let mut done = 0;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let Some(h) = self.translate(sp, a) else {
                return done;
            };
            let n = ((PAGE - a % PAGE) as usize).min(len - done);
            for i in 0..n {
                // SAFETY: `translate` returned a live host page and `n` stays inside it; all
                // accesses to DMA memory in this rig are atomic bytes.
                f(unsafe { AtomicU8::from_ptr((h + i) as *mut u8) }, done + i);
            }
            done += n;
        }
        done
    }
}

impl Platform for DevPlat {
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        self.copy(space, addr, len, |b, i| buf[i] = b.load(SeqCst))
    }
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        // Release ordering per byte (SeqCst): the status byte, written last by the model,
        // publishes the rest of the record to the driver's acquire load.
        self.copy(space, addr, buf.len(), |b, i| b.store(buf[i], SeqCst))
    }
    fn msix_notify(&self, _entry: u32) {
        self.msix.fetch_add(1, SeqCst);
    }
    fn send_msi(&self, addr: u64, data: u32) {
        self.msis.fetch_add(1, SeqCst);
        self.machine.msi(self.sid, addr, data);
    }
}

// SAFETY: regions are zeroed host memory aligned to at least the request (page aligned),
// mapped at an equally aligned IOVA in the requested space, owned by the driver until `free`.
unsafe impl DmaMemory for DevPlat {
    fn alloc(&self, space: AddressSpace, size: usize, align: usize) -> Result<DmaRegion, DmaError> {
        let key = space.pasid();
        let align = align.max(PAGE as usize);
        let len = size.max(1).next_multiple_of(PAGE as usize);
        let layout =
            std::alloc::Layout::from_size_align(len, align).map_err(|_| DmaError::BadRegion)?;
        // SAFETY: non-zero size.
        let host = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
        let cpu = NonNull::new(host as *mut u8).ok_or(DmaError::OutOfMemory { size })?;
        let iova = {
            let mut n = self.next_iova.lock().unwrap();
            let next = n
                .entry(key)
                .or_insert(0x10_0000_0000 + key.map_or(0, |p| (p as u64 + 1) << 36));
            let a = next.next_multiple_of(align as u64);
            *next = a + len as u64 + PAGE;
            a
        };
        let mut sp = self.spaces.lock().unwrap();
        let m = sp.entry(key).or_default();
        for k in 0..len as u64 / PAGE {
            m.insert(iova / PAGE + k, host + (k * PAGE) as usize);
        }
        self.allocs.lock().unwrap().insert(host, layout);
        Ok(DmaRegion {
            cpu,
            dev: iova,
            len: size,
            space,
        })
    }
    fn free(&self, region: DmaRegion) {
        let host = region.cpu.as_ptr() as usize;
        if let Some(layout) = self.allocs.lock().unwrap().remove(&host) {
            if let Some(m) = self.spaces.lock().unwrap().get_mut(&region.space.pasid()) {
                for k in 0..layout.size() as u64 / PAGE {
                    m.remove(&(region.dev / PAGE + k));
                }
            }
            // SAFETY: allocated in `alloc` with this layout; the driver frees only once the
            // device can no longer write it.
            unsafe { std::alloc::dealloc(host as *mut u8, layout) };
        }
    }
}

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

/// Portal stores; with `sync` set the model executes right at the store, so a completion
/// (record and interrupt) happens while the driver is still inside its submit call.
struct Portal(Arc<dsa_model::Device>, Arc<AtomicBool>);
impl Portal {
    fn after_store(&self) {
        if self.1.load(SeqCst) {
            self.0.run_until_idle();
        }
    }
}
impl dsa::Portals for Portal {
    fn size(&self) -> u64 {
        self.0.layout().bar2_size
    }
    fn movdir64b(&self, off: u64, desc: &[u8; 64]) {
        self.0.portal_submit(off, desc, StoreKind::Posted);
        self.after_store();
    }
    fn enqcmds(&self, off: u64, desc: &[u8; 64]) -> EnqStatus {
        let r = match self.0.portal_submit(off, desc, StoreKind::DmWr) {
            PortalResult::Accepted => EnqStatus::Accepted,
            PortalResult::Retry => EnqStatus::Retry,
        };
        self.after_store();
        r
    }
}

/// In deterministic mode the driver's poll loops run the model's engines.
struct TClock {
    start: Instant,
    model: Arc<dsa_model::Device>,
    deterministic: AtomicBool,
}
impl dsa::Clock for TClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn relax(&self) {
        if self.deterministic.load(SeqCst) {
            self.model.run_until_idle();
        } else {
            thread::yield_now();
        }
    }
    fn delay_us(&self, us: u32) {
        if self.deterministic.load(SeqCst) {
            self.model.run_until_idle();
        }
        thread::sleep(std::time::Duration::from_micros(us as u64));
    }
}

struct TPci {
    flags: AtomicU32,
    msix: u16,
}
impl dsa::Pci for TPci {
    fn info(&self) -> PciInfo {
        let f = self.flags.load(SeqCst);
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

pub struct DsaRig {
    pub model: Arc<dsa_model::Device>,
    pub plat: Arc<DevPlat>,
    pub dev: Arc<Device>,
    /// Deterministic mode: execute each descriptor at its portal store (see `Portal`).
    pub sync_portals: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

pub fn model_cfg() -> Config {
    Config {
        fault_injection: true,
        ..Config::default()
    }
}

impl DsaRig {
    pub fn new(machine: &Arc<Machine>, sid: u16, cfg: Config, exec: Exec) -> DsaRig {
        let plat = Arc::new(DevPlat {
            machine: machine.clone(),
            sid,
            spaces: Mutex::new(HashMap::new()),
            next_iova: Mutex::new(HashMap::new()),
            allocs: Mutex::new(HashMap::new()),
            msis: AtomicU64::new(0),
            msix: AtomicU64::new(0),
        });
        let msix = cfg.msix_entries as u16;
        let model = Arc::new(dsa_model::Device::new(cfg, plat.clone()).expect("model config"));
        let sync_portals = Arc::new(AtomicBool::new(false));
        let flags = pci::BME | pci::PASID_ENABLE | pci::PASID_PRIV;
        model.set_pci_state(flags);
        let hw = Hardware {
            regs: Arc::new(Regs(model.clone())),
            portals: Arc::new(Portal(model.clone(), sync_portals.clone())),
            dma: plat.clone(),
            clock: Arc::new(TClock {
                start: Instant::now(),
                model: model.clone(),
                deterministic: AtomicBool::new(exec == Exec::Deterministic),
            }),
            pci: Arc::new(TPci {
                flags: AtomicU32::new(flags),
                msix,
            }),
        };
        let opts = DeviceOptions {
            max_submitters: 4096,
            submit_timeout_ns: 2_000_000_000,
            ..DeviceOptions::default()
        };
        let dev = Device::new(hw, sid as u32, ConfigSource::Default, opts).expect("bring-up");
        let mut workers = Vec::new();
        if exec == Exec::Threaded {
            for i in 0..model.layout().num_workers {
                let m = model.clone();
                workers.push(thread::spawn(move || m.worker_run(i)));
            }
        }
        DsaRig {
            model,
            plat,
            dev,
            sync_portals,
            workers,
        }
    }

    /// Deterministic mode: execute everything queued (completions raise interrupts here).
    pub fn run(&self) {
        self.model.run_until_idle();
    }

    /// The shared WQ of the default configuration.
    pub fn shared_wq(&self) -> u8 {
        self.dev
            .wq_of_mode(dsa_spec::WqMode::Shared)
            .expect("a shared WQ")
            .id()
    }

    /// Writes a fault-injection register of the model.
    pub fn inject(&self, reg: u64, v: u32) {
        self.model.bar0_write(
            dsa_model::fault_inject::FAULT_INJECT_BASE + reg,
            v as u64,
            4,
        );
    }
}

impl Drop for DsaRig {
    fn drop(&mut self) {
        self.model.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
