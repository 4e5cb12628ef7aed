//! The kernel's one MMIO leaf: an uncached window of device registers (a BAR, an ECAM
//! window, a VT-d unit, the HPET, an I/O APIC).

use super::MmError;

/// An uncached MMIO window. Accesses outside the window (or misaligned for their width)
/// read as all-ones and drop writes, like a master abort; they never touch other memory.
#[derive(Debug, Clone)]
pub struct Mmio {
    phys: u64,
    len: usize,
}

impl Mmio {
    /// Maps `[phys, phys + len)` uncached (mappings are never removed, so the window stays
    /// valid for good).
    pub fn map(phys: u64, len: u64) -> Result<Self, MmError> {
        let bad = MmError::BadRequest {
            size: len,
            align: 1,
        };
        let ulen = usize::try_from(len).map_err(|_| bad)?;
        if len == 0 || phys.checked_add(len).is_none() {
            return Err(bad);
        }
        super::map_mmio(phys, len)?;
        Ok(Self { phys, len: ulen })
    }

    /// Physical (== virtual) base address.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty (never, for a mapped window).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The window as a pointer (for crates with their own MMIO leaf).
    pub fn as_ptr(&self) -> *mut u8 {
        self.phys as *mut u8
    }

    fn fits(&self, offset: usize, width: usize) -> bool {
        offset.is_multiple_of(width) && offset.checked_add(width).is_some_and(|e| e <= self.len)
    }

    /// 32-bit read.
    pub fn read32(&self, offset: usize) -> u32 {
        if !self.fits(offset, 4) {
            return u32::MAX;
        }
        // SAFETY: aligned and inside the window, which `map` mapped uncached for good.
        unsafe { core::ptr::read_volatile((self.phys as usize + offset) as *const u32) }
    }

    /// 32-bit write.
    pub fn write32(&self, offset: usize, value: u32) {
        if self.fits(offset, 4) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile((self.phys as usize + offset) as *mut u32, value) }
        }
    }

    /// 64-bit read (one access).
    pub fn read64(&self, offset: usize) -> u64 {
        if !self.fits(offset, 8) {
            return u64::MAX;
        }
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile((self.phys as usize + offset) as *const u64) }
    }

    /// 64-bit write (one access).
    pub fn write64(&self, offset: usize, value: u64) {
        if self.fits(offset, 8) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile((self.phys as usize + offset) as *mut u64, value) }
        }
    }
}
