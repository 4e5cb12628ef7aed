//! The kernel's one MMIO leaf: an uncached window of device registers (a BAR, an ECAM
//! window, a VT-d unit, the HPET, an I/O APIC), and the kernel's implementation of
//! [`hwio::Registers`] that every driver crate reaches registers through.

use core::ptr::NonNull;

use volatile::VolatilePtr;

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
    #[cfg(feature = "ktest")]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The window as a pointer (for crates with their own MMIO leaf).
    #[cfg(feature = "ktest")]
    pub fn as_ptr(&self) -> *mut u8 {
        self.phys as *mut u8
    }

    fn fits(&self, offset: usize, width: usize) -> bool {
        offset.is_multiple_of(width) && offset.checked_add(width).is_some_and(|e| e <= self.len)
    }

    /// The register of type `T` at `offset`, if it lies aligned inside the window.
    fn reg<T: Copy>(&self, offset: usize) -> Option<VolatilePtr<'_, T>> {
        if !self.fits(offset, core::mem::size_of::<T>()) {
            return None;
        }
        let p = NonNull::new((self.phys as usize).checked_add(offset)? as *mut T)?;
        // SAFETY: aligned and inside the window, which `map` mapped uncached for good (the
        // borrow of `self` bounds the pointer's use); device registers are only accessed
        // volatile, never through references.
        Some(unsafe { VolatilePtr::new(p) })
    }

    /// 32-bit read.
    fn read32_at(&self, offset: usize) -> u32 {
        self.reg::<u32>(offset).map_or(u32::MAX, |r| r.read())
    }

    /// 32-bit write.
    fn write32_at(&self, offset: usize, value: u32) {
        if let Some(r) = self.reg::<u32>(offset) {
            r.write(value);
        }
    }

    /// 64-bit read (one access).
    fn read64_at(&self, offset: usize) -> u64 {
        self.reg::<u64>(offset).map_or(u64::MAX, |r| r.read())
    }

    /// 64-bit write (one access).
    fn write64_at(&self, offset: usize, value: u64) {
        if let Some(r) = self.reg::<u64>(offset) {
            r.write(value);
        }
    }
}

/// The only way to reach the registers (u64 offsets, like every driver crate's). Offsets that
/// do not fit a `usize` are outside every window: they read all-ones and drop writes like any
/// other access outside it.
impl hwio::Registers for Mmio {
    fn size(&self) -> u64 {
        self.len as u64
    }
    fn read32(&self, offset: u64) -> u32 {
        usize::try_from(offset).map_or(u32::MAX, |o| self.read32_at(o))
    }
    fn read64(&self, offset: u64) -> u64 {
        usize::try_from(offset).map_or(u64::MAX, |o| self.read64_at(o))
    }
    fn write32(&self, offset: u64, value: u32) {
        if let Ok(o) = usize::try_from(offset) {
            self.write32_at(o, value);
        }
    }
    fn write64(&self, offset: u64, value: u64) {
        if let Ok(o) = usize::try_from(offset) {
            self.write64_at(o, value);
        }
    }
}
