//! Owned DMA buffers: the only place that touches DMA memory through raw pointers.

use crate::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU8, Ordering};

/// DMA memory owned by the driver; returned to its allocator on drop (or leaked with
/// [`DmaBuf::leak`] when the device might still write it).
pub struct DmaBuf {
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
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only goes through the atomic/volatile accessors below; the slot
// protocol in `submit` gives each non-atomic byte range a single writer at a time.
unsafe impl Sync for DmaBuf {}

impl core::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("dev", &format_args!("{:#x}", self.dev))
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuf {
    /// Allocates `size` zeroed bytes aligned to `align` (a power of two) in `space`.
    pub fn new(
        mem: &Arc<dyn DmaMemory>,
        space: AddressSpace,
        size: usize,
        align: usize,
    ) -> Result<DmaBuf, DmaError> {
        let r = mem.alloc(space, size, align)?;
        let cpu = r.cpu.as_ptr();
        let ok = r.len >= size
            && r.space == space
            && r.dev.is_multiple_of(align as u64)
            && (cpu as usize).is_multiple_of(align)
            && r.dev.checked_add(size as u64).is_some();
        let (dev, len) = (r.dev, r.len);
        let buf = DmaBuf {
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

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn space(&self) -> AddressSpace {
        self.region
            .as_ref()
            .map(|r| r.space)
            .unwrap_or(AddressSpace::NoPasid)
    }

    /// Device address of byte `off`.
    pub fn dev_addr(&self, off: usize) -> u64 {
        self.dev + off as u64
    }

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

    /// Acquire load of the status byte at `off` (0 if out of range).
    pub fn load_status(&self, off: usize) -> u8 {
        if !self.in_bounds(off, 1) {
            return 0;
        }
        self.status(off).load(Ordering::Acquire)
    }

    fn status(&self, off: usize) -> &AtomicU8 {
        // SAFETY: callers checked `off` is in bounds; the byte stays valid while `self`
        // lives, u8 has alignment 1, and all concurrent accesses to it are atomic.
        unsafe { AtomicU8::from_ptr(self.cpu.add(off)) }
    }

    /// An IMS completion watch over the status bytes at `first`, `first + stride`, … (`records`
    /// of them) of this buffer, keeping the buffer alive. None if they are not all in bounds.
    pub fn completion_watch(
        self: &Arc<Self>,
        first: usize,
        stride: usize,
        records: usize,
    ) -> Option<ims::CompletionWatch> {
        let last = records
            .checked_sub(1)
            .and_then(|n| n.checked_mul(stride))
            .and_then(|o| o.checked_add(first))
            .unwrap_or(first);
        if !self.in_bounds(last, 1) || !self.in_bounds(first, 1) {
            return None;
        }
        // `first` is in bounds of the region, so the pointer is non-null like the region's.
        let status0 = core::ptr::NonNull::new(self.cpu.wrapping_add(first))?;
        let memory: Arc<dyn core::any::Any + Send + Sync> = self.clone();
        // SAFETY: every watched byte is in bounds (checked above) of this region, which stays
        // valid while the watch holds `memory` (a reference to this buffer; a leaked buffer
        // is never returned at all). They are status bytes: the driver writes them only with
        // `zero`'s atomic store of byte `off`, the device by DMA.
        Some(unsafe { ims::CompletionWatch::new(memory, status0, stride, records) })
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

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if let Some(r) = self.region.take()
            && !self.leaked.load(Ordering::Relaxed)
        {
            self.mem.free(r);
        }
    }
}
