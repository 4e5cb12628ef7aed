//! Host-test fakes: DMA memory with synthetic physical addresses (above 4 GiB, so virt != phys
//! bugs show), a register block that records every access, checks access widths like QEMU's
//! asserts, and emulates GSTS, the invalidation queue (descriptors executed synchronously on
//! the IQT write, status writes into fake memory, IQE on bad descriptors) and fault records.

use crate::spec::{Fsts, Gcmd, Gsts, iqa, reg, reg_width};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use hwio::dma::{UnitMemory, UnitMemory128};
use hwio::{Clock, Registers};
use std::sync::{Mutex, MutexGuard};

/// State shared by the fakes (they are `Send + Sync` like the real hardware behind them).
/// Single-threaded use only: a nested access (a bug in the fake) panics instead of
/// deadlocking.
#[derive(Default)]
pub struct FakeState<T>(Mutex<T>);

impl<T> FakeState<T> {
    fn new(v: T) -> Self {
        FakeState(Mutex::new(v))
    }
    /// The state, for reading.
    pub fn borrow(&self) -> MutexGuard<'_, T> {
        self.0
            .try_lock()
            .expect("fake state accessed while already borrowed")
    }
    /// The state, for changing.
    pub fn borrow_mut(&self) -> MutexGuard<'_, T> {
        self.borrow()
    }
}

/// The fake DMA memory's state.
#[derive(Default)]
pub struct MemInner {
    /// Qwords, so that page tables can be reached by pointer and updated atomically.
    blocks: BTreeMap<u64, Box<[AtomicU64]>>,
    next: u64,
    /// Blocks allocated so far.
    pub allocs: usize,
    /// Blocks freed so far.
    pub frees: usize,
    /// If set, this many more allocations succeed and every later one fails (to test
    /// out-of-memory paths).
    pub fail_after: Option<usize>,
    /// A 16-byte entry whose every state after a write is recorded in `watched` (what the
    /// unit could read between two stores).
    pub watch: Option<u64>,
    /// Every state of the watched entry, in order.
    pub watched: Vec<[u64; 2]>,
    /// 128-bit compare-and-exchanges done.
    pub cmpxchg128: usize,
}

/// Shared between the unit (as its UnitMemory) and the fake registers (to run the queue).
#[derive(Clone, Default)]
pub struct FakeMem(pub Arc<FakeState<MemInner>>);

impl FakeMem {
    /// Empty memory; blocks get physical addresses from 4 GiB up.
    pub fn new() -> Self {
        let m = Self::default();
        m.0.borrow_mut().next = 0x1_0000_0000;
        m
    }
    /// Blocks allocated and not freed.
    pub fn live_blocks(&self) -> usize {
        self.0.borrow().blocks.len()
    }
    fn record_watch(&self, pa: u64) {
        let w = self.0.borrow().watch;
        if let Some(w) = w
            && (w..w + 16).contains(&pa)
        {
            let e = [self.read64(w), self.read64(w + 8)];
            self.0.borrow_mut().watched.push(e);
        }
    }
    /// The qword containing `pa`, after checking that `[pa, pa+n)` lies in one live block.
    fn with<R>(&self, pa: u64, n: u64, f: impl FnOnce(&AtomicU64) -> R) -> R {
        assert_eq!(pa % n, 0, "misaligned {n}-byte access at {pa:#x}");
        let m = self.0.borrow();
        let (base, block) = m
            .blocks
            .range(..=pa)
            .next_back()
            .unwrap_or_else(|| panic!("access to unallocated {pa:#x}"));
        let off = pa - base;
        assert!(
            off + n <= 8 * block.len() as u64,
            "access {pa:#x}+{n} outside block {base:#x}+{:#x}",
            8 * block.len()
        );
        f(&block[(off / 8) as usize])
    }
}

// SAFETY: blocks are boxed qword slices that stay put until `free` removes them; `table`
// answers only for a whole 4 KiB page inside one live block.
unsafe impl UnitMemory for FakeMem {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<u64> {
        let mut m = self.0.borrow_mut();
        if let Some(n) = m.fail_after {
            if n == 0 {
                return None;
            }
            m.fail_after = Some(n - 1);
        }
        assert!(align.is_power_of_two() && align >= 4096);
        let pa = m.next.next_multiple_of(align as u64);
        // Leave a guard gap so an overrun lands in unallocated memory and panics.
        m.next = pa + size as u64 + 0x1000;
        let block = (0..size.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        m.blocks.insert(pa, block);
        m.allocs += 1;
        Some(pa)
    }
    fn free(&mut self, phys: u64, size: usize) {
        let mut m = self.0.borrow_mut();
        let b = m.blocks.remove(&phys).expect("free of unknown block");
        assert_eq!(b.len(), size.div_ceil(8), "free with a different size");
        m.frees += 1;
    }
    fn read64(&self, phys: u64) -> u64 {
        self.with(phys, 8, |q| q.load(Ordering::SeqCst))
    }
    fn write64(&self, phys: u64, value: u64) {
        self.with(phys, 8, |q| q.store(value, Ordering::SeqCst));
        self.record_watch(phys);
    }
    fn read32(&self, phys: u64) -> u32 {
        let shift = 8 * (phys & 4);
        self.with(phys, 4, |q| (q.load(Ordering::SeqCst) >> shift) as u32)
    }
    fn write32(&self, phys: u64, value: u32) {
        let shift = 8 * (phys & 4);
        self.with(phys, 4, |q| {
            let _ = q.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some((v & !(0xffff_ffff << shift)) | (u64::from(value) << shift))
            });
        });
    }
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        let m = self.0.borrow();
        let (base, block) = m.blocks.range(..=phys).next_back()?;
        let off = phys - base;
        (phys.is_multiple_of(4096) && off + 4096 <= 8 * block.len() as u64)
            .then(|| NonNull::from(&block[..]).cast::<AtomicU64>())
            .map(|p| {
                // SAFETY: `off / 8 + 512` qwords lie inside the block (checked above).
                unsafe { p.add((off / 8) as usize) }
            })
    }
}

impl UnitMemory128 for FakeMem {
    fn compare_exchange128(
        &self,
        phys: u64,
        current: [u64; 2],
        new: [u64; 2],
    ) -> Result<(), [u64; 2]> {
        assert_eq!(phys % 16, 0, "CMPXCHG16B needs 16-byte alignment");
        let found = [self.read64(phys), self.read64(phys + 8)];
        if found != current {
            return Err(found);
        }
        // Single-threaded fake: the two stores are one update for every reader, and the
        // watch records only the state after both.
        self.with(phys, 8, |q| q.store(new[0], Ordering::SeqCst));
        self.with(phys + 8, 8, |q| q.store(new[1], Ordering::SeqCst));
        self.0.borrow_mut().cmpxchg128 += 1;
        self.record_watch(phys);
        Ok(())
    }
}

/// One register access, as logged by [`FakeRegs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 32-bit read at an offset.
    R32(u64),
    /// 64-bit read at an offset.
    R64(u64),
    /// 32-bit write of a value at an offset.
    W32(u64, u32),
    /// 64-bit write of a value at an offset.
    W64(u64, u64),
}

/// The fake unit's register state.
pub struct RegsInner {
    /// The CAP value reported.
    pub cap: u64,
    /// The ECAP value reported.
    pub ecap: u64,
    /// The GSTS value (updated by GCMD writes).
    pub gsts: u32,
    /// Plain registers by offset (the last value written).
    pub values: BTreeMap<u64, u64>,
    /// Every access, in order.
    pub log: Vec<Access>,
    /// Every descriptor the fake unit executed, in order.
    pub executed: Vec<[u64; 4]>,
    /// Descriptor types (qw0 & 0xf) the fake rejects with IQE, once each.
    pub reject_once: Vec<u8>,
    /// FSTS (IQE set on a rejected descriptor).
    pub fsts: u32,
    /// IQH as a 256-bit slot index.
    pub iqh: usize,
    /// IQA as latched by the last QIE enable.
    pub iqa_latched: u64,
    /// Fault-recording registers (low, high qword), CAP.NFR + 1 of them.
    pub frcd: Vec<(u64, u64)>,
    /// GCMD writes, in order.
    pub gcmd_writes: Vec<u32>,
    /// If set, GSTS never reflects this command (to test timeouts).
    pub stuck: Option<Gcmd>,
    /// If set, IQT writes are accepted but nothing is executed (to test wait timeouts).
    pub hold_queue: bool,
}

/// A fake register block of one remapping unit, running its invalidation queue in [`FakeMem`].
#[derive(Clone)]
pub struct FakeRegs {
    /// The state, for tests to inspect and change.
    pub inner: Arc<FakeState<RegsInner>>,
    mem: FakeMem,
}

/// CAP of QEMU 10.0.2's `intel-iommu` with aw-bits=48 and DMA draining.
pub const QEMU_CAP: u64 = 0x00d2_008c_222f_0606;
/// x-flts=on + IR + x-pasid-mode.
pub const QEMU_ECAP_FS: u64 = 0x0000_8800_00f0_0f4a | 0x0100_0000_0000;
/// default SM (second stage) + IR.
pub const QEMU_ECAP_SS: u64 = 0x0000_4800_80f0_0f4a;

impl FakeRegs {
    /// A unit reporting `cap` and `ecap` whose queue runs in `mem`.
    pub fn new(mem: FakeMem, cap: u64, ecap: u64) -> Self {
        let frcd = vec![(0, 0); ((cap >> 40) & 0xff) as usize + 1];
        Self {
            inner: Arc::new(FakeState::new(RegsInner {
                cap,
                ecap,
                gsts: 0,
                values: BTreeMap::new(),
                log: Vec::new(),
                executed: Vec::new(),
                reject_once: Vec::new(),
                fsts: 0,
                iqh: 0,
                iqa_latched: 0,
                frcd,
                gcmd_writes: Vec::new(),
                stuck: None,
                hold_queue: false,
            })),
            mem,
        }
    }

    fn frcd_base(&self) -> u64 {
        ((self.inner.borrow().cap >> 24) & 0x3ff) * 16
    }

    /// Records a fault like QEMU's vtd_report_frcd_fault (single slot semantics generalised).
    pub fn inject_fault(&self, lo: u64, hi: u64) {
        let mut r = self.inner.borrow_mut();
        if r.fsts & Fsts::PFO.bits() != 0 {
            return;
        }
        let n = r.frcd.len();
        let ppf = r.frcd.iter().any(|f| f.1 >> 63 != 0);
        let fri = ((r.fsts >> 8) & 0xff) as usize;
        let slot = if ppf {
            (fri + r.frcd.iter().filter(|f| f.1 >> 63 != 0).count()) % n
        } else {
            fri % n
        };
        if r.frcd[slot].1 >> 63 != 0 {
            r.fsts |= Fsts::PFO.bits();
            return;
        }
        r.frcd[slot] = (lo, hi);
        if !ppf {
            r.fsts = (r.fsts & !0xff00) | ((slot as u32) << 8);
        }
    }

    fn fsts_value(&self) -> u32 {
        let r = self.inner.borrow();
        let ppf = r.frcd.iter().any(|f| f.1 >> 63 != 0);
        (r.fsts & !Fsts::PPF.bits()) | if ppf { Fsts::PPF.bits() } else { 0 }
    }

    fn width_ok(&self, off: u64, w: u8, write: bool) {
        let frcd = self.frcd_base();
        let nfr = self.inner.borrow().frcd.len() as u64;
        let iro = ((self.inner.borrow().ecap >> 8) & 0x3ff) * 16;
        let expected = if (frcd..frcd + 16 * nfr).contains(&off) {
            // 64-bit halves; the F bit may be cleared with a 32-bit write to dword 3.
            if write && w == 32 && (off - frcd) % 16 == 12 {
                32
            } else {
                64
            }
        } else if off == iro || off == iro + 8 {
            64
        } else {
            reg_width(off).unwrap_or_else(|| panic!("access to unknown register {off:#x}"))
        };
        assert_eq!(
            w,
            expected,
            "{}-bit {} at {off:#x}: QEMU would abort",
            w,
            if write { "write" } else { "read" }
        );
    }

    fn run_queue(&self, tail: usize) {
        let mut r = self.inner.borrow_mut();
        let base = r.iqa_latched & !0xfff;
        assert!(
            r.iqa_latched & iqa::DW_256 != 0,
            "queue must use 256-bit descriptors"
        );
        let slots = iqa::slots_256((r.iqa_latched & 7) as u8);
        if tail >= slots {
            r.fsts |= Fsts::IQE.bits();
            return;
        }
        while r.iqh != tail {
            let pa = base + 32 * r.iqh as u64;
            let d: [u64; 4] = core::array::from_fn(|i| self.mem.read64(pa + 8 * i as u64));
            let ty = (d[0] & 0xf) as u8;
            let reject = if let Some(i) = r.reject_once.iter().position(|t| *t == ty) {
                r.reject_once.remove(i);
                true
            } else {
                d[2] != 0 || d[3] != 0 || !(1..=8).contains(&ty)
            };
            if ty == 5 {
                assert!(
                    d[0] & 0x30 != 0x30,
                    "wait descriptor with SW and IF: QEMU asserts"
                );
            }
            if reject || (ty == 5 && d[0] & 0x30 == 0) {
                r.fsts |= Fsts::IQE.bits();
                return;
            }
            r.executed.push(d);
            if ty == 5 && d[0] & 0x20 != 0 {
                self.mem.write32(d[1] & !3, (d[0] >> 32) as u32);
            }
            r.iqh = (r.iqh + 1) % slots;
        }
    }

    /// Every descriptor executed so far.
    pub fn executed(&self) -> Vec<[u64; 4]> {
        self.inner.borrow().executed.clone()
    }
    /// Forgets the executed descriptors, the access log and the GCMD writes.
    pub fn clear_log(&self) {
        let mut r = self.inner.borrow_mut();
        r.executed.clear();
        r.log.clear();
        r.gcmd_writes.clear();
    }
}

impl Registers for FakeRegs {
    fn size(&self) -> u64 {
        0x1000
    }

    fn read32(&self, offset: u64) -> u32 {
        self.width_ok(offset, 32, false);
        self.inner.borrow_mut().log.push(Access::R32(offset));
        match offset {
            reg::off::GSTS => self.inner.borrow().gsts,
            reg::off::FSTS => self.fsts_value(),
            reg::off::GCMD => 0,
            _ => *self.inner.borrow().values.get(&offset).unwrap_or(&0) as u32,
        }
    }

    fn read64(&self, offset: u64) -> u64 {
        self.width_ok(offset, 64, false);
        self.inner.borrow_mut().log.push(Access::R64(offset));
        let frcd = self.frcd_base();
        let r = self.inner.borrow();
        match offset {
            reg::off::CAP => r.cap,
            reg::off::ECAP => r.ecap,
            reg::off::IQH => iqa::tail_256(r.iqh),
            o if o >= frcd && o < frcd + 16 * r.frcd.len() as u64 => {
                let (lo, hi) = r.frcd[((o - frcd) / 16) as usize];
                if (o - frcd).is_multiple_of(16) {
                    lo
                } else {
                    hi
                }
            }
            o => *r.values.get(&o).unwrap_or(&0),
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        self.width_ok(offset, 32, true);
        self.inner.borrow_mut().log.push(Access::W32(offset, value));
        let frcd = self.frcd_base();
        match offset {
            reg::off::GCMD => {
                let mut r = self.inner.borrow_mut();
                r.gcmd_writes.push(value);
                let cmd = Gcmd::from_bits_retain(value);
                let stuck = r.stuck.unwrap_or(Gcmd::empty());
                // QEMU evaluates every bit against the current status.
                for (c, s) in [
                    (Gcmd::TE, Gsts::TES),
                    (Gcmd::QIE, Gsts::QIES),
                    (Gcmd::IRE, Gsts::IRES),
                ] {
                    if stuck.contains(c) {
                        continue;
                    }
                    if cmd.contains(c) && r.gsts & s.bits() == 0 {
                        if c == Gcmd::QIE {
                            r.iqa_latched = *r.values.get(&reg::off::IQA).unwrap_or(&0);
                            r.iqh = 0;
                        }
                        r.gsts |= s.bits();
                    } else if !cmd.contains(c) {
                        r.gsts &= !s.bits();
                    }
                }
                if cmd.contains(Gcmd::SRTP) && !stuck.contains(Gcmd::SRTP) {
                    r.gsts |= Gsts::RTPS.bits();
                }
                if cmd.contains(Gcmd::SIRTP) && !stuck.contains(Gcmd::SIRTP) {
                    r.gsts |= Gsts::IRTPS.bits();
                }
            }
            reg::off::FSTS => {
                let mut r = self.inner.borrow_mut();
                r.fsts &= !(value & (Fsts::PFO | Fsts::IQE).bits());
            }
            o if o >= frcd && (o - frcd) % 16 == 12 => {
                let mut r = self.inner.borrow_mut();
                if value & 0x8000_0000 != 0 {
                    r.frcd[((o - frcd) / 16) as usize].1 &= !(1 << 63);
                }
            }
            o => {
                self.inner.borrow_mut().values.insert(o, u64::from(value));
            }
        }
    }

    fn write64(&self, offset: u64, value: u64) {
        self.width_ok(offset, 64, true);
        self.inner.borrow_mut().log.push(Access::W64(offset, value));
        self.inner.borrow_mut().values.insert(offset, value);
        if offset == reg::off::IQT {
            let qie = self.inner.borrow().gsts & Gsts::QIES.bits() != 0;
            if qie && !self.inner.borrow().hold_queue {
                assert_eq!(value & 0x10, 0, "IQT bit 4 set with DW=1");
                self.run_queue(iqa::index_256(value));
            }
        }
    }
}

/// Advances 1 µs per reading.
#[derive(Default)]
pub struct FakeClock(pub AtomicU64);

impl FakeClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self(AtomicU64::new(0))
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}
