//! A simulated guest for host tests: page-granular memory per address space (no-PASID and
//! per PASID), recorded interrupts, an optional trace log. Driver crates can use it together
//! with [`crate::Device`] as a complete fake platform.

use dsa_model::{DmaSpace, Platform, TraceEvent};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// An interrupt the device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimIrq {
    Msix(u32),
    Msi { addr: u64, data: u32 },
}

type Space = HashMap<u64, Box<[u8; PAGE as usize]>>;

#[derive(Default)]
struct Mem {
    spaces: HashMap<Option<u32>, Space>,
}

/// Simulated platform. Address spaces are keyed by `None` (requests without PASID) or
/// `Some(pasid)`; the privilege bit is recorded but does not restrict access.
#[derive(Default)]
pub struct SimPlatform {
    mem: Mutex<Mem>,
    irqs: Mutex<Vec<SimIrq>>,
    irq_cv: Condvar,
    trace_on: std::sync::atomic::AtomicBool,
    traces: Mutex<Vec<TraceEvent>>,
}

impl core::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimPlatform").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimPlatform {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records trace events (off by default: register traces are many).
    pub fn record_traces(&self, on: bool) {
        self.trace_on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Maps zero-filled pages covering `[addr, addr + len)` in `space` (existing pages kept).
    pub fn map(&self, space: Option<u32>, addr: u64, len: u64) {
        let mut m = lock(&self.mem);
        let s = m.spaces.entry(space).or_default();
        let mut p = addr & !(PAGE - 1);
        while p < addr.saturating_add(len) {
            s.entry(p / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            p += PAGE;
        }
    }

    /// Unmaps the pages covering `[addr, addr + len)`; later DMA there faults.
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

    /// Copies between memory and `buf`; returns bytes done before an unmapped page.
    fn access(
        &self,
        space: Option<u32>,
        addr: u64,
        len: usize,
        mut f: impl FnMut(&mut [u8], usize),
    ) -> usize {
        let mut m = lock(&self.mem);
        let Some(s) = m.spaces.get_mut(&space) else {
            return 0;
        };
        let mut done = 0usize;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let po = (a % PAGE) as usize;
            let n = (PAGE as usize - po).min(len - done);
            match s.get_mut(&(a / PAGE)) {
                Some(page) => f(&mut page[po..po + n], done),
                None => return done,
            }
            done += n;
        }
        done
    }

    /// Writes guest memory directly (the CPU's view); false if a page is unmapped.
    pub fn write(&self, space: Option<u32>, addr: u64, data: &[u8]) -> bool {
        self.access(space, addr, data.len(), |p, o| {
            p.copy_from_slice(&data[o..o + p.len()])
        }) == data.len()
    }

    /// Reads guest memory directly; None if a page is unmapped.
    pub fn read(&self, space: Option<u32>, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; len];
        (self.access(space, addr, len, |p, o| {
            v[o..o + p.len()].copy_from_slice(p)
        }) == len)
            .then_some(v)
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

    fn push_irq(&self, i: SimIrq) {
        lock(&self.irqs).push(i);
        self.irq_cv.notify_all();
    }
}

impl Platform for SimPlatform {
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        self.access(space.map(|s| s.0), addr, len, |p, o| {
            buf[o..o + p.len()].copy_from_slice(p)
        })
    }
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        self.access(space.map(|s| s.0), addr, buf.len(), |p, o| {
            p.copy_from_slice(&buf[o..o + p.len()])
        })
    }
    fn msix_notify(&self, entry: u32) {
        self.push_irq(SimIrq::Msix(entry));
    }
    fn send_msi(&self, addr: u64, data: u32) {
        self.push_irq(SimIrq::Msi { addr, data });
    }
    fn trace(&self, event: TraceEvent) {
        if self.trace_on.load(std::sync::atomic::Ordering::Relaxed) {
            let mut t = lock(&self.traces);
            if t.len() < 1_000_000 {
                t.push(event);
            }
        }
    }
}
