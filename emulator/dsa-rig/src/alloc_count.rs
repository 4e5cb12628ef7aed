//! A global allocator that counts the allocations, reallocations and frees one thread makes
//! while [`counted`] runs, for the zero-allocation tests of the hot paths
//! (`cargo test -p dsa --test alloc`, `cargo test -p ims --test alloc`). The model's side of
//! a portal store ([`crate::driver::in_device`]) is not counted: its allocations are the
//! device's, not the driver's. A test binary installs it with
//! `#[global_allocator] static ALLOC: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static EVENTS: Cell<u64> = const { Cell::new(0) };
}

/// The counting allocator (forwards to [`System`]).
#[derive(Debug)]
pub struct Counting;

fn note() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = COUNTING.try_with(|c| {
        if c.get() && !crate::driver::in_device() {
            let _ = EVENTS.try_with(|e| e.set(e.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches
// only const-initialized thread-local cells (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

/// Runs `f` with this thread's allocations counted; returns its result.
pub fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

/// Allocation events this thread made inside [`counted`] so far.
pub fn events() -> u64 {
    EVENTS.with(|e| e.get())
}
