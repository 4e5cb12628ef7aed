//! The whole stack: the DSA driver's IMS storage and submission glue, the DSA model as the
//! device (its IMS table, PASID check, pending bits, Drain PASID), the fake machine's
//! interrupt remapping and CPUs.

use crate::dsa_rig::{DsaRig, Exec, model_cfg};
use crate::machine::{Machine, current_cpu};
use dsa::{DsaIms, Notify, OpError, Output, Requester, Submitter, SubmitterOptions, Work};
use dsa_spec::tables::ImsCtrl;
use ims::{
    ChipOptions, DomainConfig, ImsDomain, ImsError, ImsHandle, OWNER_PER_HANDLE, OwnerId,
    VectorMode,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SID: u16 = 0x0108;

struct Env {
    m: Arc<Machine>,
    rig: DsaRig,
    domain: ImsDomain,
    ims: DsaIms,
}

/// This file is compiled twice (`main.rs`): as `on_dsa` in shared-scan mode and as
/// `on_dsa_posted` in posted mode (a posting IOMMU; without remapping it runs shared).
fn mode() -> VectorMode {
    if module_path!().ends_with("posted") {
        VectorMode::Posted
    } else {
        VectorMode::Shared
    }
}

fn env(cpus: usize, exec: Exec, mode: VectorMode, remapping: bool, quota: u32) -> Env {
    env_cfg(cpus, exec, mode, remapping, quota, model_cfg())
}

fn env_cfg(
    cpus: usize,
    exec: Exec,
    mode: VectorMode,
    remapping: bool,
    quota: u32,
    cfg: dsa_model::Config,
) -> Env {
    let m = Machine::new(cpus, remapping);
    let mode = if remapping { mode } else { VectorMode::Shared };
    if mode == VectorMode::Posted {
        m.posting.store(true, SeqCst);
    }
    let rig = DsaRig::new(&m, SID, cfg, exec);
    let domain = ImsDomain::new(
        m.clone(),
        DomainConfig {
            mode,
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let ims = DsaIms::register(
        &domain,
        &rig.dev,
        ChipOptions {
            pasid_quota: quota,
            ..ChipOptions::new("dsa0", SID)
        },
    )
    .unwrap();
    Env {
        m,
        rig,
        domain,
        ims,
    }
}

fn submitter(rig: &DsaRig, pasid: u32, slots: u16) -> Submitter {
    Submitter::new(
        &rig.dev,
        rig.shared_wq(),
        Requester::pasid(pasid, false),
        SubmitterOptions {
            slots,
            max_batch: 0,
            timeout_ns: 5_000_000_000,
        },
    )
    .unwrap()
}

fn client(pasid: u32) -> OwnerId {
    OwnerId::new(u64::from(pasid), pasid).unwrap()
}

/// Callback results: (operation id, CPU the callback ran on, success).
type Log = Arc<Mutex<Vec<(u64, Option<usize>, bool)>>>;

fn record(log: &Log, id: u64) -> impl FnOnce(Result<Output, OpError>) + Send + 'static {
    let log = log.clone();
    move |r| log.lock().unwrap().push((id, current_cpu(), r.is_ok()))
}

fn wait_for(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn all_ims_entries_across_cpus_use_one_vector_per_cpu() {
    let cpus = 4;
    let e = env(cpus, Exec::Deterministic, mode(), true, 128);
    let n = e.ims.chip().entries();
    assert_eq!(n, 2048, "the model's IMS table (GENCAP[30:25] × 256)");
    let log: Log = Arc::default();
    let mut subs = Vec::new();
    let mut hs: Vec<ImsHandle> = Vec::new();
    for i in 0..n {
        let pasid = 1 + i % 16;
        let sub = submitter(&e.rig, pasid, 2);
        hs.push(
            e.ims
                .allocate(&client(pasid), (i as usize) % cpus, &sub)
                .unwrap(),
        );
        subs.push(sub);
    }
    // Quota 128 × 16 PASIDs = the whole table: the next request hits the quota first.
    let extra = submitter(&e.rig, 1, 2);
    assert_eq!(
        e.ims.allocate(&client(1), 0, &extra).unwrap_err(),
        ImsError::QuotaExceeded {
            pasid: 1,
            quota: 128
        }
    );
    let extra = submitter(&e.rig, 99, 2);
    assert_eq!(
        e.ims.allocate(&client(99), 0, &extra).unwrap_err(),
        ImsError::TableFull { entries: 2048 }
    );
    println!("per-CPU vector report after allocating all {n} IMS entries:");
    for r in e.domain.report() {
        println!(
            "  cpu {}: {} IMS vector(s) ({} in the allocator), {} handles",
            r.cpu,
            r.vectors,
            e.m.vectors_owned(r.cpu, "ims"),
            r.handles
        );
        assert_eq!((r.vectors, r.handles), (1, n / cpus as u32));
        assert_eq!(e.m.vectors_owned(r.cpu, mode().owner()), 1);
        assert_eq!(e.m.vectors_owned(r.cpu, "ims"), 1);
    }
    assert_eq!(e.domain.vectors_used(), cpus as u32);
    // The device's entries: bound to their PASID, unmasked, naming their own IRTE.
    for h in hs.iter().step_by(97) {
        let ent = e.ims.storage().read_entry(h.index()).unwrap();
        assert_eq!(
            ent.ctrl - ImsCtrl::PENDING,
            ImsCtrl::PASID_EN.with_pasid(h.pasid())
        );
        assert_eq!(
            (ent.addr, ent.data),
            (h.route().msg.addr, h.route().msg.data)
        );
    }
    // One operation through every handle: each callback once, on the handle's CPU.
    for (i, (h, sub)) in hs.iter().zip(subs.iter_mut()).enumerate() {
        e.ims
            .submit(sub, &h.armer(), &Work::noop(), record(&log, i as u64))
            .unwrap();
    }
    e.rig.run();
    let mut got = log.lock().unwrap().clone();
    got.sort();
    assert_eq!(got.len(), n as usize);
    for (i, (id, cpu, ok)) in got.iter().enumerate() {
        assert_eq!(*id, i as u64);
        assert!(ok);
        assert_eq!(
            *cpu,
            Some(i % cpus),
            "operation {i} delivered on its handle's CPU"
        );
    }
    for cpu in 0..cpus {
        let st = e.domain.stats(cpu).unwrap();
        assert_eq!(st.completions, u64::from(n / cpus as u32));
        assert_eq!(
            e.m.taken(cpu, e.domain.shared_vector(cpu).unwrap()),
            st.interrupts
        );
    }
    assert_eq!(e.m.ir_faults.load(SeqCst), 0);
    assert!(hs.iter().all(|h| h.delivered() == 1));
}

#[test]
fn cross_pasid_handle_use_is_refused_by_the_device() {
    let e = env(2, Exec::Deterministic, mode(), true, 8);
    let (pa, pb) = (0x1A, 0x2B);
    let mut sa = submitter(&e.rig, pa, 8);
    let sb = submitter(&e.rig, pb, 8);
    let ha = e.ims.allocate(&client(pa), 0, &sa).unwrap();
    let hb = e.ims.allocate(&client(pb), 1, &sb).unwrap();
    // The glue refuses before the device sees anything.
    assert!(matches!(
        e.ims.submit_token(&mut sa, &hb.armer(), &Work::noop()),
        Err(OpError::InterruptUnavailable(_))
    ));
    // A raw descriptor from PASID A naming B's entry: the device refuses it (0x19) and
    // raises nothing, anywhere.
    let msis = e.rig.plat.msi_count.load(SeqCst);
    let t = sa
        .submit(&Work::noop(), Notify::Handle(hb.device_handle() as u16))
        .unwrap();
    e.rig.run();
    assert_eq!(
        sa.wait(t, 1_000_000_000),
        Err(OpError::Status { code: 0x19 })
    );
    assert_eq!(e.rig.plat.msi_count.load(SeqCst), msis, "no message sent");
    assert_eq!(e.m.taken_total(1), 0, "nothing at B's CPU");
    assert_eq!(hb.delivered(), 0);
    // A's own handle works: its interrupt reaches A's CPU (a token's result goes to the
    // owner's poll, not through the demultiplexer).
    let before = e.domain.stats(0).unwrap().interrupts;
    let t = e
        .ims
        .submit_token(&mut sa, &ha.armer(), &Work::noop())
        .unwrap();
    e.rig.run();
    assert_eq!(
        e.domain.stats(0).unwrap().interrupts,
        before + 1,
        "A's interrupt taken"
    );
    assert_eq!(sa.poll(t), Some(Ok(Output::Done)));
    assert!(!ha.is_armed(), "disarmed once nothing is outstanding");
    assert_eq!(e.m.taken_total(1), 0);
    // Allocation must use a sink that runs with the client's PASID.
    assert!(matches!(
        e.ims.allocate(&client(pb), 1, &sa),
        Err(ImsError::Mismatch(_))
    ));
}

/// The device completes the descriptor at its portal store — record written and interrupt
/// taken while the driver is still inside its submit call — and the demultiplexer's watch
/// check must already see the record: the submitter watches it before the portal store.
/// Idle armed handles on the same CPU are checked without a poll.
#[test]
fn completion_at_the_portal_store_is_delivered_by_its_interrupt() {
    let e = env(1, Exec::Deterministic, mode(), true, 64);
    let log: Log = Arc::default();
    let idle: Vec<(Submitter, ImsHandle)> = (0..8)
        .map(|_| {
            let s = submitter(&e.rig, 9, 4);
            let h = e.ims.allocate(&client(9), 0, &s).unwrap();
            (s, h)
        })
        .collect();
    let idle_armers: Vec<_> = idle.iter().map(|(_, h)| h.armer()).collect();
    let guards: Vec<_> = idle_armers.iter().map(|a| a.arm().unwrap()).collect();
    let mut sub = submitter(&e.rig, 9, 4);
    let h = e.ims.allocate(&client(9), 0, &sub).unwrap();
    e.rig.sync_portals.store(true, SeqCst);
    e.domain.reset_stats();
    for id in 0..3 {
        e.ims
            .submit(&mut sub, &h.armer(), &Work::noop(), record(&log, id))
            .unwrap();
        let delivered = log.lock().unwrap().len() as u64;
        assert_eq!(
            delivered,
            id + 1,
            "completion {id} delivered by its interrupt during the submit call"
        );
    }
    e.rig.sync_portals.store(false, SeqCst);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(0, Some(0), true), (1, Some(0), true), (2, Some(0), true)]
    );
    let st = e.domain.stats(0).unwrap();
    assert_eq!((st.interrupts, st.completions, st.polls), (3, 3, 3));
    assert_eq!(sub.outstanding(), 0);
    let reaper = sub.reaper();
    let (n, idle) = reaper.deliver(None);
    assert_eq!(n, 0, "every completion was delivered once");
    assert!(idle.is_some(), "nothing outstanding: the sink reports idle");
    assert_eq!(h.delivered(), 3);
    drop(guards);
}

/// A completion is in the handle's `delivered` count by the time its callback runs, so the
/// callback, and any thread it signals, never reads a count without its own completion.
#[test]
fn a_callback_sees_its_own_completion_counted() {
    let e = env(1, Exec::Deterministic, mode(), true, 8);
    let mut sub = submitter(&e.rig, 5, 8);
    let h = Arc::new(e.ims.allocate(&client(5), 0, &sub).unwrap());
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    for _ in 0..3 {
        let (h2, seen) = (h.clone(), seen.clone());
        e.ims
            .submit(&mut sub, &h.armer(), &Work::noop(), move |r| {
                assert!(r.is_ok());
                seen.lock().unwrap().push(h2.delivered());
            })
            .unwrap();
        e.rig.run();
    }
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(h.delivered(), 3);
}

/// The sink's side of it: several completions reaped by one pass are each counted before
/// their own callback runs.
#[test]
fn one_reap_counts_each_completion_before_its_callback() {
    let e = env(1, Exec::Deterministic, mode(), true, 8);
    let mut sub = submitter(&e.rig, 5, 8);
    let count = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    for _ in 0..4 {
        let (count, seen) = (count.clone(), seen.clone());
        sub.submit_with_callback(&Work::noop(), Notify::Poll, move |r| {
            assert!(r.is_ok());
            seen.lock().unwrap().push(count.load(SeqCst));
        })
        .unwrap();
    }
    e.rig.run();
    assert_eq!(
        sub.reaper().reap_counting(&count),
        4,
        "one pass reaps all four"
    );
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn masked_handle_delivers_after_unmask_via_the_pending_bit() {
    let e = env(2, Exec::Deterministic, mode(), true, 8);
    let mut sub = submitter(&e.rig, 5, 8);
    let mut h = e.ims.allocate(&client(5), 1, &sub).unwrap();
    let log: Log = Arc::default();
    h.mask().unwrap();
    let ent = e.ims.storage().read_entry(h.index()).unwrap();
    assert!(ent.ctrl.contains(ImsCtrl::MASK));
    e.ims
        .submit(&mut sub, &h.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    e.rig.run();
    assert!(log.lock().unwrap().is_empty(), "no callback while masked");
    assert!(
        ims::ImsStorage::pending(&**e.ims.storage(), h.index()),
        "IMS pending bit"
    );
    assert_eq!(e.rig.plat.msi_count.load(SeqCst), 0);
    h.unmask().unwrap();
    assert_eq!(
        e.rig.plat.msi_count.load(SeqCst),
        1,
        "the pending message was sent on unmask"
    );
    assert_eq!(*log.lock().unwrap(), vec![(1, Some(1), true)]);
    assert!(!ims::ImsStorage::pending(&**e.ims.storage(), h.index()));
    assert_eq!(h.delivered(), 1);
}

fn retarget_under_stream(remapping: bool) {
    let cpus = 4;
    let e = env(cpus, Exec::Threaded, mode(), remapping, 8);
    let sub = submitter(&e.rig, 7, 32);
    let mut h = e.ims.allocate(&client(7), 0, &sub).unwrap();
    let total = 3000u64;
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..total).map(|_| AtomicU32::new(0)).collect());
    let cpus_seen: Arc<Vec<AtomicU64>> = Arc::new((0..cpus).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU64::new(0));
    let moves = Arc::new(AtomicU64::new(0));
    let ims = Arc::new(e.ims);
    let stream = {
        let (counts, cpus_seen, done, ims) =
            (counts.clone(), cpus_seen.clone(), done.clone(), ims.clone());
        let moves = moves.clone();
        let armer = h.armer();
        let mut sub = sub;
        thread::spawn(move || {
            for id in 0..total {
                // At most 16 in flight of 32 slots: the submitter never reaps by itself, so
                // every completion is delivered through the interrupt path.
                // About ten operations per position, so the retargets interleave with the
                // stream however the host schedules the threads.
                while sub.outstanding() >= 16 || id >= (moves.load(SeqCst) + 1) * 10 {
                    thread::yield_now();
                }
                let (counts, cpus_seen, done) = (counts.clone(), cpus_seen.clone(), done.clone());
                ims.submit(&mut sub, &armer, &Work::noop(), move |r| {
                    assert!(r.is_ok());
                    counts[id as usize].fetch_add(1, SeqCst);
                    if let Some(c) = current_cpu() {
                        cpus_seen[c].fetch_add(1, SeqCst);
                    }
                    done.fetch_add(1, SeqCst);
                })
                .unwrap();
            }
            sub
        })
    };
    while done.load(SeqCst) < total {
        // Move while about half of this position's operations are still in flight. A stall
        // is a minute without a completion, not a slow host.
        let want = (moves.load(SeqCst) * 10 + 5).min(total);
        let (mut seen, mut t0) = (done.load(SeqCst), Instant::now());
        while done.load(SeqCst) < want {
            let now = done.load(SeqCst);
            if now != seen {
                (seen, t0) = (now, Instant::now());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "stream stalled at {seen} of {want}"
            );
            thread::yield_now();
        }
        if done.load(SeqCst) < total {
            h.retarget((h.cpu() + 1) % cpus).unwrap();
            moves.fetch_add(1, SeqCst);
        }
    }
    let moves = moves.load(SeqCst);
    let sub = stream.join().unwrap();
    wait_for("the last completions", Duration::from_secs(60), || {
        done.load(SeqCst) == total
    });
    assert!(moves >= 250, "only {moves} retargets");
    for (id, c) in counts.iter().enumerate() {
        assert_eq!(c.load(SeqCst), 1, "operation {id}");
    }
    assert_eq!(
        h.delivered(),
        total,
        "every completion came through the chip"
    );
    for (c, n) in cpus_seen.iter().enumerate() {
        assert!(n.load(SeqCst) > 0, "no delivery on CPU {c}");
    }
    assert_eq!(e.m.ir_faults.load(SeqCst), 0);
    assert_eq!(e.domain.vectors_used(), cpus as u32);
    drop(sub);
    h.release().unwrap();
}

#[test]
fn retarget_under_a_stream_of_completions_loses_none() {
    retarget_under_stream(true);
}

#[test]
fn retarget_under_a_stream_without_remapping() {
    retarget_under_stream(false);
}

#[test]
fn released_and_reallocated_entry_never_delivers_the_old_owners_completion() {
    let e = env(3, Exec::Deterministic, mode(), true, 8);
    let (pa, pb) = (0xA, 0xB);
    let mut sa = submitter(&e.rig, pa, 8);
    let sb = submitter(&e.rig, pb, 8);
    let log_a: Log = Arc::default();
    let mut ha = e.ims.allocate(&client(pa), 0, &sa).unwrap();
    let entry = ha.index();
    // A completion whose message sits pending in the masked entry at release time.
    ha.mask().unwrap();
    e.ims
        .submit(&mut sa, &ha.armer(), &Work::noop(), record(&log_a, 1))
        .unwrap();
    e.rig.run();
    assert!(ims::ImsStorage::pending(&**e.ims.storage(), entry));
    let armer_a = ha.armer();
    ha.release().unwrap();
    // Delivered to A before release returned (by the Drain PASID sweep in the releasing
    // thread or by the last poll on A's CPU); nothing after.
    let got = log_a.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].0 == 1 && got[0].2 && matches!(got[0].1, None | Some(0)),
        "{got:?}"
    );
    let ent = e.ims.storage().read_entry(entry).unwrap();
    assert_eq!(
        ent.ctrl,
        ImsCtrl::MASK,
        "cleared: masked, unbound, nothing pending"
    );
    assert!(
        e.ims
            .submit(&mut sa, &armer_a, &Work::noop(), |_| {})
            .is_err()
    );

    let msis = e.rig.plat.msi_count.load(SeqCst);
    let hb = e.ims.allocate(&client(pb), 2, &sb).unwrap();
    assert_eq!(hb.index(), entry, "the entry was reused");
    assert_eq!(
        e.rig.plat.msi_count.load(SeqCst),
        msis,
        "the stale pending message is gone"
    );
    // A keeps naming the entry in raw descriptors: refused, nothing at B.
    let t = sa
        .submit(&Work::noop(), Notify::Handle(entry as u16))
        .unwrap();
    e.rig.run();
    assert_eq!(
        sa.wait(t, 1_000_000_000),
        Err(OpError::Status { code: 0x19 })
    );
    assert_eq!(e.m.taken_total(2), 0);
    assert_eq!(hb.delivered(), 0);
    assert_eq!(log_a.lock().unwrap().len(), 1, "no callback after release");
}

/// An operation still running when the owner releases: release waits for it (Drain PASID),
/// delivers it to the old owner, and the next owner of the entry hears nothing of it.
#[test]
fn release_drains_work_in_flight_before_the_entry_is_reused() {
    let e = env(3, Exec::Threaded, mode(), true, 8);
    let (pa, pb) = (0xA, 0xB);
    let mut sa = submitter(&e.rig, pa, 8);
    let sb = submitter(&e.rig, pb, 8);
    // The device still runs A's work when the release starts: observed (the model is busy),
    // not assumed; a host that let the delayed work finish first gets the round again with
    // a 4× longer delay.
    let mut delay_us = 30_000u32;
    let (entry, log_a) = loop {
        let log_a: Log = Arc::default();
        let ha = e.ims.allocate(&client(pa), 0, &sa).unwrap();
        let entry = ha.index();
        e.rig.inject(dsa_model::fault_inject::FI_DELAY_US, delay_us);
        for id in 0..4 {
            e.ims
                .submit(&mut sa, &ha.armer(), &Work::noop(), record(&log_a, id))
                .unwrap();
        }
        let in_flight = e.rig.busy();
        ha.release().unwrap();
        assert!(
            !e.rig.busy(),
            "release returned before the device finished A's work"
        );
        let mut got = log_a.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        // Queued work ran normally: the entry stayed bound until it was drained (an
        // engine validating a descriptor after the unbind would have refused it with
        // status 0x19).
        assert!(got.iter().all(|x| x.2), "{got:?}");
        e.rig.inject(dsa_model::fault_inject::FI_DELAY_US, 0);
        if in_flight {
            break (entry, log_a);
        }
        assert!(
            delay_us < 2_000_000,
            "A's work never outlasted its submission"
        );
        delay_us *= 4;
    };
    let hb = e.ims.allocate(&client(pb), 2, &sb).unwrap();
    assert_eq!(hb.index(), entry);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(e.m.taken_total(2), 0, "nothing of A's reached B's CPU");
    assert_eq!(log_a.lock().unwrap().len(), 4);
}

#[test]
fn two_devices_share_the_per_cpu_vector() {
    let m = Machine::new(2, true);
    let r0 = DsaRig::new(&m, 0x108, model_cfg(), Exec::Deterministic);
    let r1 = DsaRig::new(&m, 0x110, model_cfg(), Exec::Deterministic);
    let d = ImsDomain::new(m.clone(), DomainConfig::default()).unwrap();
    let i0 = DsaIms::register(&d, &r0.dev, ChipOptions::new("dsa0", 0x108)).unwrap();
    let i1 = DsaIms::register(&d, &r1.dev, ChipOptions::new("dsa1", 0x110)).unwrap();
    let (mut s0, mut s1) = (submitter(&r0, 3, 4), submitter(&r1, 3, 4));
    let h0 = i0.allocate(&client(3), 1, &s0).unwrap();
    let h1 = i1.allocate(&client(3), 1, &s1).unwrap();
    // A handle of one device cannot name the other device's descriptors.
    assert!(
        i0.submit_token(&mut s0, &h1.armer(), &Work::noop())
            .is_err()
    );
    let log: Log = Arc::default();
    i0.submit(&mut s0, &h0.armer(), &Work::noop(), record(&log, 0))
        .unwrap();
    i1.submit(&mut s1, &h1.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    r0.run();
    r1.run();
    let mut got = log.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![(0, Some(1), true), (1, Some(1), true)]);
    assert_eq!(d.vectors_used(), 2);
    assert_eq!(m.vectors_owned(1, "ims"), 1);
    assert_eq!(m.ir_faults.load(SeqCst), 0);
}

/// Same workload, both designs: per-handle vectors run out at the allocator's limit (192 on
/// a CPU here), the shared design keeps one vector per CPU for the whole table.
#[test]
fn per_handle_vectors_run_out_while_shared_keeps_one() {
    let mut results = Vec::new();
    for mode in [
        VectorMode::PerHandle,
        VectorMode::Shared,
        VectorMode::Posted,
    ] {
        let e = env(2, Exec::Deterministic, mode, true, 4096);
        let mut sub = submitter(&e.rig, 4, 8);
        let mut hs = Vec::new();
        let err = loop {
            match e.ims.allocate(&client(4), 0, &sub) {
                Ok(h) => hs.push(h),
                Err(err) => break err,
            }
        };
        let used = e.m.vectors_owned(0, "ims");
        println!(
            "{mode:?}: {} handles on CPU 0, {used} vector(s), stopped by: {err}",
            hs.len()
        );
        match mode {
            VectorMode::PerHandle => {
                assert_eq!(err, ImsError::VectorsExhausted { cpu: 0 });
                assert_eq!(hs.len(), 192);
                assert_eq!(e.m.vectors_owned(0, OWNER_PER_HANDLE), 192);
                assert_eq!(
                    e.ims.chip().free_entries(),
                    2048 - 192,
                    "the refusal kept no entry"
                );
            }
            VectorMode::Shared | VectorMode::Posted => {
                assert_eq!(err, ImsError::TableFull { entries: 2048 });
                assert_eq!(hs.len(), 2048);
                assert_eq!(used, 1);
            }
        }
        // The handles work: one operation through the last one.
        let log: Log = Arc::default();
        let last = hs.last().unwrap();
        e.ims
            .submit(&mut sub, &last.armer(), &Work::noop(), record(&log, 9))
            .unwrap();
        e.rig.run();
        assert_eq!(*log.lock().unwrap(), vec![(9, Some(0), true)]);
        results.push((mode, hs.len(), used));
    }
    assert_eq!(
        results,
        vec![
            (VectorMode::PerHandle, 192, 192),
            (VectorMode::Shared, 2048, 1),
            (VectorMode::Posted, 2048, 1)
        ]
    );
}

#[test]
fn device_issued_handles_with_cmdcap() {
    let cfg = dsa_model::Config {
        cmdcap: true,
        ..model_cfg()
    };
    let e = env_cfg(2, Exec::Deterministic, mode(), true, 8, cfg);
    assert!(e.rig.dev.caps().requires_int_handles());
    let mut sub = submitter(&e.rig, 6, 4);
    let h = e.ims.allocate(&client(6), 1, &sub).unwrap();
    assert_eq!(
        h.device_handle(),
        0x8000 | h.index(),
        "the model's Request Int Handle value"
    );
    let log: Log = Arc::default();
    e.ims
        .submit(&mut sub, &h.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    e.rig.run();
    assert_eq!(*log.lock().unwrap(), vec![(1, Some(1), true)]);
    let dh = h.device_handle() as u16;
    h.release().unwrap();
    // The released device handle is no longer valid.
    let t = sub.submit(&Work::noop(), Notify::Handle(dh)).unwrap();
    e.rig.run();
    assert_eq!(
        sub.wait(t, 1_000_000_000),
        Err(OpError::Status { code: 0x19 })
    );
}

#[test]
fn restore_after_device_recovery() {
    let e = env(2, Exec::Deterministic, mode(), true, 8);
    let mut sub = submitter(&e.rig, 6, 4);
    let mut h = e.ims.allocate(&client(6), 1, &sub).unwrap();
    let masked = e.ims.allocate(&client(6), 0, &sub).unwrap();
    let mut masked = masked;
    masked.mask().unwrap();
    e.rig.inject(dsa_model::fault_inject::FI_FORCE_HALT, 1);
    e.rig.dev.handle_misc_interrupt();
    // The reset inside recovery clears the IMS table; the recovery hook that
    // `DsaIms::register` installed rewrites it before submissions resume.
    assert_eq!(e.rig.dev.recover(), Ok(true));
    let ent = e.ims.storage().read_entry(h.index()).unwrap();
    assert_eq!(
        ent.ctrl,
        ImsCtrl::PASID_EN.with_pasid(6),
        "restored by the recovery hook"
    );
    // Restoring again is harmless (same entries).
    assert_eq!(e.ims.chip().restore().unwrap(), 2);
    let ent = e.ims.storage().read_entry(h.index()).unwrap();
    assert_eq!(ent.ctrl, ImsCtrl::PASID_EN.with_pasid(6));
    let ent = e.ims.storage().read_entry(masked.index()).unwrap();
    assert!(ent.ctrl.contains(ImsCtrl::MASK), "mask state restored");
    let log: Log = Arc::default();
    e.ims
        .submit(&mut sub, &h.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    e.rig.run();
    assert_eq!(*log.lock().unwrap(), vec![(1, Some(1), true)]);
    h.retarget(0).unwrap();
    masked.unmask().unwrap();
}

/// Many handles armed on one CPU, completions arriving from worker threads while clients
/// keep submitting: every completion exactly once, by the chip.
#[test]
fn threaded_many_handles_exactly_once() {
    let cpus = 4;
    let e = env(cpus, Exec::Threaded, mode(), true, 64);
    let ims = Arc::new(e.ims);
    let per_client = 200u64;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    for c in 0..8u32 {
        let pasid = 0x40 + c;
        let sub = submitter(&e.rig, pasid, 32);
        let h = ims
            .allocate(&client(pasid), (c as usize) % cpus, &sub)
            .unwrap();
        let (ims, armer, delivered, stop) =
            (ims.clone(), h.armer(), delivered.clone(), stop.clone());
        handles.push(h);
        threads.push(thread::spawn(move || {
            let mut sub = sub;
            let seen: Arc<Vec<AtomicU32>> =
                Arc::new((0..per_client).map(|_| AtomicU32::new(0)).collect());
            for id in 0..per_client {
                while sub.outstanding() >= 16 && !stop.load(SeqCst) {
                    thread::yield_now();
                }
                let (seen, delivered) = (seen.clone(), delivered.clone());
                ims.submit(&mut sub, &armer, &Work::noop(), move |r| {
                    assert!(r.is_ok());
                    seen[id as usize].fetch_add(1, SeqCst);
                    delivered.fetch_add(1, SeqCst);
                })
                .unwrap();
            }
            (sub, seen)
        }));
    }
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    wait_for("all completions", Duration::from_secs(60), || {
        delivered.load(SeqCst) == 8 * per_client
    });
    stop.store(true, SeqCst);
    for (_, seen) in &results {
        assert!(seen.iter().all(|c| c.load(SeqCst) == 1));
    }
    for h in &handles {
        assert_eq!(h.delivered(), per_client);
    }
    let completions: u64 = (0..cpus)
        .map(|c| e.domain.stats(c).unwrap().completions)
        .sum();
    assert_eq!(completions, 8 * per_client);
}

/// Both designs at once on one device: the system's shared domain lends part of the table
/// to a per-handle-vector domain. Both deliver, their vectors carry distinct owner names,
/// descriptors name the device entries, and the lent entries come back when the borrower
/// is gone (and only then).
#[test]
fn carved_per_handle_domain_next_to_the_shared_one() {
    let e = env(2, Exec::Deterministic, mode(), true, 64);
    let per = ImsDomain::new(
        e.m.clone(),
        DomainConfig {
            mode: VectorMode::PerHandle,
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let shared_h = e
        .ims
        .allocate(&client(3), 1, &submitter(&e.rig, 3, 2))
        .unwrap();
    assert_eq!(shared_h.index(), 0);
    assert_eq!(
        e.ims
            .carve(&per, 4096, ChipOptions::new("dsa0-cmp", SID))
            .unwrap_err(),
        ImsError::TableFull { entries: 2048 },
        "more than the free entries"
    );
    let cmp = e
        .ims
        .carve(&per, 16, ChipOptions::new("dsa0-cmp", SID))
        .unwrap();
    assert_eq!(cmp.chip().entries(), 16);
    assert_eq!(e.ims.chip().lent_entries(), 16);
    assert_eq!(e.ims.chip().free_entries(), 2048 - 1 - 16);
    // The lent entries are the lowest free ones: device entries 1..=16.
    assert_eq!(cmp.device_index(0), 1);
    assert_eq!(cmp.device_index(15), 16);
    let mut sub = submitter(&e.rig, 5, 4);
    let h = cmp.allocate(&client(5), 0, &sub).unwrap();
    assert_eq!(h.index(), 0);
    assert_eq!(h.device_handle(), 1, "descriptors name the device entry");
    let ent = cmp.read_entry(&h).unwrap();
    assert_eq!(ent.ctrl, ImsCtrl::PASID_EN.with_pasid(5));
    assert_eq!(e.m.vectors_owned(0, OWNER_PER_HANDLE), 1);
    assert_eq!(e.m.vectors_owned(0, mode().owner()), 1);
    assert_eq!(e.m.vectors_owned(1, mode().owner()), 1);
    let log: Log = Arc::default();
    cmp.submit(&mut sub, &h.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    e.rig.run();
    assert_eq!(*log.lock().unwrap(), vec![(1, Some(0), true)]);
    assert_eq!(per.stats(0).unwrap().completions, 1);
    assert_eq!(e.domain.stats(0).unwrap().completions, 0);
    // Still lent while the borrower lives; back (clean) once it and its handles are gone.
    h.release().unwrap();
    assert_eq!(e.ims.chip().lent_entries(), 16);
    drop(cmp);
    assert_eq!(e.ims.chip().lent_entries(), 0);
    assert_eq!(e.ims.chip().free_entries(), 2048 - 1);
    assert_eq!(e.ims.chip().leaked_entries(), 0);
    assert_eq!(e.m.vectors_owned(0, OWNER_PER_HANDLE), 0);
    // The returned entries are allocatable again by the shared chip (lowest first).
    let again = e
        .ims
        .allocate(&client(3), 0, &submitter(&e.rig, 3, 2))
        .unwrap();
    assert_eq!(again.index(), 1);
    drop(shared_h);
}

/// Batches through a handle deliver their result to a callback, through the chip.
#[test]
fn batch_with_callback_through_a_handle() {
    let e = env(2, Exec::Deterministic, mode(), true, 8);
    let mut sub = Submitter::new(
        &e.rig.dev,
        e.rig.shared_wq(),
        Requester::pasid(7, false),
        SubmitterOptions {
            slots: 4,
            max_batch: 8,
            timeout_ns: 5_000_000_000,
        },
    )
    .unwrap();
    let h = e.ims.allocate(&client(7), 1, &sub).unwrap();
    // (CPU the callback ran on, successful members)
    type Got = Arc<Mutex<Vec<(Option<usize>, usize)>>>;
    let got: Got = Arc::default();
    let g = got.clone();
    e.ims
        .submit_batch_with_callback(
            &mut sub,
            &h.armer(),
            &[Work::noop(), Work::noop(), Work::noop()],
            move |r| {
                let n = match r {
                    Ok(Output::Batch(v)) => v.iter().filter(|m| m.is_ok()).count(),
                    _ => 0,
                };
                g.lock().unwrap().push((current_cpu(), n));
            },
        )
        .unwrap();
    e.rig.run();
    assert_eq!(*got.lock().unwrap(), vec![(Some(1), 3)]);
    assert_eq!(h.delivered(), 1);
}

/// Issue 13: an MSI-X interrupt of the WQ reaps only the rings its entry can serve. A client
/// PASID's ring never holds MSI-X-notified work (the entry is bound to the kernel PASID), so
/// its completions stay with its IMS handle: here the handle is masked when the operation
/// completes, the MSI-X handler runs (another submitter's interrupt on the same WQ), and the
/// callback must still come from the handle (its unmask re-poll), counted as the handle's.
#[test]
fn an_msix_interrupt_of_the_wq_leaves_a_client_rings_completions_to_its_handle() {
    let e = env(1, Exec::Deterministic, mode(), true, 8);
    let log: Log = Arc::default();
    let mut sub = submitter(&e.rig, 5, 4);
    let mut h = e.ims.allocate(&client(5), 0, &sub).unwrap();
    h.mask().unwrap();
    e.ims
        .submit(&mut sub, &h.armer(), &Work::noop(), record(&log, 1))
        .unwrap();
    e.rig.run();
    let entry = e
        .rig
        .dev
        .wq(e.rig.shared_wq())
        .unwrap()
        .msix_entry
        .expect("an MSI-X entry");
    e.rig.dev.handle_msix(entry);
    assert!(
        log.lock().unwrap().is_empty(),
        "the WQ's MSI-X reap delivered a client ring's IMS completion"
    );
    h.unmask().unwrap();
    wait_for("the re-poll", Duration::from_secs(5), || {
        log.lock().unwrap().len() == 1
    });
    assert_eq!(log.lock().unwrap()[0].0, 1);
    assert_eq!(h.delivered(), 1, "delivered through the handle");
    h.release().unwrap();
}
