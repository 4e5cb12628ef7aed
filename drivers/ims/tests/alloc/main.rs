//! The hot paths allocate nothing: 10,000 submit/complete cycles of every kind (single and
//! batch, dedicated and shared WQ, polled, MSI-X callback, IMS callback through the shared
//! vector's demultiplexer and through posted mode's descriptor harvest) under a global allocator that counts every allocation, reallocation
//! and free made by this thread while a driver call is in progress. The device model runs
//! between the counted calls (its own allocations are not the driver's), and interrupts are
//! held pending while it runs so that the MSI-X handler and the demultiplexing pass are
//! counted. The model's side of a portal store (the test rig's portal calls into the
//! model) is not counted either.

#[allow(dead_code)]
#[path = "../ims/dsa_rig.rs"]
mod dsa_rig;
#[allow(dead_code)]
#[path = "../ims/machine.rs"]
mod machine;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use ::dsa_rig::alloc_count::{Counting, counted, events};
use dsa::hw::{AddressSpace, DmaMemory, DmaRegion};
use dsa::{
    Callback, Completed, DsaIms, Notify, Output, Requester, Submitter, SubmitterOptions, Work,
};
use dsa_rig::{DsaRig, Exec, model_cfg};
use ims::{ChipOptions, DomainConfig, ImsDomain, OwnerId, VectorMode};
use machine::Machine;

#[global_allocator]
static ALLOC: Counting = Counting;

const CYCLES: usize = 10_000;
const BATCH: usize = 32;
const SID: u16 = 0x0108;
const PASID: u32 = 0x42;

static DELIVERED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// The callback every kind uses: a function pointer and a cookie (the expected members).
fn on_done(cookie: usize, c: &Completed<'_>) {
    let ok = c.result() == Ok(Output::Done)
        && c.members().len() == cookie
        && (0..c.members().len()).all(|j| c.members().get(j) == Ok(Output::Done));
    if !ok {
        FAILED.fetch_add(1, SeqCst);
    }
    DELIVERED.fetch_add(1, SeqCst);
}

struct Bufs {
    src: DmaRegion,
    dst: DmaRegion,
}

fn bufs(rig: &DsaRig, space: AddressSpace) -> Bufs {
    let a = |n| DmaMemory::alloc(&*rig.plat, space, n, 4096).unwrap();
    Bufs {
        src: a(64 * BATCH),
        dst: a(64 * BATCH),
    }
}

fn works(b: &Bufs) -> Vec<Work> {
    (0..BATCH)
        .map(|j| Work::memmove(b.src.dev + 64 * j as u64, b.dst.dev + 64 * j as u64, 64))
        .collect()
}

fn opts() -> SubmitterOptions {
    SubmitterOptions {
        slots: 8,
        max_batch: BATCH as u16,
        timeout_ns: 5_000_000_000,
    }
}

/// One kind: `submit` (counted), the device runs with CPU 0's interrupts held, then
/// `complete` (counted: a poll, the MSI-X handler, or the pending IMS interrupt).
fn cycles(
    name: &str,
    m: &Machine,
    rig: &DsaRig,
    mut submit: impl FnMut(),
    mut complete: impl FnMut() -> bool,
) {
    // Warm-up outside the count (first-use allocations of the test scaffolding).
    for _ in 0..4 {
        submit();
        m.with_irqs_off(0, || rig.run());
        assert!(complete(), "{name}: warm-up completion");
    }
    let before = events();
    for i in 0..CYCLES {
        counted(&mut submit);
        m.with_irqs_off(0, || rig.run());
        assert!(counted(&mut complete), "{name}: completion {i} missing");
    }
    let n = events() - before;
    assert_eq!(
        n, 0,
        "{name}: {n} heap operation(s) in {CYCLES} submit/complete cycles"
    );
}

/// The IMS kinds of one queue: `q` submits `w[0]` (then the batch `w`) with an IMS
/// completion interrupt and callback `cbs[0]` (`cbs[1]`); the completion is CPU 0's pending
/// interrupt taken (the shared vector's demultiplexer or posted mode's harvest), which must
/// deliver exactly that callback.
fn ims_cycles(
    names: [&str; 2],
    m: &Machine,
    rig: &DsaRig,
    q: &mut Submitter,
    w: &[Work],
    cbs: [Callback; 2],
) {
    for (batch, cb) in [(false, cbs[0]), (true, cbs[1])] {
        let want = Cell::new(DELIVERED.load(SeqCst));
        let qa = &mut *q;
        cycles(
            names[usize::from(batch)],
            m,
            rig,
            || {
                want.set(want.get() + 1);
                if batch {
                    qa.submit_batch_cb(w, Notify::Ims, cb).unwrap();
                } else {
                    qa.submit_cb(&w[0], Notify::Ims, cb).unwrap();
                }
            },
            || {
                m.take_pending(0);
                DELIVERED.load(SeqCst) == want.get()
            },
        );
    }
}

#[test]
fn hot_paths_allocate_nothing() {
    let m = Machine::with_posting(1);
    let rig = DsaRig::new(&m, SID, model_cfg(), Exec::Deterministic);
    let domain = ImsDomain::new(m.clone(), DomainConfig::default()).unwrap();
    let chip = DsaIms::register(&domain, &rig.dev, ChipOptions::new("dsa0", SID)).unwrap();
    let dwq = rig
        .dev
        .wq_of_mode(dsa_spec::WqMode::Dedicated)
        .expect("a dedicated WQ")
        .id();
    let swq = rig.shared_wq();
    let kernel = bufs(&rig, AddressSpace::NoPasid);
    let client = bufs(&rig, AddressSpace::Pasid(PASID));
    let kw = works(&kernel);
    let cw = works(&client);
    let mut out: Vec<_> = (0..BATCH).map(|_| Ok(Output::Done)).collect();
    let single_cb = Callback {
        f: on_done,
        cookie: 0,
    };
    let batch_cb = Callback {
        f: on_done,
        cookie: BATCH,
    };

    // Polled: single and batch, dedicated and shared WQ.
    for (wq, client_id, w) in [
        (dwq, Requester::kernel(), &kw),
        (swq, Requester::pasid(PASID, true), &cw),
    ] {
        let s = RefCell::new(Submitter::new(&rig.dev, wq, client_id, opts()).unwrap());
        let tok = Cell::new(None);
        cycles(
            "poll single",
            &m,
            &rig,
            || tok.set(Some(s.borrow_mut().submit(&w[0], Notify::Poll).unwrap())),
            || s.borrow_mut().poll(tok.get().unwrap()) == Some(Ok(Output::Done)),
        );
        let out = RefCell::new(&mut out);
        cycles(
            "poll batch",
            &m,
            &rig,
            || tok.set(Some(s.borrow_mut().submit_batch(w, Notify::Poll).unwrap())),
            || {
                let mut o = out.borrow_mut();
                s.borrow_mut().poll_batch(tok.get().unwrap(), &mut o) == Some(Ok(BATCH))
                    && o.iter().all(|r| *r == Ok(Output::Done))
            },
        );
    }

    // MSI-X: the WQ's interrupt handler entry point reaps and runs the callbacks.
    let entry = rig.dev.wq(dwq).unwrap().msix_entry.expect("an MSI-X entry");
    let mut s = Submitter::new(&rig.dev, dwq, Requester::kernel(), opts()).unwrap();
    for (batch, cb) in [(false, single_cb), (true, batch_cb)] {
        let want = Cell::new(DELIVERED.load(SeqCst));
        let sa = &mut s;
        cycles(
            if batch { "msix batch" } else { "msix single" },
            &m,
            &rig,
            || {
                want.set(want.get() + 1);
                if batch {
                    sa.submit_batch_cb(&kw, Notify::Msix, cb).unwrap();
                } else {
                    sa.submit_cb(&kw[0], Notify::Msix, cb).unwrap();
                }
            },
            || {
                rig.dev.handle_msix(entry);
                DELIVERED.load(SeqCst) == want.get()
            },
        );
    }

    // IMS: a client queue (submitter + bound handle on CPU 0); the device's message is
    // taken by CPU 0's shared vector and demultiplexed.
    let mut q = Submitter::new(&rig.dev, swq, Requester::pasid(PASID, false), opts()).unwrap();
    let ic = OwnerId::new(1, PASID).unwrap();
    let handle = chip.allocate_bound(&ic, 0, &mut q).unwrap();
    ims_cycles(
        ["ims single", "ims batch"],
        &m,
        &rig,
        &mut q,
        &cw,
        [single_cb, batch_cb],
    );
    assert_eq!(
        domain.stats(0).unwrap().completions,
        2 * (CYCLES as u64 + 4),
        "every IMS completion came through the demultiplexer"
    );
    handle.release().unwrap();
    drop(q);

    // Posted mode: the same queue kind on entries lent to a posted domain; the IOMMU sets
    // the handle's descriptor bit and the handler takes it.
    let posted = ImsDomain::new(
        m.clone(),
        DomainConfig {
            mode: VectorMode::Posted,
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let pchip = chip
        .carve(&posted, 16, ChipOptions::new("dsa0-posted", SID))
        .unwrap();
    let mut q = Submitter::new(&rig.dev, swq, Requester::pasid(PASID, false), opts()).unwrap();
    let handle = pchip.allocate_bound(&ic, 0, &mut q).unwrap();
    ims_cycles(
        ["posted single", "posted batch"],
        &m,
        &rig,
        &mut q,
        &cw,
        [single_cb, batch_cb],
    );
    assert_eq!(
        posted.stats(0).unwrap().completions,
        2 * (CYCLES as u64 + 4),
        "every posted completion came through the descriptor harvest"
    );
    assert_eq!(FAILED.load(SeqCst), 0, "a callback saw a wrong result");
    handle.release().unwrap();
    drop(q);
    drop(pchip);
    drop(s);
}

#[test]
fn the_counter_sees_allocations() {
    // The check above can fail: a boxed closure callback allocates.
    let before = events();
    counted(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(events() - before, 2, "one allocation and one free");
}

/// The zero counts above mean something only if the allocator sees allocations: one box
/// made and dropped inside `counted` is two events (the allocation and the free).
#[test]
fn the_counting_allocator_counts() {
    let before = events();
    counted(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(events() - before, 2);
}
