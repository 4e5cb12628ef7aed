//! The demultiplexer's watch check against the software IMS device with DSA-like records:
//! only handles with a written record take the full path; completions that race with the
//! submit call, out-of-order completions within one handle, masking and disarming.

use crate::machine::Machine;
use crate::soft::{RecordSink, SID, SoftIms, client};
use ims::{ChipOptions, DomainConfig, ImsChip, ImsDomain, ImsHandle, VectorMode};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn setup(cpus: usize, entries: u32) -> (Arc<Machine>, ImsDomain, Arc<SoftIms>, ImsChip) {
    let m = Machine::new(cpus, true);
    let d = ImsDomain::new(
        m.clone(),
        DomainConfig {
            mode: VectorMode::Shared,
            ..DomainConfig::default()
        },
    )
    .expect("domain");
    let ims = SoftIms::new(&m, SID, entries);
    let c = d
        .register(
            ims.clone(),
            ChipOptions {
                pasid_quota: entries,
                ..ChipOptions::new("soft0", SID)
            },
        )
        .expect("register");
    (m, d, ims, c)
}

const PASID: u32 = 7;

#[test]
fn one_completion_among_watched_handles_polls_only_its_handle() {
    for armed in [1usize, 16, 256, 2048] {
        let (_m, d, ims, c) = setup(1, 2048);
        let sinks: Vec<Arc<RecordSink>> = (0..armed).map(|_| RecordSink::new(4)).collect();
        let hs: Vec<ImsHandle> = sinks
            .iter()
            .map(|s| c.allocate(&client(PASID), 0, s.clone()).unwrap())
            .collect();
        // Every other handle waits for a submitted record, the others are armed by a
        // submission still in progress (nothing watched yet).
        let armers: Vec<_> = hs.iter().map(|h| h.armer()).collect();
        let mut guards = Vec::new();
        let mut records = Vec::new();
        for (k, (a, s)) in armers.iter().zip(&sinks).enumerate() {
            if k % 2 == 0 {
                records.push(Some(s.submit(a).unwrap()));
            } else {
                guards.push(a.arm().unwrap());
                records.push(None);
            }
        }
        assert_eq!(d.cpu_report(0).unwrap().armed, armed as u32);
        d.reset_stats();
        let k = (armed / 2) & !1; // a handle with a record
        let r = records[k].unwrap();
        assert!(sinks[k].complete(&ims, hs[k].index(), PASID, r));
        let st = d.stats(0).unwrap();
        assert_eq!((st.interrupts, st.completions), (1, 1), "A = {armed}");
        assert_eq!(
            st.polls, 1,
            "A = {armed}: only the completed handle is polled"
        );
        assert_eq!(sinks[k].delivered(), vec![r]);
        for (j, s) in sinks.iter().enumerate() {
            let polls = s.polls.load(SeqCst);
            assert_eq!(
                polls,
                u64::from(j == k),
                "A = {armed}: sink {j} polled {polls}"
            );
        }
        assert_eq!(
            d.cpu_report(0).unwrap().armed,
            armed as u32 - 1,
            "A = {armed}: the delivered handle is disarmed, the others stay armed"
        );
        drop(guards);
    }
}

/// A handle with several records outstanding that complete in any order: each completion
/// is noticed whichever record it is (every outstanding record is watched, not one).
#[test]
fn out_of_order_completions_within_one_handle() {
    let (_m, d, ims, c) = setup(1, 16);
    let s = RecordSink::new(8);
    let h = c.allocate(&client(PASID), 0, s.clone()).unwrap();
    let other = RecordSink::new(2);
    let ho = c.allocate(&client(PASID), 0, other.clone()).unwrap();
    let a = h.armer();
    let r: Vec<usize> = (0..3).map(|_| s.submit(&a).unwrap()).collect();
    // The youngest completes first.
    assert!(s.complete(&ims, h.index(), PASID, r[2]));
    assert_eq!(s.delivered(), vec![r[2]]);
    assert!(h.is_armed(), "two records still outstanding");
    // Another handle's interrupt: this one, with nothing written, is not polled.
    let polls = s.polls.load(SeqCst);
    let ro = other.submit(&ho.armer()).unwrap();
    assert!(other.complete(&ims, ho.index(), PASID, ro));
    assert_eq!(s.polls.load(SeqCst), polls, "nothing written: skipped");
    // The oldest.
    assert!(s.complete(&ims, h.index(), PASID, r[0]));
    assert_eq!(s.delivered(), vec![r[2], r[0]]);
    // The middle one is written but its interrupt is late: a pass for another handle's
    // interrupt already sees the written record and delivers it.
    s.write(r[1]);
    let ro = other.submit(&ho.armer()).unwrap();
    assert!(other.complete(&ims, ho.index(), PASID, ro));
    assert_eq!(s.delivered(), vec![r[2], r[0], r[1]]);
    assert!(!h.is_armed(), "nothing left: disarmed");
    // Its own interrupt now finds nothing: no second delivery.
    assert!(ims.fire(h.index(), PASID));
    assert_eq!(s.delivered(), vec![r[2], r[0], r[1]]);
    let st = d.stats(0).unwrap();
    assert_eq!(st.completions, 5);
}

/// The race the watch protocol exists for: the device writes the record and raises the
/// interrupt while the submit call is still running (the record is watched, the handle
/// armed): that interrupt delivers it.
#[test]
fn completion_during_the_submit_call_is_delivered_by_its_interrupt() {
    let (_m, d, ims, c) = setup(1, 16);
    let s = RecordSink::new(4);
    let h = c.allocate(&client(PASID), 0, s.clone()).unwrap();
    // Other armed handles with nothing written must not hide it.
    let idle = RecordSink::new(4);
    let hi = c.allocate(&client(PASID), 0, idle.clone()).unwrap();
    let _waiting = idle.submit(&hi.armer()).unwrap();
    let r = s
        .submit_with(&h.armer(), |i| {
            assert!(s.complete(&ims, h.index(), PASID, i));
            assert_eq!(s.delivered(), vec![i], "delivered inside the submit call");
        })
        .unwrap();
    assert_eq!(s.delivered(), vec![r]);
    let st = d.stats(0).unwrap();
    assert_eq!((st.interrupts, st.completions, st.polls), (1, 1, 1));
    assert_eq!(idle.polls.load(SeqCst), 0);
}

/// A handle whose work was all delivered elsewhere (the owner polled it in thread context)
/// is disarmed by the next pass; one armed by a submission in progress stays armed until
/// that submission ends.
#[test]
fn idle_handles_are_disarmed_once_nothing_is_left() {
    let (_m, d, ims, c) = setup(1, 16);
    let s = RecordSink::new(4);
    let h = c.allocate(&client(PASID), 0, s.clone()).unwrap();
    let g_sink = RecordSink::new(4);
    let hg = c.allocate(&client(PASID), 0, g_sink.clone()).unwrap();
    let other = RecordSink::new(4);
    let ho = c.allocate(&client(PASID), 0, other.clone()).unwrap();
    let r = s.submit(&h.armer()).unwrap();
    let ga = hg.armer();
    let guard = ga.arm().unwrap();
    s.write(r);
    let owner_count = std::sync::atomic::AtomicU64::new(0);
    assert_eq!(
        ims::CompletionSink::poll(&*s, &owner_count),
        1,
        "the owner reaps it"
    );
    assert_eq!(h.delivered(), 0, "not through the chip");
    assert_eq!(d.cpu_report(0).unwrap().armed, 2);
    let ro = other.submit(&ho.armer()).unwrap();
    assert!(other.complete(&ims, ho.index(), PASID, ro));
    assert!(!h.is_armed(), "nothing left to wait for: disarmed");
    assert!(hg.is_armed(), "a submission in progress keeps it armed");
    assert_eq!(g_sink.polls.load(SeqCst), 0, "and costs no poll");
    drop(guard);
    let ro = other.submit(&ho.armer()).unwrap();
    assert!(other.complete(&ims, ho.index(), PASID, ro));
    assert!(!hg.is_armed());
    assert_eq!(d.cpu_report(0).unwrap().armed, 0);
    assert_eq!(s.delivered(), vec![r]);
}

#[test]
fn masked_watched_handle_delivers_after_unmask() {
    let (_m, d, ims, c) = setup(1, 16);
    let s = RecordSink::new(4);
    let mut h = c.allocate(&client(PASID), 0, s.clone()).unwrap();
    let other = RecordSink::new(4);
    let ho = c.allocate(&client(PASID), 0, other.clone()).unwrap();
    let r = s.submit(&h.armer()).unwrap();
    h.mask().unwrap();
    assert!(s.complete(&ims, h.index(), PASID, r));
    // A pass that sees the written record (another handle's interrupt) leaves it alone.
    let ro = other.submit(&ho.armer()).unwrap();
    assert!(other.complete(&ims, ho.index(), PASID, ro));
    assert!(s.delivered().is_empty(), "no callback while masked");
    // Unmasking sends the pending message: its pass delivers (the re-poll then finds none).
    assert_eq!(h.unmask().unwrap(), 0);
    assert_eq!(s.delivered(), vec![r]);
    // A late duplicate of its message: nothing more to deliver.
    assert!(ims.fire(h.index(), PASID));
    assert_eq!(s.delivered(), vec![r], "exactly once");
    assert_eq!(d.stats(0).unwrap().completions, 2);
}

/// Many handles on several CPUs, each with several records in flight that a device thread
/// completes in random order while clients keep submitting: every completion is delivered
/// exactly once, and by the interrupt passes alone (nobody else polls).
#[test]
fn threaded_out_of_order_completions_exactly_once() {
    let cpus = 3;
    let (_m, d, ims, c) = setup(cpus, 64);
    let per_client = 300usize;
    let clients = 6usize;
    // (client, record) waiting for the device.
    let queue: Arc<Mutex<Vec<(usize, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let sinks: Vec<Arc<RecordSink>> = (0..clients).map(|_| RecordSink::new(8)).collect();
    let hs: Vec<ImsHandle> = sinks
        .iter()
        .enumerate()
        .map(|(k, s)| c.allocate(&client(PASID), k % cpus, s.clone()).unwrap())
        .collect();
    let targets: Vec<u32> = hs.iter().map(|h| h.index()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let device = {
        let (queue, sinks, ims, done) = (queue.clone(), sinks.clone(), ims.clone(), done.clone());
        thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            loop {
                let next = {
                    let mut q = queue.lock().unwrap();
                    if q.is_empty() {
                        None
                    } else {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let n = q.len();
                        Some(q.swap_remove(seed as usize % n))
                    }
                };
                match next {
                    Some((k, r)) => assert!(sinks[k].complete(&ims, targets[k], PASID, r)),
                    None if done.load(SeqCst) => return,
                    None => thread::yield_now(),
                }
            }
        })
    };
    let submitters: Vec<_> = (0..clients)
        .map(|k| {
            let (s, a, queue) = (sinks[k].clone(), hs[k].armer(), queue.clone());
            thread::spawn(move || {
                for submitted in 0..per_client {
                    // At most 6 of the 8 records in flight.
                    while submitted - s.log.lock().unwrap().len() >= 6 {
                        thread::yield_now();
                    }
                    let r = s.submit(&a).unwrap();
                    queue.lock().unwrap().push((k, r));
                }
            })
        })
        .collect();
    for t in submitters {
        t.join().unwrap();
    }
    let t0 = Instant::now();
    while sinks
        .iter()
        .map(|s| s.log.lock().unwrap().len())
        .sum::<usize>()
        < clients * per_client
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "completions not delivered (lost wakeup?)"
        );
        thread::sleep(Duration::from_millis(1));
    }
    done.store(true, SeqCst);
    device.join().unwrap();
    for s in &sinks {
        assert_eq!(s.log.lock().unwrap().len(), per_client, "exactly once");
    }
    let completions: u64 = (0..cpus).map(|c| d.stats(c).unwrap().completions).sum();
    assert_eq!(
        completions,
        (clients * per_client) as u64,
        "all by the chip"
    );
}
