//! Page faults and resume, forced SWERRs and error statuses, halt recovery with operations
//! in flight, abort, timeouts.

use crate::common::*;
use crate::ops::on_both;
use bench::reference as cpu;
use dsa::ops::CrcSeed;
use dsa::{
    AddressSpace, Device, DifDest, DifFormat, DifSource, Notify, OpError, Output, PageFault,
    Requester, RunState, Submitter, Work,
};
use dsa_model::fault_inject as fi;
use dsa_spec::crc::CrcMode;
use dsa_spec::dif::DifBlockSize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Runs `w`, expects a fault at `page` of `buf` (the one unmapped), maps it, resumes.
fn fault_and_resume(
    s: &mut Submitter,
    p: &Arc<SimPlatform>,
    buf: &TestBuffer,
    page: usize,
    w: Work,
    write: bool,
) -> (Output, u64) {
    let at = buf.at(page * 4096);
    p.set_mapped(buf.space, at, 4096, false);
    let e = s.run(&w).unwrap_err();
    let OpError::PageFault(PageFault {
        addr,
        write: wr,
        completed,
        resume: Some(r),
    }) = e
    else {
        panic!("expected a resumable fault, got {e:?}")
    };
    assert_eq!(wr, write);
    assert!(
        addr >= at && addr < at + 4096,
        "fault at {addr:#x}, page at {at:#x}"
    );
    p.set_mapped(buf.space, at, 4096, true);
    let t = s.submit_resume(&r);
    (s.wait(t, WAIT).unwrap(), completed)
}

trait ResumeExt {
    fn submit_resume(&mut self, r: &dsa::Resume) -> dsa::Token;
}
impl ResumeExt for Submitter {
    fn submit_resume(&mut self, r: &dsa::Resume) -> dsa::Token {
        self.resume(r, Notify::Poll).unwrap()
    }
}

#[test]
fn page_faults_resume_to_the_right_result() {
    on_both(|s, p, sp| {
        let n = 5 * 4096;
        let src = p.buf(sp, n + 64);
        let dst = p.buf(sp, n + 64);
        let data = pattern(n + 64, 20);
        src.write(0, &data);
        // Memmove, write fault on destination page 2.
        let (out, done) = fault_and_resume(
            s,
            p,
            &dst,
            2,
            Work::memmove(src.at(0), dst.at(7), n as u32),
            true,
        );
        assert_eq!(out, Output::Done);
        assert_eq!(done, 2 * 4096 - 7);
        assert_eq!(dst.read(7, n), data[..n]);
        // Overlapping (backward) memmove with a read fault.
        let mut want = data.clone();
        cpu::memmove_within(&mut want, 0, 5000, n + 64 - 5000);
        let w = Work::memmove(src.at(0), src.at(5000), (n + 64 - 5000) as u32);
        fault_and_resume(s, p, &src, 1, w, false);
        assert_eq!(src.all(), want);
        src.write(0, &data);
        // Fill from an odd offset: the resumed pattern keeps its phase.
        let pat = 0x0102_0304_0506_0708u64;
        fault_and_resume(
            s,
            p,
            &dst,
            3,
            Work::fill(dst.at(3), (n - 3) as u32, pat),
            true,
        );
        let mut want = vec![0u8; n - 3];
        cpu::fill(&mut want, pat);
        assert_eq!(dst.read(3, n - 3), want);
        // CRC: the partial CRC seeds the remainder.
        let (out, done) = fault_and_resume(s, p, &src, 2, Work::crc(src.at(0), n as u32, 9), false);
        assert_eq!(done, 2 * 4096);
        assert_eq!(
            out,
            Output::Crc(cpu::crc32c(9, &data[..n], CrcMode::default()))
        );
        let (out, _) = fault_and_resume(
            s,
            p,
            &dst,
            4,
            Work::copy_crc(src.at(0), dst.at(0), n as u32, 0),
            true,
        );
        assert_eq!(
            out,
            Output::Crc(cpu::crc32c(0, &data[..n], CrcMode::default()))
        );
        assert_eq!(dst.read(0, n), data[..n]);
        // Compare: the mismatch offset is relative to the original start.
        dst.write(0, &data);
        dst.write(18000, &[!data[18000]]);
        let (out, _) = fault_and_resume(
            s,
            p,
            &dst,
            1,
            Work::compare(src.at(0), dst.at(0), n as u32),
            false,
        );
        assert_eq!(
            out,
            Output::Compare {
                equal: false,
                first_difference: Some(18000),
                predicate: None
            }
        );
        // Dualcast: second destination faults.
        let d2 = p.buf(sp, n + 64);
        dst.write(0, &vec![0; n + 64]);
        fault_and_resume(
            s,
            p,
            &d2,
            3,
            Work::dualcast(src.at(0), dst.at(0), d2.at(0), n as u32),
            true,
        );
        assert_eq!(dst.read(0, n), data[..n]);
        assert_eq!(d2.read(0, n), data[..n]);
        // Create Delta restarts as a whole and still produces the full record.
        let mut newer = data.clone();
        newer[100] ^= 1;
        newer[17000] ^= 1;
        dst.write(0, &newer);
        let rec = p.buf(sp, 4096);
        let (out, _) = fault_and_resume(
            s,
            p,
            &dst,
            3,
            Work::create_delta(src.at(0), dst.at(0), n as u32, rec.at(0), 800),
            false,
        );
        let want = cpu::create_delta(&data[..n], &newer[..n], 800);
        assert!(matches!(
            out,
            Output::Delta {
                record_size: 20,
                ..
            }
        ));
        assert_eq!(rec.read(0, 20), want.record);
        // DIF insert: tags continue across the resume.
        let fmt = DifFormat::new(DifBlockSize::B512);
        let dest = DifDest {
            ref_tag: 50,
            ..Default::default()
        };
        let prot = p.buf(sp, 40 * 520);
        let (out, _) = fault_and_resume(
            s,
            p,
            &prot,
            2,
            Work::dif_insert(src.at(0), prot.at(0), 40 * 512, fmt, dest),
            true,
        );
        let want = cpu::dif_insert(&data[..40 * 512], &fmt, &dest);
        assert_eq!(prot.all(), want.out);
        assert_eq!(
            out,
            Output::Dif {
                source: None,
                dest: Some(want.dest)
            }
        );
        let _ = DifSource::default();
    });
}

#[test]
fn apply_delta_record_fault_resumes() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let p = &rig.plat;
    let old = pattern(1 << 16, 30);
    let mut new = old.clone();
    for k in 0..900 {
        new[k * 72] ^= 0xFF;
    }
    let want = cpu::create_delta(&old, &new, 20000);
    assert!(want.record.len() > 8192);
    let rec = p.buf(AddressSpace::NoPasid, want.record.len());
    rec.write(0, &want.record);
    let dst = p.buf(AddressSpace::NoPasid, 1 << 16);
    dst.write(0, &old);
    let w = Work::apply_delta(rec.at(0), want.record.len() as u32, dst.at(0), 1 << 16);
    let (out, done) = fault_and_resume(&mut s, p, &rec, 1, w, false);
    assert!(done > 0 && done % 10 == 0, "{done}");
    assert_eq!(out, Output::Done);
    assert_eq!(dst.all(), new);
}

#[test]
fn unfixed_fault_is_reported_with_address_and_direction() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let src = rig.plat.buf(AddressSpace::NoPasid, 3 * 4096);
    let dst = rig.plat.buf(AddressSpace::NoPasid, 3 * 4096);
    rig.plat
        .set_mapped(AddressSpace::NoPasid, src.at(4096), 4096, false);
    let faults = Arc::new(Mutex::new(Vec::new()));
    let f2 = faults.clone();
    let r = s.run_resuming(
        &Work::memmove(src.at(0), dst.at(0), 3 * 4096),
        move |addr, write| {
            f2.lock().unwrap().push((addr, write));
            false
        },
        4,
    );
    let Err(OpError::PageFault(pf)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (pf.addr, pf.write, pf.completed),
        (src.at(4096), false, 4096)
    );
    assert_eq!(*faults.lock().unwrap(), vec![(src.at(4096), false)]);
    // With a fixer the same call finishes.
    let plat = rig.plat.clone();
    let out = s
        .run_resuming(
            &Work::memmove(src.at(0), dst.at(0), 3 * 4096),
            move |addr, _| {
                plat.set_mapped(AddressSpace::NoPasid, addr & !4095, 4096, true);
                true
            },
            4,
        )
        .unwrap();
    assert_eq!(out, Output::Done);
    assert_eq!(dst.all(), src.all());
    // A CRC seed address that faults is not resumable work but is still reported.
    rig.plat
        .set_mapped(AddressSpace::NoPasid, src.at(0), 4096, false);
    let w = Work::new(dsa::Op::CrcGen {
        src: src.at(4096),
        len: 16,
        seed: CrcSeed::Memory(src.at(8)),
        mode: CrcMode::default(),
    });
    assert!(matches!(
        s.run(&w),
        Err(OpError::PageFault(PageFault {
            write: false,
            completed: 0,
            ..
        }))
    ));
}

#[test]
fn batch_member_fault_and_resume() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let src = rig.plat.buf(AddressSpace::NoPasid, 4 * 4096);
    let dst = rig.plat.buf(AddressSpace::NoPasid, 4 * 4096);
    let data = pattern(4 * 4096, 31);
    src.write(0, &data);
    rig.plat
        .set_mapped(AddressSpace::NoPasid, dst.at(2 * 4096 + 4096), 4096, false);
    let members = [
        Work::memmove(src.at(0), dst.at(0), 8192),
        Work::memmove(src.at(8192), dst.at(8192), 8192),
    ];
    let Output::Batch(rs) = s.run_batch(&members).unwrap() else {
        panic!()
    };
    assert_eq!(rs[0], Ok(Output::Done));
    let Err(OpError::PageFault(PageFault {
        completed: 4096,
        resume: Some(r),
        ..
    })) = &rs[1]
    else {
        panic!("{:?}", rs[1])
    };
    rig.plat
        .set_mapped(AddressSpace::NoPasid, dst.at(3 * 4096), 4096, true);
    let t = s.resume(r, Notify::Poll).unwrap();
    assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
    assert_eq!(dst.all(), data);
}

#[test]
fn forced_swerr_is_decoded() {
    let (rig, dev) = up(Exec::Deterministic);
    assert!(dev.last_swerr().is_none());
    rig.inject(fi::FI_FORCE_SWERR, 0x51);
    // The misc interrupt (MSI-X 0) went through Device::handle_msix.
    assert_eq!(rig.irqs(0), 1);
    assert_eq!(dev.swerr_count(0x51), 1);
    let e = dev.last_swerr().unwrap();
    assert_eq!(e.code, 0x51);
    assert!(e.to_string().contains("PCI configuration changed"), "{e}");
    // Acknowledged in the device.
    assert_eq!(rig.model.bar0_read(0xC0, 8) & 3, 0);
    assert_eq!(rig.model.bar0_read(dsa_spec::regs::off::INTCAUSE, 4), 0);
    // A second one with overflow semantics cleared: counted separately.
    rig.inject(fi::FI_FORCE_SWERR, 0x20);
    assert_eq!(dev.swerr_count(0x20), 1);
    assert_eq!(dev.state(), RunState::Running);
}

#[test]
fn forced_error_status_is_reported() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    rig.inject(fi::FI_FORCE_STATUS, 0x20);
    rig.inject(fi::FI_FORCE_OPCODE, 0x100 | 0x10);
    rig.inject(fi::FI_FORCE_COUNT, 1);
    let b = rig.plat.buf(AddressSpace::NoPasid, 4096);
    assert_eq!(
        s.run(&Work::noop()).unwrap(),
        Output::Done,
        "filter spares other opcodes"
    );
    assert_eq!(
        s.run(&Work::crc(b.at(0), 64, 0)).unwrap_err(),
        OpError::Status { code: 0x20 }
    );
    assert!(s.run(&Work::crc(b.at(0), 64, 0)).is_ok());
}

fn halt_with_in_flight(exec: Exec) {
    // Threaded: the engine threads start only after the halt, so the late work is in
    // flight when it comes however the host schedules this thread (a completion delay
    // alone can run out before the halt on a loaded host).
    let (mut rig, dev) = match exec {
        Exec::Deterministic => up(exec),
        Exec::Threaded => up_held(),
    };
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let mut sh = Submitter::new(&dev, 1, Requester::pasid(4, true), Default::default()).unwrap();
    let src = rig.plat.buf(AddressSpace::NoPasid, 65536);
    let dst = rig.plat.buf(AddressSpace::NoPasid, 65536);
    src.write(0, &pattern(65536, 40));
    // One finished before the halt (record written, not yet collected).
    let early = s
        .submit(&Work::memmove(src.at(0), dst.at(0), 4096), Notify::Poll)
        .unwrap();
    rig.model.run_until_idle();
    assert_eq!(dst.read(0, 4096), src.read(0, 4096));
    // Slow the engines down (threaded) / stop them (deterministic) and queue more work.
    rig.inject(fi::FI_DELAY_US, 2000);
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let mut late = Vec::new();
    for k in 1..12 {
        late.push(
            s.submit(
                &Work::memmove(src.at(k * 4096), dst.at(k * 4096), 4096),
                Notify::Msix,
            )
            .unwrap(),
        );
    }
    let cb_results = Arc::new(AtomicU32::new(0));
    let c2 = cb_results.clone();
    sh.submit_with_callback(&Work::noop(), Notify::Poll, move |r| {
        assert!(matches!(r, Ok(Output::Done) | Err(OpError::Aborted)));
        c2.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    rig.inject(fi::FI_FORCE_HALT, 0);
    if exec == Exec::Threaded {
        rig.start_workers();
    }
    assert_eq!(dev.state(), RunState::Halted);
    assert_eq!(dev.halt_count(), 1);
    // Submissions are refused until recovery.
    assert_eq!(
        s.submit(&Work::noop(), Notify::Poll).unwrap_err(),
        OpError::DeviceUnavailable
    );
    rig.inject(fi::FI_DELAY_US, 0);
    rig.clock.frozen.store(false, Ordering::Relaxed);
    // Waiting notices the halt and recovers; every operation is accounted for.
    assert_eq!(s.wait(early, WAIT).unwrap(), Output::Done);
    let mut aborted = 0;
    for t in late {
        match s.wait(t, WAIT) {
            Ok(Output::Done) => {}
            Err(OpError::Aborted) => aborted += 1,
            other => panic!("lost or wrong: {other:?}"),
        }
    }
    assert!(aborted > 0, "the halt dropped nothing?");
    assert_eq!(
        cb_results.load(Ordering::Relaxed),
        1,
        "callback not delivered"
    );
    assert_eq!(dev.recovery_count(), 1);
    assert_eq!(dev.state(), RunState::Running);
    assert_eq!(s.outstanding() + sh.outstanding(), 0);
    assert_eq!(dev.wq(0).unwrap().credits_in_use(), 0);
    // Reconfigured and working again, on both WQs.
    let full = pattern(65536, 41);
    src.write(0, &full);
    s.run(&Work::memmove(src.at(0), dst.at(0), 65536)).unwrap();
    assert_eq!(dst.all(), full);
    assert_eq!(sh.run(&Work::noop()).unwrap(), Output::Done);
    assert_eq!(
        dsa_spec::GenSts(rig.model.bar0_read(dsa_spec::regs::off::GENSTS, 4) as u32).state(),
        dsa_spec::DeviceState::Enabled
    );
}

#[test]
fn halt_recovered_deterministic() {
    halt_with_in_flight(Exec::Deterministic);
}

#[test]
fn halt_recovered_threaded() {
    halt_with_in_flight(Exec::Threaded);
}

#[test]
fn abort_wq_fails_queued_work_back() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let toks: Vec<_> = (0..5)
        .map(|_| s.submit(&Work::noop(), Notify::Poll).unwrap())
        .collect();
    dev.abort_wq(0).unwrap();
    rig.clock.frozen.store(false, Ordering::Relaxed);
    for t in toks {
        assert_eq!(s.wait(t, WAIT).unwrap_err(), OpError::Aborted);
    }
    assert_eq!(dev.wq(0).unwrap().credits_in_use(), 0);
    assert_eq!(s.run(&Work::noop()).unwrap(), Output::Done);
    // Abort PASID on the shared WQ likewise.
    let mut sh = Submitter::new(&dev, 1, Requester::pasid(6, true), Default::default()).unwrap();
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let t = sh.submit(&Work::noop(), Notify::Poll).unwrap();
    dev.abort_pasid(6).unwrap();
    rig.clock.frozen.store(false, Ordering::Relaxed);
    assert_eq!(sh.wait(t, WAIT).unwrap_err(), OpError::Aborted);
    // Drain WQ completes queued work.
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let t = s.submit(&Work::noop(), Notify::Poll).unwrap();
    rig.clock.frozen.store(false, Ordering::Relaxed);
    dev.drain_wq(0).unwrap();
    assert_eq!(s.outstanding(), 0);
    assert_eq!(s.poll(t), Some(Ok(Output::Done)));
    dev.drain_all().unwrap();
    dev.abort_all().unwrap();
}

#[test]
fn wait_times_out_and_token_stays_valid() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let t = s.submit(&Work::noop(), Notify::Poll).unwrap();
    assert_eq!(s.wait(t, 1_000_000).unwrap_err(), OpError::Timeout);
    rig.clock.frozen.store(false, Ordering::Relaxed);
    assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
    // Collected tokens are not valid any more.
    assert_eq!(s.poll(t), Some(Err(OpError::BadToken)));
}

/// Recovery hooks run after every successful recovery, before submissions are accepted
/// again; a hook returning `false` is dropped.
#[test]
fn recovery_hooks_run_before_submissions_resume() {
    let (rig, dev) = up(Exec::Deterministic);
    let calls = Arc::new(AtomicU32::new(0));
    let once = Arc::new(AtomicU32::new(0));
    let states = Arc::new(Mutex::new(Vec::new()));
    {
        let (calls, states) = (calls.clone(), states.clone());
        dev.add_recovery_hook(Arc::new(move |d: &dsa::Device| {
            calls.fetch_add(1, Ordering::Relaxed);
            states.lock().unwrap().push(d.state());
            true
        }));
    }
    {
        let once = once.clone();
        dev.add_recovery_hook(Arc::new(move |_: &dsa::Device| {
            once.fetch_add(1, Ordering::Relaxed);
            false
        }));
    }
    // A healthy device: recover() is a no-op and runs no hook.
    assert_eq!(dev.recover(), Ok(false));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    for round in 1..=2 {
        rig.inject(fi::FI_FORCE_HALT, 0);
        assert_eq!(dev.state(), RunState::Halted);
        assert_eq!(dev.recover(), Ok(true));
        assert_eq!(calls.load(Ordering::Relaxed), round);
        assert_eq!(dev.state(), RunState::Running);
    }
    assert_eq!(
        once.load(Ordering::Relaxed),
        1,
        "dropped after returning false"
    );
    assert!(
        states
            .lock()
            .unwrap()
            .iter()
            .all(|s| *s != RunState::Running),
        "hooks run before submissions are accepted again: {:?}",
        states.lock().unwrap()
    );
}

/// The driver up (deterministic) with a kernel submitter on WQ 0 that has one slot, so every
/// submission reuses its completion record, its rarely used data and its batch list; a
/// source of `len` pattern bytes (`seed`) and a zeroed destination.
fn one_slot(len: usize, seed: u32) -> (Rig, Arc<Device>, Submitter, TestBuffer, TestBuffer) {
    let (rig, dev) = up(Exec::Deterministic);
    let opts = dsa::SubmitterOptions {
        slots: 1,
        ..Default::default()
    };
    let s = Submitter::new(&dev, 0, Requester::kernel(), opts).unwrap();
    assert_eq!(s.capacity(), 1);
    let src = rig.plat.buf(AddressSpace::NoPasid, len);
    let dst = rig.plat.buf(AddressSpace::NoPasid, len);
    src.write(0, &pattern(len, seed));
    (rig, dev, s, src, dst)
}

#[test]
fn a_slot_reused_after_a_resumed_operation_decodes_its_own_operation() {
    // One slot: every submission reuses it. A resumed operation leaves its original in the
    // slot's rarely used data; a later batch and then a single operation in the same slot
    // must decode against their own descriptors (a stale original once made the single
    // decode as the resumed memmove's continuation).
    let (rig, _dev, mut s, src, dst) = one_slot(3 * 4096, 5);
    rig.plat
        .set_mapped(AddressSpace::NoPasid, src.at(4096), 4096, false);
    let plat = rig.plat.clone();
    let out = s
        .run_resuming(
            &Work::memmove(src.at(0), dst.at(0), 3 * 4096),
            move |addr, _| {
                plat.set_mapped(AddressSpace::NoPasid, addr & !4095, 4096, true);
                true
            },
            4,
        )
        .unwrap();
    assert_eq!(out, Output::Done);
    let batch = [
        Work::memmove(src.at(0), dst.at(0), 64),
        Work::memmove(src.at(64), dst.at(64), 64),
    ];
    assert!(matches!(s.run_batch(&batch), Ok(Output::Batch(_))));
    // A Compare whose first difference is at byte 100: decoded against a stale original it
    // would report 4096 + 100 (the resumed memmove's bytes done).
    dst.write(0, &src.read(0, 512));
    dst.write(100, &[!src.read(100, 1)[0]]);
    let r = s.run(&Work::compare(src.at(0), dst.at(0), 512)).unwrap();
    assert!(
        matches!(
            r,
            Output::Compare {
                equal: false,
                first_difference: Some(100),
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn a_batch_list_reused_after_a_member_with_high_words_holds_zero_reserved_fields() {
    // One slot: every batch reuses its list. A memmove member writes words 0–4 of its list
    // entry only (words 5–7 are kept zero); a CRC member writes its seed into word 5, so
    // the list must be zeroed again before the next batch, or the memmove that takes that
    // entry next carries a non-zero reserved field (the model refuses it).
    let (_rig, _dev, mut s, src, dst) = one_slot(8192, 9);
    let first = [
        Work::crc(src.at(0), 64, 0xFFFF_FFFF),
        Work::copy_crc(src.at(64), dst.at(64), 64, 0x1234_5678),
        Work::memmove(src.at(128), dst.at(128), 64),
    ];
    let Output::Batch(r) = s.run_batch(&first).unwrap() else {
        panic!("not a batch result");
    };
    assert!(r.iter().all(|m| m.is_ok()), "{r:?}");
    for round in 0..2 {
        let batch = [
            Work::memmove(src.at(0), dst.at(0), 4096),
            Work::memmove(src.at(4096), dst.at(4096), 4096),
            Work::memmove(src.at(256), dst.at(256), 64),
        ];
        let Output::Batch(r) = s.run_batch(&batch).unwrap() else {
            panic!("not a batch result");
        };
        assert!(
            r.iter().all(|m| *m == Ok(Output::Done)),
            "round {round}: {r:?}"
        );
    }
    assert_eq!(dst.all(), src.all());
}
