//! Binary buddy allocator over physical page frames.
//!
//! Blocks are `4 KiB << order` bytes and naturally aligned to their size in *absolute*
//! physical address terms, so a caller asking for alignment `a <= size` gets it for free.
//!
//! Book-keeping: one metadata byte per managed page (free-block head with its order,
//! allocated-block head with its order, or nothing), plus intrusive doubly-linked free
//! lists whose links live in the first 16 bytes of each free block. The allocator
//! therefore writes into free memory through its physical address: the caller must make
//! every managed frame addressable at its physical address (the kernel identity-maps
//! RAM; host tests hand in a heap buffer and use its addresses).

use crate::PAGE_SIZE;

/// Largest block order: `4 KiB << 18` = 1 GiB.
pub const MAX_ORDER: u8 = 18;

const FREE_HEAD: u8 = 0x80;
const ALLOC_HEAD: u8 = 0x40;
const NIL: u64 = u64::MAX;

/// Errors of the buddy allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuddyError {
    /// No free block of the requested order (within the requested address limit).
    OutOfMemory {
        /// The order asked for (blocks of 4 KiB × 2^order).
        order: u8,
    },
    /// Order above [`MAX_ORDER`].
    BadOrder(u8),
    /// `free` of an address that is not the head of an allocated block of that order
    /// (double free, wrong order, or never allocated).
    NotAllocated {
        /// The address passed to `free`.
        addr: u64,
        /// The order passed to `free`.
        order: u8,
    },
    /// Address outside the managed range or not page aligned.
    BadAddress(u64),
}

impl core::fmt::Display for BuddyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory { order } => {
                write!(
                    f,
                    "out of physical memory for a {} KiB block",
                    4u64 << order
                )
            }
            Self::BadOrder(o) => write!(f, "block order {o} exceeds the maximum {MAX_ORDER}"),
            Self::NotAllocated { addr, order } => {
                write!(
                    f,
                    "free of {addr:#x} (order {order}) which is not an allocated block"
                )
            }
            Self::BadAddress(a) => write!(f, "address {a:#x} is not a managed page"),
        }
    }
}

impl core::error::Error for BuddyError {}

#[repr(C)]
struct FreeNode {
    next: u64,
    prev: u64,
}

/// The smallest order whose block holds `bytes` bytes (at least one page).
pub fn order_for_size(bytes: u64) -> Option<u8> {
    let pages = bytes.div_ceil(PAGE_SIZE).max(1);
    let order = pages.next_power_of_two().trailing_zeros();
    (order <= u32::from(MAX_ORDER)).then_some(order as u8)
}

/// A buddy allocator managing the pages `[first_pfn, first_pfn + npages)`.
pub struct Buddy {
    first_pfn: u64,
    npages: u64,
    meta: *mut u8,
    heads: [u64; MAX_ORDER as usize + 1],
    free_blocks: [u64; MAX_ORDER as usize + 1],
    free_pages: u64,
    total_pages: u64,
}

// SAFETY: the raw pointers refer to memory owned exclusively by this allocator (metadata
// array and free frames); moving the allocator to another thread moves that ownership.
unsafe impl Send for Buddy {}

impl Buddy {
    /// Creates an empty allocator able to manage the page frames `[first_pfn, first_pfn+npages)`.
    ///
    /// # Safety
    /// `meta` must be valid for writes of `npages` bytes for the allocator's lifetime and
    /// not used by anything else.
    pub unsafe fn new(meta: *mut u8, first_pfn: u64, npages: u64) -> Self {
        // SAFETY: the caller guarantees `meta` is valid for `npages` bytes.
        unsafe { core::ptr::write_bytes(meta, 0, npages as usize) };
        Self {
            first_pfn,
            npages,
            meta,
            heads: [NIL; MAX_ORDER as usize + 1],
            free_blocks: [0; MAX_ORDER as usize + 1],
            free_pages: 0,
            total_pages: 0,
        }
    }

    /// Hands the page-aligned part of `[start, end)` to the allocator. Ranges outside the
    /// managed window are clipped.
    ///
    /// # Safety
    /// The memory must be RAM, addressable at its physical address, unused by anyone else,
    /// and must not have been added before.
    pub unsafe fn add_range(&mut self, start: u64, end: u64) {
        let lo = self.first_pfn;
        let hi = self.first_pfn + self.npages;
        let mut s = start.div_ceil(PAGE_SIZE).max(lo);
        let e = (end / PAGE_SIZE).min(hi);
        while s < e {
            let mut order = (s.trailing_zeros() as u8).min(MAX_ORDER);
            while s + (1u64 << order) > e {
                order -= 1;
            }
            self.set_meta(s, ALLOC_HEAD | order);
            self.total_pages += 1 << order;
            // SAFETY: the block was just marked as allocated and lies inside the window;
            // the caller guarantees the memory is free RAM addressable at its address.
            unsafe { self.free_block(s, order) };
            s += 1u64 << order;
        }
    }

    /// Total pages handed to the allocator.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Pages currently free.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Number of free blocks of each order.
    pub fn free_blocks(&self) -> [u64; MAX_ORDER as usize + 1] {
        self.free_blocks
    }

    /// The largest order that currently has a free block.
    pub fn largest_free_order(&self) -> Option<u8> {
        (0..=MAX_ORDER)
            .rev()
            .find(|&o| self.heads[o as usize] != NIL)
    }

    /// Allocates a block of `4 KiB << order` bytes, naturally aligned. Contents are undefined.
    pub fn alloc(&mut self, order: u8) -> Result<u64, BuddyError> {
        self.alloc_below(order, u64::MAX)
    }

    /// Like [`Buddy::alloc`] but the whole block lies below physical address `limit`.
    pub fn alloc_below(&mut self, order: u8, limit: u64) -> Result<u64, BuddyError> {
        if order > MAX_ORDER {
            return Err(BuddyError::BadOrder(order));
        }
        let want = PAGE_SIZE << order;
        for k in order..=MAX_ORDER {
            let mut cur = self.heads[k as usize];
            while cur != NIL {
                if cur.checked_add(want).is_some_and(|end| end <= limit) {
                    // SAFETY: `cur` is the head of a free block of order `k` (taken from the list).
                    unsafe { self.remove(cur, k) };
                    // Keep the low part, give the upper halves back.
                    let pfn = cur / PAGE_SIZE;
                    let mut kk = k;
                    while kk > order {
                        kk -= 1;
                        // SAFETY: the upper half of a block we own is free and inside the window.
                        unsafe { self.push(pfn + (1u64 << kk), kk) };
                    }
                    self.set_meta(pfn, ALLOC_HEAD | order);
                    self.free_pages -= 1u64 << order;
                    return Ok(cur);
                }
                // SAFETY: `cur` is a free-list node written by `push`.
                cur = unsafe { (*(cur as *const FreeNode)).next };
            }
        }
        Err(BuddyError::OutOfMemory { order })
    }

    /// Returns a block obtained from `alloc`/`alloc_below` with the same `order`.
    pub fn free(&mut self, addr: u64, order: u8) -> Result<(), BuddyError> {
        if order > MAX_ORDER {
            return Err(BuddyError::BadOrder(order));
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(BuddyError::BadAddress(addr));
        }
        let pfn = addr / PAGE_SIZE;
        if !self.in_window(pfn) {
            return Err(BuddyError::BadAddress(addr));
        }
        if self.meta(pfn) != ALLOC_HEAD | order {
            return Err(BuddyError::NotAllocated { addr, order });
        }
        // SAFETY: meta says this is an allocated block of `order`; ownership returns to us.
        unsafe { self.free_block(pfn, order) };
        Ok(())
    }

    /// Frees an allocated block head `pfn` of `order`, merging with free buddies.
    ///
    /// # Safety
    /// `pfn` must be marked `ALLOC_HEAD | order` and its memory must be addressable.
    unsafe fn free_block(&mut self, pfn: u64, order: u8) {
        self.set_meta(pfn, 0);
        self.free_pages += 1u64 << order;
        let mut pfn = pfn;
        let mut k = order;
        while k < MAX_ORDER {
            let buddy = pfn ^ (1u64 << k);
            if !self.in_window(buddy) || self.meta(buddy) != FREE_HEAD | k {
                break;
            }
            // SAFETY: meta marks `buddy` as a free head of order k, so it is on list k.
            unsafe { self.remove(buddy * PAGE_SIZE, k) };
            pfn = pfn.min(buddy);
            k += 1;
        }
        // SAFETY: the merged block is free and inside the window.
        unsafe { self.push(pfn, k) };
    }

    fn in_window(&self, pfn: u64) -> bool {
        pfn >= self.first_pfn && pfn - self.first_pfn < self.npages
    }

    fn meta(&self, pfn: u64) -> u8 {
        debug_assert!(self.in_window(pfn));
        // SAFETY: callers check `in_window`; `meta` holds `npages` bytes.
        unsafe { *self.meta.add((pfn - self.first_pfn) as usize) }
    }

    fn set_meta(&mut self, pfn: u64, v: u8) {
        debug_assert!(self.in_window(pfn));
        // SAFETY: as in `meta`.
        unsafe { *self.meta.add((pfn - self.first_pfn) as usize) = v };
    }

    /// # Safety
    /// The block must be free, inside the window, and addressable.
    unsafe fn push(&mut self, pfn: u64, order: u8) {
        let addr = pfn * PAGE_SIZE;
        let head = self.heads[order as usize];
        // SAFETY: the block is free memory we own; its first 16 bytes hold the node.
        unsafe {
            (addr as *mut FreeNode).write(FreeNode {
                next: head,
                prev: NIL,
            });
            if head != NIL {
                (*(head as *mut FreeNode)).prev = addr;
            }
        }
        self.heads[order as usize] = addr;
        self.free_blocks[order as usize] += 1;
        self.set_meta(pfn, FREE_HEAD | order);
    }

    /// # Safety
    /// `addr` must be on free list `order`.
    unsafe fn remove(&mut self, addr: u64, order: u8) {
        // SAFETY: `addr` and its neighbours are nodes of list `order`.
        unsafe {
            let node = &*(addr as *const FreeNode);
            let (next, prev) = (node.next, node.prev);
            if prev == NIL {
                self.heads[order as usize] = next;
            } else {
                (*(prev as *mut FreeNode)).next = next;
            }
            if next != NIL {
                (*(next as *mut FreeNode)).prev = prev;
            }
        }
        self.free_blocks[order as usize] -= 1;
        self.set_meta(addr / PAGE_SIZE, 0);
    }

    /// Checks internal consistency (free counts, list links, metadata). For tests.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut pages = 0u64;
        for k in 0..=MAX_ORDER {
            let mut n = 0u64;
            let mut prev = NIL;
            let mut cur = self.heads[k as usize];
            while cur != NIL {
                let pfn = cur / PAGE_SIZE;
                if !self.in_window(pfn) || self.meta(pfn) != FREE_HEAD | k {
                    return Err("free list entry without matching metadata");
                }
                if pfn & ((1u64 << k) - 1) != 0 {
                    return Err("misaligned free block");
                }
                // SAFETY: list nodes are free blocks written by `push`.
                let node = unsafe { &*(cur as *const FreeNode) };
                if node.prev != prev {
                    return Err("broken back link");
                }
                prev = cur;
                cur = node.next;
                n += 1;
                if n > self.npages {
                    return Err("free list cycle");
                }
            }
            if n != self.free_blocks[k as usize] {
                return Err("free block count mismatch");
            }
            pages += n << k;
        }
        if pages != self.free_pages {
            return Err("free page count mismatch");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{Layout, alloc, dealloc};
    use std::collections::HashSet;

    struct Arena {
        ptr: *mut u8,
        layout: Layout,
        meta: Vec<u8>,
    }

    impl Arena {
        fn new(bytes: usize, align: usize) -> Self {
            let layout = Layout::from_size_align(bytes, align).unwrap();
            // SAFETY: non-zero size.
            let ptr = unsafe { alloc(layout) };
            assert!(!ptr.is_null());
            Self {
                ptr,
                layout,
                meta: Vec::new(),
            }
        }
        fn buddy(&mut self, skew_pages: u64) -> Buddy {
            let start = self.ptr as u64 + skew_pages * PAGE_SIZE;
            let end = self.ptr as u64 + self.layout.size() as u64;
            let first = start / PAGE_SIZE;
            let n = end / PAGE_SIZE - first;
            self.meta = vec![0u8; n as usize];
            // SAFETY: meta has n bytes; the arena is ours.
            let mut b = unsafe { Buddy::new(self.meta.as_mut_ptr(), first, n) };
            // SAFETY: arena memory is owned, unused and addressable.
            unsafe { b.add_range(start, end) };
            b
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr, self.layout) };
        }
    }

    #[test]
    fn order_for_size_rounds_up() {
        assert_eq!(order_for_size(0), Some(0));
        assert_eq!(order_for_size(1), Some(0));
        assert_eq!(order_for_size(4096), Some(0));
        assert_eq!(order_for_size(4097), Some(1));
        assert_eq!(order_for_size(3 << 20), Some(10));
        assert_eq!(order_for_size(1 << 30), Some(18));
        assert_eq!(order_for_size((1 << 30) + 1), None);
    }

    #[test]
    fn alloc_free_restores_everything() {
        let mut a = Arena::new(8 << 20, 2 << 20);
        let mut b = a.buddy(3); // unaligned start exercises partial blocks
        let total = b.total_pages();
        assert_eq!(total, (8 << 20) / 4096 - 3);
        assert_eq!(b.free_pages(), total);
        b.check().unwrap();
        let mut blocks = Vec::new();
        for order in [0u8, 3, 1, 9, 0, 5, 2] {
            let addr = b.alloc(order).unwrap();
            assert_eq!(addr % (PAGE_SIZE << order), 0, "natural alignment");
            blocks.push((addr, order));
        }
        // no overlap
        let mut pages = HashSet::new();
        for &(addr, order) in &blocks {
            for p in 0..(1u64 << order) {
                assert!(pages.insert(addr / PAGE_SIZE + p));
            }
        }
        b.check().unwrap();
        for &(addr, order) in blocks.iter().rev() {
            b.free(addr, order).unwrap();
        }
        b.check().unwrap();
        assert_eq!(b.free_pages(), total);
        // Everything merged back: same largest block as at start.
        assert!(b.largest_free_order().unwrap() >= 9);
    }

    #[test]
    fn double_free_and_wrong_order_are_errors() {
        let mut a = Arena::new(1 << 20, 4096);
        let mut b = a.buddy(0);
        let x = b.alloc(2).unwrap();
        assert_eq!(
            b.free(x, 1),
            Err(BuddyError::NotAllocated { addr: x, order: 1 })
        );
        assert_eq!(
            b.free(x + 4096, 0),
            Err(BuddyError::NotAllocated {
                addr: x + 4096,
                order: 0
            })
        );
        b.free(x, 2).unwrap();
        assert_eq!(
            b.free(x, 2),
            Err(BuddyError::NotAllocated { addr: x, order: 2 })
        );
        assert_eq!(b.free(x + 1, 0), Err(BuddyError::BadAddress(x + 1)));
        assert_eq!(b.free(0, 0), Err(BuddyError::BadAddress(0)));
        assert_eq!(
            b.alloc(MAX_ORDER + 1),
            Err(BuddyError::BadOrder(MAX_ORDER + 1))
        );
        b.check().unwrap();
    }

    #[test]
    fn exhaustion_is_an_error_and_recovers() {
        let mut a = Arena::new(2 << 20, 2 << 20);
        let mut b = a.buddy(0);
        let total = b.total_pages();
        let mut got = Vec::new();
        loop {
            match b.alloc(0) {
                Ok(x) => got.push(x),
                Err(e) => {
                    assert_eq!(e, BuddyError::OutOfMemory { order: 0 });
                    break;
                }
            }
        }
        assert_eq!(got.len() as u64, total);
        assert_eq!(b.free_pages(), 0);
        for x in got {
            b.free(x, 0).unwrap();
        }
        assert_eq!(b.free_pages(), total);
        assert_eq!(b.largest_free_order(), Some(9));
        b.check().unwrap();
    }

    #[test]
    fn alloc_below_respects_limit() {
        let mut a = Arena::new(4 << 20, 4 << 20);
        let base = a.ptr as u64;
        let mut b = a.buddy(0);
        let limit = base + (1 << 20);
        let mut seen = 0;
        while let Ok(x) = b.alloc_below(2, limit) {
            assert!(x + (4 << 12) <= limit);
            seen += 1;
        }
        assert_eq!(seen, (1 << 20) / (4 << 12));
        assert!(
            b.alloc(2).is_ok(),
            "memory above the limit is still available"
        );
        b.check().unwrap();
    }

    #[test]
    fn randomized_stress_keeps_invariants() {
        let mut a = Arena::new(16 << 20, 4096);
        let mut b = a.buddy(1);
        let total = b.total_pages();
        let mut live: Vec<(u64, u8, u8)> = Vec::new();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            if rnd() % 3 != 0 || live.is_empty() {
                let order = (rnd() % 8) as u8;
                if let Ok(x) = b.alloc(order) {
                    let tag = (i & 0xff) as u8;
                    // SAFETY: the block is ours and addressable.
                    unsafe {
                        core::ptr::write_bytes(x as *mut u8, tag, (PAGE_SIZE << order) as usize);
                    };
                    live.push((x, order, tag));
                }
            } else {
                let idx = (rnd() as usize) % live.len();
                let (x, order, tag) = live.swap_remove(idx);
                // SAFETY: as above; verify nobody else wrote into our block.
                let s = unsafe {
                    core::slice::from_raw_parts(x as *const u8, (PAGE_SIZE << order) as usize)
                };
                assert!(s.iter().all(|&v| v == tag), "block content was overwritten");
                b.free(x, order).unwrap();
            }
        }
        b.check().unwrap();
        for (x, order, _) in live {
            b.free(x, order).unwrap();
        }
        assert_eq!(b.free_pages(), total);
        b.check().unwrap();
    }
}
