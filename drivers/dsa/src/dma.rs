//! DMA memory the driver shares with the device while both use it (completion records, batch
//! descriptor lists): the only place in the driver that touches DMA memory through raw
//! pointers.
//!
//! Three DMA types, three concepts: [`DmaRegion`] is a block as an
//! allocator returns it (addresses and length, no ownership); [`SharedDma`] owns such a block
//! for the driver and gives only atomic, volatile or bounds-checked access, because the device
//! writes it concurrently; the kernel's `DmaBuffer` is a caller's data buffer, accessed as
//! plain slices only while no descriptor naming it is in flight.

use crate::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU8, Ordering};

/// DMA memory owned by the driver and written by the device concurrently; returned to its
/// allocator on drop (or leaked with [`SharedDma::leak`] when the device might still write
/// it).
pub struct SharedDma {
    region: Option<DmaRegion>,
    leaked: core::sync::atomic::AtomicBool,
    mem: Arc<dyn DmaMemory>,
    cpu: *mut u8,
    dev: u64,
    len: usize,
}

// SAFETY: the region is exclusively owned by this value (DmaMemory contract); every access
// below is bounds-checked and either atomic (the status bytes the device writes
// concurrently) or ordered after an acquire load of such a byte.
unsafe impl Send for SharedDma {}
// SAFETY: shared access only goes through the atomic/volatile accessors below; the slot
// protocol in `submit` gives each non-atomic byte range a single writer at a time.
unsafe impl Sync for SharedDma {}

impl core::fmt::Debug for SharedDma {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedDma")
            .field("dev", &format_args!("{:#x}", self.dev))
            .field("len", &self.len)
            .finish()
    }
}

impl SharedDma {
    /// Allocates `size` zeroed bytes aligned to `align` (a power of two) in `space`.
    pub fn new(
        mem: &Arc<dyn DmaMemory>,
        space: AddressSpace,
        size: usize,
        align: usize,
    ) -> Result<SharedDma, DmaError> {
        let r = mem.alloc(space, size, align)?;
        let cpu = r.cpu.as_ptr();
        let ok = r.len >= size
            && r.space == space
            && r.dev.is_multiple_of(align as u64)
            && (cpu as usize).is_multiple_of(align)
            && r.dev.checked_add(size as u64).is_some();
        let (dev, len) = (r.dev, r.len);
        let buf = SharedDma {
            region: Some(r),
            leaked: core::sync::atomic::AtomicBool::new(false),
            mem: mem.clone(),
            cpu,
            dev,
            len,
        };
        if !ok {
            return Err(DmaError::BadRegion);
        }
        Ok(buf)
    }

    /// Bytes of the buffer (at least the requested size).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for a buffer of 0 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The address space (no PASID or a PASID) the device reaches the buffer in.
    pub fn space(&self) -> AddressSpace {
        self.region
            .as_ref()
            .map(|r| r.space)
            .unwrap_or(AddressSpace::NoPasid)
    }

    /// Device address of byte `off`.
    #[inline(always)]
    pub fn dev_addr(&self, off: usize) -> u64 {
        self.dev + off as u64
    }

    #[inline(always)]
    fn in_bounds(&self, off: usize, n: usize) -> bool {
        off.checked_add(n).is_some_and(|e| e <= self.len)
    }

    /// Copies `data` to offset `off`. Out-of-range requests do nothing (and return false).
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        if !self.in_bounds(off, data.len()) {
            debug_assert!(false, "DMA write out of bounds");
            return false;
        }
        // SAFETY: in bounds of a region valid for writes (DmaMemory contract); the caller
        // owns this range (slot protocol), so no concurrent access races with it.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.cpu.add(off), data.len()) };
        true
    }

    /// Copies from offset `off` into `out`. Out-of-range requests leave `out` untouched.
    pub fn read(&self, off: usize, out: &mut [u8]) -> bool {
        if !self.in_bounds(off, out.len()) {
            debug_assert!(false, "DMA read out of bounds");
            return false;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds of a region valid for reads; the bytes were written by the
            // driver, or by the device before the acquire load that made them visible;
            // volatile keeps the compiler from caching them across polls.
            *b = unsafe { core::ptr::read_volatile(self.cpu.add(off + i)) };
        }
        true
    }

    /// Zeroes `n` bytes at `off`; byte `off` is stored atomically (it is a status byte the
    /// device writes later).
    pub fn zero(&self, off: usize, n: usize) {
        if n == 0 || !self.in_bounds(off, n) {
            debug_assert!(n == 0, "DMA zero out of bounds");
            return;
        }
        // SAFETY: in bounds; nothing else writes this range while the driver owns it.
        unsafe { core::ptr::write_bytes(self.cpu.add(off + 1), 0, n - 1) };
        self.status(off).store(0, Ordering::Release);
    }

    /// Volatile read of the 64-bit word at `off` (a multiple of 8; 0 if out of range): whole
    /// words of completion records and descriptor lists.
    #[inline(always)]
    pub fn word(&self, off: usize) -> u64 {
        if !off.is_multiple_of(8) || !self.in_bounds(off, 8) {
            debug_assert!(false, "DMA word read out of bounds");
            return 0;
        }
        // SAFETY: in bounds and 8-byte aligned (the region is at least 64-byte aligned); the
        // device's writes are ordered before the acquire load of the status byte that made
        // the caller read this word; volatile keeps the read from being cached or torn.
        unsafe { core::ptr::read_volatile(self.cpu.add(off) as *const u64) }
    }

    /// Stores the 64-bit word at `off` (a multiple of 8). Used to zero a record's first word
    /// (its status byte included) before the record is handed to the device.
    #[inline(always)]
    pub fn set_word(&self, off: usize, v: u64) {
        if !off.is_multiple_of(8) || !self.in_bounds(off, 8) {
            debug_assert!(false, "DMA word write out of bounds");
            return;
        }
        // SAFETY: in bounds and aligned; the caller owns this range (slot protocol: the
        // record is not published and nothing else reads it); a single aligned 8-byte
        // store, so a concurrent atomic status-byte load sees old or new, never a mix.
        unsafe { core::ptr::write_volatile(self.cpu.add(off).cast::<u64>(), v) };
    }

    /// Lets `f` write the 64-byte descriptor at `off` (64-byte aligned) in place.
    #[inline(always)]
    pub fn with_desc(&self, off: usize, f: impl FnOnce(&mut [u64; 8])) {
        if !off.is_multiple_of(64) || !self.in_bounds(off, 64) {
            debug_assert!(false, "DMA descriptor write out of bounds");
            return;
        }
        // SAFETY: in bounds and 64-byte aligned; the caller owns this range (slot protocol:
        // a batch list the device reads only after the portal store that follows), so the
        // exclusive borrow aliases nothing for its duration.
        f(unsafe { &mut *self.cpu.add(off).cast::<[u64; 8]>() });
    }

    /// Lets `f` write `n` consecutive 64-byte descriptors at `off` (64-byte aligned) in place:
    /// one bounds check for a whole batch list. Does nothing if out of range.
    #[inline(always)]
    pub fn with_descs(&self, off: usize, n: usize, f: impl FnOnce(&mut [[u64; 8]])) {
        if !off.is_multiple_of(64) || n.checked_mul(64).is_none_or(|b| !self.in_bounds(off, b)) {
            debug_assert!(false, "DMA descriptor list out of bounds");
            return;
        }
        // SAFETY: in bounds and aligned; the caller owns this range until it hands it to the
        // device (slot protocol), so the exclusive borrow aliases nothing for its duration.
        f(unsafe { core::slice::from_raw_parts_mut(self.cpu.add(off).cast::<[u64; 8]>(), n) });
    }

    /// Lets `f` write `n` consecutive 32-byte completion records at `off` (32-byte aligned)
    /// before they are handed to the device. Does nothing if out of range.
    #[inline(always)]
    pub fn with_records(&self, off: usize, n: usize, f: impl FnOnce(&mut [[u64; 4]])) {
        if !off.is_multiple_of(32) || n.checked_mul(32).is_none_or(|b| !self.in_bounds(off, b)) {
            debug_assert!(false, "DMA record range out of bounds");
            return;
        }
        // SAFETY: as `with_descs`: owned by the caller, not yet given to the device.
        f(unsafe { core::slice::from_raw_parts_mut(self.cpu.add(off).cast::<[u64; 4]>(), n) });
    }

    /// Acquire load of the status byte at `off` (0 if out of range).
    #[inline(always)]
    pub fn load_status(&self, off: usize) -> u8 {
        if !self.in_bounds(off, 1) {
            return 0;
        }
        self.status(off).load(Ordering::Acquire)
    }

    #[inline(always)]
    fn status(&self, off: usize) -> &AtomicU8 {
        // SAFETY: callers checked `off` is in bounds; the byte stays valid while `self`
        // lives, u8 has alignment 1, and all concurrent accesses to it are atomic.
        unsafe { AtomicU8::from_ptr(self.cpu.add(off)) }
    }

    /// The first `n` (a power of two) 32-byte completion records of this buffer as an array
    /// indexed modulo `n`, so its accessors need no bounds check (None if they do not fit).
    /// The view must not outlive the buffer (its owner keeps both).
    pub(crate) fn records(&self, n: usize) -> Option<Records> {
        let fits = n.is_power_of_two()
            && n.checked_mul(RECORD).is_some_and(|b| self.in_bounds(0, b))
            && (self.cpu as usize).is_multiple_of(RECORD);
        fits.then_some(Records {
            base: self.cpu,
            mask: n - 1,
        })
    }

    /// Marks the memory as never to be returned (the device may still write into it).
    pub fn leak(&self) {
        self.leaked.store(true, Ordering::Relaxed);
    }

    /// Allocates another buffer from the same allocator.
    pub fn allocator(&self) -> &Arc<dyn DmaMemory> {
        &self.mem
    }
}

impl Drop for SharedDma {
    fn drop(&mut self) {
        if let Some(r) = self.region.take()
            && !self.leaked.load(Ordering::Relaxed)
        {
            self.mem.free(r);
        }
    }
}

/// Size of one completion record (Intel DSA Architecture Specification rev 3.0, §8.2).
const RECORD: usize = dsa_spec::completion::CR_SIZE;

/// `n` completion records of a [`SharedDma`] (see [`SharedDma::records`]): record `i` is record
/// `i mod n`, so every access is in bounds without a check. Word 0 holds the status byte.
#[derive(Clone, Copy)]
pub(crate) struct Records {
    base: *mut u8,
    mask: usize,
}

impl Records {
    #[inline(always)]
    fn word0_ptr(&self, i: usize) -> *mut u8 {
        // `wrapping_add` keeps this safe; the offset is below `n * 32`, inside the buffer
        // (checked by `SharedDma::records`).
        self.base.wrapping_add((i & self.mask) * RECORD)
    }

    /// The index mask (records − 1).
    #[inline(always)]
    pub fn mask(&self) -> usize {
        self.mask
    }

    /// Acquire load of record `i`'s status byte.
    #[inline(always)]
    pub fn status(&self, i: usize) -> u8 {
        // SAFETY: in bounds and aligned (`SharedDma::records`); the buffer lives as long as its
        // owner, which keeps this view; the device writes the byte concurrently, so every
        // access to it is atomic.
        unsafe { AtomicU8::from_ptr(self.word0_ptr(i)) }.load(Ordering::Acquire)
    }

    /// Zeroes record `i`'s word 0 (status byte included) before the record is handed to the
    /// device: one aligned 8-byte store, so a concurrent status load sees old or new.
    #[inline(always)]
    pub fn clear(&self, i: usize) {
        // SAFETY: in bounds and aligned; the caller owns the record (slot protocol: not
        // published, nothing else reads it but atomically).
        unsafe { core::ptr::write_volatile(self.word0_ptr(i).cast::<u64>(), 0) };
    }
}
