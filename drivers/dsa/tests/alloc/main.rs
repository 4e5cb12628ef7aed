//! The polled hot paths of the `dsa` crate allocate nothing: 10,000 submit/poll cycles of
//! single operations and batches (`poll`, `poll_batch`, `poll_batch_summary`) on a dedicated
//! and a shared WQ, under a global allocator that counts every allocation, reallocation and
//! free this thread makes inside a driver call. The model's side of a portal store (and its
//! execution between the calls) is not counted. The IMS crate's allocation test
//! (`cargo test -p ims --test alloc`) covers the callback paths (MSI-X and IMS).

use dsa::{BatchDone, ConfigSource, DeviceOptions, Notify, Output, Requester, Submitter, Work};
use dsa_rig::alloc_count::{Counting, counted, events};
use dsa_rig::driver::{ALL_PCI, Exec, Rig, model_cfg};

#[global_allocator]
static ALLOC: Counting = Counting;

const CYCLES: usize = 10_000;
const BATCH: usize = 32;
const PASID: u32 = 0x42;

#[test]
fn polled_paths_allocate_nothing() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let dev = rig
        .driver(0, ConfigSource::Default, DeviceOptions::default())
        .expect("bring-up");
    for (wq, client) in [
        (0u8, Requester::kernel()),
        (1, Requester::pasid(PASID, true)),
    ] {
        let src = rig.plat.buf(client.space, 64 * BATCH);
        let dst = rig.plat.buf(client.space, 64 * BATCH);
        let works: Vec<Work> = (0..BATCH)
            .map(|j| Work::memmove(src.at(64 * j), dst.at(64 * j), 64))
            .collect();
        let mut out: Vec<_> = (0..BATCH).map(|_| Ok(Output::Done)).collect();
        let mut s = Submitter::new(&dev, wq, client, Default::default()).unwrap();
        // Warm-up outside the count.
        let t = s.submit_batch(&works, Notify::Poll).unwrap();
        rig.run();
        assert!(s.poll_batch(t, &mut out).is_some());

        let before = events();
        for i in 0..CYCLES {
            let t = counted(|| s.submit(&works[i % BATCH], Notify::Poll)).unwrap();
            rig.run();
            assert_eq!(counted(|| s.poll(t)), Some(Ok(Output::Done)));

            let t = counted(|| s.submit_batch(&works, Notify::Poll)).unwrap();
            rig.run();
            let r = if i % 2 == 0 {
                counted(|| s.poll_batch(t, &mut out))
            } else {
                counted(|| s.poll_batch_summary(t, &mut out)).map(|r| {
                    r.map(|d| {
                        assert_eq!(
                            d,
                            BatchDone {
                                members: BATCH,
                                all_ok: true
                            }
                        );
                        d.members
                    })
                })
            };
            assert_eq!(r, Some(Ok(BATCH)), "cycle {i} on WQ {wq}");
        }
        let n = events() - before;
        assert_eq!(n, 0, "WQ {wq}: {n} heap operation(s) in {CYCLES} cycles");
    }
}

#[test]
fn the_counter_sees_allocations() {
    // The check above can fail: the allocating convenience (`poll` of a batch returns a
    // `Vec` of member results) is counted.
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
