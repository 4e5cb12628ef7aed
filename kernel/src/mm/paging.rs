//! The kernel's page tables, and the tables of new address spaces sharing its half.
//!
//! Built once on the BSP from the memory map, with table pages taken from usable memory
//! below 4 GiB (the AP trampoline loads CR3 in 32-bit mode, so the PML4 must be there).
//! Later changes only turn not-present entries into present ones (`ensure` / `map` of
//! [`x86_paging::PageTable`]), so no TLB shootdown is ever needed. Once the first address
//! space sharing the kernel half exists, the kernel's PML4 entries never change again
//! ([`freeze_kernel_half`]).

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;
use x86_paging::{Config, MMIO, PageTable, PteFlags, RAM, TableMemory, Translation};

use super::{ImageLayout, MmError};
use boot::memmap::MemoryMap;

use crate::sync::IrqMutex;

static KERNEL: IrqMutex<Option<PageTable>> = IrqMutex::new(None);

const FOUR_GIB: u64 = 1 << 32;
const PAGE: u64 = 4096;

/// A page-table page reached by identity: RAM below the end of the memory map, never page 0.
fn identity(phys: u64) -> Option<NonNull<AtomicU64>> {
    let ram_end = super::memory_map()?.ram_end();
    if phys.checked_add(PAGE)? > ram_end {
        return None;
    }
    NonNull::new(phys as *mut AtomicU64)
}

/// Bump allocator over one range below 4 GiB (zeroes what it hands out).
struct Bump {
    start: u64,
    next: u64,
    end: u64,
}

// SAFETY: pages come from a range of usable RAM reserved for them (kept out of the frame
// allocator); every RAM page is identity-mapped (by the boot stub, then by these tables).
unsafe impl TableMemory for Bump {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.next + PAGE > self.end {
            return None;
        }
        let p = self.next;
        self.next += PAGE;
        // SAFETY: the page lies in usable RAM below 4 GiB (identity-mapped by the boot
        // stub, and by the new tables once they are live) and belongs to the bump range.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE as usize) };
        Some(p)
    }
    fn free_table(&mut self, phys: u64) {
        // The boot tables are never taken apart.
        log::error!("boot page-table page {phys:#x} released; keeping it");
    }
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        identity(phys)
    }
}

/// Page-table pages from the frame allocator, reached by identity: the kernel's tables
/// after boot and the tables of address spaces from [`new_address_space`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TableFrames;

// SAFETY: pages are zeroed 4 KiB frames owned by the tree they are linked into until
// `free_table` returns them; RAM is identity-mapped and `identity` answers only for RAM.
unsafe impl TableMemory for TableFrames {
    fn alloc_table(&mut self) -> Option<u64> {
        super::frames::alloc_frames(PAGE, PAGE)
            .ok()
            .map(|b| b.leak())
    }
    fn free_table(&mut self, phys: u64) {
        // SAFETY: `phys` is an order-0 block from `alloc_table`, released by its tree
        // (the caller invalidated every walker's caches first).
        drop(unsafe { super::frames::FrameBlock::from_raw(phys, 0) });
    }
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        identity(phys)
    }
}

fn ram_flags() -> PteFlags {
    RAM
}

/// NO_EXECUTE where the CPU has it (the bit is reserved otherwise).
fn nx() -> PteFlags {
    if crate::arch::features().nx {
        PteFlags::NO_EXECUTE
    } else {
        PteFlags::empty()
    }
}

/// Writable, not executable.
fn data_flags() -> PteFlags {
    ram_flags() | nx()
}

fn mmio_flags() -> PteFlags {
    if crate::arch::features().nx {
        MMIO
    } else {
        MMIO - PteFlags::NO_EXECUTE
    }
}

/// Builds the kernel tables, switches CR3, and returns the range used for table pages
/// (to keep it out of the frame allocator).
pub(super) fn init(map: &MemoryMap, layout: ImageLayout) -> Result<(u64, u64), MmError> {
    let image = (layout.start, layout.end);
    let regions = map.regions();
    let gib = map.ram_end().div_ceil(1 << 30);
    // Upper bound on table pages: PML4 + PDPTs + one PD per GiB + PTs at region edges.
    let need_pages = 8 + 2 * regions.len() as u64 + gib.max(4) + gib / 512 + 16;
    let need = need_pages * PAGE;
    let mut found = None;
    map.for_each_free_range(&[(0, super::LOW_MEMORY_END), image], |s, e| {
        if found.is_none() && e <= FOUR_GIB && e - s >= need {
            found = Some(s);
        }
    });
    let start = found.ok_or(MmError::NoEarlyMemory { need })?;
    let mut bump = Bump {
        start,
        next: start,
        end: start + need,
    };
    let mut m = PageTable::new(&mut bump, Config::kernel(crate::arch::features().page_1g))
        .map_err(|_| MmError::NoEarlyMemory { need })?;
    let pml4 = m.root();

    // RAM write-back (page-rounded inward), everything else below 4 GiB uncached.
    let mut cursor = PAGE; // page 0 stays unmapped
    for r in regions.iter().filter(|r| r.kind.is_ram()) {
        let s = r.start.div_ceil(PAGE) * PAGE;
        let e = r.end / PAGE * PAGE;
        if e <= s {
            continue;
        }
        let s = s.max(PAGE);
        if s > cursor && cursor < FOUR_GIB {
            let gap_end = s.min(FOUR_GIB);
            m.ensure(cursor, cursor, gap_end - cursor, mmio_flags(), &mut bump)?;
        }
        if e > s {
            // RAM outside the image: data, never code (except low memory, where the AP
            // trampoline runs). The image's parts get their own permissions below.
            for (a, b) in [(s, e.min(image.0)), (s.max(image.1), e)] {
                let low_end = b.min(super::LOW_MEMORY_END);
                if low_end > a {
                    m.ensure(a, a, low_end - a, ram_flags(), &mut bump)?;
                }
                let a = a.max(super::LOW_MEMORY_END);
                if b > a {
                    m.ensure(a, a, b - a, data_flags(), &mut bump)?;
                }
            }
        }
        cursor = cursor.max(e);
    }
    // W^X for the image: code read+execute, read-only data read-only, data read+write.
    let ro = PteFlags::PRESENT;
    for (a, b, flags) in [
        (layout.start, layout.text, ro | nx()),
        (layout.text, layout.rodata, ro),
        (layout.rodata, layout.data, ro | nx()),
        (layout.data, layout.end, data_flags()),
    ] {
        if b > a {
            m.ensure(a, a, b - a, flags, &mut bump)?;
        }
    }
    if cursor < FOUR_GIB {
        m.ensure(cursor, cursor, FOUR_GIB - cursor, mmio_flags(), &mut bump)?;
    }

    // SAFETY: the new tables identity-map the kernel image, its stack, all RAM and the
    // low MMIO with the same addresses as the boot tables, so execution continues.
    unsafe {
        Cr3::write(
            PhysFrame::containing_address(PhysAddr::new(pml4)),
            Cr3Flags::empty(),
        );
    };
    log::debug!(
        "page tables: {} table pages at {:#x}",
        (bump.next - bump.start) / PAGE,
        bump.start
    );
    *KERNEL.lock() = Some(m);
    Ok((bump.start, bump.next))
}

/// Physical address of the kernel PML4 (below 4 GiB).
pub fn kernel_root() -> u64 {
    KERNEL.lock().as_ref().map_or(0, |m| m.root())
}

/// Maps `[phys, phys+len)` uncached (identity) and returns it as a pointer.
///
/// Ranges already mapped uncached are accepted as they are; a range overlapping RAM or
/// mapped otherwise gives `MmError::Map(MapError::Conflict { .. })`.
///
/// Page 0 is refused (`MmError::BadPhysRange`): it stays unmapped to catch null pointers,
/// and firmware tables say 0 for a device that is absent. So are ranges that wrap or reach
/// past the CPU's physical address limit.
pub fn map_mmio(phys: u64, len: u64) -> Result<*mut u8, MmError> {
    let (s, e) = page_range(phys, len, PAGE)?;
    map_pages(s, e, mmio_flags())?;
    Ok(phys as *mut u8)
}

/// `[phys, phys + len)` rounded out to pages, if it is a mappable physical range: starting
/// at or above `lowest`, no wrap, below the physical address limit.
fn page_range(phys: u64, len: u64, lowest: u64) -> Result<(u64, u64), MmError> {
    let bad = MmError::BadPhysRange { phys, len };
    let end = phys.checked_add(len.max(1)).ok_or(bad)?;
    if phys < lowest || end > super::phys_addr_limit() {
        return Err(bad);
    }
    // end <= 2^52, so rounding up cannot overflow.
    Ok((phys / PAGE * PAGE, end.div_ceil(PAGE) * PAGE))
}

/// Makes firmware data (ACPI tables) readable: already-mapped pages (RAM or low MMIO)
/// are left as they are; unmapped pages are mapped uncached. Address 0 and ranges that
/// wrap or pass the physical address limit are refused; the rest of page 0 is allowed
/// (the BIOS data area holds the EBDA pointer the RSDP search reads).
pub fn map_firmware(phys: u64, len: u64) -> Result<(), MmError> {
    let (s, e) = page_range(phys, len, 1)?;
    let mut p = s;
    while p < e {
        if translate(p).is_none() {
            map_pages(p, p + PAGE, mmio_flags())?;
        }
        p += PAGE;
    }
    Ok(())
}

/// Identity-maps the pages `[s, e)` (page-aligned, checked by [`page_range`]).
fn map_pages(s: u64, e: u64, flags: PteFlags) -> Result<(), MmError> {
    let mut g = KERNEL.lock();
    let m = g.as_mut().ok_or(MmError::NotInitialized)?;
    m.ensure(s, s, e - s, flags, &mut TableFrames)?;
    Ok(())
}

/// Maps `len` bytes of frames at `phys` at the stack address `virt` (write-back, not
/// executable, 4 KiB pages unless both are 2 MiB aligned). The caller leaves the page below
/// `virt` unmapped as the guard.
pub(super) fn map_stack(virt: u64, phys: u64, len: u64) -> Result<(), MmError> {
    let mut g = KERNEL.lock();
    let m = g.as_mut().ok_or(MmError::NotInitialized)?;
    m.map(virt, phys, len, data_flags(), &mut TableFrames)?;
    Ok(())
}

/// Looks up a kernel virtual address.
pub fn translate(virt: u64) -> Option<Translation> {
    KERNEL.lock().as_ref()?.translate(virt, &TableFrames)
}

/// The PML4 slots of the kernel half: the identity map of physical memory (slots
/// 0 … K−1, K = ⌈2^MAXPHYADDR / 512 GiB⌉, at most the lower half) and the stacks' slot.
fn kernel_slots() -> impl Iterator<Item = usize> {
    let ext_max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    let phys_bits = if ext_max >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff
    } else {
        36 // CPUID.80000008H is absent: MAXPHYADDR is 36 (SDM Vol. 3A §4.1.4).
    };
    let identity = 1usize << phys_bits.saturating_sub(39).min(8);
    (0..identity).chain(core::iter::once(super::stacks::PML4_SLOT))
}

/// Gives every kernel-half PML4 slot its PDPT and freezes the kernel's PML4: from now on
/// no kernel PML4 entry changes (a mapping that would need a new one fails with
/// `MapError::TopLevelFrozen`), so copies of them in other roots stay exact. Idempotent;
/// done by the first [`new_address_space`].
pub fn freeze_kernel_half() -> Result<(), MmError> {
    let mut g = KERNEL.lock();
    let m = g.as_mut().ok_or(MmError::NotInitialized)?;
    if !m.is_frozen() {
        m.prepopulate_top_level(kernel_slots(), &mut TableFrames)?;
        m.freeze_top_level();
    }
    Ok(())
}

/// A new, empty address space whose root shares the kernel half (copies of the kernel's
/// PML4 entries, after [`freeze_kernel_half`]); `cfg` governs its own half (a process:
/// `Config::user(cap_fs1gp && page_1g)`). Map into it with [`TableFrames`]; free what
/// `unmap`/`teardown` release with `TableFrames.free_table` after the invalidation.
pub fn new_address_space(cfg: Config) -> Result<PageTable, MmError> {
    freeze_kernel_half()?;
    let g = KERNEL.lock();
    let k = g.as_ref().ok_or(MmError::NotInitialized)?;
    Ok(PageTable::new_sharing(k, &mut TableFrames, cfg)?)
}

/// Checks that `space` (from [`new_address_space`]) still shares the kernel half exactly.
#[cfg(feature = "ktest")]
pub fn check_kernel_half(space: &PageTable) -> Result<(), MmError> {
    let g = KERNEL.lock();
    let k = g.as_ref().ok_or(MmError::NotInitialized)?;
    Ok(space.check_shared(k, &TableFrames)?)
}
