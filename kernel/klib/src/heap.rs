//! Kernel heap: power-of-two slab classes for small objects, whole buddy blocks for
//! large ones.
//!
//! No per-object header: the class (or block order) is recomputed from the `Layout` on
//! `dealloc`, which `GlobalAlloc` guarantees to be the same as on `alloc`. Small objects
//! of class `c` are `c`-aligned because slab pages are page-aligned and `c` divides 4096.
//! Slab pages are never returned to the page source (the kernel's small-object working
//! set is bounded and long-lived).

use core::alloc::Layout;

use crate::PAGE_SIZE;
use crate::buddy::order_for_size;

/// Object sizes of the slab classes.
pub const CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

/// Where the heap gets its pages. The memory must be addressable at the returned address.
pub trait PageSource {
    /// A naturally aligned block of `4 KiB << order` bytes, or `None` when out of memory.
    fn alloc_pages(&mut self, order: u8) -> Option<u64>;
    /// Returns a block from `alloc_pages`.
    fn free_pages(&mut self, addr: u64, order: u8);
}

/// Heap statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Live small objects per class.
    pub live_small: [u64; CLASSES.len()],
    /// Live large blocks.
    pub live_large: u64,
    /// Bytes in live large blocks (block size, not request size).
    pub large_bytes: u64,
    /// Pages owned by slab classes.
    pub slab_pages: u64,
}

/// The slab heap state (free lists per class). Not synchronized; wrap it in a lock.
pub struct SlabHeap {
    free: [usize; CLASSES.len()],
    stats: HeapStats,
}

impl Default for SlabHeap {
    fn default() -> Self {
        Self::new()
    }
}

/// Where an allocation of a layout lives: a slab class (index into `CLASSES`), or a whole
/// block of frames of this order.
enum Placement {
    Slab(usize),
    Frames(u8),
}

fn placement(layout: Layout) -> Option<Placement> {
    let need = layout.size().max(layout.align()).max(1);
    match CLASSES.iter().position(|&c| c >= need) {
        Some(i) => Some(Placement::Slab(i)),
        None => order_for_size(need as u64).map(Placement::Frames),
    }
}

impl SlabHeap {
    /// An empty heap.
    pub const fn new() -> Self {
        Self {
            free: [0; CLASSES.len()],
            stats: HeapStats {
                live_small: [0; CLASSES.len()],
                live_large: 0,
                large_bytes: 0,
                slab_pages: 0,
            },
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> HeapStats {
        self.stats
    }

    /// Allocates memory for `layout`; null when out of memory (as `GlobalAlloc` expects).
    pub fn alloc(&mut self, layout: Layout, src: &mut dyn PageSource) -> *mut u8 {
        match placement(layout) {
            None => core::ptr::null_mut(),
            Some(Placement::Frames(order)) => match src.alloc_pages(order) {
                Some(addr) => {
                    self.stats.live_large += 1;
                    self.stats.large_bytes += PAGE_SIZE << order;
                    addr as *mut u8
                }
                None => core::ptr::null_mut(),
            },
            Some(Placement::Slab(i)) => {
                if self.free[i] == 0 && !self.refill(i, src) {
                    return core::ptr::null_mut();
                }
                let obj = self.free[i];
                // SAFETY: `obj` is a free object of class i; its first word links the list.
                self.free[i] = unsafe { *(obj as *const usize) };
                self.stats.live_small[i] += 1;
                obj as *mut u8
            }
        }
    }

    /// Frees memory from [`SlabHeap::alloc`] with the same layout.
    ///
    /// # Safety
    /// `ptr` must come from `alloc` of this heap with the same `layout` and `src`.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout, src: &mut dyn PageSource) {
        match placement(layout) {
            None => {}
            Some(Placement::Frames(order)) => {
                self.stats.live_large -= 1;
                self.stats.large_bytes -= PAGE_SIZE << order;
                src.free_pages(ptr as u64, order);
            }
            Some(Placement::Slab(i)) => {
                // SAFETY: the caller returns an object of class i; we reuse its first word.
                unsafe { *ptr.cast::<usize>() = self.free[i] };
                self.free[i] = ptr as usize;
                self.stats.live_small[i] -= 1;
            }
        }
    }

    fn refill(&mut self, i: usize, src: &mut dyn PageSource) -> bool {
        let Some(page) = src.alloc_pages(0) else {
            return false;
        };
        self.stats.slab_pages += 1;
        let size = CLASSES[i];
        let n = PAGE_SIZE as usize / size;
        // Thread the objects so the lowest address is handed out first.
        for k in (0..n).rev() {
            let obj = page as usize + k * size;
            // SAFETY: the page is ours; each object is at least a word and word aligned.
            unsafe { *(obj as *mut usize) = self.free[i] };
            self.free[i] = obj;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc};
    use std::collections::HashMap;

    #[derive(Default)]
    struct HostPages {
        live: HashMap<u64, u8>,
        budget: usize,
    }

    impl PageSource for HostPages {
        fn alloc_pages(&mut self, order: u8) -> Option<u64> {
            if self.live.len() >= self.budget {
                return None;
            }
            let size = (PAGE_SIZE as usize) << order;
            // SAFETY: non-zero size, power-of-two alignment.
            let p = unsafe { alloc(Layout::from_size_align(size, size).unwrap()) } as u64;
            self.live.insert(p, order);
            Some(p)
        }
        fn free_pages(&mut self, addr: u64, order: u8) {
            assert_eq!(
                self.live.remove(&addr),
                Some(order),
                "freed with the wrong order"
            );
            let size = (PAGE_SIZE as usize) << order;
            // SAFETY: allocated above with this layout.
            unsafe {
                dealloc(
                    addr as *mut u8,
                    Layout::from_size_align(size, size).unwrap(),
                );
            };
        }
    }

    #[test]
    fn small_and_large_allocations_are_aligned_and_disjoint() {
        let mut src = HostPages {
            budget: 1000,
            ..Default::default()
        };
        let mut h = SlabHeap::new();
        let mut live = Vec::new();
        for (i, (size, align)) in [
            (1, 1),
            (8, 8),
            (24, 8),
            (100, 64),
            (2048, 2048),
            (3000, 8),
            (5000, 8192),
            (64, 512),
        ]
        .into_iter()
        .enumerate()
        {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = h.alloc(l, &mut src);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: we own `size` bytes at p.
            unsafe { core::ptr::write_bytes(p, i as u8, size) };
            live.push((p, l, i as u8));
        }
        for &(p, l, tag) in &live {
            // SAFETY: still live.
            let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
            assert!(s.iter().all(|&b| b == tag));
        }
        for (p, l, _) in live {
            // SAFETY: allocated above with this layout.
            unsafe { h.dealloc(p, l, &mut src) };
        }
        let st = h.stats();
        assert_eq!(st.live_small, [0; CLASSES.len()]);
        assert_eq!(st.live_large, 0);
        // Only slab pages remain taken from the source.
        assert_eq!(src.live.len() as u64, st.slab_pages);
    }

    #[test]
    fn freed_objects_are_reused() {
        let mut src = HostPages {
            budget: 10,
            ..Default::default()
        };
        let mut h = SlabHeap::new();
        let l = Layout::from_size_align(48, 8).unwrap();
        let a = h.alloc(l, &mut src);
        // SAFETY: allocated above.
        unsafe { h.dealloc(a, l, &mut src) };
        let b = h.alloc(l, &mut src);
        assert_eq!(a, b);
        assert_eq!(h.stats().slab_pages, 1);
    }

    #[test]
    fn out_of_pages_gives_null() {
        let mut src = HostPages {
            budget: 1,
            ..Default::default()
        };
        let mut h = SlabHeap::new();
        let big = Layout::from_size_align(1 << 20, 8).unwrap();
        let p = h.alloc(big, &mut src);
        assert!(!p.is_null());
        assert!(h.alloc(big, &mut src).is_null());
        let small = Layout::from_size_align(16, 8).unwrap();
        assert!(h.alloc(small, &mut src).is_null());
        // SAFETY: allocated above.
        unsafe { h.dealloc(p, big, &mut src) };
        assert!(!h.alloc(small, &mut src).is_null());
        let huge = Layout::from_size_align(2 << 30, 8).unwrap();
        assert!(
            h.alloc(huge, &mut src).is_null(),
            "above the largest block order"
        );
    }
}
