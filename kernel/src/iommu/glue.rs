//! The kernel side of `drivers/vtd`'s hardware traits (`hwio`'s): registers are the uncached
//! MMIO window itself ([`Mmio`] implements `hwio::Registers`), table memory comes from the
//! frame allocator, waits use the calibrated clock.

use alloc::collections::BTreeMap;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use hwio::dma::{UnitMemory, UnitMemory128};

#[cfg(doc)]
use crate::mm::Mmio;
use crate::mm::{self, FrameBlock};

/// DMA memory for one remapping unit's tables, queue and status words. Owns every block it
/// handed out, so each access can be checked against them: a stray address (a bug in the
/// table code) is logged and ignored instead of touching unrelated memory.
#[derive(Default)]
pub struct KernelDma {
    blocks: BTreeMap<u64, FrameBlock>,
}

/// Out-of-block accesses seen (should stay 0; readable by tests).
pub static STRAY_ACCESSES: AtomicU64 = AtomicU64::new(0);

impl KernelDma {
    /// Whether `[phys, phys + width)` lies inside one live block.
    fn owns(&self, phys: u64, width: u64) -> bool {
        let ok = self
            .blocks
            .range(..=phys)
            .next_back()
            .is_some_and(|(a, b)| phys.checked_add(width).is_some_and(|e| e <= a + b.size()))
            && phys.is_multiple_of(width);
        if !ok && STRAY_ACCESSES.fetch_add(1, Ordering::Relaxed) < 8 {
            log::error!("table access at {phys:#x} outside the unit's DMA memory");
        }
        ok
    }

    /// Bytes of table memory in use.
    pub fn bytes(&self) -> u64 {
        self.blocks.values().map(FrameBlock::size).sum()
    }
}

// SAFETY: `table` answers only for a whole page inside a live block this memory owns
// (identity-mapped RAM from the frame allocator), which stays allocated until `free`.
unsafe impl UnitMemory for KernelDma {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<u64> {
        let b = mm::alloc_frames(size as u64, align as u64).ok()?;
        let a = b.addr();
        self.blocks.insert(a, b);
        Some(a)
    }

    fn free(&mut self, phys: u64, _size: usize) {
        // Dropping the block returns it to the frame allocator.
        if self.blocks.remove(&phys).is_none() {
            log::error!("freeing {phys:#x}, which is not a table block");
        }
    }

    fn read64(&self, phys: u64) -> u64 {
        if !self.owns(phys, 8) {
            return 0;
        }
        // SAFETY: inside a live, identity-mapped RAM block owned by `self`, aligned; volatile
        // because the remapping hardware writes A/D bits concurrently.
        unsafe { core::ptr::read_volatile(phys as *const u64) }
    }

    fn write64(&self, phys: u64, value: u64) {
        if self.owns(phys, 8) {
            // SAFETY: as in `read64`; one aligned 64-bit store (atomic for the hardware).
            unsafe { core::ptr::write_volatile(phys as *mut u64, value) }
        }
    }

    fn read32(&self, phys: u64) -> u32 {
        if !self.owns(phys, 4) {
            return 0;
        }
        // SAFETY: as in `read64`.
        unsafe { core::ptr::read_volatile(phys as *const u32) }
    }

    fn write32(&self, phys: u64, value: u32) {
        if self.owns(phys, 4) {
            // SAFETY: as in `read64`.
            unsafe { core::ptr::write_volatile(phys as *mut u32, value) }
        }
    }

    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        if !self.owns(phys, 4096) {
            return None;
        }
        NonNull::new(phys as *mut AtomicU64)
    }
}

/// 128-bit IRTE updates: `lock cmpxchg16b` on the entry (its 16-byte alignment is checked
/// with the block).
impl UnitMemory128 for KernelDma {
    fn compare_exchange128(
        &self,
        phys: u64,
        current: [u64; 2],
        new: [u64; 2],
    ) -> Result<(), [u64; 2]> {
        let join = |q: [u64; 2]| u128::from(q[0]) | (u128::from(q[1]) << 64);
        if !crate::arch::features().cx16 {
            log::error!("no CMPXCHG16B: IRTE at {phys:#x} not changed");
            return Err([0; 2]);
        }
        if !self.owns(phys, 16) {
            return Err([0; 2]);
        }
        // SAFETY: inside a live, identity-mapped RAM block owned by `self`, 16-byte aligned
        // (`owns`); the CPU has CMPXCHG16B (checked above).
        let found = unsafe { cmpxchg16b(phys as *mut u128, join(current), join(new)) };
        if found == join(current) {
            Ok(())
        } else {
            Err([found as u64, (found >> 64) as u64])
        }
    }
}

/// `lock cmpxchg16b` on `p`: replaces `current` with `new`, returns the value found. (Inline
/// assembly: the precompiled `core` lowers its intrinsic to a library call the kernel does
/// not have.)
///
/// # Safety
/// `p` is valid for 16 bytes and 16-byte aligned; the CPU has CMPXCHG16B.
unsafe fn cmpxchg16b(p: *mut u128, current: u128, new: u128) -> u128 {
    let (lo, hi): (u64, u64);
    // SAFETY: forwarded to the caller. RBX is reserved by the compiler, so the new low
    // qword travels in another register and is swapped in and out around the instruction.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [{p}]",
            "mov rbx, {new_lo}",
            p = in(reg) p,
            new_lo = inout(reg) new as u64 => _,
            inout("rax") current as u64 => lo,
            inout("rdx") (current >> 64) as u64 => hi,
            in("rcx") (new >> 64) as u64,
            options(nostack),
        );
    }
    u128::from(lo) | (u128::from(hi) << 64)
}

/// Bounded waits use the kernel's calibrated clock.
pub use crate::time::KernelClock;
