//! The kernel heap (`alloc`): slab classes for small objects and whole frame blocks for
//! large ones ([`klib::heap`]), backed by the frame allocator.

use core::alloc::{GlobalAlloc, Layout};

#[cfg(feature = "ktest")]
use klib::heap::HeapStats;
use klib::heap::{PageSource, SlabHeap};

use crate::sync::IrqMutex;

static HEAP: IrqMutex<SlabHeap> = IrqMutex::new(SlabHeap::new());

struct Frames;

impl PageSource for Frames {
    fn alloc_pages(&mut self, order: u8) -> Option<u64> {
        super::frames::alloc_raw(order, u64::MAX)
    }
    fn free_pages(&mut self, addr: u64, order: u8) {
        super::frames::free_raw(addr, order);
    }
}

struct KernelHeap;

// SAFETY: `SlabHeap` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` (or null), and `dealloc` receives the same layout; the lock
// serialises all access and keeps interrupts off.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.lock().alloc(layout, &mut Frames)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the GlobalAlloc contract.
        unsafe { HEAP.lock().dealloc(ptr, layout, &mut Frames) }
    }
}

#[global_allocator]
static GLOBAL: KernelHeap = KernelHeap;

/// Heap statistics.
#[cfg(feature = "ktest")]
pub fn stats() -> HeapStats {
    HEAP.lock().stats()
}
