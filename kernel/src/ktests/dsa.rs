//! The DSA driver on the real path: devices found over PCI, MOVDIR64B/ENQCMDS to the
//! portals of the patched QEMU's `intel-dsa`, DMA through intel-iommu (kernel PASID and
//! client PASIDs), MSI-X through interrupt remapping. Tests skip without a DSA device;
//! those needing the model's fault-injection page (`intel-dsa,fault-injection=on`) skip
//! without it. The host boot tests (`tests/tests/dsa.rs`) run them with devices and check
//! that they did not skip.

use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bench::workload::{WlOp, WorkloadSpec};
use dsa::{Notify, OpError, Output, PageFault, Requester, Submitter, SubmitterOptions, Work};
use dsa_fault_inject as fi;
use dsa_spec::regs::off;
use dsa_spec::{DeviceState, GenSts, WqMode};

use crate::arch::{percpu, smp};
use crate::dsa::{ClientSpace, DmaBuffer, DsaDevice};
use crate::ktest;
use crate::ktest::Outcome;
use crate::sync::IrqMutex;
use crate::workload::ops::OpSlot;

const WAIT_NS: u64 = super::HANG.as_nanos() as u64;

fn devices() -> Result<&'static [DsaDevice], Outcome> {
    let d = crate::dsa::devices();
    if d.is_empty() {
        return Err(ktest::skip(match crate::dsa::init_error() {
            Some(e) => alloc::format!("no DSA device ({e})"),
            None => alloc::string::String::from("no DSA device (QEMU: DSA=1 or --dsa 1)"),
        }));
    }
    Ok(d)
}

/// The first device with both WQ kinds (and a CPU that can feed the shared one).
fn device_with_both() -> Result<&'static DsaDevice, Outcome> {
    devices()?
        .iter()
        .find(|d| {
            d.has_enqcmds()
                && d.wq_id(WqMode::Dedicated).is_some()
                && d.wq_id(WqMode::Shared).is_some()
        })
        .ok_or_else(|| ktest::skip("no device with a dedicated and a shared WQ"))
}

fn kernel_submitter(d: &DsaDevice, mode: WqMode) -> Submitter {
    let wq = d.wq_id(mode).expect("WQ of this mode");
    Submitter::new(
        &d.driver(),
        wq,
        d.kernel_requester(),
        SubmitterOptions {
            timeout_ns: WAIT_NS,
            ..SubmitterOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("dsa{} submitter on wq{wq}: {e}", d.index))
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// The model's fault-injection page, when the device was created with it.
struct Injector<'a> {
    d: &'a DsaDevice,
}

impl<'a> Injector<'a> {
    fn of(d: &'a DsaDevice) -> Result<Injector<'a>, Outcome> {
        let magic = d.registers().read32(fi::FAULT_INJECT_BASE + fi::FI_MAGIC);
        if magic != fi::FI_MAGIC_VALUE {
            return Err(ktest::skip(
                "the device has no fault-injection page (intel-dsa,fault-injection=on)",
            ));
        }
        Ok(Injector { d })
    }
    fn write(&self, reg: u64, v: u32) {
        self.d.registers().write32(fi::FAULT_INJECT_BASE + reg, v);
    }
    fn delay_us(&self, us: u32) {
        self.write(fi::FI_DELAY_US, us);
    }
}

/// Undoes a completion delay even when the test fails.
struct NoDelay<'a>(&'a Injector<'a>);
impl Drop for NoDelay<'_> {
    fn drop(&mut self) {
        self.0.delay_us(0);
    }
}

ktest!(
    fn devices_are_enabled_with_pasid_and_remapped_interrupts() -> Outcome {
        let devs = match devices() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let iommu = crate::iommu::is_enabled();
        for d in devs {
            let drv = d.driver();
            assert_eq!(drv.state(), dsa::RunState::Running, "dsa{}", d.index);
            let sts = GenSts(d.registers().read32(off::GENSTS));
            assert_eq!(
                sts.state(),
                DeviceState::Enabled,
                "dsa{} GENSTS {:#x}",
                d.index,
                sts.0
            );
            let pci = drv.pci_info();
            assert!(pci.bus_master, "dsa{}: bus master", d.index);
            if iommu {
                assert!(d.kernel_pasid().is_some(), "kernel PASID with the IOMMU on");
                assert!(
                    pci.pasid_enabled && pci.privileged_mode,
                    "dsa{}: {pci:?}",
                    d.index
                );
            }
            assert!(drv.wqs().count() >= 1);
            for w in drv.wqs() {
                let e = w.msix_entry.expect("every WQ has an MSI-X entry");
                let r = d.routes().iter().find(|r| r.entry == e).expect("route");
                assert!(r.cpu < percpu::cpu_count());
                assert_eq!(r.irte().is_some(), iommu, "remapped iff the IOMMU is on");
                let rep = crate::irq::report(r.cpu).unwrap();
                assert!(
                    rep.to_string()
                        .contains(&alloc::format!("dsa{}-wq{}", d.index, e - 1)),
                    "vector owner of dsa{} entry {e}",
                    d.index
                );
            }
        }
        Outcome::Pass
    }
);

ktest!(
    fn memmove_dedicated_movdir64b_and_shared_enqcmds_each_way() -> Outcome {
        // Issue 3's check: one device with a dedicated and a shared WQ, memmove through
        // MOVDIR64B and through ENQCMDS, bytes and completion record checked.
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let drv = d.driver();
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let retries = drv.enqcmds_retries();
            let mut s = kernel_submitter(d, mode);
            let mut a = DmaBuffer::kernel(16384, true).unwrap();
            let mut b = DmaBuffer::kernel(16384, true).unwrap();
            let data = pattern(16384, if mode == WqMode::Dedicated { 1 } else { 2 });
            a.bytes_mut().copy_from_slice(&data);
            b.bytes_mut().fill(0xEE);
            // a → b at odd offsets, then b → a back at other offsets.
            let t = s
                .submit(
                    &Work::memmove(a.dev_addr(3), b.dev_addr(5), 9000),
                    Notify::Poll,
                )
                .unwrap();
            assert_eq!(s.wait(t, WAIT_NS), Ok(Output::Done), "{mode:?} a→b");
            let cr = s.completion_record(t).expect("completion record");
            assert_eq!(cr.status_code(), dsa_spec::status::SUCCESS, "{cr:?}");
            assert_eq!(
                (cr.result, cr.bytes_completed, cr.fault_addr),
                (0, 0, 0),
                "{cr:?}"
            );
            assert_eq!(&b.bytes()[5..9005], &data[3..9003]);
            assert!(
                b.bytes()[..5]
                    .iter()
                    .chain(&b.bytes()[9005..])
                    .all(|&x| x == 0xEE)
            );
            a.bytes_mut().fill(0);
            let t = s
                .submit(
                    &Work::memmove(b.dev_addr(5), a.dev_addr(100), 9000),
                    Notify::Poll,
                )
                .unwrap();
            assert_eq!(s.wait(t, WAIT_NS), Ok(Output::Done), "{mode:?} b→a");
            let cr = s.completion_record(t).unwrap();
            assert_eq!(
                (cr.status_code(), cr.bytes_completed),
                (dsa_spec::status::SUCCESS, 0)
            );
            assert_eq!(&a.bytes()[100..9100], &data[3..9003]);
            assert!(a.bytes()[..100].iter().all(|&x| x == 0));
            // The dedicated WQ took a credit (MOVDIR64B path); only the shared WQ can see
            // ENQCMDS retries, and an idle WQ gives none.
            if mode == WqMode::Dedicated {
                assert!(drv.wq(d.wq_id(mode).unwrap()).unwrap().credits_peak() >= 1);
            }
            assert_eq!(
                drv.enqcmds_retries(),
                retries,
                "idle shared WQ refused ENQCMDS"
            );
        }
        Outcome::Pass
    }
);

ktest!(
    fn every_operation_matches_the_cpu_reference_on_both_queues() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let caps = d.driver().caps().clone();
        let mut ran = 0;
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let mut s = kernel_submitter(d, mode);
            for op in WlOp::ALL {
                if !caps.supports(op.opcode()) {
                    log::warn!("dsa{}: {} not in OPCAP", d.index, op.name());
                    continue;
                }
                for (seq, size) in [(1u64, 4096usize), (2, 8192 + 512)] {
                    let mut slot = OpSlot::new(op, size, 64, None, seq as u8).unwrap();
                    let w = slot.prepare(seq);
                    let t = s
                        .submit(&w, Notify::Poll)
                        .unwrap_or_else(|e| panic!("{} {size}: {e}", op.name()));
                    let r = s.wait(t, WAIT_NS);
                    if let Err(crate::workload::ops::Mismatch(why)) = slot.verify(&r) {
                        panic!("{:?} {} {size}: {why}", mode, op.name());
                    }
                    let cr = s.completion_record(t).unwrap();
                    assert_eq!(
                        cr.status_code(),
                        dsa_spec::status::SUCCESS,
                        "{} {size}: {cr:?}",
                        op.name()
                    );
                    assert_eq!(cr.fault_addr, 0, "{}", op.name());
                    ran += 1;
                }
            }
        }
        let supported = WlOp::ALL
            .iter()
            .filter(|op| caps.supports(op.opcode()))
            .count();
        assert_eq!(ran, 2 * 2 * supported, "every operation in OPCAP ran");
        crate::println!(
            "ktest-info: dsa{}: {supported} of {} operations in OPCAP ran on both WQs",
            d.index,
            WlOp::ALL.len()
        );
        // Drain: completes after everything before it.
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let mut s = kernel_submitter(d, mode);
            assert_eq!(s.run(&Work::drain()), Ok(Output::Done));
        }
        Outcome::Pass
    }
);

ktest!(
    fn batches_with_fence_on_both_queues() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let mut s = kernel_submitter(d, mode);
            let mut src = DmaBuffer::kernel(32 * 1024, true).unwrap();
            let dst = DmaBuffer::kernel(32 * 1024, true).unwrap();
            let data = pattern(32 * 1024, 7);
            src.bytes_mut().copy_from_slice(&data);
            let members: Vec<Work> = (0..32)
                .map(|k| Work::memmove(src.dev_addr(k * 1024), dst.dev_addr(k * 1024), 1024))
                .collect();
            let t = s.submit_batch(&members, Notify::Poll).unwrap();
            let Ok(Output::Batch(rs)) = s.wait(t, WAIT_NS) else {
                panic!("{mode:?}: batch of 32 failed")
            };
            assert_eq!(rs.len(), 32);
            assert!(rs.iter().all(|r| *r == Ok(Output::Done)), "{rs:?}");
            assert_eq!(dst.bytes(), &data[..]);
            let cr = s.completion_record(t).unwrap();
            assert_eq!(
                (cr.status_code(), cr.bytes_completed),
                (dsa_spec::status::SUCCESS, 32)
            );
            // [copy, compare expecting equal (it is not), fenced fill, fill]: everything from
            // the fence on is abandoned and writes nothing.
            let before = dst.bytes()[..4096].to_vec();
            let mut cmp = Work::compare(src.dev_addr(0), src.dev_addr(4096), 4096);
            cmp.op = dsa::Op::Compare {
                src1: src.dev_addr(0),
                src2: src.dev_addr(4096),
                len: 4096,
                expect_equal: Some(true),
            };
            let batch = [
                Work::memmove(src.dev_addr(8192), dst.dev_addr(8192), 64),
                cmp,
                Work::fill(dst.dev_addr(0), 4096, 0).with_fence(),
                Work::fill(dst.dev_addr(0), 16, 0),
            ];
            let t = s.submit_batch(&batch, Notify::Poll).unwrap();
            let Ok(Output::Batch(rs)) = s.wait(t, WAIT_NS) else {
                panic!("{mode:?}: fenced batch failed")
            };
            assert_eq!(rs[0], Ok(Output::Done));
            assert!(
                matches!(
                    rs[1],
                    Ok(Output::Compare {
                        equal: false,
                        predicate: Some(false),
                        ..
                    })
                ),
                "{:?}",
                rs[1]
            );
            assert_eq!(rs[2], Err(OpError::Abandoned));
            assert_eq!(rs[3], Err(OpError::Abandoned));
            assert_eq!(
                &dst.bytes()[..4096],
                &before[..],
                "abandoned members wrote nothing"
            );
            let cr = s.completion_record(t).unwrap();
            assert_eq!(cr.status_code(), dsa_spec::status::BATCH_FAIL, "{cr:?}");
            let m1 = s.batch_member_record(t, 1).unwrap();
            assert_eq!(m1.status_code(), dsa_spec::status::SUCCESS_FALSE_PREDICATE);
        }
        Outcome::Pass
    }
);

ktest!(
    fn completion_interrupts_and_polling() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let drv = d.driver();
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let wq = d.wq_id(mode).unwrap();
            let entry = drv.wq(wq).unwrap().msix_entry.unwrap();
            let route = d.routes().iter().find(|r| r.entry == entry).unwrap();
            let mut s = kernel_submitter(d, mode);
            let mut src = DmaBuffer::kernel(8192, true).unwrap();
            let dst = DmaBuffer::kernel(8192, true).unwrap();
            src.bytes_mut().copy_from_slice(&pattern(8192, 3));
            // Polling: no interrupt.
            let before = crate::irq::count(route.cpu, route.vector);
            for k in 0..4 {
                let w = Work::memmove(src.dev_addr(k * 1024), dst.dev_addr(k * 1024), 1024);
                assert_eq!(s.run(&w), Ok(Output::Done));
            }
            assert_eq!(
                crate::irq::count(route.cpu, route.vector),
                before,
                "{mode:?}: polled ops interrupted"
            );
            // Interrupts: the callback runs in the handler on the routed CPU.
            let done = Arc::new(AtomicUsize::new(0));
            let cpus = Arc::new(IrqMutex::new(Vec::new()));
            for k in 4..8 {
                let (dn, cs) = (done.clone(), cpus.clone());
                let w = Work::memmove(src.dev_addr(k * 1024), dst.dev_addr(k * 1024), 1024);
                s.submit_with_callback(&w, Notify::Msix, move |r| {
                    assert_eq!(r, Ok(Output::Done));
                    cs.lock().push(percpu::current_index());
                    dn.fetch_add(1, Ordering::AcqRel);
                })
                .unwrap();
            }
            crate::time::wait_until(super::HANG, || {
                (done.load(Ordering::Acquire) == 4).then_some(())
            })
            .unwrap_or_else(|_| {
                panic!("{mode:?}: {} of 4 callbacks", done.load(Ordering::Acquire))
            });
            let after = crate::irq::count(route.cpu, route.vector);
            assert!(
                after > before,
                "{mode:?}: no interrupt on cpu{} vector {:#x}",
                route.cpu,
                route.vector
            );
            let on: Vec<usize> = cpus.lock().clone();
            assert!(
                on.iter().all(|&c| c == route.cpu),
                "{mode:?}: callbacks on {on:?}"
            );
            assert_eq!(dst.bytes(), src.bytes());
            assert!(
                d.entry_stats(entry)
                    .unwrap()
                    .interrupts
                    .load(Ordering::Relaxed)
                    > 0
            );
        }
        Outcome::Pass
    }
);

/// A client PASID attached to `d` with a submitter on the shared WQ.
fn client(d: &DsaDevice) -> (Arc<ClientSpace>, Submitter) {
    let c = ClientSpace::new().expect("client PASID");
    d.attach(&c).expect("attach");
    let wq = d.wq_id(WqMode::Shared).unwrap();
    let s = Submitter::new(
        &d.driver(),
        wq,
        Requester::pasid(c.pasid(), false),
        SubmitterOptions {
            timeout_ns: WAIT_NS,
            ..SubmitterOptions::default()
        },
    )
    .expect("client submitter");
    (c, s)
}

ktest!(
    fn pasid_clients_see_only_their_own_memory() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if !crate::iommu::is_enabled() {
            return ktest::skip("needs the IOMMU");
        }
        let (ca, mut sa) = client(d);
        let (cb, mut sb) = client(d);
        assert_ne!(ca.pasid(), cb.pasid());
        let mut a_src = DmaBuffer::in_client(&ca, 8192, true).unwrap();
        let a_dst = DmaBuffer::in_client(&ca, 8192, true).unwrap();
        let mut b_src = DmaBuffer::in_client(&cb, 8192, true).unwrap();
        let b_dst = DmaBuffer::in_client(&cb, 8192, true).unwrap();
        a_src.bytes_mut().copy_from_slice(&pattern(8192, 0xA));
        b_src.bytes_mut().copy_from_slice(&pattern(8192, 0xB));
        // Each works in its own space.
        assert_eq!(
            sa.run(&Work::memmove(a_src.dev_addr(0), a_dst.dev_addr(0), 8192)),
            Ok(Output::Done)
        );
        assert_eq!(
            sb.run(&Work::memmove(b_src.dev_addr(0), b_dst.dev_addr(0), 8192)),
            Ok(Output::Done)
        );
        assert_eq!(a_dst.bytes(), a_src.bytes());
        assert_eq!(b_dst.bytes(), b_src.bytes());
        // A names B's source: not mapped in A's tables, so the read faults in the IOMMU and
        // nothing of B's reaches A.
        let faults = crate::iommu::fault_count_pasid(d.pci.address(), ca.pasid());
        let mut watch = crate::iommu::watch_faults();
        let r = sa.run(&Work::memmove(b_src.dev_addr(0), a_dst.dev_addr(0), 4096));
        match r {
            Err(OpError::PageFault(PageFault {
                addr,
                write,
                completed,
                ..
            })) => {
                assert_eq!((addr, write, completed), (b_src.dev_addr(0), false, 0));
            }
            other => panic!("A read B's IOVA: {other:?}"),
        }
        let f = watch
            .next_from(Some(d.pci.address()), super::HANG)
            .expect("IOMMU fault record");
        assert_eq!(f.pasid, Some(ca.pasid()), "{f:?}");
        assert_eq!(f.address, b_src.dev_addr(0) & !0xfff, "{f:?}");
        assert!(!f.write);
        assert!(crate::iommu::fault_count_pasid(d.pci.address(), ca.pasid()) > faults);
        assert_eq!(a_dst.bytes(), a_src.bytes(), "A's destination unchanged");
        // Nor can A write into B.
        let r = sa.run(&Work::fill(b_dst.dev_addr(0), 4096, 0));
        assert!(
            matches!(r, Err(OpError::PageFault(PageFault { write: true, .. }))),
            "{r:?}"
        );
        assert_eq!(b_dst.bytes(), b_src.bytes(), "B's memory unchanged");
        drop((sa, sb));
        Outcome::Pass
    }
);

ktest!(
    fn same_iova_in_two_pasids_reaches_different_memory() -> Outcome {
        // Issue 4: one IOVA, two address spaces, PASID-tagged DSA DMA sees each space's page.
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if !crate::iommu::is_enabled() {
            return ktest::skip("needs the IOMMU");
        }
        const IOVA: u64 = 0x4000_0000;
        let (ca, mut sa) = client(d);
        let (cb, mut sb) = client(d);
        let mut fa = crate::mm::alloc_frames(4096, 4096).unwrap();
        let mut fb = crate::mm::alloc_frames(4096, 4096).unwrap();
        fa.as_mut_slice().fill(0xAA);
        fb.as_mut_slice().fill(0xBB);
        ca.map(IOVA, fa.addr(), 4096).unwrap();
        cb.map(IOVA, fb.addr(), 4096).unwrap();
        let da = DmaBuffer::in_client(&ca, 4096, true).unwrap();
        let db = DmaBuffer::in_client(&cb, 4096, true).unwrap();
        assert_eq!(
            sa.run(&Work::memmove(IOVA, da.dev_addr(0), 4096)),
            Ok(Output::Done)
        );
        assert_eq!(
            sb.run(&Work::memmove(IOVA, db.dev_addr(0), 4096)),
            Ok(Output::Done)
        );
        assert!(
            da.bytes().iter().all(|&x| x == 0xAA),
            "PASID {} saw {:#x}",
            ca.pasid(),
            da.bytes()[0]
        );
        assert!(
            db.bytes().iter().all(|&x| x == 0xBB),
            "PASID {} saw {:#x}",
            cb.pasid(),
            db.bytes()[0]
        );
        // And writes: each fill lands in its own page.
        assert_eq!(
            sa.run(&Work::fill(IOVA, 64, 0x1111_1111_1111_1111)),
            Ok(Output::Done)
        );
        assert_eq!(fa.as_mut_slice()[0], 0x11);
        assert_eq!(fb.as_mut_slice()[0], 0xBB);
        drop((sa, sb));
        ca.unmap(IOVA, 4096).unwrap();
        cb.unmap(IOVA, 4096).unwrap();
        Outcome::Pass
    }
);

ktest!(
    fn page_fault_partial_completion_is_resumed_to_the_right_result() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if !crate::iommu::is_enabled() {
            return ktest::skip("needs the IOMMU");
        }
        let (c, mut s) = client(d);
        let mut src = DmaBuffer::in_client(&c, 16384, true).unwrap();
        let mut dst = DmaBuffer::in_client(&c, 16384, true).unwrap();
        let data = pattern(16384, 0x5C);
        src.bytes_mut().copy_from_slice(&data);
        dst.bytes_mut().fill(0xEE);
        let hole = src.unmap_page(8192).unwrap();
        let mut watch = crate::iommu::watch_faults();
        let w = Work::memmove(src.dev_addr(0), dst.dev_addr(0), 16384);
        let t = s.submit(&w, Notify::Poll).unwrap();
        let r = s.wait(t, WAIT_NS);
        let Err(OpError::PageFault(pf)) = r else {
            panic!("expected a page fault, got {r:?}")
        };
        assert_eq!(
            (pf.addr, pf.write, pf.completed),
            (hole, false, 8192),
            "{pf:?}"
        );
        let cr = s.completion_record(t).unwrap();
        assert_eq!(
            cr.status_code(),
            dsa_spec::status::PAGE_FAULT_PARTIAL,
            "{cr:?}"
        );
        assert_eq!((cr.bytes_completed, cr.fault_addr), (8192, hole));
        // The IOMMU recorded it for this device and PASID.
        let f = watch
            .next_from(Some(d.pci.address()), super::HANG)
            .expect("fault record");
        assert_eq!(
            (f.pasid, f.address, f.write),
            (Some(c.pasid()), hole, false),
            "{f:?}"
        );
        // Partial: the first 8 KiB arrived, the rest not.
        assert_eq!(&dst.bytes()[..8192], &data[..8192]);
        assert!(dst.bytes()[8192..].iter().all(|&x| x == 0xEE));
        // Fix the mapping and resume from the bytes already done.
        src.map_page(8192).unwrap();
        let res = pf.resume.expect("resumable");
        assert_eq!(res.done(), 8192);
        let t = s.resume(&res, Notify::Poll).unwrap();
        assert_eq!(s.wait(t, WAIT_NS), Ok(Output::Done));
        assert_eq!(dst.bytes(), &data[..]);
        drop(s);
        Outcome::Pass
    }
);

/// One operation of [`faults_on_each_operand_are_resumed`]: the work over buffers of the
/// test, its operands as (buffer, offset, length, written), its output regions, and what
/// the CPU reference (`bench::reference`) says they and the output must be.
struct FaultCase {
    name: &'static str,
    work: Work,
    operands: Vec<(usize, usize, usize, bool)>,
    outputs: Vec<(usize, usize, usize)>,
    cpu: (Vec<Vec<u8>>, Output),
}

const CASE_BUF: usize = 16384;

ktest!(
    fn faults_on_each_operand_are_resumed() -> Outcome {
        // Issue 15: memmove, dualcast and DIF insert in a client PASID, each page of each
        // operand (source, both dualcast destinations, the DIF destination) absent in turn
        // in the IOMMU; the partial completion is resumed by the driver and the result must
        // equal a run without faults.
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if !crate::iommu::is_enabled() {
            return ktest::skip("needs the IOMMU");
        }
        let (c, mut s) = client(d);
        // 0: source, 1..=3: destinations; page-aligned IOVAs, so equal offsets give the
        // dualcast destinations equal address bits 11:0.
        let mut bufs: Vec<DmaBuffer> = (0..4)
            .map(|_| DmaBuffer::in_client(&c, CASE_BUF, true).unwrap())
            .collect();
        let data = pattern(CASE_BUF, 0x15);
        let at = |b: &[DmaBuffer], i: usize, off: usize| b[i].dev_addr(off);
        let len = 0x2A00usize;
        let blocks = 20usize;
        let dif = dsa::DifFormat::new(dsa_spec::dif::DifBlockSize::B512);
        let tags = dsa::DifDest {
            ref_tag: 0xABB0,
            app_tag: 0x1234,
            ..Default::default()
        };
        let copied = data[0x100..0x100 + len].to_vec();
        let inserted = bench::reference::dif_insert(&data[0x40..0x40 + blocks * 512], &dif, &tags);
        let cases = [
            FaultCase {
                name: "memmove",
                work: Work::memmove(at(&bufs, 0, 0x100), at(&bufs, 1, 0x700), len as u32),
                operands: alloc::vec![(0, 0x100, len, false), (1, 0x700, len, true)],
                outputs: alloc::vec![(1, 0x700, len)],
                cpu: (alloc::vec![copied.clone()], Output::Done),
            },
            FaultCase {
                name: "dualcast",
                work: Work::dualcast(
                    at(&bufs, 0, 0x100),
                    at(&bufs, 1, 0x600),
                    at(&bufs, 2, 0x600),
                    len as u32,
                ),
                operands: alloc::vec![
                    (0, 0x100, len, false),
                    (1, 0x600, len, true),
                    (2, 0x600, len, true)
                ],
                outputs: alloc::vec![(1, 0x600, len), (2, 0x600, len)],
                cpu: (alloc::vec![copied.clone(), copied], Output::Done),
            },
            FaultCase {
                name: "dif insert",
                work: Work::dif_insert(
                    at(&bufs, 0, 0x40),
                    at(&bufs, 3, 0x300),
                    (blocks * 512) as u32,
                    dif,
                    tags,
                ),
                operands: alloc::vec![
                    (0, 0x40, blocks * 512, false),
                    (3, 0x300, blocks * 520, true)
                ],
                outputs: alloc::vec![(3, 0x300, blocks * 520)],
                cpu: (
                    alloc::vec![inserted.out],
                    Output::Dif {
                        source: None,
                        dest: Some(inserted.dest),
                    },
                ),
            },
        ];
        let reset = |bufs: &mut [DmaBuffer]| {
            bufs[0].bytes_mut().copy_from_slice(&data);
            for b in &mut bufs[1..] {
                b.bytes_mut().fill(0xEE);
            }
        };
        let snapshot = |bufs: &[DmaBuffer], outs: &[(usize, usize, usize)]| -> Vec<Vec<u8>> {
            outs.iter()
                .map(|&(i, off, n)| bufs[i].bytes()[off..off + n].to_vec())
                .collect()
        };
        let mut resumed = 0;
        let mut wrong: Vec<alloc::string::String> = Vec::new();
        let first_diff = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
        for case in &cases {
            // The reference: the same work with every page present.
            reset(&mut bufs);
            let want_out = s
                .run(&case.work)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let want = snapshot(&bufs, &case.outputs);
            // The run without faults is the reference only because it is the CPU's result.
            assert!(
                want == case.cpu.0 && want_out == case.cpu.1,
                "{}: the run without faults differs from the CPU reference ({want_out:?}, want {:?})",
                case.name,
                case.cpu.1
            );
            for (k, &(buf, off, n, write)) in case.operands.iter().enumerate() {
                let mut page = off & !0xFFF;
                while page < off + n {
                    let what = alloc::format!("{} operand {k} page {page:#x}", case.name);
                    reset(&mut bufs);
                    let hole = bufs[buf].unmap_page(page).unwrap();
                    let mut watch = crate::iommu::watch_faults();
                    let t = s.submit(&case.work, Notify::Poll).unwrap();
                    let r = s.wait(t, WAIT_NS);
                    let Err(OpError::PageFault(pf)) = r else {
                        panic!("{what}: expected a page fault, got {r:?}")
                    };
                    assert!(
                        pf.addr >= hole && pf.addr < hole + 4096 && pf.write == write,
                        "{what}: fault {pf:?}, absent page {hole:#x}"
                    );
                    let f = watch
                        .next_from(Some(d.pci.address()), super::HANG)
                        .expect("IOMMU fault record");
                    assert_eq!(
                        (f.pasid, f.address, f.write),
                        (Some(c.pasid()), hole, write),
                        "{what}: {f:?}"
                    );
                    if case.name == "dualcast" {
                        // Bytes completed are in both destinations.
                        let done = pf.completed as usize;
                        for &(i, o, _) in &case.outputs {
                            if let Some(x) = first_diff(
                                &bufs[i].bytes()[o..o + done],
                                &data[0x100..0x100 + done],
                            ) {
                                wrong.push(alloc::format!(
                                    "{what}: byte {x:#x} of {done:#x} completed missing in buffer {i}"
                                ));
                            }
                        }
                    }
                    bufs[buf].map_page(page).unwrap();
                    let res = pf.resume.expect("resumable");
                    let t = s.resume(&res, Notify::Poll).unwrap();
                    let out = s.wait(t, WAIT_NS);
                    if out.as_ref() != Ok(&want_out) {
                        wrong.push(alloc::format!("{what}: {out:?}, want {want_out:?}"));
                    }
                    for (j, (got, w)) in
                        snapshot(&bufs, &case.outputs).iter().zip(&want).enumerate()
                    {
                        if let Some(x) = first_diff(got, w) {
                            wrong.push(alloc::format!(
                                "{what}: output {j} differs from the run without faults at byte {x:#x}"
                            ));
                        }
                    }
                    resumed += 1;
                    page += 4096;
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} problem(s): {}",
            wrong.len(),
            wrong.join("; ")
        );
        // 3 + 4 pages (memmove), 3 × 3 (dualcast), 3 + 3 (DIF insert).
        assert_eq!(resumed, 22);
        drop(s);
        Outcome::Pass
    }
);

ktest!(
    fn full_shared_wq_is_retried_and_dedicated_credits_hold() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let inj = match Injector::of(d) {
            Ok(i) => i,
            Err(o) => return o,
        };
        let drv = d.driver();
        let _undo = NoDelay(&inj);
        for mode in [WqMode::Shared, WqMode::Dedicated] {
            let wq = d.wq_id(mode).unwrap();
            let size = drv.wq(wq).unwrap().size() as usize;
            let n = size + size / 2;
            // Slow completions so the queue really fills. That it did is observed (a refused
            // ENQCMDS, a wait for a credit), not assumed: a host that kept this vCPU slower
            // than the delayed device gets the round again with a 4× longer delay.
            let mut filled = false;
            for delay_us in [2_000, 8_000, 32_000, 128_000] {
                inj.delay_us(delay_us);
                let (retries, waits) = (drv.enqcmds_retries(), drv.credit_waits());
                let opts = SubmitterOptions {
                    slots: n as u16 + 1,
                    timeout_ns: WAIT_NS,
                    ..SubmitterOptions::default()
                };
                let mut s = Submitter::new(&drv, wq, d.kernel_requester(), opts).unwrap();
                let mut src = DmaBuffer::kernel(n * 64, true).unwrap();
                let dst = DmaBuffer::kernel(n * 64, true).unwrap();
                src.bytes_mut().copy_from_slice(&pattern(n * 64, 9));
                let toks: Vec<_> = (0..n)
                    .map(|i| {
                        s.submit(
                            &Work::memmove(src.dev_addr(i * 64), dst.dev_addr(i * 64), 64),
                            Notify::Poll,
                        )
                        .unwrap_or_else(|e| panic!("{mode:?} submission {i}: {e}"))
                    })
                    .collect();
                for t in toks {
                    assert_eq!(s.wait(t, WAIT_NS), Ok(Output::Done));
                }
                assert_eq!(dst.bytes(), src.bytes());
                filled = match mode {
                    WqMode::Shared => drv.enqcmds_retries() > retries,
                    WqMode::Dedicated => drv.credit_waits() > waits,
                };
                if filled {
                    break;
                }
            }
            match mode {
                WqMode::Shared => assert!(
                    filled,
                    "{n} submissions to a {size}-entry shared WQ were never refused"
                ),
                WqMode::Dedicated => {
                    assert!(filled, "dedicated WQ never full");
                    assert_eq!(drv.wq(wq).unwrap().credits_peak() as usize, size);
                    assert_eq!(drv.swerr_count(dsa_spec::regs::swerr_code::DWQ_FULL), 0);
                }
            }
        }
        Outcome::Pass
    }
);

ktest!(
    fn forced_swerr_is_decoded_and_a_halt_is_recovered() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let inj = match Injector::of(d) {
            Ok(i) => i,
            Err(o) => return o,
        };
        let drv = d.driver();
        // A software error: the misc interrupt decodes and counts it.
        let code = dsa_spec::status::INVALID_FLAGS;
        let n0 = drv.swerr_count(code);
        inj.write(fi::FI_FORCE_SWERR, code as u32);
        crate::time::wait_until(super::HANG, || (drv.swerr_count(code) > n0).then_some(()))
            .expect("SWERR seen by the misc interrupt");
        assert_eq!(drv.last_swerr().map(|e| e.code), Some(code));
        let misc = &d.routes()[0];
        assert!(crate::irq::count(misc.cpu, misc.vector) > 0);
        // A halt with descriptors in flight: recovery resets and reconfigures the device;
        // every in-flight operation completes or fails back as Aborted, none is lost. That
        // the halt hit work in flight is observed (an Aborted operation); a host that let
        // every delayed operation finish before the halt gets the round again with a 4×
        // longer delay.
        let _undo = NoDelay(&inj);
        let mut src = DmaBuffer::kernel(8 * 1024, true).unwrap();
        let dst = DmaBuffer::kernel(8 * 1024, true).unwrap();
        src.bytes_mut().copy_from_slice(&pattern(8192, 4));
        let mut aborted = 0;
        for delay_us in [20_000, 80_000, 320_000] {
            inj.delay_us(delay_us);
            let recoveries = drv.recovery_count();
            let mut s = kernel_submitter(d, WqMode::Dedicated);
            let toks: Vec<_> = (0..8)
                .map(|k| {
                    s.submit(
                        &Work::memmove(src.dev_addr(k * 1024), dst.dev_addr(k * 1024), 1024),
                        Notify::Poll,
                    )
                    .unwrap()
                })
                .collect();
            // Halt as on a fatal hardware write error (logged with SWERR code 0x21).
            inj.write(fi::FI_FORCE_HALT, dsa_spec::status::HW_WRITE_ERROR as u32);
            let mut done = 0;
            aborted = 0;
            for t in toks {
                match s.wait(t, WAIT_NS) {
                    Ok(Output::Done) => done += 1,
                    Err(OpError::Aborted) => aborted += 1,
                    other => panic!("in-flight operation after a halt: {other:?}"),
                }
            }
            assert_eq!(done + aborted, 8);
            crate::time::wait_until(super::HANG, || {
                (drv.state() == dsa::RunState::Running).then_some(())
            })
            .expect("device running again");
            assert!(drv.recovery_count() > recoveries);
            drop(s);
            if aborted > 0 {
                break;
            }
        }
        assert!(aborted > 0, "the halt hit no descriptor in flight");
        assert!(drv.halt_count() > 0);
        assert!(
            drv.swerr_count(dsa_spec::status::HW_WRITE_ERROR) > 0,
            "halt's SWERR decoded"
        );
        inj.delay_us(0);
        // Works again, on both queues.
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let mut s2 = kernel_submitter(d, mode);
            let w = Work::memmove(src.dev_addr(0), dst.dev_addr(0), 8192);
            assert_eq!(s2.run(&w), Ok(Output::Done), "{mode:?} after recovery");
        }
        assert_eq!(dst.bytes(), src.bytes());
        Outcome::Pass
    }
);

ktest!(
    fn drain_and_abort_of_wqs_and_pasids() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let inj = match Injector::of(d) {
            Ok(i) => i,
            Err(o) => return o,
        };
        let drv = d.driver();
        let _undo = NoDelay(&inj);
        inj.delay_us(5000);
        let wq = d.wq_id(WqMode::Shared).unwrap();
        let mut s = kernel_submitter(d, WqMode::Shared);
        let toks: Vec<_> = (0..6)
            .map(|_| s.submit(&Work::noop(), Notify::Poll).unwrap())
            .collect();
        // Drain WQ: returns when all six are done.
        drv.drain_wq(wq).unwrap();
        for t in toks {
            assert_eq!(
                s.poll(t),
                Some(Ok(Output::Done)),
                "drained operation not complete"
            );
        }
        // Abort PASID: queued operations are dropped and fail back as Aborted. That some
        // were still queued is observed; a host that let all twelve finish before the abort
        // gets the round again with a 4× longer delay.
        let kp = d.kernel_requester().space.pasid();
        let mut aborted = 0;
        for delay_us in [5_000, 20_000, 80_000, 320_000] {
            inj.delay_us(delay_us);
            let toks: Vec<_> = (0..12)
                .map(|_| s.submit(&Work::noop(), Notify::Poll).unwrap())
                .collect();
            match kp {
                Some(p) => drv.abort_pasid(p).unwrap(),
                None => drv.abort_wq(wq).unwrap(),
            }
            for t in toks {
                match s.wait(t, WAIT_NS) {
                    Ok(Output::Done) => {}
                    Err(OpError::Aborted) => aborted += 1,
                    other => panic!("after abort: {other:?}"),
                }
            }
            if aborted > 0 {
                break;
            }
        }
        assert!(aborted > 0, "abort dropped nothing");
        inj.delay_us(0);
        if let Some(p) = kp {
            drv.drain_pasid(p).unwrap();
        }
        assert_eq!(
            s.run(&Work::noop()),
            Ok(Output::Done),
            "usable after the abort"
        );
        Outcome::Pass
    }
);

ktest!(
    fn two_devices_work_in_parallel() -> Outcome {
        let devs = match devices() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if devs.len() < 2 {
            return ktest::skip("needs two DSA devices (DSA=2)");
        }
        if percpu::cpu_count() < 2 {
            return ktest::skip("needs two CPUs");
        }
        let before: Vec<u64> = devs
            .iter()
            .map(|d| d.driver().wq(0).map_or(0, |w| w.credits_peak() as u64))
            .collect();
        let specs = WorkloadSpec::parse(
            "memmove,crc:size=16k:mode=dwq:batch=1,8:cpus=0,1:devices=0,1:iters=32",
        )
        .unwrap();
        let (sum, results) = crate::workload::run(&specs).unwrap();
        assert_eq!(sum.failed, 0);
        assert_eq!(results.len(), 4);
        for r in &results {
            assert!(r.skipped.is_none(), "{:?}", r.skipped);
            assert_eq!(
                (r.devices, r.ops, r.errors, r.verify_failures),
                (2, 64, 0, 0)
            );
        }
        // Each device's dedicated WQ carried work.
        for (d, b) in devs.iter().zip(before) {
            let w = d.driver();
            let id = d.wq_id(WqMode::Dedicated).unwrap();
            assert!(
                w.wq(id).unwrap().credits_peak() as u64 >= b.max(1),
                "dsa{} idle",
                d.index
            );
        }
        // And concurrently from two CPUs on different devices with interrupts.
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c2 = counts.clone();
        let h = smp::spawn_on(1, move || {
            one_device_burst(&crate::dsa::devices()[1], &c2[1])
        })
        .unwrap();
        one_device_burst(&devs[0], &counts[0]);
        h.join(super::HANG).unwrap();
        assert_eq!(counts[0].load(Ordering::Relaxed), 16);
        assert_eq!(counts[1].load(Ordering::Relaxed), 16);
        Outcome::Pass
    }
);

fn one_device_burst(d: &DsaDevice, count: &AtomicU64) {
    let mut s = kernel_submitter(d, WqMode::Dedicated);
    let mut src = DmaBuffer::kernel(16 * 4096, true).unwrap();
    let dst = DmaBuffer::kernel(16 * 4096, true).unwrap();
    src.bytes_mut()
        .copy_from_slice(&pattern(16 * 4096, d.index as u8));
    let toks: Vec<_> = (0..16)
        .map(|k| {
            s.submit(
                &Work::memmove(src.dev_addr(k * 4096), dst.dev_addr(k * 4096), 4096),
                Notify::Msix,
            )
            .unwrap()
        })
        .collect();
    for t in toks {
        assert_eq!(s.wait(t, WAIT_NS), Ok(Output::Done));
        count.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(dst.bytes(), src.bytes());
}

ktest!(
    fn fw_cfg_directory_is_readable_under_qemu() -> Outcome {
        if !crate::fw_cfg::present() {
            return ktest::skip("no QEMU fw_cfg");
        }
        let files = crate::fw_cfg::files().expect("directory");
        assert!(!files.is_empty());
        let tables = files
            .iter()
            .find(|f| f.name == "etc/acpi/tables")
            .expect("etc/acpi/tables");
        assert!(tables.size > 36, "{tables:?}");
        let data = crate::fw_cfg::read_file("etc/acpi/tables", 1 << 20).unwrap();
        assert_eq!(data.len(), tables.size as usize);
        assert!(matches!(
            crate::fw_cfg::read_file("opt/none/such", 16),
            Err(crate::fw_cfg::FwCfgError::NoSuchFile(_))
        ));
        assert!(matches!(
            crate::fw_cfg::read_file("etc/acpi/tables", 16),
            Err(crate::fw_cfg::FwCfgError::TooLarge { .. })
        ));
        // Directory entries decode big-endian fields and stop at the NUL.
        let mut e = [0u8; 64];
        e[..4].copy_from_slice(&1234u32.to_be_bytes());
        e[4..6].copy_from_slice(&0x21u16.to_be_bytes());
        e[8..8 + 9].copy_from_slice(b"opt/x.txt");
        let d = crate::fw_cfg::parse_dir(1, &e);
        assert_eq!(
            (d[0].name.as_str(), d[0].size, d[0].select),
            ("opt/x.txt", 1234, 0x21)
        );
        Outcome::Pass
    }
);

ktest!(
    fn accel_config_reconfigures_a_device_and_invalid_ones_are_rejected() -> Outcome {
        let d = match device_with_both() {
            Ok(d) => d,
            Err(o) => return o,
        };
        // accel-config's own format (as `accel-config save-config` writes it), compact.
        let json = alloc::format!(
            r#"[{{"dev":"dsa{n}","groups":[{{"dev":"group{n}.0","grouped_workqueues":[{{"dev":"wq{n}.0","mode":"dedicated","size":16,"group_id":0,"priority":5,"max_batch_size":8,"max_transfer_size":65536,"type":"kernel","name":"ded"}},{{"dev":"wq{n}.1","mode":"shared","size":4,"group_id":0,"priority":9,"max_batch_size":8,"max_transfer_size":65536,"type":"kernel","name":"sh","threshold":4}}],"grouped_engines":[{{"dev":"engine{n}.0","group_id":0}},{{"dev":"engine{n}.1","group_id":0}}]}}]}}]"#,
            n = d.index
        );
        let cfg = dsa::AccelConfig::parse(&json).expect("valid accel-config");
        let drv = d
            .reconfigure(dsa::ConfigSource::AccelConfig(cfg), d.default_options())
            .unwrap_or_else(|e| panic!("reconfigure: {e}"));
        let sizes: Vec<(u8, WqMode, u16, u8)> = drv
            .wqs()
            .map(|w| (w.id(), w.mode(), w.size(), w.config.priority))
            .collect();
        assert_eq!(
            sizes,
            [(0, WqMode::Dedicated, 16, 5), (1, WqMode::Shared, 4, 9)]
        );
        assert_eq!(drv.wq(1).unwrap().config.name, "sh");
        for mode in [WqMode::Dedicated, WqMode::Shared] {
            let mut s = kernel_submitter(d, mode);
            let mut a = DmaBuffer::kernel(4096, true).unwrap();
            let b = DmaBuffer::kernel(4096, true).unwrap();
            a.bytes_mut().copy_from_slice(&pattern(4096, 0x33));
            assert_eq!(
                s.run(&Work::memmove(a.dev_addr(0), b.dev_addr(0), 4096)),
                Ok(Output::Done)
            );
            assert_eq!(a.bytes(), b.bytes());
            // The WQ's limit holds: 128 KiB is over its 64 KiB maximum transfer.
            let r = s.submit(
                &Work::memmove(a.dev_addr(0), b.dev_addr(0), 128 * 1024),
                Notify::Poll,
            );
            assert!(
                matches!(
                    r,
                    Err(OpError::Invalid(dsa::ValidationError::TooLarge { .. }))
                ),
                "{r:?}"
            );
        }
        // Rejected with the reason: unknown keys, and a WQ larger than the device.
        let bad = dsa::AccelConfig::parse(r#"[{"dev":"dsa0","colour":"red"}]"#).unwrap_err();
        assert!(bad.to_string().contains("colour"), "{bad}");
        let big = json.replace(r#""size":16"#, r#""size":200"#);
        let e = d
            .reconfigure(
                dsa::ConfigSource::AccelConfig(dsa::AccelConfig::parse(&big).unwrap()),
                d.default_options(),
            )
            .expect_err("WQ sizes over the device total");
        log::info!("rejected as expected: {e}");
        assert!(e.to_string().contains("configuration rejected"), "{e}");
        // Back to what the kernel was booted with.
        let (orig, _) = crate::dsa::config::load().unwrap();
        let src = match orig {
            Some(a) => dsa::ConfigSource::AccelConfig(a),
            None => dsa::ConfigSource::Default,
        };
        let drv = d.reconfigure(src, d.default_options()).unwrap();
        assert!(drv.wq_of_mode(WqMode::Shared).is_some());
        let mut s = kernel_submitter(d, WqMode::Shared);
        assert_eq!(s.run(&Work::noop()), Ok(Output::Done));
        Outcome::Pass
    }
);
