//! Batches and fences, interrupt-driven completion (MSI-X, caller-supplied IMS handles,
//! requested handles), PASID isolation, shared-WQ retry, dedicated-WQ credits.

use crate::common::*;
use crate::ops::{PASID, on_both};
use dsa::{
    AddressSpace, ConfigSource, DeviceOptions, Notify, OpError, Output, Requester, Submitter,
    SubmitterOptions, Work,
};
use dsa_model::Config;
use dsa_spec::regs::swerr_code;
use dsa_spec::tables::ImsCtrl;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[test]
fn batch_of_32_and_fence_after_a_failed_predicate() {
    on_both(|s, p, sp| {
        let src = p.buf(sp, 32 * 1024);
        let dst = p.buf(sp, 32 * 1024);
        let data = pattern(32 * 1024, 9);
        src.write(0, &data);
        let members: Vec<Work> = (0..32)
            .map(|k| Work::memmove(src.at(k * 1024), dst.at(k * 1024), 1024))
            .collect();
        let Output::Batch(rs) = s.run_batch(&members).unwrap() else {
            panic!("not a batch result")
        };
        assert_eq!(rs.len(), 32);
        assert!(rs.iter().all(|r| *r == Ok(Output::Done)));
        assert_eq!(dst.all(), data);

        // [copy, compare expecting equal (it is not) , fenced fill, fill]: the fence
        // abandons everything from the fenced member on.
        let other = p.buf(sp, 4096);
        let mut cmp = Work::compare(src.at(0), other.at(0), 4096);
        cmp.op = dsa::Op::Compare {
            src1: src.at(0),
            src2: other.at(0),
            len: 4096,
            expect_equal: Some(true),
        };
        let before = dst.read(0, 4096);
        let batch = [
            Work::memmove(src.at(4096), other.at(0), 16),
            cmp,
            Work::fill(dst.at(0), 4096, 0).with_fence(),
            Work::fill(dst.at(0), 16, 0),
        ];
        let Output::Batch(rs) = s.run_batch(&batch).unwrap() else {
            panic!()
        };
        assert_eq!(rs[0], Ok(Output::Done));
        assert!(matches!(
            rs[1],
            Ok(Output::Compare {
                equal: false,
                predicate: Some(false),
                ..
            })
        ));
        assert_eq!(rs[2], Err(OpError::Abandoned));
        assert_eq!(rs[3], Err(OpError::Abandoned));
        assert_eq!(dst.read(0, 4096), before, "abandoned members wrote nothing");
    });
}

#[test]
fn msix_completion_through_the_interrupt_entry_point() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let src = rig.plat.buf(AddressSpace::NoPasid, 4096);
    let dst = rig.plat.buf(AddressSpace::NoPasid, 4096);
    src.write(0, &pattern(4096, 10));
    let got = Arc::new(Mutex::new(Vec::new()));
    for k in 0..4 {
        let g = got.clone();
        s.submit_with_callback(
            &Work::memmove(src.at(k * 1024), dst.at(k * 1024), 1024),
            Notify::Msix,
            move |r| g.lock().unwrap().push((k, r)),
        )
        .unwrap();
    }
    assert_eq!(s.outstanding(), 4);
    // The device runs (not the driver's poll loop): completions arrive only through the
    // model's MSI-X message to entry 1 → Device::handle_msix → reap → callbacks.
    rig.model.run_until_idle();
    assert_eq!(rig.irqs(1), 4);
    let mut r = std::mem::take(&mut *got.lock().unwrap());
    r.sort_by_key(|x| x.0);
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|(_, x)| *x == Ok(Output::Done)));
    assert_eq!(s.outstanding(), 0);
    assert_eq!(dst.all(), src.all());
    // Without dispatch a polled submission's result waits for its poll (the interrupt
    // delivers nothing; the device finished it, so it no longer counts as outstanding).
    rig.plat.dispatch.store(false, Ordering::Relaxed);
    let t = s.submit(&Work::noop(), Notify::Msix).unwrap();
    rig.model.run_until_idle();
    assert_eq!(rig.irqs(1), 5);
    assert_eq!(s.outstanding(), 0);
    assert!(s.completion_record(t).is_none(), "not collected yet");
    assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
}

#[test]
fn batch_result_delivered_to_a_callback_by_the_interrupt() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let src = rig.plat.buf(AddressSpace::NoPasid, 8192);
    let dst = rig.plat.buf(AddressSpace::NoPasid, 8192);
    src.write(0, &pattern(8192, 11));
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let members: Vec<Work> = (0..8)
        .map(|k| Work::memmove(src.at(k * 1024), dst.at(k * 1024), 1024))
        .collect();
    s.submit_batch_with_callback(&members, Notify::Msix, move |r| {
        *g.lock().unwrap() = Some(r);
    })
    .unwrap();
    assert!(got.lock().unwrap().is_none());
    rig.model.run_until_idle();
    assert_eq!(rig.irqs(1), 1, "one interrupt for the batch");
    let r = got
        .lock()
        .unwrap()
        .take()
        .expect("callback ran from the interrupt");
    let Ok(Output::Batch(rs)) = r else {
        panic!("not a batch result: {r:?}")
    };
    assert_eq!(rs.len(), 8);
    assert!(rs.iter().all(|x| *x == Ok(Output::Done)));
    assert_eq!(dst.all(), src.all());
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn msix_on_shared_wq_is_bound_to_the_kernel_pasid() {
    let rig = Rig::new(model_cfg(), Exec::Threaded, ALL_PCI);
    let opts = DeviceOptions {
        kernel_pasid: Some(7),
        ..Default::default()
    };
    let dev = rig.driver(0, ConfigSource::Default, opts).unwrap();
    // Dedicated WQ runs in the kernel PASID; its interrupt works.
    let mut k = Submitter::new(&dev, 0, Requester::pasid(7, true), Default::default()).unwrap();
    assert!(Submitter::new(&dev, 0, Requester::kernel(), Default::default()).is_err());
    let t = k.submit(&Work::noop(), Notify::Msix).unwrap();
    assert_eq!(k.wait(t, WAIT).unwrap(), Output::Done);
    // Shared WQ: the kernel PASID may use MSI-X, another PASID may not (MSIXPERM).
    let mut ks = Submitter::new(&dev, 1, Requester::pasid(7, true), Default::default()).unwrap();
    let t = ks.submit(&Work::noop(), Notify::Msix).unwrap();
    assert_eq!(ks.wait(t, WAIT).unwrap(), Output::Done);
    let mut other =
        Submitter::new(&dev, 1, Requester::pasid(9, false), Default::default()).unwrap();
    assert!(matches!(
        other.submit(&Work::noop(), Notify::Msix),
        Err(OpError::InterruptUnavailable(_))
    ));
    // An unprivileged client still runs (polling).
    assert_eq!(other.run(&Work::noop()).unwrap(), Output::Done);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rig.irqs(1) < 1 || rig.irqs(2) < 1 {
        assert!(std::time::Instant::now() < deadline, "interrupts missing");
        std::thread::yield_now();
    }
}

#[test]
fn caller_supplied_ims_handle() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    // Program IMS entry 5 as the IMS irqchip would: message 0xFEE00000 / 0x4105, unmasked.
    let ims = dev.caps().offsets.ims() + 5 * 16;
    rig.model.bar0_write(ims, 0xFEE0_0000, 8);
    rig.model.bar0_write(ims + 8, 0x4105, 4);
    rig.model
        .bar0_write(ims + 12, u64::from(ImsCtrl::empty().bits()), 4);
    let reaper = s.reaper();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    rig.plat.on_msi(move |addr, data| {
        assert_eq!((addr, data), (0xFEE0_0000, 0x4105));
        seen2.fetch_add(1, Ordering::Relaxed);
        reaper.reap();
    });
    let done = Arc::new(AtomicU32::new(0));
    let d2 = done.clone();
    s.submit_with_callback(&Work::noop(), Notify::Handle(5), move |r| {
        assert_eq!(r, Ok(Output::Done));
        d2.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    rig.model.run_until_idle();
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    assert_eq!(done.load(Ordering::Relaxed), 1);
    assert_eq!(rig.irqs(1), 0, "no MSI-X for an IMS-portal descriptor");
}

#[test]
fn requested_interrupt_handles_with_cmdcap() {
    let rig = Rig::new(
        Config {
            cmdcap: true,
            ..model_cfg()
        },
        Exec::Deterministic,
        ALL_PCI,
    );
    let dev = rig
        .driver(0, ConfigSource::Default, DeviceOptions::default())
        .unwrap();
    assert!(dev.caps().requires_int_handles());
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let t = s.submit(&Work::noop(), Notify::Msix).unwrap();
    assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
    // The model only honours handles it handed out: the interrupt arrived on entry 1.
    assert_eq!(rig.irqs(1), 1);
    dev.shutdown().unwrap();
}

#[test]
fn pasids_are_isolated() {
    let (rig, dev) = up(Exec::Threaded);
    let mut a = Submitter::new(&dev, 1, Requester::pasid(1, false), Default::default()).unwrap();
    let mut b = Submitter::new(&dev, 1, Requester::pasid(2, true), Default::default()).unwrap();
    let a_src = rig.plat.buf(AddressSpace::Pasid(1), 8192);
    let a_dst = rig.plat.buf(AddressSpace::Pasid(1), 8192);
    let b_src = rig.plat.buf(AddressSpace::Pasid(2), 8192);
    let b_dst = rig.plat.buf(AddressSpace::Pasid(2), 8192);
    a_src.write(0, &pattern(8192, 11));
    b_src.write(0, &pattern(8192, 12));
    a.run(&Work::memmove(a_src.at(0), a_dst.at(0), 8192))
        .unwrap();
    b.run(&Work::memmove(b_src.at(0), b_dst.at(0), 8192))
        .unwrap();
    assert_eq!(a_dst.all(), pattern(8192, 11));
    assert_eq!(b_dst.all(), pattern(8192, 12));
    // Client b names client a's buffers: its address space has nothing there.
    let e = b
        .run(&Work::memmove(b_src.at(0), a_dst.at(0), 8192))
        .unwrap_err();
    let OpError::PageFault(pf) = e else {
        panic!("expected a fault, got {e:?}")
    };
    assert!(pf.write);
    assert_eq!(pf.addr, a_dst.at(0));
    assert_eq!(pf.completed, 0);
    let e = b
        .run(&Work::memmove(a_src.at(0), b_dst.at(0), 64))
        .unwrap_err();
    assert!(matches!(e, OpError::PageFault(ref pf) if !pf.write && pf.addr == a_src.at(0)));
    assert_eq!(
        a_dst.all(),
        pattern(8192, 11),
        "client a's memory unchanged"
    );
    // Drain PASID 2 only concerns b's descriptors.
    dev.drain_pasid(2).unwrap();
    assert_eq!(b.outstanding(), 0);
    let _ = PASID;
}

/// A driver on a device whose shared WQ 1 holds 4 descriptors.
fn small_shared_wq(rig: &Rig, opts: DeviceOptions) -> Arc<dsa::Device> {
    let mut cfg = dsa::DeviceConfig::default_for(
        &dsa::Capabilities::read(&*rig.hardware().regs, 9).unwrap(),
        &dsa::Pci::info(&*rig.pci),
    );
    cfg.wqs[1].size = 4;
    rig.driver(0, ConfigSource::Config(cfg), opts).unwrap()
}

#[test]
fn shared_wq_full_is_retried_then_succeeds() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    // The engines run again after a number of back-off steps, not after some time: the
    // submit timeout only bounds a hang (back-off sleeps can take far longer than asked on
    // a loaded host).
    let dev = small_shared_wq(
        &rig,
        DeviceOptions {
            submit_timeout_ns: WAIT,
            ..DeviceOptions::default()
        },
    );
    let mut s = Submitter::new(&dev, 1, Requester::pasid(3, true), Default::default()).unwrap();
    // Fill the WQ while the engines do not run.
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let toks: Vec<_> = (0..4)
        .map(|_| s.submit(&Work::noop(), Notify::Poll).unwrap())
        .collect();
    assert_eq!(rig.portal.enq_retry.load(Ordering::Relaxed), 0);
    // The fifth: Retry 32 times immediately, then back-off; the engines run from the
    // 40th relax/delay on, and the submission gets in.
    rig.clock.skip.store(40, Ordering::Relaxed);
    rig.clock.frozen.store(false, Ordering::Relaxed);
    let t5 = s.submit(&Work::noop(), Notify::Poll).unwrap();
    let retries = rig.portal.enq_retry.load(Ordering::Relaxed);
    assert!(retries > 32, "only {retries} retries");
    // The driver counts every refused ENQCMDS it retried.
    assert_eq!(dev.enqcmds_retries(), retries);
    for t in toks.into_iter().chain([t5]) {
        assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
    }
}

#[test]
fn shared_wq_never_draining_ends_in_queue_full() {
    // The driver's default submit timeout (10 ms): the engines never run meanwhile, so the
    // bounded retry ends in QueueFull however long the host takes.
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let dev = small_shared_wq(&rig, DeviceOptions::default());
    let mut s = Submitter::new(&dev, 1, Requester::pasid(3, true), Default::default()).unwrap();
    rig.clock.frozen.store(true, Ordering::Relaxed);
    let toks: Vec<_> = (0..4)
        .map(|_| s.submit(&Work::noop(), Notify::Poll).unwrap())
        .collect();
    assert_eq!(
        s.submit(&Work::noop(), Notify::Poll).unwrap_err(),
        OpError::QueueFull
    );
    assert!(dev.enqcmds_retries() > 0);
    rig.clock.frozen.store(false, Ordering::Relaxed);
    for t in toks {
        assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
    }
}

#[test]
fn dedicated_credits_are_never_exceeded_under_a_flood() {
    // The engines start only once the flood has filled the WQ (every credit taken and a
    // submitter waiting for one): full by construction, however the host schedules the
    // threads; from then on the device and the four submitters run concurrently.
    let mut rig = Rig::held(model_cfg(), ALL_PCI);
    let opts = DeviceOptions {
        submit_timeout_ns: 200_000_000,
        ..Default::default()
    };
    let dev = rig.driver(0, ConfigSource::Default, opts).unwrap();
    // Slow completions so the WQ (size 32) keeps filling up once the engines run.
    rig.inject(dsa_model::fault_inject::FI_DELAY_US, 20);
    let size = u32::from(dev.wq(0).unwrap().size());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let dev = dev.clone();
            let plat = rig.plat.clone();
            std::thread::spawn(move || {
                let opts = SubmitterOptions {
                    slots: 48,
                    ..Default::default()
                };
                let mut s = Submitter::new(&dev, 0, Requester::kernel(), opts).unwrap();
                let src = plat.buf(AddressSpace::NoPasid, 64 * 256);
                let dst = plat.buf(AddressSpace::NoPasid, 64 * 256);
                let data = pattern(64 * 256, 100 + t);
                src.write(0, &data);
                let mut toks = std::collections::VecDeque::new();
                for i in 0..256usize {
                    let w = Work::memmove(src.at(i * 64), dst.at(i * 64), 64);
                    loop {
                        match s.submit(&w, Notify::Poll) {
                            Ok(tok) => {
                                toks.push_back(tok);
                                break;
                            }
                            // Back-pressure: collect the oldest result and retry.
                            Err(OpError::NoFreeSlot | OpError::QueueFull) => {
                                if let Some(tok) = toks.pop_front() {
                                    s.wait(tok, WAIT).unwrap();
                                }
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                for tok in toks {
                    s.wait(tok, WAIT).unwrap();
                }
                assert_eq!(dst.all(), data);
            })
        })
        .collect();
    let wq = dev.wq(0).unwrap();
    let t0 = std::time::Instant::now();
    while dev.credit_waits() == 0 || wq.credits_in_use() < size {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the flood never filled the held WQ"
        );
        std::thread::yield_now();
    }
    rig.start_workers();
    for t in threads {
        t.join().unwrap();
    }
    assert!(wq.credits_peak() <= size);
    assert_eq!(wq.credits_peak(), size, "the flood never filled the WQ");
    assert!(
        dev.credit_waits() > 0,
        "a full WQ must have made submitters wait"
    );
    assert_eq!(wq.credits_in_use(), 0);
    assert_eq!(dev.swerr_count(swerr_code::DWQ_FULL), 0);
    assert_eq!(rig.model.bar0_read(0xC0, 8) & 1, 0, "a SWERR was logged");

    // Control: bypassing the credits (raw MOVDIR64B past the size) is caught.
    rig.inject(dsa_model::fault_inject::FI_DELAY_US, 0);
    rig.model.stop();
    let w = dev.wq(0).unwrap();
    let mut d = Work::noop().descriptor();
    d.flags = dsa_spec::DescFlags::empty();
    for _ in 0..size + 3 {
        dsa::Portals::movdir64b(&*rig.portal, w.portal(), &d.to_bytes());
    }
    assert!(dev.swerr_count(swerr_code::DWQ_FULL) >= 1);
    assert_eq!(dev.last_swerr().unwrap().code, swerr_code::DWQ_FULL);
}

#[test]
fn batch_summary_reports_all_ok_without_member_writes_and_details_otherwise() {
    let (rig, dev) = up(Exec::Deterministic);
    for (wq, client) in [
        (0u8, Requester::kernel()),
        (1, Requester::pasid(PASID, true)),
    ] {
        let mut s = Submitter::new(&dev, wq, client, Default::default()).unwrap();
        let src = rig.plat.buf(client.space, 8192);
        let dst = rig.plat.buf(client.space, 8192);
        let copies: Vec<Work> = (0..4)
            .map(|k| Work::memmove(src.at(k * 1024), dst.at(k * 1024), 1024))
            .collect();
        // A marker the summary must leave alone when every member succeeded plainly.
        let mut out: Vec<_> = (0..4).map(|_| Err(OpError::Timeout)).collect();
        let t = s.submit_batch(&copies, Notify::Poll).unwrap();
        assert_eq!(s.poll_batch_summary(t, &mut out), None, "in flight");
        rig.run();
        let all_ok = dsa::BatchDone {
            members: 4,
            all_ok: true,
        };
        assert_eq!(s.poll_batch_summary(t, &mut out), Some(Ok(all_ok)));
        assert!(
            out.iter().all(|r| *r == Err(OpError::Timeout)),
            "not written"
        );
        assert_eq!(
            s.poll_batch_summary(t, &mut out),
            Some(Err(OpError::BadToken)),
            "collected once"
        );
        // A member with a result of its own (Compare): the members are written out.
        src.write(0, &[1; 64]);
        dst.write(4096, &[2; 64]);
        let mixed = [
            Work::memmove(src.at(0), dst.at(0), 64),
            Work::compare(src.at(0), dst.at(4096), 64),
        ];
        let t = s.submit_batch(&mixed, Notify::Poll).unwrap();
        rig.run();
        let d = s.poll_batch_summary(t, &mut out);
        assert_eq!(
            d,
            Some(Ok(dsa::BatchDone {
                members: 2,
                all_ok: false
            }))
        );
        assert_eq!(out[0], Ok(Output::Done));
        assert!(matches!(out[1], Ok(Output::Compare { equal: false, .. })));
    }
}
