//! Physical frame allocator: zeroed, physically contiguous, naturally aligned blocks of
//! 4 KiB to 1 GiB (buddy system, [`klib::buddy`]), for DMA buffers, queues and page
//! tables. Because RAM is identity-mapped, a block's address is both its physical
//! address and a usable pointer.

use klib::buddy::{Buddy, order_for_size};

use super::MmError;
use boot::memmap::MemoryMap;

use crate::sync::IrqMutex;

static BUDDY: IrqMutex<Option<Buddy>> = IrqMutex::new(None);

const PAGE: u64 = 4096;

/// Allocator statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Pages managed.
    pub total_pages: u64,
    /// Pages free.
    pub free_pages: u64,
    /// Largest free block order (block = 4 KiB << order).
    pub largest_free_order: Option<u8>,
}

/// An owned block of physical memory; freed on drop unless [`FrameBlock::leak`]ed.
#[derive(Debug)]
pub struct FrameBlock {
    addr: u64,
    order: u8,
}

impl FrameBlock {
    /// Physical (== virtual) address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Size in bytes (the request rounded up to a power of two ≥ 4 KiB).
    pub fn size(&self) -> u64 {
        PAGE << self.order
    }
    /// The block as a raw pointer.
    #[cfg(feature = "ktest")]
    pub fn as_ptr<T>(&self) -> *mut T {
        self.addr as *mut T
    }
    /// The block as a byte slice.
    #[cfg(feature = "ktest")]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the block is identity-mapped RAM owned by `self` for its lifetime.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.size() as usize) }
    }
    /// Gives up ownership; the memory is never freed. Returns the address.
    pub fn leak(self) -> u64 {
        let a = self.addr;
        core::mem::forget(self);
        a
    }
    /// Re-owns a block obtained from [`FrameBlock::into_raw`].
    ///
    /// # Safety
    /// `(addr, order)` must come from `into_raw` and not be owned elsewhere.
    pub unsafe fn from_raw(addr: u64, order: u8) -> Self {
        Self { addr, order }
    }
    /// Gives up ownership, returning `(addr, order)` for [`FrameBlock::from_raw`].
    pub fn into_raw(self) -> (u64, u8) {
        let r = (self.addr, self.order);
        core::mem::forget(self);
        r
    }
}

impl Drop for FrameBlock {
    fn drop(&mut self) {
        free_raw(self.addr, self.order);
    }
}

pub(super) fn init(map: &MemoryMap, exclude: &[(u64, u64)]) -> Result<(), MmError> {
    let pages = map.ram_end().div_ceil(PAGE);
    // One metadata byte per page up to the end of RAM, carved from the first free range
    // large enough (all RAM is mapped by now).
    let meta_len = pages.div_ceil(PAGE) * PAGE;
    let mut meta = None;
    map.for_each_free_range(exclude, |s, e| {
        if meta.is_none() && e - s >= meta_len {
            meta = Some(s);
        }
    });
    let meta = meta.ok_or(MmError::OutOfMemory { size: meta_len })?;
    // SAFETY: `meta` is usable RAM excluded from the allocator below, identity-mapped.
    let mut b = unsafe { Buddy::new(meta as *mut u8, 0, pages) };
    let mut excl = [(0u64, 0u64); 8];
    excl[..exclude.len()].copy_from_slice(exclude);
    excl[exclude.len()] = (meta, meta + meta_len);
    map.for_each_free_range(&excl[..=exclude.len()], |s, e| {
        // SAFETY: free usable RAM (exclusions removed), identity-mapped, added once.
        unsafe { b.add_range(s, e) };
    });
    *BUDDY.lock() = Some(b);
    Ok(())
}

fn order_for(size: u64, align: u64) -> Result<u8, MmError> {
    if size == 0 || !align.is_power_of_two() {
        return Err(MmError::BadRequest { size, align });
    }
    let o = order_for_size(size).ok_or(MmError::BadRequest { size, align })?;
    let a = order_for_size(align).ok_or(MmError::BadRequest { size, align })?;
    Ok(o.max(a))
}

pub(crate) fn alloc_raw(order: u8, limit: u64) -> Option<u64> {
    BUDDY.lock().as_mut()?.alloc_below(order, limit).ok()
}

pub(crate) fn free_raw(addr: u64, order: u8) {
    if let Some(b) = BUDDY.lock().as_mut()
        && let Err(e) = b.free(addr, order)
    {
        log::error!("frame allocator: {e}");
    }
}

fn alloc_impl(size: u64, align: u64, limit: u64, zero: bool) -> Result<FrameBlock, MmError> {
    let order = order_for(size, align)?;
    if BUDDY.lock().is_none() {
        return Err(MmError::NotInitialized);
    }
    let addr = alloc_raw(order, limit).ok_or(MmError::OutOfMemory {
        size: PAGE << order,
    })?;
    if zero {
        // SAFETY: a fresh block of identity-mapped RAM owned by us.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (PAGE << order) as usize) };
    }
    Ok(FrameBlock { addr, order })
}

/// A zeroed, physically contiguous block of at least `size` bytes aligned to
/// `max(align, block size)`. Sizes round up to a power of two (max 1 GiB).
pub fn alloc_frames(size: u64, align: u64) -> Result<FrameBlock, MmError> {
    alloc_impl(size, align, u64::MAX, true)
}

/// Like [`alloc_frames`] but not zeroed: the contents are whatever the previous user
/// left (for buffers that are overwritten anyway; zeroing large blocks is slow under
/// TCG).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // kernel::dsa's client buffers (bench, ktest)
pub fn alloc_frames_uninit(size: u64, align: u64) -> Result<FrameBlock, MmError> {
    alloc_impl(size, align, u64::MAX, false)
}

/// Like [`alloc_frames`], with the whole block below physical address `limit`
/// (devices limited to 32-bit DMA, CR3 for 32-bit code).
#[cfg(feature = "ktest")]
pub fn alloc_frames_below(size: u64, align: u64, limit: u64) -> Result<FrameBlock, MmError> {
    alloc_impl(size, align, limit, true)
}

/// Current statistics.
pub fn frame_stats() -> FrameStats {
    match BUDDY.lock().as_ref() {
        Some(b) => FrameStats {
            total_pages: b.total_pages(),
            free_pages: b.free_pages(),
            largest_free_order: b.largest_free_order(),
        },
        None => FrameStats {
            total_pages: 0,
            free_pages: 0,
            largest_free_order: None,
        },
    }
}
