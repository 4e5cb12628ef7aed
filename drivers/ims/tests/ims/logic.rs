//! The chip's logic against the software IMS device: vectors, quotas, table exhaustion,
//! demultiplexing, arming races, mask/unmask, retarget, release.

use crate::machine::Machine;
use crate::soft::{SID, SoftIms, SoftSink, chip, client, complete, domain, submit};
use ims::{
    ChipOptions, DomainConfig, ImsChip, ImsDomain, ImsError, ImsHandle, ImsPlatform,
    OWNER_PER_HANDLE, OWNER_SHARED, OwnerId, PlatformError, StorageError, VectorMode,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

/// Everything a refused allocation must leave untouched.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    vectors_free: Vec<usize>,
    irtes: usize,
    free_entries: u32,
    usage: Vec<u32>,
    handles: Vec<u32>,
}

fn footprint(m: &Machine, d: &ImsDomain, c: &ImsChip, pasids: &[u32]) -> Footprint {
    Footprint {
        vectors_free: (0..m.cpu_count()).map(|cpu| m.vectors_free(cpu)).collect(),
        irtes: m.irtes_used(),
        free_entries: c.free_entries(),
        usage: pasids.iter().map(|&p| c.usage(p)).collect(),
        handles: d.report().iter().map(|r| r.handles).collect(),
    }
}

#[test]
fn shared_mode_all_entries_across_cpus_one_vector_per_cpu() {
    let m = Machine::new(4, true);
    let d = domain(&m, VectorMode::Shared);
    for cpu in 0..4 {
        assert_eq!(
            m.vectors_owned(cpu, OWNER_SHARED),
            1,
            "one vector per CPU at creation"
        );
    }
    let ims = SoftIms::new(&m, SID, 2048);
    let c = chip(&d, &ims, 4096);
    let mut hs = Vec::new();
    for i in 0..2048u32 {
        let sink = SoftSink::new();
        hs.push(
            c.allocate(&client(1 + i % 8), (i % 4) as usize, sink)
                .unwrap(),
        );
        if [1, 16, 204, 256, 2048].contains(&(i + 1)) {
            assert_eq!(d.vectors_used(), 4, "vectors used at {} handles", i + 1);
        }
    }
    for cpu in 0..4 {
        assert_eq!(m.vectors_owned(cpu, OWNER_SHARED), 1);
        assert_eq!(m.vectors_owned(cpu, OWNER_PER_HANDLE), 0);
        let r = d.cpu_report(cpu).unwrap();
        assert_eq!((r.vectors, r.handles), (1, 512), "{r:?}");
    }
    assert_eq!(c.free_entries(), 0);
    assert_eq!(m.irtes_used(), 2048, "one IRTE per handle");
    // Every entry is bound to its owner's PASID and routed through its own IRTE to the
    // shared vector of its CPU.
    for h in &hs {
        let e = ims.entry(h.index());
        assert_eq!(e.pasid, Some(h.pasid()));
        assert!(!e.masked);
        let irte = m.irte(h.route().id).unwrap();
        assert_eq!(
            (irte.cpu, irte.vector, irte.sid),
            (h.cpu(), d.shared_vector(h.cpu()).unwrap(), SID)
        );
    }
    let before = footprint(&m, &d, &c, &[99]);
    assert_eq!(
        c.allocate(&client(99), 0, SoftSink::new()).unwrap_err(),
        ImsError::TableFull { entries: 2048 }
    );
    assert_eq!(footprint(&m, &d, &c, &[99]), before);
}

#[test]
fn quota_exhaustion_is_per_pasid_and_consumes_nothing() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 3);
    let (a, b) = (client(0x11), client(0x22));
    let mut ha: Vec<ImsHandle> = (0..3)
        .map(|i| c.allocate(&a, i % 2, SoftSink::new()).unwrap())
        .collect();
    let before = footprint(&m, &d, &c, &[0x11, 0x22]);
    assert_eq!(
        c.allocate(&a, 0, SoftSink::new()).unwrap_err(),
        ImsError::QuotaExceeded {
            pasid: 0x11,
            quota: 3
        }
    );
    assert_eq!(
        footprint(&m, &d, &c, &[0x11, 0x22]),
        before,
        "refusal left nothing behind"
    );
    // Another PASID is unaffected.
    let hb: Vec<ImsHandle> = (0..3)
        .map(|_| c.allocate(&b, 1, SoftSink::new()).unwrap())
        .collect();
    assert_eq!((c.usage(0x11), c.usage(0x22)), (3, 3));
    // Releasing one handle gives the quota back.
    ha.pop().unwrap().release().unwrap();
    assert_eq!(c.usage(0x11), 2);
    ha.push(c.allocate(&a, 1, SoftSink::new()).unwrap());
    // A per-PASID override.
    c.set_quota(0x22, Some(5));
    assert_eq!(c.quota(0x22), 5);
    let more: Vec<ImsHandle> = (0..2)
        .map(|_| c.allocate(&b, 0, SoftSink::new()).unwrap())
        .collect();
    assert!(matches!(
        c.allocate(&b, 0, SoftSink::new()),
        Err(ImsError::QuotaExceeded {
            pasid: 0x22,
            quota: 5
        })
    ));
    assert_eq!(d.vectors_used(), 2);
    drop((ha, hb, more));
    assert_eq!((c.usage(0x11), c.usage(0x22)), (0, 0));
    assert_eq!(c.free_entries(), 256);
    assert_eq!(m.irtes_used(), 0);
}

#[test]
fn table_exhaustion_is_clean_and_quota_keeps_others_served() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 100);
    // A greedy PASID stops at its quota, not at the table size.
    let greedy: Vec<ImsHandle> = (0..100)
        .map(|_| c.allocate(&client(1), 0, SoftSink::new()).unwrap())
        .collect();
    assert!(matches!(
        c.allocate(&client(1), 0, SoftSink::new()),
        Err(ImsError::QuotaExceeded { .. })
    ));
    // Others fill the rest of the table.
    let mut rest = Vec::new();
    for p in 2.. {
        match c.allocate(&client(p), 1, SoftSink::new()) {
            Ok(h) => rest.push(h),
            Err(e) => {
                assert_eq!(e, ImsError::TableFull { entries: 256 });
                break;
            }
        }
    }
    assert_eq!(greedy.len() + rest.len(), 256);
    let before = footprint(&m, &d, &c, &[1, 500]);
    assert_eq!(
        c.allocate(&client(500), 0, SoftSink::new()).unwrap_err(),
        ImsError::TableFull { entries: 256 }
    );
    assert_eq!(footprint(&m, &d, &c, &[1, 500]), before);
    rest.pop().unwrap().release().unwrap();
    c.allocate(&client(500), 0, SoftSink::new())
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn refused_allocations_leave_nothing_behind() {
    for mode in [VectorMode::Shared, VectorMode::PerHandle] {
        let m = Machine::new(2, true);
        let d = ImsDomain::new(
            m.clone(),
            DomainConfig {
                mode,
                max_handles_per_cpu: 4,
                ..DomainConfig::default()
            },
        )
        .unwrap();
        let ims = SoftIms::new(&m, SID, 256);
        let c = chip(&d, &ims, 16);
        let _hs: Vec<ImsHandle> = (0..4)
            .map(|_| c.allocate(&client(7), 0, SoftSink::new()).unwrap())
            .collect();
        let before = footprint(&m, &d, &c, &[7, 8]);
        assert_eq!(
            c.allocate(&client(8), 5, SoftSink::new()).unwrap_err(),
            ImsError::NoSuchCpu { cpu: 5, cpus: 2 }
        );
        assert!(OwnerId::new(1, 1 << 20).is_err());
        if mode == VectorMode::Shared {
            assert_eq!(
                c.allocate(&client(8), 0, SoftSink::new()).unwrap_err(),
                ImsError::CpuFull {
                    cpu: 0,
                    capacity: 4
                }
            );
        }
        // A cross-CPU call that does not run.
        m.fail_run_on.store(true, SeqCst);
        if mode == VectorMode::Shared {
            assert_eq!(
                c.allocate(&client(8), 1, SoftSink::new()).unwrap_err(),
                ImsError::Platform(PlatformError::Timeout { cpu: 1 })
            );
        }
        m.fail_run_on.store(false, SeqCst);
        assert_eq!(footprint(&m, &d, &c, &[7, 8]), before, "{mode:?}");
        // Still usable afterwards.
        c.allocate(&client(8), 1, SoftSink::new()).unwrap();
    }
}

#[test]
fn per_handle_mode_runs_out_at_the_allocator_limit() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::PerHandle);
    assert_eq!(d.vectors_used(), 0);
    let ims = SoftIms::new(&m, SID, 2048);
    let c = chip(&d, &ims, 4096);
    let allocatable = (crate::machine::LAST_VECTOR - crate::machine::FIRST_VECTOR) as usize + 1;
    assert_eq!(allocatable, 192);
    let mut hs = Vec::new();
    let err = loop {
        match c.allocate(&client(1 + hs.len() as u32 % 4), 0, SoftSink::new()) {
            Ok(h) => hs.push(h),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ImsError::VectorsExhausted { cpu: 0 });
    assert_eq!(hs.len(), allocatable, "exactly the allocator's capacity");
    assert_eq!(m.vectors_owned(0, OWNER_PER_HANDLE), allocatable);
    assert_eq!(m.vectors_free(0), 0);
    assert_eq!(
        c.free_entries(),
        2048 - allocatable as u32,
        "the refusal kept no entry"
    );
    assert_eq!(m.irtes_used(), allocatable);
    // The other CPU still has all its vectors; a handle there works.
    assert_eq!(m.vectors_free(1), allocatable);
    let h1 = c.allocate(&client(9), 1, SoftSink::new()).unwrap();
    assert_eq!(d.cpu_report(1).unwrap().vectors, 1);
    // Releasing frees the vector.
    hs.pop().unwrap().release().unwrap();
    assert_eq!(m.vectors_free(0), 1);
    drop(h1);
    drop(hs);
    assert_eq!(m.vectors_owned(0, OWNER_PER_HANDLE), 0);
    assert_eq!(d.vectors_used(), 0);
    assert_eq!(m.handler_count(0), 0);
}

#[test]
fn shared_domain_creation_fails_cleanly_without_vectors() {
    let m = Machine::new(3, true);
    m.hog_vectors(2, 192);
    let before: Vec<usize> = (0..3).map(|c| m.vectors_free(c)).collect();
    assert_eq!(
        ImsDomain::new(m.clone(), DomainConfig::default()).unwrap_err(),
        ImsError::VectorsExhausted { cpu: 2 }
    );
    assert_eq!(
        (0..3).map(|c| m.vectors_free(c)).collect::<Vec<_>>(),
        before
    );
}

/// Handles on one CPU, one sink each, all armed; only the ones that complete get callbacks.
#[test]
fn demux_delivers_to_completed_handles_only() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let sinks: Vec<Arc<SoftSink>> = (0..16).map(|_| SoftSink::new()).collect();
    let hs: Vec<ImsHandle> = sinks
        .iter()
        .map(|s| c.allocate(&client(5), 1, s.clone()).unwrap())
        .collect();
    for (h, s) in hs.iter().zip(&sinks) {
        submit(&h.armer(), s).unwrap();
        assert!(h.is_armed());
    }
    assert_eq!(d.cpu_report(1).unwrap().armed, 16);
    for i in [3usize, 7, 11] {
        assert!(complete(&ims, &sinks[i], hs[i].index(), 5));
    }
    for (i, s) in sinks.iter().enumerate() {
        let want = if [3, 7, 11].contains(&i) {
            vec![(0, Some(1))]
        } else {
            vec![]
        };
        assert_eq!(s.deliveries(), want, "handle {i}");
    }
    let st = d.stats(1).unwrap();
    assert_eq!((st.interrupts, st.completions, st.spurious), (3, 3, 0));
    // First pass polls 16 armed, then 15, then 14: the cost follows the armed set.
    assert_eq!(st.polls, 16 + 15 + 14);
    assert_eq!(st.empty_polls, st.polls - 3);
    assert_eq!(
        d.cpu_report(1).unwrap().armed,
        13,
        "delivered handles disarmed"
    );
    assert_eq!(m.taken(1, d.shared_vector(1).unwrap()), 3);
    assert_eq!(m.taken_total(0), 0, "nothing on the other CPU");
    for (i, s) in sinks.iter().enumerate() {
        if ![3, 7, 11].contains(&i) {
            complete(&ims, s, hs[i].index(), 5);
        }
        s.assert_exactly_once(1);
    }
    assert_eq!(d.cpu_report(1).unwrap().armed, 0);
}

/// Several completions while the CPU has interrupts off coalesce into one interrupt that
/// delivers all of them.
#[test]
fn coalesced_interrupts_deliver_every_completion() {
    let m = Machine::new(1, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let sinks: Vec<Arc<SoftSink>> = (0..5).map(|_| SoftSink::new()).collect();
    let hs: Vec<ImsHandle> = sinks
        .iter()
        .map(|s| c.allocate(&client(5), 0, s.clone()).unwrap())
        .collect();
    for (h, s) in hs.iter().zip(&sinks) {
        submit(&h.armer(), s).unwrap();
        submit(&h.armer(), s).unwrap();
    }
    let (ims2, sinks2) = (ims.clone(), sinks.clone());
    let idx: Vec<u32> = hs.iter().map(|h| h.index()).collect();
    m.run_on(
        0,
        Box::new(move || {
            for (s, i) in sinks2.iter().zip(&idx) {
                complete(&ims2, s, *i, 5);
                complete(&ims2, s, *i, 5);
            }
        }),
    )
    .unwrap();
    let st = d.stats(0).unwrap();
    assert_eq!((st.interrupts, st.completions), (1, 10), "{st:?}");
    for s in &sinks {
        s.assert_exactly_once(2);
    }
}

#[test]
fn masked_handle_delivers_after_unmask() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let (s, other) = (SoftSink::new(), SoftSink::new());
    let mut h = c.allocate(&client(5), 1, s.clone()).unwrap();
    let ho = c.allocate(&client(6), 1, other.clone()).unwrap();

    // Case 1: the device keeps the message pending in the masked entry.
    h.mask().unwrap();
    assert!(h.is_masked() && ims.entry(h.index()).masked);
    submit(&h.armer(), &s).unwrap();
    complete(&ims, &s, h.index(), 5);
    assert!(ims.entry(h.index()).pending);
    // Another handle's interrupt on the same CPU must not deliver the masked one.
    submit(&ho.armer(), &other).unwrap();
    complete(&ims, &other, ho.index(), 6);
    other.assert_exactly_once(1);
    assert_eq!(s.delivered(), 0, "no callback while masked");
    h.unmask().unwrap();
    s.assert_exactly_once(1);
    assert_eq!(s.deliveries()[0].1, Some(1));
    assert!(!ims.entry(h.index()).pending);

    // Case 2: the interrupt was taken while masked (no pending bit): unmask re-polls.
    submit(&h.armer(), &s).unwrap();
    s.completed.fetch_add(1, SeqCst); // record written, message not yet seen
    h.mask().unwrap();
    m.raise(1, d.shared_vector(1).unwrap());
    assert_eq!(s.delivered(), 1);
    assert_eq!(h.unmask().unwrap(), 1, "the re-poll delivered it");
    s.assert_exactly_once(2);
    assert!(!h.is_armed(), "idle after the re-poll");
}

#[test]
fn release_then_reallocation_never_reaches_the_next_owner() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let sa = SoftSink::new();
    let mut ha = c.allocate(&client(0xA), 0, sa.clone()).unwrap();
    let e = ha.index();
    // A completion left pending in the masked entry, one finished but not yet delivered,
    // one still running.
    ha.mask().unwrap();
    for _ in 0..3 {
        submit(&ha.armer(), &sa).unwrap();
    }
    complete(&ims, &sa, e, 0xA);
    assert!(ims.entry(e).pending);
    sa.completed.fetch_add(1, SeqCst);
    let armer = ha.armer();
    ha.release().unwrap();
    assert_eq!(
        ims.quiesces.load(SeqCst),
        2,
        "once bound (masked), once unbound"
    );
    // Release delivered what had completed, on the handle's CPU.
    assert_eq!(sa.deliveries(), vec![(0, Some(0)), (1, Some(0))]);
    assert!(armer.is_released());
    assert_eq!(armer.arm().unwrap_err(), ImsError::Released);
    let entry = ims.entry(e);
    assert!(
        entry.masked && !entry.pending && entry.pasid.is_none(),
        "{entry:?}"
    );

    let delivered_before = m.delivered.load(SeqCst);
    let sb = SoftSink::new();
    let hb = c.allocate(&client(0xB), 1, sb.clone()).unwrap();
    assert_eq!(hb.index(), e, "the entry was reused");
    assert_eq!(
        m.delivered.load(SeqCst),
        delivered_before,
        "no stale pending message"
    );
    // The old owner's running descriptor finishes and names the entry: refused.
    assert!(!complete(&ims, &sa, e, 0xA));
    assert_eq!(m.delivered.load(SeqCst), delivered_before);
    assert_eq!(sb.delivered(), 0);
    assert_eq!(sa.delivered(), 2, "no callback after release");
    // The new owner's own work is delivered.
    submit(&hb.armer(), &sb).unwrap();
    assert!(complete(&ims, &sb, e, 0xB));
    sb.assert_exactly_once(1);
    assert_eq!(sa.delivered(), 2);
}

#[test]
fn no_callback_after_release_even_when_the_vector_fires() {
    let m = Machine::new(1, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let h = c.allocate(&client(1), 0, s.clone()).unwrap();
    submit(&h.armer(), &s).unwrap();
    submit(&h.armer(), &s).unwrap();
    h.release().unwrap();
    assert_eq!(s.delivered(), 0);
    s.completed.fetch_add(2, SeqCst);
    m.raise(0, d.shared_vector(0).unwrap());
    assert_eq!(s.delivered(), 0);
    assert_eq!(d.cpu_report(0).unwrap().armed, 0);
}

#[test]
fn failed_quiesce_retires_the_entry() {
    let m = Machine::new(1, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let h = c.allocate(&client(1), 0, SoftSink::new()).unwrap();
    let e = h.index();
    ims.fail_quiesce.store(true, SeqCst);
    assert_eq!(
        h.release().unwrap_err(),
        ImsError::Storage(StorageError::QuiesceFailed("injected"))
    );
    assert_eq!(
        (c.free_entries(), c.leaked_entries(), c.usage(1)),
        (255, 1, 0)
    );
    assert!(ims.entry(e).pasid.is_none(), "unbound even so");
    ims.fail_quiesce.store(false, SeqCst);
    let h2 = c.allocate(&client(1), 0, SoftSink::new()).unwrap();
    assert_ne!(h2.index(), e, "a retired entry is never handed out again");
}

/// Submitters on several threads, a device thread completing in its own order, the handler
/// running on the device thread: every completion is delivered exactly once, by the chip,
/// without any polling by the submitters.
#[test]
fn arming_races_never_lose_a_wakeup() {
    let m = Machine::new(4, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 256);
    let n_handles = 32;
    let per = 400u64;
    let sinks: Vec<Arc<SoftSink>> = (0..n_handles).map(|_| SoftSink::new()).collect();
    let hs: Vec<ImsHandle> = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| c.allocate(&client(3), i % 4, s.clone()).unwrap())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let device = {
        let (ims, sinks) = (ims.clone(), sinks.clone());
        let idx: Vec<u32> = hs.iter().map(|h| h.index()).collect();
        thread::spawn(move || {
            let mut held = Vec::new();
            let mut x = 12345u32;
            loop {
                // Idle: block until the next submission, or return once every submitter
                // is gone (not after a quiet spell: a loaded host can stall all four).
                if held.is_empty() {
                    match rx.recv() {
                        Ok(i) => held.push(i),
                        Err(_) => return,
                    }
                } else if let Ok(i) = rx.try_recv() {
                    held.push(i);
                }
                // Complete a pseudo-random held descriptor (often immediately).
                while !held.is_empty() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if x.is_multiple_of(3) {
                        break;
                    }
                    let i = held.swap_remove(x as usize % held.len());
                    complete(&ims, &sinks[i], idx[i], 3);
                }
            }
        })
    };
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            let sinks = sinks.clone();
            let armers: Vec<_> = hs.iter().map(|h| h.armer()).collect();
            thread::spawn(move || {
                for k in 0..per * n_handles as u64 / 4 {
                    let i = ((k as usize) * 7 + t * 3) % n_handles;
                    submit(&armers[i], &sinks[i]).unwrap();
                    tx.send(i).unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    drop(tx);
    device.join().unwrap();
    let total: u64 = sinks.iter().map(|s| s.submitted.load(SeqCst)).sum();
    assert_eq!(total, per * n_handles as u64);
    for (s, h) in sinks.iter().zip(&hs) {
        let n = s.submitted.load(SeqCst);
        s.assert_exactly_once(n);
        assert_eq!(h.delivered(), n, "all delivered by the chip");
        assert!(!h.is_armed(), "disarmed when idle");
    }
    let st: u64 = (0..4).map(|c| d.stats(c).unwrap().completions).sum();
    assert_eq!(st, total);
}

fn retarget_stream(remapping: bool, mode: VectorMode) {
    let m = if mode == VectorMode::Posted {
        Machine::with_posting(4)
    } else {
        Machine::new(4, remapping)
    };
    let d = domain(&m, mode);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let mut h = c.allocate(&client(9), 0, s.clone()).unwrap();
    let bystanders: Vec<ImsHandle> = (0..4)
        .map(|cpu| c.allocate(&client(10), cpu, SoftSink::new()).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (armer, index) = (h.armer(), h.index());
    let done = Arc::new(AtomicU64::new(0));
    // Submit and complete continuously from another thread (the device and the submitter
    // in one loop: arm, count, write the record, send the message).
    let stream = {
        let (ims, s, stop, done) = (ims.clone(), s.clone(), stop.clone(), done.clone());
        thread::spawn(move || {
            while !stop.load(SeqCst) {
                submit(&armer, &s).unwrap();
                complete(&ims, &s, index, 9);
                let n = done.fetch_add(1, SeqCst) + 1;
                // Back-pressure, as a device's queue depth gives: without it the fake CPU
                // that services this stream's interrupts never gets out of its handler.
                while s.claimed() + 64 < n && !stop.load(SeqCst) {
                    thread::yield_now();
                }
            }
        })
    };
    let mut moves = 0;
    while moves < 300 || done.load(SeqCst) < 20_000 {
        // Let the stream make progress at every position (the host may starve a thread):
        // a stall is a minute without a single completion, not a slow host.
        let mark = done.load(SeqCst);
        let (mut seen, mut t0) = (mark, Instant::now());
        while done.load(SeqCst) < mark + 20 {
            let now = done.load(SeqCst);
            if now != seen {
                (seen, t0) = (now, Instant::now());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "stream stalled");
            thread::yield_now();
        }
        let to = (h.cpu() + 1 + moves % 3) % 4;
        h.retarget(to).unwrap();
        assert_eq!(h.cpu(), to);
        if moves % 50 == 0 {
            h.mask().unwrap();
            h.unmask().unwrap();
        }
        moves += 1;
    }
    stop.store(true, SeqCst);
    stream.join().unwrap();
    let n = s.submitted.load(SeqCst);
    // Anything still undelivered would be a lost interrupt: no final poll here.
    s.assert_exactly_once(n);
    assert_eq!(h.delivered(), n);
    let cpus_seen: std::collections::BTreeSet<_> = s.deliveries().iter().map(|d| d.1).collect();
    assert!(
        cpus_seen.len() >= 4,
        "deliveries on every CPU: {cpus_seen:?}"
    );
    assert_eq!(m.ir_faults.load(SeqCst), 0);
    match mode {
        VectorMode::Shared | VectorMode::Posted => assert_eq!(d.vectors_used(), 4),
        VectorMode::PerHandle => assert_eq!(d.vectors_used(), 5, "h + 4 bystanders"),
    }
    drop(bystanders);
    h.release().unwrap();
    assert_eq!(m.irtes_used(), 0);
}

#[test]
fn retarget_under_a_stream_loses_and_duplicates_nothing() {
    retarget_stream(true, VectorMode::Shared);
}

#[test]
fn retarget_without_remapping_rewrites_the_entry() {
    retarget_stream(false, VectorMode::Shared);
}

#[test]
fn retarget_in_posted_mode() {
    retarget_stream(true, VectorMode::Posted);
}

#[test]
fn retarget_in_per_handle_mode() {
    retarget_stream(true, VectorMode::PerHandle);
}

#[test]
fn retarget_failure_changes_nothing() {
    let m = Machine::new(2, true);
    let d = ImsDomain::new(
        m.clone(),
        DomainConfig {
            max_handles_per_cpu: 1,
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let mut h = c.allocate(&client(1), 0, s.clone()).unwrap();
    let _full = c.allocate(&client(2), 1, SoftSink::new()).unwrap();
    assert_eq!(
        h.retarget(1).unwrap_err(),
        ImsError::CpuFull {
            cpu: 1,
            capacity: 1
        }
    );
    assert_eq!(h.cpu(), 0);
    assert_eq!(m.irte(h.route().id).unwrap().cpu, 0);
    submit(&h.armer(), &s).unwrap();
    complete(&ims, &s, h.index(), 1);
    assert_eq!(s.deliveries(), vec![(0, Some(0))]);
}

#[test]
fn two_devices_share_one_vector_per_cpu() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let (i0, i1) = (SoftIms::new(&m, 0x100, 256), SoftIms::new(&m, 0x200, 256));
    let c0 = chip(&d, &i0, 64);
    let c1 = d
        .register(i1.clone(), ChipOptions::new("soft1", 0x200))
        .unwrap();
    assert_ne!(c0.id(), c1.id());
    let (s0, s1) = (SoftSink::new(), SoftSink::new());
    let h0 = c0.allocate(&client(4), 1, s0.clone()).unwrap();
    let h1 = c1.allocate(&client(4), 1, s1.clone()).unwrap();
    assert_eq!(h0.index(), h1.index(), "each device has its own table");
    assert_eq!(d.vectors_used(), 2);
    assert_eq!(m.vectors_owned(1, OWNER_SHARED), 1);
    submit(&h0.armer(), &s0).unwrap();
    submit(&h1.armer(), &s1).unwrap();
    complete(&i1, &s1, h1.index(), 4);
    assert_eq!((s0.delivered(), s1.delivered()), (0, 1));
    complete(&i0, &s0, h0.index(), 4);
    assert_eq!((s0.delivered(), s1.delivered()), (1, 1));
    // A message from device 1 with device 0's IRTE fails source validation.
    let r0 = h0.route();
    m.msi(0x200, r0.msg.addr, r0.msg.data);
    assert_eq!(m.ir_faults.load(SeqCst), 1);
}

#[test]
fn cost_counters_follow_the_armed_set() {
    let m = Machine::new(1, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 2048);
    let c = chip(&d, &ims, 4096);
    for armed in [1usize, 16, 256, 2048] {
        let sinks: Vec<Arc<SoftSink>> = (0..armed).map(|_| SoftSink::new()).collect();
        let hs: Vec<ImsHandle> = sinks
            .iter()
            .map(|s| c.allocate(&client(2), 0, s.clone()).unwrap())
            .collect();
        for (h, s) in hs.iter().zip(&sinks) {
            submit(&h.armer(), s).unwrap();
        }
        d.reset_stats();
        // One completion among `armed` armed handles.
        complete(&ims, &sinks[armed / 2], hs[armed / 2].index(), 2);
        let st = d.stats(0).unwrap();
        assert_eq!((st.interrupts, st.completions), (1, 1));
        assert_eq!(st.polls, armed as u64, "every armed handle is polled once");
        assert_eq!(st.empty_polls, armed as u64 - 1);
        let words = armed.div_ceil(64) as u64;
        assert_eq!(
            st.words_scanned,
            2 + words,
            "2 summary words + non-zero slot words"
        );
        drop(hs);
    }
}

/// The race the re-poll exists for: the record is written and the message goes out through
/// the old route, but reaches the old CPU only after the handle left it.
#[test]
fn retarget_delivers_a_completion_whose_interrupt_went_to_the_old_cpu() {
    for mode in [VectorMode::Shared, VectorMode::PerHandle] {
        let m = Machine::new(2, true);
        let d = domain(&m, mode);
        let ims = SoftIms::new(&m, SID, 256);
        let c = chip(&d, &ims, 64);
        let s = SoftSink::new();
        let mut h = c.allocate(&client(1), 0, s.clone()).unwrap();
        let old_vector = h.vector();
        submit(&h.armer(), &s).unwrap();
        s.completed.fetch_add(1, SeqCst); // record written; message in flight to CPU 0
        h.retarget(1).unwrap();
        assert_eq!(
            s.deliveries(),
            vec![(0, Some(1))],
            "{mode:?}: re-polled on the new CPU"
        );
        m.raise(0, old_vector); // the late message
        assert_eq!(s.delivered(), 1, "{mode:?}: not delivered twice");
        // Later completions go to the new CPU.
        submit(&h.armer(), &s).unwrap();
        complete(&ims, &s, h.index(), 1);
        assert_eq!(s.deliveries()[1], (1, Some(1)));
    }
}

/// A sink that runs a hook once, right after it answered "nothing outstanding": the exact
/// moment where a submission racing with the handler's disarm would be lost without the
/// handler's second look.
struct RacySink {
    inner: Arc<SoftSink>,
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ims::CompletionSink for RacySink {
    fn poll(&self, delivered: &std::sync::atomic::AtomicU64) -> u32 {
        self.inner.poll(delivered)
    }
    fn outstanding(&self) -> bool {
        let r = self.inner.outstanding();
        if !r && let Some(f) = self.hook.lock().unwrap().take() {
            f();
        }
        r
    }
}

#[test]
fn a_submission_racing_with_disarm_is_not_lost() {
    let m = Machine::new(1, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let racy = Arc::new(RacySink {
        inner: s.clone(),
        hook: std::sync::Mutex::new(None),
    });
    let h = c.allocate(&client(1), 0, racy.clone()).unwrap();
    let (armer, index) = (h.armer(), h.index());
    submit(&armer, &s).unwrap();
    {
        // Runs inside the handler, between its "idle?" check and its clearing the bit: a new
        // submission arms, and the device completes it (its interrupt stays in the IRR
        // because the handler is running).
        let (ims, s) = (ims.clone(), s.clone());
        *racy.hook.lock().unwrap() = Some(Box::new(move || {
            submit(&armer, &s).unwrap();
            complete(&ims, &s, index, 1);
        }));
    }
    complete(&ims, &s, index, 1);
    assert!(racy.hook.lock().unwrap().is_none(), "the race was staged");
    s.assert_exactly_once(2);
    assert_eq!(h.delivered(), 2);
    assert!(!h.is_armed());
}

/// The same race one step earlier: the submitter armed but has not yet made the sink count
/// its descriptor when the handler decides the handle is idle. The arming count keeps it
/// armed.
#[test]
fn an_arming_before_the_sink_counts_is_not_lost() {
    let m = Machine::new(1, true);
    // The leaked arming makes release wait for it: keep that wait short.
    let d = ImsDomain::new(
        m.clone(),
        DomainConfig {
            call_timeout_ns: 20_000_000,
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let ims = SoftIms::new(&m, SID, 256);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let racy = Arc::new(RacySink {
        inner: s.clone(),
        hook: std::sync::Mutex::new(None),
    });
    let h = c.allocate(&client(1), 0, racy.clone()).unwrap();
    let (armer, index) = (h.armer(), h.index());
    submit(&armer, &s).unwrap();
    {
        let armer = armer.clone();
        *racy.hook.lock().unwrap() = Some(Box::new(move || {
            // Armed, submit call still in progress (the guard is never dropped here).
            std::mem::forget(armer.arm().unwrap());
        }));
    }
    complete(&ims, &s, index, 1);
    assert!(racy.hook.lock().unwrap().is_none(), "the race was staged");
    // The submit call now counts the descriptor and the device completes it.
    s.submitted.fetch_add(1, SeqCst);
    complete(&ims, &s, index, 1);
    s.assert_exactly_once(2);
}

/// A device reset and the chip's restore (halt recovery) run between an allocation's entry
/// programming and the handle going live: the new entry must come out programmed anyway.
#[test]
fn restore_during_an_allocation_covers_the_new_entry() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 8);
    let c = chip(&d, &ims, 64);
    let s0 = SoftSink::new();
    let h0 = c.allocate(&client(1), 0, s0.clone()).unwrap();
    let (ims2, c2) = (ims.clone(), c.clone());
    *ims.after_program.lock().unwrap() = Some(Box::new(move || {
        ims2.reset();
        c2.restore().expect("restore");
    }));
    let s1 = SoftSink::new();
    let h1 = c.allocate(&client(2), 1, s1.clone()).unwrap();
    assert!(ims.after_program.lock().unwrap().is_none(), "the reset ran");
    for (h, pasid) in [(&h0, 1), (&h1, 2)] {
        let e = ims.entry(h.index());
        assert_eq!(e.pasid, Some(pasid), "entry {} bound", h.index());
        assert_eq!(e.msg, h.route().msg, "entry {} message", h.index());
        assert!(!e.masked, "entry {} unmasked", h.index());
    }
    submit(&h1.armer(), &s1).unwrap();
    complete(&ims, &s1, h1.index(), 2);
    s1.assert_exactly_once(1);
}

/// Runs `round` (which returns how many times it saw a bad entry) at least `rounds` times
/// while another thread keeps calling `chip.restore()`, until that thread made at least 1000
/// passes (however long the host takes; a minute without a pass is a hang).
/// Returns (bad sightings, rounds, restore passes).
fn race_with_restore(
    chip: &ImsChip,
    rounds: u32,
    mut round: impl FnMut() -> u32,
) -> (u32, u32, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let restorer = {
        let (c, stop, passes) = (chip.clone(), stop.clone(), passes.clone());
        thread::spawn(move || {
            while !stop.load(SeqCst) {
                c.restore().expect("restore");
                passes.fetch_add(1, SeqCst);
            }
        })
    };
    let (mut bad, mut done) = (0, 0);
    let (mut seen, mut t0) = (0, Instant::now());
    while (done < rounds || passes.load(SeqCst) < 1000) && t0.elapsed() < Duration::from_secs(60) {
        bad += round();
        done += 1;
        let p = passes.load(SeqCst);
        if p != seen {
            (seen, t0) = (p, Instant::now());
        }
    }
    stop.store(true, SeqCst);
    restorer.join().unwrap();
    let restores = passes.load(SeqCst);
    assert!(restores >= 1000, "restore ran only {restores} times");
    (bad, done, restores)
}

/// Runs `op` on another thread from inside a storage hook of a restore pass and gives it
/// up to 500 ms: with the entry writes serialised, `op` waits for the pass to finish (the
/// wait times out and the pass goes on); without, it lands in the middle of the pass.
fn op_inside_restore(op: impl FnOnce() + Send + 'static) -> impl FnOnce() + Send + 'static {
    move || {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            op();
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_millis(500));
    }
}

/// The owner masks the handle just as a restore pass is about to unmask its entry (the
/// handle was unmasked when the pass looked): the entry must end up masked.
#[test]
fn mask_during_a_restore_pass_is_not_undone() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 8);
    let c = chip(&d, &ims, 64);
    let h = Arc::new(std::sync::Mutex::new(
        c.allocate(&client(3), 1, SoftSink::new()).unwrap(),
    ));
    let idx = h.lock().unwrap().index();
    let h2 = h.clone();
    *ims.before_unmask.lock().unwrap() = Some(Box::new(op_inside_restore(move || {
        h2.lock().unwrap().mask().unwrap();
    })));
    assert_eq!(c.restore().unwrap(), 1);
    // The mask finishes (at the latest) once the pass let go of the entry.
    let h = h.lock().unwrap();
    assert!(h.is_masked());
    assert!(
        ims.entry(idx).masked,
        "the restore pass unmasked a masked handle"
    );
}

/// Without interrupt remapping a retarget rewrites the message just as a restore pass is
/// about to program the entry with the message it read: the entry must end up with the
/// new one.
#[test]
fn retarget_during_a_restore_pass_is_not_undone() {
    let m = Machine::new(2, false);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 8);
    let c = chip(&d, &ims, 64);
    let h = Arc::new(std::sync::Mutex::new(
        c.allocate(&client(4), 0, SoftSink::new()).unwrap(),
    ));
    let idx = h.lock().unwrap().index();
    let h2 = h.clone();
    *ims.before_program.lock().unwrap() = Some(Box::new(op_inside_restore(move || {
        h2.lock().unwrap().retarget(1).unwrap();
    })));
    assert_eq!(c.restore().unwrap(), 1);
    let h = h.lock().unwrap();
    assert_eq!(h.cpu(), 1);
    assert_eq!(
        ims.entry(idx).msg,
        h.route().msg,
        "the restore pass put the old CPU's message back"
    );
}

/// Halt recovery restores the entries while the owner masks and unmasks: once `mask`
/// returned the entry stays masked until `unmask`, whatever restore does meanwhile.
#[test]
fn restore_racing_with_mask_keeps_a_masked_entry_masked() {
    let m = Machine::new(2, true);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 8);
    let c = chip(&d, &ims, 64);
    let mut h = c.allocate(&client(3), 1, SoftSink::new()).unwrap();
    let idx = h.index();
    let (violations, rounds, restores) = race_with_restore(&c, 3000, || {
        h.mask().unwrap();
        let unmasked = (0..100).filter(|_| !ims.entry(idx).masked).count() as u32;
        h.unmask().unwrap();
        unmasked
    });
    assert_eq!(
        violations, 0,
        "a masked handle's entry was unmasked {violations} times ({rounds} rounds, {restores} restores)"
    );
    assert_eq!(ims.entry(idx).pasid, Some(3));
}

/// Without interrupt remapping a retarget rewrites the entry's message: a restore running
/// meanwhile must not put the old CPU's message back.
#[test]
fn restore_racing_with_retarget_keeps_the_current_message() {
    let m = Machine::new(2, false);
    let d = domain(&m, VectorMode::Shared);
    let ims = SoftIms::new(&m, SID, 8);
    let c = chip(&d, &ims, 64);
    let s = SoftSink::new();
    let mut h = c.allocate(&client(4), 0, s.clone()).unwrap();
    let idx = h.index();
    let (stale, rounds, restores) = race_with_restore(&c, 2000, || {
        h.retarget(1 - h.cpu()).unwrap();
        let want = h.route().msg;
        (0..20).filter(|_| ims.entry(idx).msg != want).count() as u32
    });
    assert_eq!(
        stale, 0,
        "the entry held a stale message {stale} times ({rounds} retargets, {restores} restores)"
    );
    submit(&h.armer(), &s).unwrap();
    complete(&ims, &s, idx, 4);
    s.assert_exactly_once(1);
}
