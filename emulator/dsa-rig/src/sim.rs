//! The simulated host platform of a model device: guest memory per address space (requests
//! without PASID and per PASID), the interrupts the device sends, an optional trace log.
//!
//! Memory is host memory: a page is either allocated by [`SimPlatform::map`] at a chosen
//! address (the model's own tests) or part of a region from [`SimPlatform::alloc_mapped`] at a
//! fresh IOVA (driver rigs, whose CPU pointers and the device's DMA then see the same bytes).
//! Every access to it is atomic per byte, because a driver's CPU threads and the model's
//! engine threads touch the same pages. A page can be unmapped (later DMA there faults) or,
//! for allocated regions, have its IOMMU mapping switched off and on.
//!
//! Interrupts: with a hook set ([`SimPlatform::on_msix`], [`SimPlatform::on_msi`]) they go
//! to the hook (MSI-X only while [`SimPlatform::dispatch`] is on); without one they are
//! recorded ([`SimPlatform::take_irqs`], [`SimPlatform::wait_irqs`]). Either way they are
//! counted.

use dsa_model::{DmaSpace, Platform, TraceEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Page size of the simulated IOMMU.
pub const PAGE: u64 = 4096;

/// An interrupt the device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimIrq {
    Msix(u32),
    Msi { addr: u64, data: u32 },
}

/// One device-visible page: where it lives in host memory and whether the IOMMU maps it.
struct Page {
    host: usize,
    mapped: bool,
    /// The page's memory when [`SimPlatform::map`] allocated it (else it belongs to a region).
    _owned: Option<Box<[u8; PAGE as usize]>>,
}

/// A region from [`SimPlatform::alloc_mapped`].
struct Region {
    layout: std::alloc::Layout,
    space: Option<u32>,
    iova: u64,
}

#[derive(Default)]
struct Mem {
    /// Address space → (page number → page).
    spaces: HashMap<Option<u32>, HashMap<u64, Page>>,
    /// Next free IOVA per address space for allocated regions.
    next_iova: HashMap<Option<u32>, u64>,
    /// Allocated regions by host address.
    regions: HashMap<usize, Region>,
}

type MsixHook = Box<dyn Fn(u32) + Send + Sync>;
type MsiHook = Box<dyn Fn(u64, u32) + Send + Sync>;

/// Simulated platform. Address spaces are keyed by `None` (requests without PASID) or
/// `Some(pasid)`; the privilege bit is recorded but does not restrict access.
pub struct SimPlatform {
    mem: Mutex<Mem>,
    irqs: Mutex<Vec<SimIrq>>,
    irq_cv: Condvar,
    msix_hook: OnceLock<MsixHook>,
    msi_hook: OnceLock<MsiHook>,
    /// MSI-X messages go to the MSI-X hook while set (default); else they are only counted.
    pub dispatch: AtomicBool,
    /// Messages per MSI-X entry (entries ≥ 64 are not counted).
    pub msix_count: [AtomicU64; 64],
    /// MSI-format messages (IMS).
    pub msi_count: AtomicU64,
    trace_on: AtomicBool,
    traces: Mutex<Vec<TraceEvent>>,
}

impl Default for SimPlatform {
    fn default() -> Self {
        SimPlatform {
            mem: Mutex::default(),
            irqs: Mutex::default(),
            irq_cv: Condvar::new(),
            msix_hook: OnceLock::new(),
            msi_hook: OnceLock::new(),
            dispatch: AtomicBool::new(true),
            msix_count: std::array::from_fn(|_| AtomicU64::new(0)),
            msi_count: AtomicU64::new(0),
            trace_on: AtomicBool::new(false),
            traces: Mutex::default(),
        }
    }
}

impl core::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimPlatform").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A byte of host memory the platform handed out.
///
/// # Safety
/// `addr` must lie in a live page or region of the platform.
unsafe fn byte<'a>(addr: usize) -> &'a AtomicU8 {
    // SAFETY: the caller guarantees a live allocation; all accesses to it are atomic bytes.
    unsafe { AtomicU8::from_ptr(addr as *mut u8) }
}

impl SimPlatform {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records trace events (off by default: register traces are many).
    pub fn record_traces(&self, on: bool) {
        self.trace_on.store(on, Ordering::Relaxed);
    }

    /// Sends MSI-X messages (entry numbers) to `f` instead of recording them. Set once.
    pub fn on_msix(&self, f: impl Fn(u32) + Send + Sync + 'static) {
        assert!(
            self.msix_hook.set(Box::new(f)).is_ok(),
            "the MSI-X hook is already set"
        );
    }

    /// Sends MSI-format messages (address, data) to `f` instead of recording them. Set once.
    pub fn on_msi(&self, f: impl Fn(u64, u32) + Send + Sync + 'static) {
        assert!(
            self.msi_hook.set(Box::new(f)).is_ok(),
            "the MSI hook is already set"
        );
    }

    /// Maps zero-filled pages covering `[addr, addr + len)` in `space` (existing pages kept).
    pub fn map(&self, space: Option<u32>, addr: u64, len: u64) {
        let mut m = lock(&self.mem);
        let s = m.spaces.entry(space).or_default();
        let mut p = addr & !(PAGE - 1);
        while p < addr.saturating_add(len) {
            s.entry(p / PAGE).or_insert_with(|| {
                let page = Box::new([0u8; PAGE as usize]);
                Page {
                    host: page.as_ptr() as usize,
                    mapped: true,
                    _owned: Some(page),
                }
            });
            p += PAGE;
        }
    }

    /// Unmaps the pages covering `[addr, addr + len)`; later DMA there faults (and a page
    /// mapped again there is a new, zeroed one).
    pub fn unmap(&self, space: Option<u32>, addr: u64, len: u64) {
        let mut m = lock(&self.mem);
        if let Some(s) = m.spaces.get_mut(&space) {
            let mut p = addr & !(PAGE - 1);
            while p < addr.saturating_add(len) {
                s.remove(&(p / PAGE));
                p += PAGE;
            }
        }
    }

    /// Allocates zeroed host memory of `size` bytes (whole pages, aligned to at least a
    /// page) and maps it at a fresh IOVA of `space`, with an unmapped guard page after it.
    /// Each space hands out its own range, so an address of one space is unmapped in every
    /// other. Returns (host address, IOVA); [`SimPlatform::free`] gives it back.
    pub fn alloc_mapped(&self, space: Option<u32>, size: usize, align: usize) -> (usize, u64) {
        let align = align.max(PAGE as usize);
        let size = size.max(1).next_multiple_of(PAGE as usize);
        let layout = std::alloc::Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: `layout` has a non-zero size.
        let host = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
        assert!(host != 0, "host allocation failed");
        let mut m = lock(&self.mem);
        let base = 0x10_0000_0000u64 + space.map_or(0, |p| (u64::from(p) + 1) << 36);
        let next = m.next_iova.entry(space).or_insert(base);
        let iova = next.next_multiple_of(align as u64);
        *next = iova + size as u64 + PAGE;
        let s = m.spaces.entry(space).or_default();
        for k in 0..size as u64 / PAGE {
            s.insert(
                iova / PAGE + k,
                Page {
                    host: host + (k * PAGE) as usize,
                    mapped: true,
                    _owned: None,
                },
            );
        }
        m.regions.insert(
            host,
            Region {
                layout,
                space,
                iova,
            },
        );
        (host, iova)
    }

    /// Unmaps and frees a region of [`SimPlatform::alloc_mapped`] (by its host address).
    ///
    /// # Safety
    /// Nothing may use the region's host memory afterwards (the device's DMA cannot: its
    /// pages are unmapped first).
    pub unsafe fn free(&self, host: usize) {
        let mut m = lock(&self.mem);
        let Some(r) = m.regions.remove(&host) else {
            return;
        };
        if let Some(s) = m.spaces.get_mut(&r.space) {
            for k in 0..r.layout.size() as u64 / PAGE {
                s.remove(&(r.iova / PAGE + k));
            }
        }
        // SAFETY: allocated in alloc_mapped with this layout; no DMA can reach it now (its
        // pages are gone and DMA runs under the memory lock), the caller vouches for the CPU.
        unsafe { std::alloc::dealloc(host as *mut u8, r.layout) };
    }

    /// IOMMU: switches the mapping of the pages covering `[iova, iova + len)` of an
    /// allocated region off or on (the memory stays).
    pub fn set_mapped_pages(&self, space: Option<u32>, iova: u64, len: u64, on: bool) {
        let mut m = lock(&self.mem);
        let s = m.spaces.get_mut(&space).expect("space exists");
        let mut p = iova / PAGE;
        while p * PAGE < iova + len {
            s.get_mut(&p).expect("page allocated").mapped = on;
            p += 1;
        }
    }

    /// Runs `f(host byte address, offset)` over the pages covering `[addr, addr + len)` of
    /// `space` (IOMMU-mapped ones only when `dma`), under the memory lock; returns the bytes
    /// done before the first missing page.
    fn access(
        &self,
        space: Option<u32>,
        addr: u64,
        len: usize,
        dma: bool,
        mut f: impl FnMut(usize, usize, usize),
    ) -> usize {
        let m = lock(&self.mem);
        let Some(s) = m.spaces.get(&space) else {
            return 0;
        };
        let mut done = 0usize;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let po = (a % PAGE) as usize;
            let n = (PAGE as usize - po).min(len - done);
            match s.get(&(a / PAGE)) {
                Some(page) if page.mapped || !dma => f(page.host + po, n, done),
                _ => return done,
            }
            done += n;
        }
        done
    }

    fn copy_in(&self, space: Option<u32>, addr: u64, data: &[u8], dma: bool) -> usize {
        self.access(space, addr, data.len(), dma, |h, n, o| {
            for (i, &b) in data[o..o + n].iter().enumerate() {
                // SAFETY: `access` passes a live page of the platform and `n` stays inside it.
                // Release pairs with a driver's acquire load of the status byte a device
                // writes last.
                unsafe { byte(h + i) }.store(b, Ordering::Release);
            }
        })
    }

    fn copy_out(&self, space: Option<u32>, addr: u64, buf: &mut [u8], dma: bool) -> usize {
        let len = buf.len();
        self.access(space, addr, len, dma, |h, n, o| {
            for (i, b) in buf[o..o + n].iter_mut().enumerate() {
                // SAFETY: as in copy_in.
                *b = unsafe { byte(h + i) }.load(Ordering::Acquire);
            }
        })
    }

    /// Writes guest memory directly (the CPU's view); false if a page is unmapped.
    pub fn write(&self, space: Option<u32>, addr: u64, data: &[u8]) -> bool {
        self.copy_in(space, addr, data, false) == data.len()
    }

    /// Reads guest memory directly; None if a page is unmapped.
    pub fn read(&self, space: Option<u32>, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; len];
        (self.copy_out(space, addr, &mut v, false) == len).then_some(v)
    }

    /// Takes every interrupt recorded so far.
    pub fn take_irqs(&self) -> Vec<SimIrq> {
        std::mem::take(&mut *lock(&self.irqs))
    }

    /// Waits until at least `n` interrupts are recorded (bounded by `timeout`); takes them.
    pub fn wait_irqs(&self, n: usize, timeout: Duration) -> Vec<SimIrq> {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.irqs);
        while g.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .irq_cv
                .wait_timeout(g, deadline - now)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::take(&mut *g)
    }

    /// Takes the recorded trace events.
    pub fn take_traces(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut *lock(&self.traces))
    }

    fn record(&self, i: SimIrq) {
        lock(&self.irqs).push(i);
        self.irq_cv.notify_all();
    }
}

impl Drop for SimPlatform {
    fn drop(&mut self) {
        let hosts: Vec<usize> = lock(&self.mem).regions.keys().copied().collect();
        for h in hosts {
            // SAFETY: the platform is going away, and with it every user of its memory.
            unsafe { self.free(h) };
        }
    }
}

impl Platform for SimPlatform {
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        self.copy_out(space.map(|s| s.0), addr, buf, true)
    }
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        self.copy_in(space.map(|s| s.0), addr, buf, true)
    }
    fn msix_notify(&self, entry: u32) {
        if let Some(c) = self.msix_count.get(entry as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match self.msix_hook.get() {
            Some(h) if self.dispatch.load(Ordering::Relaxed) => h(entry),
            Some(_) => {}
            None => self.record(SimIrq::Msix(entry)),
        }
    }
    fn send_msi(&self, addr: u64, data: u32) {
        self.msi_count.fetch_add(1, Ordering::Relaxed);
        match self.msi_hook.get() {
            Some(h) => h(addr, data),
            None => self.record(SimIrq::Msi { addr, data }),
        }
    }
    fn trace(&self, event: TraceEvent) {
        if self.trace_on.load(Ordering::Relaxed) {
            let mut t = lock(&self.traces);
            if t.len() < 1_000_000 {
                t.push(event);
            }
        }
    }
}
