//! VT-d in QEMU (`crate::iommu`): tables walked like the hardware, address spaces, faults
//! and interrupt remapping, and real DMA and MSIs from QEMU's `edu` device (`-device edu`,
//! see `tests/tests/iommu.rs`). Without an IOMMU or without `edu` the tests skip.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use crate::arch::percpu;
use crate::iommu::{self, AddressSpace, FaultReason, MsiRoute, Perm, SpaceKind};
use crate::ktest;
use crate::mm::{self, FrameBlock};
use crate::pci::{self, PciAddress};
use hwio::Registers as _;

mod posted;

/// QEMU's `edu` test device (hw/misc/edu.c): DMA engine and MSI.
struct Edu {
    dev: pci::Device,
    mmio: pci::Mmio,
}

mod edu_reg {
    pub const ID: u64 = 0x00;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_RAISE: u64 = 0x60;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
    pub const CMD_RUN: u64 = 1;
    /// Direction: set = device buffer → RAM, clear = RAM → device buffer.
    pub const CMD_TO_RAM: u64 = 2;
    /// The device's 4 KiB DMA buffer, as addressed in DMA_SRC/DMA_DST.
    pub const BUFFER: u64 = 0x40000;
    pub const BUFFER_LEN: u64 = 4096;
    /// The device masks DMA addresses to 28 bits (its `dma_mask` default).
    pub const DMA_LIMIT: u64 = 1 << 28;
}

impl Edu {
    fn find() -> Option<Self> {
        let dev = pci::find_id(0x1234, 0x11e8).next()?;
        let mmio = dev.map_bar(0).ok()?;
        dev.enable_memory_and_bus_master().ok()?;
        dev.disable_intx().ok()?;
        // The identification register reads 0x010000ed (version 1.0).
        (mmio.read32(edu_reg::ID) & 0xff == 0xed).then_some(Self { dev, mmio })
    }

    fn addr(&self) -> PciAddress {
        self.dev.address()
    }

    fn wait_idle(&self) -> Result<(), String> {
        crate::time::wait_until(super::HANG, || {
            (self.mmio.read64(edu_reg::DMA_CMD) & edu_reg::CMD_RUN == 0).then_some(())
        })
        .map_err(|_| {
            format!(
                "edu DMA did not complete within {} s",
                super::HANG.as_secs()
            )
        })
    }

    /// One DMA transfer; `to_ram`: buffer[off] → IOVA, else IOVA → buffer[off]. The device
    /// runs it on a 100 ms timer.
    fn dma(&self, iova: u64, off: u64, len: u64, to_ram: bool) -> Result<(), String> {
        // The device does not bound its buffer itself.
        if len == 0 || off + len > edu_reg::BUFFER_LEN {
            return Err(format!("bad edu transfer {off:#x}+{len:#x}"));
        }
        self.wait_idle()?;
        let buf = edu_reg::BUFFER + off;
        let (src, dst, cmd) = if to_ram {
            (buf, iova, edu_reg::CMD_RUN | edu_reg::CMD_TO_RAM)
        } else {
            (iova, buf, edu_reg::CMD_RUN)
        };
        self.mmio.write64(edu_reg::DMA_SRC, src);
        self.mmio.write64(edu_reg::DMA_DST, dst);
        self.mmio.write64(edu_reg::DMA_COUNT, len);
        self.mmio.write64(edu_reg::DMA_CMD, cmd);
        self.wait_idle()
    }

    fn raise_irq(&self) {
        self.mmio.write32(edu_reg::IRQ_RAISE, 1);
    }

    fn ack_irq(&self) {
        let s = self.mmio.read32(edu_reg::IRQ_STATUS);
        self.mmio.write32(edu_reg::IRQ_ACK, s);
    }
}

fn edu_or_skip() -> Result<Edu, ktest::Outcome> {
    if !iommu::is_enabled() {
        return Err(ktest::skip("no IOMMU"));
    }
    Edu::find().ok_or_else(|| ktest::skip("no edu device (-device edu)"))
}

/// The next fault from `dev`, through the fault-event interrupt.
fn next_fault(w: &mut iommu::FaultWatch, dev: PciAddress) -> iommu::FaultInfo {
    w.next_from(Some(dev), super::HANG)
        .unwrap_or_else(|e| panic!("{e} (fault events so far: {})", iommu::fault_events()))
}

fn page_below_dma_limit() -> FrameBlock {
    mm::alloc_frames_below(4096, 4096, edu_reg::DMA_LIMIT).expect("a frame below 256 MiB")
}

fn fill(b: &mut FrameBlock, seed: u8) {
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = seed.wrapping_add((i as u8).wrapping_mul(7));
    }
}

fn bytes(b: &mut FrameBlock, len: usize) -> Vec<u8> {
    // Volatile: the device wrote it behind the compiler's back.
    let p = b.as_ptr::<u8>();
    // SAFETY: `len` ≤ the block size; the block is owned identity-mapped RAM.
    (0..len)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

/// Index of the first differing byte (and the two bytes), or None when equal: short
/// failure messages instead of two dumped buffers.
fn mismatch(got: &[u8], want: &[u8]) -> Option<(usize, Option<u8>, Option<u8>)> {
    (0..got.len().max(want.len()))
        .find(|&i| got.get(i) != want.get(i))
        .map(|i| (i, got.get(i).copied(), want.get(i).copied()))
}

const A: u64 = 1 << 5;
const D: u64 = 1 << 6;

ktest!(
    fn every_function_has_a_valid_rid_pasid_entry() -> ktest::Outcome {
        if !iommu::is_enabled() {
            return ktest::skip("no IOMMU");
        }
        let (mut n, mut aliased) = (0, 0);
        for d in pci::devices() {
            if iommu::unit_of(d.address()).is_err() {
                continue;
            }
            if d.dma_alias() != d.address() {
                // Behind a conventional bridge: the walk uses the alias, which needs its own
                // context entry.
                aliased += 1;
            }
            let (r, t) = iommu::hardware_walk(d.address(), None, 0x1234_5000, true).unwrap();
            assert_eq!(
                t.pasid,
                0,
                "{}: requests without PASID use RID_PASID 0",
                d.address()
            );
            assert_eq!(
                t.context_entry[0] & 1,
                1,
                "{}: context entry present",
                d.address()
            );
            match iommu::rid_default() {
                Some(vtd::RidDefault::PassThrough) => {
                    assert_eq!(
                        r.map(|t| t.phys),
                        Ok(0x1234_5000),
                        "{}: pass-through default",
                        d.address()
                    );
                    assert_eq!((t.pasid_entry[0] >> 6) & 7, 0b100, "PGTT=100");
                }
                _ => assert_eq!(r, Err(FaultReason::FsEntryNotPresent)),
            }
            n += 1;
        }
        assert!(n > 0, "no function behind a remapping unit");
        let (cpu, vector) = iommu::fault_vector(0).unwrap();
        let rep = crate::irq::report(cpu).unwrap();
        assert!(
            rep.owners
                .iter()
                .any(|(v, o)| *v == vector && o == "vtd-fault"),
            "{rep}"
        );
        assert_eq!(iommu::STRAY_ACCESSES.load(Ordering::Relaxed), 0);
        crate::println!(
            "ktest-info: {n} functions behind {} unit(s), {aliased} reached through a DMA alias",
            iommu::unit_count()
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn two_spaces_map_one_iova_to_different_frames_by_pasid() -> ktest::Outcome {
        if !iommu::is_enabled() {
            return ktest::skip("no IOMMU");
        }
        // Prefer a PASID-capable function (the DSA), else any function behind a unit; only
        // PASID slots change, so its requests without PASID are untouched.
        let dev = pci::devices()
            .filter(|d| iommu::unit_of(d.address()).is_ok())
            .max_by_key(|d| d.info().pasid_width.is_some())
            .map(|d| d.address())
            .unwrap();
        let before = iommu::pasids_in_use();
        let fa = mm::alloc_frames(4096, 4096).unwrap();
        let fb = mm::alloc_frames(4096, 4096).unwrap();
        const IOVA: u64 = 0x7000_0000;
        let a = AddressSpace::new(SpaceKind::Translated).unwrap();
        let b = AddressSpace::new(SpaceKind::Translated).unwrap();
        assert_eq!(a.kind(), SpaceKind::Translated);
        assert_ne!(a.pasid(), b.pasid());
        assert!(a.pasid() >= 1 && b.pasid() >= 1, "PASID 0 is RID_PASID");
        a.map(IOVA, fa.addr(), 4096, Perm::RW).unwrap();
        b.map(IOVA, fb.addr(), 4096, Perm::RO).unwrap();
        assert_eq!(a.translate(IOVA).map(|t| t.phys), Some(fa.addr()));
        assert!(matches!(
            a.map(IOVA, fb.addr(), 4096, Perm::RW),
            Err(iommu::IommuError::Vtd {
                err: iommu::VtdError::AlreadyMapped { .. },
                ..
            })
        ));
        assert!(matches!(
            a.map(0xfee0_0000, fa.addr(), 4096, Perm::RW),
            Err(iommu::IommuError::Vtd {
                err: iommu::VtdError::InterruptWindow { .. },
                ..
            })
        ));
        a.attach(dev).unwrap();
        b.attach(dev).unwrap();
        let walk = |p: u32, w: bool| {
            iommu::hardware_walk(dev, Some(p), IOVA + 0x18, w)
                .unwrap()
                .0
        };
        assert_eq!(walk(a.pasid(), true).map(|t| t.phys), Ok(fa.addr() + 0x18));
        assert_eq!(walk(b.pasid(), false).map(|t| t.phys), Ok(fb.addr() + 0x18));
        assert_eq!(walk(b.pasid(), true), Err(FaultReason::SmWriteNotPermitted));
        // Unmapping in one space leaves the other alone.
        assert_eq!(b.unmap(IOVA, 4096).unwrap(), 4096);
        assert_eq!(walk(b.pasid(), false), Err(FaultReason::FsEntryNotPresent));
        assert_eq!(walk(a.pasid(), false).map(|t| t.phys), Ok(fa.addr() + 0x18));
        b.revoke().unwrap();
        assert_eq!(walk(b.pasid(), false), Err(FaultReason::InvalidPasidEntry));
        assert!(
            b.attach(dev).is_err(),
            "a revoked space cannot be attached again"
        );
        let (pa, pb) = (a.pasid(), b.pasid());
        a.detach(dev).unwrap();
        assert_eq!(walk(pa, false), Err(FaultReason::InvalidPasidEntry));
        a.attach(dev).unwrap();
        assert_eq!(walk(pa, false).map(|t| t.phys), Ok(fa.addr() + 0x18));
        drop(a);
        b.destroy().unwrap();
        assert_eq!(walk(pa, false), Err(FaultReason::InvalidPasidEntry));
        assert_eq!(walk(pb, false), Err(FaultReason::InvalidPasidEntry));
        assert_eq!(iommu::pasids_in_use(), before);
        crate::println!("ktest-info: PASIDs {pa} and {pb} on {dev}: IOVA {IOVA:#x} → two frames");
        ktest::Outcome::Pass
    }
);

ktest!(
    fn address_spaces_and_routes_from_every_cpu_at_once() -> ktest::Outcome {
        if !iommu::is_enabled() {
            return ktest::skip("no IOMMU");
        }
        let dev = pci::devices()
            .find(|d| iommu::unit_of(d.address()).is_ok())
            .unwrap()
            .address();
        let before = iommu::pasids_in_use();
        // Each CPU builds, checks and tears down its own space and interrupt routes while the
        // others do the same: every call serialises on the unit's lock.
        let results = crate::arch::smp::run_on_all(super::HANG, move || {
            let cpu = percpu::current_index();
            let frames = mm::alloc_frames(64 * 4096, 4096).map_err(|e| format!("{e}"))?;
            let mut pasids = Vec::new();
            for round in 0..4u64 {
                let s = AddressSpace::new(SpaceKind::Translated).map_err(|e| format!("{e}"))?;
                let iova = 0x4000_0000 + (round << 24);
                for p in 0..64u64 {
                    s.map(iova + p * 4096, frames.addr() + p * 4096, 4096, Perm::RW)
                        .map_err(|e| format!("{e}"))?;
                }
                s.attach(dev).map_err(|e| format!("{e}"))?;
                for p in [0u64, 17, 63] {
                    let (r, _) = iommu::hardware_walk(dev, Some(s.pasid()), iova + p * 4096, true)
                        .map_err(|e| format!("{e}"))?;
                    if r.map(|t| t.phys) != Ok(frames.addr() + p * 4096) {
                        return Err(format!("cpu {cpu}: page {p} walks to {r:?}"));
                    }
                }
                let r = MsiRoute::new(dev, cpu, 0x40 + cpu as u8).map_err(|e| format!("{e}"))?;
                let e = r.irte().ok_or("no IRTE")?;
                if e.destination != percpu::apic_id(cpu).unwrap_or(u32::MAX) {
                    return Err(format!("cpu {cpu}: IRTE destination {}", e.destination));
                }
                if s.unmap(iova, 64 * 4096).map_err(|e| format!("{e}"))? != 64 * 4096 {
                    return Err(format!("cpu {cpu}: unmap size"));
                }
                pasids.push(s.pasid());
            }
            Ok::<Vec<u32>, String>(pasids)
        })
        .unwrap();
        let mut all = Vec::new();
        for r in results {
            all.extend(r.unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(iommu::pasids_in_use(), before, "every space destroyed");
        assert_eq!(iommu::STRAY_ACCESSES.load(Ordering::Relaxed), 0);
        crate::println!(
            "ktest-info: {} address spaces built on {} CPUs in parallel",
            all.len(),
            percpu::cpu_count()
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn interrupt_route_entries_and_retarget() -> ktest::Outcome {
        if !iommu::is_enabled() {
            return ktest::skip("no IOMMU");
        }
        let dev = pci::devices()
            .find(|d| iommu::unit_of(d.address()).is_ok())
            .unwrap();
        let cpu = percpu::cpu_count() - 1;
        let mut r = MsiRoute::new(dev.address(), cpu, 0x41).unwrap();
        assert!(r.is_remapped());
        let e = r.irte().unwrap();
        let idx = r.irte_index().unwrap();
        assert!(e.present);
        assert_eq!(
            (e.vector, e.destination),
            (0x41, percpu::apic_id(cpu).unwrap())
        );
        assert_eq!(
            e.svt,
            vtd::spec::SourceValidation::RequesterId {
                sid: dev.requester_id(),
                sq: 0
            }
        );
        let m = r.message();
        assert_eq!(m.address >> 20, 0xfee, "MSI address window");
        assert_eq!(m.address & 0x18, 0x18, "remappable format, SHV");
        assert_eq!(
            vtd::spec::RemappableMsi::handle_of(m.address as u32),
            Some(idx)
        );
        r.retarget(0, 0x42).unwrap();
        let e = r.irte().unwrap();
        assert_eq!(
            (e.vector, e.destination),
            (0x42, percpu::apic_id(0).unwrap())
        );
        assert_eq!(r.message(), m, "retargeting keeps the message");
        assert_eq!((r.device(), r.cpu(), r.vector()), (dev.address(), 0, 0x42));
        assert_eq!(
            MsiRoute::new(dev.address(), 9999, 0x41).unwrap_err(),
            iommu::IommuError::NoSuchCpu(9999)
        );
        let nowhere = PciAddress::new(0xffff, 0xff, 31, 7);
        assert_eq!(
            MsiRoute::new(nowhere, 0, 0x41).unwrap_err(),
            iommu::IommuError::UnknownDevice(nowhere)
        );
        r.free().unwrap();
        // The index is free again: the next allocation reuses the lowest free entry.
        let r2 = MsiRoute::new(dev.address(), 0, 0x43).unwrap();
        assert_eq!(r2.irte_index(), Some(idx));
        ktest::Outcome::Pass
    }
);

ktest!(
    fn edu_dma_lands_where_the_mapping_says() -> ktest::Outcome {
        let edu = match edu_or_skip() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        // IOVAs are the physical addresses of decoy frames: DMA that bypassed translation
        // would read/write the decoys instead.
        let mut src = page_below_dma_limit();
        let mut dst = page_below_dma_limit();
        let mut decoy_src = page_below_dma_limit();
        let mut decoy_dst = page_below_dma_limit();
        fill(&mut src, 0x11);
        fill(&mut decoy_src, 0x99);
        let (iova_s, iova_d) = (decoy_src.addr(), decoy_dst.addr());
        let space = AddressSpace::new(SpaceKind::Translated).unwrap();
        space.map(iova_s, src.addr(), 4096, Perm::RO).unwrap();
        space.map(iova_d, dst.addr(), 4096, Perm::RW).unwrap();
        space.attach_rid_pasid(dev).unwrap();
        let leaf = |iova: u64, w: bool| {
            let (r, t) = iommu::hardware_walk(dev, None, iova, w).unwrap();
            (r.map(|t| t.phys), t.paging.last().map_or(0, |e| e.2))
        };
        assert_eq!(leaf(iova_s, false).0, Ok(src.addr()));
        assert_eq!(leaf(iova_d, true).0, Ok(dst.addr()));
        assert_eq!(leaf(iova_s, false).1 & (A | D), 0, "not accessed yet");
        let watch = iommu::watch_faults();
        const LEN: u64 = 512;
        edu.dma(iova_s + 0x100, 0, LEN, false).unwrap();
        edu.dma(iova_d + 0x200, 0, LEN, true).unwrap();
        let want: Vec<u8> = bytes(&mut src, 0x100 + LEN as usize)[0x100..].to_vec();
        let got = bytes(&mut dst, 0x200 + LEN as usize);
        assert_eq!(
            mismatch(&got[0x200..], &want),
            None,
            "DMA data landed in the mapped frame"
        );
        assert!(
            got[..0x200].iter().all(|b| *b == 0),
            "nothing before the range"
        );
        assert!(
            bytes(&mut decoy_dst, 4096).iter().all(|b| *b == 0),
            "nothing reached the identity address"
        );
        // What the unit did in the tables it walked: A on the read page, A and D on the
        // written one (QEMU updates first-stage A/D like a CPU).
        let (_, ls) = leaf(iova_s, false);
        let (_, ld) = leaf(iova_d, true);
        assert_eq!(ls & (A | D), A, "read leaf {ls:#x}");
        assert_eq!(ld & (A | D), A | D, "written leaf {ld:#x}");
        let (_, t) = iommu::hardware_walk(dev, None, iova_d, true).unwrap();
        assert!(
            t.paging.iter().all(|(_, _, e)| e & A != 0),
            "A at every level: {:x?}",
            t.paging
        );
        assert!(watch.seen().is_empty(), "no faults: {:?}", watch.seen());
        space.detach_rid_pasid(dev).unwrap();
        crate::println!(
            "ktest-info: edu {dev}: {LEN} bytes IOVA {:#x} → frame {:#x} → buffer → IOVA {:#x} → frame {:#x}",
            iova_s + 0x100,
            src.addr() + 0x100,
            iova_d + 0x200,
            dst.addr() + 0x200
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn edu_unmapped_access_is_recorded_and_reported() -> ktest::Outcome {
        let edu = match edu_or_skip() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        let space = AddressSpace::new(SpaceKind::Translated).unwrap();
        space.attach_rid_pasid(dev).unwrap();
        let (n_dev, n_pasid, events) = (
            iommu::fault_count(dev),
            iommu::fault_count_pasid(dev, 0),
            iommu::fault_events(),
        );
        let stats = iommu::fault_stats();
        let mut watch = iommu::watch_faults();
        const IOVA: u64 = 0x0234_5000;
        edu.dma(IOVA + 0x80, 0, 64, false).unwrap();
        let f = next_fault(&mut watch, dev);
        let (walk, _) = iommu::hardware_walk(dev, None, IOVA, false).unwrap();
        assert_eq!(
            (f.source, f.address, f.write, f.pasid),
            (dev, IOVA, false, Some(0))
        );
        assert_eq!(f.reason, FaultReason::FsEntryNotPresent);
        assert_eq!(
            walk,
            Err(f.reason),
            "the software walk predicts the recorded reason"
        );
        edu.dma(IOVA + 0x1000, 0, 64, true).unwrap();
        let w = next_fault(&mut watch, dev);
        assert_eq!(
            (w.address, w.write, w.reason),
            (IOVA + 0x1000, true, FaultReason::FsEntryNotPresent)
        );
        assert_eq!(iommu::fault_count(dev), n_dev + 2);
        assert_eq!(iommu::fault_count_pasid(dev, 0), n_pasid + 2);
        assert!(
            iommu::fault_events() >= events + 2,
            "reported through the fault event"
        );
        let now = iommu::fault_stats();
        assert_eq!(now.records, stats.records + 2);
        let n71 = |s: &iommu::FaultStats| s.by_reason.get(&0x71).copied().unwrap_or(0);
        assert_eq!(n71(&now), n71(&stats) + 2);
        let seen: Vec<iommu::FaultInfo> = watch.seen();
        assert!(
            seen.is_empty(),
            "the watch moved past both records: {seen:?}"
        );
        space.detach_rid_pasid(dev).unwrap();
        crate::println!("ktest-info: fault records: {f} / {w}");
        ktest::Outcome::Pass
    }
);

ktest!(
    fn edu_dma_faults_after_unmap_and_after_revoke() -> ktest::Outcome {
        let edu = match edu_or_skip() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        let mut frame = page_below_dma_limit();
        let mut pattern = page_below_dma_limit();
        fill(&mut pattern, 0x33);
        const IOVA: u64 = 0x0300_0000;
        let space = AddressSpace::new(SpaceKind::Translated).unwrap();
        space.map(IOVA, frame.addr(), 4096, Perm::RW).unwrap();
        space
            .map(IOVA + 0x1000, pattern.addr(), 4096, Perm::RO)
            .unwrap();
        space.attach_rid_pasid(dev).unwrap();
        let mut watch = iommu::watch_faults();
        // Works while mapped (and leaves the translation in the unit's IOTLB).
        edu.dma(IOVA + 0x1000, 0, 64, false).unwrap();
        edu.dma(IOVA, 0, 64, true).unwrap();
        let first = bytes(&mut frame, 64);
        assert_eq!(
            mismatch(&first, &bytes(&mut pattern, 64)),
            None,
            "first DMA landed"
        );
        fill(&mut frame, 0x55);
        edu.dma(IOVA, 0, 64, true).unwrap();
        assert_eq!(
            mismatch(&bytes(&mut frame, 64), &first),
            None,
            "second DMA landed"
        );
        // Unmap + invalidation: the next DMA faults and the frame stays as it is.
        fill(&mut frame, 0x66);
        let expect = bytes(&mut frame, 4096);
        assert_eq!(space.unmap(IOVA, 4096).unwrap(), 4096);
        edu.dma(IOVA, 0, 64, true).unwrap();
        let f = next_fault(&mut watch, dev);
        assert_eq!(
            (f.address, f.reason),
            (IOVA, FaultReason::FsEntryNotPresent)
        );
        assert_eq!(
            mismatch(&bytes(&mut frame, 4096), &expect),
            None,
            "no write after unmap"
        );
        // Map again, then revoke the whole space: the device's RID_PASID becomes blocked.
        space.map(IOVA, frame.addr(), 4096, Perm::RW).unwrap();
        edu.dma(IOVA, 0, 64, true).unwrap();
        assert_eq!(
            mismatch(&bytes(&mut frame, 64), &first),
            None,
            "mapped again"
        );
        fill(&mut frame, 0x77);
        let expect = bytes(&mut frame, 4096);
        space.revoke().unwrap();
        edu.dma(IOVA, 0, 64, true).unwrap();
        let g = next_fault(&mut watch, dev);
        assert_eq!(
            (g.address, g.reason),
            (IOVA, FaultReason::FsEntryNotPresent)
        );
        assert_eq!(
            mismatch(&bytes(&mut frame, 4096), &expect),
            None,
            "no write after revoke"
        );
        // Even the identity address is unreachable: blocked, not pass-through.
        let (r, _) = iommu::hardware_walk(dev, None, frame.addr(), true).unwrap();
        assert!(r.is_err(), "revoked RID_PASID is blocked");
        drop(space);
        iommu::reset_rid_pasid(dev).unwrap();
        let (r, _) = iommu::hardware_walk(dev, None, frame.addr(), true).unwrap();
        assert_eq!(r.map(|t| t.phys), Ok(frame.addr()), "back to pass-through");
        ktest::Outcome::Pass
    }
);

static HITS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static LAST_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

ktest!(
    fn edu_msi_arrives_through_the_irte_and_a_wrong_source_id_blocks_it() -> ktest::Outcome {
        let edu = match edu_or_skip() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        let cpu = percpu::cpu_count() - 1;
        let count = |i: usize| HITS[i].load(Ordering::SeqCst);
        let handler = |i: usize| {
            move |c: &crate::irq::IrqContext| {
                LAST_CPU.store(c.cpu, Ordering::SeqCst);
                HITS[i].fetch_add(1, Ordering::SeqCst);
            }
        };
        let v1 = crate::irq::alloc_vector_with_handler(cpu, "ktest-edu-msi", handler(0)).unwrap();
        let v0 = crate::irq::alloc_vector_with_handler(0, "ktest-edu-msi", handler(1)).unwrap();
        let (h1, h0) = (count(0), count(1));
        let mut route = MsiRoute::new(dev, cpu, v1).unwrap();
        let msi = edu.dev.msi().unwrap();
        msi.program(route.message(), 1).unwrap();
        msi.set_enabled(true).unwrap();
        assert_eq!(msi.message().unwrap(), route.message());
        let wait = |i: usize, n: u64| {
            crate::time::wait_until(super::HANG, || (count(i) >= n).then_some(())).is_ok()
        };
        edu.raise_irq();
        assert!(
            wait(0, h1 + 1),
            "MSI did not arrive on CPU {cpu} vector {v1:#x}"
        );
        edu.ack_irq();
        assert_eq!(LAST_CPU.load(Ordering::SeqCst), cpu);
        assert_eq!(crate::irq::count(cpu, v1), h1 + 1);
        // Retarget: same message, new CPU and vector.
        route.retarget(0, v0).unwrap();
        edu.raise_irq();
        assert!(wait(1, h0 + 1), "retargeted MSI did not arrive on CPU 0");
        edu.ack_irq();
        assert_eq!(LAST_CPU.load(Ordering::SeqCst), 0);
        assert_eq!(count(0), h1 + 1, "nothing on the old target");
        // Without Bus Master Enable the device cannot send it at all (no fault either).
        let watch0 = iommu::watch_faults();
        edu.dev.set_bus_master(false).unwrap();
        edu.raise_irq();
        crate::time::delay(Duration::from_millis(50));
        assert_eq!(count(1), h0 + 1, "MSI sent without bus mastering");
        edu.ack_irq();
        edu.dev.set_bus_master(true).unwrap();
        assert!(watch0.seen().is_empty());
        // An IRTE that expects another requester blocks the message and reports 0x26.
        let mut watch = iommu::watch_faults();
        let idx = route.irte_index().unwrap();
        route.set_source_id(edu.dev.requester_id() ^ 0x08).unwrap();
        edu.raise_irq();
        let f = next_fault(&mut watch, dev);
        assert_eq!(f.reason, FaultReason::IrSourceIdCheckFailed);
        assert_eq!((f.code, f.irte_index, f.pasid), (0x26, Some(idx), None));
        crate::time::delay(Duration::from_millis(50));
        assert_eq!(
            (count(0), count(1)),
            (h1 + 1, h0 + 1),
            "blocked message delivered"
        );
        edu.ack_irq();
        // A freed IRTE: not present (0x22).
        drop(route);
        edu.raise_irq();
        let g = next_fault(&mut watch, dev);
        assert_eq!(
            (g.reason, g.irte_index),
            (FaultReason::IrteNotPresent, Some(idx))
        );
        edu.ack_irq();
        msi.set_enabled(false).unwrap();
        crate::irq::free_vector(cpu, v1).unwrap();
        crate::irq::free_vector(0, v0).unwrap();
        crate::println!(
            "ktest-info: edu MSI via IRTE {idx}: CPU {cpu} vector {v1:#x}, then CPU 0 vector {v0:#x}; {f}; {g}"
        );
        ktest::Outcome::Pass
    }
);
