//! The IMS irqchip on the real path: the system domain's shared vectors, DSA IMS entries
//! programmed through the device's BAR0, descriptors through the IMS portals of the patched
//! QEMU's `intel-dsa` (ENQCMDS to the shared WQ, client PASIDs with first-stage tables),
//! completion messages through intel-iommu interrupt remapping (one IRTE per handle, source
//! ID checked) to the shared vector, demultiplexed to the clients' callbacks. Tests skip
//! without a DSA device; the host boot tests (`tests/tests/ims.rs`) run them with devices and
//! check that they did not skip.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use core::time::Duration;

use dsa::{Notify, OpError, Output, SubmitterOptions, Work};
use dsa_fault_inject as fi;
use dsa_spec::WqMode;
use dsa_spec::tables::ImsCtrl;
use ims::{ImsError, ImsHandle, OWNER_PER_HANDLE, VectorMode};

use crate::arch::{percpu, smp};
use crate::dsa::{DmaBuffer, DsaDevice};
use crate::ims::{self as kims, Client};
use crate::ktest;
use crate::ktest::Outcome;

const WAIT: Duration = super::HANG;
/// Bound on a stream's lack of progress (no completion, no confirmed retarget).
const PROGRESS: Duration = super::HANG;
/// [`WAIT`] for the driver's own bounded waits.
const WAIT_NS: u64 = WAIT.as_nanos() as u64;

/// A device clients can use with IMS: a shared WQ the CPU can feed, an IMS table, the
/// system domain.
fn ims_device() -> Result<&'static DsaDevice, Outcome> {
    let devs = crate::dsa::devices();
    if devs.is_empty() {
        return Err(ktest::skip(match crate::dsa::init_error() {
            Some(e) => format!("no DSA device ({e})"),
            None => String::from("no DSA device (QEMU: --dsa 1)"),
        }));
    }
    if !crate::iommu::is_enabled() {
        return Err(ktest::skip("client PASIDs need the IOMMU"));
    }
    if let Err(e) = kims::system() {
        return Err(Outcome::Fail(format!("{e}")));
    }
    devs.iter()
        .find(|d| {
            d.has_enqcmds()
                && d.wq_id(WqMode::Shared).is_some()
                && d.driver().caps().ims_entries > 0
        })
        .ok_or_else(|| ktest::skip("no device with IMS and a shared WQ"))
}

fn small() -> SubmitterOptions {
    SubmitterOptions {
        slots: 4,
        max_batch: 0,
        timeout_ns: WAIT_NS,
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    if crate::time::wait_until(WAIT, || f().then_some(())).is_err() {
        panic!("timed out waiting for {what}");
    }
}

/// A callback that counts into `n`.
fn count_into(n: &Arc<AtomicUsize>) -> impl FnOnce(Result<Output, OpError>) + Send + 'static {
    let n = n.clone();
    move |r| {
        assert_eq!(r, Ok(Output::Done), "an IMS-delivered operation failed");
        n.fetch_add(1, Ordering::AcqRel);
    }
}

/// Allocated-vector counts of every CPU (a refused allocation must not change them).
fn vector_counts() -> Vec<usize> {
    (0..percpu::cpu_count())
        .map(|c| crate::irq::report(c).map_or(usize::MAX, |r| r.allocated))
        .collect()
}

fn print_domain_report(d: &ims::ImsDomain) {
    for r in d.report() {
        crate::println!(
            "ktest-info: ims cpu {}: {} vector(s), {} handle(s), {} interrupt(s), {} completion(s)",
            r.cpu,
            r.vectors,
            r.handles,
            r.stats.interrupts,
            r.stats.completions
        );
    }
}

ktest!(
    fn all_ims_entries_across_all_cpus_use_one_vector_per_cpu() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let domain = kims::system().unwrap();
        let ims = kims::device_ims(d).unwrap();
        let ncpu = percpu::cpu_count();
        let entries = ims.chip().entries();
        assert_eq!(entries, d.driver().caps().ims_entries);
        assert_eq!(ims.chip().free_entries(), entries, "a clean table to start");
        let quota = ims.chip().quota(u32::MAX);
        let vectors_before = vector_counts();
        let routes_before = kims::platform().live_routes();
        // As many client PASIDs as the quota needs to cover the table, each with one
        // submitter; handle i targets CPU i mod n.
        let nclients = entries.div_ceil(quota) as usize;
        let mut clients = Vec::new();
        for _ in 0..nclients {
            let c = Client::with_new_space().unwrap();
            let s = c.submitter(d, small()).unwrap();
            clients.push((c, s));
        }
        let t0 = crate::time::now_ns();
        let mut handles: Vec<(usize, ImsHandle)> = Vec::with_capacity(entries as usize);
        for i in 0..entries as usize {
            let k = i / quota as usize;
            let (c, s) = &clients[k];
            let h = c
                .allocate(d, i % ncpu, s)
                .unwrap_or_else(|e| panic!("handle {i} (client {k}): {e}"));
            handles.push((k, h));
        }
        let alloc_ms = (crate::time::now_ns() - t0) / 1_000_000;
        assert_eq!(ims.chip().free_entries(), 0);
        assert_eq!(
            kims::platform().live_routes(),
            routes_before + entries as usize
        );
        // One interrupt-remapping entry per handle, each its own; the IMS entry holds the
        // remappable message naming it.
        let mut irtes: Vec<u16> = handles
            .iter()
            .map(|(_, h)| {
                let r = h.route();
                assert_eq!(r.msg.addr & 0xfff0_0010, 0xfee0_0010, "remappable format");
                kims::platform().irte_of(&r).expect("an IRTE")
            })
            .collect();
        irtes.sort_unstable();
        irtes.dedup();
        assert_eq!(irtes.len(), entries as usize, "one IRTE per handle");
        // Vectors used == number of CPUs: one shared vector per CPU, nothing else.
        assert_eq!(domain.vectors_used() as usize, ncpu);
        assert_eq!(
            vector_counts(),
            vectors_before,
            "no vector allocated for handles"
        );
        for cpu in 0..ncpu {
            let r = crate::irq::report(cpu).unwrap();
            assert_eq!(r.count_owned_by(domain.owner()), 1, "{r}");
            assert_eq!(r.count_owned_by(OWNER_PER_HANDLE), 0, "{r}");
            let rep = domain.cpu_report(cpu).unwrap();
            assert_eq!(rep.vectors, 1);
            let expect = (entries as usize + ncpu - 1 - cpu) / ncpu;
            assert_eq!(rep.handles as usize, expect, "handles on CPU {cpu}");
        }
        crate::irq::print_report();
        print_domain_report(domain);
        crate::println!(
            "ktest-info: {entries} IMS handles of dsa{} on {ncpu} CPU(s) for {nclients} PASIDs in {alloc_ms} ms; vectors used: {}",
            d.index,
            domain.vectors_used()
        );
        // Both limits refuse cleanly and take no vector: a PASID at its quota, and a new
        // PASID when the table is full.
        let (c0, s0) = &clients[0];
        match c0.allocate(d, 0, s0) {
            Err(kims::ClientError::Ims(ImsError::QuotaExceeded { pasid, quota: q })) => {
                assert_eq!((pasid, q), (c0.pasid(), quota))
            }
            other => panic!("a PASID at its quota: {other:?}"),
        }
        let late = Client::with_new_space().unwrap();
        let ls = late.submitter(d, small()).unwrap();
        match late.allocate(d, 0, &ls) {
            Err(kims::ClientError::Ims(ImsError::TableFull { entries: e })) => {
                assert_eq!(e, entries)
            }
            other => panic!("a full table: {other:?}"),
        }
        assert_eq!(vector_counts(), vectors_before);
        // Every CPU's handles deliver: one operation through the last handle of each CPU,
        // the callback runs on that CPU.
        let ims2 = ims.clone();
        for cpu in 0..ncpu {
            let (k, h) = handles
                .iter()
                .rev()
                .find(|(_, h)| h.cpu() == cpu)
                .expect("a handle on every CPU");
            let on = Arc::new(AtomicUsize::new(usize::MAX));
            let o = on.clone();
            let (_, s) = &mut clients[*k];
            ims2.submit(s, &h.armer(), &Work::noop(), move |r| {
                assert_eq!(r, Ok(Output::Done));
                o.store(percpu::current_index(), Ordering::Release);
            })
            .unwrap();
            wait_for("a completion callback", || {
                on.load(Ordering::Acquire) != usize::MAX
            });
            assert_eq!(on.load(Ordering::Acquire), cpu, "callback CPU");
            let ent = ims.read_entry(h).unwrap();
            assert_eq!(
                ent.ctrl,
                ImsCtrl::PASID_EN.with_pasid(clients[*k].0.pasid())
            );
        }
        let t0 = crate::time::now_ns();
        for (_, h) in handles {
            h.release().unwrap();
        }
        crate::println!(
            "ktest-info: {entries} handles released in {} ms",
            (crate::time::now_ns() - t0) / 1_000_000
        );
        assert_eq!(ims.chip().free_entries(), entries);
        assert_eq!(ims.chip().leaked_entries(), 0);
        assert_eq!(kims::platform().live_routes(), routes_before);
        assert_eq!(vector_counts(), vectors_before);
        Outcome::Pass
    }
);

ktest!(
    fn quota_exhaustion_refuses_one_pasid_and_takes_no_vector() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let ims = kims::device_ims(d).unwrap();
        let a = Client::with_new_space().unwrap();
        let b = Client::with_new_space().unwrap();
        ims.chip().set_quota(a.pasid(), Some(4));
        let mut sa = a.submitter(d, small()).unwrap();
        let sb = b.submitter(d, small()).unwrap();
        let ncpu = percpu::cpu_count();
        let mut ha: Vec<ImsHandle> = (0..4)
            .map(|i| a.allocate(d, i % ncpu, &sa).unwrap())
            .collect();
        let vectors = vector_counts();
        let routes = kims::platform().live_routes();
        let free = ims.chip().free_entries();
        for cpu in 0..ncpu {
            match a.allocate(d, cpu, &sa) {
                Err(kims::ClientError::Ims(ImsError::QuotaExceeded { pasid, quota })) => {
                    assert_eq!((pasid, quota), (a.pasid(), 4))
                }
                other => panic!("PASID A over its quota: {other:?}"),
            }
        }
        // Nothing was taken by the refusals.
        assert_eq!(vector_counts(), vectors);
        assert_eq!(kims::platform().live_routes(), routes);
        assert_eq!(ims.chip().free_entries(), free);
        assert_eq!(ims.chip().usage(a.pasid()), 4);
        // Other PASIDs are unaffected.
        let hb: Vec<ImsHandle> = (0..ncpu).map(|c| b.allocate(d, c, &sb).unwrap()).collect();
        assert_eq!(ims.chip().usage(b.pasid()), ncpu as u32);
        // A's handles still work; releasing one gives A room for one more.
        let n = Arc::new(AtomicUsize::new(0));
        ims.submit(&mut sa, &ha[3].armer(), &Work::noop(), count_into(&n))
            .unwrap();
        wait_for("A's completion", || n.load(Ordering::Acquire) == 1);
        ha.pop().unwrap().release().unwrap();
        ha.push(a.allocate(d, 0, &sa).unwrap());
        ims.chip().set_quota(a.pasid(), None);
        drop(ha);
        drop(hb);
        assert_eq!(ims.chip().usage(a.pasid()), 0);
        Outcome::Pass
    }
);

ktest!(
    fn cross_pasid_handle_use_is_rejected_by_the_device() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let domain = kims::system().unwrap();
        let ncpu = percpu::cpu_count();
        let cpu_b = ncpu - 1;
        let a = Client::with_new_space().unwrap();
        let mut qa = a.queue(d, 0, small()).unwrap();
        let b = Client::with_new_space().unwrap();
        let mut qb = b
            .queue(
                d,
                cpu_b,
                SubmitterOptions {
                    max_batch: 8,
                    ..small()
                },
            )
            .unwrap();
        let vector_b = domain.shared_vector(cpu_b).unwrap();
        let b_calls = Arc::new(AtomicUsize::new(0));
        let irq_before = crate::irq::count(cpu_b, vector_b);
        let stats_before = domain.stats(cpu_b).unwrap();
        // The driver refuses to submit A's work with B's handle …
        let ims = qa.ims().clone();
        let b_armer = qb.handle().armer();
        assert_eq!(
            ims.submit(qa.submitter_mut(), &b_armer, &Work::noop(), |_| {}),
            Err(OpError::InterruptUnavailable(
                "the IMS handle is bound to another PASID"
            ))
        );
        // … and so does the device when A names it anyway: a descriptor of PASID A through
        // the IMS portal carrying B's handle completes with status 0x19 (invalid interrupt
        // handle) and raises nothing.
        let bh = qb.handle().device_handle() as u16;
        for _ in 0..4 {
            let t = qa
                .submitter_mut()
                .submit(&Work::noop(), Notify::Handle(bh))
                .unwrap();
            assert_eq!(
                qa.submitter_mut().wait(t, WAIT_NS),
                Err(OpError::Status { code: 0x19 })
            );
        }
        // Give a stray interrupt time to arrive before checking that none did.
        crate::time::delay_us(20_000);
        assert_eq!(b_calls.load(Ordering::Acquire), 0);
        assert_eq!(qb.handle().delivered(), 0);
        assert_eq!(
            crate::irq::count(cpu_b, vector_b),
            irq_before,
            "B's shared vector on CPU {cpu_b} fired"
        );
        assert_eq!(
            domain.stats(cpu_b).unwrap().interrupts,
            stats_before.interrupts
        );
        // A's own handle works, and so does B's for B.
        let a_calls = Arc::new(AtomicUsize::new(0));
        qa.submit(&Work::noop(), count_into(&a_calls)).unwrap();
        let bc = b_calls.clone();
        qb.submit_batch(&[Work::noop(), Work::noop()], move |r| {
            assert!(
                matches!(r, Ok(Output::Batch(ref v)) if v.iter().all(|m| m.is_ok())),
                "{r:?}"
            );
            bc.fetch_add(1, Ordering::AcqRel);
        })
        .unwrap();
        wait_for("both completions", || {
            a_calls.load(Ordering::Acquire) == 1 && b_calls.load(Ordering::Acquire) == 1
        });
        assert!(crate::irq::count(cpu_b, vector_b) > irq_before);
        qa.release().unwrap();
        qb.release().unwrap();
        Outcome::Pass
    }
);

ktest!(
    fn retargeting_under_a_stream_of_completions_loses_and_duplicates_none() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let ncpu = percpu::cpu_count();
        if ncpu < 2 {
            return ktest::skip("needs two CPUs");
        }
        let c = Client::with_new_space().unwrap();
        let Ok(q) = c.queue(
            d,
            0,
            SubmitterOptions {
                slots: 32,
                max_batch: 0,
                timeout_ns: WAIT_NS,
            },
        ) else {
            return Outcome::Fail("queue".into());
        };
        let ims = q.ims().clone();
        let armer = q.handle().armer();
        // Split the queue: the submitter stays here (the BSP streams), the handle moves to
        // the retargeting CPU (the last one), which moves it over every CPU: the BSP (its
        // calls run in its IPI handler), idle APs, and itself (inline).
        let (mut sub, handle) = q.into_parts();
        // The interleaving is made, not hoped for. The stream is cut into chunks and may
        // run into chunk k + 1 only once retarget k is confirmed: done, and followed by a
        // callback on its new CPU. While a retarget waits for that, the stream may run up to
        // SLACK operations beyond its chunk; each of them is submitted after the retarget
        // returned, so the first to complete confirms it (no deadlock). Since
        // CHUNK * MOVES + SLACK < OPS, all MOVES retargets happen before the stream ends,
        // each with stream operations before and after it, however fast the host is.
        const OPS: usize = 2000;
        const MOVES: usize = 60;
        const CHUNK: usize = OPS / (MOVES + 2);
        const SLACK: usize = 16;
        const _: () = assert!(CHUNK * MOVES + SLACK < OPS);
        let seen: Arc<Vec<AtomicU32>> = Arc::new((0..OPS).map(|_| AtomicU32::new(0)).collect());
        let on_cpu: Arc<Vec<AtomicU32>> = Arc::new((0..ncpu).map(|_| AtomicU32::new(0)).collect());
        let delivered = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(AtomicUsize::new(0));
        // Retargets done / confirmed by a callback on the new CPU.
        let moved = Arc::new(AtomicUsize::new(0));
        let confirmed = Arc::new(AtomicUsize::new(0));
        let mover = ncpu - 1;
        let job = {
            let (on_cpu, delivered, issued) = (on_cpu.clone(), delivered.clone(), issued.clone());
            let (moved, confirmed) = (moved.clone(), confirmed.clone());
            smp::spawn_on(mover, move || {
                let mut h = handle;
                let mut with_work_in_flight = 0u32;
                for k in 1..=MOVES {
                    let target = k % ncpu;
                    // An operation issued before the retarget ended and not delivered before
                    // it began was in flight during it (statistics only).
                    let delivered_before = delivered.load(Ordering::Acquire);
                    h.retarget(target).expect("retarget");
                    if issued.load(Ordering::Acquire) > delivered_before {
                        with_work_in_flight += 1;
                    }
                    // Counted before the stream may go on: every callback this waits for
                    // ran after the retarget returned.
                    let base = on_cpu[target].load(Ordering::Acquire);
                    moved.store(k, Ordering::Release);
                    if crate::time::wait_until(PROGRESS, || {
                        (on_cpu[target].load(Ordering::Acquire) > base).then_some(())
                    })
                    .is_err()
                    {
                        panic!("retarget {k}: no callback on CPU {target} after it");
                    }
                    confirmed.store(k, Ordering::Release);
                }
                (h, with_work_in_flight)
            })
            .unwrap()
        };
        let mut progress = (0usize, 0usize);
        let mut deadline = crate::time::Deadline::after(PROGRESS);
        // The oldest operation not yet delivered. The stream keeps fewer than 16 operations
        // after it (the ring has 32 slots): counting only the delivered ones is not enough,
        // because one old straggler plus later delivered slots can fill the ring, and then
        // the submitter delivers completions itself to free a slot (legitimate, exactly
        // once, but not through the chip, which this test counts).
        let mut oldest = 0usize;
        loop {
            while oldest < OPS && seen[oldest].load(Ordering::Acquire) != 0 {
                oldest += 1;
            }
            let done = delivered.load(Ordering::Acquire);
            if done == OPS {
                break;
            }
            let conf = confirmed.load(Ordering::Acquire);
            // A stall is a lack of progress, not a slow host.
            if (done, conf) != progress {
                progress = (done, conf);
                deadline = crate::time::Deadline::after(PROGRESS);
            }
            let n = issued.load(Ordering::Relaxed);
            assert!(
                !deadline.expired(),
                "stream stalled: {done} of {OPS} delivered, {n} issued, {conf} retargets confirmed"
            );
            let limit = if conf >= MOVES {
                OPS
            } else if moved.load(Ordering::Acquire) > conf {
                CHUNK * (conf + 1) + SLACK
            } else {
                CHUNK * (conf + 1)
            };
            if n < limit.min(OPS) && n - oldest < 16 {
                let (seen, on_cpu, delivered) = (seen.clone(), on_cpu.clone(), delivered.clone());
                match ims.submit(&mut sub, &armer, &Work::noop(), move |r| {
                    assert_eq!(r, Ok(Output::Done));
                    seen[n].fetch_add(1, Ordering::AcqRel);
                    on_cpu[percpu::current_index()].fetch_add(1, Ordering::AcqRel);
                    delivered.fetch_add(1, Ordering::AcqRel);
                }) {
                    Ok(()) => issued.store(n + 1, Ordering::Release),
                    Err(OpError::QueueFull | OpError::NoFreeSlot) => core::hint::spin_loop(),
                    Err(e) => panic!("submit {n}: {e}"),
                }
            } else {
                core::hint::spin_loop();
            }
        }
        // The stream ended after the last confirmation, so the mover is done.
        let (h, with_work_in_flight) = job.join(PROGRESS).unwrap();
        let through_chip = h.delivered() as usize;
        // After release no callback of the handle runs any more: a duplicate would have
        // shown up by now, however late the host let it run.
        h.release().unwrap();
        let dups: Vec<usize> = (0..OPS)
            .filter(|&i| seen[i].load(Ordering::Acquire) != 1)
            .collect();
        assert!(
            dups.is_empty(),
            "operations not delivered exactly once: {dups:?}"
        );
        assert_eq!(delivered.load(Ordering::Acquire), OPS);
        // Exactly once is the guarantee; *who* delivers is not: a ring's completions go to
        // whoever reaps first (`dsa::DsaIms::submit`), and besides the chip's passes a
        // submitter with a full ring or a sweep of the WQ's rings may take one (seen: 1999
        // and 1998 of 2000 through the chip, each operation still delivered once). The chip
        // counted no more than there were, and delivered on every CPU it was moved to (the
        // handshake above waited for a callback there after each retarget).
        assert!(through_chip <= OPS, "chip counted {through_chip} of {OPS}");
        if through_chip < OPS {
            log::info!(
                "{} of {OPS} completions delivered by another reaper than the chip",
                OPS - through_chip
            );
        }
        assert_eq!(confirmed.load(Ordering::Acquire), MOVES);
        let spread: Vec<u32> = on_cpu.iter().map(|a| a.load(Ordering::Acquire)).collect();
        crate::println!(
            "ktest-info: {OPS} completions during {MOVES} retargets ({with_work_in_flight} with work in flight), callbacks per CPU {spread:?}"
        );
        assert!(
            spread.iter().all(|&n| n > 0),
            "a CPU the handle visited delivered nothing: {spread:?}"
        );
        drop(sub);
        Outcome::Pass
    }
);

/// The model's fault-injection page (completion delays), if the device has it.
fn delay(d: &DsaDevice, us: u32) -> bool {
    if d.registers().read32(fi::FAULT_INJECT_BASE + fi::FI_MAGIC) != fi::FI_MAGIC_VALUE {
        return false;
    }
    d.registers()
        .write32(fi::FAULT_INJECT_BASE + fi::FI_DELAY_US, us);
    true
}

ktest!(
    fn released_and_reallocated_entry_never_delivers_the_old_owners_completion() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let domain = kims::system().unwrap();
        let cpu = percpu::cpu_count() - 1;
        let vector = domain.shared_vector(cpu).unwrap();
        let ims = kims::device_ims(d).unwrap();
        let a = Client::with_new_space().unwrap();
        let b = Client::with_new_space().unwrap();
        // A releases its handle with work still undelivered: the model delays completions
        // when it has fault injection. Whether the release started before a completion was
        // delivered is observed, not assumed: each callback notes whether the release had
        // started. A host that let the delay run out before the release (no late callback)
        // gets the round again with a longer delay. Without the page: one round, released
        // right after submitting.
        let fi = delay(d, 0);
        let mut delay_us = 20_000u32;
        let (index, old_dh, a_armer, mut sa, a_calls, late) = loop {
            let mut qa = a.queue(d, cpu, small()).unwrap();
            let index = qa.handle().index();
            let old_dh = qa.handle().device_handle() as u16;
            let a_armer = qa.handle().armer();
            let a_calls = Arc::new(AtomicUsize::new(0));
            let releasing = Arc::new(AtomicBool::new(false));
            let late = Arc::new(AtomicUsize::new(0));
            if fi {
                delay(d, delay_us);
            }
            for _ in 0..3 {
                let (n, releasing, late) = (a_calls.clone(), releasing.clone(), late.clone());
                qa.submit(&Work::noop(), move |r| {
                    assert_eq!(r, Ok(Output::Done), "A's operation failed");
                    if releasing.load(Ordering::Acquire) {
                        late.fetch_add(1, Ordering::AcqRel);
                    }
                    n.fetch_add(1, Ordering::AcqRel);
                })
                .unwrap();
            }
            let (sa, ha) = qa.into_parts();
            releasing.store(true, Ordering::Release);
            ha.release().unwrap();
            if fi {
                delay(d, 0);
            }
            // Release drained A's work and delivered it to A, on the handle's CPU.
            assert_eq!(
                a_calls.load(Ordering::Acquire),
                3,
                "A's completions at release"
            );
            let late = late.load(Ordering::Acquire);
            // Capped well below the driver's command bound: the release's Drain PASID
            // waits for the three delayed completions.
            if late > 0 || !fi || delay_us >= 320_000 {
                break (index, old_dh, a_armer, sa, a_calls, late);
            }
            delay_us *= 4;
        };
        crate::println!(
            "ktest-info: {late} of A's 3 completions delivered after its release started (completion delay {} us)",
            if fi { delay_us } else { 0 }
        );
        // B gets the same entry (freed entries are reused first).
        let mut qb = b.queue(d, cpu, small()).unwrap();
        assert_eq!(qb.handle().index(), index, "B reuses A's entry");
        let ent = ims.read_entry(qb.handle()).unwrap();
        assert_eq!(ent.ctrl, ImsCtrl::PASID_EN.with_pasid(b.pasid()));
        let irq_before = crate::irq::count(cpu, vector);
        // A still names the entry: the device refuses (it is bound to B's PASID), B hears
        // nothing; A's released armer refuses in the driver already.
        assert_eq!(
            ims.submit(&mut sa, &a_armer, &Work::noop(), |_| {}),
            Err(OpError::InterruptUnavailable("the IMS handle was released"))
        );
        let t = sa.submit(&Work::noop(), Notify::Handle(old_dh)).unwrap();
        assert_eq!(sa.wait(t, WAIT_NS), Err(OpError::Status { code: 0x19 }));
        crate::time::delay_us(20_000);
        assert_eq!(qb.handle().delivered(), 0, "B received A's completion");
        assert_eq!(
            crate::irq::count(cpu, vector),
            irq_before,
            "an interrupt reached B's CPU"
        );
        assert_eq!(a_calls.load(Ordering::Acquire), 3);
        // B's own work is B's.
        let b_calls = Arc::new(AtomicUsize::new(0));
        qb.submit(&Work::noop(), count_into(&b_calls)).unwrap();
        wait_for("B's completion", || b_calls.load(Ordering::Acquire) == 1);
        assert_eq!(qb.handle().delivered(), 1);
        assert_eq!(a_calls.load(Ordering::Acquire), 3);
        qb.release().unwrap();
        drop(sa);
        if !fi {
            crate::println!("ktest-info: no fault-injection page: A's work was not delayed");
        }
        Outcome::Pass
    }
);

ktest!(
    fn masked_handle_delivers_after_unmask() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let domain = kims::system().unwrap();
        let cpu = 0;
        let vector = domain.shared_vector(cpu).unwrap();
        let ims = kims::device_ims(d).unwrap();
        let c = Client::with_new_space().unwrap();
        let mut q = c.queue(d, cpu, small()).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        q.handle_mut().mask().unwrap();
        assert!(q.handle().is_masked());
        let irq_before = crate::irq::count(cpu, vector);
        // Real work in the client's own address space (IOVAs of its PASID).
        let mut src = DmaBuffer::in_client(c.space(), 3 * 1024, true).unwrap();
        let dst = DmaBuffer::in_client(c.space(), 3 * 1024, true).unwrap();
        for (i, b) in src.bytes_mut().iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for k in 0..3 {
            let w = Work::memmove(src.dev_addr(k * 1024), dst.dev_addr(k * 1024), 1024);
            q.submit(&w, count_into(&calls)).unwrap();
        }
        // The device completes the work; the masked entry keeps the message pending.
        let dev_index = ims.device_index(q.handle().index());
        wait_for("the pending bit", || {
            ims.storage()
                .read_entry(dev_index)
                .is_some_and(|e| e.ctrl.contains(ImsCtrl::PENDING))
        });
        crate::time::delay_us(30_000);
        assert_eq!(calls.load(Ordering::Acquire), 0, "a callback while masked");
        assert_eq!(
            crate::irq::count(cpu, vector),
            irq_before,
            "an interrupt while masked"
        );
        let n = q.handle_mut().unmask().unwrap();
        wait_for("the callbacks after unmask", || {
            calls.load(Ordering::Acquire) == 3
        });
        crate::time::delay_us(20_000);
        assert_eq!(
            calls.load(Ordering::Acquire),
            3,
            "each completion exactly once"
        );
        assert_eq!(q.handle().delivered(), 3);
        assert_eq!(dst.bytes(), src.bytes());
        let ent = ims.storage().read_entry(dev_index).unwrap();
        assert!(!ent.ctrl.contains(ImsCtrl::PENDING) && !ent.ctrl.contains(ImsCtrl::MASK));
        crate::println!(
            "ktest-info: unmask delivered {n} completion(s) by re-poll; pending message sent ({} interrupt(s))",
            crate::irq::count(cpu, vector) - irq_before
        );
        // Unmasked: delivered by interrupt as usual.
        q.submit(&Work::noop(), count_into(&calls)).unwrap();
        wait_for("a completion after unmask", || {
            calls.load(Ordering::Acquire) == 4
        });
        assert!(crate::irq::count(cpu, vector) > irq_before);
        q.release().unwrap();
        Outcome::Pass
    }
);

ktest!(
    fn per_handle_vector_mode_runs_out_at_the_allocator_limit() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let sys = kims::device_ims(d).unwrap();
        let per = kims::new_domain(VectorMode::PerHandle).unwrap();
        let cmp = sys
            .carve(&per, 256, kims::chip_options(d, "dsa-cmp"))
            .unwrap();
        let c = Client::with_new_space().unwrap();
        cmp.chip().set_quota(c.pasid(), Some(256));
        let mut s = c.submitter(d, small()).unwrap();
        let cpu = percpu::cpu_count() - 1;
        let before = crate::irq::report(cpu).unwrap();
        let others: Vec<usize> = (0..percpu::cpu_count())
            .filter(|&x| x != cpu)
            .map(|x| crate::irq::report(x).unwrap().allocated)
            .collect();
        let mut hs = Vec::new();
        let err = loop {
            match c.allocate_on(&cmp, cpu, &s) {
                Ok(h) => hs.push(h),
                Err(e) => break e,
            }
        };
        match err {
            kims::ClientError::Ims(ImsError::VectorsExhausted { cpu: c2 }) => assert_eq!(c2, cpu),
            e => panic!("per-handle mode stopped by {e}"),
        }
        let full = crate::irq::report(cpu).unwrap();
        crate::println!(
            "ktest-info: per-handle mode: {} handles on CPU {cpu}, then {err}; vectors: {} {OWNER_PER_HANDLE}, {} {}, {} free of {}",
            hs.len(),
            full.count_owned_by(OWNER_PER_HANDLE),
            full.count_owned_by(kims::system().unwrap().owner()),
            kims::system().unwrap().owner(),
            full.free,
            full.allocatable
        );
        assert_eq!(hs.len(), before.free, "every free vector, one per handle");
        assert_eq!(full.free, 0);
        assert_eq!(full.count_owned_by(OWNER_PER_HANDLE), hs.len());
        assert_eq!(per.vectors_used() as usize, hs.len());
        assert_eq!(
            cmp.chip().free_entries() as usize,
            256 - hs.len(),
            "the refusal kept no entry"
        );
        let others_now: Vec<usize> = (0..percpu::cpu_count())
            .filter(|&x| x != cpu)
            .map(|x| crate::irq::report(x).unwrap().allocated)
            .collect();
        assert_eq!(others_now, others, "other CPUs unaffected");
        // The handles deliver through their own vectors.
        let n = Arc::new(AtomicUsize::new(0));
        let last = hs.last().unwrap();
        let v = last.vector();
        cmp.submit(&mut s, &last.armer(), &Work::noop(), count_into(&n))
            .unwrap();
        wait_for("a per-handle completion", || n.load(Ordering::Acquire) == 1);
        assert_eq!(crate::irq::count(cpu, v), 1);
        drop(hs);
        assert_eq!(
            crate::irq::report(cpu).unwrap(),
            before,
            "every vector returned"
        );
        drop(cmp);
        assert_eq!(sys.chip().lent_entries(), 0);
        Outcome::Pass
    }
);

ktest!(
    fn two_devices_share_one_vector_per_cpu() -> Outcome {
        let devs: Vec<&DsaDevice> = crate::dsa::devices()
            .iter()
            .filter(|d| d.has_enqcmds() && d.wq_id(WqMode::Shared).is_some())
            .collect();
        if devs.len() < 2 {
            return ktest::skip("needs two DSA devices (--dsa 2)");
        }
        let domain = kims::system().unwrap();
        let ncpu = percpu::cpu_count();
        let c = Client::with_new_space().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut qs = Vec::new();
        for d in &devs {
            for cpu in 0..ncpu {
                qs.push(c.queue(d, cpu, small()).unwrap());
            }
        }
        for q in &mut qs {
            q.submit(&Work::noop(), count_into(&calls)).unwrap();
        }
        wait_for("every device's completions", || {
            calls.load(Ordering::Acquire) == qs.len()
        });
        assert_eq!(domain.vectors_used() as usize, ncpu);
        for cpu in 0..ncpu {
            let r = crate::irq::report(cpu).unwrap();
            assert_eq!(r.count_owned_by("ims"), 1, "{r}");
        }
        crate::irq::print_report();
        for q in qs {
            q.release().unwrap();
        }
        Outcome::Pass
    }
);

ktest!(
    fn halt_recovery_restores_ims_entries() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        if d.registers().read32(fi::FAULT_INJECT_BASE + fi::FI_MAGIC) != fi::FI_MAGIC_VALUE {
            return ktest::skip("the device has no fault-injection page");
        }
        let ims = kims::device_ims(d).unwrap();
        let drv = d.driver();
        let c = Client::with_new_space().unwrap();
        let cpu = percpu::cpu_count() - 1;
        let mut q = c.queue(d, cpu, small()).unwrap();
        let mut masked = c.queue(d, 0, small()).unwrap();
        masked.handle_mut().mask().unwrap();
        let recoveries = drv.recovery_count();
        d.registers().write32(
            fi::FAULT_INJECT_BASE + fi::FI_FORCE_HALT,
            dsa_spec::status::HW_WRITE_ERROR as u32,
        );
        wait_for("a recovery", || {
            drv.recovery_count() > recoveries && drv.state() == dsa::RunState::Running
        });
        let ent = ims.read_entry(q.handle()).unwrap();
        assert_eq!(
            ent.ctrl,
            ImsCtrl::PASID_EN.with_pasid(c.pasid()),
            "entry restored"
        );
        let ent = ims.read_entry(masked.handle()).unwrap();
        assert!(ent.ctrl.contains(ImsCtrl::MASK), "mask state restored");
        let n = Arc::new(AtomicUsize::new(0));
        q.submit(&Work::noop(), count_into(&n)).unwrap();
        wait_for("a completion after recovery", || {
            n.load(Ordering::Acquire) == 1
        });
        masked.handle_mut().unmask().unwrap();
        masked.submit(&Work::noop(), count_into(&n)).unwrap();
        wait_for("the unmasked handle's completion", || {
            n.load(Ordering::Acquire) == 2
        });
        q.release().unwrap();
        masked.release().unwrap();
        Outcome::Pass
    }
);

ktest!(
    fn every_ims_entry_of_every_device_gets_its_own_irte() -> Outcome {
        // The IR table is sized from the DSA functions found before bring-up (2048 IMS
        // entries each): with four devices it must hold 8192 handles plus the MSI-X entries.
        if let Err(o) = ims_device() {
            return o;
        }
        let devs: Vec<&'static DsaDevice> = crate::dsa::devices()
            .iter()
            .filter(|d| {
                d.has_enqcmds()
                    && d.wq_id(WqMode::Shared).is_some()
                    && d.driver().caps().ims_entries > 0
            })
            .collect();
        if devs.len() < 3 {
            return ktest::skip("needs 3 or more DSA devices with IMS (QEMU: --dsa 4)");
        }
        let ncpu = percpu::cpu_count();
        let routes_before = kims::platform().live_routes();
        let t0 = crate::time::now_ns();
        let mut clients = Vec::new();
        let mut handles: Vec<(usize, ImsHandle)> = Vec::new();
        let mut total = 0usize;
        for d in &devs {
            let ims = kims::device_ims(d).unwrap();
            let entries = ims.chip().entries() as usize;
            let quota = ims.chip().quota(u32::MAX) as usize;
            for first in (0..entries).step_by(quota.max(1)) {
                let c = Client::with_new_space().unwrap();
                let s = c.submitter(d, small()).unwrap();
                for i in first..entries.min(first + quota) {
                    let h = c
                        .allocate(d, (total + i) % ncpu, &s)
                        .unwrap_or_else(|e| panic!("dsa{}: handle {i} of {entries}: {e}", d.index));
                    handles.push((clients.len(), h));
                }
                clients.push((c, s, d.index));
            }
            assert_eq!(ims.chip().free_entries(), 0, "dsa{}: table full", d.index);
            total += entries;
        }
        let alloc_ms = (crate::time::now_ns() - t0) / 1_000_000;
        assert_eq!(kims::platform().live_routes(), routes_before + total);
        let mut irtes: Vec<u16> = handles
            .iter()
            .map(|(_, h)| kims::platform().irte_of(&h.route()).expect("an IRTE"))
            .collect();
        irtes.sort_unstable();
        irtes.dedup();
        assert_eq!(irtes.len(), total, "one IRTE per handle");
        crate::println!(
            "ktest-info: {total} IMS handles on {} devices, {} IRTEs, allocated in {alloc_ms} ms",
            devs.len(),
            irtes.len()
        );
        // The last handle of every device delivers.
        for d in &devs {
            let ims = kims::device_ims(d).unwrap();
            let (k, h) = handles
                .iter()
                .rev()
                .find(|(k, _)| clients[*k].2 == d.index)
                .expect("a handle on every device");
            let done = Arc::new(AtomicUsize::new(0));
            let (_, s, _) = &mut clients[*k];
            ims.submit(s, &h.armer(), &Work::noop(), count_into(&done))
                .unwrap();
            wait_for("a completion through the last IRTE", || {
                done.load(Ordering::Acquire) == 1
            });
        }
        drop(handles);
        assert_eq!(kims::platform().live_routes(), routes_before);
        Outcome::Pass
    }
);

/// Counters of [`count_completion`] (the cookie of its callbacks).
struct Tally {
    ok: AtomicU32,
    members_ok: AtomicU32,
    bad: AtomicU32,
}

/// A function-pointer callback (no allocation): counts what a bound queue delivers.
fn count_completion(cookie: usize, c: &dsa::Completed<'_>) {
    // SAFETY: the cookie is the address of the test's `Tally`, which outlives every
    // submission it makes (the test waits for all of them, or leaks it on failure).
    let t = unsafe { &*(cookie as *const Tally) };
    let m = c.members();
    if c.result() == Ok(Output::Done) && (0..m.len()).all(|j| m.get(j) == Ok(Output::Done)) {
        t.ok.fetch_add(1, Ordering::Relaxed);
        t.members_ok.fetch_add(m.len() as u32, Ordering::Relaxed);
    } else {
        t.bad.fetch_add(1, Ordering::Relaxed);
    }
}

ktest!(
    fn bound_queue_delivers_fn_callbacks_exactly_once() -> Outcome {
        let d = match ims_device() {
            Ok(d) => d,
            Err(o) => return o,
        };
        let c = Client::with_new_space().unwrap();
        let cpu = percpu::cpu_count() - 1;
        let mut q = c
            .queue(
                d,
                cpu,
                SubmitterOptions {
                    slots: 8,
                    max_batch: 4,
                    ..small()
                },
            )
            .unwrap();
        let tally = Arc::new(Tally {
            ok: AtomicU32::new(0),
            members_ok: AtomicU32::new(0),
            bad: AtomicU32::new(0),
        });
        let cb = dsa::Callback {
            f: count_completion,
            cookie: Arc::as_ptr(&tally) as usize,
        };
        let batch = [Work::noop(), Work::noop(), Work::noop()];
        const N: u32 = 200;
        for i in 0..N {
            let r = if i % 4 == 0 {
                q.submit_batch_cb(&batch, cb)
            } else {
                q.submit_cb(&Work::noop(), cb)
            };
            match r {
                Ok(()) => {}
                // Back-pressure: wait for completions to free a slot, then retry once.
                Err(OpError::NoFreeSlot | OpError::QueueFull) => {
                    let want = tally.ok.load(Ordering::Relaxed) + 1;
                    let _ = crate::time::wait_until(WAIT, || {
                        (tally.ok.load(Ordering::Relaxed) >= want).then_some(())
                    });
                    let r = if i % 4 == 0 {
                        q.submit_batch_cb(&batch, cb)
                    } else {
                        q.submit_cb(&Work::noop(), cb)
                    };
                    if let Err(e) = r {
                        core::mem::forget(tally);
                        return Outcome::Fail(format!("submission {i}: {e}"));
                    }
                }
                Err(e) => {
                    core::mem::forget(tally);
                    return Outcome::Fail(format!("submission {i}: {e}"));
                }
            }
        }
        if crate::time::wait_until(WAIT, || {
            (tally.ok.load(Ordering::Relaxed) + tally.bad.load(Ordering::Relaxed) >= N)
                .then_some(())
        })
        .is_err()
        {
            core::mem::forget(tally);
            return Outcome::Fail(String::from("completions missing"));
        }
        // Released: everything was delivered; nothing arrives twice afterwards.
        q.release().unwrap();
        assert_eq!(tally.bad.load(Ordering::Relaxed), 0);
        assert_eq!(
            tally.ok.load(Ordering::Relaxed),
            N,
            "each completion exactly once"
        );
        assert_eq!(tally.members_ok.load(Ordering::Relaxed), 3 * N.div_ceil(4));
        Outcome::Pass
    }
);
